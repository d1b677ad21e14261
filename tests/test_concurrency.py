"""Many annotators at once against a real server: nothing lost, nothing doubled, R never exceeded.

A real uvicorn server runs in a thread (its own event loop and thread pool, real sockets), and each
simulated annotator is a thread with its own httpx client. Every submission is sent twice with the
same idempotency key (one after the other, or both at once), some tasks are skipped, and every
acknowledged (200) judgement id is collected. The database must then hold exactly those.
Runs on SQLite and on PostgreSQL (see the `database_url` fixture in conftest.py).
"""

import asyncio
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from app.models import ApiToken, Assignment, BwsJudgement, Task, User, utcnow
from app.security import hash_password, new_token, token_digest
from tests.factories import seed_bws_batch, seed_stories, submit_bws_by_ids, task_of
from tests.live_server import LiveServer, start_server_process

ANNOTATORS = 30
REQUIRED = 3


# ---------------------------------------------------------------- a live server


@pytest.fixture
def live_server(app) -> Iterator[LiveServer]:
    with LiveServer(app) as live:
        yield live


def _make_annotators(database, count: int, prefix: str = "ann") -> list[tuple[int, dict[str, str]]]:
    """Accounts with bearer tokens, straight through the data layer (one password hash for all: fast)."""
    password_hash = hash_password("correct horse battery")
    made = []
    with database.write() as db:
        for i in range(count):
            user = User(username=f"{prefix}{i}", password_hash=password_hash, role="annotator")
            db.add(user)
            db.flush()
            token = new_token()
            db.add(ApiToken(user_id=user.id, token_hash=token_digest(token), name="test",
                            expires_at=utcnow() + timedelta(days=1)))
            made.append((user.id, {"Authorization": f"Bearer {token}"}))
    return made


# ---------------------------------------------------------------- simulated annotators


@dataclass
class Outcome:
    # (Annotators are not told task ids: assignments stand for them, checked against the stored ones.)
    acknowledged: dict[int, tuple[int, int, bool]] = field(default_factory=dict)  # judgement id -> (assignment, user, counted)
    skipped: set[tuple[int, int]] = field(default_factory=set)  # (assignment, user)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def problem(self, message: str) -> None:
        with self.lock:
            self.problems.append(message)


def _post(client: httpx.Client, url: str, **kwargs) -> httpx.Response:
    """POST, retrying transport errors and the service's 'please retry' answers a few times."""
    for attempt in range(20):
        try:
            response = client.post(url, **kwargs)
        except httpx.TransportError:
            time.sleep(0.05 * (attempt + 1))
            continue
        if response.status_code in (409, 503) and "retry" in response.text:
            time.sleep(0.02 * (attempt + 1))
            continue
        return response
    raise AssertionError(f"POST {url} kept failing")


def _annotate(base_url: str, user_id: int, headers: dict[str, str], outcome: Outcome, seed: int,
              skip_rate: float, deadline: float) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client, \
            ThreadPoolExecutor(max_workers=2) as pair:
        while time.monotonic() < deadline:
            response = _post(client, "/api/v1/tasks/next")
            if response.status_code == 204:
                return
            if response.status_code != 200:
                outcome.problem(f"next: {response.status_code} {response.text}")
                return
            task = response.json()
            assignment_id = task["assignment_id"]
            handles = [item["handle"] for item in task["items"]]
            if rng.random() < skip_rate:
                skipped = _post(client, f"/api/v1/tasks/{assignment_id}/skip", json={"reason": "test"})
                if skipped.status_code != 204:
                    outcome.problem(f"skip: {skipped.status_code} {skipped.text}")
                    return
                with outcome.lock:
                    outcome.skipped.add((assignment_id, user_id))
                continue
            best, worst = rng.sample(handles, 2)
            body = {"best": best, "worst": worst, "idempotency_key": uuid.uuid4().hex,
                    "duration_ms": rng.randint(500, 60_000)}
            url = f"/api/v1/tasks/{assignment_id}/bws"
            if rng.random() < 0.5:  # the retry races the original
                futures = [pair.submit(_post, client, url, json=body) for _ in range(2)]
                responses = [f.result() for f in futures]
            else:  # the retry comes after the answer (as if the answer had been lost)
                responses = [_post(client, url, json=body) for _ in range(2)]
            answers = []
            for r in responses:
                if r.status_code != 200:
                    outcome.problem(f"submit: {r.status_code} {r.text}")
                    continue
                answers.append(r.json())
                with outcome.lock:
                    outcome.acknowledged[r.json()["judgement_id"]] = (assignment_id, user_id, r.json()["counted"])
            if len({a["judgement_id"] for a in answers}) > 1:
                outcome.problem(f"one idempotency key, several judgements: {answers}")
            if len({a["counted"] for a in answers}) > 1:
                outcome.problem(f"replay answered differently: {answers}")
            if sum(not a["replayed"] for a in answers) > 1:
                outcome.problem(f"stored twice: {answers}")
        outcome.problem(f"user {user_id} ran out of time")


