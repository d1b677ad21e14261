"""Who may call what: a role x endpoint matrix generated from the app's own routes.

Every route under /api/v1/admin and every page under /admin is found by walking the app (so a new
admin endpoint is covered the day it is added) and called with dummy path parameters as:
- nobody: the API answers 401, a page redirects to /login;
- an annotator and an evaluator: 403, for every method;
- an admin (GET only, so that nothing is started or deleted): neither 401 nor "admins only".
"""

import base64
import json
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner

from app.models import ApiToken, User, utcnow
from app.security import hash_password, new_token, token_digest
from app.services import sessions

API_ADMIN = "/api/v1/admin"
PAGES_ADMIN = "/admin"
SESSION_COOKIE = "storyloop_session"  # app/main.py
SKIPPED_METHODS = {"HEAD", "OPTIONS"}

# Endpoints the admin area must have once its routers are written (checked when they have routes).
KNOWN_API_ADMIN = {
    ("POST", "/api/v1/admin/imports"),
    ("POST", "/api/v1/admin/batches"),
    ("GET", "/api/v1/admin/users"),
    ("POST", "/api/v1/admin/users"),
    ("POST", "/api/v1/admin/invites"),
    ("GET", "/api/v1/admin/exports"),
}
KNOWN_API_ADMIN_PREFIXES = ("/api/v1/admin/exports/",)
KNOWN_PAGES_ADMIN = {("GET", "/admin"), ("GET", "/admin/users"), ("GET", "/admin/import"), ("GET", "/admin/exports")}


# ---------------------------------------------------------------- the route list


def _iter_routes(app) -> Iterator[tuple[str, str]]:
    """(method, path template) of every HTTP route, also inside included routers.

    FastAPI 0.165 keeps included routers as wrapper objects in app.routes; its public
    iter_route_contexts flattens them. Older versions list the routes directly."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: routes are flat (Mounts aside)
        iter_route_contexts = None

    def walk(routes):
        contexts = iter_route_contexts(routes) if iter_route_contexts else routes
        for route in contexts:
            path, methods = getattr(route, "path", None), getattr(route, "methods", None)
            children = getattr(route, "routes", None)
            if children and path is not None and not methods:  # a Mount of a sub-router
                for method, child in walk(children):
                    yield method, path.rstrip("/") + child
                continue
            if path is None or not methods:
                continue
            for method in methods:
                yield method, path

    seen = set(walk(app.routes))
    # The OpenAPI schema as a second source (it lists every API route that is in the schema).
    for path, operations in app.openapi().get("paths", {}).items():
        for method in operations:
            if method.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
                seen.add((method.upper(), path))
    return iter(sorted((m, p) for m, p in seen if m not in SKIPPED_METHODS))


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _fill(path: str) -> str:
    """Dummy values for path parameters: "1" parses as an id and as a word; {x:path} gets a file name."""
    return re.sub(r"\{([^}:]+)(:path)?\}", lambda m: "dummy/file.txt" if m.group(2) else "1", path)


def _app_routes(app, prefix: str) -> list[tuple[str, str]]:
    return [(m, p) for m, p in _iter_routes(app) if _under(p, prefix)]


# ---------------------------------------------------------------- people


def _add_user(database, settings, username: str, role: str) -> tuple[str, str]:
    """A user with an API token and a signed-in browser session; returns both secrets."""
    with database.write() as db:
        user = User(username=username, password_hash=hash_password("correct horse battery"), role=role)
        db.add(user)
        db.flush()
        token = new_token()
        db.add(ApiToken(user_id=user.id, token_hash=token_digest(token), name="roles",
                        expires_at=utcnow() + timedelta(days=1)))
        return token, sessions.start(db, user, settings, utcnow())


def _session_cookie(secret_key: str, session_id: str) -> str:
    """A signed session cookie as Starlette's SessionMiddleware writes it after a login."""
    data = base64.b64encode(json.dumps({sessions.COOKIE_KEY: session_id}).encode())
    return TimestampSigner(str(secret_key)).sign(data).decode()


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """Access rules do not depend on the database: SQLite only."""
    return sqlite_url


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    """Server errors come back as 500 responses: this test judges access, other tests judge pages."""
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def people(database, settings) -> dict[str, dict]:
    made = {}
    for role in ("annotator", "evaluator", "admin"):
        token, session_id = _add_user(database, settings, f"the-{role}", role)
        made[role] = {"headers": {"Authorization": f"Bearer {token}"},
                      "cookies": {SESSION_COOKIE: _session_cookie(settings.secret_key, session_id)}}
    return made


