"""Gold and attention checks: tasks with a known answer, each annotator's accuracy on them, and
leaving an annotator's judgements out of exports and training.

- Gold items: an admin marks a BWS tuple with its known best and/or worst, or a rating item with a
  known range per dimension (here, through the API or the admin pages, or in an import). Gold tasks
  are served by gold_serving.py, to everyone once, at the gold rate (one global setting).
- Accuracy: a BWS gold answer is right when every known pick is right (best and worst both, where
  both are known); `pick_accuracy` counts the picks singly. A rating gold answer is right when every
  dimension with a known range lies inside it. Every stored judgement on a gold task counts, surplus
  and those made before the task became gold included. An annotator with at least `min_answers` gold
  answers and an accuracy below `accuracy_threshold` is flagged.
- Exclusion: an admin excludes an annotator (one row in annotator_exclusion; deleting it includes them
  again). Exports and the trainer read only `usable(...)` judgements: not by an excluded annotator, and
  not on a gold task (gold answers are checks, and every annotator sees each gold task: they would
  weigh a few tuples many times over). Exports record both in their metadata (`export_metadata`).
"""

import re
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session, selectinload

from app.db import Database
from app.models import (
    RATING_DIMENSIONS,
    AnnotatorExclusion,
    AppSetting,
    Batch,
    BwsJudgement,
    GoldItem,
    Rating,
    Task,
    User,
    utcnow,
)
from app.services import gold_serving, stats
from app.services.errors import Invalid, NotFound
from app.services.tasks import serve_rank
from app.validation import BoundedText, DbId

GOLD_KINDS = ("bws", "rating")
NOTE_MAX = 500


# ---------------------------------------------------------------- settings


class GoldSettings(BaseModel):
    rate: float = Field(gold_serving.DEFAULT_RATE, ge=0, le=1,
                        description="share of leases that are gold checks, while gold tasks are left for the person")
    accuracy_threshold: float = Field(0.7, ge=0, le=1, description="flag annotators whose gold accuracy is below this")
    min_answers: int = Field(5, ge=1, le=100_000, description="gold answers an annotator needs before they can be flagged")


def get_settings(db: Session) -> GoldSettings:
    stored = db.scalar(select(AppSetting.value).where(AppSetting.key == gold_serving.SETTINGS_KEY))
    return GoldSettings(**(stored or {}))


def set_settings(database: Database, settings: GoldSettings) -> GoldSettings:
    with database.write() as db:
        row = db.get(AppSetting, gold_serving.SETTINGS_KEY)
        if row is None:
            db.add(AppSetting(key=gold_serving.SETTINGS_KEY, value=settings.model_dump()))
        else:
            row.value, row.updated_at = settings.model_dump(), utcnow()
    gold_serving.forget(database)
    return settings


# ---------------------------------------------------------------- gold items


RatingRanges = dict[str, tuple[int, int]]


class GoldAnswer(BaseModel):
    """The known answer of a task: best and/or worst (continuation ids) of a BWS tuple, or rating ranges."""

    best_id: DbId | None = Field(None, description="BWS: the continuation that must be picked best")
    worst_id: DbId | None = Field(None, description="BWS: the continuation that must be picked worst")
    rating_ranges: dict[BoundedText(32), tuple[int, int]] | None = Field(
        None, max_length=len(RATING_DIMENSIONS),
        description='rating: {dimension: [low, high]} (1-5, both included) for one or more of grammar, creativity, consistency, plot')


class GoldItemView(BaseModel):
    task_id: int
    batch_id: int
    kind: str
    prompt: str
    items: list[tuple[int, str]]  # (continuation id, text) in stored order
    best_id: int | None
    worst_id: int | None
    rating_ranges: RatingRanges | None
    answers: int  # judgements stored on it
    correct: int


class TaskSummary(BaseModel):
    task_id: int
    kind: str
    prompt: str
    is_gold: bool
    items: list[tuple[int, str]] = []  # (continuation id, its opening words): what tells a prompt's tasks apart


class TaskPage(BaseModel):
    """One page of a batch's tasks, in id order."""

    tasks: list[TaskSummary]
    total: int  # tasks in the batch
    offset: int
    limit: int


SNIPPET_WORDS = 8  # opening words of each continuation shown beside a task


def _snippet(text: str) -> str:
    words = text.split()
    return " ".join(words[:SNIPPET_WORDS]) + (" …" if len(words) > SNIPPET_WORDS else "")


