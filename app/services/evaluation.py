"""Blind evaluation campaigns: which versions on which prompts, the eval batch, and the results.

A campaign compares two or more model versions (trained policies or imported sources) on the same
prompts. For each (version, prompt) it takes that version's earliest continuation of the prompt; where
there is none it files a GenerationRequest for the trainer (trainer/eval_generation.py) and waits.
Once every continuation exists it builds a Batch(kind="eval") with one Task(kind="eval") per
continuation, created in a seeded random order (versions and prompts interleaved, so that task ids
tell nothing either; evaluators are served them at random anyway). Evaluators rate them through the
ordinary rating machinery (app/services/tasks.py); TaskView names no version and no id, so judging
is blind (tests/test_blind.py tries to tell the versions apart from what evaluators receive).

Results (admins only): per version and dimension the mean rating with a 95 % percentile-bootstrap CI
over the individual ratings; for every pair of versions and every dimension a paired comparison over
the prompts both were rated on (per-prompt means, Wilcoxon signed-rank, rank-biserial effect size);
Krippendorff's alpha (ordinal) per dimension over the campaign's items. The usable ratings of the
campaign's tasks count (app/services/gold.py `usable`, as in exports and training: none by an excluded
evaluator), late (surplus) ones included: each is a genuine judgement of a different evaluator.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db import Database
from app.models import (
    RATING_DIMENSIONS,
    Batch,
    Campaign,
    CampaignPrompt,
    CampaignVersion,
    Continuation,
    GenerationRequest,
    ModelVersion,
    Prompt,
    Rating,
    Task,
    TaskItem,
    utcnow,
)
from app.services import gold
from app.services.errors import Invalid, NotFound
from app.services.scoring import bootstrap_mean_ci, krippendorff_alpha, paired_comparison
from app.validation import BoundedText, DbInt, IdList

EVAL_KIND = "eval"
VERSION_KINDS = ("policy", "source")  # what a campaign can compare (reward models write no stories)
DIMENSIONS = RATING_DIMENSIONS + ("overall",)  # overall: the mean of the four scores of one rating
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


class CampaignCreate(BaseModel):
    name: BoundedText(200) = ""
    model_version_ids: IdList = Field(min_length=2)
    prompt_ids: IdList = Field(min_length=1)
    required: int = Field(2, ge=1, le=100)
    seed: DbInt = 0


class CampaignInfo(BaseModel):
    id: int
    name: str
    status: str
    required: int
    seed: int
    batch_id: int | None
    note: str
    created_at: datetime
    versions: list[dict]  # {id, name, kind}
    prompts: int
    items: int
    items_complete: int
    ratings: int
    requests_pending: int
    requests_failed: int


# ---------------------------------------------------------------- creating


def _earliest_continuations(db: Session, version_ids: Sequence[int], prompt_ids: Sequence[int]) -> dict[tuple[int, int], int]:
    """(version id, prompt id) -> id of that version's earliest continuation of the prompt."""
    rows = db.execute(
        select(Continuation.model_version_id, Continuation.prompt_id, func.min(Continuation.id))
        .where(Continuation.model_version_id.in_(version_ids), Continuation.prompt_id.in_(prompt_ids))
        .group_by(Continuation.model_version_id, Continuation.prompt_id)
    )
    return {(v, p): c for v, p, c in rows}


