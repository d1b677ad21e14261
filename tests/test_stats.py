"""The admin overview against a small hand-computed dataset (SQLite and PostgreSQL)."""

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

import pytest
from sqlalchemy import select, update

from app.db import Database
from app.models import Assignment, Task, TaskItem, User, utcnow
from app.security import hash_password
from app.services import gold, stats, tasks
from app.services.tasks import RatingSubmission
from tests.conftest import PASSWORD
from tests.factories import seed_rating_batch, seed_stories, submit_bws_by_ids

LEASE = 600


@cache
def _password_hash() -> str:
    return hash_password(PASSWORD)  # argon2 takes most of a second: hash once, share it


def make_user(database: Database, username: str, role: str = "annotator") -> User:
    """Like conftest.make_user (same password), without hashing the password again."""
    with database.write() as db:
        user = User(username=username, password_hash=_password_hash(), role=role)
        db.add(user)
        db.flush()
        return user


@dataclass
class Known:
    p1: int  # prompt of batch 1 (R = 4, one tuple judged by a, b, c, d)
    p2: int  # prompt of batch 2 (R = 1, one tuple judged by a only)
    c: list[int]  # continuations of p1
    x: list[int]  # continuations of p2
    bws1: int
    bws2: int
    rating_batch: int
    rated: list[int]  # continuations of the rating batch, in task order


def _bws(database: Database, user, best: int, worst: int, duration_ms: int | None):
    view = asyncio.run(tasks.next_task(database, user, LEASE, ["bws"]))
    assert view is not None and {best, worst} <= {i.continuation_id for i in view.items}
    result = submit_bws_by_ids(database, user, view, best, worst, duration_ms=duration_ms)
    return view, result


def _rate(database: Database, user, values_of: dict[int, tuple[int, int, int, int]], duration_ms: int, expire=False):
    view = asyncio.run(tasks.next_task(database, user, LEASE, ["rating"]))
    assert view is not None
    continuation = view.items[0].continuation_id
    if expire:  # the lease runs out before the rating arrives: stored as surplus
        with database.write() as db:
            db.execute(update(Assignment).where(Assignment.id == view.assignment_id)
                       .values(expires_at=utcnow() - timedelta(seconds=1)))
    g, c, s, p = values_of[continuation]
    return asyncio.run(tasks.submit_rating(database, user, view.assignment_id, RatingSubmission(
        grammar=g, creativity=c, consistency=s, plot=p, idempotency_key=uuid.uuid4().hex, duration_ms=duration_ms)))


def seed_known_dataset(database: Database) -> Known:
    """8 users, 3 prompts, 11 continuations, 3 batches, 5 BWS judgements, 6 ratings (1 surplus), 1 skip.

    Batch 1 (prompt 1, items c0..c3, R = 4):   a: best c0 worst c3 (1000 ms)   b: best c0 worst c3 (2000 ms)
                                               c: best c0 worst c2 (no time)   d: best c1 worst c0 (5000 ms)
    Batch 2 (prompt 2, items x0..x3, R = 1):   a: best x0 worst x1 (3000 ms)
    Rating batch (3 continuations, R = 2): e1 and e2 give identical ratings; e2's third arrives after
    its lease ran out (surplus); e3 then leases that task and skips it.
    """
    by_prompt = seed_stories(database, prompts=2, per_prompt=4)
    p1, p2 = sorted(by_prompt)
    with database.write() as db:
        bws1 = tasks.build_bws_batch(db, "first", {p1: by_prompt[p1]}, seed=1, required=4).id
        bws2 = tasks.build_bws_batch(db, "second", {p2: by_prompt[p2]}, seed=1, required=1).id
    # (factories.seed_rating_batch would rate every continuation in the database, so build it here.)
    everything = seed_stories(database, prompts=1, per_prompt=3, source="rating-source")
    rated = sorted(everything[max(everything)])
    with database.write() as db:
        rating_batch = tasks.build_rating_batch(db, "ratings", rated, required=2).id

    people = {name: make_user(database, name) for name in ("a", "b", "c", "d")}
    people |= {name: make_user(database, name, "evaluator") for name in ("e1", "e2", "e3")}
    make_user(database, "boss", "admin")

    c, x = by_prompt[p1], by_prompt[p2]
    _bws(database, people["a"], c[0], c[3], 1000)  # a gets the oldest open task: batch 1
    _bws(database, people["a"], x[0], x[1], 3000)  # then batch 2
    _bws(database, people["b"], c[0], c[3], 2000)
    _bws(database, people["c"], c[0], c[2], None)
    _bws(database, people["d"], c[1], c[0], 5000)

    values = {rated[0]: (5, 4, 3, 2), rated[1]: (3, 3, 3, 3), rated[2]: (1, 2, 4, 5)}
    for ms in (100, 200, 600):
        assert _rate(database, people["e1"], values, ms).counted
    assert _rate(database, people["e2"], values, 100).counted
    assert _rate(database, people["e2"], values, 300).counted
    assert not _rate(database, people["e2"], values, 1000, expire=True).counted
    view = asyncio.run(tasks.next_task(database, people["e3"], LEASE, ["rating"]))
    asyncio.run(tasks.skip_task(database, people["e3"], view.assignment_id, "unclear"))
    return Known(p1=p1, p2=p2, c=c, x=x, bws1=bws1, bws2=bws2, rating_batch=rating_batch, rated=rated)


