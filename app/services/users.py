"""Accounts, invites, roles and API tokens."""

from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy import bindparam, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, make_transient_to_detached

from app.config import Settings
from app.db import Database
from app.models import ROLES, TOKEN_NAME_MAX, ApiToken, Invite, User, utcnow
from app.security import hash_password, new_token, token_digest, verify_dummy, verify_password
from app.services import sessions
from app.services.errors import Conflict, Invalid, NotFound

MIN_PASSWORD = 8


def _check(username: str, password: str, role: str) -> None:
    if not username or len(username) > 64 or not username.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise Invalid("username must be 1-64 letters, digits, '.', '-' or '_'")
    check_password(password)
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")


def check_password(password: str, field: str = "password") -> None:
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"{field} must have at least {MIN_PASSWORD} characters")


def create_user(db: Session, username: str, password: str, role: str = "annotator") -> User:
    _check(username, password, role)
    if db.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"username {username!r} is taken")
    user = User(username=username, password_hash=hash_password(password), role=role)
    db.add(user)
    db.flush()
    return user


def authenticate(db: Session, username: str, password: str) -> User | None:
    """A plain password check without throttling, for scripts and tests; the web app's logins go
    through services/logins.py."""
    user = db.scalar(select(User).where(User.username == username))
    if user is None or not user.is_active:
        verify_dummy(password)  # an unknown name costs what a known one does
        return None
    if not verify_password(user.password_hash, password):
        return None
    return user


def get_user(db: Session, user_id: int) -> User:
    user = db.get(User, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}")
    return user


def list_users(db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.id)))


def update_user(db: Session, user_id: int, role: str | None = None, is_active: bool | None = None,
                acting: User | None = None) -> User:
    """Changes role or activity. An admin (`acting`) cannot lock themselves out."""
    if acting is not None and acting.id == user_id:
        if is_active is False:
            raise Conflict("You cannot deactivate your own account.")
        if role is not None and role != "admin":
            raise Conflict("You cannot take away your own admin role (ask another admin).")
    user = get_user(db, user_id)
    if role is not None and role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")
    demoted_or_promoted = role is not None and role != user.role
    deactivated = is_active is False and user.is_active
    if role is not None:
        user.role = role
    if is_active is not None:
        user.is_active = is_active
    if demoted_or_promoted or deactivated:
        # Credentials are given for a role: a new role or a deactivation ends every session and token
        # (requests check role and activity anyway; this also ends the old role's open pages and
        # keeps an annotator's script token from turning into an admin's).
        revoke_credentials(db, user.id)
    return user


def create_invite(db: Session, role: str, created_by: User | None, days: int = 14) -> Invite:
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")
    invite = Invite(
        token=new_token(), role=role, created_by_id=created_by.id if created_by else None,
        expires_at=utcnow() + timedelta(days=days),
    )
    db.add(invite)
    db.flush()
    return invite


def open_invite(db: Session, token: str, lock: bool = False) -> Invite:
    query = select(Invite).where(Invite.token == token)
    invite = db.scalar(query.with_for_update() if lock else query)
    if invite is None or invite.used_at is not None or invite.expires_at < utcnow():
        raise NotFound("this invite link is unknown, used or expired")
    return invite


def accept_invite(db: Session, token: str, username: str, password: str) -> User:
    invite = open_invite(db, token, lock=True)  # two people on one link: the second waits, then finds it used
    user = create_user(db, username, password, invite.role)
    invite.used_by_id, invite.used_at = user.id, utcnow()
    return user


# ---------------------------------------------------------------- API tokens


class TokenInfo(BaseModel):
    """What the owner (and an admin) may see of a token: never the secret (only its digest is stored)."""

    id: int
    name: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None = Field(description="to within a few minutes")


def _info(token: ApiToken) -> TokenInfo:
    return TokenInfo(id=token.id, name=token.name, created_at=token.created_at, expires_at=token.expires_at,
                     last_used_at=token.last_used_at)


def token_lifetime(settings: Settings, name: str, days: int | None) -> timedelta:
    """Checks a token request's name and lifetime (before any password check); returns the lifetime."""
    if len(name) > TOKEN_NAME_MAX:
        raise Invalid(f"name: at most {TOKEN_NAME_MAX} characters")
    days = settings.token_max_days if days is None else days
    if not 1 <= days <= settings.token_max_days:
        raise Invalid(f"expires_in_days: from 1 to {settings.token_max_days}")
    return timedelta(days=days)


