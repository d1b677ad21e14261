"""JSON API for annotators and scripts: tokens (create, list, revoke), next task, submissions, progress."""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from app.deps import ApiUser, ClientAddress, ClockDep, DatabaseDep, SettingsDep
from app.models import TOKEN_NAME_MAX
from app.services import logins, tasks, users
from app.services.tasks import BwsSubmission, Progress, RatingSubmission, SubmitResult, TaskView
from app.services.users import TokenInfo

router = APIRouter(prefix="/api/v1", tags=["annotate"])


class TokenRequest(BaseModel):
    username: str
    password: str
    name: str = Field("", max_length=TOKEN_NAME_MAX, description="to tell your tokens apart in the list")
    expires_in_days: int | None = Field(None, ge=1, description="at most the server's token_max_days (30 by "
                                                                  "default), which is also the default")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    role: str
    id: int = Field(description="the token's id in GET /api/v1/me/tokens, to revoke it")
    expires_at: datetime


class SkipRequest(BaseModel):
    reason: str = ""


class Me(BaseModel):
    id: int
    username: str
    role: str


@router.post("/auth/token", response_model=TokenResponse,
             responses={429: {"description": "too many failed logins for the account or from the address; "
                                             "see the Retry-After header"},
                        409: {"description": "the account holds the most API tokens allowed; revoke one first"}})
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


@router.delete("/me/tokens/{token_id}", status_code=204, responses={404: {"description": "no such token of yours"}})
def revoke_my_token(token_id: int, user: ApiUser, database: DatabaseDep):
    """Revokes one of your tokens at once (it may be the one making this call)."""
    with database.write() as db:
        users.revoke_api_token(db, user.id, token_id)


@router.get("/me", response_model=Me)
def me(user: ApiUser):
    return Me(id=user.id, username=user.username, role=user.role)


@router.get("/me/progress", response_model=Progress)
def my_progress(user: ApiUser, database: DatabaseDep):
    return tasks.progress(database, user)


@router.post("/tasks/next", response_model=TaskView | None,
             responses={204: {"description": "nothing left for you"}})
async def next_task(user: ApiUser, database: DatabaseDep, settings: SettingsDep,
                    kind: Annotated[Literal["bws", "rating"] | None, Query()] = None):
    """Lease the next task (or return the one already leased). 204 when nothing is left."""
    view = await tasks.next_task(database, user, settings.lease_seconds, [kind] if kind else None)
    if view is None:
        return Response(status_code=204)
    return view


@router.get("/tasks/{assignment_id}", response_model=TaskView)
def get_task(assignment_id: int, user: ApiUser, database: DatabaseDep):
    return tasks.get_task(database, user, assignment_id)


NextQuery = Annotated[bool, Query(description="also lease the next task and return it as next_task")]


async def _with_next(result: SubmitResult, want_next: bool, user, database, settings) -> SubmitResult:
    if want_next:
        result.next_task = await tasks.next_task(database, user, settings.lease_seconds)
    return result


@router.post("/tasks/{assignment_id}/bws", response_model=SubmitResult)
async def submit_bws(assignment_id: int, body: BwsSubmission, user: ApiUser, database: DatabaseDep,
                     settings: SettingsDep, next: NextQuery = False):
    """Submit best and worst. Retrying with the same idempotency_key never stores twice."""
    return await _with_next(await tasks.submit_bws(database, user, assignment_id, body), next, user, database, settings)


@router.post("/tasks/{assignment_id}/rating", response_model=SubmitResult)
async def submit_rating(assignment_id: int, body: RatingSubmission, user: ApiUser, database: DatabaseDep,
                        settings: SettingsDep, next: NextQuery = False):
    return await _with_next(await tasks.submit_rating(database, user, assignment_id, body), next, user, database, settings)


@router.post("/tasks/{assignment_id}/skip", status_code=204)
async def skip(assignment_id: int, body: SkipRequest, user: ApiUser, database: DatabaseDep):
    await tasks.skip_task(database, user, assignment_id, body.reason)