def batch_tasks(db: Session, batch_id: int, offset: int = 0, limit: int = 100) -> TaskPage:
    """A page of a batch's tasks with their continuations' opening words, to pick gold ones from on the admin page."""
    golds = set(db.scalars(select(GoldItem.task_id).join(Task, Task.id == GoldItem.task_id).where(Task.batch_id == batch_id)))
    total = db.scalar(select(func.count()).select_from(Task).where(Task.batch_id == batch_id)) or 0
    tasks = db.scalars(select(Task).where(Task.batch_id == batch_id).order_by(Task.id).offset(offset).limit(limit)
                       .options(selectinload(Task.items))).all()
    return TaskPage(total=total, offset=offset, limit=limit, tasks=[
        TaskSummary(task_id=t.id, kind=t.kind, prompt=t.prompt.text, is_gold=t.id in golds,
                    items=[(i.continuation_id, _snippet(i.continuation.text)) for i in t.items]) for t in tasks])


def _invalid(field: str, message: str) -> Invalid:
    return Invalid(f"{field}: {message}", [{"loc": ["body", field], "msg": message}])


def _checked_answer(task: Task, answer: GoldAnswer) -> GoldAnswer:
    if task.kind not in GOLD_KINDS:
        raise Invalid(f"a {task.kind} task cannot be gold (only BWS tuples and rating items)")
    if task.kind == "bws":
        if answer.rating_ranges is not None:
            raise _invalid("rating_ranges", "a BWS tuple has a known best and/or worst, not rating ranges")
        if answer.best_id is None and answer.worst_id is None:
            raise _invalid("best_id", "give the known best, the known worst, or both")
        items = {item.continuation_id for item in task.items}
        for field in ("best_id", "worst_id"):
            value = getattr(answer, field)
            if value is not None and value not in items:
                raise _invalid(field, f"continuation {value} is not an item of tuple {task.id}")
        if answer.best_id is not None and answer.best_id == answer.worst_id:
            raise _invalid("worst_id", "the same continuation as best_id")
        return answer
    if answer.best_id is not None or answer.worst_id is not None:
        raise _invalid("best_id", "a rating item has known rating ranges, not a best or worst")
    if not answer.rating_ranges:
        raise _invalid("rating_ranges", "give a range for at least one dimension")
    for dimension, (low, high) in answer.rating_ranges.items():
        if dimension not in RATING_DIMENSIONS:
            raise _invalid("rating_ranges", f"unknown dimension {dimension!r} (one of {', '.join(RATING_DIMENSIONS)})")
        if not 1 <= low <= high <= 5:
            raise _invalid("rating_ranges", f"{dimension}: a range is low-high with 1 <= low <= high <= 5, not {low}-{high}")
    return answer


def mark(db: Session, task_id: int, answer: GoldAnswer) -> GoldItem:
    """Makes a task gold with this known answer (or changes the answer of a gold task)."""
    task = db.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    answer = _checked_answer(task, answer)
    gold = db.get(GoldItem, task_id) or GoldItem(task_id=task_id)
    gold.best_id, gold.worst_id = answer.best_id, answer.worst_id
    gold.rating_ranges = {d: list(r) for d, r in answer.rating_ranges.items()} if answer.rating_ranges else None
    db.add(gold)
    task.serve_rank = gold_serving.GOLD_RANK  # out of the normal serving order, into the gold draw
    db.flush()
    return gold


def forget_serving(database: Database) -> None:
    """After marking or unmarking in a write session: this process serves the change at once (others
    within gold_serving.REFRESH_SECONDS)."""
    gold_serving.forget(database)


def unmark(db: Session, task_id: int) -> None:
    """Makes a gold task a normal one again, served in its batch's order."""
    gold = db.get(GoldItem, task_id)
    if gold is None:
        raise NotFound(f"task {task_id} is not gold")
    task = db.get(Task, task_id)
    batch = db.get(Batch, task.batch_id)
    db.delete(gold)
    task.serve_rank = serve_rank(batch.priority, batch.is_newest_round)
    db.flush()


def _bws_right(gold: GoldItem, best_id: int, worst_id: int) -> tuple[int, int]:
    """(picks right, picks known)."""
    picks = [(gold.best_id, best_id), (gold.worst_id, worst_id)]
    known = [(expected, given) for expected, given in picks if expected is not None]
    return sum(expected == given for expected, given in known), len(known)


