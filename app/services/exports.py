"""Streamed exports of judgements, ratings, preference pairs and scores as JSON Lines, CSV or Parquet.

Every export is a generator of bytes. Rows are read in keyset-paged chunks (`id > last ORDER BY id
LIMIT n`) inside one read session, so no table is ever loaded whole; Parquet is written one row group
per chunk into an in-memory sink that is drained after every row group.

Exports (columns in order):

- pairs: the preference pairs implied by every BWS judgement (best beats each other item, each middle
  item beats worst: 2k-3 pairs, 5 for k = 4), ready for TRL's RewardTrainer / DPOTrainer as they are:
  prompt, chosen, rejected (plain texts), then judgement_id, annotator, tuple_id, chosen_model_version,
  rejected_model_version, chosen_id, rejected_id, is_surplus, score_margin.
  score_margin = max(0, counting score of chosen - counting score of rejected), counting scores over ALL
  judgements (surplus ones included). Not named `margin` on purpose: TRL's RewardTrainer puts a column
  of that name into its loss whenever one is present (-log sigmoid(r_chosen - r_rejected - margin)), so
  margins are opt-in: rename the column to `margin` to train with them.
- judgements: judgement_id, tuple_id, batch_id, prompt_id, annotator, items (continuation ids in the
  order shown), best_id, worst_id, duration_ms, is_surplus, created_at.
- ratings: rating_id, task_id, continuation_id, model_version, annotator, grammar, creativity,
  consistency, plot, comment, duration_ms, is_surplus, created_at.
- scores: one row per continuation (all of them; never-judged ones have 0 appearances and null scores):
  continuation_id, prompt_id, model_version, appearances, best, worst, counting_score, bt_score, text.
  bt_score is Bradley-Terry on the implied pairs, fitted PER PROMPT (continuations of different prompts
  are never compared, so one global fit would only join disconnected components arbitrarily) and
  centred to mean 0 within each prompt: compare bt_scores within a prompt, not across prompts.

Left out of every export (app/services/gold.py): judgements by annotators an admin excluded, and
judgements on gold tasks (quality checks). The export's metadata says so and names the excluded
annotators: `export_metadata` (the API's X-Storyloop-Export-Metadata header, and `storyloop` in a
Parquet file's schema metadata).

Surplus judgements (late, or beyond R) are exported and counted in scores like any other; filter on
`is_surplus` to leave them out. CSV is flat: a list (the judgements' `items`) is its ids joined by single
spaces ("12 15 3 7"), booleans `true`/`false`, nulls empty, and a text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading
`'` (OWASP's defence against CSV injection: a spreadsheet would run it as a formula); numbers are left
alone, and JSONL and Parquet keep every text exactly as stored. Times are ISO 8601 UTC strings in
JSONL/CSV and timestamp[us, UTC] in Parquet.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.db import Database
from app.models import BwsJudgement, Continuation, ModelVersion, Prompt, Rating, Task, User
from app.services import gold
from app.services.errors import NotFound
from app.services.scoring import BwsAnnotation, bradley_terry_scores, counting_scores, implied_pairs, pair_margin
from app.services.story_text import completion_text

FORMATS = ("jsonl", "csv", "parquet")
CHUNK = 1000  # rows per query page and per Parquet row group

_MEDIA_TYPES = {
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}

Row = dict[str, Any]


@dataclass(frozen=True)
class _Export:
    schema: pa.Schema
    chunks: Callable[[Session], Iterator[list[Row]]]  # yields lists of rows (dicts keyed by column)
    description: str


def _pages(db: Session, query: Select, id_column, size: int | None = None) -> Iterator[list]:
    """Keyset pagination: the query's first column must be `id_column`."""
    size = size or CHUNK
    last = None
    while True:
        page = query.order_by(id_column).limit(size)
        if last is not None:
            page = page.where(id_column > last)
        rows = db.execute(page).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def _in_chunks(db: Session, query_for: Callable[[list], Select], ids: Sequence, size: int = 500) -> list:
    ids = list(ids)
    out = []
    for i in range(0, len(ids), size):
        out.extend(db.execute(query_for(ids[i : i + size])).all())
    return out


