"""Browser pages for annotators and evaluators: the queue, BWS and rating forms, skip, guidelines.

The pages call the same service functions as the JSON API (app/services/tasks.py), so leasing,
idempotency and counting behave identically. The pages run in FastAPI's thread pool; the write
services are coroutines (see Database.run_write), called on the event loop with from_thread.run.
Judging is blind: nothing here shows model versions, nor continuation or task ids; items appear under
per-assignment handles (tasks.blind_view), and the forms send those back.
"""

import uuid
from datetime import datetime
from typing import Annotated

from anyio import from_thread
from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import ValidationError

from app.deps import Csrf, DatabaseDep, HandlesDep, PageUser, PageUserOptional, SettingsDep
from app.models import Assignment, User, utcnow
from app.services import tasks
from app.services.errors import Conflict, Invalid, NotFound
from app.services.item_handles import ItemHandles
from app.services.tasks import BwsSubmission, LeasedTask, RatingSubmission
from app.templating import templates
from app.validation import DbId, Text

router = APIRouter(include_in_schema=False)

# A queue is where the "Next task" button leads: which task kinds it hands out.
# (Evaluation campaigns can add their own queue here.)
QUEUES: dict[str, dict] = {
    "annotate": {"title": "Annotate", "kinds": None, "roles": ("annotator", "admin")},
    "evaluate": {"title": "Evaluate", "kinds": ("eval", "rating"), "roles": ("evaluator", "admin")},
}

RUBRIC = [
    {"name": "grammar", "label": "Grammar",
     "question": "Is the text well-formed English?",
     "scale": {1: "Many errors; hard to read", 3: "Some errors, but readable", 5: "Fluent, no errors"}},
    {"name": "creativity", "label": "Creativity",
     "question": "Is the continuation original and interesting?",
     "scale": {1: "Bland, repetitive or copied", 3: "Some fresh ideas", 5: "Surprising and imaginative"}},
    {"name": "consistency", "label": "Consistency",
     "question": "Does it stay true to the prompt: characters, facts, tone?",
     "scale": {1: "Contradicts the prompt", 3: "Minor slips", 5: "Fully consistent"}},
    {"name": "plot", "label": "Plot coherence",
     "question": "Do the events follow sensibly from one another?",
     "scale": {1: "Random, no story", 3: "Mostly follows", 5: "Clear, logical story"}},
]

MAX_DURATION_MS = 24 * 3600 * 1000


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _flash(request: Request, message: str, kind: str = "ok") -> None:
    request.session["flash"] = {"message": message, "kind": kind}


def _pop_flash(request: Request) -> dict | None:
    return request.session.pop("flash", None)


def _queue_of(request: Request, user: User) -> str:
    """The queue the user last drew from, if their role still allows it."""
    name = request.session.get("queue")
    if name in QUEUES and user.role in QUEUES[name]["roles"]:
        return name
    return "evaluate" if user.role == "evaluator" else "annotate"


def _next_or_done(request: Request, database, settings, user: User) -> RedirectResponse:
    queue = _queue_of(request, user)
    kinds = QUEUES[queue]["kinds"]
    try:
        view = from_thread.run(tasks.next_task, database, user, settings.lease_seconds, list(kinds) if kinds else None)
    except tasks.WorkLimitReached:  # a crowd participant's quota is done or their time is up
        return _redirect("/crowd/finished")
    if view is None:
        return _redirect(f"/done?queue={queue}")
    return _redirect(f"/task/{view.assignment_id}")


# ---------------------------------------------------------------- queue pages


def _queue_page(request: Request, user: User, database, name: str):
    if user.role not in QUEUES[name]["roles"]:
        return _redirect("/evaluate" if name == "annotate" else "/annotate")
    return templates.TemplateResponse(request, "annotate/queue.html", {
        "user": user, "queue": name, "title": QUEUES[name]["title"],
        "progress": tasks.progress(database, user), "flash": _pop_flash(request),
    })


@router.get("/annotate")
def annotate(request: Request, user: PageUser, database: DatabaseDep):
    return _queue_page(request, user, database, "annotate")


@router.get("/evaluate")
def evaluate(request: Request, user: PageUser, database: DatabaseDep):
    return _queue_page(request, user, database, "evaluate")


def _start(request: Request, user: User, database, settings, name: str):
    if user.role not in QUEUES[name]["roles"]:
        return _redirect("/")
    request.session["queue"] = name
    return _next_or_done(request, database, settings, user)