def _rating_right(ranges: dict, scores: dict[str, int]) -> bool:
    return all(low <= scores[dimension] <= high for dimension, (low, high) in ranges.items())


def _gold_answers(db: Session):
    """(user_id, task_id, picks right, picks known, right) for every judgement on a gold task."""
    golds = {g.task_id: g for g in db.scalars(select(GoldItem))}
    if not golds:
        return
    for user_id, task_id, best_id, worst_id in db.execute(
            select(BwsJudgement.user_id, BwsJudgement.task_id, BwsJudgement.best_id, BwsJudgement.worst_id)
            .join(GoldItem, GoldItem.task_id == BwsJudgement.task_id).order_by(BwsJudgement.id)):
        right, known = _bws_right(golds[task_id], best_id, worst_id)
        yield user_id, task_id, right, known, right == known
    for row in db.execute(select(Rating.user_id, Rating.task_id, *[getattr(Rating, d) for d in RATING_DIMENSIONS])
                          .join(GoldItem, GoldItem.task_id == Rating.task_id).order_by(Rating.id)):
        right = _rating_right(golds[row.task_id].rating_ranges or {}, {d: getattr(row, d) for d in RATING_DIMENSIONS})
        yield row.user_id, row.task_id, int(right), 1, right


def list_items(db: Session) -> list[GoldItemView]:
    answers: dict[int, list[bool]] = {}
    for _user, task_id, _right, _known, correct in _gold_answers(db):
        answers.setdefault(task_id, []).append(correct)
    views = []
    for gold, task in db.execute(select(GoldItem, Task).join(Task, Task.id == GoldItem.task_id).order_by(GoldItem.task_id)):
        views.append(GoldItemView(
            task_id=task.id, batch_id=task.batch_id, kind=task.kind, prompt=task.prompt.text,
            items=[(i.continuation_id, i.continuation.text) for i in task.items],
            best_id=gold.best_id, worst_id=gold.worst_id,
            rating_ranges={d: tuple(r) for d, r in gold.rating_ranges.items()} if gold.rating_ranges else None,
            answers=len(answers.get(task.id, [])), correct=sum(answers.get(task.id, []))))
    return views


class TaskForMarking(BaseModel):
    task_id: int
    kind: str
    prompt: str
    items: list[tuple[int, str]]
    gold: GoldAnswer | None


def task_for_marking(db: Session, task_id: int) -> TaskForMarking:
    """A task with its items, for the admin page that marks it gold."""
    task = db.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    gold = db.get(GoldItem, task_id)
    return TaskForMarking(
        task_id=task.id, kind=task.kind, prompt=task.prompt.text,
        items=[(i.continuation_id, i.continuation.text) for i in task.items],
        gold=GoldAnswer(best_id=gold.best_id, worst_id=gold.worst_id, rating_ranges=gold.rating_ranges) if gold else None)


_RANGE = re.compile(r"^\s*([1-5])\s*-\s*([1-5])\s*$")


def parse_rating_ranges(text: str) -> RatingRanges:
    """'1-2' (every dimension) or 'grammar=1-2; plot=1-3' -> {dimension: (low, high)}; ValueError if malformed."""
    if "=" not in text:
        parts = [(dimension, text) for dimension in RATING_DIMENSIONS]
    else:
        parts = [tuple(part.split("=", 1)) for part in re.split(r"[;,]", text) if part.strip()]
        if any(len(part) != 2 for part in parts):
            raise ValueError("write dimension=low-high pairs separated by ';'")
    ranges = {}
    for dimension, span in parts:
        dimension = dimension.strip()
        found = _RANGE.match(span)
        if dimension not in RATING_DIMENSIONS:
            raise ValueError(f"unknown dimension {dimension[:40]!r} (one of {', '.join(RATING_DIMENSIONS)})")
        if found is None or int(found[1]) > int(found[2]):
            raise ValueError(f"{dimension}: a range is low-high within 1-5, e.g. 1-2, not {span.strip()[:20]!r}")
        ranges[dimension] = (int(found[1]), int(found[2]))
    if not ranges:
        raise ValueError("give a range, e.g. 1-2, or dimension=low-high pairs")
    return ranges


# ---------------------------------------------------------------- annotators


