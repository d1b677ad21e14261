"""Security headers on every response: pages, API, static files, errors.

The Content-Security-Policy allows scripts, styles, fonts, fetches and frames from this site only, so
an injected <script>, inline handler (onclick=...), javascript: link or inline style attribute does not
run: the templates keep every script in static/js and every style in static/css (also the API docs:
our own copy of Swagger UI in static/vendor, started by static/js/api_docs.js). Images may also be
data: URLs (Swagger UI's CSS draws its icons with them)."""

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "frame-ancestors 'none'",
    "form-action 'self'",
    "base-uri 'none'",
    "object-src 'none'",
])

HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),  # frame-ancestors for browsers without CSP 2
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # task and invite URLs never leak to other sites
]
_NAMES = {name for name, _ in HEADERS}


class SecurityHeaders:
    """Plain ASGI middleware (no BaseHTTPMiddleware: it would buffer streamed exports and cost latency
    on every annotation request); replaces any of these headers a route set."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NAMES]
                message = {**message, "headers": headers + HEADERS}
            await send(message)

        await self.app(scope, receive, send_with_headers)
