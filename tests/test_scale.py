"""Production scale (issue 11): `storyloop serve`'s defaults, and PostgreSQL's annotation path in one
statement per lease and per submission. The leasing guarantees under concurrency on both databases
are tests/test_concurrency.py's."""

import asyncio
import dataclasses
import time
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select, text, update
from typer.testing import CliRunner

from app import cli as cli_module
from app.models import ApiToken, Assignment, BwsJudgement, Task, TaskItem, User, utcnow
from app.services import gold_serving, tasks, users
from app.services.item_handles import ItemHandles
from tests.conftest import TEST_SECRET_KEY, make_user, token_headers
from tests.factories import seed_bws_batch, seed_rating_batch
from tests.test_secret_key import clean_env  # noqa: F401 (a fixture)


@pytest.fixture
def uvicorn_calls(clean_env, monkeypatch):  # noqa: F811
    """serve's arguments to uvicorn.run, which is not started."""
    import uvicorn

    calls = []
    clean_env.setenv("STORYLOOP_SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    return calls


def test_serve_runs_one_worker_per_core_with_a_long_keep_alive(uvicorn_calls, monkeypatch):
    monkeypatch.setattr(cli_module.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    result = CliRunner().invoke(cli_module.cli, ["serve"])
    assert result.exit_code == 0, result.output
    [call] = uvicorn_calls
    assert call["workers"] == 3
    # Longer than annotators' reading pauses: uvicorn's 5 s closed their idle connections under them.
    assert call["timeout_keep_alive"] == cli_module.KEEP_ALIVE_SECONDS >= 60
    assert call["backlog"] == cli_module.BACKLOG >= 4096

    assert CliRunner().invoke(cli_module.cli, ["serve", "--workers", "1"]).exit_code == 0
    assert uvicorn_calls[-1]["workers"] == 1


def test_serve_refuses_zero_workers(uvicorn_calls, tmp_path):
    result = CliRunner().invoke(cli_module.cli, ["serve", "--workers", "0"])
    assert result.exit_code == 2 and "--workers" in result.output
    assert uvicorn_calls == []
    assert not (tmp_path / "data" / "storyloop.db").exists()  # refused before migrating


@pytest.fixture
def statements(database, monkeypatch):
    """The SQL statements the database is sent, as they go: through SQLAlchemy's engine, and on
    PostgreSQL through the event loop's own connections (AsyncStatements)."""
    sent = []
    event.listen(database.engine, "before_cursor_execute", lambda conn, cursor, sql, *rest: sent.append(sql))
    if database.statements is not None:
        fetch_all = database.statements.fetch_all

        async def recorded(statement, values):
            sent.append(statement)
            return await fetch_all(statement, values)

        monkeypatch.setattr(database.statements, "fetch_all", recorded)
    return sent


def _annotator(database, name: str = "ann") -> User:
    with database.write() as db:
        user = users.create_user(db, name, "correct horse battery")
    return user


def test_postgresql_leases_and_submits_in_one_statement_each(database, statements):
    if database.is_sqlite:
        pytest.skip("PostgreSQL's path (SQLite groups its writers' statements into one commit instead)")
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    user, handles = _annotator(database), ItemHandles.from_secret(TEST_SECRET_KEY)
    database.state["last_expiry_sweep"] = time.monotonic()  # no routine expiry sweep due
    asyncio.run(gold_serving.due(database, ("bws",)))  # nor a refresh of the gold settings (every 5 s)
    statements.clear()

    leased = asyncio.run(tasks.next_task(database, user, 600))
    lease_statements = len(statements)
    again = asyncio.run(tasks.next_task(database, user, 600))  # the running lease, not a new one
    assert again.assignment_id == leased.assignment_id
    statements.clear()
    items = [item.continuation_id for item in leased.items]
    body = tasks.BwsSubmission(best=handles.handle(leased.assignment_id, items[0]),
                               worst=handles.handle(leased.assignment_id, items[3]), idempotency_key=uuid.uuid4().hex)
    stored = asyncio.run(tasks.submit_bws(database, user, leased.assignment_id, body, handles))
    submit_statements = len(statements)
    replayed = asyncio.run(tasks.submit_bws(database, user, leased.assignment_id, body, handles))

    # The texts of a lease come from the process's cache after the first: then one statement per lease.
    assert lease_statements == 3  # the lease, the prompt's text, the continuations' texts
    assert submit_statements == 1  # one write: this process leased it, so knows the assignment
    assert stored.counted and not stored.replayed
    assert replayed.replayed and replayed.judgement_id == stored.judgement_id
    with database.read() as db:
        assignment = db.get(Assignment, leased.assignment_id)
        task = db.get(Task, assignment.task_id)
        shown = sorted(db.scalars(select(TaskItem.continuation_id).where(TaskItem.task_id == task.id)))
        assert sorted(assignment.item_order) == shown == sorted(items) and assignment.item_order == items
        assert assignment.status == "submitted" and (task.done_count, task.active_leases) == (1, 0)
        judgement = db.scalars(select(BwsJudgement)).one()
        assert (judgement.best_id, judgement.worst_id, judgement.is_surplus) == (items[0], items[3], False)


def test_postgresql_gold_checks_lease_and_submit_in_one_statement_each_too(database, statements):
    """A gold check takes the normal lease's way (one statement to lease, one to submit), so that no
    extra round trips tell it apart by its timing (tests/test_gold.py times both through the API)."""
    if database.is_sqlite:
        pytest.skip("PostgreSQL's path")
    from app.services import gold

    seed_bws_batch(database, prompts=1, per_prompt=8, required=1)
    with database.write() as db:
        gold_task = db.scalars(select(Task).order_by(Task.id)).first()
        gold_item = gold.mark(db, gold_task.id, gold.GoldAnswer(best_id=gold_task.items[0].continuation_id))
        gold_task_id = gold_item.task_id
    gold.set_settings(database, gold.GoldSettings(rate=1.0))  # every lease a gold draw
    user, handles = _annotator(database), ItemHandles.from_secret(TEST_SECRET_KEY)
    database.state["last_expiry_sweep"] = time.monotonic()
    asyncio.run(gold_serving.due(database, ("bws",)))
    statements.clear()

    leased = asyncio.run(tasks.next_task(database, user, 600))
    assert leased.task_id == gold_task_id
    assert len(statements) == 3  # the lease, the prompt's text, the continuations' texts: as a normal lease
    statements.clear()
    items = [item.continuation_id for item in leased.items]
    body = tasks.BwsSubmission(best=handles.handle(leased.assignment_id, items[0]),
                               worst=handles.handle(leased.assignment_id, items[3]), idempotency_key=uuid.uuid4().hex)
    stored = asyncio.run(tasks.submit_bws(database, user, leased.assignment_id, body, handles))
    assert len(statements) == 1 and stored.counted
    normal = asyncio.run(tasks.next_task(database, user, 600))  # no gold left for this person: a normal task
    assert normal.task_id != gold_task_id
    with database.read() as db:
        assert (db.get(Task, gold_task_id).done_count, db.get(Task, gold_task_id).active_leases) == (1, 0)


def test_postgresql_lease_statement_is_one_round_trip_once_texts_are_cached(database, statements):
    if database.is_sqlite:
        pytest.skip("PostgreSQL's path")
    seed_bws_batch(database, prompts=1, per_prompt=4, required=2)
    first, second = _annotator(database, "first"), _annotator(database, "second")
    database.state["last_expiry_sweep"] = time.monotonic()
    asyncio.run(tasks.next_task(database, first, 600))  # loads the prompt's and continuations' texts
    statements.clear()
    leased = asyncio.run(tasks.next_task(database, second, 600))
    assert len(statements) == 1
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(Assignment)) == 2
        assert db.scalar(select(Task.active_leases)) == 2
    assert len(leased.items) == 4


def test_postgresql_concurrent_leases_always_find_a_free_task(database):
    """Many annotators leasing and submitting at once on the one-statement path: every lease finds a
    task while plenty are free (a form of the statement once answered 204 now and then), and the
    guarantees hold: no task over R, nobody twice on a task."""
    if database.is_sqlite:
        pytest.skip("PostgreSQL's path")
    seed_bws_batch(database, prompts=20, per_prompt=8, required=3)  # 320 tuples
    with database.write() as db:  # one spread for all: everybody competes for the same few tasks
        db.execute(update(Task).values(serve_order=0))
    annotators = [_annotator(database, f"ann{i}") for i in range(40)]
    handles = ItemHandles.from_secret(TEST_SECRET_KEY)
    empty = []

    async def judge(user: User) -> None:
        leased = await tasks.next_task(database, user, 600)
        if leased is None:
            empty.append(user.id)
            return
        items = [item.continuation_id for item in leased.items]
        body = tasks.BwsSubmission(best=handles.handle(leased.assignment_id, items[0]),
                                   worst=handles.handle(leased.assignment_id, items[1]), idempotency_key=uuid.uuid4().hex)
        await tasks.submit_bws(database, user, leased.assignment_id, body, handles)

    async def rounds() -> None:
        for _ in range(10):
            await asyncio.gather(*(judge(user) for user in annotators))

    asyncio.run(rounds())
    assert empty == []
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(BwsJudgement)) == 40 * 10
        assert db.scalar(select(func.count()).select_from(Task).where(Task.done_count > Task.required)) == 0
        assert db.scalar(select(func.max(Task.active_leases))) == 0
        twice = (select(Assignment.task_id).group_by(Assignment.task_id, Assignment.user_id)
                 .having(func.count() > 1).subquery())
        assert db.scalar(select(func.count()).select_from(twice)) == 0


