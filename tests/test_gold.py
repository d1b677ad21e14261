"""Gold and attention checks: gold tasks served at the configured rate, never twice to one person and
not capped by R; gold accuracy and flags; excluding an annotator from exports and training."""

import asyncio
import csv
import io
import json
import random
import re
import statistics
import uuid

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from app.models import Assignment, Task, User
from app.services import exports, gold, gold_serving
from app.services.tasks import RatingSubmission, WorkLimitReached, next_task, submit_rating
from tests.conftest import make_user, token_headers
from tests.factories import judge_directly, seed_bws_batch, seed_rating_batch, submit_bws_by_ids
from trainer.data import load_pairs


def _lease(database, user):
    return asyncio.run(next_task(database, user, lease_seconds=600))


def _set(database, **settings):
    gold.set_settings(database, gold.GoldSettings(**settings))


def _bws_tasks(database, batch_id):
    with database.read() as db:
        return db.scalars(select(Task).where(Task.batch_id == batch_id).order_by(Task.id)).all()


def _mark_bws(database, task, best_index=0, worst_index=3):
    items = [i.continuation_id for i in task.items]
    with database.write() as db:
        gold.mark(db, task.id, gold.GoldAnswer(best_id=items[best_index], worst_id=items[worst_index]))
    gold.forget_serving(database)
    return items[best_index], items[worst_index]


def _rate(database, user, leased, score):
    data = RatingSubmission(grammar=score, creativity=score, consistency=score, plot=score, idempotency_key=uuid.uuid4().hex)
    return asyncio.run(submit_rating(database, user, leased.assignment_id, data))


def _gold_task_ids(database):
    with database.read() as db:
        return {item.task_id for item in gold.list_items(db)}


def test_gold_is_served_at_the_rate_once_per_person(database, monkeypatch):
    batch_id = seed_bws_batch(database, prompts=10, per_prompt=8, required=1)
    tasks = _bws_tasks(database, batch_id)
    for task in tasks[::4]:
        _mark_bws(database, task)
    golds = _gold_task_ids(database)
    assert len(golds) == len(tasks) // 4 and len(tasks) >= 160
    _set(database, rate=0.2)
    monkeypatch.setattr(gold_serving, "draw", random.Random(12))
    user = make_user(database, "ann")
    leased_tasks = []
    while (leased := _lease(database, user)) is not None:
        leased_tasks.append(leased.task_id)
        submit_bws_by_ids(database, user, leased, leased.items[0].continuation_id, leased.items[-1].continuation_id)
    assert len(leased_tasks) == len(set(leased_tasks))  # never a task twice, gold or not
    normal = [t for t in leased_tasks if t not in golds]
    assert len(normal) == len(tasks) - len(golds)  # every normal task, R = 1 notwithstanding gold
    served_gold = len(leased_tasks) - len(normal)
    # 0.2 of the leases, within about three standard deviations of a binomial over ~150 draws
    assert 0.12 < served_gold / len(leased_tasks) < 0.28, (served_gold, len(leased_tasks))


def test_no_gold_at_rate_zero_and_gold_beyond_r(database):
    batch_id = seed_bws_batch(database, prompts=5, per_prompt=4, required=1)
    gold_task, *normal_tasks = _bws_tasks(database, batch_id)
    best, worst = _mark_bws(database, gold_task)
    _set(database, rate=0.0)
    ann = make_user(database, "ann")
    assert _lease(database, ann).task_id == normal_tasks[0].id
    _set(database, rate=1.0)
    # Every lease a gold draw: three people get the gold tuple, whose R is 1; nobody gets it twice.
    people = [make_user(database, f"p{i}") for i in range(3)]
    for person in people:
        leased = _lease(database, person)
        assert leased.task_id == gold_task.id
        submit_bws_by_ids(database, person, leased, best, worst)
        assert _lease(database, person).task_id in {t.id for t in normal_tasks}  # gold used up for them: normal work
    with database.read() as db:
        assert db.get(Task, gold_task.id).done_count == 1  # the rest stored as surplus
        assert db.scalar(select(Assignment.id).where(Assignment.task_id == gold_task.id, Assignment.user_id == ann.id)) is None


