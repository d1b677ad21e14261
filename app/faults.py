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


# PostgreSQL refusing a new connection because a limit is reached: max_connections ("sorry, too many
# clients already"), or a database's or role's CONNECTION LIMIT. SQLSTATE 53300, which psycopg does
# not carry on a failed connect: match the message.
_TOO_MANY_CONNECTIONS = ("too many clients", "too many connections")


def too_many_connections(exc: BaseException) -> bool:
    """True when PostgreSQL refused a new connection because its connection limit is reached."""
    return any(m in str(exc).lower() for m in _TOO_MANY_CONNECTIONS)


class DatabaseUnavailable(RuntimeError):
    """The app refuses to start: the database refuses connections or cannot be reached."""


def described(exc: BaseException) -> str:
    """The driver's message on one line (SQLAlchemy's wrapper adds its class and a link)."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split()) or type(exc).__name__


def refused_start(exc: BaseException, connections_per_worker: int) -> DatabaseUnavailable:
    """The startup error for an unavailable database: what happened, and what to do."""
    if too_many_connections(exc):
        hint = too_many_connections_hint(connections_per_worker)
        return DatabaseUnavailable(f"refusing to start: {hint} ({described(exc)})")
    return DatabaseUnavailable(f"refusing to start: the database is unavailable ({described(exc)}); "
                               "check STORYLOOP_DATABASE_URL and that the database is up")


def too_many_connections_hint(connections_per_worker: int) -> str:
    """What an operator can do about it, for the log and startup errors."""
    return (f"PostgreSQL refused a new connection: its connection limit is reached. Each web worker holds up to "
            f"{connections_per_worker} connections (STORYLOOP_DB_ANNOTATION_CONNECTIONS + STORYLOOP_DB_POOL_SIZE + "
            "STORYLOOP_DB_MAX_OVERFLOW); run fewer workers, lower those, or raise PostgreSQL's max_connections "
            "(docs/operations.md, \"PostgreSQL connections\")")
