"""The web side of the trainer: ask for a round, see what the trainer is doing and what it did.

The web process never imports torch: it only reads and writes the training tables that the trainer
process (trainer/loop.py) polls and updates.

ETA of a whole round (round_eta): the remaining time of the current phase from its progress (elapsed
time per step times the steps left), plus, for every phase of the round's plan still to come, how long
that phase took last time: per phase, in the newest finished round of the same kind that ran it (the
trainer logs one training_log row per finished phase, phase "timing", {"phase": name, "seconds": s}).
Round 0 runs base policy [, sft], generate, queue, metrics; every later round reward model, ppo,
generate, queue, metrics, so a later round learns from later rounds (and, for the phases round 0 also
runs, from round 0 when there is nothing newer). A phase with no progress yet counts its last duration
less the time already spent in it. When a phase still to come was never timed there is no estimate.
"""

import math
from collections import defaultdict
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import func, select

from app.db import Database
from app.models import Batch, BwsJudgement, ModelVersion, TrainerLease, TrainingLog, TrainingRound, utcnow
from app.services import model_versions
from app.services.gold import usable
from app.services.errors import Conflict, Invalid, NotFound
from app.services.model_versions import VersionWarning
from app.services.round_numbers import round_number, round_numbers
from app.words import plural

TRAINER_LEASE = "trainer"
LEASE_STALE_SECONDS = 90  # a trainer that has not renewed its lease for this long is presumed dead
PHASES = ("base policy", "sft", "base generate", "reward model", "ppo", "alol", "dpo", "generate", "queue",
          "metrics")  # in round order
FIRST_ROUND_PHASES = frozenset({"base policy", "sft", "base generate"})  # only while there is no base policy yet
FIRST_ROUND_PLAN = ("base policy", "sft", "base generate", "generate", "queue", "metrics")  # round 0: the base writes
LATER_ROUND_PLAN = ("reward model", "ppo", "generate", "queue", "metrics")
OPTIONAL_PHASES = frozenset({"sft", "base generate"})  # left out of the ETA when never timed
TIMING_PHASE = "timing"  # training_log rows with {"phase": name, "seconds": duration} of a finished phase
ROUND_ALGORITHMS = ("ppo", "alol", "dpo")  # what a round can train with (trainer/rounds.policy_phase)
BAKEOFF = "bakeoff"  # a round that trains one policy per chosen algorithm and opens a blind campaign over them
TRIGGERS = {"base": "the base policy (round 0 writes the first stories; no judgements needed)",
            "auto": "automatic (enough new judgements)", "admin": "an admin (Start a round now)",
            "cli": "command line (storyloop train once)"}
PREVIOUS_ROUNDS = 10  # finished rounds searched for phase durations
CHART_POINTS = 150  # points kept per metric series sent to the page (evenly thinned, last one kept)
CHART_METRICS = 8  # metric series shown per phase
# A round on fewer new judgements than this is warned about, before and after (Settings.trainer_min_new_judgements,
# what an automatic round waits for under the "any" trigger; this is its default, for callers without Settings).
DEFAULT_MIN_NEW_JUDGEMENTS = 30
# What the trainer page calls each logged metric (the keys trainer/ reporters log); others get a readable form
METRIC_LABELS = {
    # reward model (trainer/reward_model.py, rounds.train_reward_phase)
    "loss": "training loss", "train_loss": "final training loss", "train_pairs": "training pairs",
    "train_pairs_within_max_length": "training pairs within the length limit", "held_out_pairs": "held-out pairs",
    "train_accuracy": "training accuracy", "held_out_accuracy": "held-out accuracy",
    "new_pairs": "pairs from new judgements", "warm_start_from": "warm start from version", "judgements": "judgements",
    "last_judgement_id": "newest judgement id",
    # policy updates (trainer/ppo.py, alol.py, dpo.py)
    "score": "reward-model score", "normalized_score": "normalised score", "kl": "KL to the reference (nats)",
    "approx_kl": "approximate KL of an update", "clipfrac": "clipped fraction", "vf_clipfrac": "value clipped fraction",
    "policy_loss": "policy loss", "value_loss": "value loss", "entropy": "entropy (nats per token)",
    "kl_coef": "KL coefficient β", "response_length": "story length (tokens)", "eos_fraction": "share of stories that end",
    "non_score_reward": "KL penalty in the reward", "value_mean": "mean value", "return_mean": "mean return",
    "log_ratio": "log-ratio to the start policy", "grad_norm": "gradient norm", "time_s": "seconds per step",
    "mean_reward": "mean reward", "mean_value": "mean value", "mean_positive_advantage": "mean positive advantage",
    "positive_rows": "stories with a positive advantage", "rows": "stories", "value_held_out_mse": "value head held-out MSE",
    "value_held_out_mse_first": "value head held-out MSE, first epoch", "value_best_epoch": "value head best epoch",
    "value_rows": "value head training stories", "value_held_out_rows": "value head held-out stories", "pairs": "pairs",
    "steps": "steps", "lr": "learning rate", "loss_ema": "training loss (moving average)", "seconds": "seconds",
}
# Which part of a round a phase's metrics belong to: the page groups its charts under these headings
PHASE_GROUPS = {"base policy": "Base policy", "sft": "Base policy", "base generate": "Generation",
                "reward model": "Reward model", "ppo": "Policy update (PPO)",
                "alol": "Policy update (A-LoL)", "dpo": "Policy update (DPO)", "generate": "Generation",
                "queue": "Generation", "metrics": "After the round"}