def test_unmarked_gold_goes_back_to_its_batch_order(database):
    batch_id = seed_bws_batch(database, prompts=1, per_prompt=4, required=2)
    [task] = _bws_tasks(database, batch_id)
    _mark_bws(database, task)
    _set(database, rate=0.0)
    ann = make_user(database, "ann")
    assert _lease(database, ann) is None  # the only tuple is gold, and the rate is 0
    with database.write() as db:
        gold.unmark(db, task.id)
    assert _lease(database, ann).task_id == task.id


def test_accuracy_flags_and_pick_accuracy(database):
    batch_id = seed_bws_batch(database, prompts=3, per_prompt=4, required=3)
    tasks = _bws_tasks(database, batch_id)
    answers = [_mark_bws(database, task) for task in tasks]
    rating_batch = seed_rating_batch(database, required=3)
    [rating_task, *_] = _bws_tasks(database, rating_batch)
    with database.write() as db:
        gold.mark(db, rating_task.id, gold.GoldAnswer(rating_ranges={"grammar": (1, 2), "plot": (1, 3)}))
    gold.forget_serving(database)
    _set(database, rate=1.0, accuracy_threshold=0.6, min_answers=4)
    good, careless, new = make_user(database, "good"), make_user(database, "careless"), make_user(database, "new")
    by_task = {task.id: answer for task, answer in zip(tasks, answers, strict=True)}

    def work(user, answer_for, score, limit=None):
        done = 0
        while (leased := _lease(database, user)) is not None and (limit is None or done < limit):
            if leased.kind == "bws":
                submit_bws_by_ids(database, user, leased, *answer_for(by_task[leased.task_id], leased))
            else:
                _rate(database, user, leased, score)
            done += 1

    work(good, lambda answer, _l: answer, score=2)  # all right
    # careless: best right, worst wrong on every tuple; rating out of range
    work(careless, lambda answer, leased: (answer[0], next(i.continuation_id for i in leased.items if i.continuation_id not in answer)), score=5)
    work(new, lambda answer, leased: (answer[1], answer[0]), score=5, limit=2)  # all wrong, but only 2 answers
    report = {a.username: a for a in gold.annotator_report(database).annotators}
    assert (report["good"].gold_answers, report["good"].gold_correct, report["good"].accuracy) == (4, 4, 1.0)
    assert report["good"].pick_accuracy == 1.0 and not report["good"].flagged
    assert (report["careless"].gold_answers, report["careless"].gold_correct) == (4, 0)
    assert report["careless"].picks_right == 3 and report["careless"].picks_known == 7  # 3 tuples x 2 picks + 1 rating
    assert report["careless"].flagged
    assert report["new"].gold_answers == 2 and report["new"].accuracy == 0.0 and not report["new"].flagged  # too few yet
    assert report["good"].median_bws_ms is None  # no durations sent by these submissions


def _export_annotators(database, name, fmt):
    data = b"".join(exports.stream_export(database, name, fmt))
    if fmt == "jsonl":
        rows = [json.loads(line) for line in data.decode().splitlines()]
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(data.decode())))
    else:
        table = pq.read_table(io.BytesIO(data))
        meta = json.loads(table.schema.metadata[b"storyloop"])
        assert meta["export"] == name
        rows = table.to_pylist()
    return {row["annotator"] for row in rows}, len(rows)


def _rating_by(database, username):
    user = make_user(database, username)
    while (leased := asyncio.run(next_task(database, user, lease_seconds=600, kinds=("rating",)))) is not None:
        _rate(database, user, leased, 3)


