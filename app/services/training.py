"""The web side of the trainer: ask for a round, see what the trainer is doing and what it did.

The web process never imports torch: it only reads and writes the training tables that the trainer
process (trainer/loop.py) polls and updates.
"""

from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import select

from app.db import Database
from app.models import TrainerLease, TrainingLog, TrainingRound, utcnow
from app.services.errors import Conflict

TRAINER_LEASE = "trainer"
LEASE_STALE_SECONDS = 90  # a trainer that has not renewed its lease for this long is presumed dead


class RoundView(BaseModel):
    id: int
    status: str
    trigger: str
    phase: str
    step: int
    total_steps: int
    eta_seconds: float | None
    judgements_used: int
    reward_version_id: int | None
    policy_version_id: int | None
    batch_id: int | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TrainerStatus(BaseModel):
    trainer_alive: bool
    trainer_holder: str | None
    heartbeat_at: datetime | None
    current: RoundView | None
    history: list[RoundView]


def _eta(r: TrainingRound, now: datetime) -> float | None:
    if r.status != "running" or not r.phase_started_at or r.step <= 0 or r.total_steps <= r.step:
        return None
    elapsed = (now - r.phase_started_at).total_seconds()
    return elapsed / r.step * (r.total_steps - r.step)


def _view(r: TrainingRound, now: datetime) -> RoundView:
    return RoundView(
        id=r.id, status=r.status, trigger=r.trigger, phase=r.phase, step=r.step, total_steps=r.total_steps,
        eta_seconds=_eta(r, now), judgements_used=r.judgements_used, reward_version_id=r.reward_version_id,
        policy_version_id=r.policy_version_id, batch_id=r.batch_id, error=r.error, created_at=r.created_at,
        started_at=r.started_at, finished_at=r.finished_at,
    )


def request_round(database: Database, trigger: str = "admin") -> RoundView:
    """Queue a round for the trainer; refuses while one is already queued or running."""
    with database.write() as db:
        pending = db.scalar(select(TrainingRound).where(TrainingRound.status.in_(("requested", "running"))))
        if pending is not None:
            raise Conflict(f"round {pending.id} is already {pending.status}")
        r = TrainingRound(status="requested", trigger=trigger)
        db.add(r)
        db.flush()
        return _view(r, utcnow())


def trainer_status(database: Database, history: int = 20) -> TrainerStatus:
    now = utcnow()
    with database.read() as db:
        lease = db.get(TrainerLease, TRAINER_LEASE)
        rounds = db.scalars(select(TrainingRound).order_by(TrainingRound.id.desc()).limit(history)).all()
    alive = lease is not None and lease.heartbeat_at > now - timedelta(seconds=LEASE_STALE_SECONDS)
    current = next((r for r in rounds if r.status in ("requested", "running")), None)
    return TrainerStatus(
        trainer_alive=alive, trainer_holder=lease.holder if lease else None,
        heartbeat_at=lease.heartbeat_at if lease else None,
        current=_view(current, now) if current else None, history=[_view(r, now) for r in rounds],
    )


def round_logs(database: Database, round_id: int) -> list[dict]:
    with database.read() as db:
        rows = db.scalars(select(TrainingLog).where(TrainingLog.round_id == round_id).order_by(TrainingLog.id)).all()
    return [{"phase": r.phase, "step": r.step, **r.metrics} for r in rows]