def metric_label(key: str) -> str:
    """'kl_coef' -> 'KL coefficient β'; an unknown key reads as words: 'foo_bar/baz' -> 'foo bar / baz'."""
    return METRIC_LABELS.get(key) or key.replace("_", " ").replace("/", " / ").strip() or key


def phase_group(phase: str) -> str:
    return PHASE_GROUPS.get(phase) or phase.replace("_", " ").capitalize() or "Other"


# A failed round's advice, by the phase it failed in (FAILED_ADVICE_DEFAULT for the others).
FAILED_ADVICE = {
    "base policy": "The base policy could not be made or loaded: check STORYLOOP_TRAINER_BASE_POLICY (a hub id "
                   "needs the model hub reachable from the trainer; a local folder or \"bootstrap\", which trains "
                   "one offline, need no network), restart the trainer, then press Start a round now.",
}
FAILED_ADVICE_DEFAULT = ("Fix the cause the error names (the trainer's log has the whole traceback), then press Start "
                         "a round now. Automatic rounds do not retry a failed round until new judgements arrive.")


class RoundView(BaseModel):
    id: int
    number: int  # round 0 is the base's (app/services/round_numbers.py)
    status: str
    trigger: str
    phase: str
    step: int
    total_steps: int
    eta_seconds: float | None  # left in the current phase, from its progress
    round_eta_seconds: float | None = None  # left in the whole round (see the module docstring)
    trigger_label: str = ""
    judgements_used: int
    new_judgements: int | None = None  # judgements its reward model had that no earlier finished round used
    warning: str | None = None  # e.g. it trained (or will train) on too few new judgements
    reward_version_id: int | None
    policy_version_id: int | None
    batch_id: int | None
    reward_version_name: str | None = None  # the names the history table shows (linked) instead of bare ids
    policy_version_name: str | None = None
    batch_name: str | None = None
    algorithm: str | None = None  # None: not started yet, the trainer's configured default will be used
    bakeoff: dict | None = None  # a bake-off's plan: algorithms, the versions trained, its campaign
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None = None
    phase_seconds: dict[str, float] = {}  # finished phases of this round and how long each took


class FailedRound(BaseModel):
    """The newest round, when it failed: stated at the top of the trainer page with what to do."""

    id: int
    number: int
    phase: str  # the phase it failed in
    error: str  # the error's first line (the whole error, traceback included, is the round's `error`)
    advice: str
    finished_at: datetime | None


class NewJudgements(BaseModel):
    """Judgements the next round's reward model would see that no finished round used, against the
    threshold below which a round is warned about (Settings.trainer_min_new_judgements)."""

    count: int
    threshold: int
    warning: str | None  # set when a round now would train on fewer than `threshold` new judgements


class TrainerStatus(BaseModel):
    trainer_alive: bool
    trainer_holder: str | None
    heartbeat_at: datetime | None
    current: RoundView | None
    history: list[RoundView]
    previous_phase_seconds: dict[str, float] = {}  # the previous finished round's phase durations (for the ETA)
    failed: FailedRound | None = None  # the newest round, when it failed
    new_judgements: NewJudgements | None = None  # None until a base policy exists (round 0 needs no judgements)


class MetricSeries(BaseModel):
    phase: str
    metric: str  # the logged key
    label: str = ""  # what the page calls it (metric_label)
    group: str = ""  # the part of the round it belongs to (phase_group): reward model, policy update, ...
    points: list[tuple[int, float]]  # (step, value), thinned to CHART_POINTS


