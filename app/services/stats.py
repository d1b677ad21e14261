"""The admin overview: counts, batch progress, throughput, annotators, scores and reliability.

Everything that SQL can count is counted in SQL (a handful of GROUP BY queries). Only what needs
every judgement by construction -- consensus agreement, Bradley-Terry, split-half reliability and
Krippendorff's alpha -- loads the judgement rows, as compact tuples, and works on them with numpy
and app.services.scoring.

Which judgements count here. Scores, reliability (split-half, rating means and alpha) and the
consensus that agreement is measured against read only the judgements exports and training read
(gold.usable: not by an excluded annotator, not on a gold task), surplus included: a surplus
judgement (late, or beyond R) is a real human judgement that merely did not count towards a task's
quota. What people did -- counts, batch progress, judgements per hour, the annotators table's counts
and medians -- counts every stored judgement; the counts say how many of them are usable. An
excluded annotator's agreement is still shown: their non-gold judgements held against the others'
consensus. Answers to gold tasks are measured on the Gold page, not here.

Consensus agreement of an annotator (BWS), exactly:
  For each BWS judgement j (items I_j, best b_j, worst w_j) we compute every item's counting score
  from all stored BWS judgements EXCEPT j:
      score_-j(i) = (best_-j(i) - worst_-j(i)) / appearances_-j(i)
  where best_-j(i) is how often i was chosen best, worst_-j(i) how often worst, and
  appearances_-j(i) how often i was shown, all over judgements other than j (across every tuple of
  the prompt that contains i, not only j's tuple). If some item of I_j has appearances_-j(i) = 0,
  the consensus for j is undefined and j is left out (it counts in neither numerator nor
  denominator). Only usable judgements make the consensus, so "except j" matters only for a usable
  j; a judgement by an excluded annotator is held against all the usable ones. Otherwise let TOP be the items of I_j with the highest score_-j and BOTTOM those
  with the lowest. j earns best-credit 1/|TOP| if b_j is in TOP, else 0 (a tie among m items gives
  1/m, the chance of picking the consensus item among them), and worst-credit 1/|BOTTOM| if w_j is
  in BOTTOM, else 0. An annotator's best_agreement is the mean best-credit over their judgements
  with a defined consensus; worst_agreement likewise; agreement_n is how many judgements that was.
  Only the one judgement j is left out; the annotator's other judgements stay in.
"""

from __future__ import annotations

import copy
import statistics
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import numpy as np
from pydantic import BaseModel
from sqlalchemy import Integer, case, exists, func, literal, select, union_all
from sqlalchemy.orm import Session

from app.db import Database
from app.models import (
    RATING_DIMENSIONS,
    Assignment,
    Batch,
    BwsJudgement,
    Continuation,
    GoldItem,
    Invite,
    ModelVersion,
    Prompt,
    Rating,
    Task,
    TaskItem,
    User,
    utcnow,
)
from app.services import gold, scoring

SPLIT_HALF_SEED = 0
SPLIT_HALF_TRIALS = 100  # at most; fewer for big data, see split_half_trials()
# scoring.split_half_reliability re-scores every judgement per trial in Python (~13 us each); this
# bounds trials x judgements so the dashboard answers in about two seconds at any size.
SPLIT_HALF_BUDGET = 150_000
SPLIT_HALF_MIN_TRIALS = 5


