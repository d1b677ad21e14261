"""Whether the next task is a gold check, and which one (the admin side is app/services/gold.py).

Cheap by design, since it runs on every lease: the gold rate and the task kinds that have gold items
are read at most every REFRESH_SECONDS per process (and at once after an admin changes them in this
process); without gold items, or at rate 0, a lease costs one dictionary lookup more. When gold
items exist, each lease is a gold check with probability `rate`, drawn independently (no pattern an
annotator could learn, and nothing to keep in step across worker processes).

Gold tasks carry serve_rank GOLD_RANK, past every rank the normal lease query takes, so only
`pick_statement` hands them out: a gold task of the asked kinds, drawn at random, that this person
has not had (the (task, user) unique assignment keeps it so), from a batch that is not paused. It
takes no notice of R: everyone may get each gold task once.
"""

import asyncio
import random
import time
import weakref
from dataclasses import dataclass
from functools import cache

from sqlalchemy import Connection, bindparam, func, literal, or_, select

from app.db import Database
from app.models import AppSetting, Assignment, Batch, GoldItem, Task

GOLD_RANK = 5  # Task.serve_rank of gold tasks: above "paused" (4), so the normal lease query never takes them
REFRESH_SECONDS = 5.0
SETTINGS_KEY = "gold"
DEFAULT_RATE = 0.1

# Draws whether a lease is a gold check. From the OS, as the item shuffles are (tests may replace it).
draw = random.SystemRandom()


@dataclass(frozen=True)
class _Serving:
    rate: float
    kinds: frozenset[str]  # task kinds with at least one gold item
    checked_at: float


_RATE = select(AppSetting.value).where(AppSetting.key == SETTINGS_KEY)
_GOLD_KINDS = select(Task.kind).join(GoldItem, GoldItem.task_id == Task.id).distinct()


def _rate_of(stored: dict | None) -> float:
    return float((stored or {}).get("rate", DEFAULT_RATE))


def rate(db) -> float:
    """The gold rate as stored now (a session or connection), for what is not on the lease path."""
    return _rate_of(db.scalar(_RATE))


async def refresh(database: Database) -> _Serving:
    """Loads the gold rate and kinds into this process's cache."""
    stored = await database.fetch_one(_RATE, {})
    kinds = await database.fetch_all(_GOLD_KINDS, {})
    serving = _Serving(_rate_of(stored.value if stored else None),
                       frozenset(row.kind for row in kinds), time.monotonic())
    database.state["gold_serving"] = serving
    return serving


def forget(database: Database) -> None:
    """Drops this process's cached rate and kinds (after an admin changed them)."""
    database.state.pop("gold_serving", None)


async def _current(database: Database) -> _Serving:
    """The cached rate and kinds, refreshed every REFRESH_SECONDS by one load per event loop at a
    time: when every lease that found them stale loaded them itself, the first requests of a burst
    of annotators each waited behind dozens of identical loads (p99 about 0.3 s in the first second
    at 1,000 annotators). Only a process with nothing cached waits for the load."""
    serving: _Serving | None = database.state.get("gold_serving")
    if serving is not None and time.monotonic() - serving.checked_at <= REFRESH_SECONDS:
        return serving
    loop = asyncio.get_running_loop()
    loading = database.state.setdefault("gold_loading", weakref.WeakKeyDictionary())
    task = loading.get(loop)
    if task is None:
        task = loading[loop] = loop.create_task(refresh(database))

        def finished(done: asyncio.Task) -> None:
            del loading[loop]
            if not done.cancelled():
                done.exception()  # a failed load is retried by the next lease; nobody else awaits it
        task.add_done_callback(finished)
    if serving is not None:
        return serving  # seconds old: the lease goes on while the load runs
    return await asyncio.shield(task)


async def due(database: Database, kinds: tuple[str, ...]) -> bool:
    """Whether this lease should be a gold check: gold items of these kinds exist and the draw says so."""
    serving = await _current(database)
    if serving.rate <= 0 or serving.kinds.isdisjoint(kinds):
        return False
    return draw.random() < serving.rate


@cache
def pick_statement(kinds: tuple[str, ...]):
    """A random gold task of these kinds that the user has not had, from a batch that is not paused."""
    seen = select(literal(1)).where(Assignment.task_id == Task.id, Assignment.user_id == bindparam("user_id"))
    return (select(Task.id, Task.kind, Task.prompt_id)
            .join(Batch, Batch.id == Task.batch_id)
            .where(Task.serve_rank == GOLD_RANK, or_(*(Task.kind == kind for kind in kinds)),
                   Batch.priority != "paused", seen.scalar_subquery().is_(None))
            .order_by(func.random()).limit(1))


def pick(conn: Connection, user_id: int, kinds: tuple[str, ...]):
    """(id, kind, prompt_id) of a gold task for this user, or None."""
    return conn.execute(pick_statement(kinds), {"user_id": user_id}).one_or_none()
