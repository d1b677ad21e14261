"""Admin imports (JSONL and CSV), all or nothing, and the other admin API endpoints."""

import asyncio
import json
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from app.config import Settings
from app.db import Database
from app.migrate import upgrade_to_head
from app.models import Batch, Continuation, ModelVersion, Prompt, Task
from app.services import imports
from app.services.errors import Invalid
from benchmarks import import_stall
from tests.conftest import make_user, token_headers

IMPORTS = "/api/v1/admin/imports"


def _jsonl(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _upload(client, headers, data: bytes, filename: str):
    return client.post(IMPORTS, headers=headers, files={"file": (filename, data, "application/octet-stream")})


def _counts(database) -> tuple[int, int, int]:
    with database.read() as db:
        return tuple(db.scalar(select(func.count()).select_from(m)) for m in (Prompt, Continuation, ModelVersion))


def test_jsonl_import_dedups_prompts_and_records_provenance(client, database, admin_headers):
    data = _jsonl(
        {"prompt": "Once upon a time", "continuation": " a fox ran.", "source": "gpt2-small", "prompt_id": "p1",
         "continuation_id": "c1"},
        {"prompt": "Once upon a time", "continuation": " a cat sat.", "source": "gpt2-large", "prompt_id": "p1"},
        {"prompt": "Long ago", "continuation": " the moon fell.", "source": "gpt2-small", "extra": {"ignored": 1}},
        {"prompt": "Long ago", "continuation": " nothing.", "source": "gpt2-small"},
        {"prompt": "In a small town"},  # only a prompt: the trainer writes for it
    )
    response = _upload(client, admin_headers, data, "stories.jsonl")
    assert response.status_code == 201, response.text
    assert response.json() == {"prompts_created": 3, "prompts_existing": 0, "continuations_created": 4,
                               "sources_created": 2, "gold_items_created": 0}
    with database.read() as db:
        prompts = {p.text: p for p in db.scalars(select(Prompt))}
        assert set(prompts) == {"Once upon a time", "Long ago", "In a small town"}
        assert prompts["Once upon a time"].external_id == "p1"
        rows = db.execute(select(Continuation.text, Continuation.external_id, ModelVersion.name, ModelVersion.kind,
                                 ModelVersion.algorithm, Continuation.prompt_id)
                          .join(ModelVersion).order_by(Continuation.id)).all()
        assert [(r.text, r.external_id, r.name) for r in rows] == [
            (" a fox ran.", "c1", "gpt2-small"), (" a cat sat.", None, "gpt2-large"),
            (" the moon fell.", None, "gpt2-small"), (" nothing.", None, "gpt2-small")]
        assert {(r.kind, r.algorithm) for r in rows} == {("source", "import")}
        assert rows[0].prompt_id == rows[1].prompt_id == prompts["Once upon a time"].id

    # Importing more for known prompts (by external id, and by exact text) reuses them; an existing
    # model version of another kind is used as the source as it is.
    with database.write() as db:
        db.add(ModelVersion(name="policy-v3", kind="policy", algorithm="ppo"))
    again = _jsonl(
        {"prompt": "Once upon a time", "continuation": " a bird sang.", "source": "policy-v3", "prompt_id": "p1"},
        {"prompt": "Long ago", "continuation": " a star fell.", "source": "gpt2-small"},
    )
    response = _upload(client, admin_headers, again, "more.jsonl")
    assert response.json() == {"prompts_created": 0, "prompts_existing": 2, "continuations_created": 2,
                               "sources_created": 0, "gold_items_created": 0}
    with database.read() as db:
        version = db.scalar(select(ModelVersion).where(ModelVersion.name == "policy-v3"))
        assert version.kind == "policy"
        assert db.scalar(select(Continuation.model_version_id).where(Continuation.text == " a bird sang.")) == version.id
    assert _counts(database) == (3, 6, 3)


def test_csv_import_with_quoted_multiline_text_and_sniffing(client, database, admin_headers):
    data = ('prompt,continuation,source,prompt_id,continuation_id\r\n'
            '"Hello, world",\" first line\nsecond line\",src-a,,x1\r\n'
            'Hello\u00e9,\" caf\u00e9\",src-a,,\r\n'
            '"Hello, world",,,,\r\n').encode("utf-8-sig")  # a BOM, as Excel writes it
    response = _upload(client, admin_headers, data, "upload.bin")  # no telling extension: sniffed as CSV
    assert response.status_code == 201, response.text
    assert response.json() == {"prompts_created": 2, "prompts_existing": 0, "continuations_created": 2,
                               "sources_created": 1, "gold_items_created": 0}
    with database.read() as db:
        texts = set(db.scalars(select(Continuation.text)))
        assert texts == {" first line\nsecond line", " caf\u00e9"}
        assert db.scalar(select(Continuation.external_id).where(Continuation.external_id.is_not(None))) == "x1"


def test_json_array_and_sniffed_jsonl(client, database, admin_headers):
    array = json.dumps([{"prompt": "A", "continuation": " a", "source": "s"}, {"prompt": "B"}]).encode()
    assert _upload(client, admin_headers, array, "stories.json").json()["prompts_created"] == 2
    lines = _jsonl({"prompt": "C", "continuation": " c", "source": "s"})
    assert _upload(client, admin_headers, lines, "upload").json() == {
        "prompts_created": 1, "prompts_existing": 0, "continuations_created": 1, "sources_created": 0, "gold_items_created": 0}
    assert _counts(database) == (3, 2, 1)


def test_prompt_only_csv(client, database, admin_headers):
    response = _upload(client, admin_headers, b"prompt\nOne day\nAt night\nOne day\n", "prompts.csv")
    assert response.status_code == 201, response.text
    assert response.json()["prompts_created"] == 2
    assert _counts(database) == (2, 0, 0)


GOOD = {"prompt": "p", "continuation": " c", "source": "s"}


BAD_UPLOADS = [  # (file, name, line, field, words the message must contain)
    (_jsonl(GOOD) + b'{"prompt": "p", "continuation": \n', "bad.jsonl", 2, None, "malformed JSON"),
    (_jsonl(GOOD, GOOD, {**GOOD, "prompt": 42}), "bad.jsonl", 3, "prompt", "must be text"),
    (_jsonl(GOOD, {**GOOD, "continuation": ["a", "b"]}), "bad.jsonl", 2, "continuation", "must be text"),
    (_jsonl(GOOD, {"prompt": "p", "continuation": " c"}), "bad.jsonl", 2, "source", "required"),
    (_jsonl(GOOD, {"continuation": " c", "source": "s"}), "bad.jsonl", 2, "prompt", "required"),
    (_jsonl(GOOD, {**GOOD, "prompt": "   "}), "bad.jsonl", 2, "prompt", "blank"),
    (_jsonl(GOOD, {**GOOD, "continuation": "x" * 20_001}), "bad.jsonl", 2, "continuation", "too long"),
    (_jsonl(GOOD, [1, 2]), "bad.jsonl", 2, None, "expected an object"),
    (_jsonl({**GOOD, "continuation_id": "a"}, GOOD, {**GOOD, "continuation_id": "a"}), "dup.jsonl", 3,
     "continuation_id", "duplicate continuation_id 'a' (first on line 1)"),
    (_jsonl({**GOOD, "prompt_id": "q"}, {**GOOD, "prompt": "other", "prompt_id": "q"}), "bad.jsonl", 2,
     "prompt", "different text"),
    (b"text,continuation,source\nhello,c,s\n", "bad.csv", 1, "prompt", "missing CSV column 'prompt'"),
    (b"prompt,continuation\nhello,c\n", "bad.csv", 1, "source", "missing CSV column 'source'"),
    (b"prompt,continuation,source\nok,c,s\nhello,c,s,surplus\n", "bad.csv", 3, None, "4 fields"),
    (b"prompt,continuation,source\nok,c,s\nhello,c,\n", "bad.csv", 3, "source", "required"),
    (b"prompt\nfine\n\xff\xfe broken\n", "bad.csv", 3, None, "UTF-8"),
    (b'prompt,continuation,source\nok,c,s\n"unterminated,c,s\n', "bad.csv", 3, None, "malformed CSV"),
    (b"", "empty.jsonl", None, None, "empty"),
    (b" \n\n", "empty.csv", None, None, "empty"),
    (b"prompt,continuation,source\n", "header-only.csv", None, None, "no records"),
]


def test_bad_uploads_are_refused_whole_and_name_line_and_field(client, database, admin_headers):
    """One client for all cases (cheaper than a parametrized test each with its own database)."""
    for data, filename, line, field, words in BAD_UPLOADS:
        case = f"{filename}: {data[:80]!r}"
        response = _upload(client, admin_headers, data, filename)
        assert response.status_code == 422, (case, response.text)
        body = response.json()
        assert words in body["detail"] and "nothing was imported" in body["detail"], (case, body)
        first = body["errors"][0]
        assert (first["line"], first["field"]) == (line, field), (case, body)
        if line is not None:
            assert body["detail"].startswith(f"line {line}"), (case, body)
        if field is not None:
            assert f"field '{field}'" in body["detail"], (case, body)
        assert _counts(database) == (0, 0, 0), case


DEEP = 50_000  # levels of nesting: far past Python's recursion limit


@pytest.mark.parametrize(("data", "filename", "line"), [
    (_jsonl(GOOD) + b'{"prompt": "p", "extra": ' + b"[" * DEEP + b"]" * DEEP + b"}\n", "deep.jsonl", 2),
    (b"[" * DEEP + b"]" * DEEP, "deep.json", 1),
], ids=["jsonl-line", "json-file"])
def test_json_nested_too_deeply_is_refused_naming_the_line(client, database, admin_headers, data, filename, line):
    response = _upload(client, admin_headers, data, filename)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"].startswith(f"line {line}: malformed JSON: nested too deeply"), body
    assert _counts(database) == (0, 0, 0)


def test_csv_cost_grows_with_the_column_count_not_its_square():
    """40,000 columns took 19 s when each header name was counted over the whole header."""
    from app.services import imports

    columns = 40_000
    header = ",".join(["prompt", *(f"extra{i}" for i in range(columns))])
    data = f"{header}\nOnce upon a time{',x' * columns}\n".encode()
    started = time.perf_counter()
    [row] = imports.parse_upload(data, "wide.csv")
    assert row.prompt == "Once upon a time"
    assert time.perf_counter() - started < 3


def test_errors_are_listed_up_to_50(client, database, admin_headers):
    data = _jsonl(*([GOOD] + [{**GOOD, "prompt": i} for i in range(80)]))
    body = _upload(client, admin_headers, data, "bad.jsonl").json()
    assert len(body["errors"]) == 50
    assert body["errors"][0] == {"line": 2, "field": "prompt", "message": "must be text (a string), got int"}
    assert body["errors"][-1]["line"] == 51
    assert "80 errors in all" in body["detail"]
    assert _counts(database) == (0, 0, 0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the command's printing, not the database
def test_import_command_prints_errors_as_lines(cli_runner, database, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(_jsonl(GOOD, {**GOOD, "prompt": 7}, {"prompt": "a prompt", "continuation": "text"}) + b"{oops\n")
    result = cli_runner("import", str(path))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("error: line 2, field 'prompt': must be text") and "nothing was imported" in lines[0]
    assert lines[1].split() == ["line", "field", "message"]
    assert lines[2].split(maxsplit=2) == ["2", "prompt", "must be text (a string), got int"]
    assert [line.split()[:2] for line in lines[3:]] == [["3", "source"], ["4", "-"]]
    assert "{" not in "".join(lines[1:3])  # no Python dicts
    assert _counts(database) == (0, 0, 0)


def test_duplicate_external_id_against_the_database_imports_nothing(client, database, admin_headers):
    first = _jsonl({**GOOD, "continuation_id": "c-1"})
    assert _upload(client, admin_headers, first, "a.jsonl").status_code == 201
    before = _counts(database)
    second = _jsonl({"prompt": "new prompt", "continuation": " new", "source": "new-source"},
                    {**GOOD, "continuation": " other", "continuation_id": "c-1"})
    response = _upload(client, admin_headers, second, "b.jsonl")
    assert response.status_code == 422
    assert response.json()["errors"] == [{"line": 2, "field": "continuation_id",
                                          "message": "continuation_id 'c-1' already exists"}]
    assert response.json()["detail"].startswith("line 2, field 'continuation_id'")
    assert _counts(database) == before  # neither the new prompt nor the new source


@pytest.mark.parametrize("middleware", [True, False])
def test_oversized_upload_is_refused_with_413(database, settings, middleware):
    """With the app's BodyLimits middleware, and without it (the route checks the file itself)."""
    from app.main import BodyLimits, create_app

    small = Settings(**{**settings.model_dump(), "max_upload_bytes": 2048})
    app = create_app(small, database)
    if not middleware:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not BodyLimits]
    with TestClient(app) as client:
        make_user(database, "boss", "admin")
        headers = token_headers(client, "boss")
        big = _jsonl(*[{**GOOD, "continuation": " " + "x" * 100} for _ in range(40)])
        assert len(big) > 2048
        response = _upload(client, headers, big, "big.jsonl")
        assert response.status_code == 413
        assert "2048" in response.json()["detail"]
        assert _counts(database) == (0, 0, 0)
        if middleware:  # a streamed (chunked) body declares no length: counted as it arrives
            boundary = "x" * 16
            body = (f"--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\r\n"
                    .encode() + big + f"\r\n--{boundary}--\r\n".encode())
            chunked = client.post("/api/v1/admin/imports", headers={
                **headers, "content-type": f"multipart/form-data; boundary={boundary}"},
                content=(body[i:i + 512] for i in range(0, len(body), 512)))
            assert chunked.status_code == 413 and "2048" in chunked.json()["detail"]
            assert _counts(database) == (0, 0, 0)
        assert _upload(client, headers, _jsonl(GOOD), "small.jsonl").status_code == 201


def test_imports_need_an_admin(client, database):
    make_user(database, "ann")
    response = _upload(client, token_headers(client, "ann"), _jsonl(GOOD), "a.jsonl")
    assert response.status_code == 403
    assert client.post(IMPORTS, files={"file": ("a.jsonl", _jsonl(GOOD))}).status_code == 401
    assert _counts(database) == (0, 0, 0)


# ---------------------------------------------------------------- the rest of the admin API


def _import_stories(client, headers, prompts=2, per_prompt=5, sources=("m-a", "m-b")):
    records = [{"prompt": f"Prompt {p}", "continuation": f" continuation {c} of {p}", "source": sources[c % len(sources)],
                "prompt_id": f"p{p}"} for p in range(prompts) for c in range(per_prompt)]
    assert _upload(client, headers, _jsonl(*records), "s.jsonl").status_code == 201


def test_prompts_model_versions_and_batches(client, database, admin_headers):
    _import_stories(client, admin_headers, prompts=3, per_prompt=5)
    _upload(client, admin_headers, _jsonl({"prompt": "Lonely prompt"}), "p.jsonl")

    page = client.get("/api/v1/admin/prompts", headers=admin_headers, params={"limit": 2}).json()
    assert page["total"] == 4 and len(page["items"]) == 2 and page["items"][0]["continuations"] == 5
    found = client.get("/api/v1/admin/prompts", headers=admin_headers, params={"q": "Lonely"}).json()
    assert found["total"] == 1 and found["items"][0]["continuations"] == 0
    prompt_ids = [p["id"] for p in client.get("/api/v1/admin/prompts", headers=admin_headers).json()["items"]]

    versions = client.get("/api/v1/admin/model-versions", headers=admin_headers).json()
    assert {(v["name"], v["kind"], v["continuations"]) for v in versions} == {("m-a", "source", 9), ("m-b", "source", 6)}

    created = client.post("/api/v1/admin/batches", headers=admin_headers,
                          json={"name": "round 1", "prompt_ids": prompt_ids[:2], "seed": 7, "annotations_per_tuple": 2})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["kind"] == "bws" and body["design"]["k"] == 4 and body["design"]["prompts"] == 2
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(Task).where(Task.batch_id == body["batch_id"])) == body["tasks"] > 0
        assert db.get(Batch, body["batch_id"]).annotations_per_task == 2

    only_a = [v["id"] for v in versions if v["name"] == "m-b"]  # 2 per prompt: too few for a 4-tuple
    refused = client.post("/api/v1/admin/batches", headers=admin_headers,
                          json={"name": "too few", "model_version_ids": only_a})
    assert refused.status_code == 422 and "at least 4" in refused.json()["detail"]

    rating = client.post("/api/v1/admin/batches/rating", headers=admin_headers,
                         json={"name": "rate", "prompt_ids": prompt_ids[:1]})
    assert rating.status_code == 201 and rating.json()["tasks"] == 5
    by_ids = client.post("/api/v1/admin/batches/rating", headers=admin_headers,
                         json={"name": "rate 2", "continuation_ids": [1, 2], "annotations_per_task": 1})
    assert by_ids.json()["tasks"] == 2
    assert client.post("/api/v1/admin/batches/rating", headers=admin_headers,
                       json={"name": "bad", "continuation_ids": [999999]}).status_code == 404

    # Progress: one annotator judges one tuple.
    make_user(database, "ann")
    ann = token_headers(client, "ann")
    task = client.post("/api/v1/tasks/next", headers=ann, params={"kind": "bws"}).json()
    handles = [i["handle"] for i in task["items"]]
    submitted = client.post(f"/api/v1/tasks/{task['assignment_id']}/bws", headers=ann,
                            json={"best": handles[0], "worst": handles[1], "idempotency_key": "k" * 16})
    assert submitted.status_code == 200, submitted.text
    batches = {b["name"]: b for b in client.get("/api/v1/admin/batches", headers=admin_headers).json()}
    assert list(batches) == ["rate 2", "rate", "round 1"]  # newest first
    first = batches["round 1"]
    assert first["tasks"] == body["tasks"] and first["wanted"] == 2 * body["tasks"]
    assert first["done"] == 1 and first["submissions"] == 1
    assert first["progress"] == pytest.approx(1 / (2 * body["tasks"]))
    assert batches["rate"]["done"] == 0 and batches["rate"]["wanted"] == 5 * 3


def test_users_and_invites(client, database, admin_headers):
    created = client.post("/api/v1/admin/users", headers=admin_headers,
                          json={"username": "eve", "password": "long enough pw", "role": "evaluator"})
    assert created.status_code == 201, created.text
    eve = created.json()
    assert eve["role"] == "evaluator" and eve["is_active"]
    assert client.post("/api/v1/admin/users", headers=admin_headers,
                       json={"username": "eve", "password": "long enough pw"}).status_code == 409
    assert client.post("/api/v1/admin/users", headers=admin_headers,
                       json={"username": "x", "password": "short"}).status_code == 422
    listed = client.get("/api/v1/admin/users", headers=admin_headers).json()
    assert [u["username"] for u in listed] == ["admin", "eve"]

    patched = client.patch(f"/api/v1/admin/users/{eve['id']}", headers=admin_headers,
                           json={"role": "annotator", "is_active": False})
    assert patched.status_code == 200 and patched.json()["role"] == "annotator" and not patched.json()["is_active"]
    assert client.post("/api/v1/auth/token", json={"username": "eve", "password": "long enough pw"}).status_code == 401
    me = listed[0]["id"]
    assert client.patch(f"/api/v1/admin/users/{me}", headers=admin_headers, json={"is_active": False}).status_code == 409
    assert client.patch("/api/v1/admin/users/99999", headers=admin_headers, json={"role": "admin"}).status_code == 404

    invite = client.post("/api/v1/admin/invites", headers=admin_headers, json={"role": "evaluator"})
    assert invite.status_code == 201
    assert invite.json()["url"] == f"/invite/{invite.json()['token']}" and invite.json()["role"] == "evaluator"
    assert client.post("/api/v1/admin/invites", headers=admin_headers, json={"role": "king"}).status_code == 422

    make_user(database, "ann")
    ann = token_headers(client, "ann")
    for method, path in [("get", "/api/v1/admin/users"), ("get", "/api/v1/admin/prompts"),
                         ("get", "/api/v1/admin/batches"), ("get", "/api/v1/admin/model-versions"),
                         ("post", "/api/v1/admin/invites"), ("get", "/api/v1/admin/exports/pairs.jsonl")]:
        assert getattr(client, method)(path, headers=ann).status_code == 403, path


# ---------------------------------------------------------------- large imports beside annotation (SQLite's one writer)


def _statements_in_write_transactions(database, run) -> list[int]:
    """Runs run() and returns, for each write transaction it made, how many statements ran in it."""
    counts: list[int] = []
    original = type(database).write

    @contextmanager
    def counting_write(self):
        seen = [0]

        def count(*_args):
            seen[0] += 1

        event.listen(self.engine, "before_cursor_execute", count)
        try:
            with original(self) as session:
                yield session
        finally:
            event.remove(self.engine, "before_cursor_execute", count)
            counts.append(seen[0])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(database), "write", counting_write)
        run()
    return counts


