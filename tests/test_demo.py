"""Demo mode: seeding fills an empty database once, on SQLite and PostgreSQL; what `storyloop demo`
prints is true on a first and on a later run, and the README's demo paragraph matches it."""

import re
from collections import Counter
from pathlib import Path

import pytest

from sqlalchemy import func, select

from app.demo import DEMO_ACCOUNTS, RATING_TASKS, demo_report, keep_accounts, seed_demo
from app.demo_data import SEEDS, SOURCES, demo_prompts
from app.models import Batch, Continuation, ModelVersion, Prompt, Task, TaskItem, User
from app.services import users


def _counts(db) -> dict[str, int]:
    return {model.__name__: db.scalar(select(func.count()).select_from(model))
            for model in (ModelVersion, Prompt, Continuation, Batch, Task, TaskItem, User)}


def test_demo_data_is_complete_and_deterministic():
    data = demo_prompts()
    assert len(data) == len(SEEDS) >= RATING_TASKS
    assert [p.external_id for p in data][:2] == ["demo-001", "demo-002"]
    texts = [c.text for p in data for c in p.continuations]
    assert len(texts) == len(SEEDS) * len(SOURCES) and len(set(texts)) == len(texts)
    for prompt in data:
        assert [c.source for c in prompt.continuations] == list(SOURCES)
        for c in prompt.continuations:
            assert "{" not in c.text and "}" not in c.text, c.text
    assert [c.text for p in demo_prompts() for c in p.continuations] == texts


def test_seed_demo(database, settings):
    info = seed_demo(database, settings)
    assert info.created
    assert info.prompts == len(SEEDS) and info.continuations == len(SEEDS) * len(SOURCES)
    assert set(info.accounts) == {"annotator1", "annotator2", "evaluator1"}
    assert info.admin_password and len(info.admin_password) >= 8
    assert info.existing_users == []
    assert info.admin_password in info.summary()

    with database.read() as db:
        sources = list(db.scalars(select(ModelVersion).where(ModelVersion.name.in_(list(SOURCES)))))
        assert {s.name for s in sources} == set(SOURCES) and {s.kind for s in sources} == {"source"}
        prompts = list(db.scalars(select(Prompt).where(Prompt.external_id.like("demo-%"))))
        assert len(prompts) == len(SEEDS)
        per_prompt = Counter(db.scalars(select(Continuation.prompt_id)))
        assert set(per_prompt.values()) == {6}

        batches = {b.kind: b for b in db.scalars(select(Batch))}
        assert set(batches) == {"bws", "rating"}
        bws_tasks = list(db.scalars(select(Task).where(Task.batch_id == batches["bws"].id)))
        rating_tasks = list(db.scalars(select(Task).where(Task.batch_id == batches["rating"].id)))
        assert len(rating_tasks) == RATING_TASKS == info.rating_tasks
        assert len(bws_tasks) == info.bws_tuples and len(bws_tasks) + len(rating_tasks) == info.tasks
        # round(design_factor * 6) = 12 tuples per prompt, under the cap C(6, 4) = 15
        assert len(bws_tasks) == len(SEEDS) * 12
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
    assert ((again.prompts, again.continuations, again.bws_tuples, again.rating_tasks)
            == (info.prompts, info.continuations, info.bws_tuples, info.rating_tasks))
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


def test_demo_report_is_true_on_first_and_later_runs(database, settings, tmp_path):
    accounts = tmp_path / "demo-accounts.txt"
    first = seed_demo(database, settings)
    keep_accounts(first, accounts)
    report = demo_report(first, accounts)
    assert (f"Demo data created: {len(SEEDS)} prompts, {len(SEEDS) * len(SOURCES)} continuations, "
            f"{first.bws_tuples} best-worst tuples, {RATING_TASKS} rating tasks.") in report
    assert f"also kept in {accounts}" in report and "shown only now" not in report
    assert accounts.stat().st_mode & 0o777 == 0o600
    kept = dict(line.split(" ", 1) for line in accounts.read_text().splitlines())
    assert kept == {"admin": first.admin_password, **first.accounts}
    for username, password in kept.items():
        assert f"{username} password: {password}" in report

    again = seed_demo(database, settings)
    keep_accounts(again, accounts)  # nothing was created: the file keeps the first run's passwords
    assert dict(line.split(" ", 1) for line in accounts.read_text().splitlines()) == kept
    report = demo_report(again, accounts)
    assert report.startswith("Demo data already present (nothing changed); the database holds "
                             f"{len(SEEDS)} prompts, {len(SEEDS) * len(SOURCES)} continuations")
    assert f"as kept in {accounts}" in report and "not stored" not in report
    for username, password in kept.items():
        assert f"{username} password: {password}" in report
        with database.read() as db:  # what it shows still logs in
            assert users.authenticate(db, username, password) is not None

    accounts.unlink()
    report = demo_report(seed_demo(database, settings), accounts)
    assert "is missing" in report and "password:" not in report


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_demo_command_prints_the_same_on_both_runs(cli_runner, monkeypatch):
    """`storyloop demo` itself (without serving): the printed passwords log in, on both runs."""
    from app import cli

    monkeypatch.setattr(cli, "_uvicorn", lambda *args: None)
    outputs = [cli_runner("demo", "--no-trainer") for _ in range(2)]
    for result in outputs:
        assert result.exit_code == 0, result.output
        assert "--no-trainer" in result.output
    shown = [dict(re.findall(r"^  (\w+) password: (\S+)$", r.output, re.MULTILINE)) for r in outputs]
    assert set(shown[0]) == {u for u, _ in DEMO_ACCOUNTS} and shown[1] == shown[0]
    assert "Demo data created" in outputs[0].output and "already present" in outputs[1].output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_readme_demo_paragraph_matches_the_demo(database, settings):
    """The README's counts are checked here rather than trusted: they come from the seeded demo."""
    info = seed_demo(database, settings)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    paragraph = readme[readme.index("`make demo` prints"):readme.index("```sh", readme.index("`make demo` prints"))]
    paragraph = " ".join(paragraph.split())
    assert f"seeds {info.prompts} story prompts" in paragraph
    assert f"{info.continuations} continuations from {len(SOURCES)} deliberately different" in paragraph
    assert f"{info.bws_tuples} balanced BWS tuples and {info.rating_tasks} rating tasks" in paragraph
    assert "data/demo-accounts.txt" in paragraph
    roles = Counter(role for _, role in DEMO_ACCOUNTS)
    assert roles == {"admin": 1, "annotator": 2, "evaluator": 1}, "the README says: admin, two annotators, an evaluator"
    assert f"later round starts once {settings.trainer_min_newest_judgements} judgements" in paragraph