def _version_names(db: Session) -> dict[int, str]:
    return dict(db.execute(select(ModelVersion.id, ModelVersion.name)).all())


# ---------------------------------------------------------------- BWS statistics (first pass: ids only)


@dataclass
class _BwsStats:
    annotations_by_prompt: dict[int, list[BwsAnnotation]]
    appearances: dict[int, int]
    best: dict[int, int]
    worst: dict[int, int]
    counting: dict[int, float]


def _bws_stats(db: Session) -> _BwsStats:
    by_prompt: dict[int, list[BwsAnnotation]] = defaultdict(list)
    appearances: dict[int, int] = defaultdict(int)
    best: dict[int, int] = defaultdict(int)
    worst: dict[int, int] = defaultdict(int)
    query = (
        select(BwsJudgement.id, BwsJudgement.task_id, Task.prompt_id, BwsJudgement.shown_order,
               BwsJudgement.best_id, BwsJudgement.worst_id)
        .join(Task, Task.id == BwsJudgement.task_id)
        .where(gold.usable(BwsJudgement))
    )
    for page in _pages(db, query, BwsJudgement.id):
        for _id, task_id, prompt_id, shown, best_id, worst_id in page:
            by_prompt[prompt_id].append(BwsAnnotation(tuple_id=task_id, items=tuple(shown), best=best_id, worst=worst_id))
            for item in shown:
                appearances[item] += 1
            best[best_id] += 1
            worst[worst_id] += 1
    counting = counting_scores(a for group in by_prompt.values() for a in group)
    return _BwsStats(by_prompt, appearances, best, worst, counting)


# ---------------------------------------------------------------- pairs


_PAIRS_SCHEMA = pa.schema([
    ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
    ("judgement_id", pa.int64()), ("annotator", pa.string()), ("tuple_id", pa.int64()),
    ("chosen_model_version", pa.string()), ("rejected_model_version", pa.string()),
    ("chosen_id", pa.int64()), ("rejected_id", pa.int64()), ("is_surplus", pa.bool_()), ("score_margin", pa.float64()),
])


