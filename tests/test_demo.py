"""Demo mode: seeding fills an empty database once, on SQLite and PostgreSQL."""

from collections import Counter

from sqlalchemy import func, select

from app.demo import DEMO_ACCOUNTS, seed_demo
from app.demo_data import SEEDS, SOURCES, demo_prompts
from app.models import Batch, Continuation, ModelVersion, Prompt, Task, TaskItem, User
from app.services import users


def _counts(db) -> dict[str, int]:
    return {model.__name__: db.scalar(select(func.count()).select_from(model))
            for model in (ModelVersion, Prompt, Continuation, Batch, Task, TaskItem, User)}


def test_demo_data_is_complete_and_deterministic():
    data = demo_prompts()
    assert len(data) == len(SEEDS) == 30
    assert [p.external_id for p in data][:2] == ["demo-001", "demo-002"]
    texts = [c.text for p in data for c in p.continuations]
    assert len(texts) == 180 and len(set(texts)) == 180
    for prompt in data:
        assert [c.source for c in prompt.continuations] == list(SOURCES)
        for c in prompt.continuations:
            assert "{" not in c.text and "}" not in c.text, c.text
    assert [c.text for p in demo_prompts() for c in p.continuations] == texts


def test_seed_demo(database, settings):
    info = seed_demo(database, settings)
    assert info.created
    assert info.prompts == 30 and info.continuations == 180
    assert set(info.accounts) == {"annotator1", "annotator2", "evaluator1"}
    assert info.admin_password and len(info.admin_password) >= 8
    assert info.existing_users == []
    assert info.admin_password in info.summary()

    with database.read() as db:
        sources = list(db.scalars(select(ModelVersion).where(ModelVersion.name.in_(list(SOURCES)))))
        assert {s.name for s in sources} == set(SOURCES) and {s.kind for s in sources} == {"source"}
        prompts = list(db.scalars(select(Prompt).where(Prompt.external_id.like("demo-%"))))
        assert len(prompts) == 30
        per_prompt = Counter(db.scalars(select(Continuation.prompt_id)))
        assert set(per_prompt.values()) == {6}

        batches = {b.kind: b for b in db.scalars(select(Batch))}
        assert set(batches) == {"bws", "rating"}
        bws_tasks = list(db.scalars(select(Task).where(Task.batch_id == batches["bws"].id)))
        rating_tasks = list(db.scalars(select(Task).where(Task.batch_id == batches["rating"].id)))
        assert len(rating_tasks) == 12
        assert len(bws_tasks) + len(rating_tasks) == info.tasks
        # round(design_factor * 6) = 12 tuples per prompt, under the cap C(6, 4) = 15
        assert len(bws_tasks) == 30 * 12
        prompt_of = dict(db.execute(select(Continuation.id, Continuation.prompt_id)).all())
        source_of = dict(db.execute(select(Continuation.id, Continuation.model_version_id)).all())
        for task in bws_tasks:
            ids = [item.continuation_id for item in task.items]
            assert len(ids) == settings.tuple_size == 4 and len(set(ids)) == 4
            assert {prompt_of[c] for c in ids} == {task.prompt_id}
            assert task.required == settings.annotations_per_tuple
        # every writer is rated, and each rating task holds one continuation of its own prompt
        rated = [task.items[0].continuation_id for task in rating_tasks]
        assert all(prompt_of[c] == task.prompt_id for c, task in zip(rated, rating_tasks))
        assert len({source_of[c] for c in rated}) == len(SOURCES)

        roles = dict(db.execute(select(User.username, User.role)).all())
        assert roles == dict(DEMO_ACCOUNTS)
        assert users.authenticate(db, "admin", info.admin_password).role == "admin"
        assert users.authenticate(db, "annotator1", info.accounts["annotator1"]).role == "annotator"
        assert users.authenticate(db, "evaluator1", info.accounts["evaluator1"]).role == "evaluator"
        assert users.authenticate(db, "admin", "wrong password") is None
        before = _counts(db)

    again = seed_demo(database, settings)
    assert not again.created
    assert again.admin_password is None and again.accounts == {}
    assert sorted(again.existing_users) == sorted(u for u, _ in DEMO_ACCOUNTS)
    assert (again.prompts, again.continuations, again.tasks) == (30, 180, info.tasks)
    with database.read() as db:
        assert _counts(db) == before
        assert users.authenticate(db, "admin", info.admin_password) is not None


def test_seed_demo_keeps_existing_users(database, settings):
    with database.write() as db:
        users.create_user(db, "admin", "my own admin password", "admin")
    info = seed_demo(database, settings, admin_password="ignored because admin exists")
    assert info.created and info.admin_password is None
    assert info.existing_users == ["admin"]
    assert set(info.accounts) == {"annotator1", "annotator2", "evaluator1"}
    assert "passwords unchanged: admin" in info.summary()
    with database.read() as db:
        assert users.authenticate(db, "admin", "my own admin password") is not None


def test_seed_demo_with_given_admin_password(database, settings):
    info = seed_demo(database, settings, admin_password="a chosen password")
    assert info.admin_password == "a chosen password"
    with database.read() as db:
        assert users.authenticate(db, "admin", "a chosen password") is not None
