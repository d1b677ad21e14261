"""The model-versions view: lineage, a leaderboard of human and automatic measures, and training curves.

Per policy or imported source:
- human BWS score from tuples that MIX versions: over every BWS judgement of a tuple whose items come
  from at least two versions, (#times one of its items was chosen best - #times worst) / #appearances of
  its items (an item shown in a tuple judged three times appears three times). In [-1, 1]; only
  comparisons across versions count, so a version is not credited for beating its own siblings.
- evaluation means from the latest campaign that rated it (app/services/evaluation.py);
- automatic metrics the trainer stored in ModelVersion.metrics["auto"] (trainer/auto_metrics.py). Its
  "mean_reward" was scored by the reward model of the version's own round, so it compares nothing across
  versions; the comparable column is the NEWEST reward model's metrics["version_scores"]
  ({str(version id): {"mean", "n"}}), rescored by the trainer for every version each round;
- warnings (version_warnings) when a version drifts from its parent: perplexity under the base, KL to the
  reference, copying the previous version's stories, never ending a story.
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
from app.services import evaluation, gold

AUTO_METRICS = ("mean_reward", "distinct_1", "distinct_2", "mean_length", "perplexity", "eos_rate", "length_p10",
                "length_p50", "length_p90", "kl_to_reference", "copy_similarity")

# Warning thresholds (version_warnings): a version against its parent policy.
PERPLEXITY_RISE = 1.5  # perplexity under the base more than 1.5x its parent's
KL_RISE = 2.0  # kl_to_reference more than doubled over its parent's ...
KL_FLOOR_NATS = 1.0  # ... and above 1 nat per story
KL_MAX_NATS = 12.0  # or simply this far from the reference (twice the trainer's target KL per story)
COPY_SIMILARITY_MAX = 0.8  # median character similarity to the previous version's continuations
EOS_RATE_MIN = 0.0  # a policy none of whose continuations ended with end-of-text
PPO_METRICS = ("score", "kl", "policy_loss", "value_loss", "kl_coef", "entropy")


class VersionRow(BaseModel):
    id: int
    name: str
    kind: str
    algorithm: str
    parent_id: int | None
    parent_name: str | None
    depth: int  # 0 for a root (base policy or imported source)
    round_number: int | None  # the training round that produced it (round 0: the base's)
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
    latest_rm_mean: float | None = None  # mean raw score under the newest reward model
    latest_rm_n: int = 0
    compute: dict[str, Any] = {}  # what training it took: {"seconds", "peak_memory_mb", "device"} (rounds.policy_phase)


class VersionWarning(BaseModel):
    version_id: int
    version_name: str
    parent_name: str | None
    code: str  # perplexity | kl | copy | eos
    message: str


class LatestRewardModel(BaseModel):
    id: int
    name: str
    round_number: int | None
    scored_versions: int


class RewardRow(BaseModel):
    round_number: int
    version_id: int
    name: str
    held_out_accuracy: float | None
    train_accuracy: float | None
    held_out_pairs: int | None


class PpoPoint(BaseModel):
    round_number: int
    step: int
    x: int  # step counted over all rounds in order
    metrics: dict[str, float]


class ModelsPage(BaseModel):
    versions: list[VersionRow]
    rewards: list[RewardRow]
    ppo: list[PpoPoint]
    round_starts: list[tuple[int, int]]  # (x where a round's PPO begins, round id)
    latest_rm: LatestRewardModel | None = None
    warnings: list[VersionWarning] = []


def mixed_bws_scores(db: Session) -> dict[int, dict[str, int | float]]:
    """{version id: {score, appearances, best, worst}} from usable judgements (gold.usable, as exports
    and training) of tuples mixing versions."""
    judgements = db.execute(select(BwsJudgement.task_id, BwsJudgement.best_id, BwsJudgement.worst_id)
                            .where(gold.usable(BwsJudgement))).all()
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


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def latest_reward_model(db: Session) -> tuple[ModelVersion | None, dict[int, dict[str, float | int]]]:
    """The newest reward model (kind "reward", highest id) and its scores of every version's continuations:
    {version id: {"mean": mean raw reward-model score, "n": continuations scored}}."""
    rm = db.scalar(select(ModelVersion).where(ModelVersion.kind == "reward").order_by(ModelVersion.id.desc()).limit(1))
    if rm is None:
        return None, {}
    scores: dict[int, dict[str, float | int]] = {}
    for key, value in ((rm.metrics or {}).get("version_scores") or {}).items():
        mean = _number((value or {}).get("mean")) if isinstance(value, dict) else None
        if str(key).isdigit() and mean is not None:
            scores[int(key)] = {"mean": mean, "n": int(_number(value.get("n")) or 0)}
    return rm, scores


def _auto(v: ModelVersion) -> dict[str, float]:
    auto = (v.metrics or {}).get("auto") or {}
    return {k: n for k in AUTO_METRICS if (n := _number(auto.get(k))) is not None}


def version_warnings(db: Session) -> list[VersionWarning]:
    """What went wrong, per policy or source version, newest first: its perplexity under the base rose more
    than PERPLEXITY_RISE times over its parent's; its KL to the reference more than KL_RISE times its
    parent's and above KL_FLOOR_NATS; its stories nearly copy the previous version's (copy_similarity above
    COPY_SIMILARITY_MAX); a policy none of whose stories ended (eos_rate at EOS_RATE_MIN); any version
    further than KL_MAX_NATS from the reference. Versions or parents without the metric are not judged."""
    versions = db.scalars(select(ModelVersion).where(ModelVersion.kind.in_(evaluation.VERSION_KINDS))
                          .order_by(ModelVersion.id.desc())).all()
    by_id = {v.id: v for v in versions}
    out: list[VersionWarning] = []
    for v in versions:
        auto = _auto(v)
        parent = by_id.get(v.parent_id) if v.parent_id else None
        before = _auto(parent) if parent is not None else {}

        def warn(code: str, message: str) -> None:
            out.append(VersionWarning(version_id=v.id, version_name=v.name, parent_name=parent.name if parent else None,
                                      code=code, message=message))

        ppl, ppl_before = auto.get("perplexity"), before.get("perplexity")
        if ppl is not None and ppl_before and ppl > PERPLEXITY_RISE * ppl_before:
            warn("perplexity", f"perplexity under the base rose {ppl / ppl_before:.1f}x over {parent.name}'s "
                               f"({ppl_before:.1f} → {ppl:.1f}; warning above {PERPLEXITY_RISE:g}x)")
        kl, kl_before = auto.get("kl_to_reference"), before.get("kl_to_reference")
        # A jump compares two trained versions: every first round moves off its parent, the reference
        # itself (KL 0), so that step is judged only by the absolute ceiling.
        if kl is not None and kl_before and kl > KL_FLOOR_NATS and kl > KL_RISE * kl_before:
            warn("kl", f"KL to the reference more than doubled over {parent.name}'s "
                       f"({kl_before:.2f} → {kl:.2f} nats per story)")
        elif kl is not None and kl > KL_MAX_NATS:
            warn("kl", f"KL to the reference is {kl:.1f} nats per story (warning above {KL_MAX_NATS:g})")
        copy = auto.get("copy_similarity")
        if copy is not None and copy > COPY_SIMILARITY_MAX:
            warn("copy", f"stories nearly copy the previous version's (median similarity {copy:.2f}, "
                         f"warning above {COPY_SIMILARITY_MAX:g})")
        eos = auto.get("eos_rate")
        if v.kind == "policy" and eos is not None and eos <= EOS_RATE_MIN:
            warn("eos", "no continuation ended with end-of-text (eos_rate 0): stories are cut off at the length limit")
    return out


def models_page(database: Database) -> ModelsPage:
    with database.read() as db:
        all_versions = db.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
        names = {v.id: v.name for v in all_versions}
        writers = [v for v in all_versions if v.kind in evaluation.VERSION_KINDS]
        ordered, depth = _depths(writers)
        counts = dict(db.execute(select(Continuation.model_version_id, func.count()).group_by(Continuation.model_version_id)).all())
        rounds = db.scalars(select(TrainingRound).order_by(TrainingRound.id)).all()
        number = {r.id: n for n, r in enumerate(rounds)}  # see app/services/round_numbers.py
        round_of_policy = {r.policy_version_id: number[r.id] for r in rounds if r.policy_version_id}
        bws = mixed_bws_scores(db)
        evals = _latest_eval(db, [v.id for v in writers])
        rm, rm_scores = latest_reward_model(db)
        latest_rm = None if rm is None else LatestRewardModel(
            id=rm.id, name=rm.name, round_number=next((number[r.id] for r in rounds if r.reward_version_id == rm.id), None),
            scored_versions=len(rm_scores))
        warnings = version_warnings(db)
        versions = []
        for v in ordered:
            b = bws.get(v.id, {})
            e = evals.get(v.id)
            scored = rm_scores.get(v.id, {})
            versions.append(VersionRow(
                id=v.id, name=v.name, kind=v.kind, algorithm=v.algorithm, parent_id=v.parent_id,
                parent_name=names.get(v.parent_id), depth=depth[v.id], round_number=round_of_policy.get(v.id),
                created_at=v.created_at, continuations=counts.get(v.id, 0),
                bws_score=b.get("score"), bws_appearances=b.get("appearances", 0), bws_best=b.get("best", 0),
                bws_worst=b.get("worst", 0), eval_campaign_id=e[0] if e else None, eval_campaign_name=e[1] if e else None,
                eval_n=int(e[2]["n"]) if e else 0,
                eval_means={d: e[2][d] for d in evaluation.DIMENSIONS} if e else {},
                auto=_auto(v), latest_rm_mean=scored.get("mean"), latest_rm_n=int(scored.get("n", 0)),
                compute=(v.metrics or {}).get("compute") or {},
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
            rewards.append(RewardRow(round_number=number[r.id], version_id=rv.id, name=rv.name,
                                     held_out_accuracy=m.get("held_out_accuracy"), train_accuracy=m.get("train_accuracy"),
                                     held_out_pairs=m.get("held_out_pairs")))

        ppo, starts, x, last_round = [], [], 0, None
        for log in db.scalars(select(TrainingLog).where(TrainingLog.phase == "ppo").order_by(TrainingLog.round_id, TrainingLog.step, TrainingLog.id)):
            x += 1
            if log.round_id != last_round:
                starts.append((x, number[log.round_id]))
                last_round = log.round_id
            ppo.append(PpoPoint(round_number=number[log.round_id], step=log.step, x=x,
                                metrics={k: float(v) for k, v in (log.metrics or {}).items()
                                         if isinstance(v, (int, float)) and not isinstance(v, bool)}))
    return ModelsPage(versions=versions, rewards=rewards, ppo=ppo, round_starts=starts, latest_rm=latest_rm,
                      warnings=warnings)
