"""Building task batches, handing tasks out under leases, and storing what annotators submit.

Guarantees (tested in tests/test_concurrency.py):
- nobody gets a task twice (one assignment row per task and user, unique);
- a task is leased to at most `required` people at once, counting finished judgements;
- a submission is stored exactly once per idempotency key, even when retried or sent twice at once;
- every submission is stored; one that comes after its lease expired, or beyond R, is marked surplus.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import Database
from app.models import (
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
from app.services.bws_design import design_stats, design_tuples
from app.services.errors import Conflict, Invalid, NotFound

ROLE_TASK_KINDS = {"annotator": ("bws", "rating"), "evaluator": ("rating",), "admin": ("bws", "rating")}


# ---------------------------------------------------------------- views and inputs


class ItemView(BaseModel):
    continuation_id: int
    text: str


class TaskView(BaseModel):
    """What an annotator sees. Deliberately without model versions: judging is blind."""

    assignment_id: int
    task_id: int
    kind: str
    prompt: str
    items: list[ItemView]
    expires_at: datetime


class BwsSubmission(BaseModel):
    best_id: int
    worst_id: int
    idempotency_key: str = Field(min_length=8, max_length=100)
    duration_ms: int | None = Field(None, ge=0, le=24 * 3600 * 1000)


class RatingSubmission(BaseModel):
    grammar: int = Field(ge=1, le=5)
    creativity: int = Field(ge=1, le=5)
    consistency: int = Field(ge=1, le=5)
    plot: int = Field(ge=1, le=5)
    comment: str = Field("", max_length=5000)
    idempotency_key: str = Field(min_length=8, max_length=100)
    duration_ms: int | None = Field(None, ge=0, le=24 * 3600 * 1000)


class SubmitResult(BaseModel):
    judgement_id: int
    counted: bool  # False: stored as surplus (late, or beyond R)
    replayed: bool  # True: this idempotency key was seen before; nothing new was stored


class Progress(BaseModel):
    done_today: int
    done_total: int
    tasks_left: int


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
    per_prompt = {}
    for prompt_id, ids in sorted(continuation_ids_by_prompt.items()):
        if len(set(ids)) < k:
            continue
        # Seeded per prompt, so adding prompts to a batch does not change the others' tuples.
        tuples = design_tuples(sorted(set(ids)), k=k, factor=factor, seed=seed * 1_000_003 + prompt_id)
        per_prompt[prompt_id] = design_stats(tuples)
        for items in tuples:
            task = Task(batch_id=batch.id, kind="bws", prompt_id=prompt_id, required=required)
            task.items = [TaskItem(position=i, continuation_id=c) for i, c in enumerate(items)]
            db.add(task)
    if not per_prompt:
        raise Invalid(f"no prompt has at least {k} continuations to build tuples from")
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
    for cid in continuation_ids:
        task = Task(batch_id=batch.id, kind="rating", prompt_id=prompt_of[cid], required=required)
        task.items = [TaskItem(position=0, continuation_id=cid)]
        db.add(task)
    db.flush()
    return batch


# ---------------------------------------------------------------- handing out tasks


def _view(db: Session, assignment: Assignment) -> TaskView:
    task = assignment.task
    text_of = {item.continuation_id: item.continuation.text for item in task.items}
    return TaskView(
        assignment_id=assignment.id,
        task_id=task.id,
        kind=task.kind,
        prompt=task.prompt.text,
        items=[ItemView(continuation_id=c, text=text_of[c]) for c in assignment.item_order],
        expires_at=assignment.expires_at,
    )


def _active_leases(task_id, now: datetime):
    return (
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.task_id == task_id, Assignment.status == "active", Assignment.expires_at > now)
        .scalar_subquery()
    )


def next_task(database: Database, user: User, lease_seconds: int, kinds: Sequence[str] | None = None) -> TaskView | None:
    """The user's current task if one is leased, else lease the oldest open task they have not seen."""
    allowed = ROLE_TASK_KINDS.get(user.role, ())
    kinds = [k for k in (kinds or allowed) if k in allowed]
    if not kinds:
        return None
    for _attempt in range(3):
        try:
            with database.write() as db:
                now = utcnow()
                current = db.scalar(
                    select(Assignment)
                    .join(Task)
                    .where(Assignment.user_id == user.id, Assignment.status == "active",
                           Assignment.expires_at > now, Task.kind.in_(kinds))
                    .order_by(Assignment.id)
                    .limit(1)
                )
                if current is not None:
                    return _view(db, current)
                seen = exists().where(Assignment.task_id == Task.id, Assignment.user_id == user.id)
                query = (
                    select(Task)
                    .where(Task.kind.in_(kinds), Task.done_count < Task.required, ~seen,
                           Task.done_count + _active_leases(Task.id, now) < Task.required)
                    .order_by(Task.id)
                    .limit(1)
                )
                if not database.is_sqlite:
                    # PostgreSQL: concurrent requests skip a task another request is leasing right now.
                    query = query.with_for_update(skip_locked=True, of=Task)
                task = db.scalar(query)
                if task is None:
                    return None
                order = [item.continuation_id for item in task.items]
                random.shuffle(order)  # a fresh order per annotator, against position bias
                assignment = Assignment(task_id=task.id, user_id=user.id, item_order=order,
                                        leased_at=now, expires_at=now + timedelta(seconds=lease_seconds))
                db.add(assignment)
                db.flush()
                return _view(db, assignment)
        except IntegrityError:
            continue  # the same user fetched twice at once; the next attempt returns that lease
    raise Conflict("could not lease a task, please retry")


