"""Streamed exports: every export in every format parses, with the expected rows and values; the pairs
export trains TRL's RewardTrainer as it is."""

import csv
import io
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from app.models import BwsJudgement, Continuation, ModelVersion, Prompt, Rating
from app.services import exports
from tests.conftest import make_user, token_headers
from tests.factories import handles_to_ids, seed_bws_batch, seed_rating_batch

EXPORTS = "/api/v1/admin/exports"


def _judge_everything(client, database, annotators=("ann1", "ann2")) -> int:
    """Each annotator judges every BWS tuple they get: best = smallest id, worst = largest id."""
    n = 0
    for name in annotators:
        make_user(database, name)
        headers = token_headers(client, name)
        while (response := client.post("/api/v1/tasks/next", headers=headers, params={"kind": "bws"})).status_code == 200:
            task = response.json()
            ids = handles_to_ids(database, task["assignment_id"])  # handle -> continuation id
            submitted = client.post(f"/api/v1/tasks/{task['assignment_id']}/bws", headers=headers,
                                    json={"best": min(ids, key=ids.get), "worst": max(ids, key=ids.get),
                                          "idempotency_key": f"{name}-{n:08d}",
                                          "duration_ms": 1000 + n})
            assert submitted.status_code == 200, submitted.text
            n += 1
    return n


def _rate_everything(client, database, name="rater") -> int:
    make_user(database, name, "evaluator")
    headers = token_headers(client, name)
    n = 0
    while (response := client.post("/api/v1/tasks/next", headers=headers, params={"kind": "rating"})).status_code == 200:
        task = response.json()
        body = {"grammar": 5, "creativity": 4, "consistency": 3, "plot": 2, "comment": f"nice, \"really\" {n}",
                "idempotency_key": f"{name}-{n:08d}"}
        assert client.post(f"/api/v1/tasks/{task['assignment_id']}/rating", headers=headers, json=body).status_code == 200
        n += 1
    return n


@pytest.fixture
def judged(client, database, admin_headers):
    seed_rating_batch(database, required=1)  # first: it would rate every continuation in the database
    seed_bws_batch(database, prompts=2, per_prompt=5, required=2)  # the rating prompt has too few for a tuple
    judgements = _judge_everything(client, database)
    ratings = _rate_everything(client, database)
    assert judgements > 0 and ratings == 3
    return {"judgements": judgements, "ratings": ratings}


def _read(content: bytes, fmt: str) -> list[dict]:
    if fmt == "jsonl":
        return [json.loads(line) for line in content.decode().splitlines()]
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(content.decode(), newline="")))
    return pq.read_table(io.BytesIO(content)).to_pylist()