class RoundMetrics(BaseModel):
    round_id: int
    round_number: int
    rows: int  # log rows so far: the page redraws its charts when this changes
    series: list[MetricSeries]


class KlPoint(BaseModel):
    round_id: int
    round_number: int
    policy_version_id: int
    policy_name: str
    kl_to_reference: float | None  # nats per story, of the round's policy to the fixed base reference


class TrainerPage(TrainerStatus):
    """Everything the trainer page shows and polls: status, the shown round's metrics, KL per round, warnings."""

    round_metrics: RoundMetrics | None
    kl_per_round: list[KlPoint]
    warnings: list[VersionWarning]


def _eta(r: TrainingRound, now: datetime) -> float | None:
    if r.status != "running" or not r.phase_started_at or r.step <= 0 or r.total_steps <= r.step:
        return None
    elapsed = (now - r.phase_started_at).total_seconds()
    return elapsed / r.step * (r.total_steps - r.step)


def round_plan(timed: set[str], phase: str, first: bool) -> tuple[str, ...]:
    """The phases a round runs, in order: FIRST_ROUND_PLAN for the first round (no round finished before
    it, or it is in or past a base-policy phase), else LATER_ROUND_PLAN."""
    if first or phase in FIRST_ROUND_PHASES or timed & FIRST_ROUND_PHASES:
        return FIRST_ROUND_PLAN
    return LATER_ROUND_PLAN


def previous_durations(finished: list[dict[str, float]], plan: tuple[str, ...]) -> dict[str, float]:
    """Per phase of `plan`, how long it took in the newest finished round of the same kind that ran it (else in
    the newest finished round that ran it at all: round 1 learns generate/queue/metrics from round 0).
    `finished`: the phase timings of finished rounds, newest first."""
    first = plan == FIRST_ROUND_PLAN
    out: dict[str, float] = {}
    for same_kind_only in (True, False):
        for timings in finished:
            if same_kind_only and bool(set(timings) & FIRST_ROUND_PHASES) != first:
                continue
            for name, seconds in timings.items():
                if name in plan:
                    out.setdefault(name, seconds)
    return {name: out[name] for name in plan if name in out}


def round_eta(phase: str, phase_eta: float | None, phase_elapsed: float | None, done: dict[str, float],
              previous: dict[str, float], plan: tuple[str, ...] = ()) -> float | None:
    """Seconds left in a running round: the current phase's progress-based estimate (`phase_eta`; without
    one, its previous duration less `phase_elapsed`), plus the previous duration of every phase of `plan`
    still to come. None when a phase still to come (or the current one, without progress) was never timed:
    a guess without it would not be within a factor of two."""
    plan = plan or LATER_ROUND_PLAN
    if phase in plan:
        remaining = list(plan[plan.index(phase) + 1:])
        if phase_eta is not None:
            current = phase_eta
        elif phase in previous:
            current = max(previous[phase] - (phase_elapsed or 0.0), 0.0)
        else:
            return None
    else:  # not started a phase yet, or one this page does not know: the plan's phases not done yet
        remaining = [name for name in plan if name not in done]
        current = phase_eta or 0.0
    remaining = [name for name in remaining if name in previous or name not in OPTIONAL_PHASES]
    if any(name not in previous for name in remaining):
        return None
    return current + sum(previous[name] for name in remaining)


def trigger_label(trigger: str) -> str:
    """'auto' -> 'automatic (enough new judgements)'; 'auto: 34 new judgements' keeps what counted."""
    key, _, detail = (trigger or "").partition(":")
    label = TRIGGERS.get(key.strip(), key.strip() or "unknown")
    return f"{label}: {detail.strip()}" if detail.strip() else label


def _timings(rows) -> dict[int, dict[str, float]]:
    """{round id: {phase: seconds}} from timing rows (round_id, metrics); a repeated phase keeps the last."""
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for round_id, metrics in rows:
        name, seconds = (metrics or {}).get("phase"), (metrics or {}).get("seconds")
        if isinstance(name, str) and isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0:
            out[round_id][name] = float(seconds)
    return out