def test_exclusion_leaves_judgements_out_of_exports_and_training_reversibly(database):
    batch_id = seed_bws_batch(database, prompts=2, per_prompt=6, required=3)
    judge_directly(database, "alice", batch_id)
    judge_directly(database, "bob", batch_id)
    seed_rating_batch(database, required=3)
    _set(database, rate=0.0)
    _rating_by(database, "carol")
    _rating_by(database, "dave")
    all_pairs = load_pairs(database, held_out_fraction=0.0)
    admin = make_user(database, "admin", "admin")
    with database.read() as db:
        bob, dave = (db.scalar(select(User.id).where(User.username == name)) for name in ("bob", "dave"))
    with database.write() as db:
        gold.exclude(db, bob, admin, "gold accuracy 20 %")
        gold.exclude(db, dave, admin)
    for fmt in exports.FORMATS:
        for name in ("pairs", "judgements"):
            annotators, _ = _export_annotators(database, name, fmt)
            assert annotators == {"alice"}, (name, fmt)
        annotators, _ = _export_annotators(database, "ratings", fmt)
        assert annotators == {"carol"}, fmt
    meta = exports.export_metadata(database)
    assert [e["annotator"] for e in meta["excluded_annotators"]] == ["bob", "dave"]
    assert meta["excluded_annotators"][0]["note"] == "gold accuracy 20 %"
    assert load_pairs(database, held_out_fraction=0.0).judgements == all_pairs.judgements / 2
    scores = [json.loads(line) for line in b"".join(exports.stream_export(database, "scores", "jsonl")).decode().splitlines()]
    assert sum(row["best"] for row in scores) == all_pairs.judgements / 2  # only alice's judgements scored

    with database.write() as db:
        gold.include(db, bob)
        gold.include(db, dave)
    assert _export_annotators(database, "pairs", "jsonl")[0] == {"alice", "bob"}
    assert _export_annotators(database, "ratings", "csv")[0] == {"carol", "dave"}
    assert load_pairs(database, held_out_fraction=0.0).judgements == all_pairs.judgements
    assert exports.export_metadata(database)["excluded_annotators"] == []


def test_judgements_on_gold_tasks_stay_out_of_exports_and_training(database):
    batch_id = seed_bws_batch(database, prompts=2, per_prompt=4, required=3)
    judge_directly(database, "alice", batch_id)
    before = load_pairs(database, held_out_fraction=0.0).judgements
    gold_task = _bws_tasks(database, batch_id)[0]
    _mark_bws(database, gold_task)
    assert load_pairs(database, held_out_fraction=0.0).judgements == before - 1
    rows = [json.loads(line) for line in b"".join(exports.stream_export(database, "judgements", "jsonl")).decode().splitlines()]
    assert gold_task.id not in {row["tuple_id"] for row in rows} and len(rows) == before - 1
    assert exports.export_metadata(database)["gold_tasks_left_out"] == 1


def test_marking_refuses_answers_that_do_not_fit(database):
    batch_id = seed_bws_batch(database, prompts=2, per_prompt=4, required=3)
    task, other = _bws_tasks(database, batch_id)
    foreign = other.items[0].continuation_id
    cases = [
        (gold.GoldAnswer(), "best_id"),
        (gold.GoldAnswer(best_id=foreign), "best_id"),
        (gold.GoldAnswer(best_id=task.items[0].continuation_id, worst_id=task.items[0].continuation_id), "worst_id"),
        (gold.GoldAnswer(rating_ranges={"grammar": (1, 2)}), "rating_ranges"),
    ]
    for answer, field in cases:
        with database.write() as db, pytest.raises(gold.Invalid) as refused:
            gold.mark(db, task.id, answer)
        assert refused.value.details[0]["loc"] == ["body", field]
    rating_task = _bws_tasks(database, seed_rating_batch(database))[0]
    for ranges in ({"grammar": (3, 2)}, {"spelling": (1, 2)}, {}):
        with database.write() as db, pytest.raises(gold.Invalid):
            gold.mark(db, rating_task.id, gold.GoldAnswer(rating_ranges=ranges))
    assert _gold_task_ids(database) == set()


@pytest.mark.parametrize(("text", "expected"), [
    ("1-2", {d: (1, 2) for d in ("grammar", "creativity", "consistency", "plot")}),
    ("grammar=1-2; plot = 4-5", {"grammar": (1, 2), "plot": (4, 5)}),
])
def test_parse_rating_ranges(text, expected):
    assert gold.parse_rating_ranges(text) == expected


@pytest.mark.parametrize("text", ["", "2-1", "0-3", "spelling=1-2", "grammar=1", "1-6"])
def test_parse_rating_ranges_refuses(text):
    with pytest.raises(ValueError):
        gold.parse_rating_ranges(text)


# ---------------------------------------------------------------- API