def _run_annotators(live: LiveServer, annotators, outcome: Outcome, skip_rate: float, budget_s: float = 25) -> None:
    deadline = time.monotonic() + budget_s
    threads = [
        threading.Thread(target=_annotate, args=(live.url, uid, headers, outcome, 1000 + i, skip_rate, deadline))
        for i, (uid, headers) in enumerate(annotators)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=budget_s + 10)
    assert not any(t.is_alive() for t in threads), "annotators still running"


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("skip_rate", [0.0, 0.15], ids=["no-skips", "some-skips"])
def test_many_annotators_store_exactly_what_was_acknowledged(database, live_server, skip_rate):
    seed_bws_batch(database, prompts=4, per_prompt=6, required=REQUIRED)  # 48 tuples
    annotators = _make_annotators(database, ANNOTATORS)
    outcome = Outcome()

    started = time.monotonic()
    _run_annotators(live_server, annotators, outcome, skip_rate)
    elapsed = time.monotonic() - started
    _check_stored_exactly_what_was_acknowledged(database, outcome)
    if skip_rate == 0:
        with database.read() as db:
            assert db.scalar(select(func.count()).select_from(BwsJudgement)) == db.scalar(
                select(func.count()).select_from(Task)) * REQUIRED
    assert elapsed < 30, f"took {elapsed:.1f}s"


def test_many_annotators_with_batches_in_every_rank(database, live_server):
    """The same guarantees with the serving order in play: a batch pinned up, the newest round's,
    a normal one, one pinned down (all served), and a paused one (never served)."""
    from app.services import tasks as service

    by_prompt = seed_stories(database, prompts=4, per_prompt=5)
    with database.write() as db:
        built = [service.build_bws_batch(db, f"batch {i}", by_prompt, seed=i, required=REQUIRED).id for i in range(5)]
        up, newest, _normal, down, paused = built
        service.set_batch_priority(db, up, "up")
        service.mark_newest_round_batch(db, newest)
        service.set_batch_priority(db, down, "down")
        service.set_batch_priority(db, paused, "paused")
    annotators = _make_annotators(database, ANNOTATORS)
    outcome = Outcome()
    _run_annotators(live_server, annotators, outcome, skip_rate=0.1)
    _check_stored_exactly_what_was_acknowledged(database, outcome, paused_batches={paused})
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(Assignment).join(Task, Task.id == Assignment.task_id)
                         .where(Task.batch_id == paused)) == 0, "a paused batch was served"


