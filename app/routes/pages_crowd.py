"""Crowd-platform sign-in pages: a participant opens the study link (app/services/crowd.py) with the
platform's ids, presses Start and annotates without a password; when their quota is done they see
the completion code and go back to the platform."""

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse

from app.deps import ClientAddress, ClockDep, Csrf, DatabaseDep, PageUser, SettingsDep
from app.routes.pages_auth import sign_in
from app.services import crowd, logins, tasks
from app.templating import templates
from app.validation import BoundedText

router = APIRouter(include_in_schema=False)

COMPLETION_REDIRECT_SECONDS = 5  # long enough to note the code, short enough not to wait for it


@router.get("/join/{token}")
def welcome(request: Request, token: BoundedText(100), database: DatabaseDep):
    """What the platform opens: checks the link and its ids (an error page says which is wrong),
    then offers Start. Nothing is written yet: link previews and prefetches make no accounts."""
    with database.read() as db:
        invite = crowd.open_crowd_invite(db, token)
    ids = crowd.platform_ids(invite.platform, request.query_params)
    return templates.TemplateResponse(request, "crowd/welcome.html", {
        "user": None, "invite": invite, "ids": ids, "platform": crowd.PLATFORM_NAMES[invite.platform],
    })


@router.post("/join/{token}", dependencies=[Csrf])
def start(
    request: Request,
    token: BoundedText(100),
    database: DatabaseDep,
    settings: SettingsDep,
    clock: ClockDep,
    address: ClientAddress,
    participant: Annotated[BoundedText(100), Form()] = "",
    study: Annotated[BoundedText(100), Form()] = "",
    session: Annotated[BoundedText(100), Form()] = "",
):
    """Makes or resumes the participant's account, records the visit and signs the browser in."""
    with database.read() as db:
        platform = crowd.open_crowd_invite(db, token).platform
    ids = crowd.platform_ids(platform, dict(zip(crowd.PLATFORM_PARAMS[platform], (participant, study, session),
                                                strict=True)))
    try:
        with database.write() as db:
            user = crowd.join(db, token, ids, clock(), address, crowd.NewAccountLimits.of(settings))
    except logins.Throttled as exc:
        return templates.TemplateResponse(request, "error.html", {"message": exc.message, "errors": []},
                                          status_code=429, headers={"Retry-After": str(exc.retry_after)})
    sign_in(request, database, settings, clock(), user)
    return RedirectResponse("/annotate", status_code=303)


@router.get("/crowd/finished")
def finished(request: Request, user: PageUser, database: DatabaseDep, clock: ClockDep):
    """Where a participant lands when no new task is theirs: the completion code once the quota is
    done (then back to the platform), or that their time is up."""
    progress = tasks.progress(database, user)
    quota_done = progress.quota_left == 0
    time_up = user.work_ends_at is not None and clock() >= user.work_ends_at
    if not quota_done and not time_up:
        return RedirectResponse("/annotate", status_code=303)
    with database.read() as db:
        invite = crowd.invite_of(db, user.id)
    return templates.TemplateResponse(request, "crowd/finished.html", {
        "user": user, "progress": progress, "quota_done": quota_done, "invite": invite,
        "platform": crowd.PLATFORM_NAMES[invite.platform] if invite else None,
        "redirect_seconds": COMPLETION_REDIRECT_SECONDS, "flash": request.session.pop("flash", None),
    })
