"""The model-versions view: lineage, a leaderboard of human and automatic measures, and training curves.

Per policy or imported source:
- human BWS score from tuples that MIX versions: over every BWS judgement of a tuple whose items come
  from at least two versions, (#times one of its items was chosen best - #times worst) / #appearances of
  its items (an item shown in a tuple judged three times appears three times). In [-1, 1]; only
  comparisons across versions count, so a version is not credited for beating its own siblings.
- evaluation means from the latest campaign that rated it (app/services/evaluation.py);
- automatic metrics the trainer stored in ModelVersion.metrics["auto"] (trainer/auto_metrics.py).
Training curves: the PPO per-step metrics (training_log, phase "ppo") and per round the reward model's
held-out pairwise accuracy (its ModelVersion.metrics, else the round's "reward model" log).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import Database
from app.models import (
    BwsJudgement,
    Campaign,
    CampaignVersion,
    Continuation,
    ModelVersion,
    Task,
    TaskItem,
    TrainingLog,
    TrainingRound,
)
from app.services import evaluation

AUTO_METRICS = ("mean_reward", "distinct_1", "distinct_2", "mean_length", "perplexity")
PPO_METRICS = ("score", "kl", "policy_loss", "value_loss", "kl_coef", "entropy")


class VersionRow(BaseModel):
    id: int
    name: str
    kind: str
    algorithm: str
    parent_id: int | None
    parent_name: str | None
    depth: int  # 0 for a root (base policy or imported source)
    round_id: int | None  # the training round that produced it
    created_at: datetime
    continuations: int
    bws_score: float | None
    bws_appearances: int
    bws_best: int
    bws_worst: int
    eval_campaign_id: int | None
    eval_campaign_name: str | None
    eval_n: int
    eval_means: dict[str, float]
    auto: dict[str, Any]


class RewardRow(BaseModel):
    round_id: int
    version_id: int
    name: str
    held_out_accuracy: float | None
    train_accuracy: float | None
    held_out_pairs: int | None


class PpoPoint(BaseModel):
    round_id: int
    step: int
    x: int  # step counted over all rounds in order
    metrics: dict[str, float]


class ModelsPage(BaseModel):
    versions: list[VersionRow]
    rewards: list[RewardRow]
    ppo: list[PpoPoint]
    round_starts: list[tuple[int, int]]  # (x where a round's PPO begins, round id)


def mixed_bws_scores(db: Session) -> dict[int, dict[str, int | float]]:
    """{version id: {score, appearances, best, worst}} from judgements of tuples mixing versions."""
    judgements = db.execute(select(BwsJudgement.task_id, BwsJudgement.best_id, BwsJudgement.worst_id)).all()
    if not judgements:
        return {}
    task_ids = {j.task_id for j in judgements}
    items: dict[int, list[tuple[int, int]]] = defaultdict(list)  # task -> [(continuation, version)]
    rows = db.execute(select(TaskItem.task_id, TaskItem.continuation_id, Continuation.model_version_id)
                      .join(Continuation, Continuation.id == TaskItem.continuation_id)
                      .join(Task, Task.id == TaskItem.task_id).where(Task.kind == "bws"))
    for task_id, cid, vid in rows:
        if task_id in task_ids:
            items[task_id].append((cid, vid))
    seen: dict[int, int] = defaultdict(int)
    best: dict[int, int] = defaultdict(int)
    worst: dict[int, int] = defaultdict(int)
    for j in judgements:
        task_items = items.get(j.task_id, [])
        version_of = dict(task_items)
        if len(set(version_of.values())) < 2:
            continue
        for _, vid in task_items:
            seen[vid] += 1
        best[version_of[j.best_id]] += 1
        worst[version_of[j.worst_id]] += 1
    return {v: {"score": (best[v] - worst[v]) / seen[v], "appearances": seen[v], "best": best[v], "worst": worst[v]}
            for v in seen}


def _latest_eval(db: Session, version_ids: list[int]) -> dict[int, tuple[int, str, dict]]:
    """{version id: (campaign id, campaign name, {dimension: mean, n})} from the latest campaign rating it."""
    found: dict[int, tuple[int, str, dict]] = {}
    campaigns = db.execute(select(Campaign.id, Campaign.name).where(Campaign.batch_id.is_not(None))
                           .order_by(Campaign.id.desc())).all()
    for campaign_id, name in campaigns:
        members = set(db.scalars(select(CampaignVersion.model_version_id).where(CampaignVersion.campaign_id == campaign_id)))
        if not (members & (set(version_ids) - found.keys())):
            continue
        means = evaluation.version_means(db, campaign_id)
        for v, m in means.items():
            if v not in found and m.get("n"):
                found[v] = (campaign_id, name, m)
        if len(found) == len(version_ids):
            break
    return found


def _depths(versions: list[ModelVersion]) -> tuple[list[ModelVersion], dict[int, int]]:
    """Depth-first order (children after their parent, oldest first) and each version's depth."""
    ids = {v.id for v in versions}
    children: dict[int | None, list[ModelVersion]] = defaultdict(list)
    for v in versions:
        children[v.parent_id if v.parent_id in ids else None].append(v)
    ordered, depth = [], {}

    def walk(v: ModelVersion, d: int) -> None:
        ordered.append(v)
        depth[v.id] = d
        for c in sorted(children.get(v.id, []), key=lambda c: c.id):
            walk(c, d + 1)

    for root in sorted(children[None], key=lambda v: v.id):
        walk(root, 0)
    return ordered, depth


