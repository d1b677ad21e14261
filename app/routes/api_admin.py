"""Admin JSON API: imports, prompts, model versions, batches, users, invites and exports. Admins only."""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Query, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from app.deps import ApiAdmin, ClockDep, DatabaseDep, SettingsDep, api_admin
from app.models import Batch, BwsJudgement, Rating, Task
from app.routes.responses import error_responses
from app.services import crowd, exports, imports, tasks, users
from app.services import stories as stories_service
from app.services.errors import Invalid, TooLarge
from app.services.imports import ImportSummary, ModelVersionInfo, PromptPage
from app.validation import BoundedText, DbId, DbInt, IdList, QueryIdList

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(api_admin)],
                   responses=error_responses(401, 403, 503))


# ---------------------------------------------------------------- bodies and views


class BwsBatchRequest(BaseModel):
    name: BoundedText(200, min_length=1)
    prompt_ids: IdList | None = Field(None, description="null: every prompt")
    model_version_ids: IdList | None = Field(None, description="null: continuations of every model version")
    seed: DbInt = 0
    annotations_per_tuple: int | None = Field(None, ge=1, le=100, description="R; null: the server's default")


class RatingBatchRequest(BaseModel):
    name: BoundedText(200, min_length=1)
    continuation_ids: IdList | None = Field(None, description="rate exactly these; else pick by prompt/model version")
    prompt_ids: IdList | None = Field(None, description="null: every prompt (when no continuation_ids)")
    model_version_ids: IdList | None = None
    annotations_per_task: int | None = Field(None, ge=1, le=100, description="null: the server's default")


class BatchCreated(BaseModel):
    batch_id: int
    kind: str
    tasks: int
    design: dict[str, Any]


class BatchInfo(BaseModel):
    id: int
    name: str
    kind: str
    seed: int
    annotations_per_task: int
    created_at: datetime
    tasks: int
    done: int  # counted judgements
    wanted: int  # tasks x R
    submissions: int  # every stored judgement, surplus included
    progress: float  # done / wanted
    priority: str  # up | normal | down | paused (see docs/annotation.md, "Serving order")
    is_newest_round: bool  # the newest trainer round's batch: served right after pinned-up ones


class BatchPriorityRequest(BaseModel):
    priority: Literal["up", "normal", "down", "paused"]


class BatchServing(BaseModel):
    id: int
    priority: str
    is_newest_round: bool


class UserOut(BaseModel):
    id: int
    username: str
    role: str
    is_active: bool
    created_at: datetime


class CreateUserRequest(BaseModel):
    username: BoundedText(64)
    password: BoundedText(1000)
    role: BoundedText(16) = "annotator"


class UpdateUserRequest(BaseModel):
    role: BoundedText(16) | None = None
    is_active: bool | None = None


class InviteRequest(BaseModel):
    role: BoundedText(16) = "annotator"
    days: int = Field(14, ge=1, le=365)


class InviteOut(BaseModel):
    token: str
    url: str  # path of the sign-up page; prepend the site's origin
    role: str
    expires_at: datetime


class CrowdInviteRequest(BaseModel):
    name: BoundedText(200) = Field("", description="for you: which study this link is for")
    platform: Literal["prolific", "mturk"]
    task_quota: int = Field(ge=1, le=crowd.MAX_QUOTA, description="tasks per participant")
    session_minutes: int | None = Field(None, ge=1, le=crowd.MAX_SESSION_MINUTES,
                                        description="minutes from a participant's first visit; null: no limit")
    max_participants: int | None = Field(None, ge=1, le=crowd.MAX_PARTICIPANTS,
                                         description="the most participants the link takes; null: no cap")
    completion_code: BoundedText(64, min_length=1) = Field(description="letters, digits, '-' or '_'")
    completion_url: BoundedText(500, min_length=1) = Field(description="http(s) URL participants are sent to when done")


def _user_out(user) -> UserOut:
    return UserOut(id=user.id, username=user.username, role=user.role, is_active=user.is_active,
                   created_at=user.created_at)


# ---------------------------------------------------------------- imports, prompts, model versions


@router.post("/imports", response_model=ImportSummary, status_code=201, responses=error_responses(409, 413, 422))
def import_stories(database: DatabaseDep, settings: SettingsDep, file: Annotated[UploadFile, File()]):
    """Import prompts and continuations from a JSONL or CSV file: all or nothing (see app/services/imports.py)."""
    limit = settings.max_upload_bytes
    if file.size is not None and file.size > limit:
        raise TooLarge(f"the file is larger than {limit} bytes")
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"the file is larger than {limit} bytes")
    return imports.import_file(database, data, file.filename or "")


@router.get("/prompts", response_model=PromptPage, responses=error_responses(422))
def list_prompts(database: DatabaseDep, offset: DbInt = 0,
                 limit: Annotated[int, Query(ge=1, le=500)] = 50, q: BoundedText(200) | None = None):
    with database.read() as db:
        return imports.list_prompts(db, offset, limit, q)


