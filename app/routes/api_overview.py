"""Admin statistics over the JSON API: the dashboard's overview and per-continuation BWS scores."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.deps import ApiAdmin, DatabaseDep
from app.routes.responses import error_responses
from app.services import stats
from app.services.stats import ContinuationScore, Overview
from app.validation import DbId

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], responses=error_responses(401, 403, 503))


@router.get("/overview", response_model=Overview)
def overview(user: ApiAdmin, database: DatabaseDep):
    """Counts, batch progress, judgements per hour (last 24 h), annotators with consensus agreement,
    split-half reliability of BWS scores, and rating means with Krippendorff's alpha."""
    return stats.overview(database)


@router.get("/scores", response_model=list[ContinuationScore], responses=error_responses(422))
def scores(user: ApiAdmin, database: DatabaseDep,
           limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
           prompt_id: Annotated[DbId | None, Query()] = None):
    """Every judged continuation's counting and Bradley-Terry score, best first."""
    return stats.bws_scores(database, limit=limit, prompt_id=prompt_id)