def test_counts_and_batch_progress(database):
    known = seed_known_dataset(database)
    o = stats.overview(database)
    assert o.counts.model_dump() == {
        "users_total": 8, "users_active": 8, "users_by_role": {"annotator": 4, "evaluator": 3, "admin": 1},
        "prompts": 3, "continuations": 11, "model_versions": 2, "batches": 3,
        "tasks": 5, "tasks_bws": 2, "tasks_rating": 3,
        "bws_judgements": 5, "bws_surplus": 0, "bws_usable": 5, "ratings": 6, "ratings_surplus": 1, "ratings_usable": 6,
        "skips": 1,
    }
    progress = {b.batch_id: b for b in o.batches}
    assert [b.batch_id for b in o.batches] == [known.rating_batch, known.bws2, known.bws1]  # newest first
    b1, b2, r = progress[known.bws1], progress[known.bws2], progress[known.rating_batch]
    assert (b1.tasks, b1.annotations_per_task, b1.wanted, b1.done, b1.percent, b1.surplus, b1.tasks_complete) == (1, 4, 4, 4, 100.0, 0, 1)
    assert (b2.tasks, b2.wanted, b2.done, b2.percent, b2.surplus) == (1, 1, 1, 100.0, 0)
    # 3 tasks x R=2 = 6 wanted; e1 3 + e2 2 counted; e2's late one is surplus; e3 skipped.
    assert (r.kind, r.tasks, r.wanted, r.done, r.percent, r.surplus, r.tasks_complete) == ("rating", 3, 6, 5, 83.3, 1, 2)


def test_judgements_per_hour(database):
    seed_known_dataset(database)
    per_hour = stats.overview(database).per_hour
    assert len(per_hour) == 24
    assert per_hour[-1].hour == utcnow().replace(minute=0, second=0, microsecond=0) or per_hour[-1].total == 0
    assert all(b.hour - a.hour == timedelta(hours=1) for a, b in zip(per_hour, per_hour[1:]))
    assert sum(h.bws for h in per_hour) == 5 and sum(h.ratings for h in per_hour) == 6
    assert sum(h.total for h in per_hour) == 11
    # A judgement from two days ago is outside the window.
    with database.read() as db:
        later = stats.judgements_per_hour(db, now=utcnow() + timedelta(hours=48))
    assert sum(h.total for h in later) == 0 and len(later) == 24


def test_annotators_counts_medians_and_consensus(database):
    seed_known_dataset(database)
    by_name = {a.username: a for a in stats.annotator_stats(database)}
    assert "boss" not in by_name  # admins without judgements are left out
    a, b, c, d = (by_name[n] for n in "abcd")
    assert (a.bws, a.ratings, a.skips, a.surplus) == (2, 0, 0, 0)
    assert a.median_bws_ms == 2000.0 and b.median_bws_ms == 2000.0
    assert c.median_bws_ms is None and d.median_bws_ms == 5000.0
    e1, e2, e3 = by_name["e1"], by_name["e2"], by_name["e3"]
    assert (e1.ratings, e1.median_rating_ms, e1.median_bws_ms) == (3, 200.0, None)
    assert (e2.ratings, e2.surplus, e2.median_rating_ms) == (3, 1, 300.0)  # median of 100, 300, 1000
    assert (e3.ratings, e3.skips) == (0, 1)

    # Leave-one-out counting scores, by hand (tuple c0..c3; the others' judgements only):
    #   a: b, c, d -> c0 = (2-1)/3, c1 = 1/3, c2 = -1/3, c3 = -1/3: top {c0, c1} best c0 -> 1/2;
    #      bottom {c2, c3}, worst c3 -> 1/2.  a's batch-2 judgement: x0..x3 shown nowhere else -> undefined.
    #   b: the same as a -> 1/2, 1/2.
    #   c: a, b, d -> c0 = 1/3, c1 = 1/3, c2 = 0, c3 = -2/3: best c0 in the tie -> 1/2; worst c2 != c3 -> 0.
    #   d: a, b, c -> c0 = 1, c1 = 0, c2 = -1/3, c3 = -2/3: best c1 -> 0; worst c0 -> 0.
    assert (a.best_agreement, a.worst_agreement, a.agreement_n) == (0.5, 0.5, 1)
    assert (b.best_agreement, b.worst_agreement, b.agreement_n) == (0.5, 0.5, 1)
    assert (c.best_agreement, c.worst_agreement, c.agreement_n) == (0.5, 0.0, 1)
    assert (d.best_agreement, d.worst_agreement, d.agreement_n) == (0.0, 0.0, 1)
    assert (e1.best_agreement, e1.agreement_n) == (None, 0)

    rel = stats.reliability(database)
    assert rel.agreement_n == 4
    assert rel.best_agreement == pytest.approx(1.5 / 4) and rel.worst_agreement == pytest.approx(1.0 / 4)