def _get(client, headers, name, fmt) -> bytes:
    response = client.get(f"{EXPORTS}/{name}.{fmt}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == f'attachment; filename="storyloop-{name}.{fmt}"'
    assert response.headers["content-type"].startswith(exports.media_type(fmt).split(";")[0])
    return response.content


def _expected(database):
    """Counting scores, texts and names straight from the tables, to check the exports against."""
    with database.read() as db:
        judgements = db.scalars(select(BwsJudgement).order_by(BwsJudgement.id)).all()
        texts = dict(db.execute(select(Continuation.id, Continuation.text)).all())
        version_of = dict(db.execute(select(Continuation.id, ModelVersion.name).join(ModelVersion)).all())
        prompt_of = dict(db.execute(select(Continuation.id, Prompt.text).join(Prompt)).all())
        ratings = db.scalars(select(Rating).order_by(Rating.id)).all()
    seen, best, worst = defaultdict(int), defaultdict(int), defaultdict(int)
    for j in judgements:
        for c in j.shown_order:
            seen[c] += 1
        best[j.best_id] += 1
        worst[j.worst_id] += 1
    score = {c: (best[c] - worst[c]) / seen[c] for c in seen}
    return judgements, texts, version_of, prompt_of, ratings, score, seen, best, worst


@pytest.mark.parametrize("fmt", exports.FORMATS)
def test_every_export_parses_with_expected_rows_and_values(client, database, admin_headers, judged, fmt):
    judgements, texts, version_of, prompt_of, ratings, score, seen, best, worst = _expected(database)
    n = judged["judgements"]
    assert len(judgements) == n

    # pairs: 2k - 3 = 5 per judgement
    pairs = _read(_get(client, admin_headers, "pairs", fmt), fmt)
    assert len(pairs) == 5 * n
    assert list(pairs[0]) == ["prompt", "chosen", "rejected", "judgement_id", "annotator", "tuple_id",
                              "chosen_model_version", "rejected_model_version", "chosen_id", "rejected_id",
                              "is_surplus", "score_margin"]
    by_judgement = defaultdict(list)
    for pair in pairs:
        chosen, rejected = int(pair["chosen_id"]), int(pair["rejected_id"])
        # The story text is prompt + chosen: one space joins them, as the trainer builds it.
        assert pair["chosen"] == " " + texts[chosen] and pair["rejected"] == " " + texts[rejected]
        assert pair["prompt"] == prompt_of[chosen] == prompt_of[rejected]
        assert pair["chosen_model_version"] == pair["rejected_model_version"] == "test-source"
        assert pair["annotator"] in ("ann1", "ann2")
        assert str(pair["is_surplus"]).lower() == "false"
        assert float(pair["score_margin"]) == pytest.approx(max(0.0, score[chosen] - score[rejected]))
        by_judgement[int(pair["judgement_id"])].append((chosen, rejected))
    for j in judgements:
        middle = [c for c in j.shown_order if c not in (j.best_id, j.worst_id)]
        assert sorted(by_judgement[j.id]) == sorted(
            [(j.best_id, c) for c in j.shown_order if c != j.best_id] + [(m, j.worst_id) for m in middle])
        assert j.best_id == min(j.shown_order)  # as the annotators chose
    assert any(float(p["score_margin"]) > 0 for p in pairs)

    # judgements
    rows = _read(_get(client, admin_headers, "judgements", fmt), fmt)
    assert len(rows) == n
    for row, j in zip(rows, judgements):
        items = [int(i) for i in row["items"].split(" ")] if fmt == "csv" else row["items"]
        assert int(row["judgement_id"]) == j.id and int(row["tuple_id"]) == j.task_id
        assert items == j.shown_order and int(row["best_id"]) == j.best_id and int(row["worst_id"]) == j.worst_id
        assert int(row["duration_ms"]) == j.duration_ms and row["annotator"] in ("ann1", "ann2")
        created = row["created_at"]
        assert (created == j.created_at) if fmt == "parquet" else (created == j.created_at.isoformat())
    assert set(rows[0]) == {"judgement_id", "tuple_id", "batch_id", "prompt_id", "annotator", "items", "best_id",
                            "worst_id", "duration_ms", "is_surplus", "created_at"}

    # ratings
    rows = _read(_get(client, admin_headers, "ratings", fmt), fmt)
    assert len(rows) == len(ratings) == judged["ratings"]
    for row, r in zip(rows, ratings):
        assert int(row["rating_id"]) == r.id and int(row["continuation_id"]) == r.continuation_id
        assert [int(row[d]) for d in ("grammar", "creativity", "consistency", "plot")] == [5, 4, 3, 2]
        assert row["comment"] == r.comment and row["model_version"] == "rating-source" and row["annotator"] == "rater"
        assert row["duration_ms"] in (None, "")

    # scores: every continuation, judged or not
    rows = _read(_get(client, admin_headers, "scores", fmt), fmt)
    assert len(rows) == len(texts) == 2 * 5 + 3
    by_prompt = defaultdict(list)
    for row in rows:
        c = int(row["continuation_id"])
        assert row["text"] == texts[c] and row["model_version"] == version_of[c]
        assert int(row["appearances"]) == seen.get(c, 0)
        assert (int(row["best"]), int(row["worst"])) == (best.get(c, 0), worst.get(c, 0))
        if c in score:
            assert float(row["counting_score"]) == pytest.approx(score[c])
            by_prompt[int(row["prompt_id"])].append((score[c], float(row["bt_score"])))
        else:
            assert row["counting_score"] in (None, "") and row["bt_score"] in (None, "")
    assert len(by_prompt) == 2
    for values in by_prompt.values():  # BT is centred per prompt and agrees with counting on the extremes
        assert sum(bt for _, bt in values) == pytest.approx(0.0, abs=1e-9)
        assert max(values)[1] == max(bt for _, bt in values)


def _documented_columns() -> dict[str, dict[str, str]]:
    """docs/exports.md: export name -> {column: type}, from each export's table."""
    text = (Path(__file__).parents[1] / "docs" / "exports.md").read_text()
    tables = {}
    for section in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading = re.match(r"`(\w+)`$", section.splitlines()[0])
        if heading is None:  # a section about something other than one export's columns
            continue
        tables[heading.group(1)] = dict(re.findall(r"^\| `(\w+)` \| ([a-z ]+?) \|", section, re.MULTILINE))
    return tables


_JSON_TYPES = {"integer": int, "number": (int, float), "boolean": bool, "text": str, "timestamp": str, "integer list": list}
_CSV_PATTERNS = {"integer": r"-?\d+", "number": r"-?\d+(\.\d+)?(e-?\d+)?", "boolean": "true|false",
                 "timestamp": r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", "integer list": r"\d+( \d+)*", "text": "(?s).*"}
_PARQUET_TYPES = {"integer": "int64", "number": "double", "boolean": "bool", "text": "string",
                  "timestamp": "timestamp[us, tz=UTC]", "integer list": "list<element: int64>"}


def test_every_export_column_has_its_documented_type_in_every_format(client, admin_headers, judged):
    documented = _documented_columns()
    assert set(documented) == set(exports.EXPORT_NAMES)
    for name in exports.EXPORT_NAMES:
        columns = {column: kind.removesuffix(" or null") for column, kind in documented[name].items()}
        nullable = {column for column, kind in documented[name].items() if kind.endswith(" or null")}
        assert list(columns) == exports.describe()[name]["columns"], name
        content = {fmt: _get(client, admin_headers, name, fmt) for fmt in exports.FORMATS}
        schema = pq.read_schema(io.BytesIO(content["parquet"]))
        for column, kind in columns.items():
            assert str(schema.field(column).type) == _PARQUET_TYPES[kind], (name, column)
        for row in _read(content["jsonl"], "jsonl"):
            for column, kind in columns.items():
                value = row[column]
                assert (value is None and column in nullable) or (
                    isinstance(value, _JSON_TYPES[kind]) and (kind == "boolean") == isinstance(value, bool)), \
                    (name, column, value)
                if kind == "integer list":
                    assert value and all(isinstance(v, int) for v in value)
        for row in _read(content["csv"], "csv"):
            for column, kind in columns.items():
                value = row[column]
                assert (value == "" and column in nullable) or re.fullmatch(_CSV_PATTERNS[kind], value), \
                    (name, column, value)

    # duration_ms stays an integer where it is known: pandas keeps it so with the documented dtype.
    import pandas as pd

    judgements = pd.read_csv(io.BytesIO(_get(client, admin_headers, "judgements", "csv")), dtype={"duration_ms": "Int64"})
    assert str(judgements["duration_ms"].dtype) == "Int64" and judgements["duration_ms"].notna().all()
    ratings = pd.read_parquet(io.BytesIO(_get(client, admin_headers, "ratings", "parquet")), dtype_backend="numpy_nullable")
    assert str(ratings["duration_ms"].dtype) == "Int64"  # all null here: the ratings were sent without one
    assert pd.read_csv(io.BytesIO(_get(client, admin_headers, "judgements", "csv")))["duration_ms"].dtype == "int64"


def test_exports_of_an_empty_database_and_unknown_names(client, admin_headers):
    for fmt in exports.FORMATS:
        for name in exports.EXPORT_NAMES:
            content = _get(client, admin_headers, name, fmt)
            assert _read(content, fmt) == []
            if fmt == "parquet":  # the schema is there even without rows
                assert pq.read_table(io.BytesIO(content)).column_names == exports.describe()[name]["columns"]
            if fmt == "csv":
                assert content.decode().splitlines() == [",".join(exports.describe()[name]["columns"])]
    assert client.get(f"{EXPORTS}/nothing.jsonl", headers=admin_headers).status_code == 404
    assert client.get(f"{EXPORTS}/pairs.xlsx", headers=admin_headers).status_code == 404
    listed = client.get(EXPORTS, headers=admin_headers).json()
    assert set(listed["exports"]) == set(exports.EXPORT_NAMES) and listed["formats"] == list(exports.FORMATS)


def test_exports_stream_in_chunks_and_parquet_has_row_groups(database, monkeypatch):
    """Many judgements: the generator yields several pieces, and Parquet writes one row group per chunk."""
    monkeypatch.setattr(exports, "CHUNK", 10)
    seed_bws_batch(database, prompts=1, per_prompt=6, required=1)
    from app.models import Assignment, Task, User, utcnow

    with database.write() as db:
        tasks = db.scalars(select(Task)).all()
        annotators = [User(username=f"u{i}", password_hash="-") for i in range(8)]
        db.add_all(annotators)
        db.flush()
        for user in annotators:
            for task in tasks:
                order = [item.continuation_id for item in task.items]
                a = Assignment(task_id=task.id, user_id=user.id, item_order=order, status="surplus",
                               expires_at=utcnow(), finished_at=utcnow())
                db.add(a)
                db.flush()
                db.add(BwsJudgement(assignment_id=a.id, task_id=task.id, user_id=user.id, best_id=order[0],
                                    worst_id=order[-1], shown_order=order, is_surplus=True,
                                    idempotency_key=f"{user.id}-{task.id}-key"))
        n = len(tasks) * len(annotators)
    pieces = list(exports.stream_export(database, "pairs", "parquet"))
    table = pq.ParquetFile(io.BytesIO(b"".join(pieces)))
    assert table.metadata.num_rows == 5 * n
    assert table.metadata.num_row_groups == math.ceil(n / 2)  # 10 // 5 = 2 judgements per page
    assert len(pieces) == table.metadata.num_row_groups + 1
    assert all(table.read().column("is_surplus").to_pylist())
    jsonl = list(exports.stream_export(database, "judgements", "jsonl"))
    assert len(jsonl) == math.ceil(n / 10) and sum(len(p.splitlines()) for p in jsonl) == n
    csv_pieces = list(exports.stream_export(database, "scores", "csv"))
    assert len(list(csv.DictReader(io.StringIO(b"".join(csv_pieces).decode())))) == 6


@pytest.mark.slow  # ~25 s, mostly importing torch/transformers/trl
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the database plays no part here
def test_pairs_train_trl_reward_trainer_as_they_are(client, database, admin_headers, judged, tmp_path):
    pytest.importorskip("trl")
    import torch
    from datasets import load_dataset
    from transformers import GPT2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from tests.tiny_models import tiny_gpt2_config, train_tiny_tokenizer

    path = tmp_path / "pairs.jsonl"
    path.write_bytes(_get(client, admin_headers, "pairs", "jsonl"))
    dataset = load_dataset("json", data_files=str(path), split="train")
    assert len(dataset) == 5 * judged["judgements"]
    assert {"prompt", "chosen", "rejected", "score_margin"} <= set(dataset.column_names)
    assert "margin" not in dataset.column_names  # TRL would put it into the loss: see the next test

    tokenizer = train_tiny_tokenizer([r["prompt"] + r["chosen"] for r in dataset] + [r["rejected"] for r in dataset],
                                     vocab_size=300)
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(tiny_gpt2_config(tokenizer, n_embd=32, n_layer=2, n_head=2, num_labels=1))
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    args = RewardConfig(output_dir=str(tmp_path / "rm"), max_steps=3, per_device_train_batch_size=4, report_to=[],
                        use_cpu=True, logging_steps=1, save_strategy="no", max_length=64, dataloader_num_workers=0)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert trainer.state.global_step == 3
    assert math.isfinite(result.training_loss)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


@pytest.mark.slow  # ~25 s, mostly importing torch/transformers/trl
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_pairs_loss_has_margins_only_when_the_column_is_renamed(client, database, admin_headers, judged, tmp_path):
    """docs/exports.md: loaded as it is, the export trains on -log sigmoid(r_c - r_r); renamed to
    `margin`, on -log sigmoid(r_c - r_r - margin). Checked on the loss TRL's RewardTrainer computes."""
    pytest.importorskip("trl")
    import torch
    from datasets import load_dataset
    from transformers import GPT2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from tests.tiny_models import tiny_gpt2_config, train_tiny_tokenizer

    path = tmp_path / "pairs.jsonl"
    path.write_bytes(_get(client, admin_headers, "pairs", "jsonl"))
    pairs = load_dataset("json", data_files=str(path), split="train")
    assert sum(m > 0 for m in pairs["score_margin"]) > 0
    tokenizer = train_tiny_tokenizer([r["prompt"] + r["chosen"] for r in pairs] + [r["rejected"] for r in pairs],
                                     vocab_size=300)
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(tiny_gpt2_config(tokenizer, n_embd=32, n_layer=2, n_head=2, num_labels=1))
    model.eval()  # no dropout: the same rewards in TRL's loss and in ours
    args = RewardConfig(output_dir=str(tmp_path / "rm"), per_device_train_batch_size=len(pairs), report_to=[],
                        use_cpu=True, save_strategy="no", max_length=64, dataloader_num_workers=0)

    def trl_loss_and_ours(dataset):
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        batch = next(iter(trainer.get_train_dataloader()))  # all pairs: one batch
        with torch.no_grad():
            rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
            chosen, rejected = torch.chunk(rewards, 2)
            margin = batch.get("margin", torch.zeros_like(chosen))
            ours = {"plain": -torch.nn.functional.logsigmoid(chosen - rejected).mean().item(),
                    "with margin": -torch.nn.functional.logsigmoid(chosen - rejected - margin).mean().item()}
            return trainer.compute_loss(model, dict(batch)).item(), ours, "margin" in batch

    as_is, ours, has_margin = trl_loss_and_ours(pairs)
    assert not has_margin and as_is == pytest.approx(ours["plain"], rel=1e-5)
    renamed, ours_renamed, has_margin = trl_loss_and_ours(pairs.rename_column("score_margin", "margin"))
    assert has_margin and renamed == pytest.approx(ours_renamed["with margin"], rel=1e-5)
    assert ours_renamed["plain"] == pytest.approx(as_is, rel=1e-5)  # same model, same pairs...
    assert renamed > as_is + 1e-3  # ...and the margins make the loss larger: they did reach it
