"""Typed dependencies: the database, the settings, and the current user for pages and for the API."""

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Form, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings
from app.db import Database
from app.models import User, utcnow
from app.security import csrf_ok
from app.services import sessions, users
from app.services.item_handles import ItemHandles


# Dependencies that do no blocking work are `async def`: FastAPI runs a plain `def` dependency in
# its thread pool, and those hand-offs cost more than the work itself on the hot API paths.


async def get_database(request: Request) -> Database:
    return request.app.state.database


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_item_handles(request: Request) -> ItemHandles:
    return request.app.state.item_handles


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
# What annotators and evaluators see instead of continuation ids (app/services/item_handles.py).
HandlesDep = Annotated[ItemHandles, Depends(get_item_handles)]


async def get_clock(request: Request) -> Callable[[], datetime]:
    # Tests set app.state.clock to move time (login throttle windows) without sleeping.
    return getattr(request.app.state, "clock", utcnow)


async def client_address(request: Request) -> str:
    # The peer address; behind a reverse proxy, run uvicorn with --proxy-headers and
    # --forwarded-allow-ips so that this is the client's and not the proxy's.
    return request.client.host if request.client else ""


ClockDep = Annotated[Callable[[], datetime], Depends(get_clock)]
ClientAddress = Annotated[str, Depends(client_address)]

# ---------------------------------------------------------------- API: bearer tokens

_bearer = HTTPBearer(auto_error=False)


async def api_user(database: DatabaseDep, clock: ClockDep,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> User:
    """The token's user, read afresh on every request (no cache): a deactivation, a role change, a
    revocation or an expiry holds from the very next request."""
    if credentials is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    user = await users.user_for_token(database, credentials.credentials, clock())
    if user is None:
        raise HTTPException(401, "invalid, expired or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return user


async def api_admin(user: Annotated[User, Depends(api_user)]) -> User:
    if user.role != "admin":
        raise HTTPException(403, "admins only")
    return user


ApiUser = Annotated[User, Depends(api_user)]
ApiAdmin = Annotated[User, Depends(api_admin)]

# ---------------------------------------------------------------- pages: server-side sessions


class LoginRequired(Exception):
    """Raised for anonymous page requests; main.py answers with a redirect to the login page."""


def page_user_optional(request: Request, database: DatabaseDep, settings: SettingsDep, clock: ClockDep) -> User | None:
    """The user of the request's live server-side session (services/sessions.py), or None. The
    signed cookie alone signs in nobody: its session row must exist (logout deletes it)."""
    session_id = request.session.get(sessions.COOKIE_KEY)
    if not session_id:
        return None
    now = clock()
    with database.read() as db:
        found = sessions.user_for(db, session_id, settings, now)
    if found is None:  # logged out, revoked, run out, or the user was deactivated
        request.session.clear()
        return None
    user, row_id, last_seen_at = found
    if now - last_seen_at >= sessions.TOUCH_EVERY:
        with database.write() as db:
            sessions.touch(db, row_id, now)
    return user


def page_user(user: Annotated[User | None, Depends(page_user_optional)]) -> User:
    if user is None:
        raise LoginRequired()
    return user


def page_admin(user: Annotated[User, Depends(page_user)]) -> User:
    if user.role != "admin":
        raise HTTPException(403, "admins only")
    return user


def check_csrf(request: Request, csrf: Annotated[str, Form()] = "") -> None:
    """Every browser form posts the session's CSRF token; a form from another site cannot know it."""
    if not csrf_ok(request.session, csrf):
        raise HTTPException(403, "the form expired or came from elsewhere; reload the page and try again")


PageUser = Annotated[User, Depends(page_user)]
PageUserOptional = Annotated[User | None, Depends(page_user_optional)]
PageAdmin = Annotated[User, Depends(page_admin)]
Csrf = Depends(check_csrf)