def _check_stored_exactly_what_was_acknowledged(database, outcome: Outcome, paused_batches=frozenset()) -> None:
    assert outcome.problems == [], outcome.problems[:10]
    assert outcome.acknowledged, "nothing was judged"

    with database.read() as db:
        judgements = db.execute(select(BwsJudgement.id, BwsJudgement.task_id, BwsJudgement.user_id,
                                       BwsJudgement.is_surplus, BwsJudgement.assignment_id)).all()
        tasks = {t.id: t for t in db.scalars(select(Task))}
        assignments = db.execute(select(Assignment.id, Assignment.task_id, Assignment.user_id,
                                        Assignment.status)).all()

    # Exactly the acknowledged judgements: none lost, none extra, each stored once.
    assert {j.id for j in judgements} == set(outcome.acknowledged)
    assert len(judgements) == len(outcome.acknowledged)
    for j in judgements:
        assert outcome.acknowledged[j.id] == (j.assignment_id, j.user_id, not j.is_surplus)

    # Nobody judged (or was even given) a task twice.
    assert max(Counter((j.task_id, j.user_id) for j in judgements).values()) == 1
    assert max(Counter((a.task_id, a.user_id) for a in assignments).values()) == 1
    assert max(Counter(j.assignment_id for j in judgements).values()) == 1

    # Nothing is left hanging: every lease ended submitted or skipped (no lease expired here).
    status_of = {a.id: a.status for a in assignments}
    assert set(status_of.values()) <= {"submitted", "skipped"}
    assert {a.id for a in assignments if a.status == "submitted"} == {j.assignment_id for j in judgements}
    assert {(a.id, a.user_id) for a in assignments if a.status == "skipped"} == outcome.skipped

    counted = Counter(j.task_id for j in judgements if not j.is_surplus)
    per_task = defaultdict(int)
    for j in judgements:
        per_task[j.task_id] += 1
    skipped_tasks = {a.task_id for a in assignments if a.status == "skipped"}
    for task_id, task in tasks.items():
        assert task.done_count == counted[task_id], f"task {task_id}: done_count disagrees with the judgements"
        assert counted[task_id] <= task.required
        # Leases are valid throughout, so nothing is surplus: counted == min(R, submitted).
        assert counted[task_id] == min(task.required, per_task[task_id])
        if task_id not in skipped_tasks and task.batch_id not in paused_batches:
            # ANNOTATORS >= R and nobody skipped it: it is complete
            assert counted[task_id] == task.required, f"task {task_id} ended with {counted[task_id]}"


def test_expired_leases_return_to_the_pool(database, live_server):
    seed_bws_batch(database, prompts=1, per_prompt=4, required=2)  # C(4,4): one tuple, R = 2
    annotators = _make_annotators(database, 12)
    first, rest = annotators[:2], annotators[2:]

    def post(headers, url, **kwargs) -> httpx.Response:
        with httpx.Client(base_url=live_server.url, headers=headers, timeout=30) as c:
            return c.post(url, **kwargs)

    # Two annotators lease both slots; everybody else finds nothing, even all at once.
    early = [post(h, "/api/v1/tasks/next").json() for _, h in first]
    assert len({task_of(database, t["assignment_id"]) for t in early}) == 1
    with ThreadPoolExecutor(len(rest)) as pool:
        statuses = list(pool.map(lambda a: post(a[1], "/api/v1/tasks/next").status_code, rest))
    assert statuses == [204] * len(rest)

    # The leases run out: the slots go back to the pool, and exactly two of ten racing annotators get them.
    with database.write() as db:
        db.execute(update(Assignment).values(expires_at=utcnow() - timedelta(seconds=1)))
    with ThreadPoolExecutor(len(rest)) as pool:
        answers = list(pool.map(lambda a: (a, post(a[1], "/api/v1/tasks/next")), rest))
    winners = [(a, r.json()) for a, r in answers if r.status_code == 200]
    assert sorted(r.status_code for _, r in answers) == [200, 200] + [204] * (len(rest) - 2)
    assert {task_of(database, t["assignment_id"]) for _, t in winners} == {task_of(database, early[0]["assignment_id"])}

    def submit(headers, task):
        handles = [i["handle"] for i in task["items"]]
        response = post(headers, f"/api/v1/tasks/{task['assignment_id']}/bws",
                        json={"best": handles[0], "worst": handles[1], "idempotency_key": uuid.uuid4().hex})
        assert response.status_code == 200, response.text
        return response.json()

    # The late ones are stored but not counted; the new lease holders are counted.
    late = [submit(h, t) for (_, h), t in zip(first, early)]
    fresh = [submit(a[1], t) for a, t in winners]
    assert [r["counted"] for r in late] == [False, False]
    assert [r["counted"] for r in fresh] == [True, True]

    with database.read() as db:
        task = db.scalar(select(Task))
        judgements = db.scalars(select(BwsJudgement)).all()
        statuses = Counter(db.scalars(select(Assignment.status)))
    assert task.done_count == task.required == 2
    assert len(judgements) == 4 and sum(not j.is_surplus for j in judgements) == 2
    assert statuses == Counter({"surplus": 2, "submitted": 2})
    # Full now: nobody else gets it.
    assert post(rest[-1][1], "/api/v1/tasks/next").status_code == 204