@router.get("/model-versions", response_model=list[ModelVersionInfo])
def list_model_versions(database: DatabaseDep):
    with database.read() as db:
        return imports.list_model_versions(db)


# ---------------------------------------------------------------- batches


@router.post("/batches", response_model=BatchCreated, status_code=201, responses=error_responses(404, 413, 422))
def create_bws_batch(body: BwsBatchRequest, database: DatabaseDep, settings: SettingsDep):
    """Build balanced BWS tuples for every chosen prompt with at least `tuple_size` continuations."""
    required = body.annotations_per_tuple or settings.annotations_per_tuple
    with database.write() as db:
        by_prompt = tasks.continuations_by_prompt(db, body.prompt_ids, body.model_version_ids)
        batch = tasks.build_bws_batch(db, body.name, by_prompt, seed=body.seed, required=required,
                                      k=settings.tuple_size, factor=settings.design_factor)
        count = db.scalar(select(func.count()).select_from(Task).where(Task.batch_id == batch.id))
        return BatchCreated(batch_id=batch.id, kind=batch.kind, tasks=count, design=batch.design)


@router.post("/batches/rating", response_model=BatchCreated, status_code=201, responses=error_responses(404, 413, 422))
def create_rating_batch(body: RatingBatchRequest, database: DatabaseDep, settings: SettingsDep):
    """One rating task per continuation: the given ids, or those of the chosen prompts and model versions."""
    required = body.annotations_per_task or settings.annotations_per_tuple
    with database.write() as db:
        if body.continuation_ids is not None:
            ids = list(dict.fromkeys(body.continuation_ids))
        else:
            by_prompt = tasks.continuations_by_prompt(db, body.prompt_ids, body.model_version_ids)
            ids = [c for _, cs in sorted(by_prompt.items()) for c in cs]
        if not ids:
            raise Invalid("no continuations to rate")
        batch = tasks.build_rating_batch(db, body.name, ids, required=required)
        return BatchCreated(batch_id=batch.id, kind=batch.kind, tasks=len(ids), design=batch.design or {})


@router.get("/batches", response_model=list[BatchInfo])
def list_batches(database: DatabaseDep):
    """Every batch, newest first, with its progress: counted judgements against tasks x R."""
    with database.read() as db:
        totals = {
            batch_id: (n, done or 0, wanted or 0)
            for batch_id, n, done, wanted in db.execute(
                select(Task.batch_id, func.count(), func.sum(Task.done_count), func.sum(Task.required))
                .group_by(Task.batch_id)
            )
        }
        submissions: dict[int, int] = {}
        for model in (BwsJudgement, Rating):
            for batch_id, n in db.execute(
                select(Task.batch_id, func.count()).select_from(model).join(Task, Task.id == model.task_id)
                .group_by(Task.batch_id)
            ):
                submissions[batch_id] = submissions.get(batch_id, 0) + n
        out = []
        for batch in db.scalars(select(Batch).order_by(Batch.id.desc())):
            n, done, wanted = totals.get(batch.id, (0, 0, 0))
            out.append(BatchInfo(id=batch.id, name=batch.name, kind=batch.kind, seed=batch.seed,
                                 annotations_per_task=batch.annotations_per_task, created_at=batch.created_at,
                                 tasks=n, done=int(done), wanted=int(wanted), submissions=submissions.get(batch.id, 0),
                                 progress=(int(done) / int(wanted)) if wanted else 0.0,
                                 priority=batch.priority, is_newest_round=batch.is_newest_round))
        return out


@router.patch("/batches/{batch_id}", response_model=BatchServing, responses=error_responses(404, 413, 422))
def set_batch_priority(batch_id: DbId, body: BatchPriorityRequest, database: DatabaseDep):
    """Pin a batch: "up" (served first), "normal", "down" (served last) or "paused" (not served)."""
    with database.write() as db:
        batch = tasks.set_batch_priority(db, batch_id, body.priority)
        return BatchServing(id=batch.id, priority=batch.priority, is_newest_round=batch.is_newest_round)


# ---------------------------------------------------------------- users and invites


@router.get("/users", response_model=list[UserOut])
def list_users(database: DatabaseDep):
    with database.read() as db:
        return [_user_out(u) for u in users.list_users(db)]


@router.post("/users", response_model=UserOut, status_code=201, responses=error_responses(409, 413, 422))
def create_user(body: CreateUserRequest, database: DatabaseDep):
    with database.write() as db:
        return _user_out(users.create_user(db, body.username, body.password, body.role))


@router.patch("/users/{user_id}", response_model=UserOut, responses=error_responses(404, 409, 413, 422))
def update_user(user_id: DbId, body: UpdateUserRequest, database: DatabaseDep, admin: ApiAdmin):
    with database.write() as db:
        return _user_out(users.update_user(db, user_id, role=body.role, is_active=body.is_active, acting=admin))


