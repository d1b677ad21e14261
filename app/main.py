"""The app factory: settings, database, middleware, error pages and routers."""

import asyncio
import gc
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import configure_mappers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from app.config import Settings, checked_secret_key, get_settings
from app.db import Database
from app.deps import LoginRequired
from app.faults import (
    RETRY_AFTER_SECONDS, described, is_unavailable, refused_start, too_many_connections, too_many_connections_hint,
)
from app.headers import SecurityHeaders
from app.migrate import check_schema_current
from app.services import gold_serving, tasks, users
from app.services.errors import ServiceError
from app.services.item_handles import ItemHandles
from app.templating import ROOT, human_size, templates


class BodyLimits:
    """Guards the reading of a request's body, before the route reads it.

    Its size (declared or streamed): over max_bytes, an API client gets 413 JSON; a browser's form post
    goes back to the page it came from, with the error as that page's flash message, as for any other
    bad file (so this runs inside SessionMiddleware).

    Its time: the body must arrive within read_seconds of the request's start, plus one second per
    min_rate bytes received, else 408 and the connection is closed. uvicorn bounds neither: 100
    connections sending a byte every 2 s each held a request open for 40 s and more (issue 26)."""

    def __init__(self, app, max_bytes: int, read_seconds: float = 20.0, min_rate: int = 20_000):
        self.app, self.max_bytes, self.read_seconds, self.min_rate = app, max_bytes, read_seconds, min_rate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        received, refusal, started, body_done = 0, None, False, False

        async def guarded_receive():
            nonlocal received, refusal, body_done
            if body_done:  # past the body: e.g. waiting for a disconnect while streaming an answer
                return await receive()
            left = started_at + self.read_seconds + received / self.min_rate - loop.time()
            try:
                async with asyncio.timeout(max(left, 0)):  # no task of its own, unlike wait_for: this is every request
                    message = await receive()
            except TimeoutError:
                refusal = self._too_slow
                raise _BodyRefused() from None
            received += len(message.get("body", b""))
            body_done = not message.get("more_body", False)
            if received > self.max_bytes:
                refusal = self._refuse
                raise _BodyRefused()
            return message

        async def guarded_send(message):
            # A framework may turn the error into an answer of its own (FastAPI: 400 "error parsing the
            # body" for a form); once the body is refused, the answer is ours.
            nonlocal started
            if refusal is not None and not started:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _BodyRefused:
            pass
        if refusal is not None and not started:
            await refusal(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        request = Request(scope)
        message = (f"Nothing was imported or saved: the upload is larger than the {human_size(self.max_bytes)} limit. "
                   "Split a large file into smaller ones.")
        if _wants_json(request):
            response = JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        elif back := _same_site_referer(request):
            request.session["flash"] = {"message": message, "kind": "bad"}
            response = RedirectResponse(back, status_code=303)
        else:
            response = templates.TemplateResponse(request, "error.html", {"message": message, "errors": []},
                                                  status_code=413)
        await response(scope, receive, send)

    async def _too_slow(self, scope, receive, send):
        request = Request(scope)
        message = "the request body arrived too slowly; nothing was saved, please send it again"
        close = {"Connection": "close"}  # the rest of the body is never read
        if _wants_json(request):
            response = JSONResponse({"detail": message}, status_code=408, headers=close)
        else:
            response = templates.TemplateResponse(request, "error.html", {"message": message[:1].upper() + message[1:] + ".",
                                                                          "errors": []}, status_code=408, headers=close)
        await response(scope, receive, send)


def _same_site_referer(request: Request) -> str | None:
    """The path (and query) of the page on this site the request came from; None if from elsewhere."""
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc != request.url.netloc or not referer.path.startswith("/") or referer.path.startswith("//"):
        return None
    return referer.path + (f"?{referer.query}" if referer.query else "")


class _BodyRefused(Exception):
    pass


log = logging.getLogger("storyloop.app")
# What a database or disk fault can raise; app.faults.is_unavailable tells a fault from a bug.
FAULT_TYPES = (DBAPIError, PoolTimeout, sqlite3.Error, OSError)


def _tune_garbage_collector() -> None:
    """Python's cyclic garbage collector paused a worker for tens of milliseconds at a time, most of
    the p99 latency with 1000 annotators (benchmarks/annotate_load.py --think 4: p99 about 200 ms
    before, 40-75 ms after). What exists at startup (the app, models, compiled statements) is frozen
    out of its scans, and it runs less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


async def _warm_up(app: FastAPI, database: Database) -> None:
    """What a worker would otherwise do on its first requests, each taking tens of ms with hundreds
    of annotators' requests queued behind it: SQLAlchemy configures its mappers on first use, FastAPI
    builds a router's routes on the first request that reaches them, and the gold settings are
    loaded. The requests carry no token, so they end at the 401 before any service runs."""
    configure_mappers()
    await gold_serving.refresh(database)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: dict) -> None:
        pass

    for path in ("/api/v1/tasks/next", "/api/v1/tasks/1/bws"):
        await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                   "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                   "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80)},
                  receive, send)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", "")


def _body_hint(request: Request, error: dict) -> str | None:
    """A JSON route sent a form (curl -d key=value): pydantic's "Input should be a valid dictionary"
    names the body but not the fix."""
    content_type = request.headers.get("content-type", "")
    if (tuple(error.get("loc", ())) == ("body",) and error.get("type") in ("model_attributes_type", "dict_type")
            and "json" not in content_type):
        return f"send the body as JSON, with content-type: application/json (got {content_type or 'no content-type'})"
    return None


def create_app(settings: Settings | None = None, database: Database | None = None) -> FastAPI:
    settings = settings or get_settings()
    secret_key = checked_secret_key(settings)  # refuses a missing, default or short key (outside dev mode)
    database = database or Database.from_settings(settings)
    try:
        check_schema_current(database.engine)
    except FAULT_TYPES as exc:
        if not is_unavailable(exc):
            raise
        raise refused_start(exc, settings.db_connections_per_worker) from None  # the message says it all

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if database.statements is not None:
            failure = await database.statements.open_connections(
                prepare=[users.TOKEN_USER_MARKING_USE, *tasks.hot_statements_postgres()])
            if failure is not None and too_many_connections(failure):
                log.error("%s (%s)", too_many_connections_hint(settings.db_connections_per_worker), described(failure))
            elif failure is not None:
                log.warning("could not open the annotation path's PostgreSQL connections ahead; they open on demand: %s",
                            described(failure))
        await _warm_up(_app, database)
        _tune_garbage_collector()
        with database.wal_checkpoints_in_background():
            yield
        if database.statements is not None:
            await database.statements.close()

    app = FastAPI(
        lifespan=lifespan,
        title="storyloop",
        version="0.1.0",
        description="Human judgements of machine-written stories: Best-Worst Scaling, ratings, exports, and the RLHF loop.",
        docs_url=None,  # our own /api/docs (routes/api_docs.py): Swagger UI from static/, no CDN
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    app.state.settings, app.state.database = settings, database
    app.state.item_handles = ItemHandles.from_secret(secret_key)  # the same in every worker: one secret key
    app.add_middleware(BodyLimits, max_bytes=settings.max_upload_bytes, read_seconds=settings.body_read_seconds,
                       min_rate=settings.body_min_bytes_per_second)  # inside the session: its flash
    app.add_middleware(
        SessionMiddleware, secret_key=secret_key, same_site="lax",
        https_only=settings.secure_cookies, session_cookie="storyloop_session",
        max_age=settings.session_max_seconds,  # the cookie carries the session id; the row decides (deps.py)
    )
    app.add_middleware(SecurityHeaders)  # added last: outermost, so also on 413s and error pages
    app.mount("/static", StaticFiles(directory=ROOT / "static"), name="static")

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        if _wants_json(request):
            return JSONResponse({"detail": exc.message, "errors": exc.details}, status_code=exc.status_code)
        return templates.TemplateResponse(request, "error.html", {"message": exc.message, "errors": exc.details},
                                          status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:
            # Only FastAPI and Starlette send 400, for a body they cannot decode (not UTF-8 JSON, broken
            # multipart data): an invalid request like any other, 422 naming the body (the schema has no 400)
            return await validation_error(request, RequestValidationError([{"loc": ("body",), "msg": str(exc.detail)}]))
        if _wants_json(request):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return templates.TemplateResponse(request, "error.html", {"message": exc.detail, "errors": []},
                                          status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": _body_hint(request, e) or e.get("msg", "")} for e in exc.errors()]
        if _wants_json(request):
            return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)
        return templates.TemplateResponse(request, "error.html", {"message": "invalid form", "errors": errors},
                                          status_code=422)

    async def unavailable(request: Request, exc: Exception):
        if not is_unavailable(exc):
            raise exc  # a bug: ServerErrorMiddleware answers 500 and logs the traceback
        if too_many_connections(exc):
            log.error("%s %s answered 503: %s", request.method, request.url.path,
                      too_many_connections_hint(settings.db_connections_per_worker))
        else:
            log.warning("%s %s: database or disk unavailable, answered 503: %s", request.method, request.url.path,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        message = f"The service is briefly unavailable; try again in {RETRY_AFTER_SECONDS} seconds."
        if _wants_json(request):
            return JSONResponse({"detail": message}, status_code=503, headers=headers)
        return templates.TemplateResponse(request, "error.html", {
            "message": message, "errors": [], "unavailable": True, "resubmit": request.method == "POST",
        }, status_code=503, headers=headers)

    for fault_type in FAULT_TYPES:
        app.add_exception_handler(fault_type, unavailable)
    try:  # the drivers' errors can escape unwrapped from a driver-level call
        import asyncpg
        import psycopg
        for driver_error in (psycopg.Error, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError):
            app.add_exception_handler(driver_error, unavailable)
    except ImportError:  # pragma: no cover (a SQLite-only install)
        pass

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target}, safe='/')}", status_code=303)

    from app.routes import api, api_admin, api_overview, api_training, pages_admin, pages_annotate, pages_auth
    from app.routes import api_eval, pages_eval  # evaluation campaigns, model versions, live status
    from app.routes import pages_stories  # what each version wrote, side by side
    from app.routes import api_docs  # /api/docs from our own static files
    from app.routes import pages_crowd  # crowd-platform sign-in (Prolific, MTurk)
    from app.routes import api_gold  # gold checks and excluding annotators

    for module in (api, api_admin, api_overview, api_training, pages_auth, pages_annotate, pages_admin, pages_stories,
                   api_eval, pages_eval, api_docs, pages_crowd, api_gold):
        app.include_router(module.router)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():  # pages link /static/favicon.ico; browsers and tools also ask the root for it
        return FileResponse(ROOT / "static" / "favicon.ico", media_type="image/vnd.microsoft.icon",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True}

    return app