def test_consensus_prefers_the_clear_winner(database):
    """Three annotators agree on best and worst; a fourth contradicts them: full credit vs none."""
    by_prompt = seed_stories(database, prompts=1, per_prompt=4)
    (p, c), = by_prompt.items()
    with database.write() as db:
        tasks.build_bws_batch(db, "b", by_prompt, seed=0, required=4)
    users = [make_user(database, f"u{i}") for i in range(4)]
    for u in users[:3]:
        _bws(database, u, c[2], c[1], 1000)
    _bws(database, users[3], c[1], c[2], 1000)
    by_name = {a.username: a for a in stats.annotator_stats(database)}
    assert [(by_name[f"u{i}"].best_agreement, by_name[f"u{i}"].worst_agreement) for i in range(4)] == [
        (1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (0.0, 0.0)]


def test_bws_scores(database):
    known = seed_known_dataset(database)
    scores = stats.bws_scores(database, limit=None, prompt_id=known.p1)
    c = known.c
    # best c0: 3, c1: 1; worst c3: 2, c2: 1, c0: 1; each shown 4 times.
    assert [s.continuation_id for s in scores] == [c[0], c[1], c[2], c[3]]
    assert [s.counting for s in scores] == [0.5, 0.25, -0.25, -0.5]
    assert [(s.appearances, s.best, s.worst) for s in scores] == [(4, 3, 1), (4, 1, 0), (4, 0, 1), (4, 0, 2)]
    assert all(s.prompt_id == known.p1 and s.model_version == "test-source" for s in scores)
    bt = [s.bradley_terry for s in scores]
    assert bt == sorted(bt, reverse=True) and bt[0] > 0 > bt[-1]

    everything = stats.bws_scores(database, limit=None)
    assert len(everything) == 8 and everything[0].continuation_id == known.x[0] and everything[0].counting == 1.0
    assert everything[-1].continuation_id == known.x[1] and everything[-1].counting == -1.0
    assert [s.continuation_id for s in stats.bws_scores(database, limit=2)] == [known.x[0], c[0]]


def test_rating_means_and_alpha_when_raters_agree(database):
    seed_known_dataset(database)
    rel = stats.reliability(database)
    dims = {d.dimension: d for d in rel.dimensions}
    assert rel.ratings == 6
    # Ratings (e1 x3, e2 x3 with the same values): grammar 5,3,1 twice -> mean 3; consistency 3,3,4 -> 10/3.
    assert dims["grammar"].mean == pytest.approx(3.0) and dims["creativity"].mean == pytest.approx(3.0)
    assert dims["consistency"].mean == pytest.approx(10 / 3) and dims["plot"].mean == pytest.approx(10 / 3)
    assert all(d.n == 6 for d in dims.values())
    assert all(d.alpha == pytest.approx(1.0) for d in dims.values())
    assert rel.bws_judgements == 5
    # Only tuple 1 has >= 2 judgements; its halves share all 4 items.
    assert rel.split_half_trials_run == 100 and rel.split_half_trials <= 100
    assert rel.split_half_spearman is None or -1.0 <= rel.split_half_spearman <= 1.0


def test_alpha_below_one_when_raters_disagree(database):
    seed_rating_batch(database, required=2)
    e1, e2 = make_user(database, "e1", "evaluator"), make_user(database, "e2", "evaluator")
    with database.read() as db:
        rated = sorted(cid for cids in tasks.continuations_by_prompt(db).values() for cid in cids)
    for user, values in ((e1, [(5,) * 4, (3,) * 4, (1,) * 4]), (e2, [(1,) * 4, (3,) * 4, (5,) * 4])):
        for ms in (100, 200, 300):
            _rate(database, user, dict(zip(rated, values)), ms)
    dims = stats.reliability(database).dimensions
    assert all(d.alpha is not None and d.alpha < 0 for d in dims)


def test_empty_database(database):
    o = stats.overview(database)
    assert o.counts.tasks == 0 and o.batches == [] and o.annotators == []
    assert len(o.per_hour) == 24 and sum(h.total for h in o.per_hour) == 0
    assert o.reliability.split_half_spearman is None and o.reliability.agreement_n == 0
    assert all(d.mean is None and d.alpha is None for d in o.reliability.dimensions)
    assert stats.bws_scores(database, limit=10) == []


def test_split_half_trials_are_bounded():
    assert stats.split_half_trials(0) == 100 and stats.split_half_trials(1500) == 100
    assert stats.split_half_trials(15_000) == 10 and stats.split_half_trials(10_000_000) == 5


def _exclude_and_mark_gold(database: Database, known: Known) -> None:
    """Excludes d (BWS) and e2 (ratings); makes batch 2's tuple and the first rating item gold checks."""
    with database.write() as db:
        admin = db.scalar(select(User).where(User.username == "boss"))
        for name in ("d", "e2"):
            gold.exclude(db, db.scalar(select(User.id).where(User.username == name)), admin, "test")
        bws2_task = db.scalar(select(Task.id).where(Task.batch_id == known.bws2))
        gold.mark(db, bws2_task, gold.GoldAnswer(best_id=known.x[0]))
        rated0_task = db.scalar(select(Task.id).join(TaskItem, TaskItem.task_id == Task.id)
                                .where(Task.batch_id == known.rating_batch, TaskItem.continuation_id == known.rated[0]))
        gold.mark(db, rated0_task, gold.GoldAnswer(rating_ranges={"grammar": (4, 5)}))


def test_scores_reliability_and_agreement_count_only_usable_judgements(database):
    """As exports and training do (gold.usable): an excluded annotator's judgements and answers to gold
    tasks leave the BWS scores, the reliability figures and the consensus. The annotators table still
    counts everything each person did, and shows an excluded annotator's agreement with the others."""
    known = seed_known_dataset(database)
    _exclude_and_mark_gold(database, known)
    c = known.c

    # a, b, c only: best c0 x3; worst c3 x2, c2 x1; each shown 3 times. Batch 2's tuple is gold: no scores.
    scores = stats.bws_scores(database, limit=None)
    assert [(s.continuation_id, s.appearances, s.best, s.worst) for s in scores] == [
        (c[0], 3, 3, 0), (c[1], 3, 0, 0), (c[2], 3, 0, 1), (c[3], 3, 0, 2)]
    assert [s.counting for s in scores] == pytest.approx([1.0, 0.0, -1 / 3, -2 / 3])
    assert stats.bws_scores(database, limit=None, prompt_id=known.p2) == []

    o = stats.overview(database)
    counts = o.counts
    assert (counts.bws_judgements, counts.bws_usable, counts.ratings, counts.ratings_usable) == (5, 3, 6, 2)
    rel = o.reliability
    assert (rel.bws_judgements, rel.ratings) == (3, 2)
    # Leave-one-out among a, b, c; d's judgement is held against all three (it is no part of the consensus):
    #   a: b, c -> c0 = 1, c1 = 0, c2 = c3 = -1/2: best c0 -> 1; worst c3 in {c2, c3} -> 1/2.  b: the same.
    #   c: a, b -> c0 = 1, c1 = c2 = 0, c3 = -1: best c0 -> 1; worst c2 -> 0.
    #   d: a, b, c -> c0 = 1, c1 = 0, c2 = -1/3, c3 = -2/3: best c1 -> 0; worst c0 -> 0.
    assert (rel.agreement_n, rel.best_agreement, rel.worst_agreement) == (3, 1.0, pytest.approx(1 / 3))
    by_name = {a.username: a for a in o.annotators}
    agreement = {n: (by_name[n].best_agreement, by_name[n].worst_agreement, by_name[n].agreement_n) for n in "abcd"}
    assert agreement == {"a": (1.0, 0.5, 1), "b": (1.0, 0.5, 1), "c": (1.0, 0.0, 1), "d": (0.0, 0.0, 1)}
    # The table still counts what everyone did, gold answers and excluded annotators' included.
    assert [(by_name[n].bws, by_name[n].ratings) for n in ("a", "d", "e1", "e2")] == [(2, 0), (1, 0), (0, 3), (0, 3)]
    # Ratings: e1's of rated[1] (3, 3, 3, 3) and rated[2] (1, 2, 4, 5) only; one rater: alpha undefined.
    dims = {d.dimension: d for d in rel.dimensions}
    assert {d: (dims[d].n, dims[d].mean) for d in dims} == {
        "grammar": (2, 2.0), "creativity": (2, 2.5), "consistency": (2, 3.5), "plot": (2, 4.0)}
    assert all(d.alpha is None for d in dims.values())