def split_half_trials(judgements: int) -> int:
    """100 trials up to 1,500 judgements, then fewer (150,000 / n), but never under 5."""
    return max(SPLIT_HALF_MIN_TRIALS, min(SPLIT_HALF_TRIALS, SPLIT_HALF_BUDGET // max(judgements, 1)))

# ---------------------------------------------------------------- result models


class Counts(BaseModel):
    users_total: int
    users_active: int
    users_by_role: dict[str, int]  # active and inactive alike
    prompts: int
    continuations: int
    model_versions: int
    batches: int
    tasks: int
    tasks_bws: int
    tasks_rating: int
    bws_judgements: int  # all stored, surplus included
    bws_surplus: int
    bws_usable: int  # of those, what exports and training read (gold.usable)
    ratings: int  # all stored, surplus included
    ratings_surplus: int
    ratings_usable: int
    skips: int


class BatchProgress(BaseModel):
    batch_id: int
    name: str
    kind: str
    created_at: datetime
    annotations_per_task: int  # R
    tasks: int
    tasks_complete: int  # tasks with done_count >= required
    wanted: int  # sum of required over the batch's tasks = tasks x R
    done: int  # counted judgements (sum of done_count)
    percent: float  # 100 * done / wanted (0 for an empty batch)
    surplus: int  # judgements stored beyond R or after their lease ran out


class HourCount(BaseModel):
    hour: datetime  # start of the hour, UTC
    bws: int
    ratings: int
    total: int


class AnnotatorStats(BaseModel):
    user_id: int
    username: str
    role: str
    is_active: bool
    bws: int
    ratings: int
    skips: int
    surplus: int
    median_bws_ms: float | None  # median duration_ms of their BWS judgements
    median_rating_ms: float | None  # median duration_ms of their ratings
    best_agreement: float | None  # see the module docstring
    worst_agreement: float | None
    agreement_n: int


class DimensionStats(BaseModel):
    dimension: str
    n: int  # ratings
    mean: float | None
    alpha: float | None  # Krippendorff's alpha, ordinal; None when undefined (too few pairable values)


class Reliability(BaseModel):
    """Over usable judgements only (gold.usable), as exports and training."""

    bws_judgements: int
    # Split-half reliability of counting scores (scoring.split_half_reliability: random halves of
    # every tuple's judgements, correlation of the two halves' scores, no Spearman-Brown correction).
    split_half_spearman: float | None
    split_half_spearman_std: float | None
    split_half_pearson: float | None
    split_half_trials_run: int  # trials run: split_half_trials(bws_judgements)
    split_half_trials: int  # of those, trials that gave a defined correlation
    best_agreement: float | None  # over all judgements with a defined consensus
    worst_agreement: float | None
    agreement_n: int
    ratings: int
    dimensions: list[DimensionStats]


class ContinuationScore(BaseModel):
    continuation_id: int
    prompt_id: int
    model_version: str
    text: str
    appearances: int
    best: int
    worst: int
    counting: float  # (best - worst) / appearances, in [-1, 1]
    bradley_terry: float | None  # log-strength fitted per prompt (mean 0 within it); compare within a prompt


class Overview(BaseModel):
    generated_at: datetime
    counts: Counts
    batches: list[BatchProgress]
    per_hour: list[HourCount]  # the last 24 hours, oldest first, the current hour last
    annotators: list[AnnotatorStats]
    reliability: Reliability


# ---------------------------------------------------------------- loading judgements


class _BwsData:
    """BWS judgements as arrays: tuples[j] is the tuple shown; usable[j] whether exports and training
    read it (gold.usable), on_gold[j] whether it answers a gold task. `only_usable` loads just those."""

    def __init__(self, db: Session, only_usable: bool = False):
        query = (
            select(BwsJudgement.id, BwsJudgement.user_id, BwsJudgement.task_id, BwsJudgement.best_id, BwsJudgement.worst_id,
                   Task.prompt_id, gold.usable(BwsJudgement).label("usable"),
                   exists().where(GoldItem.task_id == BwsJudgement.task_id).label("on_gold"))
            .join(Task, Task.id == BwsJudgement.task_id)
            .order_by(BwsJudgement.id)
        )
        rows = db.execute(query.where(gold.usable(BwsJudgement)) if only_usable else query).all()
        judged_tasks = select(BwsJudgement.task_id).distinct().scalar_subquery()
        items_of: dict[int, list[int]] = defaultdict(list)
        for task_id, continuation_id in db.execute(
            select(TaskItem.task_id, TaskItem.continuation_id)
            .where(TaskItem.task_id.in_(judged_tasks))
            .order_by(TaskItem.task_id, TaskItem.position)
        ):
            items_of[task_id].append(continuation_id)
        self.user_ids = np.array([r[1] for r in rows], dtype=np.int64)
        self.task_ids = [r[2] for r in rows]
        self.prompt_ids = [r[5] for r in rows]
        self.best = np.array([r[3] for r in rows], dtype=np.int64)
        self.worst = np.array([r[4] for r in rows], dtype=np.int64)
        self.usable = np.array([bool(r[6]) for r in rows], dtype=bool)
        self.on_gold = np.array([bool(r[7]) for r in rows], dtype=bool)
        self.tuples: list[tuple[int, ...]] = [tuple(items_of[r[2]]) for r in rows]
        self.credits: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def usable_only(self) -> _BwsData:
        """The same data, keeping only the usable judgements."""
        kept = copy.copy(self)
        keep = np.flatnonzero(self.usable)
        for name in ("user_ids", "best", "worst", "usable", "on_gold"):
            setattr(kept, name, getattr(self, name)[keep])
        for name in ("task_ids", "prompt_ids", "tuples"):
            setattr(kept, name, [getattr(self, name)[j] for j in keep.tolist()])
        kept.credits = None
        return kept

    def __len__(self) -> int:
        return len(self.tuples)

    def annotations(self) -> list:
        return [
            scoring.BwsAnnotation(tuple_id=t, items=items, best=int(b), worst=int(w))
            for t, items, b, w in zip(self.task_ids, self.tuples, self.best.tolist(), self.worst.tolist())
        ]

    def annotations_by_prompt(self) -> dict[int, list]:
        grouped: dict[int, list] = defaultdict(list)
        for prompt_id, annotation in zip(self.prompt_ids, self.annotations()):
            grouped[prompt_id].append(annotation)
        return grouped


def _consensus_credits(data: _BwsData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per judgement: (defined, best-credit, worst-credit), leave-one-out as in the module docstring."""
    if data.credits is None:
        data.credits = _compute_credits(data)
    return data.credits


def _compute_credits(data: _BwsData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(data)
    if n == 0:
        empty = np.zeros(0)
        return empty.astype(bool), empty, empty
    width = max(len(t) for t in data.tuples)
    ids = np.full((n, width), -1, dtype=np.int64)
    for j, items in enumerate(data.tuples):
        ids[j, : len(items)] = items
    mask = ids >= 0
    # Compact item index 0..m-1 (and m for padding).
    universe, index = np.unique(ids[mask], return_inverse=True)
    m = len(universe)
    idx = np.full(ids.shape, m, dtype=np.int64)
    idx[mask] = index
    best_idx = np.searchsorted(universe, data.best)
    worst_idx = np.searchsorted(universe, data.worst)

    # The consensus: usable judgements only. Each leaves itself out; the others have nothing to leave out.
    own = data.usable[:, None]
    appearances = np.bincount(idx[mask & own], minlength=m + 1).astype(float)
    best_total = np.bincount(best_idx[data.usable], minlength=m + 1).astype(float)
    worst_total = np.bincount(worst_idx[data.usable], minlength=m + 1).astype(float)

    is_best = idx == best_idx[:, None]
    is_worst = idx == worst_idx[:, None]
    app = appearances[idx] - own
    net = best_total[idx] - (is_best & own) - (worst_total[idx] - (is_worst & own))
    defined = np.all(~mask | (app > 0), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(mask & (app > 0), net / np.where(app > 0, app, 1.0), np.nan)

    top = np.where(mask, score, -np.inf)
    bottom = np.where(mask, score, np.inf)
    top_max = np.max(top, axis=1, keepdims=True)
    bottom_min = np.min(bottom, axis=1, keepdims=True)
    eps = 1e-12
    in_top = mask & (np.abs(top - top_max) <= eps)
    in_bottom = mask & (np.abs(bottom - bottom_min) <= eps)
    best_credit = np.where(np.any(in_top & is_best, axis=1), 1.0 / np.maximum(in_top.sum(axis=1), 1), 0.0)
    worst_credit = np.where(np.any(in_bottom & is_worst, axis=1), 1.0 / np.maximum(in_bottom.sum(axis=1), 1), 0.0)
    return defined, best_credit, worst_credit


def _agreement_by_user(data: _BwsData) -> dict[int, tuple[float | None, float | None, int]]:
    """Over each annotator's judgements on normal tasks (gold answers are measured on the Gold page),
    an excluded annotator's included."""
    defined, best_credit, worst_credit = _consensus_credits(data)
    result: dict[int, tuple[float | None, float | None, int]] = {}
    for user_id in np.unique(data.user_ids):
        sel = (data.user_ids == user_id) & defined & ~data.on_gold
        k = int(sel.sum())
        result[int(user_id)] = (
            (float(best_credit[sel].mean()), float(worst_credit[sel].mean()), k) if k else (None, None, 0)
        )
    return result


# ---------------------------------------------------------------- counts and progress


def _count(model, *where):
    return select(func.count()).select_from(model).where(*where).scalar_subquery()


def _counts(db: Session) -> Counts:
    by_role: dict[str, int] = {}
    total = active = 0
    for role, is_active, n in db.execute(select(User.role, User.is_active, func.count()).group_by(User.role, User.is_active)):
        by_role[role] = by_role.get(role, 0) + n
        total += n
        active += n if is_active else 0
    row = db.execute(
        select(
            _count(Prompt), _count(Continuation), _count(ModelVersion), _count(Batch),
            _count(Task), _count(Task, Task.kind == "bws"), _count(Task, Task.kind == "rating"),
            _count(BwsJudgement), _count(BwsJudgement, BwsJudgement.is_surplus.is_(True)),
            _count(Rating), _count(Rating, Rating.is_surplus.is_(True)),
            _count(Assignment, Assignment.status == "skipped"),
            _count(BwsJudgement, gold.usable(BwsJudgement)), _count(Rating, gold.usable(Rating)),
        )
    ).one()
    return Counts(
        users_total=total, users_active=active, users_by_role=by_role,
        prompts=row[0], continuations=row[1], model_versions=row[2], batches=row[3],
        tasks=row[4], tasks_bws=row[5], tasks_rating=row[6],
        bws_judgements=row[7], bws_surplus=row[8], bws_usable=row[12],
        ratings=row[9], ratings_surplus=row[10], ratings_usable=row[13], skips=row[11],
    )


def batch_progress(db: Session) -> list[BatchProgress]:
    surplus: dict[int, int] = defaultdict(int)
    for model in (BwsJudgement, Rating):
        for batch_id, n in db.execute(
            select(Task.batch_id, func.count()).select_from(model).join(Task, Task.id == model.task_id)
            .where(model.is_surplus.is_(True)).group_by(Task.batch_id)
        ):
            surplus[batch_id] += n
    rows = db.execute(
        select(
            Batch.id, Batch.name, Batch.kind, Batch.created_at, Batch.annotations_per_task,
            func.count(Task.id),
            func.coalesce(func.sum(case((Task.done_count >= Task.required, 1), else_=0)), 0),
            func.coalesce(func.sum(Task.required), 0),
            func.coalesce(func.sum(Task.done_count), 0),
        )
        .outerjoin(Task, Task.batch_id == Batch.id)
        .group_by(Batch.id, Batch.name, Batch.kind, Batch.created_at, Batch.annotations_per_task)
        .order_by(Batch.id.desc())
    ).all()
    return [
        BatchProgress(
            batch_id=r[0], name=r[1], kind=r[2], created_at=r[3], annotations_per_task=r[4],
            tasks=r[5], tasks_complete=int(r[6]), wanted=int(r[7]), done=int(r[8]),
            percent=round(100.0 * int(r[8]) / int(r[7]), 1) if r[7] else 0.0, surplus=surplus[r[0]],
        )
        for r in rows
    ]


def _hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _hour_key(db: Session, column):
    dialect = db.get_bind().dialect.name
    if dialect == "sqlite":  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC
        return func.strftime("%Y-%m-%d %H:00:00", column)
    if dialect == "postgresql":
        return func.date_trunc("hour", func.timezone("UTC", column))
    return None


def _parse_hour(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return _hour_floor(value)


def judgements_per_hour(db: Session, now: datetime | None = None, hours: int = 24) -> list[HourCount]:
    """BWS judgements and ratings stored per clock hour (UTC) over the last `hours` hours."""
    now = now or utcnow()
    first = _hour_floor(now) - timedelta(hours=hours - 1)
    buckets = {first + timedelta(hours=h): [0, 0] for h in range(hours)}
    for slot, model in enumerate((BwsJudgement, Rating)):
        key = _hour_key(db, model.created_at)
        if key is None:  # another dialect: bucket the (at most 24 h of) timestamps here
            pairs = [(created, 1) for created in db.scalars(select(model.created_at).where(model.created_at >= first))]
        else:
            pairs = db.execute(select(key, func.count()).where(model.created_at >= first).group_by(key)).all()
        for hour, n in pairs:
            hour = _parse_hour(hour)
            if hour in buckets:
                buckets[hour][slot] += n
    return [HourCount(hour=h, bws=b, ratings=r, total=b + r) for h, (b, r) in sorted(buckets.items())]


# ---------------------------------------------------------------- annotators


def median_durations(db: Session) -> dict[tuple[int, str], float]:
    """Median duration_ms per (user, kind). PostgreSQL computes it; SQLite has no median, so the
    durations come back sorted and Python takes the middle."""
    parts = [
        select(model.user_id.label("user_id"), literal(kind).label("kind"), model.duration_ms.label("ms"))
        .where(model.duration_ms.is_not(None))
        for model, kind in ((BwsJudgement, "bws"), (Rating, "rating"))
    ]
    durations = union_all(*parts).subquery()
    if db.get_bind().dialect.name == "postgresql":
        rows = db.execute(
            select(durations.c.user_id, durations.c.kind,
                   func.percentile_cont(0.5).within_group(durations.c.ms))
            .group_by(durations.c.user_id, durations.c.kind)
        )
        return {(u, k): float(v) for u, k, v in rows}
    grouped: dict[tuple[int, str], list[int]] = defaultdict(list)
    for u, k, ms in db.execute(select(durations.c.user_id, durations.c.kind, durations.c.ms)):
        grouped[(u, k)].append(ms)
    return {key: float(statistics.median(values)) for key, values in grouped.items()}


def _annotators(db: Session, bws: _BwsData) -> list[AnnotatorStats]:
    per_user: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for model, name in ((BwsJudgement, "bws"), (Rating, "ratings")):
        for user_id, n, surplus in db.execute(
            select(model.user_id, func.count(), func.coalesce(func.sum(model.is_surplus.cast(Integer)), 0))
            .group_by(model.user_id)
        ):
            per_user[user_id][name] += n
            per_user[user_id]["surplus"] += int(surplus)
    for user_id, n in db.execute(
        select(Assignment.user_id, func.count()).where(Assignment.status == "skipped").group_by(Assignment.user_id)
    ):
        per_user[user_id]["skips"] += n
    medians = median_durations(db)
    agreement = _agreement_by_user(bws)
    people = db.execute(
        select(User.id, User.username, User.role, User.is_active)
        .where((User.role != "admin") | User.id.in_(list(per_user) or [-1]))
        .order_by(User.username)
    ).all()
    result = []
    for user_id, username, role, is_active in people:
        c = per_user.get(user_id, {})
        best, worst, n = agreement.get(user_id, (None, None, 0))
        result.append(AnnotatorStats(
            user_id=user_id, username=username, role=role, is_active=is_active,
            bws=c.get("bws", 0), ratings=c.get("ratings", 0), skips=c.get("skips", 0), surplus=c.get("surplus", 0),
            median_bws_ms=medians.get((user_id, "bws")), median_rating_ms=medians.get((user_id, "rating")),
            best_agreement=best, worst_agreement=worst, agreement_n=n,
        ))
    result.sort(key=lambda a: (-(a.bws + a.ratings), a.username))
    return result


def annotator_stats(database: Database) -> list[AnnotatorStats]:
    with database.read() as db:
        return _annotators(db, _BwsData(db))


# ---------------------------------------------------------------- reliability


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _rating_dimensions(db: Session) -> list[DimensionStats]:
    row = db.execute(select(func.count(), *[func.avg(getattr(Rating, d)) for d in RATING_DIMENSIONS])
                     .where(gold.usable(Rating))).one()
    # Krippendorff's alpha (ordinal): units are continuations, raters are users. A user who rated
    # the same continuation more than once (in two batches) counts once, with their latest rating.
    latest: dict[tuple[int, int], tuple[int, ...]] = {}
    for user_id, continuation_id, *values in db.execute(
        select(Rating.user_id, Rating.continuation_id, *[getattr(Rating, d) for d in RATING_DIMENSIONS])
        .where(gold.usable(Rating))
        .order_by(Rating.id)
    ):
        latest[(user_id, continuation_id)] = tuple(values)
    result = []
    for d, dimension in enumerate(RATING_DIMENSIONS):
        triples = [(c, u, values[d]) for (u, c), values in latest.items()]
        mean = row[1 + d]
        result.append(DimensionStats(
            dimension=dimension, n=row[0], mean=None if mean is None else float(mean),
            alpha=_finite(scoring.krippendorff_alpha(triples, level="ordinal")),
        ))
    return result


def _reliability(db: Session, bws: _BwsData) -> Reliability:
    defined, best_credit, worst_credit = _consensus_credits(bws)
    defined = defined & bws.usable
    k = int(defined.sum())
    usable = bws.usable_only()
    trials = split_half_trials(len(usable))
    split = scoring.split_half_reliability(usable.annotations(), trials=trials, seed=SPLIT_HALF_SEED)
    dims = _rating_dimensions(db)
    return Reliability(
        bws_judgements=len(usable),
        split_half_spearman=_finite(split["spearman_mean"]), split_half_spearman_std=_finite(split["spearman_std"]),
        split_half_pearson=_finite(split["pearson_mean"]), split_half_trials_run=trials,
        split_half_trials=int(split["trials"]),
        best_agreement=float(best_credit[defined].mean()) if k else None,
        worst_agreement=float(worst_credit[defined].mean()) if k else None,
        agreement_n=k, ratings=dims[0].n if dims else 0, dimensions=dims,
    )


def reliability(database: Database) -> Reliability:
    with database.read() as db:
        return _reliability(db, _BwsData(db))


# ---------------------------------------------------------------- scores


def bws_scores(database: Database, limit: int | None = None, prompt_id: int | None = None) -> list[ContinuationScore]:
    """Judged continuations with counting and Bradley-Terry scores, best first by counting score
    (ties: higher Bradley-Terry first, then lower id). `prompt_id` keeps one prompt; `limit` keeps
    the first rows. Bradley-Terry is fitted once per prompt, and only for the prompts of the rows
    returned: items of different prompts never meet in a tuple, so their strengths are not
    comparable anyway, and one fit costs time growing with the square of its items. Usable judgements
    only (gold.usable), as exports and training."""
    with database.read() as db:
        data = _BwsData(db, only_usable=True)
        by_prompt = data.annotations_by_prompt()
        if prompt_id is not None:
            by_prompt = {prompt_id: by_prompt[prompt_id]} if prompt_id in by_prompt else {}
        prompt_of: dict[int, int] = {}
        counting: dict[int, float] = {}
        for pid, group in by_prompt.items():
            scores = scoring.counting_scores(group)
            counting.update(scores)
            prompt_of.update(dict.fromkeys(scores, pid))
        kept = sorted(counting, key=lambda cid: (-counting[cid], cid))
        if limit is not None:
            kept = kept[: max(limit, 0)]
        bt: dict[int, float] = {}
        for pid in sorted({prompt_of[cid] for cid in kept}):
            try:
                bt.update(scoring.bradley_terry_scores(by_prompt[pid]))
            except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError):
                pass  # did not converge: left empty
        meta: dict[int, tuple[str, str]] = {}
        for start in range(0, len(kept), 500):
            meta.update(
                (cid, (text, version))
                for cid, text, version in db.execute(
                    select(Continuation.id, Continuation.text, ModelVersion.name)
                    .join(ModelVersion, ModelVersion.id == Continuation.model_version_id)
                    .where(Continuation.id.in_(kept[start:start + 500]))
                )
            )
    counts = _counts_per_item(data)
    rows = [
        ContinuationScore(
            continuation_id=cid, prompt_id=prompt_of[cid], text=meta[cid][0], model_version=meta[cid][1],
            appearances=counts[cid][0], best=counts[cid][1], worst=counts[cid][2],
            counting=counting[cid], bradley_terry=_finite(bt.get(cid)),
        )
        for cid in kept
        if cid in meta
    ]
    rows.sort(key=lambda r: (-r.counting, -(r.bradley_terry if r.bradley_terry is not None else -np.inf), r.continuation_id))
    return rows


def _counts_per_item(data: _BwsData) -> dict[int, tuple[int, int, int]]:
    appearances: dict[int, int] = defaultdict(int)
    for items in data.tuples:
        for i in items:
            appearances[i] += 1
    best = np.unique(data.best, return_counts=True)
    worst = np.unique(data.worst, return_counts=True)
    best_of = dict(zip(best[0].tolist(), best[1].tolist()))
    worst_of = dict(zip(worst[0].tolist(), worst[1].tolist()))
    return {i: (n, best_of.get(i, 0), worst_of.get(i, 0)) for i, n in appearances.items()}


# ---------------------------------------------------------------- invites


class InviteInfo(BaseModel):
    id: int
    token: str
    role: str
    created_by: str | None
    created_at: datetime
    expires_at: datetime


def open_invites(database: Database) -> list[InviteInfo]:
    """Invites not used and not expired yet, newest first."""
    with database.read() as db:
        rows = db.execute(
            select(Invite, User.username)
            .outerjoin(User, User.id == Invite.created_by_id)
            .where(Invite.used_at.is_(None), Invite.expires_at > utcnow())
            .order_by(Invite.id.desc())
        ).all()
    return [
        InviteInfo(id=i.id, token=i.token, role=i.role, created_by=name, created_at=i.created_at, expires_at=i.expires_at)
        for i, name in rows
    ]


# ---------------------------------------------------------------- everything at once


def overview(database: Database, now: datetime | None = None) -> Overview:
    with database.read() as db:
        bws = _BwsData(db)
        return Overview(
            generated_at=now or utcnow(),
            counts=_counts(db),
            batches=batch_progress(db),
            per_hour=judgements_per_hour(db, now),
            annotators=_annotators(db, bws),
            reliability=_reliability(db, bws),
        )