def create_campaign(db: Session, data: CampaignCreate) -> Campaign:
    """Records the campaign; builds its eval batch at once when every continuation exists, else files
    generation requests for the missing ones and leaves it "waiting_for_generation"."""
    version_ids = list(dict.fromkeys(data.model_version_ids))
    prompt_ids = list(dict.fromkeys(data.prompt_ids))
    if len(version_ids) < 2:
        raise Invalid("pick at least two different model versions")
    if not prompt_ids:
        raise Invalid("pick at least one prompt")
    versions = {v.id: v for v in db.scalars(select(ModelVersion).where(ModelVersion.id.in_(version_ids)))}
    missing = [v for v in version_ids if v not in versions]
    if missing:
        raise NotFound(f"unknown model versions: {missing[:10]}")
    wrong = [versions[v].name for v in version_ids if versions[v].kind not in VERSION_KINDS]
    if wrong:
        raise Invalid(f"only policies and imported sources write stories, not {', '.join(wrong)}")
    known = set(db.scalars(select(Prompt.id).where(Prompt.id.in_(prompt_ids))))
    if len(known) != len(prompt_ids):
        raise NotFound(f"unknown prompts: {sorted(set(prompt_ids) - known)[:10]}")

    name = data.name.strip() or f"Evaluation {utcnow():%Y-%m-%d %H:%M}"
    campaign = Campaign(name=name, required=data.required, seed=data.seed, status="waiting_for_generation", note="")
    db.add(campaign)
    db.flush()
    db.add_all([CampaignVersion(campaign_id=campaign.id, model_version_id=v) for v in version_ids])
    db.add_all([CampaignPrompt(campaign_id=campaign.id, prompt_id=p) for p in prompt_ids])
    have = _earliest_continuations(db, version_ids, prompt_ids)
    for v in version_ids:
        for p in prompt_ids:
            if (v, p) not in have:
                db.add(GenerationRequest(campaign_id=campaign.id, model_version_id=v, prompt_id=p, status="pending"))
    db.flush()
    if len(have) == len(version_ids) * len(prompt_ids):
        _open(db, campaign)
    return campaign


def _open(db: Session, campaign: Campaign) -> None:
    """Builds the eval batch from the prompts every version has a continuation for."""
    version_ids = campaign_version_ids(db, campaign.id)
    prompt_ids = list(db.scalars(select(CampaignPrompt.prompt_id).where(CampaignPrompt.campaign_id == campaign.id)
                                 .order_by(CampaignPrompt.prompt_id)))
    have = _earliest_continuations(db, version_ids, prompt_ids)
    complete = [p for p in prompt_ids if all((v, p) in have for v in version_ids)]
    dropped = [p for p in prompt_ids if p not in complete]
    if dropped:
        campaign.note = (f"{len(dropped)} prompt(s) left out because a continuation could not be generated: "
                         + ", ".join(map(str, dropped[:20])) + ("…" if len(dropped) > 20 else ""))
    if not complete:
        campaign.status = "failed"
        return
    items = [(p, v, have[(v, p)]) for p in complete for v in version_ids]
    random.Random(campaign.seed * 1_000_003 + campaign.id).shuffle(items)
    batch = Batch(name=f"evaluation: {campaign.name}"[:200], kind=EVAL_KIND, seed=campaign.seed,
                  annotations_per_task=campaign.required,
                  design={"campaign_id": campaign.id, "versions": len(version_ids), "prompts": len(complete)})
    db.add(batch)
    db.flush()
    for prompt_id, _version, continuation_id in items:  # one flush each: task ids follow the shuffled order
        task = Task(batch_id=batch.id, kind=EVAL_KIND, prompt_id=prompt_id, required=campaign.required)
        task.items = [TaskItem(position=0, continuation_id=continuation_id)]
        db.add(task)
        db.flush()
    campaign.batch_id, campaign.status = batch.id, "open"


def open_pending_campaigns(db: Session) -> list[int]:
    """Opens every waiting campaign none of whose generation requests is still pending. Returns their ids."""
    waiting = db.scalars(select(Campaign).where(Campaign.status == "waiting_for_generation").order_by(Campaign.id)).all()
    opened = []
    for campaign in waiting:
        pending = db.scalar(select(func.count()).select_from(GenerationRequest)
                            .where(GenerationRequest.campaign_id == campaign.id, GenerationRequest.status == "pending"))
        if pending:
            continue
        _open(db, campaign)
        opened.append(campaign.id)
    db.flush()
    return opened


def pending_generation_requests(db: Session) -> list[GenerationRequest]:
    return list(db.scalars(select(GenerationRequest).where(GenerationRequest.status == "pending")
                           .order_by(GenerationRequest.model_version_id, GenerationRequest.id)))


def close_campaign(db: Session, campaign_id: int) -> None:
    """No more leasing: every unfinished item gets required = its done count (ratings so far are kept)."""
    campaign = db.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    if campaign.batch_id is not None:
        db.execute(update(Task).where(Task.batch_id == campaign.batch_id, Task.done_count < Task.required)
                   .values(required=Task.done_count).execution_options(synchronize_session=False))
    campaign.status = "closed"


# ---------------------------------------------------------------- listing