@router.post("/annotate/next", dependencies=[Csrf])
def annotate_next(request: Request, user: PageUser, database: DatabaseDep, settings: SettingsDep):
    return _start(request, user, database, settings, "annotate")


@router.post("/evaluate/next", dependencies=[Csrf])
def evaluate_next(request: Request, user: PageUser, database: DatabaseDep, settings: SettingsDep):
    return _start(request, user, database, settings, "evaluate")


@router.get("/done")
def done(request: Request, user: PageUser, database: DatabaseDep, queue: str = ""):
    if queue not in QUEUES:
        queue = _queue_of(request, user)
    return templates.TemplateResponse(request, "annotate/done.html", {
        "user": user, "queue": queue, "title": QUEUES[queue]["title"],
        "progress": tasks.progress(database, user), "flash": _pop_flash(request),
    })


@router.get("/guidelines")
def guidelines(request: Request, user: PageUserOptional):
    return templates.TemplateResponse(request, "annotate/guidelines.html", {"user": user, "rubric": RUBRIC})


# ---------------------------------------------------------------- one task


def _lease_info(database, user: User, assignment_id: int) -> tuple[str, datetime]:
    """Status and lease start of the user's own assignment (not part of TaskView)."""
    with database.read() as db:
        assignment = db.get(Assignment, assignment_id)
        if assignment is None or assignment.user_id != user.id:
            raise NotFound("no such task of yours")
        return assignment.status, assignment.leased_at


