"""What each version wrote: per prompt, every continuation of every model version side by side.

The scores page lists only judged continuations; this view lists all of them, judged or not, so an
admin can read what a new policy wrote the moment the trainer stored it. Each continuation carries its
BWS counting score and appearances, computed over the BWS judgements of its prompt (the only tuples it
can meet: items of different prompts never share a tuple), and None / 0 when never judged. Only usable
judgements count (app/services/gold.py `usable`), as in exports and training: none by an excluded
annotator, none on a gold task.

Columns are versions in lineage order: policies (base, SFT, each round's policy) oldest first, then
imported sources.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import Database
from app.models import BwsJudgement, Continuation, ModelVersion, Prompt, Task, TrainingRound
from app.services import gold, scoring
from app.services.round_numbers import round_numbers

MAX_LIMIT = 100  # prompts per page
KIND_ORDER = {"policy": 0, "source": 1}


class StoryVersion(BaseModel):
    id: int
    name: str
    kind: str
    algorithm: str
    parent_id: int | None
    round_number: int | None  # the training round that produced it (round 0: the base's)


class Story(BaseModel):
    continuation_id: int
    model_version_id: int
    text: str
    created_at: datetime
    counting: float | None  # (best - worst) / appearances over its prompt's BWS judgements; None: never judged
    appearances: int
    best: int
    worst: int


class PromptStories(BaseModel):
    prompt_id: int
    external_id: str | None
    text: str
    judgements: int  # BWS judgements of this prompt
    by_version: dict[int, list[Story]]  # version id -> its continuations, oldest first


class StoriesPage(BaseModel):
    total: int  # prompts matching
    offset: int
    limit: int
    q: str | None
    version_ids: list[int]  # the filter; empty: every version
    versions: list[StoryVersion]  # the columns, in lineage order
    all_versions: list[StoryVersion]  # every version that wrote something (for the filter)
    prompts: list[PromptStories]


def _versions(db: Session) -> list[StoryVersion]:
    """Every version that wrote a continuation, policies oldest first then sources."""
    writers = set(db.scalars(select(Continuation.model_version_id).distinct()))
    numbers = round_numbers(db)
    round_of = {pid: numbers[rid] for rid, pid in db.execute(select(TrainingRound.id, TrainingRound.policy_version_id)
                                                             .where(TrainingRound.policy_version_id.is_not(None)))}
    rows = [v for v in db.scalars(select(ModelVersion).order_by(ModelVersion.id)) if v.id in writers]
    rows.sort(key=lambda v: (KIND_ORDER.get(v.kind, 2), v.id))
    return [StoryVersion(id=v.id, name=v.name, kind=v.kind, algorithm=v.algorithm, parent_id=v.parent_id,
                         round_number=round_of.get(v.id)) for v in rows]


def _counting(db: Session, prompt_ids: list[int]) -> tuple[dict[int, tuple[float, int, int, int]], dict[int, int]]:
    """{continuation id: (counting score, appearances, best, worst)} over the usable BWS judgements of these
    prompts, and the number of those judgements per prompt."""
    if not prompt_ids:
        return {}, {}
    judgements = db.execute(
        select(BwsJudgement.task_id, BwsJudgement.shown_order, BwsJudgement.best_id, BwsJudgement.worst_id,
               Task.prompt_id)
        .join(Task, Task.id == BwsJudgement.task_id)
        .where(Task.prompt_id.in_(prompt_ids), Task.kind == "bws", gold.usable(BwsJudgement))
        .order_by(BwsJudgement.id)
    ).all()
    annotations: list[scoring.BwsAnnotation] = []
    per_prompt: dict[int, int] = defaultdict(int)
    for j in judgements:
        try:
            annotations.append(scoring.BwsAnnotation(tuple_id=j.task_id, items=tuple(j.shown_order),
                                                     best=j.best_id, worst=j.worst_id))
        except ValueError:
            continue  # a malformed tuple is left out rather than failing the page
        per_prompt[j.prompt_id] += 1
    # A tuple's items all belong to its prompt, so tallies over all prompts at once are per-prompt tallies.
    out = {cid: (t.score, t.appearances, t.best, t.worst) for cid, t in scoring.counting_tallies(annotations).items()}
    return out, dict(per_prompt)


def stories(database: Database, *, offset: int = 0, limit: int = 10, q: str | None = None,
            prompt_id: int | None = None, version_ids: list[int] | None = None) -> StoriesPage:
    """A page of prompts (those with a continuation of a chosen version; all versions when none is chosen),
    each with every continuation of the chosen versions, judged or not. `q`: a substring of the prompt text."""
    limit = max(1, min(limit, MAX_LIMIT))
    offset = max(offset, 0)
    chosen = sorted(set(version_ids or []))
    with database.read() as db:
        all_versions = _versions(db)
        columns = [v for v in all_versions if not chosen or v.id in chosen]
        wrote = select(Continuation.prompt_id).distinct()
        if chosen:
            wrote = wrote.where(Continuation.model_version_id.in_(chosen))
        where = [Prompt.id.in_(wrote)]
        if q:
            where.append(Prompt.text.contains(q, autoescape=True))
        if prompt_id is not None:
            where.append(Prompt.id == prompt_id)
        total = db.scalar(select(func.count()).select_from(Prompt).where(*where)) or 0
        prompts = db.scalars(select(Prompt).where(*where).order_by(Prompt.id).offset(offset).limit(limit)).all()
        ids = [p.id for p in prompts]
        scores, judged = _counting(db, ids)
        cells: dict[int, dict[int, list[Story]]] = defaultdict(lambda: defaultdict(list))
        if ids:
            query = select(Continuation).where(Continuation.prompt_id.in_(ids)).order_by(Continuation.id)
            if chosen:
                query = query.where(Continuation.model_version_id.in_(chosen))
            for c in db.scalars(query):
                score, seen, best, worst = scores.get(c.id, (None, 0, 0, 0))
                cells[c.prompt_id][c.model_version_id].append(Story(
                    continuation_id=c.id, model_version_id=c.model_version_id, text=c.text, created_at=c.created_at,
                    counting=score, appearances=seen, best=best, worst=worst))
        rows = [PromptStories(prompt_id=p.id, external_id=p.external_id, text=p.text, judgements=judged.get(p.id, 0),
                              by_version={v: list(s) for v, s in cells[p.id].items()}) for p in prompts]
    return StoriesPage(total=total, offset=offset, limit=limit, q=q or None, version_ids=chosen, versions=columns,
                       all_versions=all_versions, prompts=rows)