def campaign_version_ids(db: Session, campaign_id: int) -> list[int]:
    return list(db.scalars(select(CampaignVersion.model_version_id).where(CampaignVersion.campaign_id == campaign_id)
                           .order_by(CampaignVersion.model_version_id)))


def _info(db: Session, c: Campaign) -> CampaignInfo:
    versions = db.execute(select(ModelVersion.id, ModelVersion.name, ModelVersion.kind)
                          .join(CampaignVersion, CampaignVersion.model_version_id == ModelVersion.id)
                          .where(CampaignVersion.campaign_id == c.id).order_by(ModelVersion.id)).all()
    prompts = db.scalar(select(func.count()).select_from(CampaignPrompt).where(CampaignPrompt.campaign_id == c.id))
    items = complete = ratings = 0
    if c.batch_id is not None:
        items = db.scalar(select(func.count()).select_from(Task).where(Task.batch_id == c.batch_id)) or 0
        complete = db.scalar(select(func.count()).select_from(Task)
                             .where(Task.batch_id == c.batch_id, Task.done_count >= Task.required)) or 0
        ratings = db.scalar(select(func.count()).select_from(Rating).join(Task, Task.id == Rating.task_id)
                            .where(Task.batch_id == c.batch_id)) or 0
    requests = dict(db.execute(select(GenerationRequest.status, func.count()).where(GenerationRequest.campaign_id == c.id)
                               .group_by(GenerationRequest.status)).all())
    return CampaignInfo(
        id=c.id, name=c.name, status=c.status, required=c.required, seed=c.seed, batch_id=c.batch_id, note=c.note,
        created_at=c.created_at, versions=[{"id": i, "name": n, "kind": k} for i, n, k in versions],
        prompts=prompts or 0, items=items, items_complete=complete, ratings=ratings,
        requests_pending=requests.get("pending", 0), requests_failed=requests.get("failed", 0),
    )


def list_campaigns(db: Session) -> list[CampaignInfo]:
    return [_info(db, c) for c in db.scalars(select(Campaign).order_by(Campaign.id.desc()))]


def get_campaign(db: Session, campaign_id: int) -> CampaignInfo:
    c = db.get(Campaign, campaign_id)
    if c is None:
        raise NotFound(f"no campaign {campaign_id}")
    return _info(db, c)


# ---------------------------------------------------------------- results


@dataclass
class _RatingRow:
    task_id: int
    user_id: int
    prompt_id: int
    version_id: int
    scores: dict[str, float] = field(default_factory=dict)


def _rating_rows(db: Session, batch_id: int) -> list[_RatingRow]:
    rows = db.execute(
        select(Rating.task_id, Rating.user_id, Task.prompt_id, Continuation.model_version_id,
               *[getattr(Rating, d) for d in RATING_DIMENSIONS])
        .join(Task, Task.id == Rating.task_id)
        .join(Continuation, Continuation.id == Rating.continuation_id)
        .where(Task.batch_id == batch_id, gold.usable(Rating))
        .order_by(Rating.id)
    ).all()
    out = []
    for row in rows:
        scores = {d: float(getattr(row, d)) for d in RATING_DIMENSIONS}
        scores["overall"] = sum(scores.values()) / len(RATING_DIMENSIONS)
        out.append(_RatingRow(row.task_id, row.user_id, row.prompt_id, row.model_version_id, scores))
    return out


class MeanCI(BaseModel):
    version_id: int
    version: str
    dimension: str
    n: int  # ratings
    mean: float | None
    ci_low: float | None
    ci_high: float | None


class Paired(BaseModel):
    version_a_id: int
    version_a: str
    version_b_id: int
    version_b: str
    dimension: str
    n: int  # prompts both versions were rated on
    n_nonzero: int | None
    mean_difference: float | None  # A - B over per-prompt means; positive: A is better
    wilcoxon_statistic: float | None
    p_value: float | None
    rank_biserial: float | None
    significant: bool  # p < 0.05


class Agreement(BaseModel):
    dimension: str
    alpha: float | None  # Krippendorff's alpha, ordinal; None while undefined
    units: int  # items with at least two ratings


class Results(BaseModel):
    campaign: CampaignInfo
    confidence: float
    dimensions: list[str]
    means: list[MeanCI]
    paired: list[Paired]
    agreement: list[Agreement]
    evaluators: int


