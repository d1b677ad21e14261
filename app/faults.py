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

try:  # the PostgreSQL drivers (psycopg under SQLAlchemy, asyncpg on the annotation path); absent on a SQLite-only install
    import asyncpg
    import psycopg
    _POSTGRES_UNAVAILABLE: tuple[type[Exception], ...] = (
        psycopg.OperationalError, psycopg.InterfaceError,
        asyncpg.PostgresConnectionError,  # class 08: connection failures, closed mid-statement included
        asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, starting up, terminated
        asyncpg.exceptions.InsufficientResourcesError,  # class 53: disk full, out of memory, too many connections
        asyncpg.exceptions.PostgresSystemError,  # class 58: I/O errors
    )
except ImportError:  # pragma: no cover
    _POSTGRES_UNAVAILABLE = ()

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
    # asyncpg: a connection the server closed, or one that got its "terminating connection" while
    # idle and is not closed yet (it refuses the next statement before sending anything)
    "connection is closed",
    "cannot switch to state",
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
    if isinstance(exc, _POSTGRES_UNAVAILABLE):  # connection failures, shutdown, disk full (53100), I/O (58030)
        return True
    if isinstance(exc, sqlite3.DatabaseError):  # OperationalError included
        return any(m in str(exc).lower() for m in _UNAVAILABLE_MESSAGES)
    if isinstance(exc, ConnectionError):  # refused or reset: asyncpg opening a connection while PostgreSQL is down
        return True
    if isinstance(exc, OSError):
        return exc.errno in _UNAVAILABLE_ERRNOS
    return any(m in str(exc).lower() for m in _UNAVAILABLE_MESSAGES)
