"""Admin pages: dashboard, scores, import, batches, users and exports.

Every route needs an admin session (PageAdmin); every POST carries the session's CSRF token and
answers with a 303 redirect back to its page, with a flash message kept in the session until the
next page render pops it. All text is rendered by autoescaping Jinja templates.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, StreamingResponse

from app.deps import Csrf, DatabaseDep, PageAdmin, SettingsDep
from app.models import BATCH_PRIORITIES, CROWD_PLATFORMS, RATING_DIMENSIONS, ROLES, utcnow
from app.services import charts, crowd, exports, gold, imports, stats, tasks, training, users
from app.services.errors import Invalid, ServiceError
from app.templating import templates
from app.validation import BoundedText, DbId, DbInt, IdList, parse_db_int, parse_id_list
from app.words import plural

router = APIRouter(prefix="/admin", include_in_schema=False)

FLASH_ERRORS = 10  # error details kept in the session cookie (it must stay well under 4 KB)
FLASH_TEXT = 160  # characters per error message kept (10 x 160 stays well inside the cookie)

# ---------------------------------------------------------------- helpers


def _flash(request: Request, message: str, kind: str = "ok", **extra: Any) -> None:
    request.session["flash"] = {"message": message[:400], "kind": kind, **extra}


def _back(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _render(request: Request, user, template: str, context: dict[str, Any] | None = None, status_code: int = 200):
    page = template.removeprefix("admin/").removesuffix(".html")
    return templates.TemplateResponse(
        request, template,
        {"user": user, "flash": request.session.pop("flash", None), "page": page, **(context or {})},
        status_code=status_code,
    )


def _error_details(details: list) -> list[dict[str, Any]]:
    """Import errors ({line, field, message}) trimmed for the session cookie."""
    kept = []
    for d in details[:FLASH_ERRORS]:
        if isinstance(d, dict):
            kept.append({"line": d.get("line"), "field": d.get("field"), "message": str(d.get("message", ""))[:FLASH_TEXT]})
        else:
            kept.append({"line": None, "field": None, "message": str(d)[:FLASH_TEXT]})
    return kept


def bar_chart(per_hour: list[stats.HourCount], width: int = 640, height: int = 220) -> dict[str, Any]:
    """Geometry of the judgements-per-hour bar chart (rendered as SVG by the template)."""
    left, right, top, bottom = 44, 10, 12, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((h.total for h in per_hour), default=0)
    y_max = next(m for m in _nice_steps() if m >= max(peak, 1))  # a round maximum: 1, 2, 5, 10, 20...
    slot = plot_w / max(len(per_hour), 1)
    bars = []
    for i, h in enumerate(per_hour):
        bar_h = plot_h * h.total / y_max
        bars.append({
            "x": round(left + i * slot + slot * 0.1, 1), "w": round(slot * 0.8, 1),
            "y": round(top + plot_h - bar_h, 1), "h": round(bar_h, 1),
            "bws_h": round(plot_h * h.bws / y_max, 1),
            "label": h.hour.strftime("%H"), "show_label": i % 3 == 0 or i == len(per_hour) - 1,
            "lx": round(left + i * slot + slot / 2, 1), "title": f"{h.hour:%Y-%m-%d %H}:00 UTC: {h.bws} BWS, {plural(h.ratings, 'rating')}",
            "hour": h,
        })
    values = sorted({0, y_max // 2, y_max}) if y_max % 2 == 0 else [0, y_max]
    ticks = [{"value": v, "y": round(top + plot_h - plot_h * v / y_max, 1)} for v in values]
    return {"width": width, "height": height, "left": left, "top": top, "plot_w": plot_w, "plot_h": plot_h,
            "bottom_y": top + plot_h, "bars": bars, "ticks": ticks, "peak": peak,
            "total": sum(h.total for h in per_hour)}


def _nice_steps():
    magnitude = 1
    while True:
        for m in (1, 2, 5):
            yield m * magnitude
        magnitude *= 10


# ---------------------------------------------------------------- dashboard and scores


@router.get("")
def dashboard(request: Request, user: PageAdmin, database: DatabaseDep):
    data = stats.overview(database)
    gold_report = gold.annotator_report(database)
    return _render(request, user, "admin/dashboard.html", {
        "o": data, "chart": bar_chart(data.per_hour),
        "gold_by_user": {a.user_id: a for a in gold_report.annotators}, "gold_items": gold_report.gold_items})


@router.get("/scores")
def scores(request: Request, user: PageAdmin, database: DatabaseDep,
           limit: Annotated[int, Query(ge=1, le=5000)] = 100, prompt_id: Annotated[DbId | None, Query()] = None):
    rows = stats.bws_scores(database, limit=limit, prompt_id=prompt_id)
    return _render(request, user, "admin/scores.html", {"rows": rows, "limit": limit, "prompt_id": prompt_id})


# ---------------------------------------------------------------- import


@router.get("/import")
def import_page(request: Request, user: PageAdmin, settings: SettingsDep):
    return _render(request, user, "admin/import.html", {"max_bytes": settings.max_upload_bytes})


@router.post("/import", dependencies=[Csrf])
def import_upload(request: Request, user: PageAdmin, database: DatabaseDep,
                  file: Annotated[UploadFile | None, File()] = None):
    if file is None or not file.filename:
        _flash(request, "Choose a file to import.", "bad")
        return _back("/admin/import")
    data = file.file.read()
    name = file.filename[:200]
    try:
        summary = imports.import_file(database, data, name)
    except ServiceError as exc:
        _flash(request, f"{name}: {exc.message}", "bad", errors=_error_details(exc.details),
               more_errors=max(len(exc.details) - FLASH_ERRORS, 0))
        return _back("/admin/import")
    next_step = None
    if summary.continuations_created:  # imported stories reach annotators only through a batch
        next_step = {"text": "Annotators see the new stories only once a batch holds them:",
                     "link": "build a batch", "href": "/admin/batches"}
    _flash(request, f"Imported {name}.", "ok", summary=summary.model_dump(), next_step=next_step)
    return _back("/admin/import")


# ---------------------------------------------------------------- batches


@router.get("/batches")
def batches_page(request: Request, user: PageAdmin, database: DatabaseDep, settings: SettingsDep,
                 q: Annotated[BoundedText(200), Query()] = "", offset: DbInt = 0):
    with database.read() as db:
        progress = stats.batch_progress(db)
        serving = tasks.batch_serving(db)
        prompts = imports.list_prompts(db, offset=offset, limit=100, q=q or None)
        versions = imports.list_model_versions(db)
    return _render(request, user, "admin/batches.html", {
        "batches": progress, "serving": serving, "priorities": BATCH_PRIORITIES,
        "prompts": prompts, "versions": versions, "q": q,
        "default_r": settings.annotations_per_tuple, "k": settings.tuple_size, "factor": settings.design_factor,
    })


def _selection(database, prompt_ids: list[int], typed_ids: list[int], model_version_ids: list[int]) -> dict[int, list[int]]:
    chosen = sorted(set(prompt_ids) | set(typed_ids))
    with database.read() as db:
        return tasks.continuations_by_prompt(db, chosen or None, model_version_ids or None)


@router.post("/batches/bws", dependencies=[Csrf])
def build_bws(
    request: Request, user: PageAdmin, database: DatabaseDep, settings: SettingsDep,
    name: Annotated[BoundedText(200), Form()] = "",
    seed: Annotated[DbInt, Form()] = 0,
    required: Annotated[int, Form()] = 3,
    prompt_ids: Annotated[IdList, Form()] = [],  # noqa: B006 (FastAPI copies defaults)
    prompt_ids_text: Annotated[str, Form(max_length=100_000)] = "",
    model_version_ids: Annotated[IdList, Form()] = [],  # noqa: B006
):
    name = name.strip() or f"BWS {utcnow():%Y-%m-%d %H:%M}"
    typed_ids = parse_id_list(prompt_ids_text, "prompt_ids_text")  # a bad id: 422 naming the field
    try:
        if not 1 <= required <= 100:
            raise Invalid("annotations per tuple (R) must be between 1 and 100")
        by_prompt = _selection(database, prompt_ids, typed_ids, model_version_ids)
        with database.write() as db:
            batch = tasks.build_bws_batch(db, name, by_prompt, seed=seed, required=required,
                                          k=settings.tuple_size, factor=settings.design_factor)
            batch_id, prompts = batch.id, batch.design.get("prompts", 0)
        _flash(request, f"Built BWS batch #{batch_id} “{name}” over {plural(prompts, 'prompt')} (seed {seed}, R = {required}).")
    except ServiceError as exc:
        _flash(request, f"No batch built: {exc.message}", "bad")
    return _back("/admin/batches")


@router.post("/batches/rating", dependencies=[Csrf])
def build_rating(
    request: Request, user: PageAdmin, database: DatabaseDep,
    name: Annotated[BoundedText(200), Form()] = "",
    required: Annotated[int, Form()] = 3,
    prompt_ids: Annotated[IdList, Form()] = [],  # noqa: B006
    prompt_ids_text: Annotated[str, Form(max_length=100_000)] = "",
    model_version_ids: Annotated[IdList, Form()] = [],  # noqa: B006
):
    name = name.strip() or f"Rating {utcnow():%Y-%m-%d %H:%M}"
    typed_ids = parse_id_list(prompt_ids_text, "prompt_ids_text")
    try:
        if not 1 <= required <= 100:
            raise Invalid("ratings per continuation (R) must be between 1 and 100")
        by_prompt = _selection(database, prompt_ids, typed_ids, model_version_ids)
        ids = [c for _, cs in sorted(by_prompt.items()) for c in cs]
        with database.write() as db:
            batch_id = tasks.build_rating_batch(db, name, ids, required=required).id
        _flash(request, f"Built rating batch #{batch_id} “{name}” with {plural(len(ids), 'continuation')} (R = {required}).")
    except ServiceError as exc:
        _flash(request, f"No batch built: {exc.message}", "bad")
    return _back("/admin/batches")


@router.post("/batches/{batch_id}/priority", dependencies=[Csrf])
def set_batch_priority(request: Request, user: PageAdmin, database: DatabaseDep, batch_id: DbId,
                       priority: Annotated[BoundedText(16), Form()]):
    try:
        with database.write() as db:
            tasks.set_batch_priority(db, batch_id, priority)
        _flash(request, f"Batch #{batch_id} is now served “{priority}”.")
    except ServiceError as exc:
        _flash(request, f"Priority not changed: {exc.message}", "bad")
    return _back("/admin/batches")


# ---------------------------------------------------------------- users and invites


@router.get("/users")
def users_page(request: Request, user: PageAdmin, database: DatabaseDep):
    with database.read() as db:
        people = users.list_users(db)
    invites = stats.open_invites(database)
    return _render(request, user, "admin/users.html", {
        "people": people, "roles": ROLES, "invites": invites, "base_url": str(request.base_url),
    })


@router.post("/users", dependencies=[Csrf])
def create_user(request: Request, user: PageAdmin, database: DatabaseDep,
                username: Annotated[BoundedText(200), Form()] = "",
                password: Annotated[BoundedText(1000), Form()] = "",
                role: Annotated[BoundedText(32), Form()] = "annotator"):
    try:
        with database.write() as db:
            created = users.create_user(db, username.strip(), password, role)
            _flash(request, f"Created {created.role} {created.username}.")
    except ServiceError as exc:
        _flash(request, f"No user created: {exc.message}", "bad")
    return _back("/admin/users")


@router.post("/users/{user_id}/role", dependencies=[Csrf])
def change_role(request: Request, user_id: DbId, user: PageAdmin, database: DatabaseDep,
                role: Annotated[BoundedText(32), Form()] = ""):
    try:
        with database.write() as db:
            changed = users.update_user(db, user_id, role=role, acting=user)
            _flash(request, f"{changed.username} is now {changed.role}.")
    except ServiceError as exc:
        _flash(request, exc.message, "bad")
    return _back("/admin/users")


@router.post("/users/{user_id}/active", dependencies=[Csrf])
def set_active(request: Request, user_id: DbId, user: PageAdmin, database: DatabaseDep,
               active: Annotated[bool, Form()] = False):
    try:
        with database.write() as db:
            changed = users.update_user(db, user_id, is_active=active, acting=user)
            _flash(request, f"{changed.username} is {'active' if changed.is_active else 'deactivated'}.")
    except ServiceError as exc:
        _flash(request, exc.message, "bad")
    return _back("/admin/users")


@router.post("/invites", dependencies=[Csrf])
def create_invite(request: Request, user: PageAdmin, database: DatabaseDep,
                  role: Annotated[BoundedText(32), Form()] = "annotator",
                  days: Annotated[int, Form()] = 14):
    try:
        if not 1 <= days <= 365:
            raise Invalid("an invite lasts 1 to 365 days")
        with database.write() as db:
            invite = users.create_invite(db, role, user, days=days)
            token, expires = invite.token, invite.expires_at
        url = f"{request.base_url}invite/{token}"
        _flash(request, f"Invite link for a new {role} (valid until {expires:%Y-%m-%d %H:%M} UTC):", invite_url=url)
    except ServiceError as exc:
        _flash(request, f"No invite created: {exc.message}", "bad")
    return _back("/admin/users")


# ---------------------------------------------------------------- crowd links (Prolific, MTurk)


@router.get("/crowd")
def crowd_page(request: Request, user: PageAdmin, database: DatabaseDep):
    with database.read() as db:
        links = crowd.list_crowd_invites(db)
        participants = {link.id: crowd.list_participants(db, link.id) for link in links}
    return _render(request, user, "admin/crowd.html", {
        "links": links, "platforms": CROWD_PLATFORMS, "platform_names": crowd.PLATFORM_NAMES,
        "origin": str(request.base_url).rstrip("/"), "max_quota": crowd.MAX_QUOTA,
        "max_minutes": crowd.MAX_SESSION_MINUTES, "participants": participants,
        "participant_rows": crowd.PARTICIPANT_ROWS, "max_participants": crowd.MAX_PARTICIPANTS,
    })


@router.post("/crowd", dependencies=[Csrf])
def create_crowd_link(request: Request, user: PageAdmin, database: DatabaseDep,
                      name: Annotated[BoundedText(200), Form()] = "",
                      platform: Annotated[BoundedText(16), Form()] = "prolific",
                      task_quota: Annotated[DbInt, Form()] = 40,
                      session_minutes: Annotated[DbInt | None, Form()] = None,  # empty: no limit
                      max_participants: Annotated[DbInt | None, Form()] = None,  # empty: no cap
                      completion_code: Annotated[BoundedText(64), Form()] = "",
                      completion_url: Annotated[BoundedText(500), Form()] = ""):
    try:
        with database.write() as db:
            invite = crowd.create_crowd_invite(
                db, user, name=name, platform=platform, task_quota=task_quota, session_minutes=session_minutes,
                max_participants=max_participants,
                completion_code=completion_code, completion_url=completion_url)
            url = str(request.base_url).rstrip("/") + crowd.link_template(invite)
        _flash(request, f"Crowd link created; paste it into {crowd.PLATFORM_NAMES[platform]}:", invite_url=url)
    except ServiceError as exc:
        _flash(request, f"No crowd link created: {exc.message}", "bad")
    return _back("/admin/crowd")


@router.post("/crowd/{link_id}/close", dependencies=[Csrf])
def close_crowd_link(request: Request, link_id: DbId, user: PageAdmin, database: DatabaseDep):
    with database.write() as db:
        crowd.close_crowd_invite(db, link_id, utcnow())  # unknown id: 404 page
    _flash(request, f"Crowd link #{link_id} is closed: nobody can start or resume through it.")
    return _back("/admin/crowd")


# ---------------------------------------------------------------- exports


@router.get("/exports")
def exports_page(request: Request, user: PageAdmin):
    return _render(request, user, "admin/exports.html", {"names": exports.EXPORT_NAMES, "formats": exports.FORMATS, "described": exports.describe()})


@router.get("/exports/{name}.{fmt}")
def export_download(name: str, fmt: str, user: PageAdmin, database: DatabaseDep):
    if name not in exports.EXPORT_NAMES or fmt not in exports.FORMATS:
        raise HTTPException(404, f"no export {name}.{fmt}")
    return StreamingResponse(
        exports.stream_export(database, name, fmt),
        media_type=exports.media_type(fmt),
        headers={"Content-Disposition": f'attachment; filename="{exports.filename(name, fmt)}"',
                 **exports.metadata_header(database)},
    )


# ---------------------------------------------------------------- trainer


def _training_charts(page: training.TrainerPage) -> dict[str, Any]:
    """First paint of the trainer page's charts (static/js/trainer_status.js redraws them as data arrives):
    one small chart per metric series of the shown round (single values listed instead), under a heading per
    part of the round (reward model, policy update, ...), KL per round."""
    groups: dict[str, list] = {}
    values = []
    for s in page.round_metrics.series if page.round_metrics else []:
        if len(s.points) < 2:
            values.append(s)
            continue
        groups.setdefault(s.group, []).append(charts.line_chart(
            [charts.Series(s.label, [(float(x), y) for x, y in s.points])],
            title=f"{s.group}: {s.label}", x_label="step", y_label=s.label, width=440, height=190))
    kl = charts.line_chart(
        [charts.Series("KL to the base reference", [(float(k.round_number), k.kl_to_reference) for k in page.kl_per_round])],
        title="KL of each round's policy to the base reference", x_label="training round",
        y_label="KL (nats per story)", height=220, empty="no round has a KL to the reference yet")
    return {"chart_groups": list(groups.items()), "single_values": values, "kl_chart": kl}


@router.get("/training")
def training_page(request: Request, user: PageAdmin, database: DatabaseDep, settings: SettingsDep):
    page = training.trainer_page(database, min_new_judgements=settings.trainer_min_new_judgements)
    return _render(request, user, "admin/training.html", {
        "status": page, "version_warnings": page.warnings, "phases": training.PHASES,
        "round_algorithms": training.ROUND_ALGORITHMS, **_training_charts(page)})


@router.get("/training/status.json")
def training_status_json(user: PageAdmin, database: DatabaseDep, settings: SettingsDep) -> training.TrainerPage:
    """The trainer page's data for its polling with the session cookie: the API's status plus the shown
    round's metric series, KL to the reference per round and the version warnings."""
    return training.trainer_page(database, min_new_judgements=settings.trainer_min_new_judgements)


