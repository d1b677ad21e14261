"""Admin API for the trainer: ask for a round, see what it is doing, read a round's metrics."""

from fastapi import APIRouter

from app.deps import ApiAdmin, DatabaseDep
from app.services import training
from app.services.training import RoundView, TrainerStatus

router = APIRouter(prefix="/api/v1/admin/training", tags=["admin", "training"])


@router.post("/rounds", response_model=RoundView, status_code=201)
def request_round(_: ApiAdmin, database: DatabaseDep):
    """Queue a training round; the trainer process picks it up at its next poll."""
    return training.request_round(database, trigger="admin")


@router.get("/status", response_model=TrainerStatus)
def status(_: ApiAdmin, database: DatabaseDep):
    """Whether a trainer is alive, the current round (phase, step of total, ETA) and recent history."""
    return training.trainer_status(database)


@router.get("/rounds/{round_id}/logs")
def round_logs(round_id: int, _: ApiAdmin, database: DatabaseDep) -> list[dict]:
    """Per-step metrics of a round: PPO score, KL, losses, clip fraction, entropy, length; reward accuracy."""
    return training.round_logs(database, round_id)
