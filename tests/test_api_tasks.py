"""The annotation API end to end: lease, submit, idempotency, surplus, skip, progress."""

import uuid
from datetime import timedelta

from sqlalchemy import func, select, update

from app.models import Assignment, BwsJudgement, Task, utcnow
from tests.conftest import make_user, token_headers
from tests.factories import seed_bws_batch, seed_rating_batch, task_of


def _key() -> str:
    return uuid.uuid4().hex

def test_bws_flow_counts_once_and_never_repeats_a_task(client, database):
    seed_bws_batch(database, prompts=1, per_prompt=4, required=2)  # C(4,4) = 1 tuple
    make_user(database, "ann")
    headers = token_headers(client, "ann")

    task = client.post("/api/v1/tasks/next", headers=headers).json()
    assert task["kind"] == "bws" and len(task["items"]) == 4
    assert len({i["handle"] for i in task["items"]}) == 4
    # Same task again while the lease is open.
    assert client.post("/api/v1/tasks/next", headers=headers).json()["assignment_id"] == task["assignment_id"]

    handles = [i["handle"] for i in task["items"]]
    same = client.post(f"/api/v1/tasks/{task['assignment_id']}/bws", headers=headers,
                       json={"best": handles[0], "worst": handles[0], "idempotency_key": _key()})
    assert same.status_code == 422 and "different" in same.json()["detail"]

    body = {"best": handles[0], "worst": handles[3], "idempotency_key": _key(), "duration_ms": 1234}
    first = client.post(f"/api/v1/tasks/{task['assignment_id']}/bws", headers=headers, json=body)
    again = client.post(f"/api/v1/tasks/{task['assignment_id']}/bws", headers=headers, json=body)
    assert first.status_code == 200 and first.json()["counted"] and not first.json()["replayed"]
    assert again.status_code == 200 and again.json()["replayed"]
    assert again.json()["judgement_id"] == first.json()["judgement_id"]

    # The only tuple was done by this annotator: nothing left for them.
    assert client.post("/api/v1/tasks/next", headers=headers).status_code == 204
    progress = client.get("/api/v1/me/progress", headers=headers).json()
    assert progress == {"done_today": 1, "done_total": 1, "tasks_left": 0, "quota": None, "quota_left": None}
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(BwsJudgement)) == 1
        assert db.scalar(select(Task.done_count)) == 1


def test_late_submission_is_stored_as_surplus_and_frees_the_slot(client, database):
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    for name in ("slow", "fast"):
        make_user(database, name)
    slow, fast = token_headers(client, "slow"), token_headers(client, "fast")
    task = client.post("/api/v1/tasks/next", headers=slow).json()
    assert client.post("/api/v1/tasks/next", headers=fast).status_code == 204  # R=1 slot is leased

    with database.write() as db:  # the lease runs out
        db.execute(update(Assignment).values(expires_at=utcnow() - timedelta(seconds=1)))
    other = client.post("/api/v1/tasks/next", headers=fast).json()
    assert task_of(database, other["assignment_id"]) == task_of(database, task["assignment_id"])

    mine, theirs = [i["handle"] for i in task["items"]], [i["handle"] for i in other["items"]]
    late = client.post(f"/api/v1/tasks/{task['assignment_id']}/bws", headers=slow,
                       json={"best": mine[1], "worst": mine[2], "idempotency_key": _key()})
    assert late.status_code == 200 and late.json()["counted"] is False
    on_time = client.post(f"/api/v1/tasks/{other['assignment_id']}/bws", headers=fast,
                          json={"best": theirs[0], "worst": theirs[2], "idempotency_key": _key()})
    assert on_time.json()["counted"] is True
    with database.read() as db:
        surplus = db.scalars(select(BwsJudgement.is_surplus).order_by(BwsJudgement.id)).all()
        assert surplus == [True, False]


def test_rating_and_skip(client, database):
    seed_rating_batch(database, required=1)
    make_user(database, "eva", role="evaluator")
    headers = token_headers(client, "eva")
    first = client.post("/api/v1/tasks/next", headers=headers).json()
    assert first["kind"] == "rating" and len(first["items"]) == 1
    skipped = client.post(f"/api/v1/tasks/{first['assignment_id']}/skip", headers=headers, json={"reason": "unclear"})
    assert skipped.status_code == 204
    second = client.post("/api/v1/tasks/next", headers=headers).json()
    assert task_of(database, second["assignment_id"]) != task_of(database, first["assignment_id"])
    bad = client.post(f"/api/v1/tasks/{second['assignment_id']}/rating", headers=headers,
                      json={"grammar": 6, "creativity": 3, "consistency": 3, "plot": 3, "idempotency_key": _key()})
    assert bad.status_code == 422
    for not_a_score in (True, "3", 3.0):  # JSON true is no rating of 1, nor text or a float a score
        wrong = client.post(f"/api/v1/tasks/{second['assignment_id']}/rating", headers=headers,
                            json={"grammar": not_a_score, "creativity": 3, "consistency": 3, "plot": 3,
                                  "idempotency_key": _key()})
        assert wrong.status_code == 422 and "grammar" in wrong.text, not_a_score
    ok = client.post(f"/api/v1/tasks/{second['assignment_id']}/rating", headers=headers,
                     json={"grammar": 5, "creativity": 3, "consistency": 4, "plot": 2, "comment": "nice",
                           "idempotency_key": _key()})
    assert ok.status_code == 200 and ok.json()["counted"]


