"""Accounts, invites, roles and API tokens."""

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ROLES, ApiToken, Invite, User, utcnow
from app.security import hash_password, new_token, token_digest, verify_dummy, verify_password
from app.services.errors import Conflict, Invalid, NotFound

MIN_PASSWORD = 8


def _check(username: str, password: str, role: str) -> None:
    if not username or len(username) > 64 or not username.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise Invalid("username must be 1-64 letters, digits, '.', '-' or '_'")
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"password must have at least {MIN_PASSWORD} characters")
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")


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
    if role is not None:
        if role not in ROLES:
            raise Invalid(f"role must be one of {', '.join(ROLES)}")
        user.role = role
    if is_active is not None:
        user.is_active = is_active
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


def create_api_token(db: Session, user: User, name: str = "") -> str:
    """Returns the token once; only its digest is stored."""
    token = new_token()
    db.add(ApiToken(user_id=user.id, token_hash=token_digest(token), name=name))
    db.flush()
    return token


def user_for_token(db: Session, token: str) -> User | None:
    return db.scalar(select(User).join(ApiToken, ApiToken.user_id == User.id)
                     .where(ApiToken.token_hash == token_digest(token), User.is_active))