def _call(client: TestClient, method: str, path: str, headers=None, cookies=None):
    client.cookies.clear()
    if cookies:
        client.cookies.update(cookies)
    return client.request(method, _fill(path), headers={"Accept": "text/html", **(headers or {})},
                          follow_redirects=False)


def _is_login_redirect(response) -> bool:
    return response.status_code in (302, 303, 307) and response.headers.get("location", "").startswith("/login")


# ---------------------------------------------------------------- the matrix


def test_route_discovery_sees_included_routers(app):
    routes = set(_iter_routes(app))
    assert ("POST", "/api/v1/tasks/next") in routes
    assert ("POST", "/api/v1/tasks/{assignment_id}/bws") in routes
    assert ("GET", "/healthz") in routes  # not in the OpenAPI schema: found by walking the routes


def test_admin_api_refuses_everybody_but_admins(client, people):
    routes = _app_routes(client.app, API_ADMIN)
    if not routes:
        pytest.skip("no /api/v1/admin routes yet")
    failures = []
    for method, path in routes:
        response = _call(client, method, path)
        if response.status_code != 401:
            failures.append(f"anonymous {method} {path}: {response.status_code}")
        for role in ("annotator", "evaluator"):
            # A session cookie must not open the API either, nor a token with the wrong role.
            response = _call(client, method, path, headers=people[role]["headers"], cookies=people[role]["cookies"])
            if response.status_code != 403:
                failures.append(f"{role} {method} {path}: {response.status_code} {response.text[:200]}")
        response = _call(client, method, path, cookies=people["admin"]["cookies"])
        if response.status_code != 401:  # the API takes bearer tokens only
            failures.append(f"admin session cookie without token {method} {path}: {response.status_code}")
        if method == "GET":
            response = _call(client, method, path, headers=people["admin"]["headers"])
            if response.status_code == 401 or (response.status_code == 403 and "admins only" in response.text):
                failures.append(f"admin {method} {path}: {response.status_code}")
    assert not failures, "\n".join(failures)


def test_admin_pages_redirect_anonymous_and_refuse_other_roles(client, people):
    routes = _app_routes(client.app, PAGES_ADMIN)
    if not routes:
        pytest.skip("no /admin pages yet")
    failures = []
    for method, path in routes:
        response = _call(client, method, path)
        if method == "GET":
            if not _is_login_redirect(response):
                failures.append(f"anonymous {method} {path}: {response.status_code} {response.headers.get('location')}")
        elif not (_is_login_redirect(response) or response.status_code in (401, 403)):
            failures.append(f"anonymous {method} {path}: {response.status_code}")
        for role in ("annotator", "evaluator"):
            # A bearer token of an admin must not open pages (they take the session cookie only)...
            response = _call(client, method, path, cookies=people[role]["cookies"], headers=people["admin"]["headers"])
            if response.status_code != 403:
                failures.append(f"{role} {method} {path}: {response.status_code} {response.headers.get('location')}")
        if method == "GET":
            response = _call(client, method, path, cookies=people["admin"]["cookies"])
            if _is_login_redirect(response) or response.status_code in (401, 403):
                failures.append(f"admin {method} {path}: {response.status_code} {response.headers.get('location')}")
    assert not failures, "\n".join(failures)


def test_known_admin_endpoints_exist(app):
    """Guards the generated matrix against an admin router that silently lost its routes."""
    api = set(_app_routes(app, API_ADMIN))
    pages = set(_app_routes(app, PAGES_ADMIN))
    if not api and not pages:
        pytest.skip("the admin routers are not written yet")
    if api:
        assert KNOWN_API_ADMIN <= api, sorted(KNOWN_API_ADMIN - api)
        for prefix in KNOWN_API_ADMIN_PREFIXES:
            assert any(p.startswith(prefix) for _, p in api), f"nothing under {prefix}"
    if pages:
        assert KNOWN_PAGES_ADMIN <= pages, sorted(KNOWN_PAGES_ADMIN - pages)
