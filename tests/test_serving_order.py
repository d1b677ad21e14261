"""The serving order of BWS tuples: pinned-up batches, then the newest trainer round's, then normal
ones, then pinned-down ones, never paused ones; within each, least filled first, spread across prompts.

Runs on SQLite and on PostgreSQL (the `database_url` fixture in conftest.py). The guarantees under
concurrency with several batches in different ranks are in tests/test_concurrency.py.
"""

import asyncio
import uuid
from collections import Counter, defaultdict

import pytest
from sqlalchemy import select

from app.models import Batch, Task, User
from app.services import tasks as service
from app.services.errors import Invalid, NotFound
from tests.conftest import make_user, token_headers
from tests.factories import seed_stories, submit_bws_by_ids, task_of


def _build(database, by_prompt, name: str, seed: int = 0, required: int = 3) -> int:
    with database.write() as db:
        return service.build_bws_batch(db, name, by_prompt, seed=seed, required=required).id


def _batch_of(database) -> dict[int, int]:
    with database.read() as db:
        return dict(db.execute(select(Task.id, Task.batch_id)).all())


def _people(database, count: int) -> list[User]:
    made = [make_user(database, f"ann{i}") for i in range(count)]
    with database.read() as db:
        return [db.get(User, u.id) for u in made]


def _judge(database, user: User, view) -> None:
    ids = [i.continuation_id for i in view.items]
    assert submit_bws_by_ids(database, user, view, ids[0], ids[-1]).counted


# ---------------------------------------------------------------- building


def test_a_new_batch_spreads_its_tuples_across_prompts(database):
    by_prompt = seed_stories(database, prompts=4, per_prompt=6)
    batch_id = _build(database, by_prompt, "spread")
    with database.read() as db:
        rows = db.execute(select(Task.id, Task.prompt_id, Task.serve_order, Task.serve_rank)
                          .where(Task.batch_id == batch_id).order_by(Task.id)).all()
        batch = db.get(Batch, batch_id)
        assert (batch.priority, batch.is_newest_round) == ("normal", False)
    prompts = sorted(by_prompt)
    seen: Counter = Counter()
    for _task_id, prompt_id, serve_order, serve_rank in rows:
        assert serve_rank == service.SERVE_RANKS["normal"]
        assert serve_order == seen[prompt_id] * len(prompts) + prompts.index(prompt_id)
        seen[prompt_id] += 1
    assert len({r.serve_order for r in rows}) == len(rows)
    # In serve order, the first tuple of every prompt comes before the second of any.
    first_round = [r.prompt_id for r in sorted(rows, key=lambda r: r.serve_order)][:len(prompts)]
    assert sorted(first_round) == prompts


# ---------------------------------------------------------------- ranks


def test_the_newest_round_batch_is_served_first(database):
    by_prompt = seed_stories(database, prompts=3, per_prompt=5)
    older = _build(database, by_prompt, "older", seed=1)
    round_1 = _build(database, by_prompt, "round 1", seed=2)
    with database.write() as db:
        service.mark_newest_round_batch(db, round_1)
    with database.write() as db:  # the next round, as the trainer queues it: built and marked in one session
        round_2 = service.build_bws_batch(db, "round 2", by_prompt, seed=3, required=3).id
        service.mark_newest_round_batch(db, round_2)  # round 1 is normal again
    with database.read() as db:
        assert service.batch_serving(db) == {older: ("normal", False), round_1: ("normal", False),
                                             round_2: ("normal", True)}
        ranks = dict(db.execute(select(Task.batch_id, Task.serve_rank).distinct()).all())
    assert ranks == {older: 2, round_1: 2, round_2: 1}

    batch_of = _batch_of(database)
    [ann] = _people(database, 1)
    served = []
    while (view := asyncio.run(service.next_task(database, ann, 600))) is not None:
        served.append(batch_of[view.task_id])
        _judge(database, ann, view)
    newest = served.count(round_2)
    assert newest > 0 and served[:newest] == [round_2] * newest, served
    # Then the normal ones: least filled first, ties by spread and id, so both get tuples.
    assert set(served[newest:]) == {older, round_1}

    with database.write() as db, pytest.raises(NotFound):
        service.mark_newest_round_batch(db, 10_000)


