"""Passwords, bearer tokens and CSRF tokens. Sessions are Starlette's signed cookies (see main.py)."""

import functools
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    # Made by the same hasher as real hashes, so checking against it costs what a real check costs.
    return _hasher.hash(secrets.token_urlsafe(16))


def verify_dummy(password: str) -> bool:
    """For an unknown or inactive user: spend the time of a real check, so that the answer's timing
    does not tell which usernames exist. Always False."""
    verify_password(_dummy_hash(), password)
    return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Bearer tokens are stored only as their SHA-256: a leaked database leaks no tokens."""
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(session: dict) -> str:
    """The session's CSRF token, created on first use; every browser form carries it."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def csrf_ok(session: dict, submitted: str | None) -> bool:
    expected = session.get("csrf")
    return bool(expected and submitted and hmac.compare_digest(expected, submitted))