def models_page(database: Database) -> ModelsPage:
    with database.read() as db:
        all_versions = db.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
        names = {v.id: v.name for v in all_versions}
        writers = [v for v in all_versions if v.kind in evaluation.VERSION_KINDS]
        ordered, depth = _depths(writers)
        counts = dict(db.execute(select(Continuation.model_version_id, func.count()).group_by(Continuation.model_version_id)).all())
        rounds = db.scalars(select(TrainingRound).order_by(TrainingRound.id)).all()
        round_of_policy = {r.policy_version_id: r.id for r in rounds if r.policy_version_id}
        bws = mixed_bws_scores(db)
        evals = _latest_eval(db, [v.id for v in writers])
        versions = []
        for v in ordered:
            b = bws.get(v.id, {})
            e = evals.get(v.id)
            auto = (v.metrics or {}).get("auto") or {}
            versions.append(VersionRow(
                id=v.id, name=v.name, kind=v.kind, algorithm=v.algorithm, parent_id=v.parent_id,
                parent_name=names.get(v.parent_id), depth=depth[v.id], round_id=round_of_policy.get(v.id),
                created_at=v.created_at, continuations=counts.get(v.id, 0),
                bws_score=b.get("score"), bws_appearances=b.get("appearances", 0), bws_best=b.get("best", 0),
                bws_worst=b.get("worst", 0), eval_campaign_id=e[0] if e else None, eval_campaign_name=e[1] if e else None,
                eval_n=int(e[2]["n"]) if e else 0,
                eval_means={d: e[2][d] for d in evaluation.DIMENSIONS} if e else {},
                auto={k: auto[k] for k in AUTO_METRICS if auto.get(k) is not None},
            ))

        reward_logs: dict[int, dict] = {}
        for log in db.scalars(select(TrainingLog).where(TrainingLog.phase == "reward model").order_by(TrainingLog.id)):
            if "held_out_accuracy" in (log.metrics or {}):
                reward_logs[log.round_id] = log.metrics
        by_id = {v.id: v for v in all_versions}
        rewards = []
        for r in rounds:
            rv = by_id.get(r.reward_version_id) if r.reward_version_id else None
            if rv is None:
                continue
            m = {**reward_logs.get(r.id, {}), **{k: x for k, x in (rv.metrics or {}).items() if x is not None}}
            rewards.append(RewardRow(round_id=r.id, version_id=rv.id, name=rv.name,
                                     held_out_accuracy=m.get("held_out_accuracy"), train_accuracy=m.get("train_accuracy"),
                                     held_out_pairs=m.get("held_out_pairs")))

        ppo, starts, x, last_round = [], [], 0, None
        for log in db.scalars(select(TrainingLog).where(TrainingLog.phase == "ppo").order_by(TrainingLog.round_id, TrainingLog.step, TrainingLog.id)):
            x += 1
            if log.round_id != last_round:
                starts.append((x, log.round_id))
                last_round = log.round_id
            ppo.append(PpoPoint(round_id=log.round_id, step=log.step, x=x,
                                metrics={k: float(v) for k, v in (log.metrics or {}).items()
                                         if isinstance(v, (int, float)) and not isinstance(v, bool)}))
    return ModelsPage(versions=versions, rewards=rewards, ppo=ppo, round_starts=starts)