def _view(r: TrainingRound, number: int, now: datetime, done: dict[str, float] | None = None,
          previous: dict[str, float] | None = None, plan: tuple[str, ...] = ()) -> RoundView:
    eta = _eta(r, now)
    elapsed = (now - r.phase_started_at).total_seconds() if r.phase_started_at else None
    total = None
    if r.started_at and r.finished_at:
        total = (r.finished_at - r.started_at).total_seconds()
    whole = round_eta(r.phase, eta, elapsed, done or {}, previous or {}, plan) if r.status == "running" else None
    return RoundView(
        id=r.id, number=number, status=r.status, trigger=r.trigger, phase=r.phase, step=r.step, total_steps=r.total_steps,
        eta_seconds=eta, round_eta_seconds=whole, trigger_label=trigger_label(r.trigger),
        judgements_used=r.judgements_used, reward_version_id=r.reward_version_id,
        policy_version_id=r.policy_version_id, batch_id=r.batch_id, algorithm=r.algorithm, bakeoff=r.bakeoff,
        error=r.error, created_at=r.created_at,
        started_at=r.started_at, finished_at=r.finished_at, duration_seconds=total, phase_seconds=done or {},
    )


def judgement_counts(db) -> tuple[int, int]:
    """(usable judgements now, judgements the last finished round used): what the trainer's automatic
    trigger and the few-judgements warning compare."""
    now = db.scalar(select(func.count()).select_from(BwsJudgement).where(usable(BwsJudgement))) or 0
    used = db.scalar(select(func.max(TrainingRound.judgements_used)).where(TrainingRound.status == "done")) or 0
    return now, used


def few_judgements_warning(new: int, threshold: int, done: bool = False) -> str | None:
    """The warning for a round on `new` new judgements, before it runs (done=False) or after; None when enough."""
    if new >= threshold:
        return None
    if done:
        counted = f"only {plural(new, 'new judgement')}" if new else "no new judgements"
        return (f"Trained on {counted} (fewer than {threshold}): its reward model learned little that is "
                "new and may score no better than chance; let annotators judge this round's stories before the next.")
    counted = f"Only {plural(new, 'new judgement')}" if new else "No new judgements"
    return (f"{counted} since the last finished round (fewer than {threshold}): a round now trains its "
            "reward model on little that is new, which may score no better than chance. Waiting for more is better.")


def _new_judgements(db, threshold: int) -> NewJudgements | None:
    """None while no round has finished: the next round is round 0, whose base writes without judgements."""
    if db.scalar(select(TrainingRound.id).where(TrainingRound.status == "done").limit(1)) is None:
        return None
    now, used = judgement_counts(db)
    new = max(now - used, 0)
    return NewJudgements(count=new, threshold=threshold, warning=few_judgements_warning(new, threshold))


def _failed(view: RoundView) -> FailedRound:
    first_line = (view.error or "").strip().splitlines()[0] if (view.error or "").strip() else "no error was recorded"
    return FailedRound(id=view.id, number=view.number, phase=view.phase, error=first_line,
                       advice=FAILED_ADVICE.get(view.phase, FAILED_ADVICE_DEFAULT), finished_at=view.finished_at)


def request_round(database: Database, trigger: str = "admin", algorithm: str | None = None,
                  bakeoff: list[str] | None = None, bakeoff_required: int = 2,
                  min_new_judgements: int = DEFAULT_MIN_NEW_JUDGEMENTS) -> RoundView:
    """Queue a round for the trainer; refuses while one is already queued or running. `algorithm`: one of
    ROUND_ALGORITHMS (None: the trainer's configured default). `bakeoff`: two or more of them instead, for
    a bake-off round whose blind campaign asks `bakeoff_required` evaluators per story. The returned round's
    `warning` says when it will train on fewer than `min_new_judgements` new judgements (queued all the same)."""
    if algorithm is not None and algorithm not in ROUND_ALGORITHMS:
        raise Invalid(f"algorithm must be one of {', '.join(ROUND_ALGORITHMS)}")
    plan = None
    if bakeoff is not None:
        chosen = list(dict.fromkeys(bakeoff))
        if len(chosen) < 2 or any(a not in ROUND_ALGORITHMS for a in chosen):
            raise Invalid(f"bakeoff: pick two or more different algorithms of {', '.join(ROUND_ALGORITHMS)}")
        if algorithm is not None:
            raise Invalid("algorithm: give either one algorithm or a bake-off's algorithms, not both")
        algorithm, plan = BAKEOFF, {"algorithms": chosen, "policies": {}, "required": bakeoff_required}
    with database.write() as db:
        pending = db.scalar(select(TrainingRound).where(TrainingRound.status.in_(("requested", "running"))))
        if pending is not None:
            raise Conflict(f"round {round_number(db, pending.id)} is already {pending.status}")
        new_judgements = _new_judgements(db, min_new_judgements)
        r = TrainingRound(status="requested", trigger=trigger, algorithm=algorithm, bakeoff=plan)
        db.add(r)
        db.flush()
        view = _view(r, round_number(db, r.id), utcnow())
        view.warning = new_judgements.warning if new_judgements else None
        return view