def test_evaluator_gets_no_bws_and_anonymous_gets_401(client, database):
    seed_bws_batch(database, prompts=1, per_prompt=4)
    make_user(database, "eva", role="evaluator")
    assert client.post("/api/v1/tasks/next", headers=token_headers(client, "eva")).status_code == 204
    assert client.post("/api/v1/tasks/next").status_code == 401


def test_submit_with_next_returns_the_next_lease(client, database):
    seed_bws_batch(database, prompts=2, per_prompt=4, required=1)  # two tuples, one per prompt
    make_user(database, "ann")
    headers = token_headers(client, "ann")
    first = client.post("/api/v1/tasks/next", headers=headers).json()
    handles = [i["handle"] for i in first["items"]]
    body = {"best": handles[0], "worst": handles[1], "idempotency_key": _key()}
    answer = client.post(f"/api/v1/tasks/{first['assignment_id']}/bws?next=true", headers=headers, json=body).json()
    assert answer["counted"]
    assert task_of(database, answer["next_task"]["assignment_id"]) != task_of(database, first["assignment_id"])
    # The lease in the answer is the one the annotator now holds.
    assert client.post("/api/v1/tasks/next", headers=headers).json()["assignment_id"] == answer["next_task"]["assignment_id"]
    second = answer["next_task"]
    handles = [i["handle"] for i in second["items"]]
    body = {"best": handles[0], "worst": handles[1], "idempotency_key": _key()}
    last = client.post(f"/api/v1/tasks/{second['assignment_id']}/bws?next=true", headers=headers, json=body).json()
    assert last["counted"] and last["next_task"] is None


def test_rating_items_come_in_a_different_order_for_each_person(client, database):
    from tests.factories import seed_stories
    from app.services.tasks import build_rating_batch

    by_prompt = seed_stories(database, prompts=4, per_prompt=5, source="rated")
    with database.write() as db:
        build_rating_batch(db, "ratings", [c for cs in by_prompt.values() for c in cs], required=2)
    orders = []
    for name in ("eva1", "eva2"):  # consecutive user ids
        make_user(database, name, role="evaluator")
        headers = token_headers(client, name)
        seen = []
        while (task := client.post("/api/v1/tasks/next", headers=headers)).status_code == 200:
            seen.append(task_of(database, task.json()["assignment_id"]))
            client.post(f"/api/v1/tasks/{task.json()['assignment_id']}/skip", headers=headers, json={})
        orders.append(seen)
    assert sorted(orders[0]) == sorted(orders[1]) and len(orders[0]) == 20  # everyone gets every item once
    assert orders[0] != orders[1] and orders[0] != sorted(orders[0])
    # Not one cycle entered at another point: the second order is no rotation of the first.
    assert all(orders[1] != orders[0][k:] + orders[0][:k] for k in range(20))


def test_a_key_used_for_another_task_is_refused_and_the_second_task_stays_open(client, database):
    seed_bws_batch(database, prompts=2, per_prompt=4, required=1)  # two tuples
    make_user(database, "ann")
    headers = token_headers(client, "ann")
    key = _key()

    first = client.post("/api/v1/tasks/next", headers=headers).json()
    handles = [i["handle"] for i in first["items"]]
    done = client.post(f"/api/v1/tasks/{first['assignment_id']}/bws", headers=headers,
                       json={"best": handles[0], "worst": handles[1], "idempotency_key": key})
    assert done.status_code == 200

    second = client.post("/api/v1/tasks/next", headers=headers).json()
    assert task_of(database, second["assignment_id"]) != task_of(database, first["assignment_id"])
    handles = [i["handle"] for i in second["items"]]
    reused = client.post(f"/api/v1/tasks/{second['assignment_id']}/bws", headers=headers,
                         json={"best": handles[0], "worst": handles[1], "idempotency_key": key})
    assert reused.status_code == 409 and "another task" in reused.json()["detail"]
    with database.read() as db:  # nothing stored for the second task, and it is still this person's to do
        assert db.scalar(select(func.count()).select_from(BwsJudgement)) == 1
        assert db.get(Assignment, second["assignment_id"]).status == "active"
    fresh = client.post(f"/api/v1/tasks/{second['assignment_id']}/bws", headers=headers,
                        json={"best": handles[0], "worst": handles[1], "idempotency_key": _key()})
    assert fresh.status_code == 200 and fresh.json()["counted"]