def _queued_message(queued: training.RoundView, message: str) -> str:
    return f"{message} Warning: {queued.warning}" if queued.warning else message


@router.post("/training/rounds", dependencies=[Csrf])
def training_request_round(request: Request, user: PageAdmin, database: DatabaseDep, settings: SettingsDep,
                           algorithm: Annotated[str, Form(max_length=32)] = ""):
    try:
        queued = training.request_round(database, trigger="admin", algorithm=algorithm or None,
                                        min_new_judgements=settings.trainer_min_new_judgements)
        algorithm_named = queued.algorithm or "the trainer’s default algorithm"
        _flash(request, _queued_message(queued, f"Round {queued.number} queued ({algorithm_named}); "
                                                "the trainer starts it at its next poll."))
    except ServiceError as exc:
        _flash(request, exc.message, "bad")
    return _back("/admin/training")


@router.post("/training/bakeoff", dependencies=[Csrf])
def training_request_bakeoff(request: Request, user: PageAdmin, database: DatabaseDep, settings: SettingsDep,
                             algorithms: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI copies defaults)
                             required: Annotated[int, Form(ge=1, le=100)] = 2):
    try:
        queued = training.request_round(database, trigger="admin", bakeoff=algorithms, bakeoff_required=required,
                                        min_new_judgements=settings.trainer_min_new_judgements)
        _flash(request, _queued_message(queued, f"Bake-off round {queued.number} ({', '.join(algorithms)}) queued; "
                                                "the trainer starts it at its next poll."))
    except ServiceError as exc:
        _flash(request, exc.message, "bad")
    return _back("/admin/training")