def test_api_marks_gold_serves_it_blind_scores_and_excludes(client, database, admin_headers):
    batch_id = seed_bws_batch(database, prompts=2, per_prompt=4, required=1)
    gold_task, normal_task = _bws_tasks(database, batch_id)
    items = [i.continuation_id for i in gold_task.items]
    bad = client.put(f"/api/v1/admin/gold/items/{gold_task.id}", headers=admin_headers,
                     json={"best_id": items[0], "worst_id": normal_task.items[0].continuation_id})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["body", "worst_id"]
    assert client.put("/api/v1/admin/gold/items/999999", headers=admin_headers, json={"best_id": 1}).status_code == 404
    marked = client.put(f"/api/v1/admin/gold/items/{gold_task.id}", headers=admin_headers,
                        json={"best_id": items[0], "worst_id": items[3]})
    assert marked.status_code == 200 and marked.json()["best_id"] == items[0]
    assert [i["task_id"] for i in client.get("/api/v1/admin/gold/items", headers=admin_headers).json()] == [gold_task.id]
    assert client.put("/api/v1/admin/gold/settings", headers=admin_headers,
                      json={"rate": 1.5}).json()["errors"][0]["loc"] == ["body", "rate"]
    settings = {"rate": 1.0, "accuracy_threshold": 0.5, "min_answers": 1}
    assert client.put("/api/v1/admin/gold/settings", headers=admin_headers, json=settings).json() == settings
    assert client.get("/api/v1/admin/gold/settings", headers=admin_headers).json() == settings

    make_user(database, "ann")
    ann = token_headers(client, "ann")
    first = client.post("/api/v1/tasks/next", headers=ann).json()
    assert set(first) == {"assignment_id", "kind", "prompt", "items", "expires_at"}  # as any task: nothing says gold
    assert all(set(item) == {"handle", "text"} for item in first["items"])
    by_text = {i.continuation.text: i.continuation_id for i in gold_task.items}
    handles = {by_text[i["text"]]: i["handle"] for i in first["items"]}  # the gold tuple, answered the wrong way round
    answered = client.post(f"/api/v1/tasks/{first['assignment_id']}/bws?next=true", headers=ann,
                           json={"best": handles[items[3]], "worst": handles[items[0]], "idempotency_key": uuid.uuid4().hex,
                                 "duration_ms": 4000})
    assert answered.status_code == 200 and answered.json()["next_task"]["kind"] == "bws"  # then normal work

    report = client.get("/api/v1/admin/gold/annotators", headers=admin_headers).json()
    ann_row = next(a for a in report["annotators"] if a["username"] == "ann")
    assert ann_row["accuracy"] == 0.0 and ann_row["flagged"] and ann_row["median_bws_ms"] == 4000
    user_id = ann_row["user_id"]
    assert client.put(f"/api/v1/admin/users/{user_id}/exclusion", headers=admin_headers, json={"note": "gold 0 %"}).json() == \
        {"user_id": user_id, "excluded": True}
    download = client.get("/api/v1/admin/exports/judgements.jsonl", headers=admin_headers)
    assert json.loads(download.headers["x-storyloop-export-metadata"])["excluded_annotators"][0]["annotator"] == "ann"
    assert client.get("/api/v1/admin/exports/metadata", headers=admin_headers).json()["excluded_annotators"][0]["note"] == "gold 0 %"
    report = client.get("/api/v1/admin/gold/annotators", headers=admin_headers).json()
    assert next(a for a in report["annotators"] if a["username"] == "ann")["excluded"]
    assert client.delete(f"/api/v1/admin/users/{user_id}/exclusion", headers=admin_headers).json()["excluded"] is False
    assert client.get("/api/v1/admin/exports/metadata", headers=admin_headers).json()["excluded_annotators"] == []
    assert client.put("/api/v1/admin/users/999999/exclusion", headers=admin_headers, json={}).status_code == 404
    assert client.delete(f"/api/v1/admin/gold/items/{gold_task.id}", headers=admin_headers).status_code == 204
    assert client.delete(f"/api/v1/admin/gold/items/{gold_task.id}", headers=admin_headers).status_code == 404
    assert client.get("/api/v1/admin/gold/items", headers=ann).status_code == 403


# ---------------------------------------------------------------- import


GOLD_IMPORT = "\n".join(json.dumps(record) for record in [
    {"prompt_id": "g", "prompt": "The fox.", "continuation": "A fine ending.", "source": "s", "gold_tuple": "t1", "gold": "best"},
    {"prompt_id": "g", "prompt": "The fox.", "continuation": "An ending.", "source": "s", "gold_tuple": "t1"},
    {"prompt_id": "g", "prompt": "The fox.", "continuation": "Another ending.", "source": "s", "gold_tuple": "t1"},
    {"prompt_id": "g", "prompt": "The fox.", "continuation": "fox fox fox fox", "source": "s", "gold_tuple": "t1", "gold": "worst"},
    {"prompt_id": "g", "prompt": "The fox.", "continuation": "asdf qwer", "source": "s", "gold_rating": "grammar=1-2; plot=1-2"},
]).encode()


