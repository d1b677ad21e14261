"""Admin API for the trainer: ask for a round, see what it is doing, read a round's metrics."""

from fastapi import APIRouter

from app.deps import ApiAdmin, DatabaseDep
from app.routes.responses import error_responses
from app.services import training
from app.services.training import RoundView, TrainerStatus
from app.validation import DbId

router = APIRouter(prefix="/api/v1/admin/training", tags=["admin", "training"], responses=error_responses(401, 403, 503))


@router.post("/rounds", response_model=RoundView, status_code=201, responses=error_responses(409))
def request_round(_: ApiAdmin, database: DatabaseDep):
    """Queue a training round; the trainer process picks it up at its next poll."""
    return training.request_round(database, trigger="admin")


@router.get("/status", response_model=TrainerStatus)
def status(_: ApiAdmin, database: DatabaseDep):
    """Whether a trainer is alive, the current round (phase, step of total, ETA) and recent history."""
    return training.trainer_status(database)


@router.get("/rounds/{round_id}/logs", responses=error_responses(422))
def round_logs(round_id: DbId, _: ApiAdmin, database: DatabaseDep) -> list[dict]:
    """Per-step metrics of a round: PPO score, KL, losses, clip fraction, entropy, length; reward accuracy."""
    return training.round_logs(database, round_id)