# ---------------------------------------------------------------- gold checks


@router.get("/gold")
def gold_page(request: Request, user: PageAdmin, database: DatabaseDep,
              task_id: Annotated[DbId | None, Query()] = None, batch_id: Annotated[DbId | None, Query()] = None,
              offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0):
    report = gold.annotator_report(database)
    with database.read() as db:
        items = gold.list_items(db)
        marking = None
        if task_id is not None:
            try:
                marking = gold.task_for_marking(db, task_id)
            except ServiceError as exc:
                request.session["flash"] = {"message": exc.message, "kind": "bad"}
        candidates = gold.batch_tasks(db, batch_id, offset=offset) if batch_id is not None else None
        batches = stats.batch_progress(db)
    return _render(request, user, "admin/gold.html", {
        "report": report, "items": items, "marking": marking, "dimensions": RATING_DIMENSIONS,
        "batches": batches, "batch_id": batch_id, "candidates": candidates})


def _gold_form_answer(kind: str, form) -> gold.GoldAnswer:
    """The known answer from the marking form: best/worst radios, or a low and high per dimension."""
    def number(name: str) -> int | None:
        return parse_db_int(form.get(name) or "", name)

    if kind == "bws":
        return gold.GoldAnswer(best_id=number("best_id"), worst_id=number("worst_id"))
    ranges = {}
    for dimension in RATING_DIMENSIONS:
        low, high = number(f"low_{dimension}"), number(f"high_{dimension}")
        if low is not None or high is not None:
            ranges[dimension] = (low or 1, high or 5)
    return gold.GoldAnswer(rating_ranges=ranges)


