"""Admin imports of prompts and continuations from JSON Lines or CSV.

One record (JSONL object or CSV row) per continuation:

    prompt           text, required
    continuation     text; optional: a record with only a prompt creates the prompt (the trainer writes for it)
    source           required with a continuation: who wrote it (model version or source name). An existing
                     ModelVersion of that name (any kind) is used, else ModelVersion(kind="source",
                     algorithm="import") is created.
    prompt_id        optional external id of the prompt. Prompts are de-duplicated by external id, else
                     (rows without one) by exact text.
    continuation_id  optional external id of the continuation, unique in the file and in the database.
    gold_tuple       optional: records with the same gold_tuple (any text) form one gold BWS tuple
                     (app/services/gold.py): 3 to 16 continuations of one prompt, served as a gold check.
    gold             "best" or "worst" in a gold tuple: its known best and worst (one of each at most,
                     at least one of them per tuple).
    gold_rating      optional: this continuation becomes a gold rating item with a known range,
                     "1-2" (every dimension) or "grammar=1-2; plot=1-3".

Other keys / columns are ignored. In CSV an empty cell means "absent"; in JSON use null or leave the key
out (an empty or blank string is an error). Texts are stored exactly as given (no stripping: GPT-2 style
continuations keep their leading space).

An import is all or nothing: it writes in one write transaction, and any bad record refuses the whole file
with an `Invalid` (422) error naming the first bad line and field, whose details list up to 50 errors as
{"line": n, "field": name, "message": msg}. Line numbers are physical lines of the file, 1-based (for a
CSV record spanning several lines, the line it starts on; for a JSON array, the element's position).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import Database, compile_statement
from app.models import Batch, Continuation, ModelVersion, Prompt, Task, TaskItem, utcnow
from app.services import gold
from app.services.errors import Conflict, Invalid
from app.services.tasks import build_rating_batch
from app.validation import storable_text

MAX_TEXT = 20_000
MAX_NAME = 200  # ModelVersion.name, Prompt.external_id and Continuation.external_id are String(200)
MAX_ERRORS = 50
FIELDS = ("prompt", "continuation", "source", "prompt_id", "continuation_id", "gold_tuple", "gold", "gold_rating")
GOLD_TUPLE_SIZES = (3, 16)  # a BWS tuple needs 3 items; the lease shows at most 16 in shuffled order
_IN_CHUNK = 500  # ids per IN (...) query


class ImportRow(BaseModel):
    """One validated record. `line` is where it was found in the file."""

    model_config = ConfigDict(extra="ignore", strict=True)

    line: int
    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    continuation: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    source: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    prompt_id: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    continuation_id: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    gold_tuple: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    gold: str | None = None
    gold_rating: str | None = Field(None, min_length=1, max_length=MAX_NAME)

    @field_validator("prompt", "continuation", "source", "prompt_id", "continuation_id", "gold_tuple", "gold_rating")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value if value is None else storable_text(value)  # no NUL, no lone surrogate

    @model_validator(mode="after")
    def _source_with_continuation(self) -> "ImportRow":
        if self.continuation is not None and self.source is None:
            raise _FieldError("source", "is required when a continuation is given (the model or source that wrote it)")
        if self.continuation is None and self.continuation_id is not None:
            raise _FieldError("continuation_id", "given without a continuation")
        for field in ("gold_tuple", "gold_rating"):
            if self.continuation is None and getattr(self, field) is not None:
                raise _FieldError(field, "given without a continuation")
        if self.gold is not None and (self.gold not in ("best", "worst") or self.gold_tuple is None):
            raise _FieldError("gold", 'is "best" or "worst" in a gold_tuple')
        if self.gold_rating is not None:
            try:
                gold.parse_rating_ranges(self.gold_rating)
            except ValueError as exc:
                raise _FieldError("gold_rating", str(exc)) from None
        return self


class ImportSummary(BaseModel):
    prompts_created: int = 0
    prompts_existing: int = 0
    continuations_created: int = 0
    sources_created: int = 0
    gold_items_created: int = 0


class _FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field, self.message = field, message


class _Errors:
    """Collects the first MAX_ERRORS problems and counts the rest."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.total = 0

    def add(self, line: int | None, field: str | None, message: str) -> None:
        self.total += 1
        if len(self.items) < MAX_ERRORS:
            self.items.append({"line": line, "field": field, "message": message})

    def raise_if_any(self, what: str = "the import was refused; nothing was imported") -> None:
        if not self.total:
            return
        first = self.items[0]
        where = [f"line {first['line']}"] if first["line"] is not None else []
        if first["field"]:
            where.append(f"field {first['field']!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        more = f" ({self.total} errors in all)" if self.total > 1 else ""
        raise Invalid(f"{prefix}{first['message']}{more}; {what}", self.items)


def _fail(line: int | None, field: str | None, message: str):
    errors = _Errors()
    errors.add(line, field, message)
    errors.raise_if_any()


# ---------------------------------------------------------------- parsing


def detect_format(data: bytes, filename: str) -> str:
    """"jsonl" or "csv": by extension, else by the first non-blank character ('{' or '[' means JSON)."""
    name = (filename or "").lower()
    if name.endswith((".jsonl", ".ndjson", ".json", ".jsonl.txt")):
        return "jsonl"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    head = data.lstrip()[:1]
    return "jsonl" if head in (b"{", b"[") else "csv"


def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        _fail(line, None, f"not valid UTF-8 (byte {exc.start}: {exc.reason}); save the file as UTF-8")
    if not text.strip():
        _fail(None, None, "the file is empty")
    return text


def _validate(record: Any, line: int, errors: _Errors) -> ImportRow | None:
    if not isinstance(record, dict):
        errors.add(line, None, f"expected an object with a 'prompt' field, got {type(record).__name__}")
        return None
    try:
        return ImportRow.model_validate({**{k: v for k, v in record.items() if k in FIELDS}, "line": line})
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(part) for part in err.get("loc", ()) if part != "line") or None
            ctx_error = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_error, _FieldError):
                errors.add(line, ctx_error.field, ctx_error.message)
            elif err.get("type") == "missing":
                errors.add(line, field, "is required")
            else:
                errors.add(line, field, _message(err))
        return None