def test_postgresql_submission_to_another_worker_reads_the_assignment_first(database, statements):
    """A submission that reaches a worker which did not make its lease (another process, or after a
    restart) reads the assignment, then stores it in one statement; a late one is still surplus."""
    if database.is_sqlite:
        pytest.skip("PostgreSQL's path")
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    user, handles = _annotator(database), ItemHandles.from_secret(TEST_SECRET_KEY)
    database.state["last_expiry_sweep"] = time.monotonic()
    leased = asyncio.run(tasks.next_task(database, user, 600))
    database.state.pop("leased_here")  # as if another worker had leased it
    with database.write() as db:  # the lease ran out and was swept meanwhile
        db.execute(update(Assignment).values(status="expired"))
        db.execute(update(Task).values(active_leases=0))
    statements.clear()
    items = [item.continuation_id for item in leased.items]
    body = tasks.BwsSubmission(best=handles.handle(leased.assignment_id, items[1]),
                               worst=handles.handle(leased.assignment_id, items[2]), idempotency_key=uuid.uuid4().hex)
    stored = asyncio.run(tasks.submit_bws(database, user, leased.assignment_id, body, handles))
    assert len(statements) == 2  # the assignment read, then one write
    assert not stored.counted and not stored.replayed  # stored, as surplus
    with database.read() as db:
        assert db.get(Assignment, leased.assignment_id).status == "surplus"
        assert (db.scalar(select(Task.done_count)), db.scalar(select(Task.active_leases))) == (0, 0)
        assert db.scalar(select(BwsJudgement.is_surplus)) is True
    with pytest.raises(tasks.Conflict, match="already surplus"):  # a new key for a task already judged
        body2 = body.model_copy(update={"idempotency_key": uuid.uuid4().hex})
        asyncio.run(tasks.submit_bws(database, user, leased.assignment_id, body2, handles))