@router.get("/users/{user_id}/tokens", response_model=list[users.TokenInfo], responses=error_responses(404, 422))
def list_user_tokens(user_id: DbId, database: DatabaseDep, clock: ClockDep):
    """A user's unexpired API tokens (never their secrets)."""
    with database.read() as db:
        users.get_user(db, user_id)  # 404 for an unknown user rather than an empty list
        return users.list_api_tokens(db, user_id, clock())


@router.delete("/users/{user_id}/tokens/{token_id}", status_code=204, responses=error_responses(404, 422))
def revoke_user_token(user_id: DbId, token_id: DbId, database: DatabaseDep):
    """Revokes one of a user's API tokens at once."""
    with database.write() as db:
        users.revoke_api_token(db, user_id, token_id)


@router.post("/invites", response_model=InviteOut, status_code=201, responses=error_responses(413, 422))
def create_invite(body: InviteRequest, database: DatabaseDep, admin: ApiAdmin):
    """A one-time sign-up link for the given role; send the person `url` on this site."""
    with database.write() as db:
        invite = users.create_invite(db, body.role, admin, days=body.days)
        return InviteOut(token=invite.token, url=f"/invite/{invite.token}", role=invite.role,
                         expires_at=invite.expires_at)


# ---------------------------------------------------------------- crowd links


@router.post("/crowd-links", response_model=crowd.CrowdInviteInfo, status_code=201, responses=error_responses(413, 422))
def create_crowd_link(body: CrowdInviteRequest, database: DatabaseDep, admin: ApiAdmin):
    """A reusable sign-in link for Prolific or MTurk participants, with a quota of tasks each."""
    with database.write() as db:
        invite = crowd.create_crowd_invite(db, admin, **body.model_dump())
        invite_id = invite.id
    return _crowd_link(database, invite_id)


@router.get("/crowd-links", response_model=list[crowd.CrowdInviteInfo])
def list_crowd_links(database: DatabaseDep):
    """Every crowd link, newest first, with its participants, how many finished and their judgements."""
    with database.read() as db:
        return crowd.list_crowd_invites(db)


@router.post("/crowd-links/{link_id}/close", response_model=crowd.CrowdInviteInfo, responses=error_responses(404, 422))
def close_crowd_link(link_id: DbId, database: DatabaseDep, clock: ClockDep):
    """Refuses the link from now on, to new and returning participants alike."""
    with database.write() as db:
        crowd.close_crowd_invite(db, link_id, clock())
    return _crowd_link(database, link_id)


def _crowd_link(database, link_id: int) -> crowd.CrowdInviteInfo:
    with database.read() as db:
        [info] = crowd.list_crowd_invites(db, only_id=link_id)
        return info


# ---------------------------------------------------------------- exports


@router.get("/exports")
def list_exports() -> dict[str, Any]:
    """Names, columns and formats of the exports: GET /api/v1/admin/exports/{name}.{format}."""
    return {"formats": list(exports.FORMATS), "exports": exports.describe()}


@router.get("/exports/metadata")
def export_metadata(database: DatabaseDep) -> dict[str, Any]:
    """What exports leave out now: excluded annotators and gold tasks (also each download's
    X-Storyloop-Export-Metadata header, and a Parquet file's schema metadata)."""
    return exports.export_metadata(database)


@router.get("/exports/{name}.{fmt}", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}, "application/vnd.apache.parquet": {}}},
                       **error_responses(404, 422)})
def download_export(name: str, fmt: str, database: DatabaseDep):
    """Streams an export (pairs, judgements, ratings, scores) as jsonl, csv or parquet."""
    body = exports.stream_export(database, name, fmt)
    return StreamingResponse(
        body, media_type=exports.media_type(fmt),
        headers={"Content-Disposition": f'attachment; filename="{exports.filename(name, fmt)}"',
                 "Cache-Control": "no-store", **exports.metadata_header(database)},
    )


# ---------------------------------------------------------------- stories by version


@router.get("/stories", response_model=stories_service.StoriesPage, responses=error_responses(422))
def list_stories(database: DatabaseDep,
                 prompt_id: Annotated[DbId | None, Query(ge=1)] = None,
                 version_id: Annotated[QueryIdList, Query(description="repeat for several; none: every version")] = [],  # noqa: B006
                 q: Annotated[BoundedText(200) | None, Query(description="a substring of the prompt text")] = None,
                 offset: DbInt = 0,
                 limit: Annotated[int, Query(ge=1, le=stories_service.MAX_LIMIT)] = 20):
    """Per prompt, every continuation of every (chosen) model version, judged or not, with its BWS counting
    score and appearances over the prompt's judgements (null / 0 when never judged)."""
    return stories_service.stories(database, offset=offset, limit=limit, q=q or None, prompt_id=prompt_id,
                                   version_ids=version_id)
