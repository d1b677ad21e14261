"""Admin JSON API for gold checks: settings, gold items, each annotator's gold accuracy, and leaving an
annotator's judgements out of exports and training (app/services/gold.py). Admins only."""

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from app.deps import ApiAdmin, DatabaseDep, api_admin
from app.routes.responses import error_responses
from app.services import gold
from app.validation import BoundedText, DbId

router = APIRouter(prefix="/api/v1/admin", tags=["gold checks"], dependencies=[Depends(api_admin)],
                   responses=error_responses(401, 403, 503))


class ExclusionRequest(BaseModel):
    note: BoundedText(gold.NOTE_MAX) = ""


class ExclusionOut(BaseModel):
    user_id: int
    excluded: bool


@router.get("/gold/settings", response_model=gold.GoldSettings)
def get_gold_settings(database: DatabaseDep):
    """The gold rate (share of leases that are gold checks) and when annotators are flagged."""
    with database.read() as db:
        return gold.get_settings(db)


@router.put("/gold/settings", response_model=gold.GoldSettings, responses=error_responses(422))
def put_gold_settings(body: gold.GoldSettings, database: DatabaseDep):
    return gold.set_settings(database, body)


@router.get("/gold/items", response_model=list[gold.GoldItemView])
def list_gold_items(database: DatabaseDep):
    with database.read() as db:
        return gold.list_items(db)


@router.put("/gold/items/{task_id}", response_model=gold.GoldItemView, responses=error_responses(404, 422))
def mark_gold(task_id: DbId, body: gold.GoldAnswer, database: DatabaseDep):
    """Makes a task gold: a BWS tuple with best_id and/or worst_id, a rating item with rating_ranges."""
    with database.write() as db:
        gold.mark(db, task_id, body)
    gold.forget_serving(database)
    with database.read() as db:
        return next(item for item in gold.list_items(db) if item.task_id == task_id)


@router.delete("/gold/items/{task_id}", status_code=204, responses=error_responses(404, 422))
def unmark_gold(task_id: DbId, database: DatabaseDep):
    """Makes a gold task a normal one again."""
    with database.write() as db:
        gold.unmark(db, task_id)
    gold.forget_serving(database)
    return Response(status_code=204)


@router.get("/gold/annotators", response_model=gold.GoldReport)
def gold_annotators(database: DatabaseDep):
    """Each annotator's gold accuracy, median time per task, flag and exclusion."""
    return gold.annotator_report(database)


@router.put("/users/{user_id}/exclusion", response_model=ExclusionOut, responses=error_responses(404, 422))
def exclude_annotator(user_id: DbId, body: ExclusionRequest, user: ApiAdmin, database: DatabaseDep):
    """Leaves this user's judgements out of exports and training (until DELETE)."""
    with database.write() as db:
        gold.exclude(db, user_id, user, body.note)
    return ExclusionOut(user_id=user_id, excluded=True)


@router.delete("/users/{user_id}/exclusion", response_model=ExclusionOut, responses=error_responses(404, 422))
def include_annotator(user_id: DbId, database: DatabaseDep):
    """Takes this user's judgements into exports and training again."""
    with database.write() as db:
        gold.include(db, user_id)
    return ExclusionOut(user_id=user_id, excluded=False)
