"""Building task batches, handing tasks out under leases, and storing what annotators submit.

Guarantees (tested in tests/test_concurrency.py):
- nobody gets a task twice (one assignment row per task and user, unique);
- a task is leased to at most `required` people at once, counting finished judgements;
- a submission is stored exactly once per idempotency key, even when retried or sent twice at once;
- every submission is stored; one that comes after its lease expired, or beyond R, is marked surplus.

Serving order of BWS tuples (the next task a person gets): batches pinned "up", then the newest
trainer round's batch, then the rest ("normal"), then batches pinned "down"; never "paused" ones.
Within each rank the least filled task first (counted judgements + running leases), then spread
across prompts (Task.serve_order), then the oldest. Rank and spread are kept on the task row
(serve_rank, serve_order), so the lease query walks one index (ix_task_serve).

Leasing, submitting and skipping are coroutines: their writes go through Database.run_write, which
on SQLite groups the jobs of concurrent requests into one commit.
"""

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Annotated

from pydantic import BaseModel, Field
from sqlalchemy import (
    Connection,
    Integer,
    and_,
    any_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import Database
from app.models import (
    BATCH_PRIORITIES,
    RATING_DIMENSIONS,
    Assignment,
    Batch,
    BwsJudgement,
    Continuation,
    Prompt,
    Rating,
    Task,
    TaskItem,
    User,
    utcnow,
)
from app.services import gold_serving
from app.services.bws_design import design_stats, design_tuples
from app.services.errors import Conflict, Forbidden, Invalid, NotFound
from app.services.item_handles import ItemHandles
from app.validation import BoundedText
from app.words import plural

ROLE_TASK_KINDS = {"annotator": ("bws", "rating"), "evaluator": ("rating", "eval"), "admin": ("bws", "rating", "eval")}
RATING_KINDS = ("rating", "eval")  # "eval": a blind evaluation-campaign item, rated like a rating task
# Shuffles what annotators see the order of. From the OS: Python's default generator can be
# reconstructed from enough of its outputs, and annotators see many shuffles.
_shuffler = random.SystemRandom()


# ---------------------------------------------------------------- views and inputs


class ItemView(BaseModel):
    handle: str = Field(description="this item's opaque handle, valid in this assignment only")
    text: str


class TaskView(BaseModel):
    """What an annotator or evaluator sees. Blind: no model versions, no continuation or task ids
    (both follow import and generation order, hence the version); items come under per-assignment
    handles (app/services/item_handles.py), in an order drawn at random for each assignment."""

    assignment_id: int
    kind: str
    prompt: str
    items: list[ItemView]
    expires_at: datetime


@dataclass(frozen=True)
class LeasedItem:
    continuation_id: int
    text: str


@dataclass(frozen=True)
class LeasedTask:
    """A leased task as the server knows it, ids included: for services, scripts and tests. Routes
    send annotators and evaluators its blind_view instead."""

    assignment_id: int
    task_id: int
    kind: str
    prompt: str
    items: list[LeasedItem]  # in the order shown
    expires_at: datetime


def blind_view(task: LeasedTask, handles: ItemHandles) -> TaskView:
    return TaskView(assignment_id=task.assignment_id, kind=task.kind, prompt=task.prompt, expires_at=task.expires_at,
                    items=[ItemView(handle=handles.handle(task.assignment_id, item.continuation_id), text=item.text)
                           for item in task.items])


ItemHandle = Annotated[str, Field(min_length=1, max_length=64, description="the handle of an item of this task, as shown")]


class BwsSubmission(BaseModel):
    best: ItemHandle
    worst: ItemHandle
    idempotency_key: BoundedText(100, min_length=8)
    duration_ms: int | None = Field(None, ge=0, le=24 * 3600 * 1000)


class RatingSubmission(BaseModel):
    # strict: JSON true is not a score of 1, nor "3" a score of 3 (the form route parses its own fields)
    grammar: int = Field(ge=1, le=5, strict=True)
    creativity: int = Field(ge=1, le=5, strict=True)
    consistency: int = Field(ge=1, le=5, strict=True)
    plot: int = Field(ge=1, le=5, strict=True)
    comment: BoundedText(5000) = ""
    idempotency_key: BoundedText(100, min_length=8)
    duration_ms: int | None = Field(None, ge=0, le=24 * 3600 * 1000)


class SubmitResult(BaseModel):
    judgement_id: int
    # False: the lease had run out, so it was stored as surplus. A gold check beyond its R is stored as
    # surplus too but answered as counted: what an annotator sees never tells gold apart (gold_serving.py).
    counted: bool
    replayed: bool  # True: this idempotency key was seen before; nothing new was stored
    # With ?next=true: the next task, leased in the same request (saves a round trip per judgement).
    next_task: TaskView | None = None


class Progress(BaseModel):
    done_today: int
    done_total: int
    tasks_left: int
    quota: int | None = Field(None, description="your quota of judgements, if you have one")
    quota_left: int | None = Field(None, description="judgements left to do in your quota")


# ---------------------------------------------------------------- building batches


def continuations_by_prompt(
    db: Session, prompt_ids: Sequence[int] | None = None, model_version_ids: Sequence[int] | None = None
) -> dict[int, list[int]]:
    query = select(Continuation.prompt_id, Continuation.id).order_by(Continuation.prompt_id, Continuation.id)
    if prompt_ids is not None:
        query = query.where(Continuation.prompt_id.in_(prompt_ids))
    if model_version_ids is not None:
        query = query.where(Continuation.model_version_id.in_(model_version_ids))
    grouped: dict[int, list[int]] = {}
    for prompt_id, continuation_id in db.execute(query):
        grouped.setdefault(prompt_id, []).append(continuation_id)
    return grouped


def build_bws_batch(
    db: Session,
    name: str,
    continuation_ids_by_prompt: dict[int, list[int]],
    seed: int,
    required: int,
    k: int = 4,
    factor: float = 2.0,
) -> Batch:
    """Balanced BWS tuples per prompt (see bws_design); prompts with fewer than k continuations are left out."""
    if required < 1:
        raise Invalid("annotations per tuple must be at least 1")
    batch = Batch(name=name, kind="bws", seed=seed, annotations_per_task=required)
    db.add(batch)
    db.flush()
    per_prompt, tuples_of = {}, {}
    for prompt_id, ids in sorted(continuation_ids_by_prompt.items()):
        if len(set(ids)) < k:
            continue
        # Seeded per prompt, so adding prompts to a batch does not change the others' tuples.
        tuples_of[prompt_id] = design_tuples(sorted(set(ids)), k=k, factor=factor, seed=seed * 1_000_003 + prompt_id)
        per_prompt[prompt_id] = design_stats(tuples_of[prompt_id])
    if not per_prompt:
        raise Invalid(f"no prompt has at least {k} continuations to build tuples from")
    # serve_order: the j-th tuple of the i-th of n prompts is served (j * n + i)-th, so that every
    # prompt gets its first judgement of this batch before any prompt gets a second one.
    n = len(tuples_of)
    for i, (prompt_id, tuples) in enumerate(tuples_of.items()):
        for j, items in enumerate(tuples):
            task = Task(batch_id=batch.id, kind="bws", prompt_id=prompt_id, required=required, serve_order=j * n + i)
            task.items = [TaskItem(position=p, continuation_id=c) for p, c in enumerate(items)]
            db.add(task)
    batch.design = {"k": k, "factor": factor, "prompts": len(per_prompt), "per_prompt": per_prompt}
    db.flush()
    return batch


def build_rating_batch(db: Session, name: str, continuation_ids: Sequence[int], required: int) -> Batch:
    if not continuation_ids:
        raise Invalid("no continuations to rate")
    batch = Batch(name=name, kind="rating", annotations_per_task=required)
    db.add(batch)
    db.flush()
    prompt_of = dict(db.execute(select(Continuation.id, Continuation.prompt_id).where(Continuation.id.in_(continuation_ids))).all())
    missing = set(continuation_ids) - set(prompt_of)
    if missing:
        raise NotFound(f"unknown continuation ids: {sorted(missing)[:10]}")
    # Served in a shuffled order (where BWS tuples and ratings are leased together, by serve_order): the
    # given order usually follows the continuation ids, hence the versions, and judging is blind.
    serve_orders = list(range(len(continuation_ids)))
    _shuffler.shuffle(serve_orders)
    for serve_order, cid in zip(serve_orders, continuation_ids, strict=True):
        task = Task(batch_id=batch.id, kind="rating", prompt_id=prompt_of[cid], required=required, serve_order=serve_order)
        task.items = [TaskItem(position=0, continuation_id=cid)]
        db.add(task)
    db.flush()
    return batch


# ---------------------------------------------------------------- serving order of batches
#
# Task.serve_rank copies what the batch says (its pin, and whether it is the newest round's), so
# the lease query orders by one indexed column; these functions keep the copy in step.

SERVE_RANKS = {"up": 0, "newest": 1, "normal": 2, "down": 3, "paused": 4}
PAUSED_RANK = SERVE_RANKS["paused"]  # the lease query takes only tasks ranked below this


def serve_rank(priority: str, is_newest_round: bool) -> int:
    """An admin's pin wins; an unpinned ("normal") batch of the newest round comes right after "up"."""
    if priority == "normal" and is_newest_round:
        return SERVE_RANKS["newest"]
    return SERVE_RANKS[priority]


def _refresh_serve_ranks(db: Session, batch_ids: Sequence[int]) -> None:
    """Copies each batch's rank onto its tasks. Rows already right are not written, nor complete
    tasks (never served again): on PostgreSQL each written row stays locked until the commit, and
    annotators counting a judgement on it would wait. Gold tasks keep their own rank (gold_serving.py)."""
    for batch_id, priority, newest in db.execute(
            select(Batch.id, Batch.priority, Batch.is_newest_round).where(Batch.id.in_(sorted(set(batch_ids))))):
        rank = serve_rank(priority, newest)
        db.execute(update(Task).where(Task.batch_id == batch_id, Task.serve_rank != rank,
                                      Task.serve_rank != gold_serving.GOLD_RANK,
                                      Task.done_count < Task.required).values(serve_rank=rank))


def _batch(db: Session, batch_id: int) -> Batch:
    batch = db.get(Batch, batch_id)
    if batch is None:
        raise NotFound(f"no batch {batch_id}")
    return batch


def set_batch_priority(db: Session, batch_id: int, priority: str) -> Batch:
    """Pins a batch "up" or "down", pauses it, or makes it "normal" again; its tasks follow at once."""
    if priority not in BATCH_PRIORITIES:
        raise Invalid(f"priority must be one of {', '.join(BATCH_PRIORITIES)}")
    batch = _batch(db, batch_id)
    batch.priority = priority
    db.flush()
    _refresh_serve_ranks(db, [batch_id])
    return batch


def batch_serving(db: Session) -> dict[int, tuple[str, bool]]:
    """Each batch's (priority, is_newest_round), by batch id."""
    return {batch_id: (priority, newest) for batch_id, priority, newest
            in db.execute(select(Batch.id, Batch.priority, Batch.is_newest_round))}


def mark_newest_round_batch(db: Session, batch_id: int) -> None:
    """Marks the batch as the newest trainer round's (its tuples go out right after pinned-up ones),
    un-marking the previous one. Meant to run in the write session that built the batch, at its
    end: it rewrites the rank of the previous round's unfinished tasks."""
    batch = _batch(db, batch_id)
    previous = list(db.scalars(select(Batch.id).where(Batch.is_newest_round.is_(True), Batch.id != batch_id)))
    if previous:
        db.execute(update(Batch).where(Batch.id.in_(previous)).values(is_newest_round=False))
    batch.is_newest_round = True
    db.flush()
    _refresh_serve_ranks(db, [*previous, batch_id])


# ---------------------------------------------------------------- handing out tasks
#
# Hot path. Slots are counted on the task row itself (done_count + active_leases < required) and
# changed only by conditional UPDATEs, so the database serialises competing requests on that row;
# SQLite serialises all writers anyway (BEGIN IMMEDIATE).
#
# Every statement below is built once, at import, with bind parameters, and runs on a Core
# connection: SQLAlchemy then only looks its compiled form up. Building a statement per call, and
# the ORM session around it, cost several times more CPU than running it (benchmarks/annotate_load.py).

EXPIRY_SWEEP_SECONDS = 5.0

_filled = Task.done_count + Task.active_leases  # as in ix_task_serve, whose order it is
_has_slot = _filled < Task.required

# The columns of a Lease (below): everything needed to show a leased task again.
_LEASE_COLUMNS = (Assignment.id, Assignment.task_id, Task.kind, Task.prompt_id, Assignment.item_order, Assignment.expires_at)


# The statements that depend on the task kinds asked for are built once per combination of kinds
# (a handful), matching the kinds with plain equalities: SQLAlchemy renders IN (...) anew on every call.


def _is_one_of(column, values: tuple[str, ...]):
    # Not IN: PostgreSQL's AsyncStatements compile a statement once, and IN's list is rendered per call.
    return or_(*(column == value for value in values))


@cache
def _current_lease_statement(kinds: tuple[str, ...]):
    """The user's lease that is still running, if any."""
    return (select(*_LEASE_COLUMNS).join(Task, Task.id == Assignment.task_id)
            .where(Assignment.user_id == bindparam("user_id"), Assignment.status == "active",
                   Assignment.expires_at > bindparam("now"), _is_one_of(Task.kind, kinds))
            .order_by(Assignment.id).limit(1))


@cache
def _take_slot_statement(kinds: tuple[str, ...], skip_locked: bool):
    """UPDATE task SET active_leases + 1 WHERE id = (the first free task the user has not seen).

    BWS tuples go out in serving order (see the top of this module), walking ix_task_serve: by
    rank, least filled first, spread across prompts, oldest first (a tuple's items are shuffled per
    assignment, so nothing about them follows that order). Rating and evaluation items go out at
    random, drawn afresh for each lease: every person meets them in an order of their own, so blind
    ratings share no order effects, and the order never follows the task ids, which follow the
    continuations' (hence the versions') order. An arithmetic order of the ids (a per-person affine
    map, as before) kept neighbouring ids in order for most people. Those batches are small, a sort
    is cheap. Paused batches never go out. On PostgreSQL, concurrent requests skip a task that
    another request is leasing right now (SKIP LOCKED)."""
    # The outer condition re-checks the slot on the row's newest version.
    return (update(Task).where(Task.id == _first_free_task(kinds, skip_locked), _has_slot)
            .values(active_leases=Task.active_leases + 1).returning(Task.id, Task.kind, Task.prompt_id))


def _first_free_task(kinds: tuple[str, ...], skip_locked: bool):
    """The id of the first task in serving order with a free slot that the user has not seen (see above)."""
    if "bws" in kinds:
        order_by = (Task.serve_rank, _filled, Task.serve_order, Task.id)
    else:
        order_by = (func.random(),)
    # "Not seen by this user" as a scalar subquery, not NOT EXISTS: PostgreSQL turned NOT EXISTS into
    # a merge anti-join that read every assignment of every older task, more with each judgement;
    # this way each candidate task costs one probe of the (task, user) unique index.
    seen = select(literal(1)).where(Assignment.task_id == Task.id, Assignment.user_id == bindparam("user_id"))
    free = (select(Task.id).where(_has_slot, Task.serve_rank < PAUSED_RANK, _is_one_of(Task.kind, kinds),
                                  seen.scalar_subquery().is_(None))
            .order_by(*order_by).limit(1))
    if skip_locked:
        free = free.with_for_update(skip_locked=True)
    return free.scalar_subquery()


TASK_ITEMS = select(TaskItem.continuation_id).where(TaskItem.task_id == bindparam("task_id")).order_by(TaskItem.position)
NEW_LEASE = insert(Assignment).returning(Assignment.id)
LEASE_BY_ID = (select(Assignment.user_id, *_LEASE_COLUMNS).join(Task, Task.id == Assignment.task_id)
               .where(Assignment.id == bindparam("assignment_id")))
EXPIRE = (update(Assignment).where(Assignment.status == "active", Assignment.expires_at <= bindparam("now"))
          .values(status="expired").returning(Assignment.task_id))
RELEASE = update(Task).where(Task.id == bindparam("task_id")).values(active_leases=Task.active_leases - bindparam("n", type_=Integer))
PROMPT_TEXTS = select(Prompt.id, Prompt.text).where(Prompt.id.in_(bindparam("ids", expanding=True)))
CONTINUATION_TEXTS = select(Continuation.id, Continuation.text).where(Continuation.id.in_(bindparam("ids", expanding=True)))
# The same for PostgreSQL's AsyncStatements, which compile a statement once: an array, not a list expanded per call.
PROMPT_TEXTS_ANY = select(Prompt.id, Prompt.text).where(Prompt.id == any_(bindparam("ids", type_=ARRAY(Integer))))
CONTINUATION_TEXTS_ANY = select(Continuation.id, Continuation.text).where(
    Continuation.id == any_(bindparam("ids", type_=ARRAY(Integer))))
CACHE_SIZE = 100_000  # entries per cache; past that it starts afresh


@dataclass(frozen=True)
class Lease:
    assignment_id: int
    task_id: int
    kind: str
    prompt_id: int
    item_order: list[int]
    expires_at: datetime


@dataclass(frozen=True)
class KnownAssignment:
    """What never changes of an assignment, remembered by the process that leased it (PostgreSQL):
    an annotator's next request usually comes on the same kept-alive connection, so to the same
    worker, and its submission then needs no read of the assignment first."""

    user_id: int
    task_id: int
    kind: str
    item_order: list[int]


def _leased_task(conn: Connection, database: Database, lease: Lease | None) -> LeasedTask | None:
    """The lease with its texts (cached: most requests need no query for them)."""
    if lease is None:
        return None
    [prompt] = _cached(database, "prompt_texts", [lease.prompt_id],
                       lambda ids: conn.execute(PROMPT_TEXTS, {"ids": ids}).all())
    texts = _cached(database, "continuation_texts", lease.item_order,
                    lambda ids: conn.execute(CONTINUATION_TEXTS, {"ids": ids}).all())
    return _with_texts(lease, prompt, texts)


async def _leased_task_postgres(database: Database, lease: Lease | None) -> LeasedTask | None:
    """_leased_task on the event loop (AsyncStatements)."""
    if lease is None:
        return None
    texts = {}
    for name, statement, ids in (("prompt_texts", PROMPT_TEXTS_ANY, [lease.prompt_id]),
                                 ("continuation_texts", CONTINUATION_TEXTS_ANY, lease.item_order)):
        found, missing = _cache_lookup(database, name, ids)
        if missing:
            found.update(_cache_store(database, name, await database.statements.fetch_all(statement, {"ids": missing})))
        texts[name] = [found[i] for i in ids]
    return _with_texts(lease, texts["prompt_texts"][0], texts["continuation_texts"])


def _with_texts(lease: Lease, prompt: str, texts: list[str]) -> LeasedTask:
    return LeasedTask(assignment_id=lease.assignment_id, task_id=lease.task_id, kind=lease.kind, prompt=prompt,
                      items=[LeasedItem(c, t) for c, t in zip(lease.item_order, texts, strict=True)],
                      expires_at=lease.expires_at)


def _task_items(conn: Connection, database: Database, task_id: int) -> list[int]:
    """The continuations of a task in their stored order (cached)."""
    [items] = _cached(database, "task_items", [task_id],
                      lambda ids: {ids[0]: list(conn.scalars(TASK_ITEMS, {"task_id": ids[0]}))})
    return items


def _cached(database: Database, name: str, ids: list[int], load) -> list:
    """Values by id from a per-process cache, for what never changes once stored: prompts,
    continuations, the items of a task. load(missing ids) gives (id, value) pairs."""
    found, missing = _cache_lookup(database, name, ids)
    if missing:
        found.update(_cache_store(database, name, load(missing)))
    return [found[i] for i in ids]


def _cache_lookup(database: Database, name: str, ids: list[int]) -> tuple[dict, list[int]]:
    """What the cache `name` holds of ids, and the ids it lacks."""
    cache = database.state.setdefault(name, {})
    found = {i: value for i in ids if (value := cache.get(i)) is not None}
    return found, [i for i in ids if i not in found]


def _cache_store(database: Database, name: str, pairs) -> dict:
    """Adds (id, value) pairs to the cache `name` (starting it afresh past CACHE_SIZE); returns them."""
    loaded = dict(pairs)
    cache = database.state.setdefault(name, {})
    if len(cache) > CACHE_SIZE:
        cache.clear()
    cache.update(loaded)
    return loaded


def _release_leases(conn: Connection, task_ids: Sequence[int]) -> None:
    """One fewer active lease on each task (ids may repeat), in id order to keep lock order stable."""
    counts: dict[int, int] = {}
    for task_id in task_ids:
        counts[task_id] = counts.get(task_id, 0) + 1
    if counts:
        conn.execute(RELEASE, [{"task_id": t, "n": counts[t]} for t in sorted(counts)])


def expire_leases(conn: Connection, now: datetime) -> int:
    """Marks leases past their time as expired and frees their slots. Returns how many."""
    expired = conn.execute(EXPIRE, {"now": now}).scalars().all()
    _release_leases(conn, expired)
    return len(expired)


def _sweep_due(database: Database) -> bool:
    """At most one routine expiry sweep every few seconds per process (and one whenever nothing is free)."""
    now = time.monotonic()
    if now - database.state.get("last_expiry_sweep", float("-inf")) < EXPIRY_SWEEP_SECONDS:
        return False
    database.state["last_expiry_sweep"] = now
    return True


async def next_task(database: Database, user: User, lease_seconds: int, kinds: Sequence[str] | None = None) -> LeasedTask | None:
    """The user's current task if one is leased, else lease the first task in serving order with a free
    slot that they have not seen."""
    allowed = ROLE_TASK_KINDS.get(user.role, ())
    kinds = tuple(k for k in (kinds or allowed) if k in allowed)
    if not kinds:
        return None
    for _attempt in range(3):
        try:
            gold_due = await gold_serving.due(database, kinds)  # a cached flag: no query when there is no gold
            if user.task_quota is not None or user.work_ends_at is not None:  # crowd participants only
                return await _next_task_within_limits(database, user, kinds, lease_seconds, gold_due)
            if gold_due:
                if database.is_sqlite:
                    gold = await database.run_write(lambda conn: _lease_gold(conn, database, user.id, kinds, lease_seconds))
                else:
                    gold = await _lease_next_postgres(database, user.id, kinds, lease_seconds, gold=True)
                if gold is not None:
                    return gold
            if database.is_sqlite:
                return await database.run_write(lambda conn: _leased_task(
                    conn, database, _lease_next(conn, database, user.id, kinds, lease_seconds)))
            return await _lease_next_postgres(database, user.id, kinds, lease_seconds)
        except IntegrityError:
            continue  # the same user fetched twice at once; the next attempt returns that lease
    raise Conflict("could not lease a task, please retry")


# ---------------------------------------------------------------- quotas and time limits


class WorkLimitReached(Forbidden):
    """No new task for this user: their quota of judgements is done, or their time is up."""

    def __init__(self, reason: str, message: str):
        super().__init__(message, [{"reason": reason}])  # the API's 403 body says which in `errors`
        self.reason = reason  # "quota_reached" | "time_up"


LOCK_USER = select(User.id).where(User.id == bindparam("user_id")).with_for_update()
# A quota counts judgements (submitted, or stored as surplus: the work was done), not skips, plus the
# lease running now; an abandoned lease stops counting when it expires. An expired lease may still be
# answered, but only while the quota has room (_submit): leases left to run out cannot take a
# participant past it.
_JUDGED = or_(Assignment.status == "submitted", Assignment.status == "surplus")
DONE_FOR_QUOTA = select(func.count()).select_from(Assignment).where(Assignment.user_id == bindparam("user_id"), _JUDGED)
TAKEN_FROM_QUOTA = select(func.count()).select_from(Assignment).where(
    Assignment.user_id == bindparam("user_id"),
    or_(_JUDGED, and_(Assignment.status == "active", Assignment.expires_at > bindparam("now"))))
BEYOND_QUOTA = "beyond the quota"  # the skip_reason of a lease answered after the quota was done


def quota_done(quota: int, note: str = "") -> WorkLimitReached:
    return WorkLimitReached("quota_reached", f"you have done your quota of {plural(quota, 'task')}{note}")


async def _next_task_within_limits(database: Database, user: User, kinds: tuple[str, ...],
                                   lease_seconds: int, gold_due: bool) -> LeasedTask | None:
    """next_task for a user with a quota or a time limit: the running lease if any (also past the
    limits: work in hand can be finished), else a new one while under both. One write transaction
    that first locks the user's row, so that concurrent requests of one user cannot both take the
    last place of the quota. Users without limits never come here."""
    def lease(conn: Connection) -> LeasedTask | None:
        now = utcnow()
        conn.execute(LOCK_USER, {"user_id": user.id})  # PostgreSQL; SQLite has one writer anyway
        if user.task_quota is not None and conn.scalar(DONE_FOR_QUOTA, {"user_id": user.id}) >= user.task_quota:
            raise quota_done(user.task_quota)  # a lease still in hand could not be answered (_submit)
        current = conn.execute(_current_lease_statement(kinds), {"user_id": user.id, "now": now}).one_or_none()
        if current is not None:
            return _leased_task(conn, database, Lease(*current))
        if user.work_ends_at is not None and now >= user.work_ends_at:
            raise WorkLimitReached("time_up", "your time for this session is up")
        if user.task_quota is not None and conn.scalar(TAKEN_FROM_QUOTA, {"user_id": user.id, "now": now}) >= user.task_quota:
            raise quota_done(user.task_quota)
        gold = _lease_gold(conn, database, user.id, kinds, lease_seconds) if gold_due else None
        if gold is not None:
            return gold
        return _leased_task(conn, database, _lease_next(conn, database, user.id, kinds, lease_seconds))

    return await database.run_write(lease)


def _lease_gold(conn: Connection, database: Database, user_id: int, kinds: tuple[str, ...], lease_seconds: int) -> LeasedTask | None:
    """Leases a gold check (app/services/gold_serving.py) unless the user holds a running lease (that
    one comes back first) or has had every gold task. Not capped by R: the slot is taken whatever the
    task's count (judgements beyond R are stored as surplus, as always), and the assignment is like
    any other, so nothing tells the annotator it is gold."""
    now = utcnow()
    if conn.execute(_current_lease_statement(kinds), {"user_id": user_id, "now": now}).first() is not None:
        return None
    gold = gold_serving.pick(conn, user_id, kinds)
    if gold is None:
        return None
    conn.execute(update(Task).where(Task.id == gold.id).values(active_leases=Task.active_leases + 1))
    return _leased_task(conn, database, _new_assignment(conn, database, gold, user_id, now, lease_seconds))


# PostgreSQL: every statement is a network round trip (and BEGIN and COMMIT are two more), which cost
# more server CPU than the statements' own work. So the lease and the submission are one statement
# each (data-modifying CTEs), run outside an explicit transaction: a single statement is atomic.
# Row locks are taken assignment first, then task, in every statement that takes both.

# A lease's items are shown in the order of a random permutation of this many positions: BWS tuples
# hold 4 or 5 items, ratings 1. Items past it (a tuple_size above 16) would follow in stored order.
SHUFFLED_POSITIONS = 16


@cache
def _lease_statement_postgres(kinds: tuple[str, ...], gold: bool):
    """The user's running lease if any; else a slot of the first free task taken (as in
    _take_slot_statement) and its assignment inserted, its items in the order of the permutation
    `shuffle` (drawn in Python from the OS: a position's rank in it is the item's place on screen).
    `gold`: the task is a gold check (gold_serving.pick_statement, not capped by R) instead, in the
    same one statement, so that a gold lease costs what a normal one does (no timing tells them apart).
    Pass both arguments by position: the cache keys `gold=True` apart from `True`, and the statements
    prepared at worker start must be the very objects the leases run."""
    current = _current_lease_statement(kinds).cte("current_lease")
    # Joined to the free task rather than `id = (subquery)` as in _take_slot_statement: inside this
    # statement that form now and then updated nothing under concurrent leases while tasks were free
    # (the annotator got 204); the join never did (tests/test_scale.py).
    if gold:
        free = gold_serving.pick_statement(kinds).where(~exists(current.select())).subquery("free")
        slot = []  # gold is served beyond R
    else:
        free = _first_free_task(kinds, skip_locked=True).element.where(~exists(current.select())).subquery("free")
        slot = [_has_slot]
    taken = (update(Task).where(Task.id == free.c.id, *slot)
             .values(active_leases=Task.active_leases + 1).returning(Task.id, Task.kind, Task.prompt_id).cte("taken"))
    rank = func.array_position(bindparam("shuffle", type_=ARRAY(Integer)), TaskItem.position)
    shown_order = (select(func.json_agg(aggregate_order_by(TaskItem.continuation_id, rank)))
                   .where(TaskItem.task_id == taken.c.id).scalar_subquery())
    new = (insert(Assignment)
           .from_select(["task_id", "user_id", "item_order", "status", "leased_at", "expires_at"],
                        select(taken.c.id, bindparam("user_id", type_=Integer), shown_order, literal("active"),
                               bindparam("now", type_=Assignment.leased_at.type),
                               bindparam("expires_at", type_=Assignment.expires_at.type)))
           .returning(Assignment.id, Assignment.task_id, Assignment.item_order, Assignment.expires_at).cte("new_lease"))
    return select(current).union_all(
        select(new.c.id, new.c.task_id, taken.c.kind, taken.c.prompt_id, new.c.item_order, new.c.expires_at)
        .join(taken, taken.c.id == new.c.task_id))


async def _lease_next_postgres(database: Database, user_id: int, kinds: tuple[str, ...], lease_seconds: int,
                               gold: bool = False) -> LeasedTask | None:
    """A lease in one statement (_lease_statement_postgres); `gold`: a gold check, None when the user
    has had every one."""
    now = utcnow()
    if _sweep_due(database):
        await database.run_write(lambda conn: expire_leases(conn, now))

    async def lease() -> LeasedTask | None:
        shuffle = list(range(SHUFFLED_POSITIONS))
        # A fresh order per assignment, against position bias, and so that positions never follow the
        # versions (a task's stored items follow the continuation ids).
        _shuffler.shuffle(shuffle)
        values = {"user_id": user_id, "now": now, "expires_at": now + timedelta(seconds=lease_seconds), "shuffle": shuffle}
        row = await database.statements.fetch_one(_lease_statement_postgres(kinds, gold), values)
        if row is None:
            return None
        lease = Lease(*row)
        _cache_store(database, "leased_here", [(lease.assignment_id, KnownAssignment(user_id, lease.task_id, lease.kind,
                                                                                    lease.item_order))])
        return await _leased_task_postgres(database, lease)

    leased = await lease()
    # Nothing free: maybe a lease just ran out (gold is not capped by R: its leases hold no slot back).
    if leased is None and not gold and await database.run_write(lambda conn: expire_leases(conn, now)):
        leased = await lease()
    return leased


def _lease_next(conn: Connection, database: Database, user_id: int, kinds: tuple[str, ...], lease_seconds: int) -> Lease | None:
    now = utcnow()
    if _sweep_due(database):
        expire_leases(conn, now)
    current = conn.execute(_current_lease_statement(kinds), {"user_id": user_id, "now": now}).one_or_none()
    if current is not None:
        return Lease(*current)
    take_slot = _take_slot_statement(kinds, not database.is_sqlite)
    taken = conn.execute(take_slot, {"user_id": user_id}).one_or_none()
    if taken is None and expire_leases(conn, now):  # nothing free: maybe a lease just ran out
        taken = conn.execute(take_slot, {"user_id": user_id}).one_or_none()
    if taken is None:
        return None
    return _new_assignment(conn, database, taken, user_id, now, lease_seconds)


def _new_assignment(conn: Connection, database: Database, task, user_id: int, now: datetime, lease_seconds: int) -> Lease:
    """The assignment of a task (id, kind, prompt_id) whose slot has been taken, with its items in a
    fresh order: against position bias, and so that positions never follow the versions (a task's
    stored items follow the continuation ids)."""
    order = _task_items(conn, database, task.id).copy()
    _shuffler.shuffle(order)
    expires_at = now + timedelta(seconds=lease_seconds)
    assignment_id = conn.scalar(NEW_LEASE, {"task_id": task.id, "user_id": user_id, "item_order": order,
                                            "status": "active", "leased_at": now, "expires_at": expires_at})
    return Lease(assignment_id, task.id, task.kind, task.prompt_id, order, expires_at)


def get_task(database: Database, user: User, assignment_id: int) -> LeasedTask:
    with database.engine.connect() as conn:
        row = conn.execute(LEASE_BY_ID, {"assignment_id": assignment_id}).one_or_none()
        if row is None or row.user_id != user.id:
            raise NotFound("no such task of yours")
        return _leased_task(conn, database, Lease(*row[1:]))


async def skip_task(database: Database, user: User, assignment_id: int, reason: str = "") -> None:
    def skip(conn: Connection) -> None:
        row = _assignment_row(conn, user, assignment_id)
        if row.status not in ("active", "expired"):
            raise Conflict(f"this task is already {row.status}")
        _finish(conn, assignment_id, row.status, "skipped", skip_reason=reason[:500])
        if row.status == "active":
            _release_leases(conn, [row.task_id])

    await database.run_write(skip)


# ---------------------------------------------------------------- submitting

ASSIGNMENT_ROW = (
    select(Assignment.user_id, Assignment.task_id, Assignment.status, Assignment.expires_at,
           Assignment.item_order, Task.kind)
    .join(Task, Task.id == Assignment.task_id).where(Assignment.id == bindparam("assignment_id"))
)
FINISH = (
    update(Assignment).where(Assignment.id == bindparam("assignment_id"), Assignment.status == bindparam("old_status"))
    .values(status=bindparam("new_status"), finished_at=bindparam("now"), skip_reason=bindparam("reason"))
)
COUNT_JUDGEMENT = (
    update(Task).where(Task.id == bindparam("task_id"), Task.done_count < Task.required)
    .values(done_count=Task.done_count + 1, active_leases=Task.active_leases - 1)
)
INSERT_JUDGEMENT = {model: insert(model).returning(model.id) for model in (BwsJudgement, Rating)}
STORED_BY_KEY = {model: select(model.id, model.user_id, model.assignment_id, model.is_surplus, model.created_at,
                                Assignment.expires_at)
                 .join(Assignment, Assignment.id == model.assignment_id)
                 .where(model.idempotency_key == bindparam("key"))
                 for model in (BwsJudgement, Rating)}


def _answered_as_counted(is_surplus: bool, in_time: bool) -> bool:
    """SubmitResult.counted: whether the judgement came while its lease ran. A judgement in time is
    surplus only on a gold task that already has its R (gold is served beyond R): answered as counted
    all the same, as a normal task's would be, so that no answer tells a gold task apart."""
    return not is_surplus or in_time


def _assignment_row(conn: Connection, user: User, assignment_id: int):
    return _users_assignment(conn.execute(ASSIGNMENT_ROW, {"assignment_id": assignment_id}).one_or_none(), user)


def _users_assignment(row, user: User):
    """The assignment row (ASSIGNMENT_ROW) if it is the user's; another's is as unknown as a missing one."""
    if row is None or row.user_id != user.id:
        raise NotFound("no such task of yours")
    return row


OPEN_STATUSES = ("active", "expired")  # an expired lease may still be submitted, as surplus


def _open_assignment(row, user: User, kind: str | tuple[str, ...]):
    """The assignment row if it is the user's, of that kind, and still open for a submission."""
    row = _users_assignment_of_kind(row, user, kind)
    if row.status not in OPEN_STATUSES:
        raise Conflict(f"this task is already {row.status}")
    return row


def _users_assignment_of_kind(row, user: User, kind: str | tuple[str, ...]):
    row = _users_assignment(row, user)
    kinds = (kind,) if isinstance(kind, str) else kind
    if row.kind not in kinds:
        raise Invalid(f"this is a {row.kind} task, not {kinds[0]}")
    return row


def _finish(conn: Connection, assignment_id: int, old_status: str, new_status: str, skip_reason: str | None = None) -> None:
    """Moves an assignment out of old_status; a concurrent change in between is a conflict."""
    changed = conn.execute(FINISH, {"assignment_id": assignment_id, "old_status": old_status,
                                    "new_status": new_status, "now": utcnow(), "reason": skip_reason})
    if changed.rowcount != 1:
        raise Conflict("this task changed meanwhile; reload it")


def _count_judgement(conn: Connection, assignment_id: int, row, now: datetime) -> bool:
    """Stores the assignment's outcome and returns whether the judgement counts towards R.

    It counts when the lease is still valid and the task has fewer than R counted judgements; the
    check and the increment are one conditional UPDATE. Otherwise it is kept as surplus."""
    counted = False
    if row.status == "active":
        if row.expires_at > now:
            counted = conn.execute(COUNT_JUDGEMENT, {"task_id": row.task_id}).rowcount == 1
        if not counted:
            _release_leases(conn, [row.task_id])
    _finish(conn, assignment_id, row.status, "submitted" if counted else "surplus")
    return counted


def _close_beyond_quota(conn: Connection, assignment_id: int, row) -> None:
    """A lease answered after its user's quota was done: nothing is stored, the lease is closed as
    skipped and a running one gives its slot back."""
    _finish(conn, assignment_id, row.status, "skipped", skip_reason=BEYOND_QUOTA)
    if row.status == "active":
        _release_leases(conn, [row.task_id])


async def _replay(database: Database, model, user: User, key: str, assignment_id: int) -> SubmitResult | None:
    row = await database.fetch_one(STORED_BY_KEY[model], {"key": key})
    if row is None:
        return None
    if row.user_id != user.id:
        raise Conflict("this idempotency key belongs to another submission")
    if row.assignment_id != assignment_id:  # the key of another task: answering with that one would lose this one
        raise Conflict("this idempotency key was already used for another task; make a new key per submission")
    return SubmitResult(judgement_id=row.id, counted=_answered_as_counted(row.is_surplus, row.created_at < row.expires_at),
                        replayed=True)


async def _submit(database: Database, user: User, model, assignment_id: int, kinds: str | tuple[str, ...],
                  key: str, judgement) -> SubmitResult:
    """Stores a judgement exactly once per idempotency key, also when the same one races itself.

    `judgement(row, now)` checks the submission against the open assignment `row` and returns the
    judgement's columns, is_surplus aside: whether it counts is settled here. A repeated key finds its
    assignment no longer open (or hits the unique key) and is answered from the stored judgement, so
    the common first submission costs no extra lookup."""
    def store(conn: Connection) -> SubmitResult | None:  # SQLite: a job of the group commit; count, then insert
        if user.task_quota is not None:  # as in _next_task_within_limits: the user's row first
            conn.execute(LOCK_USER, {"user_id": user.id})
        row = _open_assignment(conn.execute(ASSIGNMENT_ROW, {"assignment_id": assignment_id}).one_or_none(),
                               user, kinds)
        now = utcnow()
        if user.task_quota is not None and conn.scalar(DONE_FOR_QUOTA, {"user_id": user.id}) >= user.task_quota:
            _close_beyond_quota(conn, assignment_id, row)
            return None
        columns = judgement(row, now)
        counted = _count_judgement(conn, assignment_id, row, now)
        judgement_id = conn.scalar(INSERT_JUDGEMENT[model], {**columns, "is_surplus": not counted})
        return SubmitResult(judgement_id=judgement_id, replayed=False,
                            counted=_answered_as_counted(not counted, row.status == "active" and now < row.expires_at))

    async def store_postgres() -> SubmitResult:
        # What never changes of the assignment, from this process's lease if it made it (then the
        # submission is one statement), else read; the statement itself checks that it is still open.
        known = database.state.get("leased_here", {}).pop(assignment_id, None)
        if known is None:
            known = _open_assignment(await database.statements.fetch_one(ASSIGNMENT_ROW, {"assignment_id": assignment_id}),
                                     user, kinds)
        row = _users_assignment_of_kind(known, user, kinds)
        now = utcnow()
        columns = judgement(row, now)
        stored = await database.statements.fetch_one(
            _submit_statement_postgres(model),
            {**{f"new_{name}": columns[name] for name in SUBMITTED_COLUMNS[model]}, "assignment_id": assignment_id, "now": now})
        if stored is None:  # no longer open: say why (already submitted? a duplicate of this submission?)
            _open_assignment(await database.statements.fetch_one(ASSIGNMENT_ROW, {"assignment_id": assignment_id}),
                             user, kinds)
            raise Conflict("this task changed meanwhile; reload it")
        return SubmitResult(judgement_id=stored.id, counted=_answered_as_counted(stored.is_surplus, stored.in_time),
                            replayed=False)

    try:
        if database.is_sqlite or user.task_quota is not None:  # a quota is checked under the user's row lock
            result = await database.run_write(store)
            if result is None:
                raise quota_done(user.task_quota, ": this answer was not stored")
            return result
        return await store_postgres()
    except (IntegrityError, Conflict):
        # A concurrent duplicate of this very submission won the race: answer as it was answered.
        if (replayed := await _replay(database, model, user, key, assignment_id)) is not None:
            return replayed
        raise


# The columns a submission sets (its `judgement` function's keys), is_surplus aside.
SUBMITTED_COLUMNS = {
    BwsJudgement: ("assignment_id", "task_id", "user_id", "best_id", "worst_id", "shown_order", "duration_ms",
                   "idempotency_key", "created_at"),
    Rating: ("assignment_id", "task_id", "user_id", "continuation_id", "comment", "duration_ms", "idempotency_key",
             "created_at", *RATING_DIMENSIONS),
}


@cache
def _submit_statement_postgres(model):
    """_count_judgement and the INSERT as one statement (PostgreSQL). The assignment is locked first
    and only while still open (active, or expired): a concurrent duplicate waits for that lock, then
    finds it submitted, and the statement stores nothing and returns no row. Then the judgement
    counts if the lease still runs and the task has fewer than R counted (one conditional UPDATE of
    the task row); a running lease that does not count gives its slot back;
    the assignment becomes submitted or surplus; the judgement is inserted."""
    locked = (select(Assignment.id, Assignment.task_id, Assignment.status, Assignment.expires_at)
              .where(Assignment.id == bindparam("assignment_id"), _is_one_of(Assignment.status, OPEN_STATUSES))
              .with_for_update(of=Assignment).cte("locked"))
    now = bindparam("now", type_=Assignment.finished_at.type)
    running = select(locked.c.task_id).where(locked.c.status == "active")
    counted = (update(Task).where(Task.id == running.where(locked.c.expires_at > now).scalar_subquery(),
                                  Task.done_count < Task.required)
               .values(done_count=Task.done_count + 1, active_leases=Task.active_leases - 1)
               .returning(Task.id).cte("counted"))
    released = (update(Task).where(Task.id == running.scalar_subquery(), ~exists(counted.select()))
                .values(active_leases=Task.active_leases - 1).returning(Task.id).cte("released"))
    finished = (update(Assignment).where(Assignment.id == select(locked.c.id).scalar_subquery())
                .values(status=case((exists(counted.select()), "submitted"), else_="surplus"), finished_at=now)
                .returning(Assignment.status).cte("finished"))
    # Named apart from any column: SQLAlchemy would add a parameter named like a column to the SET
    # of the UPDATEs above.
    table, columns = model.__table__, SUBMITTED_COLUMNS[model]
    values = [bindparam(f"new_{name}", type_=table.c[name].type) for name in columns]
    inserted = (insert(model).from_select([*columns, "is_surplus"], select(*values, finished.c.status == "surplus"))
                .returning(model.id, model.is_surplus).cte("inserted"))
    # Whether the lease still ran comes back too, for SubmitResult.counted (_answered_as_counted).
    in_time = and_(locked.c.status == "active", locked.c.expires_at > now).label("in_time")
    return (select(inserted.c.id, inserted.c.is_surplus, in_time).select_from(inserted.join(locked, literal(True)))
            .add_cte(released))


def hot_statements_postgres() -> list:
    """An annotator's fetch and submit on PostgreSQL, past the token check: the statements worth
    preparing on each connection at worker start (AsyncStatements.open_connections)."""
    annotator = ROLE_TASK_KINDS["annotator"]
    return [_lease_statement_postgres(annotator, False), _lease_statement_postgres(annotator, True),
            PROMPT_TEXTS_ANY, CONTINUATION_TEXTS_ANY, ASSIGNMENT_ROW, *map(_submit_statement_postgres, SUBMITTED_COLUMNS), *STORED_BY_KEY.values()]


def _chosen_continuations(handles: ItemHandles, assignment_id: int, item_order: list[int], data: BwsSubmission) -> tuple[int, int]:
    """The continuations behind the best and worst handles; a handle that names no item of this
    assignment (another assignment's included) is refused, naming the field."""
    items = handles.continuations_by_handle(assignment_id, item_order)
    chosen = {field: items.get(getattr(data, field)) for field in ("best", "worst")}
    unknown = [field for field, continuation_id in chosen.items() if continuation_id is None]
    if unknown:
        raise Invalid(f"{' and '.join(unknown)}: not the handle of an item of this task",
                      [{"loc": ["body", field], "msg": "not the handle of an item of this task"} for field in unknown])
    if chosen["best"] == chosen["worst"]:
        raise Invalid("best and worst must be different continuations",
                      [{"loc": ["body", "worst"], "msg": "the same item as best"}])
    return chosen["best"], chosen["worst"]


async def submit_bws(database: Database, user: User, assignment_id: int, data: BwsSubmission,
                     handles: ItemHandles) -> SubmitResult:
    """Stores best and worst, given as the handles this assignment's items were shown under."""
    def judgement(row, now: datetime) -> dict:
        best, worst = _chosen_continuations(handles, assignment_id, row.item_order, data)
        # Stored as continuation ids: admins and exports are not blind.
        return {"assignment_id": assignment_id, "task_id": row.task_id, "user_id": user.id, "best_id": best,
                "worst_id": worst, "shown_order": row.item_order, "duration_ms": data.duration_ms,
                "idempotency_key": data.idempotency_key, "created_at": now}

    return await _submit(database, user, BwsJudgement, assignment_id, "bws", data.idempotency_key, judgement)


async def submit_rating(database: Database, user: User, assignment_id: int, data: RatingSubmission) -> SubmitResult:
    def judgement(row, now: datetime) -> dict:
        return dict(assignment_id=assignment_id, task_id=row.task_id, user_id=user.id, continuation_id=row.item_order[0],
                    comment=data.comment.strip(), duration_ms=data.duration_ms,
                    idempotency_key=data.idempotency_key, created_at=now,
                    **{dim: getattr(data, dim) for dim in RATING_DIMENSIONS})

    return await _submit(database, user, Rating, assignment_id, RATING_KINDS, data.idempotency_key, judgement)


# ---------------------------------------------------------------- progress


def progress(database: Database, user: User) -> Progress:
    kinds = ROLE_TASK_KINDS.get(user.role, ())
    start_of_day = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    finished = and_(Assignment.user_id == user.id, Assignment.status.in_(("submitted", "surplus")))
    with database.read() as db:
        done_total = db.scalar(select(func.count()).select_from(Assignment).where(finished))
        done_today = db.scalar(select(func.count()).select_from(Assignment).where(finished, Assignment.finished_at >= start_of_day))
        seen = exists().where(Assignment.task_id == Task.id, Assignment.user_id == user.id)
        # Gold tasks count as waiting too (those this person may still get), so that a gold lease takes
        # one off as a normal lease does: a count that stayed put would tell the gold check apart.
        waiting = and_(Task.done_count < Task.required, Task.serve_rank < PAUSED_RANK)
        if gold_serving.rate(db) > 0:
            waiting = or_(waiting, and_(Task.serve_rank == gold_serving.GOLD_RANK, Batch.priority != "paused"))
        left = db.scalar(select(func.count()).select_from(Task).join(Batch, Batch.id == Task.batch_id)
                         .where(Task.kind.in_(kinds), waiting, ~seen))
    done_total = done_total or 0
    quota_left = max(0, user.task_quota - done_total) if user.task_quota is not None else None
    return Progress(done_today=done_today or 0, done_total=done_total, tasks_left=left or 0,
                    quota=user.task_quota, quota_left=quota_left)


