"""Security headers on every response (pages, API, static files, errors, 413s), and /api/docs served
from our own files: no CDN, no inline script."""

import re

from app.headers import CONTENT_SECURITY_POLICY
from tests.conftest import make_user, token_headers

EXPECTED = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def _assert_headers(response) -> None:
    for name, value in EXPECTED.items():
        assert response.headers.get_list(name) == [value], (response.request.url, name)


def test_policy_says_what_the_issue_asks():
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives == {
        "default-src": "'self'", "script-src": "'self'", "style-src": "'self'", "img-src": "'self' data:",
        "frame-ancestors": "'none'", "form-action": "'self'", "base-uri": "'none'", "object-src": "'none'",
    }


def test_headers_on_pages_api_static_and_errors(client, database):
    make_user(database, "ann")
    for path in ("/login", "/api/docs", "/api/v1/openapi.json", "/healthz", "/static/css/storyloop.css",
                 "/static/js/api_docs.js", "/static/vendor/swagger-ui/swagger-ui-bundle.js"):
        response = client.get(path)
        assert response.status_code == 200, path
        _assert_headers(response)
    headers = token_headers(client, "ann")
    _assert_headers(client.post("/api/v1/tasks/next", headers=headers))  # 204 or 200: either way
    _assert_headers(client.get("/annotate", follow_redirects=False))  # redirect to login
    _assert_headers(client.get("/no-such-page", headers={"accept": "text/html"}))  # error page
    _assert_headers(client.get("/api/v1/admin/overview", headers=headers))  # 403
    too_big = client.post("/api/v1/auth/token", content=b"x" * 100, headers={"content-length": str(10**9)})
    assert too_big.status_code == 413
    _assert_headers(too_big)


def test_api_docs_use_our_own_files(client):
    html = client.get("/api/docs").text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("http://testserver/static/") for s in sources), sources
    assert "<script>" not in html and "cdn" not in html.lower()
    assert 'data-openapi-url="/api/v1/openapi.json"' in html
    assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page loads from a CDN: off