def test_the_token_check_marks_the_last_use_in_the_same_statement_on_postgresql(database, settings, statements):
    """An API request's token check is one statement on PostgreSQL, also when it marks the token's
    last use (every few minutes); SQLite reads, then writes only when the mark is due."""
    user = _annotator(database)
    first_use = utcnow()
    with database.write() as db:
        token, info = users.create_api_token(db, user, settings, first_use)

    def check(now) -> tuple[int, object]:
        statements.clear()
        found = asyncio.run(users.user_for_token(database, token, now))
        assert found is not None and found.id == user.id
        with database.read() as db:
            return len(statements), db.scalar(select(ApiToken.last_used_at).where(ApiToken.id == info.id))

    marking, last_used = check(first_use)
    assert last_used == first_use
    reading, last_used = check(first_use + timedelta(minutes=1))
    assert last_used == first_use  # not yet due: only read
    later = first_use + users.LAST_USED_RESOLUTION
    marking_again, last_used = check(later)
    assert last_used == later
    if database.statements is not None:
        assert marking == reading == marking_again == 1
    else:  # SQLite: a write transaction more when the mark is due
        assert marking > reading and marking_again > reading
    with database.write() as db:  # a deactivated user's token is neither accepted nor marked
        db.execute(update(User).where(User.id == user.id).values(is_active=False))
    statements.clear()
    assert asyncio.run(users.user_for_token(database, token, later + users.LAST_USED_RESOLUTION)) is None
    with database.read() as db:
        assert db.scalar(select(ApiToken.last_used_at).where(ApiToken.id == info.id)) == later