def _name_outputs(db, views: list[RoundView]) -> None:
    """Fills in the names of the rounds' reward models, policies and batches."""
    version_ids = ({v.reward_version_id for v in views} | {v.policy_version_id for v in views}) - {None}
    batch_ids = {v.batch_id for v in views} - {None}
    versions = dict(db.execute(select(ModelVersion.id, ModelVersion.name).where(ModelVersion.id.in_(version_ids))).all())
    batches = dict(db.execute(select(Batch.id, Batch.name).where(Batch.id.in_(batch_ids))).all())
    for v in views:
        v.reward_version_name = versions.get(v.reward_version_id)
        v.policy_version_name = versions.get(v.policy_version_id)
        v.batch_name = batches.get(v.batch_id)


def _trained_on(db, rounds: list[TrainingRound], threshold: int) -> dict[int, tuple[int, str | None]]:
    """{round id: (new judgements, warning)} for the rounds that trained a reward model: the judgements
    it used beyond those of the newest finished round before it (judgements_used counts all it read)."""
    done = db.execute(select(TrainingRound.id, TrainingRound.judgements_used)
                      .where(TrainingRound.status == "done").order_by(TrainingRound.id)).all()
    out = {}
    for r in rounds:
        if r.reward_version_id is None:
            continue
        before = max((used for round_id, used in done if round_id < r.id), default=0)
        new = max(r.judgements_used - before, 0)
        out[r.id] = (new, few_judgements_warning(new, threshold, done=True))
    return out


def _status(db, now: datetime, history: int, min_new_judgements: int = DEFAULT_MIN_NEW_JUDGEMENTS) -> TrainerStatus:
    lease = db.get(TrainerLease, TRAINER_LEASE)
    rounds = db.scalars(select(TrainingRound).order_by(TrainingRound.id.desc()).limit(history)).all()
    alive = lease is not None and lease.heartbeat_at > now - timedelta(seconds=LEASE_STALE_SECONDS)
    current = next((r for r in rounds if r.status in ("requested", "running")), None)
    # the round the page details: the running one, else the newest that started
    shown = current if current is not None and current.status == "running" else \
        next((r for r in rounds if r.status != "requested"), None)
    earlier = select(TrainingRound.id).where(TrainingRound.status == "done")
    if shown is not None:
        earlier = earlier.where(TrainingRound.id < shown.id)
    before = db.scalars(earlier.order_by(TrainingRound.id.desc()).limit(PREVIOUS_ROUNDS)).all()
    wanted = {r.id for r in rounds} | set(before)
    timings = _timings(db.execute(select(TrainingLog.round_id, TrainingLog.metrics).where(
        TrainingLog.phase == TIMING_PHASE, TrainingLog.round_id.in_(wanted)).order_by(TrainingLog.id)))
    previous, plan = {}, LATER_ROUND_PLAN
    if shown is not None:
        plan = round_plan(set(timings.get(shown.id, {})), shown.phase, first=not before)
        if shown.algorithm in ROUND_ALGORITHMS:  # its policy phase is named after its algorithm
            plan = tuple(shown.algorithm if name == "ppo" else name for name in plan)
        previous = previous_durations([timings[i] for i in before if i in timings], plan)
    numbers = round_numbers(db)
    views = {r.id: _view(r, numbers[r.id], now, timings.get(r.id), previous, plan) if r is shown
             else _view(r, numbers[r.id], now, timings.get(r.id)) for r in rounds}
    _name_outputs(db, list(views.values()))
    new_judgements = _new_judgements(db, min_new_judgements)
    for round_id, (new, warning) in _trained_on(db, rounds, min_new_judgements).items():
        views[round_id].new_judgements, views[round_id].warning = new, warning
    if current is not None and current.reward_version_id is None and new_judgements is not None:
        views[current.id].warning = new_judgements.warning  # what its reward model is about to train on
    newest = views[rounds[0].id] if rounds else None
    return TrainerStatus(
        trainer_alive=alive, trainer_holder=lease.holder if lease else None,
        heartbeat_at=lease.heartbeat_at if lease else None,
        current=views[current.id] if current else None, history=[views[r.id] for r in rounds],
        previous_phase_seconds=previous,
        failed=_failed(newest) if newest is not None and newest.status == "failed" else None,
        new_judgements=new_judgements,
    )