def _task_page(request: Request, user: User, database, leased: LeasedTask, handles: ItemHandles, *, error: str = "",
               values: dict | None = None, key: str | None = None, status_code: int = 200):
    status, _ = _lease_info(database, user, leased.assignment_id)
    minutes_left = max(0, int((leased.expires_at - utcnow()).total_seconds() // 60))
    template = "annotate/bws.html" if leased.kind == "bws" else "annotate/rating.html"
    return templates.TemplateResponse(request, template, {
        "user": user, "task": tasks.blind_view(leased, handles), "status": status, "minutes_left": minutes_left,
        "progress": tasks.progress(database, user), "queue": _queue_of(request, user),
        "idempotency_key": key or uuid.uuid4().hex, "values": values or {}, "error": error,
        "flash": _pop_flash(request), "rubric": RUBRIC,
    }, status_code=status_code)


@router.get("/task/{assignment_id}")
def show_task(request: Request, assignment_id: DbId, user: PageUser, database: DatabaseDep, handles: HandlesDep):
    return _task_page(request, user, database, tasks.get_task(database, user, assignment_id), handles)


def _duration(database, user: User, assignment_id: int, measured: str) -> int | None:
    """The duration measured in the browser, else the time since the task was leased."""
    try:
        value = int(measured)
        if 0 <= value <= MAX_DURATION_MS:
            return value
    except ValueError:
        pass
    _, leased_at = _lease_info(database, user, assignment_id)
    return min(MAX_DURATION_MS, max(0, int((utcnow() - leased_at).total_seconds() * 1000)))


def _int_or_none(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


# annotate.js sends the task form with fetch (so that a 503 can be retried without losing the marked
# choice) and says so in this header. fetch would follow a redirect by itself, and the page it fetched
# would take the "Saved." flash with it; so the script gets the address instead and goes there itself.
FETCH_SUBMIT_HEADER = "x-storyloop-submit"


def _onward(request: Request, response: RedirectResponse) -> RedirectResponse | JSONResponse:
    if request.headers.get(FETCH_SUBMIT_HEADER) == "fetch":
        return JSONResponse({"location": response.headers["location"]})
    return response


def _after_submit(request: Request, database, settings, user: User, result):
    if result.replayed:
        _flash(request, "Already saved.")
    elif result.counted:
        _flash(request, "Saved.")
    else:
        _flash(request, "Saved (after the reservation ran out, so it was kept as an extra judgement).")
    return _onward(request, _next_or_done(request, database, settings, user))


def _already_finished(request: Request, database, settings, user: User, exc: Conflict):
    _flash(request, f"Not saved again: {exc.message}.", "bad")
    return _onward(request, _next_or_done(request, database, settings, user))


def _beyond_quota(request: Request, exc: tasks.WorkLimitReached):
    """An answer to a lease left over after a crowd participant's quota was done: not stored."""
    _flash(request, exc.message[:1].upper() + exc.message[1:] + ".", "bad")
    return _onward(request, _redirect("/crowd/finished"))


@router.post("/task/{assignment_id}/bws", dependencies=[Csrf])
def submit_bws(
    request: Request,
    assignment_id: DbId,
    user: PageUser,
    database: DatabaseDep,
    settings: SettingsDep,
    handles: HandlesDep,
    idempotency_key: Annotated[str, Form()],
    best: Annotated[str, Form()] = "",
    worst: Annotated[str, Form()] = "",
    duration_ms: Annotated[str, Form()] = "",
):
    leased = tasks.get_task(database, user, assignment_id)
    if leased.kind != "bws":
        raise Invalid(f"this is a {leased.kind} task, not bws")
    values = {"best": best, "worst": worst}  # item handles, as the form shows them

    def again(message: str):
        return _task_page(request, user, database, leased, handles, error=message, values=values,
                          key=idempotency_key, status_code=422)

    if not best or not worst:
        return again("Choose one best and one worst continuation.")
    if best == worst:
        return again("Best and worst must differ: choose two different continuations.")
    try:
        data = BwsSubmission(best=best, worst=worst, idempotency_key=idempotency_key,
                             duration_ms=_duration(database, user, assignment_id, duration_ms))
    except ValidationError:
        return again("The form was damaged; reload the page and try again.")
    try:
        result = from_thread.run(tasks.submit_bws, database, user, assignment_id, data, handles)
    except tasks.WorkLimitReached as exc:
        return _beyond_quota(request, exc)
    except Invalid as exc:
        return again(exc.message[:1].upper() + exc.message[1:] + ".")
    except Conflict as exc:
        return _already_finished(request, database, settings, user, exc)
    return _after_submit(request, database, settings, user, result)


@router.post("/task/{assignment_id}/rating", dependencies=[Csrf])
def submit_rating(
    request: Request,
    assignment_id: DbId,
    user: PageUser,
    database: DatabaseDep,
    settings: SettingsDep,
    handles: HandlesDep,
    idempotency_key: Annotated[str, Form()],
    grammar: Annotated[str, Form()] = "",
    creativity: Annotated[str, Form()] = "",
    consistency: Annotated[str, Form()] = "",
    plot: Annotated[str, Form()] = "",
    comment: Annotated[str, Form()] = "",
    duration_ms: Annotated[str, Form()] = "",
):
    leased = tasks.get_task(database, user, assignment_id)
    if leased.kind not in tasks.RATING_KINDS:  # "eval" items are rated with the same form
        raise Invalid(f"this is a {leased.kind} task, not rating")
    scores = {"grammar": _int_or_none(grammar), "creativity": _int_or_none(creativity),
              "consistency": _int_or_none(consistency), "plot": _int_or_none(plot)}
    values = {**scores, "comment": comment}

    def again(message: str):
        return _task_page(request, user, database, leased, handles, error=message, values=values,
                          key=idempotency_key, status_code=422)

    missing = [d["label"] for d in RUBRIC if scores[d["name"]] not in (1, 2, 3, 4, 5)]
    if missing:
        return again("Give every dimension a score from 1 to 5 (missing: " + ", ".join(missing) + ").")
    try:
        data = RatingSubmission(**scores, comment=comment, idempotency_key=idempotency_key,
                                duration_ms=_duration(database, user, assignment_id, duration_ms))
    except ValidationError as exc:
        return again("Please check the form: " + "; ".join(e["msg"] for e in exc.errors()))
    try:
        result = from_thread.run(tasks.submit_rating, database, user, assignment_id, data)
    except tasks.WorkLimitReached as exc:
        return _beyond_quota(request, exc)
    except Invalid as exc:
        return again(exc.message)
    except Conflict as exc:
        return _already_finished(request, database, settings, user, exc)
    return _after_submit(request, database, settings, user, result)


@router.post("/task/{assignment_id}/skip", dependencies=[Csrf])
def skip(
    request: Request,
    assignment_id: DbId,
    user: PageUser,
    database: DatabaseDep,
    settings: SettingsDep,
    reason: Annotated[Text, Form()] = "",  # kept to its first 500 characters
):
    try:
        from_thread.run(tasks.skip_task, database, user, assignment_id, reason.strip())
        _flash(request, "Skipped.")
    except Conflict as exc:
        _flash(request, f"Not skipped: {exc.message}.", "bad")
    return _next_or_done(request, database, settings, user)

