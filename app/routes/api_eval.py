"""Admin JSON API for evaluation campaigns: create, list, results (also as CSV)."""

from fastapi import APIRouter, Response

from app.deps import ApiAdmin, DatabaseDep
from app.routes.responses import csv_download, error_responses
from app.services import evaluation
from app.services.evaluation import CampaignCreate, CampaignInfo, Results
from app.validation import DbId

router = APIRouter(prefix="/api/v1/admin/campaigns", tags=["evaluation"], responses=error_responses(401, 403, 503))


@router.post("", response_model=CampaignInfo, status_code=201, responses=error_responses(404, 413, 422))
def create_campaign(body: CampaignCreate, user: ApiAdmin, database: DatabaseDep):
    """Create a blind evaluation campaign. It opens at once when every (version, prompt) has a continuation;
    otherwise it waits ("waiting_for_generation") until the trainer has written the missing ones."""
    with database.write() as db:
        campaign_id = evaluation.create_campaign(db, body).id
    with database.read() as db:
        return evaluation.get_campaign(db, campaign_id)


@router.get("", response_model=list[CampaignInfo])
def list_campaigns(user: ApiAdmin, database: DatabaseDep):
    with database.read() as db:
        return evaluation.list_campaigns(db)


@router.get("/{campaign_id}", response_model=CampaignInfo, responses=error_responses(404, 422))
def get_campaign(campaign_id: DbId, user: ApiAdmin, database: DatabaseDep):
    with database.read() as db:
        return evaluation.get_campaign(db, campaign_id)


@router.get("/{campaign_id}/results", response_model=Results, responses=error_responses(404, 422))
def results(campaign_id: DbId, user: ApiAdmin, database: DatabaseDep):
    """Per version and dimension mean with 95 % bootstrap CI, paired Wilcoxon comparisons, Krippendorff's alpha."""
    return evaluation.results(database, campaign_id)


@router.get("/{campaign_id}/results.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}}, **error_responses(404, 422)})
def results_csv(campaign_id: DbId, user: ApiAdmin, database: DatabaseDep):
    return csv_download(evaluation.results_csv(evaluation.results(database, campaign_id)),
                        evaluation.results_csv_filename(campaign_id))
