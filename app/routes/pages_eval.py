"""Admin pages for evaluation and insight: campaigns and their results, model versions, live status.

Evaluators rate campaign items through the ordinary task pages (/evaluate, /task/{id}: pages_annotate.py),
which never show model versions. Everything here needs an admin session.
"""

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select

from app.deps import Csrf, DatabaseDep, PageAdmin
from app.models import BwsJudgement, Campaign, GenerationRequest, Prompt, Rating, utcnow
from app.services import charts, evaluation, imports, model_versions, training
from app.services.errors import Invalid, ServiceError
from app.routes.responses import csv_download
from app.templating import templates
from app.validation import BoundedText, DbId, DbInt, IdList, parse_id_list

router = APIRouter(prefix="/admin", include_in_schema=False)

DIMENSION_LABELS = {"grammar": "Grammar", "creativity": "Creativity", "consistency": "Consistency",
                    "plot": "Plot coherence", "overall": "Overall (mean of 4)"}


def _render(request: Request, user, template: str, page: str, context: dict[str, Any]):
    return templates.TemplateResponse(request, template, {
        "user": user, "flash": request.session.pop("flash", None), "page": page,
        "dim_labels": DIMENSION_LABELS, **context,
    })


def _flash(request: Request, message: str, kind: str = "ok") -> None:
    request.session["flash"] = {"message": message[:400], "kind": kind}


# ---------------------------------------------------------------- campaigns


@router.get("/campaigns")
def campaigns_page(request: Request, user: PageAdmin, database: DatabaseDep):
    with database.read() as db:
        campaigns = evaluation.list_campaigns(db)
        versions = [v for v in imports.list_model_versions(db) if v.kind in evaluation.VERSION_KINDS]
        prompts = imports.list_prompts(db, limit=200)
    return _render(request, user, "admin/campaigns.html", "campaigns",
                   {"campaigns": campaigns, "versions": versions, "prompts": prompts})


@router.post("/campaigns", dependencies=[Csrf])
def create_campaign(
    request: Request, user: PageAdmin, database: DatabaseDep,
    name: Annotated[BoundedText(200), Form()] = "",
    required: Annotated[int, Form()] = 2,
    seed: Annotated[DbInt, Form()] = 0,
    model_version_ids: Annotated[IdList, Form()] = [],  # noqa: B006 (FastAPI copies defaults)
    prompt_ids: Annotated[IdList, Form()] = [],  # noqa: B006
    prompt_ids_text: Annotated[str, Form(max_length=100_000)] = "",
    first_active: Annotated[DbInt | None, Form(description="also the first N active prompts")] = None,
):
    typed_ids = parse_id_list(prompt_ids_text, "prompt_ids_text")  # a bad id: 422 naming the field
    try:
        if not 1 <= required <= 100:
            raise Invalid("evaluators per item (R) must be between 1 and 100")
        chosen = list(dict.fromkeys(list(prompt_ids) + typed_ids))
        if first_active:
            with database.read() as db:
                chosen += [p for p in db.scalars(select(Prompt.id).where(Prompt.is_active).order_by(Prompt.id)
                                                 .limit(first_active)) if p not in chosen]
        if len(set(model_version_ids)) < 2:
            raise Invalid("pick at least two model versions")
        if not chosen:
            raise Invalid("pick at least one prompt")
        data = evaluation.CampaignCreate(name=name, model_version_ids=model_version_ids, prompt_ids=chosen,
                                         required=required, seed=seed)
        with database.write() as db:
            campaign = evaluation.create_campaign(db, data)
            campaign_id, status = campaign.id, campaign.status
        if status == "open":
            _flash(request, f"Campaign #{campaign_id} is open for evaluators.")
        else:
            _flash(request, f"Campaign #{campaign_id} waits for the trainer to write the missing continuations.")
        return RedirectResponse(f"/admin/campaigns/{campaign_id}", status_code=303)
    except ServiceError as exc:
        _flash(request, f"No campaign created: {exc.message}", "bad")
    return RedirectResponse("/admin/campaigns", status_code=303)


def _ci_svg(res: evaluation.Results):
    rows = [(DIMENSION_LABELS[m.dimension], m.version, m.mean, m.ci_low, m.ci_high) for m in res.means]
    return charts.ci_chart(rows, title=f"Mean rating per dimension and version with {res.confidence:.0%} bootstrap confidence intervals",
                           x_label="mean rating (1 = worst, 5 = best)", x_range=(1, 5),
                           groups=[DIMENSION_LABELS[d] for d in res.dimensions])


@router.get("/campaigns/{campaign_id}")
def campaign_page(request: Request, campaign_id: DbId, user: PageAdmin, database: DatabaseDep):
    res = evaluation.results(database, campaign_id)
    with database.read() as db:
        failed = db.scalars(select(GenerationRequest).where(GenerationRequest.campaign_id == campaign_id,
                                                            GenerationRequest.status == "failed")
                            .order_by(GenerationRequest.id).limit(20)).all()
    table: dict[str, dict[int, evaluation.MeanCI]] = {}
    for m in res.means:
        table.setdefault(m.dimension, {})[m.version_id] = m
    return _render(request, user, "admin/campaign.html", "campaigns",
                   {"r": res, "c": res.campaign, "table": table, "ci_svg": _ci_svg(res), "failed": failed})