def test_an_admin_pin_beats_the_newest_round(database):
    by_prompt = seed_stories(database, prompts=2, per_prompt=4)
    up, newest_pinned_down, newest = (_build(database, by_prompt, name, seed=i) for i, name in enumerate("abc"))
    with database.write() as db:
        service.mark_newest_round_batch(db, newest_pinned_down)
        service.set_batch_priority(db, newest_pinned_down, "down")
        service.set_batch_priority(db, up, "up")
    with database.read() as db:
        ranks = dict(db.execute(select(Task.batch_id, Task.serve_rank).distinct()).all())
    assert ranks == {up: 0, newest_pinned_down: 3, newest: 2}
    with database.write() as db:
        service.mark_newest_round_batch(db, newest)
        service.set_batch_priority(db, newest_pinned_down, "normal")  # no longer the newest: plain normal
    with database.read() as db:
        ranks = dict(db.execute(select(Task.batch_id, Task.serve_rank).distinct()).all())
    assert ranks == {up: 0, newest_pinned_down: 2, newest: 1}
    with database.write() as db, pytest.raises(Invalid):
        service.set_batch_priority(db, up, "urgent")
    with database.write() as db, pytest.raises(NotFound):
        service.set_batch_priority(db, 10_000, "up")


# ---------------------------------------------------------------- spread across prompts


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "leases-held-together"])
def test_every_prompt_is_judged_before_any_gets_a_third_judgement(database, together):
    """R = 3, six prompts with three tuples each, five annotators: within the batch, every prompt has
    its first judgement before any has a second, and so before any has a third. `together`: all five
    hold a lease at once before any of them submits (as people do)."""
    by_prompt = seed_stories(database, prompts=6, per_prompt=6)
    _build(database, by_prompt, "older, partly judged", seed=5)
    people = _people(database, 5)
    for user in people[:2]:  # two of them judged some of the older batch first
        for _ in range(4):
            _judge(database, user, asyncio.run(service.next_task(database, user, 600)))
    new = _build(database, by_prompt, "new round", seed=6)
    with database.write() as db:
        service.mark_newest_round_batch(db, new)
    prompt_of = {}
    with database.read() as db:
        for task_id, prompt_id in db.execute(select(Task.id, Task.prompt_id).where(Task.batch_id == new)):
            prompt_of[task_id] = prompt_id
    tuples_per_prompt = Counter(prompt_of.values())
    assert len(tuples_per_prompt) == 6 and min(tuples_per_prompt.values()) >= 3

    def lease_new(user: User):
        """The user's next tuple of the new batch (any other is skipped)."""
        while (view := asyncio.run(service.next_task(database, user, 600))) is not None:
            if view.task_id in prompt_of:
                return view
            asyncio.run(service.skip_task(database, user, view.assignment_id))
        return None

    judged: list[int] = []  # prompts of the new batch, in the order of their judgements
    while True:
        served = 0
        if together:
            views = [(user, view) for user in people if (view := lease_new(user)) is not None]
            for user, view in views:
                _judge(database, user, view)
                judged.append(prompt_of[view.task_id])
            served = len(views)
        else:
            for user in people:
                if (view := lease_new(user)) is not None:
                    _judge(database, user, view)
                    judged.append(prompt_of[view.task_id])
                    served += 1
        if not served:
            break
    assert len(judged) == len(prompt_of) * 3, "every tuple of the new batch got R judgements"

    count: Counter = Counter()
    for prompt_id in judged:
        count[prompt_id] += 1
        if count[prompt_id] == 2:
            assert len(count) == 6, f"a prompt got a second judgement before all had one: {judged}"
        if count[prompt_id] == 3:
            assert len(count) == 6, f"a prompt got a third judgement before all had one: {judged}"
    # And fairly: at every point, judgement counts of the prompts differ by at most one round.
    running: Counter = Counter()
    for prompt_id in judged[:6 * 3]:  # while every prompt has tuples left to hand out
        running[prompt_id] += 1
        assert max(running.values()) - min(running[p] for p in tuples_per_prompt) <= 1, judged
    per_task = defaultdict(int)
    with database.read() as db:
        for task_id, done in db.execute(select(Task.id, Task.done_count).where(Task.batch_id == new)):
            per_task[task_id] = done
    assert set(per_task.values()) == {3}