def test_a_task_is_never_leased_beyond_r_at_once(database):
    """40 annotators ask for a task at the very same moment, eight rounds: no task is ever leased to
    more than R people (counting finished judgements), on the service layer directly. (This caught
    over-leasing on PostgreSQL when leases were counted in a subquery rather than on the task row.)"""
    from app.services import tasks as service

    seed_bws_batch(database, prompts=5, per_prompt=6, required=2)  # 60 tuples
    annotators = _make_annotators(database, 40)
    with database.read() as db:
        people = [db.get(User, uid) for uid, _ in annotators]
    for round_ in range(8):
        barrier = threading.Barrier(len(people))
        leased: dict[int, object] = {}

        def fetch(user):
            barrier.wait()
            leased[user.id] = asyncio.run(service.next_task(database, user, 600))

        threads = [threading.Thread(target=fetch, args=(u,)) for u in people]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        with database.read() as db:
            done = dict(db.execute(select(Task.id, Task.done_count)).all())
            active = Counter(db.scalars(select(Assignment.task_id).where(Assignment.status == "active")))
            required = dict(db.execute(select(Task.id, Task.required)).all())
        over = {t: (done[t], active[t]) for t in done if done[t] + active[t] > required[t]}
        assert not over, f"round {round_}: tasks leased beyond R (done, active): {over}"
        for user in people:  # everybody answers, then the next burst
            view = leased.get(user.id)
            if view is not None:
                ids = [i.continuation_id for i in view.items]
                submit_bws_by_ids(database, user, view, ids[0], ids[1])


def test_a_killed_server_keeps_every_acknowledged_judgement(database, settings):
    """SIGKILL the whole server (both workers) in the middle of a load: every judgement that was
    acknowledged is in the database, and the task counters agree with the judgements stored
    (on SQLite the judgements of one worker are committed together, so this checks the group commit)."""
    seed_bws_batch(database, prompts=10, per_prompt=8, required=REQUIRED)
    annotators = _make_annotators(database, 16)
    server, port = start_server_process(settings)
    acknowledged: set[int] = set()
    stop = threading.Event()

    def annotate(headers: dict[str, str], seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as client:
            while not stop.is_set():
                try:
                    task = client.post("/api/v1/tasks/next")
                    if task.status_code != 200:
                        return
                    best, worst = rng.sample([i["handle"] for i in task.json()["items"]], 2)
                    answer = client.post(f"/api/v1/tasks/{task.json()['assignment_id']}/bws", json={
                        "best": best, "worst": worst, "idempotency_key": uuid.uuid4().hex})
                except httpx.TransportError:
                    return  # the server is gone
                if answer.status_code == 200:
                    acknowledged.add(answer.json()["judgement_id"])

    threads = [threading.Thread(target=annotate, args=(headers, i)) for i, (_uid, headers) in enumerate(annotators)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(acknowledged) < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(server.pid, signal.SIGKILL)  # no shutdown, no cleanup: as a crash or the OOM killer
    finally:
        stop.set()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        for t in threads:
            t.join(timeout=15)

    assert len(acknowledged) >= 60
    with database.read() as db:
        stored = set(db.scalars(select(BwsJudgement.id)))
        counted = Counter(db.scalars(select(BwsJudgement.task_id).where(BwsJudgement.is_surplus.is_(False))))
        done = {t.id: t.done_count for t in db.scalars(select(Task))}
    assert acknowledged <= stored, f"lost acknowledged judgements: {sorted(acknowledged - stored)[:10]}"
    assert all(done[task_id] == counted[task_id] for task_id in done)
