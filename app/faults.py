"""Which exceptions mean "the database or the disk is briefly unavailable" rather than a bug.

Those are answered 503 with Retry-After (see app/main.py): PostgreSQL restarting or refusing
connections, a full disk, a read-only database or data folder. Writes are transactions, so a
failed request stored nothing; when a commit's outcome is unknown (the connection broke during
it), the client's retry with the same idempotency key gets the stored judgement, never a second one.
Everything else (a programming error, a constraint violation, "no such table") stays a 500.
"""

import errno
import sqlite3

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

try:  # the PostgreSQL driver; absent on a SQLite-only install
    import psycopg
    _PSYCOPG_UNAVAILABLE: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
except ImportError:  # pragma: no cover
    _PSYCOPG_UNAVAILABLE = ()

RETRY_AFTER_SECONDS = 3

# SQLite reports every failure as OperationalError, bugs ("no such table") included: match the message.
_UNAVAILABLE_MESSAGES = (
    "database or disk is full",
    "attempt to write a readonly database",
    "unable to open database file",
    "disk i/o error",
    "database is locked",
    "no space left on device",
    "read-only file system",
    # PostgreSQL, when the driver error is wrapped in a way not covered below
    "the database system is shutting down",
    "the database system is starting up",
    "terminating connection due to administrator command",
    "cannot connect now",
    "connection refused",
    "server closed the connection unexpectedly",
)

_UNAVAILABLE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO}


def is_unavailable(exc: BaseException) -> bool:
    """True when exc says the database or the disk is unavailable for now (worth a retry)."""
    if isinstance(exc, PoolTimeout):  # every pooled connection busy, e.g. while PostgreSQL restarts
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig
    if isinstance(exc, _PSYCOPG_UNAVAILABLE):  # connection failures, shutdown, disk full (53100), I/O (58030)
        return True
    if isinstance(exc, sqlite3.DatabaseError):  # OperationalError included
        return any(m in str(exc).lower() for m in _UNAVAILABLE_MESSAGES)
    if isinstance(exc, OSError):
        return exc.errno in _UNAVAILABLE_ERRNOS
    return any(m in str(exc).lower() for m in _UNAVAILABLE_MESSAGES)