def _pairs(db: Session) -> Iterator[list[Row]]:
    scores = _bws_stats(db).counting
    versions = _version_names(db)
    query = (
        select(BwsJudgement.id, BwsJudgement.task_id, Task.prompt_id, User.username, BwsJudgement.shown_order,
               BwsJudgement.best_id, BwsJudgement.worst_id, BwsJudgement.is_surplus)
        .join(Task, Task.id == BwsJudgement.task_id)
        .join(User, User.id == BwsJudgement.user_id)
        .where(gold.usable(BwsJudgement))
    )
    for page in _pages(db, query, BwsJudgement.id, size=max(1, CHUNK // 5)):  # ~5 pairs per judgement
        continuation_ids = {c for row in page for c in row.shown_order}
        texts = {cid: (text, mv) for cid, text, mv in _in_chunks(
            db, lambda ids: select(Continuation.id, Continuation.text, Continuation.model_version_id)
            .where(Continuation.id.in_(ids)), sorted(continuation_ids))}
        prompts = dict(_in_chunks(db, lambda ids: select(Prompt.id, Prompt.text).where(Prompt.id.in_(ids)),
                                  sorted({row.prompt_id for row in page})))
        rows = []
        for j in page:
            for winner, loser in implied_pairs(j.shown_order, j.best_id, j.worst_id):
                rows.append({
                    "prompt": prompts[j.prompt_id],
                    # As the trainer builds them: prompt + chosen is the story text (story_text.py).
                    "chosen": completion_text(texts[winner][0]),
                    "rejected": completion_text(texts[loser][0]),
                    "judgement_id": j.id,
                    "annotator": j.username,
                    "tuple_id": j.task_id,
                    "chosen_model_version": versions.get(texts[winner][1]),
                    "rejected_model_version": versions.get(texts[loser][1]),
                    "chosen_id": winner,
                    "rejected_id": loser,
                    "is_surplus": bool(j.is_surplus),
                    "score_margin": pair_margin(scores, winner, loser),
                })
        yield rows


# ---------------------------------------------------------------- judgements


_JUDGEMENTS_SCHEMA = pa.schema([
    ("judgement_id", pa.int64()), ("tuple_id", pa.int64()), ("batch_id", pa.int64()), ("prompt_id", pa.int64()),
    ("annotator", pa.string()), ("items", pa.list_(pa.int64())), ("best_id", pa.int64()), ("worst_id", pa.int64()),
    ("duration_ms", pa.int64()), ("is_surplus", pa.bool_()), ("created_at", pa.timestamp("us", tz="UTC")),
])


def _judgements(db: Session) -> Iterator[list[Row]]:
    query = (
        select(BwsJudgement.id, BwsJudgement.task_id, Task.batch_id, Task.prompt_id, User.username,
               BwsJudgement.shown_order, BwsJudgement.best_id, BwsJudgement.worst_id, BwsJudgement.duration_ms,
               BwsJudgement.is_surplus, BwsJudgement.created_at)
        .join(Task, Task.id == BwsJudgement.task_id)
        .join(User, User.id == BwsJudgement.user_id)
        .where(gold.usable(BwsJudgement))
    )
    for page in _pages(db, query, BwsJudgement.id):
        yield [
            {"judgement_id": j.id, "tuple_id": j.task_id, "batch_id": j.batch_id, "prompt_id": j.prompt_id,
             "annotator": j.username, "items": list(j.shown_order), "best_id": j.best_id, "worst_id": j.worst_id,
             "duration_ms": j.duration_ms, "is_surplus": bool(j.is_surplus), "created_at": j.created_at}
            for j in page
        ]


# ---------------------------------------------------------------- ratings


_RATINGS_SCHEMA = pa.schema([
    ("rating_id", pa.int64()), ("task_id", pa.int64()), ("continuation_id", pa.int64()),
    ("model_version", pa.string()), ("annotator", pa.string()),
    ("grammar", pa.int64()), ("creativity", pa.int64()), ("consistency", pa.int64()), ("plot", pa.int64()),
    ("comment", pa.string()), ("duration_ms", pa.int64()), ("is_surplus", pa.bool_()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


def _ratings(db: Session) -> Iterator[list[Row]]:
    versions = _version_names(db)
    query = (
        select(Rating.id, Rating.task_id, Rating.continuation_id, Continuation.model_version_id, User.username,
               Rating.grammar, Rating.creativity, Rating.consistency, Rating.plot, Rating.comment,
               Rating.duration_ms, Rating.is_surplus, Rating.created_at)
        .join(Continuation, Continuation.id == Rating.continuation_id)
        .join(User, User.id == Rating.user_id)
        .where(gold.usable(Rating))
    )
    for page in _pages(db, query, Rating.id):
        yield [
            {"rating_id": r.id, "task_id": r.task_id, "continuation_id": r.continuation_id,
             "model_version": versions.get(r.model_version_id), "annotator": r.username,
             "grammar": r.grammar, "creativity": r.creativity, "consistency": r.consistency, "plot": r.plot,
             "comment": r.comment, "duration_ms": r.duration_ms, "is_surplus": bool(r.is_surplus),
             "created_at": r.created_at}
            for r in page
        ]


# ---------------------------------------------------------------- scores


_SCORES_SCHEMA = pa.schema([
    ("continuation_id", pa.int64()), ("prompt_id", pa.int64()), ("model_version", pa.string()),
    ("appearances", pa.int64()), ("best", pa.int64()), ("worst", pa.int64()),
    ("counting_score", pa.float64()), ("bt_score", pa.float64()), ("text", pa.string()),
])


def _scores(db: Session) -> Iterator[list[Row]]:
    stats = _bws_stats(db)
    bt: dict[int, float] = {}
    for prompt_id in sorted(stats.annotations_by_prompt):
        try:
            bt.update(bradley_terry_scores(stats.annotations_by_prompt.pop(prompt_id)))
        except (RuntimeError, ValueError, FloatingPointError):  # choix did not converge: leave them null
            continue
    versions = _version_names(db)
    query = select(Continuation.id, Continuation.prompt_id, Continuation.model_version_id, Continuation.text)
    for page in _pages(db, query, Continuation.id):
        yield [
            {"continuation_id": c.id, "prompt_id": c.prompt_id, "model_version": versions.get(c.model_version_id),
             "appearances": stats.appearances.get(c.id, 0), "best": stats.best.get(c.id, 0),
             "worst": stats.worst.get(c.id, 0), "counting_score": stats.counting.get(c.id),
             "bt_score": bt.get(c.id), "text": c.text}
            for c in page
        ]


_EXPORTS: dict[str, _Export] = {
    "pairs": _Export(_PAIRS_SCHEMA, _pairs, "preference pairs implied by BWS judgements (prompt/chosen/rejected)"),
    "judgements": _Export(_JUDGEMENTS_SCHEMA, _judgements, "raw BWS judgements"),
    "ratings": _Export(_RATINGS_SCHEMA, _ratings, "1-5 ratings of single continuations"),
    "scores": _Export(_SCORES_SCHEMA, _scores, "per continuation: counts, counting and Bradley-Terry scores"),
}
EXPORT_NAMES = tuple(_EXPORTS)


# ---------------------------------------------------------------- formats


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _jsonl(chunks: Iterator[list[Row]], schema: pa.Schema) -> Iterator[bytes]:
    for rows in chunks:
        if rows:
            yield "".join(json.dumps({k: _plain(v) for k, v in row.items()}, ensure_ascii=False) + "\n"
                          for row in rows).encode()


# What spreadsheets read as the start of a formula (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str):
        # Texts come from imports, models and annotators: opened in a spreadsheet they must stay text.
        return "'" + value if value.startswith(_FORMULA_STARTS) else value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):  # ids: one flat cell, split on spaces to get them back
        return " ".join(str(item) for item in value)
    return _plain(value)


def _csv(chunks: Iterator[list[Row]], schema: pa.Schema) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(schema.names)
    yield buffer.getvalue().encode()
    for rows in chunks:
        buffer.seek(0)
        buffer.truncate()
        for row in rows:
            writer.writerow([_csv_cell(row[name]) for name in schema.names])
        yield buffer.getvalue().encode()


class _Sink:
    """A write-only file for pyarrow that keeps its bytes until drained; tell() counts everything written."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data) -> int:
        data = bytes(data)
        self._parts.append(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _parquet(chunks: Iterator[list[Row]], schema: pa.Schema) -> Iterator[bytes]:
    sink = _Sink()
    with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema) as writer:
        for rows in chunks:
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema), row_group_size=len(rows))
                yield sink.drain()
    yield sink.drain()  # the footer (and the schema alone for an empty export)


_WRITERS = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}


# ---------------------------------------------------------------- public API


def check(name: str, fmt: str) -> None:
    if name not in _EXPORTS:
        raise NotFound(f"no export {name!r}; exports: {', '.join(EXPORT_NAMES)}")
    if fmt not in FORMATS:
        raise NotFound(f"no format {fmt!r}; formats: {', '.join(FORMATS)}")


def stream_export(database: Database, name: str, fmt: str) -> Iterator[bytes]:
    """Checks name and format now (NotFound), then returns a generator of the file's bytes that reads
    the database lazily, in one read session, as it is consumed."""
    check(name, fmt)
    export = _EXPORTS[name]

    def generate() -> Iterator[bytes]:
        with database.read() as db:
            schema = export.schema.with_metadata({"storyloop": json.dumps({"export": name, **gold.export_metadata(db)})})
            yield from _WRITERS[fmt](export.chunks(db), schema)

    return generate()


def export_metadata(database: Database) -> dict[str, Any]:
    """What exports leave out right now (excluded annotators, gold tasks), as their metadata records it."""
    with database.read() as db:
        return gold.export_metadata(db)


def metadata_header(database: Database) -> dict[str, str]:
    """The metadata as an HTTP header of a download (JSON in ASCII, which headers can carry)."""
    return {"X-Storyloop-Export-Metadata": json.dumps(export_metadata(database), ensure_ascii=True)}


def media_type(fmt: str) -> str:
    return _MEDIA_TYPES[fmt]


def filename(name: str, fmt: str) -> str:
    return f"storyloop-{name}.{fmt}"


def describe() -> dict[str, dict[str, Any]]:
    """Export names with their description and columns, for admin pages."""
    return {name: {"description": e.description, "columns": e.schema.names} for name, e in _EXPORTS.items()}
