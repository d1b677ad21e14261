"""Server-side browser sessions: a row per login, so that logout and revocation end it for good.

The signed session cookie (Starlette's SessionMiddleware, main.py) carries a random session id
under "sid"; the table stores only its SHA-256, as for API tokens. A page request is signed in
while its row exists, its user is active, the absolute limit (settings.session_max_seconds after
the login) has not passed and the session was used within settings.session_idle_seconds. A cookie
copied before logout is worth nothing afterwards: the row is gone.
"""

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import User, UserSession
from app.security import new_token, token_digest

COOKIE_KEY = "sid"  # the session id's key in the signed cookie
# last_seen_at is written when it is at least this old: one write a minute per browser, not one per page.
TOUCH_EVERY = timedelta(minutes=1)


def start(db: Session, user: User, settings: Settings, now: datetime) -> str:
    """A new session for user; returns its id (for the cookie) once. Sweeps ended sessions."""
    idle_since = now - timedelta(seconds=settings.session_idle_seconds)
    db.execute(delete(UserSession).where(UserSession.expires_at <= now))
    db.execute(delete(UserSession).where(UserSession.user_id == user.id, UserSession.last_seen_at <= idle_since))
    session_id = new_token()
    db.add(UserSession(user_id=user.id, session_hash=token_digest(session_id), created_at=now, last_seen_at=now,
                       expires_at=now + timedelta(seconds=settings.session_max_seconds)))
    db.flush()
    return session_id


def user_for(db: Session, session_id: str, settings: Settings, now: datetime) -> tuple[User, int, datetime] | None:
    """(active user, session row id, last seen) for a live session id, or None: one indexed read."""
    idle_since = now - timedelta(seconds=settings.session_idle_seconds)
    row = db.execute(
        select(User, UserSession.id, UserSession.last_seen_at).join(UserSession, UserSession.user_id == User.id)
        .where(UserSession.session_hash == token_digest(session_id), User.is_active,
               UserSession.expires_at > now, UserSession.last_seen_at > idle_since)
    ).one_or_none()
    return tuple(row) if row is not None else None


def touch(db: Session, row_id: int, now: datetime) -> None:
    db.execute(update(UserSession).where(UserSession.id == row_id).values(last_seen_at=now))


def end(db: Session, session_id: str) -> None:
    """Logout: the session's row goes, so the cookie (and any copy of it) signs in nobody."""
    db.execute(delete(UserSession).where(UserSession.session_hash == token_digest(session_id)))


def _of_user(user_id: int, except_id: str | None) -> list:
    conditions = [UserSession.user_id == user_id]
    if except_id:
        conditions.append(UserSession.session_hash != token_digest(except_id))
    return conditions


def end_all(db: Session, user_id: int, keep: str | None = None) -> int:
    """Ends every session of user_id except the one with id `keep`; returns how many ended."""
    return db.execute(delete(UserSession).where(*_of_user(user_id, keep))).rowcount


def count_live(db: Session, user_id: int, settings: Settings, now: datetime, except_id: str | None = None) -> int:
    """How many live sessions (signed-in browsers) user_id has, except_id's aside."""
    idle_since = now - timedelta(seconds=settings.session_idle_seconds)
    return db.scalar(select(func.count()).select_from(UserSession).where(
        *_of_user(user_id, except_id), UserSession.expires_at > now, UserSession.last_seen_at > idle_since))
