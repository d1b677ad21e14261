"""Password logins (API token endpoint and login form) with throttling of failed attempts, and
password changes (checked like a login).

Counters live in the database (table login_throttle), one row per account name and one per client
address, each counting failures in a fixed window that starts at the first failure. They hold for
every worker process and every restart without anything else to run. Only logins write them: the
annotation hot path never touches the table.

A login runs in three steps, and the argon2 check holds no transaction (on SQLite a check inside a
write transaction held the single write lock for its whole ~50 ms, and a flood of wrong passwords
stalled every annotation submission):

1. a short write: count this attempt as a failure of its account and of its address up front
   (one atomic upsert each) and read the user. If a count would pass its limit, the transaction is
   rolled back and the attempt refused (429, no password check). Counting before checking keeps the
   limit exact even for a burst of attempts sent at once, across worker processes.
2. no transaction: argon2 against the user's hash, or against a fixed dummy hash when the user is
   unknown or inactive, so that both cost the same and timing does not reveal which names exist.
3. on success only, a short write: the account's counter is deleted (a success resets it) and the
   address's reserved failure is given back. A failure writes nothing more.

Unknown names are counted and locked exactly like real ones, so 429s do not reveal them either.
"""

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.models import LoginThrottle, User, UTCDateTime
from app.security import hash_password, verify_dummy, verify_password
from app.services import sessions, users
from app.services.errors import ServiceError

WRONG_CREDENTIALS = "wrong username or password, or the account is deactivated"


class WrongCredentials(ServiceError):
    status_code = 401


class Throttled(ServiceError):
    status_code = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after  # whole seconds, for the Retry-After header


@dataclass(frozen=True)
class _Counter:
    key: str
    limit: int
    refusal: str  # the message when this counter is full


def _key(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


def _counters(settings: Settings, username: str, address: str) -> list[_Counter]:
    counters = [
        _Counter(_key("account", username), settings.login_failures_per_account,
                 "Too many failed logins for this account"),
        _Counter(_key("address", address), settings.login_failures_per_address,
                 "Too many failed logins from your address"),
    ]
    # One lock order for every transaction: two logins never wait on each other's rows in a cycle.
    return sorted(counters, key=lambda c: c.key)


def _count_failure(db: Session, key: str, now: datetime, window: timedelta) -> tuple[int, datetime]:
    """Adds one failure to key's counter (a new window if the old one ended) in one atomic upsert;
    returns the count and the window's end. Concurrent upserts of one key wait on its row."""
    table = LoginThrottle.__table__
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    ended = table.c.window_ends_at <= literal(now, UTCDateTime())
    new_end = literal(now + window, UTCDateTime())
    statement = (
        insert(table).values(key=key, failures=1, window_ends_at=now + window)
        .on_conflict_do_update(index_elements=[table.c.key], set_={
            "failures": case((ended, 1), else_=table.c.failures + 1),
            "window_ends_at": case((ended, new_end), else_=table.c.window_ends_at),
        })
        .returning(table.c.failures, table.c.window_ends_at)
    )
    failures, ends_at = db.execute(statement).one()
    return failures, ends_at


def count_attempt(db: Session, kind: str, value: str, now: datetime, window: timedelta) -> tuple[int, datetime]:
    """One more attempt of `kind` by `value` (an address, a link) in a fixed window, as logins count
    their failures: the count and the window's end. For other throttles (app/services/crowd.py)."""
    return _count_failure(db, _key(kind, value), now, window)


def retry_message(refusal: str, retry_after: int) -> str:
    minutes = math.ceil(retry_after / 60)
    return f"{refusal}. Try again in {minutes} minute{'s' if minutes != 1 else ''}."


def _sweep(db: Session, now: datetime) -> None:
    """Deletes counters whose window has ended (an ended window counts as zero anyway). SKIP LOCKED
    (PostgreSQL): rows another login holds are left for later; waiting on them could deadlock."""
    ended = (select(LoginThrottle.key).where(LoginThrottle.window_ends_at <= now)
             .with_for_update(skip_locked=True).scalar_subquery())
    db.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(ended)))


def retry_after_seconds(ends_at: datetime, now: datetime) -> int:
    return max(1, math.ceil((ends_at - now).total_seconds()))


def login(database: Database, settings: Settings, username: str, password: str, address: str,
          now: datetime) -> User:
    """The user whose password this is; raises WrongCredentials (401) or Throttled (429)."""
    if not username or not password:  # nothing was guessed: nothing to count or check
        raise WrongCredentials(WRONG_CREDENTIALS)
    counters = _counters(settings, username, address)
    window = timedelta(seconds=settings.login_window_seconds)

    # 1. Reserve the attempt and read the user, in one short write.
    with database.write() as db:
        _sweep(db, now)
        full = []
        for counter in counters:
            failures, ends_at = _count_failure(db, counter.key, now, window)
            if failures > counter.limit:
                full.append((counter, retry_after_seconds(ends_at, now)))
        if full:  # raising rolls the counts back: a refused attempt neither counts nor lengthens the lock
            counter, retry_after = max(full, key=lambda item: item[1])
            raise Throttled(retry_message(counter.refusal, retry_after), retry_after)
        user = db.scalar(select(User).where(User.username == username))

    # 2. The argon2 check, outside any transaction.
    if user is None or not user.is_active:
        verify_dummy(password)
        raise WrongCredentials(WRONG_CREDENTIALS)
    if not verify_password(user.password_hash, password):
        raise WrongCredentials(WRONG_CREDENTIALS)

    # 3. Success: reset the account, and give back the address's reserved failure.
    account_key, address_key = _key("account", username), _key("address", address)
    with database.write() as db:
        db.execute(delete(LoginThrottle).where(LoginThrottle.key == account_key))
        db.execute(update(LoginThrottle).where(LoginThrottle.key == address_key, LoginThrottle.failures > 0)
                   .values(failures=LoginThrottle.failures - 1))
    return user


def change_password(database: Database, settings: Settings, user: User, current: str, new: str, address: str,
                    now: datetime, keep_session: str | None) -> None:
    """Sets user's password to `new` once `current` passes a login check (throttled like a login: a
    stolen session cannot guess the password faster there). Ends every other session of the user and
    keeps `keep_session`, the browser that made the change. API tokens stay: they were made with the
    password but do not contain it; the Account page lists them to revoke.
    Raises Invalid (422), WrongCredentials (401) or Throttled (429)."""
    users.check_password(new, "new password")
    login(database, settings, user.username, current, address, now)
    password_hash = hash_password(new)  # argon2 outside the write transaction, as for logins
    with database.write() as db:
        db.execute(update(User).where(User.id == user.id).values(password_hash=password_hash))
        sessions.end_all(db, user.id, keep=keep_session)