@router.post("/gold/items/{task_id}", dependencies=[Csrf])
async def gold_mark(request: Request, user: PageAdmin, database: DatabaseDep, task_id: DbId):
    form = await request.form()
    try:
        with database.write() as db:
            kind = gold.task_for_marking(db, task_id).kind
            gold.mark(db, task_id, _gold_form_answer(kind, form))
        gold.forget_serving(database)
        _flash(request, f"Task #{task_id} is gold now.")
    except ServiceError as exc:
        _flash(request, f"Not marked: {exc.message}", "bad")
        return _back(f"/admin/gold?task_id={task_id}")
    return _back("/admin/gold")


@router.post("/gold/items/{task_id}/unmark", dependencies=[Csrf])
def gold_unmark(request: Request, user: PageAdmin, database: DatabaseDep, task_id: DbId):
    try:
        with database.write() as db:
            gold.unmark(db, task_id)
        gold.forget_serving(database)
        _flash(request, f"Task #{task_id} is a normal task again.")
    except ServiceError as exc:
        _flash(request, exc.message, "bad")
    return _back("/admin/gold")


@router.post("/gold/settings", dependencies=[Csrf])
def gold_settings(request: Request, user: PageAdmin, database: DatabaseDep,
                  rate_percent: Annotated[str, Form(max_length=20)] = "",
                  threshold_percent: Annotated[str, Form(max_length=20)] = "",
                  min_answers: Annotated[str, Form(max_length=20)] = ""):
    try:
        settings = gold.GoldSettings(rate=float(rate_percent) / 100, accuracy_threshold=float(threshold_percent) / 100,
                                     min_answers=int(min_answers))
    except ValueError:  # pydantic's ValidationError is one too
        _flash(request, "Settings not changed: the gold rate and the threshold are percentages from 0 to 100, "
                        "the minimum of gold answers a whole number from 1.", "bad")
        return _back("/admin/gold")
    gold.set_settings(database, settings)
    _flash(request, f"Gold checks: {settings.rate:.0%} of tasks; flagged below {settings.accuracy_threshold:.0%} "
                    f"after {settings.min_answers} gold answers.")
    return _back("/admin/gold")


@router.post("/users/{user_id}/exclusion", dependencies=[Csrf])
def set_exclusion(request: Request, user: PageAdmin, database: DatabaseDep, user_id: DbId,
                  exclude: Annotated[bool, Form()] = False, note: Annotated[BoundedText(gold.NOTE_MAX), Form()] = "",
                  back: Annotated[Literal["dashboard", "gold"], Form()] = "gold"):
    try:
        with database.write() as db:
            name = users.get_user(db, user_id).username
            if exclude:
                gold.exclude(db, user_id, user, note)
            else:
                gold.include(db, user_id)
        _flash(request, f"{name}'s judgements are {'left out of' if exclude else 'back in'} exports and training.")
    except ServiceError as exc:
        _flash(request, exc.message, "bad")
    return _back("/admin" if back == "dashboard" else "/admin/gold")