def create_api_token(db: Session, user: User, settings: Settings, now: datetime, name: str = "",
                     days: int | None = None) -> tuple[str, TokenInfo]:
    """A new token for user, valid for `days` (settings.token_max_days at most, and by default).
    Refused (409) when the user already holds settings.tokens_per_user unexpired tokens: dropping the
    oldest instead would silently break whatever script uses it. Returns the token (this once; only
    its digest is stored) and what the list shows of it."""
    lifetime = token_lifetime(settings, name, days)
    # Lock the user's row (PostgreSQL; SQLite has one writer anyway): two logins at once cannot both
    # take the last free place.
    db.execute(select(User.id).where(User.id == user.id).with_for_update())
    db.execute(delete(ApiToken).where(ApiToken.user_id == user.id, ApiToken.expires_at <= now))
    live = db.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user.id))
    if live >= settings.tokens_per_user:
        raise Conflict(f"{user.username} already has {live} API tokens, the most allowed; revoke one first "
                       "(DELETE /api/v1/me/tokens/{id}, or on the Account page)")
    token = new_token()
    row = ApiToken(user_id=user.id, token_hash=token_digest(token), name=name, created_at=now,
                   expires_at=now + lifetime)
    db.add(row)
    db.flush()
    return token, _info(row)


# last_used_at is written when it is at least this old: one write per token every few minutes, not
# one per annotation request.
LAST_USED_RESOLUTION = timedelta(minutes=5)

# Built once, with bind parameters: building it per request (its cache key over every column of the
# user table) cost more CPU than running it.
_TOKEN_USER = (select(User.__table__, ApiToken.id.label("token_id"), ApiToken.last_used_at.label("token_last_used_at"))
               .join(ApiToken, ApiToken.user_id == User.id)
               .where(ApiToken.token_hash == bindparam("digest"), ApiToken.expires_at > bindparam("now"), User.is_active))
_MARK_USED = (update(ApiToken)
              .where(ApiToken.token_hash == bindparam("digest"), ApiToken.expires_at > bindparam("now"),
                     or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at <= bindparam("stale_before")),
                     exists().where(User.id == ApiToken.user_id, User.is_active))
              .values(last_used_at=bindparam("now")))
# PostgreSQL: the read and the mark in one statement, a CTE that updates nothing on nearly every
# request. As a statement of its own, the mark was a round trip more for each of 1,000 annotators
# arriving within seconds (and again every LAST_USED_RESOLUTION), which showed in their p99.
TOKEN_USER_MARKING_USE = _TOKEN_USER.add_cte(_MARK_USED.returning(ApiToken.id).cte("marked"))


async def user_for_token(database: Database, token: str, now: datetime) -> User | None:
    """The active user of an unexpired token, or None; the token's last use is marked at most every
    LAST_USED_RESOLUTION. One indexed read (the unique token_hash, then the user's primary key) on
    every API request: role and active state are never older than the request. Core rather than an
    ORM session: on this hot path the session and the entity loading cost about as much again as
    the query. The User comes back detached, as if loaded by a session that has closed."""
    values = {"digest": token_digest(token), "now": now, "stale_before": now - LAST_USED_RESOLUTION}
    if database.statements is not None:
        row = await database.statements.fetch_one(TOKEN_USER_MARKING_USE, values)
    else:
        row = await database.fetch_one(_TOKEN_USER, values)
        if row is not None and (row.token_last_used_at is None or row.token_last_used_at <= values["stale_before"]):
            await database.run_write(lambda conn: conn.execute(_MARK_USED, values))
    if row is None:
        return None
    user = User(**{column.key: getattr(row, column.key) for column in User.__table__.columns})
    make_transient_to_detached(user)
    return user


def list_api_tokens(db: Session, user_id: int, now: datetime) -> list[TokenInfo]:
    """user_id's unexpired tokens, newest first."""
    rows = db.scalars(select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.expires_at > now)
                      .order_by(ApiToken.id.desc()))
    return [_info(t) for t in rows]


def revoke_api_token(db: Session, user_id: int, token_id: int) -> None:
    """Deletes user_id's token token_id; another user's token is as unknown as a missing one (404)."""
    deleted = db.execute(delete(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user_id)).rowcount
    if not deleted:
        raise NotFound(f"no API token {token_id}")


def revoke_credentials(db: Session, user_id: int) -> None:
    """Every session and every API token of user_id ends now."""
    sessions.end_all(db, user_id)
    db.execute(delete(ApiToken).where(ApiToken.user_id == user_id))