class AnnotatorGold(BaseModel):
    user_id: int
    username: str
    role: str
    gold_answers: int
    gold_correct: int
    accuracy: float | None  # gold_correct / gold_answers
    picks_right: int  # single picks (BWS best, BWS worst, a rating answer) that were right
    picks_known: int
    pick_accuracy: float | None
    median_bws_ms: float | None
    median_rating_ms: float | None
    flagged: bool  # at least min_answers gold answers and accuracy below the threshold
    excluded: bool
    excluded_at: datetime | None
    exclusion_note: str


class GoldReport(BaseModel):
    settings: GoldSettings
    gold_items: int
    annotators: list[AnnotatorGold]


def annotator_report(database: Database) -> GoldReport:
    with database.read() as db:
        settings = get_settings(db)
        totals: dict[int, list[int]] = {}  # user -> [answers, correct, picks right, picks known]
        for user_id, _task, right, known, correct in _gold_answers(db):
            t = totals.setdefault(user_id, [0, 0, 0, 0])
            t[0], t[1], t[2], t[3] = t[0] + 1, t[1] + correct, t[2] + right, t[3] + known
        medians = stats.median_durations(db)
        exclusions = {e.user_id: e for e in db.scalars(select(AnnotatorExclusion))}
        people = db.execute(select(User.id, User.username, User.role)
                            .where((User.role != "admin") | User.id.in_(list(totals) + list(exclusions) or [-1]))
                            .order_by(User.username)).all()
        gold_items = db.scalar(select(func.count()).select_from(GoldItem))
    result = []
    for user_id, username, role in people:
        answers, correct, right, known = totals.get(user_id, [0, 0, 0, 0])
        accuracy = correct / answers if answers else None
        excluded = exclusions.get(user_id)
        result.append(AnnotatorGold(
            user_id=user_id, username=username, role=role, gold_answers=answers, gold_correct=correct,
            accuracy=accuracy, picks_right=right, picks_known=known, pick_accuracy=right / known if known else None,
            median_bws_ms=medians.get((user_id, "bws")), median_rating_ms=medians.get((user_id, "rating")),
            flagged=answers >= settings.min_answers and accuracy is not None and accuracy < settings.accuracy_threshold,
            excluded=excluded is not None, excluded_at=excluded.excluded_at if excluded else None,
            exclusion_note=excluded.note if excluded else ""))
    result.sort(key=lambda a: (not a.flagged, a.accuracy if a.accuracy is not None else 2.0, a.username))
    return GoldReport(settings=settings, gold_items=gold_items, annotators=result)


def exclude(db: Session, user_id: int, acting: User, note: str = "") -> AnnotatorExclusion:
    """Leaves the user's judgements out of exports and training from now on (again: no change)."""
    user = db.get(User, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}")
    existing = db.get(AnnotatorExclusion, user_id)
    if existing is not None:
        return existing
    exclusion = AnnotatorExclusion(user_id=user_id, excluded_by_id=acting.id, note=note[:NOTE_MAX])
    db.add(exclusion)
    db.flush()
    return exclusion


def include(db: Session, user_id: int) -> None:
    """Takes the user's judgements into exports and training again (not excluded: no change)."""
    if db.get(User, user_id) is None:
        raise NotFound(f"no user {user_id}")
    db.execute(delete(AnnotatorExclusion).where(AnnotatorExclusion.user_id == user_id))


# ---------------------------------------------------------------- what exports and training read


def usable(model):
    """SQL condition on BwsJudgement or Rating rows: judgements that exports and training read (not by
    an excluded annotator, not on a gold task)."""
    return (~exists().where(AnnotatorExclusion.user_id == model.user_id)
            & ~exists().where(GoldItem.task_id == model.task_id))


def export_metadata(db: Session) -> dict:
    """What an export left out, for its metadata."""
    excluded = db.execute(select(User.username, AnnotatorExclusion.excluded_at, AnnotatorExclusion.note)
                          .join(User, User.id == AnnotatorExclusion.user_id).order_by(User.username)).all()
    return {
        "generated_at": utcnow().isoformat(),
        "excluded_annotators": [{"annotator": name, "excluded_at": at.isoformat(), "note": note}
                                for name, at, note in excluded],
        "gold_tasks_left_out": db.scalar(select(func.count()).select_from(GoldItem)),
        "left_out": "judgements by excluded annotators, and judgements on gold tasks (quality checks)",
    }