def test_import_makes_gold_tuples_and_rating_items(database):
    from app.services import imports

    summary = imports.import_file(database, GOLD_IMPORT, "gold.jsonl")
    assert summary.gold_items_created == 2 and summary.continuations_created == 5
    with database.read() as db:
        items = {item.kind: item for item in gold.list_items(db)}
    texts = dict(items["bws"].items)
    assert (texts[items["bws"].best_id], texts[items["bws"].worst_id]) == ("A fine ending.", "fox fox fox fox")
    assert items["rating"].rating_ranges == {"grammar": (1, 2), "plot": (1, 2)}


@pytest.mark.parametrize(("record", "field"), [
    ({"gold": "best"}, "gold"),  # without a gold_tuple
    ({"gold_tuple": "t", "gold": "middle"}, "gold"),
    ({"gold_rating": "6-7"}, "gold_rating"),
    ({"gold_tuple": "t"}, "gold_tuple"),  # one continuation is no tuple (and no known pick)
])
def test_import_refuses_bad_gold_fields_naming_them(database, record, field):
    from app.services import imports

    data = json.dumps({"prompt": "P", "continuation": "C", "source": "s", **record}).encode()
    with pytest.raises(gold.Invalid) as refused:
        imports.import_file(database, data, "bad.jsonl")
    assert field in {error["field"] for error in refused.value.details}
    with database.read() as db:
        assert gold.list_items(db) == []


def test_crowd_participants_get_gold_checks_within_their_quota(database):
    """Crowd participants (a quota on their account) are who gold checks are for: they get gold at the
    rate, and a gold task counts towards the quota like any other."""
    batch_id = seed_bws_batch(database, prompts=4, per_prompt=4, required=1)
    gold_task, *normal_tasks = _bws_tasks(database, batch_id)
    best, worst = _mark_bws(database, gold_task)
    _set(database, rate=1.0)
    participant = make_user(database, "crowd-p1")
    with database.write() as db:
        db.get(User, participant.id).task_quota = 2
    with database.read() as db:
        participant = db.get(User, participant.id)
    first = _lease(database, participant)
    assert first.task_id == gold_task.id
    submit_bws_by_ids(database, participant, first, best, worst)
    second = _lease(database, participant)
    assert second.task_id in {t.id for t in normal_tasks}
    submit_bws_by_ids(database, participant, second, second.items[0].continuation_id, second.items[-1].continuation_id)
    with pytest.raises(WorkLimitReached):
        _lease(database, participant)


def test_an_annotator_sees_nothing_that_tells_gold_apart(client, database):
    """Everything an annotator sees of a gold check, before and after answering, is what a normal task
    shows: the same fields, the count of tasks left (API and the task page's "more waiting") taking one
    off for the lease, and the answer "counted" (first and replayed), though the gold tuple already has
    its R answers from someone else and this one is stored as surplus."""
    from tests.test_pages_annotate import HTML, login

    batch_id = seed_bws_batch(database, prompts=4, per_prompt=4, required=1)
    gold_task, *_ = _bws_tasks(database, batch_id)
    best, worst = _mark_bws(database, gold_task)
    _set(database, rate=1.0)  # every lease a gold draw, while gold is left for the person
    other = make_user(database, "other")
    submit_bws_by_ids(database, other, _lease(database, other), best, worst)  # the gold tuple's R is reached
    make_user(database, "ann")
    headers = token_headers(client, "ann")
    login(client, "ann")

    def tasks_left() -> int:
        return client.get("/api/v1/me/progress", headers=headers).json()["tasks_left"]

    def seen_of_one_task() -> tuple[int, dict]:
        before = tasks_left()
        task = client.post("/api/v1/tasks/next", headers=headers).json()
        leased = tasks_left()
        page = client.get(f"/task/{task['assignment_id']}", headers=HTML).text
        waiting = int(re.search(r"<strong>(\d+)</strong> more waiting", page).group(1))
        answer = {"best": task["items"][0]["handle"], "worst": task["items"][1]["handle"], "idempotency_key": uuid.uuid4().hex}
        url = f"/api/v1/tasks/{task['assignment_id']}/bws"
        first, replayed = (client.post(url, headers=headers, json=answer).json() for _ in range(2))
        with database.read() as db:
            task_id = db.get(Assignment, task["assignment_id"]).task_id
        return task_id, {"fields": sorted(task), "item_fields": sorted(task["items"][0]), "items": len(task["items"]),
                         "lease_takes": before - leased, "page_shows": waiting - leased,
                         "submit_takes": leased - tasks_left(), "counted": (first["counted"], replayed["counted"]),
                         "replayed": (first["replayed"], replayed["replayed"])}

    gold_id, seen_gold = seen_of_one_task()
    normal_id, seen_normal = seen_of_one_task()
    assert (gold_id, normal_id != gold_id) == (gold_task.id, True)
    assert seen_gold == seen_normal
    assert seen_gold["lease_takes"] == 1 and seen_gold["counted"] == (True, True)
    with database.read() as db:  # stored as surplus all the same: gold beyond R does not count towards R
        assert db.get(Task, gold_task.id).done_count == 1
        assert db.scalar(select(Assignment.status).where(Assignment.task_id == gold_task.id,
                                                         Assignment.user_id != other.id)) == "surplus"


