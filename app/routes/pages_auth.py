"""Browser pages for signing in and out, joining by invite link, the home redirect, and the
account page (password, API tokens, other browsers)."""

from datetime import datetime
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse

from app.config import Settings
from app.db import Database
from app.deps import ClientAddress, ClockDep, Csrf, DatabaseDep, PageUser, PageUserOptional, SettingsDep
from app.models import User
from app.services import logins, sessions, users
from app.services.errors import Invalid, ServiceError
from app.templating import templates
from app.validation import BoundedText, DbId, Text

router = APIRouter(include_in_schema=False)

HOME_OF_ROLE = {"annotator": "/annotate", "evaluator": "/evaluate", "admin": "/admin"}


def safe_next(target: str | None) -> str | None:
    """Only local absolute paths: never another host, scheme-relative URL or backslash trick."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if any(ord(ch) < 32 for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def home_of(user: User) -> str:
    return HOME_OF_ROLE.get(user.role, "/guidelines")


def sign_in(request: Request, database: Database, settings: Settings, now: datetime, user: User) -> None:
    # Rotate the session: nothing from before the login (CSRF token included) survives it. The cookie
    # carries only the new server-side session's id.
    request.session.clear()
    with database.write() as db:
        request.session[sessions.COOKIE_KEY] = sessions.start(db, user, settings, now)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/")
def home(user: PageUserOptional):
    if user is None:
        return _redirect("/login")
    return _redirect(home_of(user))


# ---------------------------------------------------------------- login / logout


def _login_page(request: Request, next_url: str | None, error: str = "", username: str = "", status_code: int = 200,
                headers: dict[str, str] | None = None):
    return templates.TemplateResponse(
        request, "auth/login.html",
        {"user": None, "next": next_url or "", "error": error, "username": username},
        status_code=status_code, headers=headers,
    )


@router.get("/login")
def login_form(request: Request, user: PageUserOptional, next: str | None = None):
    if user is not None:
        return _redirect(safe_next(next) or home_of(user))
    return _login_page(request, safe_next(next))


@router.post("/login", dependencies=[Csrf])
def login(
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    clock: ClockDep,
    address: ClientAddress,
    username: Annotated[BoundedText(200), Form()] = "",
    password: Annotated[BoundedText(1000), Form()] = "",
    next: Annotated[Text, Form()] = "",
):
    username = username.strip()
    try:
        user = logins.login(database, settings, username, password, address, clock())
    except logins.Throttled as exc:
        return _login_page(request, safe_next(next), exc.message, username, status_code=429,
                           headers={"Retry-After": str(exc.retry_after)})
    except logins.WrongCredentials:
        return _login_page(request, safe_next(next), "Wrong username or password (or the account is deactivated).",
                           username, status_code=401)
    sign_in(request, database, settings, clock(), user)
    return _redirect(safe_next(next) or home_of(user))


@router.post("/logout", dependencies=[Csrf])
def logout(request: Request, database: DatabaseDep):
    """Deletes the session's row: this cookie, and any copy of it, signs in nobody from now on."""
    session_id = request.session.get(sessions.COOKIE_KEY)
    if session_id:
        with database.write() as db:
            sessions.end(db, session_id)
    request.session.clear()
    return _redirect("/login")


# ---------------------------------------------------------------- invites


def _invite_page(request: Request, token: str, role: str, error: str = "", username: str = "", status_code: int = 200):
    return templates.TemplateResponse(
        request, "auth/invite.html",
        {"user": None, "token": token, "role": role, "error": error, "username": username,
         "min_password": users.MIN_PASSWORD, "action": f"/invite/{quote(token, safe='')}"},
        status_code=status_code,
    )


@router.get("/invite/{token}")
def invite_form(request: Request, token: BoundedText(100), database: DatabaseDep):
    with database.read() as db:
        invite = users.open_invite(db, token)  # NotFound -> error page
        role = invite.role
    return _invite_page(request, token, role)