def get_task(database: Database, user: User, assignment_id: int) -> TaskView:
    with database.read() as db:
        assignment = db.get(Assignment, assignment_id)
        if assignment is None or assignment.user_id != user.id:
            raise NotFound("no such task of yours")
        return _view(db, assignment)


def skip_task(database: Database, user: User, assignment_id: int, reason: str = "") -> None:
    with database.write() as db:
        assignment = db.get(Assignment, assignment_id)
        if assignment is None or assignment.user_id != user.id:
            raise NotFound("no such task of yours")
        if assignment.status != "active":
            raise Conflict(f"this task is already {assignment.status}")
        assignment.status, assignment.finished_at, assignment.skip_reason = "skipped", utcnow(), reason[:500]


# ---------------------------------------------------------------- submitting


def _open_assignment(db: Session, user: User, assignment_id: int, kind: str) -> Assignment:
    assignment = db.get(Assignment, assignment_id)
    if assignment is None or assignment.user_id != user.id:
        raise NotFound("no such task of yours")
    if assignment.task.kind != kind:
        raise Invalid(f"this is a {assignment.task.kind} task, not {kind}")
    if assignment.status != "active":
        raise Conflict(f"this task is already {assignment.status}")
    return assignment


def _count_judgement(db: Session, assignment: Assignment, now: datetime) -> bool:
    """Counts the judgement towards R if the lease is still valid and R is not reached.
    A single conditional UPDATE, so concurrent submissions can never push a task past R."""
    if assignment.expires_at <= now:
        counted = False
    else:
        result = db.execute(
            update(Task)
            .where(Task.id == assignment.task_id, Task.done_count < Task.required)
            .values(done_count=Task.done_count + 1)
            .execution_options(synchronize_session=False)
        )
        counted = result.rowcount == 1
    assignment.status = "submitted" if counted else "surplus"
    assignment.finished_at = now
    return counted


def _replay(database: Database, model, user: User, key: str) -> SubmitResult | None:
    with database.read() as db:
        row = db.scalar(select(model).where(model.idempotency_key == key))
        if row is None:
            return None
        if row.user_id != user.id:
            raise Conflict("this idempotency key belongs to another submission")
        return SubmitResult(judgement_id=row.id, counted=not row.is_surplus, replayed=True)


def submit_bws(database: Database, user: User, assignment_id: int, data: BwsSubmission) -> SubmitResult:
    if (replayed := _replay(database, BwsJudgement, user, data.idempotency_key)) is not None:
        return replayed
    try:
        with database.write() as db:
            assignment = _open_assignment(db, user, assignment_id, "bws")
            shown = assignment.item_order
            if data.best_id not in shown or data.worst_id not in shown:
                raise Invalid("best and worst must be items of this task")
            if data.best_id == data.worst_id:
                raise Invalid("best and worst must be different continuations")
            now = utcnow()
            counted = _count_judgement(db, assignment, now)
            judgement = BwsJudgement(
                assignment_id=assignment.id, task_id=assignment.task_id, user_id=user.id,
                best_id=data.best_id, worst_id=data.worst_id, shown_order=shown,
                duration_ms=data.duration_ms, is_surplus=not counted,
                idempotency_key=data.idempotency_key, created_at=now,
            )
            db.add(judgement)
            db.flush()
            return SubmitResult(judgement_id=judgement.id, counted=counted, replayed=False)
    except (IntegrityError, Conflict):
        # A concurrent duplicate of this very submission won the race: answer as it was answered.
        if (replayed := _replay(database, BwsJudgement, user, data.idempotency_key)) is not None:
            return replayed
        raise


def submit_rating(database: Database, user: User, assignment_id: int, data: RatingSubmission) -> SubmitResult:
    if (replayed := _replay(database, Rating, user, data.idempotency_key)) is not None:
        return replayed
    try:
        with database.write() as db:
            assignment = _open_assignment(db, user, assignment_id, "rating")
            now = utcnow()
            counted = _count_judgement(db, assignment, now)
            rating = Rating(
                assignment_id=assignment.id, task_id=assignment.task_id, user_id=user.id,
                continuation_id=assignment.item_order[0], comment=data.comment.strip(),
                duration_ms=data.duration_ms, is_surplus=not counted,
                idempotency_key=data.idempotency_key, created_at=now,
                **{dim: getattr(data, dim) for dim in RATING_DIMENSIONS},
            )
            db.add(rating)
            db.flush()
            return SubmitResult(judgement_id=rating.id, counted=counted, replayed=False)
    except (IntegrityError, Conflict):
        if (replayed := _replay(database, Rating, user, data.idempotency_key)) is not None:
            return replayed
        raise


# ---------------------------------------------------------------- progress


def progress(database: Database, user: User) -> Progress:
    kinds = ROLE_TASK_KINDS.get(user.role, ())
    start_of_day = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    finished = and_(Assignment.user_id == user.id, Assignment.status.in_(("submitted", "surplus")))
    with database.read() as db:
        done_total = db.scalar(select(func.count()).select_from(Assignment).where(finished))
        done_today = db.scalar(select(func.count()).select_from(Assignment).where(finished, Assignment.finished_at >= start_of_day))
        seen = exists().where(Assignment.task_id == Task.id, Assignment.user_id == user.id)
        left = db.scalar(select(func.count()).select_from(Task).where(Task.kind.in_(kinds), Task.done_count < Task.required, ~seen))
    return Progress(done_today=done_today or 0, done_total=done_total or 0, tasks_left=left or 0)