class _FixedDraw:
    """gold_serving.draw for a test: every lease draws `value` (below the rate: a gold check)."""

    value = 0.0

    def random(self) -> float:
        return self.value


TIMED_PER_KIND = 30
SAME_TIME_FACTOR = 2.0  # medians of gold and normal within this factor, either way


def test_gold_tasks_take_as_long_as_normal_ones(client, database, monkeypatch):
    """No timing side channel: leasing and answering a gold check through the API takes as long as a
    normal task, within noise. 30 of each, interleaved in random order (so that a busy machine slows
    both alike), gold tasks already full (their answers stored as surplus, the costliest gold case);
    the medians of gold and normal must lie within a factor 2 of each other, lease and submission
    each. Extra synchronous work on gold (more queries, a slower statement) would show."""
    from time import perf_counter

    batch_id = seed_bws_batch(database, prompts=20, per_prompt=8, required=1)
    tasks = _bws_tasks(database, batch_id)
    warm_up = 3
    golds = tasks[:TIMED_PER_KIND + warm_up]
    for task in golds:
        _mark_bws(database, task)
    gold_ids = {task.id for task in golds}
    with database.write() as db:  # everyone has answered them already: a new answer is surplus
        for task in golds:
            db.get(Task, task.id).done_count = task.required
    _set(database, rate=0.5)
    draw = _FixedDraw()
    monkeypatch.setattr(gold_serving, "draw", draw)
    make_user(database, "ann")
    headers = token_headers(client, "ann")

    def one(kind: str) -> tuple[float, float]:
        draw.value = 0.0 if kind == "gold" else 0.99
        start = perf_counter()
        task = client.post("/api/v1/tasks/next", headers=headers).json()
        leased = perf_counter()
        answer = {"best": task["items"][0]["handle"], "worst": task["items"][1]["handle"], "idempotency_key": uuid.uuid4().hex}
        response = client.post(f"/api/v1/tasks/{task['assignment_id']}/bws", headers=headers, json=answer)
        submitted = perf_counter()
        assert response.status_code == 200 and response.json()["counted"], response.text
        with database.read() as db:
            assert (db.get(Assignment, task["assignment_id"]).task_id in gold_ids) == (kind == "gold")
        return leased - start, submitted - leased

    for kind in ["gold", "normal"] * warm_up:  # first uses compile statements and fill caches
        one(kind)
    order = ["gold", "normal"] * TIMED_PER_KIND
    random.Random(0).shuffle(order)
    seconds = {"gold": [], "normal": []}
    for kind in order:
        seconds[kind].append(one(kind))
    for step, name in enumerate(("lease", "submission")):
        gold_median, normal_median = (statistics.median(s[step] for s in seconds[kind]) for kind in ("gold", "normal"))
        assert 1 / SAME_TIME_FACTOR <= gold_median / normal_median <= SAME_TIME_FACTOR, (name, gold_median, normal_median)