def test_a_large_import_writes_in_a_few_statements(database):
    """The import's write transaction (on SQLite it holds the lock every lease and submission waits
    for) runs a few statements per thousand lines at most: the parsing and checks run before it. It ran
    one statement per new prompt, and per thousand continuations, before."""
    data = import_stall.import_file_bytes(6000, per_prompt=3)
    counts = _statements_in_write_transactions(database, lambda: imports.import_file(database, data, "big.jsonl"))
    assert len(counts) == 1 and counts[0] <= 20, counts
    assert _counts(database) == (2000, 6000, 2)


def test_annotators_do_not_wait_for_a_large_sqlite_import(tmp_path):
    """Leases and submissions on SQLite during a 15,000-line import (benchmarks/import_stall.py, smaller)
    each wait well under a second; they waited for the whole import before (2-3 s here)."""
    url = f"sqlite:///{tmp_path / 'stall.db'}"
    upgrade_to_head(url)
    database = Database.from_url(url)
    try:
        users = import_stall.seed(database, prompts=100, annotators=5)
        data = import_stall.import_file_bytes(15_000, per_prompt=4)
        timing = SimpleNamespace(think=0.02, warmup=0.3, after=0.2)
        result = asyncio.run(import_stall.run(database, users, data, timing))
    finally:
        database.dispose()
    assert result["outcome"]["summary"]["continuations_created"] == 15_000, result
    assert result["during"]["n"] > 0
    assert result["during"]["worst_s"] < 1.0, result