def trainer_status(database: Database, history: int = 20,
                   min_new_judgements: int = DEFAULT_MIN_NEW_JUDGEMENTS) -> TrainerStatus:
    with database.read() as db:
        return _status(db, utcnow(), history, min_new_judgements)


def _thin(points: list[tuple[int, float]], keep: int = CHART_POINTS) -> list[tuple[int, float]]:
    if len(points) <= keep:
        return points
    stride = len(points) / (keep - 1)
    return [points[int(i * stride)] for i in range(keep - 1)] + [points[-1]]


def _round_metrics(db, round_id: int) -> RoundMetrics:
    """A round's logged metrics as numeric series per (phase, metric), timing rows left out."""
    rows = db.execute(select(TrainingLog.phase, TrainingLog.step, TrainingLog.metrics)
                      .where(TrainingLog.round_id == round_id, TrainingLog.phase != TIMING_PHASE)
                      .order_by(TrainingLog.id)).all()
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    per_phase: dict[str, int] = defaultdict(int)
    for phase, step, metrics in rows:
        for key, value in (metrics or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if (phase, key) not in series:
                if per_phase[phase] >= CHART_METRICS:
                    continue
                per_phase[phase] += 1
                series[(phase, key)] = []
            series[(phase, key)].append((int(step), float(value)))
    order = {p: i for i, p in enumerate(PHASES)}
    ordered = sorted(series.items(), key=lambda kv: order.get(kv[0][0], len(PHASES)))
    return RoundMetrics(round_id=round_id, round_number=round_number(db, round_id), rows=len(rows),
                        series=[MetricSeries(phase=p, metric=m, label=metric_label(m), group=phase_group(p), points=_thin(pts))
                                for (p, m), pts in ordered])


def kl_per_round(db) -> list[KlPoint]:
    """Per finished round (oldest first), its policy's KL to the fixed base reference (metrics["auto"])."""
    rows = db.execute(select(TrainingRound.id, ModelVersion.id, ModelVersion.name, ModelVersion.metrics)
                      .join(ModelVersion, ModelVersion.id == TrainingRound.policy_version_id)
                      .order_by(TrainingRound.id)).all()
    out, numbers = [], round_numbers(db)
    for round_id, version_id, name, metrics in rows:
        kl = ((metrics or {}).get("auto") or {}).get("kl_to_reference")
        ok = isinstance(kl, (int, float)) and not isinstance(kl, bool) and math.isfinite(kl)
        out.append(KlPoint(round_id=round_id, round_number=numbers[round_id], policy_version_id=version_id, policy_name=name,
                           kl_to_reference=float(kl) if ok else None))
    return out


def trainer_page(database: Database, history: int = 20,
                 min_new_judgements: int = DEFAULT_MIN_NEW_JUDGEMENTS) -> TrainerPage:
    """The trainer page and its polling: status, the metrics of the current round (else the latest that
    started), KL to the reference per round, and the version warnings."""
    with database.read() as db:
        status = _status(db, utcnow(), history, min_new_judgements)
        shown = status.current if status.current and status.current.status == "running" else \
            next((r for r in status.history if r.status != "requested"), None)
        metrics = _round_metrics(db, shown.id) if shown else None
        kl = kl_per_round(db)
        warnings = model_versions.version_warnings(db)
    return TrainerPage(**status.model_dump(), round_metrics=metrics, kl_per_round=kl, warnings=warnings)


def round_logs(database: Database, round_id: int) -> list[dict]:
    """A round's log rows in order; a timing row's own "phase" (the phase it timed) is kept as "timed_phase"."""
    with database.read() as db:
        if db.get(TrainingRound, round_id) is None:
            raise NotFound(f"no training round {round_id}")
        rows = db.scalars(select(TrainingLog).where(TrainingLog.round_id == round_id).order_by(TrainingLog.id)).all()
    out = []
    for r in rows:
        metrics = dict(r.metrics or {})
        if r.phase == TIMING_PHASE and "phase" in metrics:
            metrics["timed_phase"] = metrics.pop("phase")
        out.append({**metrics, "phase": r.phase, "step": r.step})
    return out