def _message(err: dict) -> str:
    kind = err.get("type", "")
    if kind in ("string_type",):
        got = type(err.get("input")).__name__
        return f"must be text (a string), got {got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"is too long (at most {err.get('ctx', {}).get('max_length')} characters)"
    msg = err.get("msg", "invalid")
    return msg.removeprefix("Value error, ")


def _loads(text: str) -> Any:
    """json.loads; a value nested too deeply for Python's parser (a RecursionError, thousands of
    levels) is refused like malformed JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None


def _parse_jsonl(text: str, errors: _Errors) -> list[ImportRow]:
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of records; "line" is the record's position
        try:
            records = _loads(text)
        except json.JSONDecodeError as exc:
            _fail(exc.lineno, None, f"malformed JSON: {exc.msg} (column {exc.colno})")
        if not isinstance(records, list):
            _fail(1, None, "expected JSON Lines (one object per line) or an array of objects")
        rows = [_validate(record, i, errors) for i, record in enumerate(records, start=1)]
        return [row for row in rows if row is not None]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = _loads(line)
        except json.JSONDecodeError as exc:
            errors.add(number, None, f"malformed JSON: {exc.msg} (column {exc.colno})")
            continue
        row = _validate(record, number, errors)
        if row is not None:
            rows.append(row)
    return rows


def _parse_csv(text: str, errors: _Errors, delimiter: str = ",") -> list[ImportRow]:
    # strict: an unterminated quote is an error, not a field that swallows the rest of the file
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        _fail(1, None, f"malformed CSV: {exc}")
    header = [name.strip() for name in header]
    if "prompt" not in header:
        _fail(1, "prompt", f"missing CSV column 'prompt' (the header has: {', '.join(header) or 'nothing'})")
    if "continuation" in header and "source" not in header:
        _fail(1, "source", "missing CSV column 'source' (required with a 'continuation' column)")
    duplicates = sorted(name for name, n in Counter(header).items() if n > 1 and name in FIELDS)
    if duplicates:
        _fail(1, duplicates[0], f"CSV column {duplicates[0]!r} appears twice")
    rows = []
    start = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.add(start, None, f"malformed CSV: {exc}")
            break  # the reader cannot resynchronise reliably
        line, start = start, reader.line_num + 1
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) > len(header):
            errors.add(line, None, f"{len(values)} fields but the header has {len(header)} columns")
            continue
        record = {name: (value if value != "" else None) for name, value in zip(header, values)}
        row = _validate(record, line, errors)
        if row is not None:
            rows.append(row)
    return rows


def parse_upload(data: bytes, filename: str = "") -> list[ImportRow]:
    """Parses and validates a whole upload; raises Invalid listing the problems, or returns the rows."""
    if not data:
        _fail(None, None, "the file is empty")
    fmt = detect_format(data, filename)
    text = _decode(data)
    errors = _Errors()
    if fmt == "jsonl":
        rows = _parse_jsonl(text, errors)
    else:
        delimiter = "\t" if (filename or "").lower().endswith(".tsv") else ","
        rows = _parse_csv(text, errors, delimiter)
    _check_duplicate_ids(rows, errors)
    _check_gold_tuples(rows, errors)
    errors.raise_if_any()
    if not rows:
        _fail(None, None, "the file has no records")
    return rows


def _check_gold_tuples(rows: Sequence[ImportRow], errors: _Errors) -> None:
    """Each gold tuple: one prompt, 3 to 16 continuations, at most one best and one worst, one of them at least."""
    groups: dict[str, list[ImportRow]] = {}
    for row in rows:
        if row.gold_tuple is not None:
            groups.setdefault(row.gold_tuple, []).append(row)
    low, high = GOLD_TUPLE_SIZES
    for name, members in groups.items():
        first = members[0]
        if len({(row.prompt_id, row.prompt) for row in members}) > 1:
            errors.add(first.line, "gold_tuple", f"gold tuple {name!r} mixes prompts; a tuple is of one prompt")
        if not low <= len(members) <= high:
            errors.add(first.line, "gold_tuple", f"gold tuple {name!r} has {len(members)} continuations, not {low} to {high}")
        picks = [row.gold for row in members if row.gold is not None]
        if not picks or picks.count("best") > 1 or picks.count("worst") > 1:
            errors.add(first.line, "gold", f"gold tuple {name!r} needs one known best and/or one known worst")


def _check_duplicate_ids(rows: Sequence[ImportRow], errors: _Errors) -> None:
    seen: dict[str, int] = {}
    prompt_text: dict[str, tuple[str, int]] = {}
    for row in rows:
        if row.continuation_id is not None:
            if row.continuation_id in seen:
                errors.add(row.line, "continuation_id",
                           f"duplicate continuation_id {row.continuation_id!r} (first on line {seen[row.continuation_id]})")
            else:
                seen[row.continuation_id] = row.line
        if row.prompt_id is not None:
            first = prompt_text.setdefault(row.prompt_id, (row.prompt, row.line))
            if first[0] != row.prompt:
                errors.add(row.line, "prompt",
                           f"prompt_id {row.prompt_id!r} has a different text than on line {first[1]}")


# ---------------------------------------------------------------- storing


def _chunks(values: Iterable, size: int = _IN_CHUNK) -> Iterable[list]:
    values = list(values)
    for i in range(0, len(values), size):
        yield values[i : i + size]


@dataclass
class _Plan:
    """What an import will write, worked out from the rows and what the database held at `snapshot`:
    the prompt of each row (an existing prompt's id, or the index of a new one in new_prompts), the
    sources to create, and the existing ids it reuses."""

    snapshot: tuple
    row_prompts: list[int | None]  # per row: an existing prompt's id, or None (new: see row_new_prompt)
    row_new_prompt: list[int | None]  # per row: index into new_prompts
    new_prompts: list[tuple[str, str | None]]  # (text, external id), in order of first appearance
    versions: dict[str, int]  # existing sources by name
    new_sources: list[str]
    existing_used: set[int] = dataclass_field(default_factory=set)


def _snapshot(db: Session) -> tuple:
    """What a plan depends on, as it stands: the newest prompt, continuation and model version
    (imports and the trainer only ever add them; nothing changes or deletes them)."""
    return tuple(db.scalar(select(func.max(model.id))) for model in (Prompt, Continuation, ModelVersion))


def _plan(db: Session, rows: Sequence[ImportRow]) -> _Plan:
    """Checks the rows against the database (duplicate continuation ids, prompt ids whose stored text
    differs: Invalid) and works out what to write; writes nothing."""
    errors = _Errors()
    _check_duplicate_ids(rows, errors)
    _check_gold_tuples(rows, errors)
    errors.raise_if_any()
    snapshot = _snapshot(db)

    # Continuation external ids already in the database.
    ext_ids = [row.continuation_id for row in rows if row.continuation_id is not None]
    taken: set[str] = set()
    for chunk in _chunks(ext_ids):
        taken.update(db.scalars(select(Continuation.external_id).where(Continuation.external_id.in_(chunk))))
    for row in rows:
        if row.continuation_id in taken:
            errors.add(row.line, "continuation_id", f"continuation_id {row.continuation_id!r} already exists")

    # Prompts by external id, then by exact text.
    by_ext: dict[str, tuple[int, str]] = {}
    for chunk in _chunks({row.prompt_id for row in rows if row.prompt_id is not None}):
        for pid, ext, text in db.execute(select(Prompt.id, Prompt.external_id, Prompt.text).where(Prompt.external_id.in_(chunk))):
            by_ext[ext] = (pid, text)
    for row in rows:
        if row.prompt_id in by_ext and by_ext[row.prompt_id][1] != row.prompt:
            errors.add(row.line, "prompt", f"prompt_id {row.prompt_id!r} already exists with a different text")
    errors.raise_if_any()

    by_text: dict[str, int] = {}
    for chunk in _chunks({row.prompt for row in rows if row.prompt_id is None}, 100):
        for pid, text in db.execute(select(func.min(Prompt.id), Prompt.text).where(Prompt.text.in_(chunk)).group_by(Prompt.text)):
            by_text[text] = pid

    names = {row.source for row in rows if row.continuation is not None}
    versions: dict[str, int] = {}
    for chunk in _chunks(names):
        versions.update(db.execute(select(ModelVersion.name, ModelVersion.id).where(ModelVersion.name.in_(chunk))).all())
    plan = _Plan(snapshot=snapshot, row_prompts=[], row_new_prompt=[], new_prompts=[], versions=versions,
                 new_sources=sorted(names - set(versions)))

    created_by_ext: dict[str, int] = {}
    created_by_text: dict[str, int] = {}
    for row in rows:
        existing = new = None
        if row.prompt_id is not None:
            if row.prompt_id in by_ext:
                existing = by_ext[row.prompt_id][0]
            elif row.prompt_id in created_by_ext:
                new = created_by_ext[row.prompt_id]
            else:
                new = created_by_ext[row.prompt_id] = len(plan.new_prompts)
                plan.new_prompts.append((row.prompt, row.prompt_id))
                created_by_text.setdefault(row.prompt, new)
        elif row.prompt in by_text:
            existing = by_text[row.prompt]
        elif row.prompt in created_by_text:
            new = created_by_text[row.prompt]
        else:
            new = created_by_text[row.prompt] = len(plan.new_prompts)
            plan.new_prompts.append((row.prompt, None))
        if existing is not None:
            plan.existing_used.add(existing)
        plan.row_prompts.append(existing)
        plan.row_new_prompt.append(new)
    return plan


# Each writes rows of one table and returns their ids, in order.
Inserter = Callable[[type, list[dict]], list[int]]
# The columns of the rows an import writes, beside those _insert_rows gives: the models' defaults.
NEW_ROW_COLUMNS = {
    ModelVersion: {"kind": "source", "algorithm": "import", "parent_id": None, "settings": {}, "metrics": {}, "path": None},
    Prompt: {"is_active": True},
    Continuation: {"generation_settings": {}},
}


def _insert_rows(rows: Sequence[ImportRow], plan: _Plan, insert_all: Inserter) -> tuple[ImportSummary, list]:
    """Writes a plan's sources, prompts and continuations through insert_all; returns the summary (gold
    aside) and the gold rows with their continuation's and prompt's ids, for _store_gold."""
    versions = dict(plan.versions)
    versions.update(zip(plan.new_sources, insert_all(ModelVersion, [{"name": n} for n in plan.new_sources]), strict=True))
    prompt_ids = insert_all(Prompt, [{"text": text, "external_id": ext} for text, ext in plan.new_prompts])
    stored = [(row, existing if existing is not None else prompt_ids[new])
              for row, existing, new in zip(rows, plan.row_prompts, plan.row_new_prompt, strict=True)
              if row.continuation is not None]
    continuation_ids = insert_all(Continuation, [
        {"prompt_id": prompt_id, "model_version_id": versions[row.source], "text": row.continuation,
         "external_id": row.continuation_id} for row, prompt_id in stored])
    gold_rows = [(row, cid, prompt_id) for (row, prompt_id), cid in zip(stored, continuation_ids, strict=True)
                 if row.gold_tuple is not None or row.gold_rating is not None]
    summary = ImportSummary(prompts_created=len(plan.new_prompts), prompts_existing=len(plan.existing_used),
                            continuations_created=len(stored), sources_created=len(plan.new_sources))
    return summary, gold_rows


def _inserting_returning(db: Session) -> Inserter:
    """PostgreSQL: multi-row INSERTs, RETURNING the ids in order."""
    def insert_all(model, values: list[dict]) -> list[int]:
        if not values:
            return []
        return list(db.scalars(insert(model).returning(model.id, sort_by_parameter_order=True),
                               [{**NEW_ROW_COLUMNS[model], **row} for row in values]))
    return insert_all


class _SqliteInserts:
    """SQLite: an import's INSERTs made ready outside the write transaction, to run in it in a few
    executemany calls. The new rows get the ids after the largest at the plan's snapshot, valid while
    that snapshot holds (checked in the write transaction, which holds SQLite's one write lock).
    RETURNING ids in order would cost SQLAlchemy one statement per row there, and its parameter
    processing per row as much again (30,000 lines: about 1.5 s under the lock against 0.2)."""

    def __init__(self, dialect, snapshot: tuple) -> None:
        self.dialect = dialect
        self.next_id = dict(zip((Prompt, Continuation, ModelVersion), ((top or 0) + 1 for top in snapshot), strict=True))
        self.statements: list[tuple[str, list[tuple]]] = []
        self.outcome: tuple[ImportSummary, list] = (ImportSummary(), [])

    @classmethod
    def prepare(cls, db: Session, rows: Sequence[ImportRow], plan: _Plan) -> "_SqliteInserts":
        inserts = cls(db.get_bind().dialect, plan.snapshot)
        inserts.outcome = _insert_rows(rows, plan, inserts)
        return inserts

    def __call__(self, model, values: list[dict]) -> list[int]:
        if not values:
            return []
        first = self.next_id[model]
        ids = list(range(first, first + len(values)))
        self.next_id[model] = first + len(values)
        now = utcnow()
        full = [{**NEW_ROW_COLUMNS[model], "created_at": now, **row, "id": i} for row, i in zip(values, ids, strict=True)]
        compiled = compile_statement(insert(model.__table__), self.dialect, column_keys=list(full[0]))
        self.statements.append((compiled.sql, [tuple(compiled.arguments(row)) for row in full]))
        return ids

    def run(self, db: Session) -> tuple[ImportSummary, list]:
        """Runs the INSERTs in the caller's write transaction; returns what _insert_rows returned."""
        conn = db.connection()
        for sql, parameters in self.statements:
            conn.exec_driver_sql(sql, parameters)
        return self.outcome


def _store_gold(db: Session, gold_rows: list[tuple[ImportRow, int, int]], name: str) -> int:
    """The gold tuples and gold rating items of an import (rows with their continuation's and prompt's
    ids), each kind in a batch of its own (R = 1: gold tasks go to everyone once whatever R is).
    Returns how many."""
    label = f"Gold checks from {name or 'an import'}"[:200]
    tuples: dict[str, list[tuple[ImportRow, int, int]]] = {}
    for member in gold_rows:
        if member[0].gold_tuple is not None:
            tuples.setdefault(member[0].gold_tuple, []).append(member)
    if tuples:
        batch = Batch(name=label, kind="bws", annotations_per_task=1, design={"gold": True})
        db.add(batch)
        db.flush()
        for members in tuples.values():
            task = Task(batch_id=batch.id, kind="bws", prompt_id=members[0][2], required=1)
            task.items = [TaskItem(position=p, continuation_id=cid) for p, (_row, cid, _pid) in enumerate(members)]
            db.add(task)
            db.flush()
            known = {row.gold: cid for row, cid, _pid in members if row.gold is not None}
            gold.mark(db, task.id, gold.GoldAnswer(best_id=known.get("best"), worst_id=known.get("worst")))
    rated = [(row, cid) for row, cid, _pid in gold_rows if row.gold_rating is not None]
    if rated:
        batch = build_rating_batch(db, label, [cid for _row, cid in rated], required=1)
        for (row, _cid), task_id in zip(rated, db.scalars(select(Task.id).where(Task.batch_id == batch.id).order_by(Task.id)), strict=True):
            gold.mark(db, task_id, gold.GoldAnswer(rating_ranges=gold.parse_rating_ranges(row.gold_rating)))
    return len(tuples) + len(rated)


def import_file(database: Database, data: bytes, filename: str = "") -> ImportSummary:
    """Parse, validate and store a whole upload: all or nothing.

    Only the INSERTs run in the write transaction. Parsing, the checks against the database and (on
    SQLite) the INSERTs' parameters are done before it, in a read: on SQLite the write lock is the
    one every annotator's lease and submission waits for, and a 30,000-line import held it for 5-7 s
    when everything ran inside it (benchmarks/import_stall.py). If anything was added meanwhile, the
    checks run again inside the write transaction."""
    rows = parse_upload(data, filename)
    with database.read() as db:
        plan = _plan(db, rows)
        prepared = _SqliteInserts.prepare(db, rows, plan) if database.is_sqlite else None
    try:
        with database.write() as db:
            if _snapshot(db) != plan.snapshot:  # something was added meanwhile: again, under the lock
                plan = _plan(db, rows)
                prepared = _SqliteInserts.prepare(db, rows, plan) if database.is_sqlite else None
            if prepared is not None:
                summary, gold_rows = prepared.run(db)
            else:
                summary, gold_rows = _insert_rows(rows, plan, _inserting_returning(db))
            summary.gold_items_created = _store_gold(db, gold_rows, filename)
    except IntegrityError as exc:  # a concurrent import took an external id or source name meanwhile
        raise Conflict("the import collided with a concurrent change (an external id or source name was "
                       "taken meanwhile); nothing was imported, please retry") from exc
    if summary.gold_items_created:
        gold.forget_serving(database)
    return summary


# ---------------------------------------------------------------- choosing prompts (admin pages and API)


class PromptInfo(BaseModel):
    id: int
    external_id: str | None
    text: str
    is_active: bool
    continuations: int


class PromptPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[PromptInfo]


class ModelVersionInfo(BaseModel):
    id: int
    name: str
    kind: str
    algorithm: str
    parent_id: int | None
    continuations: int


def prompt_ids(db: Session, active_only: bool = False) -> list[int]:
    query = select(Prompt.id).order_by(Prompt.id)
    if active_only:
        query = query.where(Prompt.is_active.is_(True))
    return list(db.scalars(query))


def list_prompts(db: Session, offset: int = 0, limit: int = 50, q: str | None = None) -> PromptPage:
    """A page of prompts with how many continuations each has; `q` filters by a substring of the text."""
    counts = (
        select(Continuation.prompt_id, func.count().label("n")).group_by(Continuation.prompt_id).subquery()
    )
    where = []
    if q:
        where.append(Prompt.text.contains(q, autoescape=True))
    total = db.scalar(select(func.count()).select_from(Prompt).where(*where)) or 0
    rows = db.execute(
        select(Prompt, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.prompt_id == Prompt.id)
        .where(*where)
        .order_by(Prompt.id)
        .offset(offset)
        .limit(limit)
    ).all()
    items = [PromptInfo(id=p.id, external_id=p.external_id, text=p.text, is_active=p.is_active, continuations=n)
             for p, n in rows]
    return PromptPage(total=total, offset=offset, limit=limit, items=items)


def list_model_versions(db: Session) -> list[ModelVersionInfo]:
    counts = dict(db.execute(select(Continuation.model_version_id, func.count()).group_by(Continuation.model_version_id)).all())
    return [
        ModelVersionInfo(id=v.id, name=v.name, kind=v.kind, algorithm=v.algorithm, parent_id=v.parent_id,
                         continuations=counts.get(v.id, 0))
        for v in db.scalars(select(ModelVersion).order_by(ModelVersion.id))
    ]