def _big_import_with_gold() -> bytes:
    return _jsonl(*({"prompt": f"P{i // 4}", "prompt_id": f"p{i // 4}", "continuation": f" story {i}",
                     "continuation_id": f"c{i}", "source": f"src-{i % 2}"} for i in range(2000)),
                  *({"prompt": "G", "continuation": f" gold {i}", "source": "src-0", "gold_tuple": "t1",
                     "gold": "best" if i == 0 else None} for i in range(4)))


def test_an_import_that_fails_while_writing_leaves_nothing(database, monkeypatch):
    """All or nothing, also when the write fails after its rows went in (here, at the gold checks)."""
    def broken(*_args, **_kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(imports, "_store_gold", broken)
    with pytest.raises(RuntimeError):
        imports.import_file(database, _big_import_with_gold(), "doomed.jsonl")
    assert _counts(database) == (0, 0, 0)
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(Batch)) == 0
    monkeypatch.undo()
    assert imports.import_file(database, _big_import_with_gold(), "fine.jsonl").gold_items_created == 1
    assert _counts(database) == (501, 2004, 2)


def test_an_import_checks_again_what_arrived_after_its_checks(database, monkeypatch):
    """The checks run before the write transaction; a continuation id taken between them and the write
    (another import) is still found, and the import refused whole."""
    checks = imports._plan

    def checks_then_another_import(db, rows):
        plan = checks(db, rows)
        if not started:
            started.append(True)  # once (the other import runs these checks too)
            imports.import_file(database, _jsonl({"prompt": "other", "continuation": " x", "continuation_id": "c1999",
                                                  "source": "other"}))
        return plan

    started: list[bool] = []
    monkeypatch.setattr(imports, "_plan", checks_then_another_import)
    with pytest.raises(Invalid) as refused:
        imports.import_file(database, _big_import_with_gold(), "late.jsonl")
    assert refused.value.details == [{"line": 2000, "field": "continuation_id",
                                      "message": "continuation_id 'c1999' already exists"}]
    assert _counts(database) == (1, 1, 1)  # the other import's