@router.post("/invite/{token}", dependencies=[Csrf])
def invite_accept(
    request: Request,
    token: BoundedText(100),
    database: DatabaseDep,
    settings: SettingsDep,
    clock: ClockDep,
    username: Annotated[BoundedText(200), Form()] = "",
    password: Annotated[BoundedText(1000), Form()] = "",
    password2: Annotated[BoundedText(1000), Form()] = "",
):
    username = username.strip()
    with database.read() as db:
        role = users.open_invite(db, token).role  # NotFound -> error page
    if password != password2:
        return _invite_page(request, token, role, "The two passwords differ.", username, status_code=422)
    try:
        with database.write() as db:
            user = users.accept_invite(db, token, username, password)
    except ServiceError as exc:
        return _invite_page(request, token, role, exc.message, username, status_code=exc.status_code)
    sign_in(request, database, settings, clock(), user)
    return _redirect(home_of(user))


# ---------------------------------------------------------------- account: password, API tokens, sessions


def _account_page(request: Request, user: User, database: Database, settings: Settings, now: datetime,
                  flash: dict | None = None, status_code: int = 200):
    session_id = request.session.get(sessions.COOKIE_KEY)
    with database.read() as db:
        tokens = users.list_api_tokens(db, user.id, now)
        other_sessions = sessions.count_live(db, user.id, settings, now, except_id=session_id)
    return templates.TemplateResponse(
        request, "auth/account.html",
        {"user": user, "tokens": tokens, "other_sessions": other_sessions, "min_password": users.MIN_PASSWORD,
         "flash": flash or request.session.pop("flash", None)},
        status_code=status_code,
    )


def _back_to_account(request: Request, message: str) -> RedirectResponse:
    request.session["flash"] = {"message": message, "kind": "ok"}
    return _redirect("/account")


@router.get("/account")
def account(request: Request, user: PageUser, database: DatabaseDep, settings: SettingsDep, clock: ClockDep):
    return _account_page(request, user, database, settings, clock())


@router.post("/account/password", dependencies=[Csrf])
def change_password(
    request: Request,
    user: PageUser,
    database: DatabaseDep,
    settings: SettingsDep,
    clock: ClockDep,
    address: ClientAddress,
    current: Annotated[BoundedText(1000), Form()] = "",
    new: Annotated[BoundedText(1000), Form()] = "",
    new2: Annotated[BoundedText(1000), Form()] = "",
):
    """Checked like a login (and throttled with logins); every other browser is signed out."""
    try:
        if new != new2:
            raise Invalid("The two new passwords differ.")
        logins.change_password(database, settings, user, current, new, address, clock(),
                               keep_session=request.session.get(sessions.COOKIE_KEY))
    except logins.WrongCredentials:
        return _account_page(request, user, database, settings, clock(),
                             {"message": "The current password is wrong.", "kind": "bad"}, status_code=401)
    except ServiceError as exc:  # Invalid (422), Throttled (429)
        return _account_page(request, user, database, settings, clock(), {"message": exc.message, "kind": "bad"},
                             status_code=exc.status_code)
    return _back_to_account(request, "Password changed. Every other browser is signed out.")


@router.post("/account/tokens/{token_id}/revoke", dependencies=[Csrf])
def revoke_token(request: Request, token_id: DbId, user: PageUser, database: DatabaseDep):
    with database.write() as db:
        users.revoke_api_token(db, user.id, token_id)  # another user's token: 404 page
    return _back_to_account(request, f"API token {token_id} revoked.")


@router.post("/account/sessions/others", dependencies=[Csrf])
def sign_out_elsewhere(request: Request, user: PageUser, database: DatabaseDep):
    with database.write() as db:
        ended = sessions.end_all(db, user.id, keep=request.session.get(sessions.COOKIE_KEY))
    return _back_to_account(request, f"Signed out {ended} other browser{'s' if ended != 1 else ''}.")
