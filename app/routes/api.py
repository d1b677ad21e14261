"""JSON API for annotators and scripts: tokens (create, list, revoke), next task, submissions, progress."""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from app.deps import ApiUser, ClientAddress, ClockDep, DatabaseDep, HandlesDep, SettingsDep
from app.models import TOKEN_NAME_MAX
from app.routes.responses import error_responses
from app.services import logins, tasks, users
from app.services.tasks import BwsSubmission, Progress, RatingSubmission, SubmitResult, TaskView
from app.services.users import TokenInfo
from app.validation import BoundedText, DbId

router = APIRouter(prefix="/api/v1", tags=["annotate"], responses=error_responses(401, 503))


class TokenRequest(BaseModel):
    username: BoundedText(200)
    password: BoundedText(1000)
    name: BoundedText(TOKEN_NAME_MAX) = Field("", description="to tell your tokens apart in the list")
    expires_in_days: int | None = Field(None, ge=1, description="at most the server's token_max_days (30 by "
                                                                  "default), which is also the default")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    role: str
    id: int = Field(description="the token's id in GET /api/v1/me/tokens, to revoke it")
    expires_at: datetime


class SkipRequest(BaseModel):
    reason: BoundedText(500) = ""  # Assignment.skip_reason is String(500)


class Me(BaseModel):
    id: int
    username: str
    role: str


@router.post("/auth/token", response_model=TokenResponse,
             responses=error_responses(409, 413, 422, 429))
def create_token(body: TokenRequest, database: DatabaseDep, settings: SettingsDep, clock: ClockDep,
                 address: ClientAddress):
    """Exchange username and password for a bearer token (send it as `Authorization: Bearer ...`)."""
    users.token_lifetime(settings, body.name, body.expires_in_days)  # a bad request costs no password check
    try:
        user = logins.login(database, settings, body.username, body.password, address, clock())
    except logins.Throttled as exc:
        raise HTTPException(429, exc.message, headers={"Retry-After": str(exc.retry_after)}) from None
    except logins.WrongCredentials as exc:
        raise HTTPException(401, exc.message) from None
    with database.write() as db:
        token, info = users.create_api_token(db, user, settings, clock(), body.name, body.expires_in_days)
    return TokenResponse(access_token=token, role=user.role, expires_at=info.expires_at, id=info.id)


@router.get("/me/tokens", response_model=list[TokenInfo])
def my_tokens(user: ApiUser, database: DatabaseDep, clock: ClockDep):
    """Your unexpired API tokens, newest first (never their secrets)."""
    with database.read() as db:
        return users.list_api_tokens(db, user.id, clock())


@router.delete("/me/tokens/{token_id}", status_code=204, responses=error_responses(404, 422))
def revoke_my_token(token_id: DbId, user: ApiUser, database: DatabaseDep):
    """Revokes one of your tokens at once (it may be the one making this call)."""
    with database.write() as db:
        users.revoke_api_token(db, user.id, token_id)


@router.get("/me", response_model=Me)
def me(user: ApiUser):
    return Me(id=user.id, username=user.username, role=user.role)


@router.get("/me/progress", response_model=Progress)
def my_progress(user: ApiUser, database: DatabaseDep):
    return tasks.progress(database, user)


_WORK_LIMIT = {**error_responses(403)[403],
               "description": 'no new task for you: `errors` is `[{"reason": "quota_reached"}]` when your quota of '
                              'tasks is done, `[{"reason": "time_up"}]` when your time is up'}


@router.post("/tasks/next", response_model=TaskView | None,
             responses={204: {"description": "nothing left for you"}, 403: _WORK_LIMIT, **error_responses(409, 422)})
async def next_task(user: ApiUser, database: DatabaseDep, settings: SettingsDep, handles: HandlesDep,
                    kind: Annotated[Literal["bws", "rating"] | None, Query()] = None):
    """Lease the next task (or return the one already leased). 204 when nothing is left; 403 with a
    reason when you have a quota that is done or a time limit that has passed.
    Items come under opaque handles that are valid in this assignment only (judging is blind)."""
    leased = await tasks.next_task(database, user, settings.lease_seconds, [kind] if kind else None)
    if leased is None:
        return Response(status_code=204)
    return tasks.blind_view(leased, handles)


@router.get("/tasks/{assignment_id}", response_model=TaskView, responses=error_responses(404, 422))
def get_task(assignment_id: DbId, user: ApiUser, database: DatabaseDep, handles: HandlesDep):
    return tasks.blind_view(tasks.get_task(database, user, assignment_id), handles)


_SKIP_ERRORS = error_responses(404, 409, 413, 422)
_SUBMIT_ERRORS = {**_SKIP_ERRORS, 403: {**error_responses(403)[403], "description": (
    'your quota of tasks is done (`errors` is `[{"reason": "quota_reached"}]`): an answer to a lease left over '
    "from before is not stored")}}
NextQuery = Annotated[bool, Query(description="also lease the next task and return it as next_task")]


async def _with_next(result: SubmitResult, want_next: bool, user, database, settings, handles) -> SubmitResult:
    if not want_next:
        return result
    try:
        leased = await tasks.next_task(database, user, settings.lease_seconds)
    except tasks.WorkLimitReached:  # POST /tasks/next says why
        leased = None
    if leased is not None:
        result.next_task = tasks.blind_view(leased, handles)
    return result


@router.post("/tasks/{assignment_id}/bws", response_model=SubmitResult, responses=_SUBMIT_ERRORS)
async def submit_bws(assignment_id: DbId, body: BwsSubmission, user: ApiUser, database: DatabaseDep,
                     settings: SettingsDep, handles: HandlesDep, next: NextQuery = False):
    """Submit best and worst as the handles of two items of this task (422 naming the field when a
    handle is not one of them). Retrying with the same idempotency_key never stores twice."""
    result = await tasks.submit_bws(database, user, assignment_id, body, handles)
    return await _with_next(result, next, user, database, settings, handles)


@router.post("/tasks/{assignment_id}/rating", response_model=SubmitResult, responses=_SUBMIT_ERRORS)
async def submit_rating(assignment_id: DbId, body: RatingSubmission, user: ApiUser, database: DatabaseDep,
                        settings: SettingsDep, handles: HandlesDep, next: NextQuery = False):
    """Rate the task's one item (the assignment names it: no handle needed)."""
    result = await tasks.submit_rating(database, user, assignment_id, body)
    return await _with_next(result, next, user, database, settings, handles)


@router.post("/tasks/{assignment_id}/skip", status_code=204, responses=_SKIP_ERRORS)
async def skip(assignment_id: DbId, body: SkipRequest, user: ApiUser, database: DatabaseDep):
    await tasks.skip_task(database, user, assignment_id, body.reason)
