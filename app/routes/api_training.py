"""Admin API for the trainer: ask for a round, see what it is doing, read a round's metrics."""

from typing import Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from app.deps import ApiAdmin, DatabaseDep, SettingsDep
from app.routes.responses import error_responses
from app.services import training
from app.services.training import RoundView, TrainerStatus
from app.validation import DbId

router = APIRouter(prefix="/api/v1/admin/training", tags=["admin", "training"], responses=error_responses(401, 403, 503))


class RoundRequest(BaseModel):
    algorithm: Literal["ppo", "alol", "dpo"] | None = None  # None: the trainer's configured default
    bakeoff: list[Literal["ppo", "alol", "dpo"]] | None = Field(None, min_length=2)  # a bake-off instead
    bakeoff_required: int = Field(2, ge=1, le=100)  # evaluators per story in the bake-off's blind campaign


@router.post("/rounds", response_model=RoundView, status_code=201, responses=error_responses(409, 422))
def request_round(_: ApiAdmin, database: DatabaseDep, settings: SettingsDep, body: RoundRequest | None = Body(None)):
    """Queue a training round (optionally with its algorithm, or a bake-off of several); the trainer
    process picks it up at its next poll. `warning` is set when the round would train on fewer new
    judgements than trainer_min_new_judgements (it is queued all the same)."""
    body = body or RoundRequest()
    return training.request_round(database, trigger="admin", algorithm=body.algorithm, bakeoff=body.bakeoff,
                                  bakeoff_required=body.bakeoff_required,
                                  min_new_judgements=settings.trainer_min_new_judgements)


@router.get("/status", response_model=TrainerStatus)
def status(_: ApiAdmin, database: DatabaseDep, settings: SettingsDep):
    """Whether a trainer is alive, the current round (phase, step of total, ETA), recent history, the
    newest round's failure (`failed`, with what to do) and the new judgements a round now would train on."""
    return training.trainer_status(database, min_new_judgements=settings.trainer_min_new_judgements)


@router.get("/rounds/{round_id}/logs", responses=error_responses(404, 422))
def round_logs(round_id: DbId, _: ApiAdmin, database: DatabaseDep) -> list[dict]:
    """Per-step metrics of a round: PPO score, KL, losses, clip fraction, entropy, length; reward accuracy."""
    return training.round_logs(database, round_id)