# ---------------------------------------------------------------- pins through the API


def test_pins_through_the_api(client, database, admin_headers):
    by_prompt = seed_stories(database, prompts=2, per_prompt=4)  # one tuple per prompt and batch
    normal, down, up, paused = (_build(database, by_prompt, name, seed=i, required=1)
                                for i, name in enumerate(["normal", "down", "up", "paused"]))
    for batch_id, priority in ((down, "down"), (up, "up"), (paused, "paused")):
        response = client.patch(f"/api/v1/admin/batches/{batch_id}", headers=admin_headers, json={"priority": priority})
        assert response.status_code == 200, response.text
        assert response.json() == {"id": batch_id, "priority": priority, "is_newest_round": False}
    assert client.patch("/api/v1/admin/batches/999", headers=admin_headers, json={"priority": "up"}).status_code == 404
    assert client.patch(f"/api/v1/admin/batches/{up}", headers=admin_headers, json={"priority": "top"}).status_code == 422
    assert client.patch(f"/api/v1/admin/batches/{up}", headers=admin_headers, json={}).status_code == 422
    listed = {b["id"]: (b["priority"], b["is_newest_round"])
              for b in client.get("/api/v1/admin/batches", headers=admin_headers).json()}
    assert listed == {normal: ("normal", False), down: ("down", False), up: ("up", False), paused: ("paused", False)}

    make_user(database, "ann", "annotator")
    headers = token_headers(client, "ann")
    assert client.patch(f"/api/v1/admin/batches/{up}", headers=headers, json={"priority": "down"}).status_code == 403
    batch_of = _batch_of(database)

    def work_through() -> list[int]:
        served = []
        while (task := client.post("/api/v1/tasks/next", headers=headers)).status_code == 200:
            served.append(batch_of[task_of(database, task.json()["assignment_id"])])
            handles = [i["handle"] for i in task.json()["items"]]
            answer = client.post(f"/api/v1/tasks/{task.json()['assignment_id']}/bws", headers=headers,
                                 json={"best": handles[0], "worst": handles[1], "idempotency_key": uuid.uuid4().hex})
            assert answer.status_code == 200
        assert task.status_code == 204
        return served

    assert work_through() == [up, up, normal, normal, down, down]  # and nothing of the paused batch
    assert client.get("/api/v1/me/progress", headers=headers).json()["tasks_left"] == 0
    client.patch(f"/api/v1/admin/batches/{paused}", headers=admin_headers, json={"priority": "normal"})
    assert work_through() == [paused, paused]


def test_pins_on_the_batches_page(client, database):
    from tests.test_admin_pages import login, post_form

    by_prompt = seed_stories(database, prompts=2, per_prompt=4)
    first, second = (_build(database, by_prompt, name, seed=i) for i, name in enumerate(["first", "second"]))
    with database.write() as db:
        service.mark_newest_round_batch(db, second)
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get("/admin/batches").text
    assert f'action="/admin/batches/{first}/priority"' in page and "(newest round)" in page

    page = post_form(client, "/admin/batches", f"/admin/batches/{first}/priority", {"priority": "paused"}).text
    assert f"Batch #{first} is now served “paused”" in page
    with database.read() as db:
        assert service.batch_serving(db) == {first: ("paused", False), second: ("normal", True)}
        assert set(db.scalars(select(Task.serve_rank).where(Task.batch_id == first))) == {service.PAUSED_RANK}
    page = post_form(client, "/admin/batches", f"/admin/batches/{first}/priority", {"priority": "sideways"}).text
    assert "Priority not changed" in page
    page = post_form(client, "/admin/batches", "/admin/batches/999/priority", {"priority": "up"}).text
    assert "Priority not changed" in page
    # Without the CSRF token nothing changes.
    refused = client.post(f"/admin/batches/{first}/priority", data={"priority": "up"}, follow_redirects=False)
    assert refused.status_code in (400, 403)
    with database.read() as db:
        assert service.batch_serving(db)[first] == ("paused", False)
