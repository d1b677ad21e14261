"""Small builders of test data, straight through the data layer."""

import asyncio
import uuid

from sqlalchemy import select

from app.db import Database
from app.models import Assignment, BwsJudgement, Continuation, ModelVersion, Prompt, Task, User, utcnow
from app.services.item_handles import ItemHandles
from app.services.tasks import (
    BwsSubmission,
    LeasedTask,
    SubmitResult,
    build_bws_batch,
    build_rating_batch,
    continuations_by_prompt,
    submit_bws,
)
from tests.conftest import TEST_SECRET_KEY

HANDLES = ItemHandles.from_secret(TEST_SECRET_KEY)  # the handles the test app makes too


def submit_bws_by_ids(database: Database, user: User, task: LeasedTask, best_id: int, worst_id: int,
                      **fields) -> SubmitResult:
    """Submits a leased task's best and worst through the service, named by continuation id (tests
    know the ids; the service takes the handles the items were shown under)."""
    data = BwsSubmission(best=HANDLES.handle(task.assignment_id, best_id), worst=HANDLES.handle(task.assignment_id, worst_id),
                         idempotency_key=fields.pop("idempotency_key", uuid.uuid4().hex), **fields)
    return asyncio.run(submit_bws(database, user, task.assignment_id, data, HANDLES))


def handles_to_ids(database: Database, assignment_id: int) -> dict[str, int]:
    """An assignment's item handles -> continuation ids (annotators are not told; tests look them up)."""
    with database.read() as db:
        item_order = db.get(Assignment, assignment_id).item_order
    return HANDLES.continuations_by_handle(assignment_id, item_order)


def task_of(database: Database, assignment_id: int) -> int:
    """The task behind an assignment (annotators are not told; tests look it up)."""
    with database.read() as db:
        return db.get(Assignment, assignment_id).task_id


def seed_stories(database: Database, prompts: int = 3, per_prompt: int = 6, source: str = "test-source") -> dict[int, list[int]]:
    """Prompts with continuations from one source; returns continuation ids by prompt id."""
    with database.write() as db:
        version = ModelVersion(name=source, kind="source", algorithm="import")
        db.add(version)
        db.flush()
        for p in range(prompts):
            prompt = Prompt(text=f"Prompt {p}: once upon a time there was a fox number {p}.")
            db.add(prompt)
            db.flush()
            for c in range(per_prompt):
                db.add(Continuation(prompt_id=prompt.id, model_version_id=version.id,
                                    text=f"Continuation {c} of prompt {p}: the fox ran {c} miles."))
        db.flush()
        return continuations_by_prompt(db, model_version_ids=[version.id])


def seed_bws_batch(database: Database, prompts: int = 3, per_prompt: int = 6, required: int = 3, seed: int = 0) -> int:
    by_prompt = seed_stories(database, prompts, per_prompt)
    with database.write() as db:
        return build_bws_batch(db, "test batch", by_prompt, seed=seed, required=required).id


def seed_rating_batch(database: Database, required: int = 2) -> int:
    by_prompt = seed_stories(database, prompts=1, per_prompt=3, source="rating-source")
    with database.write() as db:
        ids = [c for cs in by_prompt.values() for c in cs]
        return build_rating_batch(db, "rating batch", ids, required=required).id


def judge_directly(database: Database, username: str, batch_id: int | None = None, limit: int | None = None) -> int:
    """A new annotator's judgements of a batch's tasks (all batches' when None), straight into the tables,
    without leasing: best = first shown, worst = last. Returns how many."""
    with database.write() as db:
        user = User(username=username, password_hash="x", role="annotator")
        db.add(user)
        db.flush()
        query = select(Task).where(Task.kind == "bws").order_by(Task.id).limit(limit)
        tasks = db.scalars(query if batch_id is None else query.where(Task.batch_id == batch_id)).all()
        for task in tasks:
            order = [i.continuation_id for i in task.items]
            a = Assignment(task_id=task.id, user_id=user.id, item_order=order, status="submitted", expires_at=utcnow())
            db.add(a)
            db.flush()
            db.add(BwsJudgement(assignment_id=a.id, task_id=task.id, user_id=user.id, best_id=order[0],
                                worst_id=order[-1], shown_order=order, idempotency_key=f"{username}-{task.id}"))
        return len(tasks)