def test_a_burst_of_leases_loads_the_gold_settings_once(database, monkeypatch):
    """The gold rate is cached per process and refreshed every few seconds; when it is due, one load
    runs, not one per request that finds it due (1,000 arriving annotators queued behind those)."""
    loads = []
    refresh = gold_serving.refresh

    async def counted(db):
        loads.append(1)
        return await refresh(db)

    monkeypatch.setattr(gold_serving, "refresh", counted)

    async def burst() -> list[bool]:
        return await asyncio.gather(*(gold_serving.due(database, ("bws",)) for _ in range(50)))

    assert asyncio.run(burst()) == [False] * 50  # nothing cached yet: all wait for the one load
    assert len(loads) == 1
    stale = database.state["gold_serving"]
    database.state["gold_serving"] = dataclasses.replace(stale, checked_at=stale.checked_at - 2 * gold_serving.REFRESH_SECONDS)

    async def burst_then_settle() -> list[bool]:
        answers = await burst()  # stale: answered from the cache while one load runs
        await asyncio.sleep(0.5)
        return answers

    assert asyncio.run(burst_then_settle()) == [False] * 50
    assert len(loads) == 2
    assert database.state["gold_serving"].checked_at > stale.checked_at


def test_a_worker_opens_its_postgresql_connections_before_serving(app, database):
    """The annotation path's connections are opened at start, not by the first annotators to arrive."""
    if database.statements is None:
        pytest.skip("PostgreSQL's path")

    def backends() -> int:
        with database.read() as db:
            return db.scalar(select(func.count()).select_from(text("pg_stat_activity"))
                             .where(text("datname = current_database()")))

    before = backends()
    with TestClient(app):
        assert backends() - before >= database.statements.max_connections
    assert backends() - before < database.statements.max_connections  # closed at shutdown


def test_a_worker_prepares_the_annotation_path_on_its_connections_before_serving(app, database, statements, monkeypatch):
    """A statement's first run on a new PostgreSQL connection cost about ten times a later run, and
    1,000 annotators arriving at once met every connection in the first second (their fetches
    waited 0.2-0.4 s). So each worker prepares the annotation path's statements on each connection
    at start: every statement that an annotator's fetches, submissions (BWS and rating) and retried
    submissions run on the event loop's connections."""
    if database.statements is None:
        pytest.skip("PostgreSQL's path")
    import asyncpg

    asked, prepared = [], []
    open_connections, prepare = database.statements.open_connections, asyncpg.Connection.prepare

    async def asked_to_prepare(prepare=()):
        asked.extend(prepare)
        return await open_connections(prepare=prepare)

    async def preparing(conn, query, **kwargs):
        prepared.append(query)
        return await prepare(conn, query, **kwargs)

    monkeypatch.setattr(database.statements, "open_connections", asked_to_prepare)
    monkeypatch.setattr(asyncpg.Connection, "prepare", preparing)
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    seed_rating_batch(database, required=1)
    make_user(database, "ann")
    with TestClient(app) as client:
        assert asked and len(prepared) == database.statements.max_connections * len(asked)  # each one on each connection
        headers = token_headers(client, "ann")
        statements.clear()
        kinds = []
        while (response := client.post("/api/v1/tasks/next", headers=headers)).status_code == 200:
            task = response.json()
            kinds.append(task["kind"])
            handles = [item["handle"] for item in task["items"]]
            body = ({"best": handles[0], "worst": handles[-1]} if task["kind"] == "bws"
                    else {"grammar": 5, "creativity": 3, "consistency": 4, "plot": 2})
            body["idempotency_key"] = uuid.uuid4().hex
            for _ in range(2):  # the retry is answered from the stored judgement
                submitted = client.post(f"/api/v1/tasks/{task['assignment_id']}/{task['kind']}", headers=headers, json=body)
                assert submitted.status_code == 200, submitted.text
        assert response.status_code == 204
    assert "bws" in kinds and "rating" in kinds
    run_on_the_loop = {statement for statement in statements if not isinstance(statement, str)}
    assert run_on_the_loop and run_on_the_loop <= set(asked)


def test_the_annotation_path_runs_generic_plans(app, database):
    """PostgreSQL re-planned the lease statement on every call (its custom plans looked cheaper than a
    generic one), which cost it about as much CPU as running it: the annotation path's connections
    keep one generic plan per statement, in a worker's pool as on a one-off connection."""
    if database.statements is None:
        pytest.skip("PostgreSQL's path")
    setting = select(func.current_setting("plan_cache_mode").label("mode"))
    assert asyncio.run(database.statements.fetch_one(setting, {})).mode == "force_generic_plan"  # no pool here

    async def in_a_worker() -> str:
        await database.statements.open_connections()
        try:
            return (await database.statements.fetch_one(setting, {})).mode
        finally:
            await database.statements.close()

    assert asyncio.run(in_a_worker()) == "force_generic_plan"