@router.post("/campaigns/{campaign_id}/close", dependencies=[Csrf])
def close_campaign(request: Request, campaign_id: DbId, user: PageAdmin, database: DatabaseDep):
    with database.write() as db:
        evaluation.close_campaign(db, campaign_id)
    _flash(request, f"Campaign #{campaign_id} is closed: no more items are handed out.")
    return RedirectResponse(f"/admin/campaigns/{campaign_id}", status_code=303)


@router.get("/campaigns/{campaign_id}/results.csv")
def results_csv(campaign_id: DbId, user: PageAdmin, database: DatabaseDep):
    res = evaluation.results(database, campaign_id)
    return csv_download(evaluation.results_csv(res), evaluation.results_csv_filename(campaign_id))


@router.get("/campaigns/{campaign_id}/results.json")
def results_json(campaign_id: DbId, user: PageAdmin, database: DatabaseDep):
    res = evaluation.results(database, campaign_id)
    return Response(evaluation.results_json(res), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="campaign-{campaign_id}-results.json"'})


# ---------------------------------------------------------------- model versions


def _ppo_charts(page: model_versions.ModelsPage) -> list:
    markers = [(x, f"round {r}") for x, r in page.round_starts]

    def series(name: str, key: str) -> charts.Series:
        points, last_round = [], None
        for p in page.ppo:
            if last_round is not None and p.round_number != last_round:
                points.append((p.x - 0.5, None))  # no line from one round's last step to the next round's first
            points.append((p.x, p.metrics.get(key)))
            last_round = p.round_number
        return charts.Series(name, points)

    return [
        charts.line_chart([series("mean reward-model score", "score")], title="PPO: mean reward-model score per step",
                          x_label="PPO step (all rounds, in order)", y_label="score (reward-model logit)", markers=markers),
        charts.line_chart([series("KL(policy ‖ reference)", "kl")], title="PPO: KL divergence from the reference policy per step",
                          x_label="PPO step (all rounds, in order)", y_label="KL (nats per response)", markers=markers),
        charts.line_chart([series("policy loss", "policy_loss"), series("value loss", "value_loss")],
                          title="PPO: policy and value losses per step", x_label="PPO step (all rounds, in order)",
                          y_label="loss (unitless)", markers=markers),
    ]


@router.get("/models")
def models_page(request: Request, user: PageAdmin, database: DatabaseDep):
    page = model_versions.models_page(database)
    accuracy = charts.bar_chart(
        [(f"round {r.round_number}", None if r.held_out_accuracy is None else 100 * r.held_out_accuracy) for r in page.rewards],
        title="Reward model: held-out pairwise accuracy per round", x_label="training round",
        y_label="held-out accuracy (%)", y_range=(0, 100), reference=(50, "chance (50 %)"), value_format="{:.1f} %",
    )
    return _render(request, user, "admin/models.html", "models",
                   {"m": page, "ppo_charts": _ppo_charts(page), "accuracy_chart": accuracy,
                    "dimensions": evaluation.DIMENSIONS})


# ---------------------------------------------------------------- live status


def live_status(database) -> dict[str, Any]:
    """What the trainer does now, and how fast judgements arrive (for the dashboard's polling)."""
    status = training.trainer_status(database, history=5)
    now = utcnow()
    with database.read() as db:
        def since(moment):
            return sum(db.scalar(select(func.count()).select_from(m).where(m.created_at >= moment)) or 0
                       for m in (BwsJudgement, Rating))
        last_5, last_60 = since(now - timedelta(minutes=5)), since(now - timedelta(hours=1))
        waiting = db.scalar(select(func.count()).select_from(Campaign).where(Campaign.status == "waiting_for_generation")) or 0
        pending = db.scalar(select(func.count()).select_from(GenerationRequest).where(GenerationRequest.status == "pending")) or 0
    current = status.current
    last = next((r for r in status.history if r.status in ("done", "failed")), None)
    return {
        "generated_at": now.isoformat(),
        "trainer": {
            "alive": status.trainer_alive,
            "heartbeat_at": status.heartbeat_at.isoformat() if status.heartbeat_at else None,
            "current": None if current is None else {
                "round_id": current.id, "round": current.number, "status": current.status, "phase": current.phase, "step": current.step,
                "total_steps": current.total_steps, "eta_seconds": current.eta_seconds,
            },
            "last": None if last is None else {
                "round_id": last.id, "round": last.number, "status": last.status,
                "finished_at": last.finished_at.isoformat() if last.finished_at else None, "error": (last.error or "")[:200],
            },
        },
        "throughput": {"last_5_min": last_5, "per_minute": round(last_5 / 5, 2), "last_hour": last_60},
        "evaluation": {"campaigns_waiting": waiting, "generation_requests_pending": pending},
    }


@router.get("/status.json")
def status_json(user: PageAdmin, database: DatabaseDep):
    return live_status(database)