def version_means(db: Session, campaign_id: int) -> dict[int, dict[str, float | int]]:
    """{version id: {dimension: mean, "n": ratings}} of a campaign; cheap (no bootstrap)."""
    c = db.get(Campaign, campaign_id)
    if c is None or c.batch_id is None:
        return {}
    by_version: dict[int, list[_RatingRow]] = defaultdict(list)
    for r in _rating_rows(db, c.batch_id):
        by_version[r.version_id].append(r)
    return {v: {"n": len(rows), **{d: sum(r.scores[d] for r in rows) / len(rows) for d in DIMENSIONS}}
            for v, rows in by_version.items()}


def results(database: Database, campaign_id: int, n_resamples: int = BOOTSTRAP_RESAMPLES) -> Results:
    with database.read() as db:
        info = get_campaign(db, campaign_id)
        rows = _rating_rows(db, info.batch_id) if info.batch_id is not None else []
    names = {v["id"]: v["name"] for v in info.versions}
    version_ids = [v["id"] for v in info.versions]

    means = []
    for v in version_ids:
        mine = [r for r in rows if r.version_id == v]
        for d in DIMENSIONS:
            if mine:
                mean, low, high = bootstrap_mean_ci([r.scores[d] for r in mine], CONFIDENCE, n_resamples, seed=0)
            else:
                mean = low = high = None
            means.append(MeanCI(version_id=v, version=names[v], dimension=d, n=len(mine), mean=mean, ci_low=low, ci_high=high))

    per_prompt: dict[tuple[int, str], dict[int, float]] = {}  # (version, dimension) -> {prompt: mean}
    for v in version_ids:
        grouped: dict[int, list[_RatingRow]] = defaultdict(list)
        for r in rows:
            if r.version_id == v:
                grouped[r.prompt_id].append(r)
        for d in DIMENSIONS:
            per_prompt[(v, d)] = {p: sum(r.scores[d] for r in rs) / len(rs) for p, rs in grouped.items()}
    paired = []
    for a, b in itertools.combinations(version_ids, 2):
        for d in DIMENSIONS:
            cmp = paired_comparison(per_prompt[(a, d)], per_prompt[(b, d)])
            p = cmp["p_value"]
            paired.append(Paired(version_a_id=a, version_a=names[a], version_b_id=b, version_b=names[b], dimension=d,
                                 significant=p is not None and p < 0.05, **cmp))

    agreement = []
    raters_per_unit: dict[int, int] = defaultdict(int)
    for r in rows:
        raters_per_unit[r.task_id] += 1
    units = sum(1 for n in raters_per_unit.values() if n >= 2)
    for d in RATING_DIMENSIONS:
        alpha = krippendorff_alpha(((r.task_id, r.user_id, r.scores[d]) for r in rows), level="ordinal")
        agreement.append(Agreement(dimension=d, alpha=alpha, units=units))

    return Results(campaign=info, confidence=CONFIDENCE, dimensions=list(DIMENSIONS), means=means, paired=paired,
                   agreement=agreement, evaluators=len({r.user_id for r in rows}))


# ---------------------------------------------------------------- export

CSV_COLUMNS = ["table", "version_a", "version_b", "dimension", "n", "mean", "ci_low", "ci_high", "n_nonzero",
               "mean_difference", "wilcoxon_statistic", "p_value", "rank_biserial", "alpha"]


def results_csv_filename(campaign_id: int) -> str:
    return f"campaign-{campaign_id}-results.csv"


def results_csv(res: Results) -> str:
    """One long table: rows of kind "mean" (per version and dimension), "paired" and "agreement"."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for m in res.means:
        writer.writerow({"table": "mean", "version_a": m.version, "dimension": m.dimension, "n": m.n,
                         "mean": m.mean, "ci_low": m.ci_low, "ci_high": m.ci_high})
    for p in res.paired:
        writer.writerow({"table": "paired", **p.model_dump(), "version_a": p.version_a, "version_b": p.version_b})
    for a in res.agreement:
        writer.writerow({"table": "agreement", "dimension": a.dimension, "n": a.units, "alpha": a.alpha})
    return out.getvalue()


def results_json(res: Results) -> str:
    return json.dumps(res.model_dump(mode="json"), indent=2)
