"""Inputs the databases cannot store are refused with a 422 naming the field, and nothing is stored:
integers beyond PostgreSQL's integer range, NUL characters and lone surrogates, texts longer than their
column, id lists longer than MAX_ID_LIST, Unicode digits in admin form id fields (app/validation.py).
Each case runs on SQLite and on PostgreSQL; before app/validation.py most of them were 500s on one or both."""

import contextlib
import json
import select as io_select
import socket
import time

import httpx
import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.models import (
    ApiToken,
    Assignment,
    Batch,
    BwsJudgement,
    Campaign,
    CrowdInvite,
    GoldItem,
    Prompt,
    Rating,
    Task,
    User,
)
from app.validation import DB_INT_MAX, MAX_ID_LIST, MAX_QUERY_IDS
from tests.conftest import PASSWORD, make_user, token_headers
from tests.factories import seed_bws_batch, seed_rating_batch, seed_stories
from tests.live_server import LiveServer
from tests.test_admin_pages import admin, app_with_overview, csrf_of, web  # noqa: F401 (admin: a signed-in admin)

TOO_BIG = DB_INT_MAX + 1  # 2^31: beyond PostgreSQL's integer
HUGE = 2**63  # beyond SQLite's integer too


def count(database, model) -> int:
    with database.read() as db:
        return db.scalar(select(func.count()).select_from(model))


def assert_refused(response, *loc, status: int = 422) -> dict:
    """The status, and an error whose location names the field (JSON body of app/main.py's handlers)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str)
    locations = [e.get("loc") for e in body["errors"]]
    assert list(loc) in locations, f"{loc} not among {locations}"
    return body


def post_json(client, url: str, body, headers: dict | None = None):
    """Posts `body` as JSON written by json.dumps, which escapes a lone surrogate as \\ud800 (as any
    client would); httpx's own json= cannot encode one."""
    return client.post(url, content=json.dumps(body), headers={**(headers or {}), "Content-Type": "application/json"})


@pytest.fixture
def annotator(client, database):
    make_user(database, "ann")
    return token_headers(client, "ann")


def lease(client, headers) -> dict:
    response = client.post("/api/v1/tasks/next", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- integers beyond the column range


def test_admin_path_and_query_ids_beyond_the_range(client, admin_headers):
    for value in (TOO_BIG, HUGE, -1):
        for path, field in [("/api/v1/admin/campaigns/{}", "campaign_id"), ("/api/v1/admin/campaigns/{}/results", "campaign_id"),
                            ("/api/v1/admin/training/rounds/{}/logs", "round_id")]:
            assert_refused(client.get(path.format(value), headers=admin_headers), "path", field)
        for url in ("/api/v1/admin/prompts", "/api/v1/admin/stories"):
            assert_refused(client.get(f"{url}?offset={value}", headers=admin_headers), "query", "offset")
        assert_refused(client.get(f"/api/v1/admin/scores?prompt_id={value}", headers=admin_headers), "query", "prompt_id")
        assert_refused(client.get(f"/api/v1/admin/stories?version_id=1&version_id={value}", headers=admin_headers),
                       "query", "version_id", 1)


@pytest.mark.parametrize("value", [TOO_BIG, HUGE])
def test_task_ids_beyond_the_range(client, database, annotator, value):
    seed_bws_batch(database)
    task = lease(client, annotator)
    assert_refused(client.get(f"/api/v1/tasks/{value}", headers=annotator), "path", "assignment_id")
    items = [i["handle"] for i in task["items"]]
    body = {"best": value, "worst": items[1], "idempotency_key": "key-12345678"}
    assert_refused(client.post(f"/api/v1/tasks/{task['assignment_id']}/bws", headers=annotator, json=body),
                   "body", "best")
    assert_refused(client.post(f"/api/v1/tasks/{value}/skip", headers=annotator, json={}), "path", "assignment_id")
    assert count(database, BwsJudgement) == 0
    with database.read() as db:
        assert db.get(Assignment, task["assignment_id"]).status == "active"


def test_bws_batch_bodies_beyond_the_range(client, database, admin_headers):
    seed_stories(database)
    for body, loc in [
        ({"name": "b", "seed": TOO_BIG}, ("body", "seed")),
        ({"name": "b", "seed": HUGE}, ("body", "seed")),
        ({"name": "b", "prompt_ids": [1, TOO_BIG]}, ("body", "prompt_ids", 1)),
        ({"name": "b", "model_version_ids": [HUGE]}, ("body", "model_version_ids", 0)),
    ]:
        assert_refused(client.post("/api/v1/admin/batches", headers=admin_headers, json=body), *loc)
    assert count(database, Batch) == 0


def test_rating_batch_and_campaign_ids_beyond_the_range(client, database, admin_headers):
    seed_stories(database)
    assert_refused(client.post("/api/v1/admin/batches/rating", headers=admin_headers,
                               json={"name": "r", "continuation_ids": [HUGE]}), "body", "continuation_ids", 0)
    assert_refused(client.post("/api/v1/admin/campaigns", headers=admin_headers,
                               json={"model_version_ids": [1, 2], "prompt_ids": [TOO_BIG], "seed": 1}),
                   "body", "prompt_ids", 0)
    assert_refused(client.post("/api/v1/admin/campaigns", headers=admin_headers,
                               json={"model_version_ids": [1, 2], "prompt_ids": [1], "seed": TOO_BIG}), "body", "seed")
    assert_refused(client.patch(f"/api/v1/admin/users/{TOO_BIG}", headers=admin_headers, json={"role": "admin"}),
                   "path", "user_id")
    assert_refused(client.patch(f"/api/v1/admin/batches/{HUGE}", headers=admin_headers, json={"priority": "up"}),
                   "path", "batch_id")
    assert (count(database, Batch), count(database, Campaign)) == (0, 0)


# ---------------------------------------------------------------- NUL characters and lone surrogates


@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b"], ids=["nul", "surrogate"])
def test_task_texts_with_nul_or_a_lone_surrogate(client, database, annotator, bad):
    seed_bws_batch(database)
    seed_rating_batch(database)
    task = lease(client, annotator)
    assert_refused(post_json(client, f"/api/v1/tasks/{task['assignment_id']}/skip", {"reason": bad}, annotator),
                   "body", "reason")
    items = [i["handle"] for i in task["items"]]
    assert_refused(post_json(client, f"/api/v1/tasks/{task['assignment_id']}/bws",
                             {"best": items[0], "worst": items[1], "idempotency_key": f"key-{bad}-123"}, annotator),
                   "body", "idempotency_key")
    with database.read() as db:
        assert db.get(Assignment, task["assignment_id"]).status == "active"
    assert count(database, BwsJudgement) == 0


@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b"], ids=["nul", "surrogate"])
def test_a_rating_comment_with_nul_or_a_lone_surrogate(client, database, annotator, bad):
    seed_rating_batch(database)
    task = lease(client, annotator)
    scores = {"grammar": 3, "creativity": 3, "consistency": 3, "plot": 3}
    assert_refused(post_json(client, f"/api/v1/tasks/{task['assignment_id']}/rating",
                             {**scores, "comment": bad, "idempotency_key": "key-12345678"}, annotator), "body", "comment")
    assert count(database, Rating) == 0


@pytest.mark.parametrize("bad", ["ro\x00ot", "ro\ud800ot"], ids=["nul", "surrogate"])
def test_logins_and_accounts_with_nul_or_a_lone_surrogate(client, database, admin_headers, bad):
    users_before, tokens_before = count(database, User), count(database, ApiToken)
    assert_refused(post_json(client, "/api/v1/auth/token", {"username": bad, "password": PASSWORD}), "body", "username")
    assert_refused(post_json(client, "/api/v1/auth/token", {"username": "admin", "password": bad}), "body", "password")
    assert_refused(post_json(client, "/api/v1/admin/users", {"username": bad, "password": PASSWORD}, admin_headers),
                   "body", "username")
    assert_refused(post_json(client, "/api/v1/admin/invites", {"role": bad}, admin_headers), "body", "role")
    assert (count(database, User), count(database, ApiToken)) == (users_before, tokens_before)


def test_searches_with_nul(client, admin_headers):
    assert_refused(client.get("/api/v1/admin/prompts?q=a%00b", headers=admin_headers), "query", "q")
    assert_refused(client.get("/api/v1/admin/stories?q=a%00b", headers=admin_headers), "query", "q")


def test_login_form_with_nul_in_the_username(client, database):
    make_user(database, "root", "admin")
    response = client.post("/login", headers={"Accept": "text/html"}, follow_redirects=False,
                           data={"username": "ro\x00ot", "password": PASSWORD, "csrf": csrf_of(client, "/login")})
    assert response.status_code == 422 and "username" in response.text
    assert client.get("/admin", follow_redirects=False).status_code == 303  # not signed in


@pytest.mark.parametrize("upload, line, field", [
    (b'{"prompt": "fine"}\n{"prompt": "bad \\u0000 text"}\n', 2, "prompt"),
    (b'{"prompt": "fine", "continuation": "bad \\ud800", "source": "s"}\n', 1, "continuation"),
    (b'{"prompt": "p", "continuation": "c", "source": "s\\u0000"}\n', 1, "source"),
    (b'prompt,continuation,source\nfine,fine,s\nbad \x00 prompt,c,s\n', 3, "prompt"),
], ids=["jsonl-nul", "jsonl-surrogate", "jsonl-nul-source", "csv-nul"])
def test_imports_with_nul_or_a_lone_surrogate(client, database, admin_headers, upload, line, field):
    name = "stories.csv" if upload.startswith(b"prompt,") else "stories.jsonl"
    response = client.post("/api/v1/admin/imports", headers=admin_headers, files={"file": (name, upload)})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["errors"][0]["line"] == line and body["errors"][0]["field"] == field, body
    assert f"line {line}" in body["detail"] and repr(field) in body["detail"]
    assert count(database, Prompt) == 0


# ---------------------------------------------------------------- texts longer than their column


def test_a_token_name_longer_than_its_column(client, database):
    make_user(database, "ann")
    response = client.post("/api/v1/auth/token", json={"username": "ann", "password": PASSWORD, "name": "n" * 101})
    assert_refused(response, "body", "name")
    assert count(database, ApiToken) == 0
    ok = client.post("/api/v1/auth/token", json={"username": "ann", "password": PASSWORD, "name": "n" * 100})
    assert ok.status_code == 200 and count(database, ApiToken) == 1


def test_a_skip_reason_longer_than_its_column(client, database, annotator):
    seed_bws_batch(database)
    task = lease(client, annotator)
    response = client.post(f"/api/v1/tasks/{task['assignment_id']}/skip", headers=annotator, json={"reason": "r" * 501})
    assert_refused(response, "body", "reason")
    with database.read() as db:
        assert db.get(Assignment, task["assignment_id"]).status == "active"


# ---------------------------------------------------------------- id lists beyond the limit


def test_id_lists_beyond_the_limit(client, database, admin_headers):
    seed_stories(database)
    too_many = list(range(1, MAX_ID_LIST + 2))  # beyond PostgreSQL's 65,535 parameters too, times 7
    for url, body, field in [
        ("/api/v1/admin/batches", {"name": "b", "prompt_ids": too_many * 7}, "prompt_ids"),
        ("/api/v1/admin/batches/rating", {"name": "r", "continuation_ids": too_many}, "continuation_ids"),
        ("/api/v1/admin/campaigns", {"model_version_ids": [1, 2], "prompt_ids": too_many}, "prompt_ids"),
    ]:
        assert_refused(client.post(url, headers=admin_headers, json=body), "body", field)
    assert (count(database, Batch), count(database, Campaign)) == (0, 0)


def test_an_id_list_at_the_limit_is_accepted(client, database, admin_headers):
    by_prompt = seed_stories(database)
    ids = sorted(by_prompt) + list(range(10_000, 10_000 + MAX_ID_LIST - len(by_prompt)))
    response = client.post("/api/v1/admin/batches", headers=admin_headers, json={"name": "b", "prompt_ids": ids})
    assert response.status_code == 201, response.text


# ---------------------------------------------------------------- admin form id fields


@pytest.mark.parametrize("typed", ["١٢", "²", "1 2 ３", str(TOO_BIG)], ids=["arabic-indic", "superscript", "fullwidth", "too-big"])
def test_admin_form_id_fields_take_ascii_digits_only(admin, database, typed):
    seed_stories(database)
    for action in ("/admin/batches/bws", "/admin/batches/rating"):
        response = admin.post(action, follow_redirects=False,
                                   data={"csrf": csrf_of(admin, "/admin/batches"), "prompt_ids_text": typed})
        assert_refused(response, "body", "prompt_ids_text")
    response = admin.post("/admin/campaigns", follow_redirects=False,
                               data={"csrf": csrf_of(admin, "/admin/campaigns"), "model_version_ids": ["1", "2"],
                                     "prompt_ids_text": typed})
    assert_refused(response, "body", "prompt_ids_text")
    assert (count(database, Batch), count(database, Campaign)) == (0, 0)


def test_admin_form_select_and_number_fields_refuse_unicode_digits(admin, database):
    seed_stories(database)
    token = csrf_of(admin, "/admin/batches")
    assert_refused(admin.post("/admin/batches/bws", data={"csrf": token, "prompt_ids": ["١"]}), "body", "prompt_ids", 0)
    assert_refused(admin.post("/admin/batches/bws", data={"csrf": token, "seed": "١٢"}), "body", "seed")
    assert_refused(admin.post("/admin/batches/bws", data={"csrf": token, "seed": str(TOO_BIG)}), "body", "seed")
    token = csrf_of(admin, "/admin/campaigns")
    assert_refused(admin.post("/admin/campaigns", data={"csrf": token, "model_version_ids": ["1", "2"],
                                                              "first_active": "١٢"}), "body", "first_active")
    assert (count(database, Batch), count(database, Campaign)) == (0, 0)


def test_crowd_and_gold_forms_refuse_unicode_digits(admin, database):
    """'²'.isdigit() is true and int('²') an error: both forms once answered 500."""
    token = csrf_of(admin, "/admin/crowd")
    link = {"csrf": token, "platform": "prolific", "task_quota": "5", "completion_code": "C0DE",
            "completion_url": "https://example.org/done"}
    for minutes in ("²", "١٢", str(TOO_BIG)):
        assert_refused(admin.post("/admin/crowd", data={**link, "session_minutes": minutes}), "body", "session_minutes")
    assert count(database, CrowdInvite) == 0
    created = admin.post("/admin/crowd", data={**link, "session_minutes": ""}, follow_redirects=False)
    assert created.status_code == 303  # empty: no time limit, as before
    with database.read() as db:
        assert db.scalar(select(CrowdInvite.session_minutes)) is None

    batch_id = seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    with database.read() as db:
        task_id = db.scalar(select(Task.id).where(Task.batch_id == batch_id))
    token = csrf_of(admin, f"/admin/gold?task_id={task_id}")
    for best in ("²", "١٢", str(TOO_BIG)):
        marked = admin.post(f"/admin/gold/items/{task_id}", data={"csrf": token, "best_id": best}, follow_redirects=False)
        assert marked.status_code == 303 and marked.headers["location"] == f"/admin/gold?task_id={task_id}"
        assert "best_id: a whole number" in admin.get(marked.headers["location"]).text
    assert count(database, GoldItem) == 0


def test_the_longest_query_the_schema_allows_reaches_the_app(app, admin_headers):
    """The stories' version_id list once allowed 10,000 ids in the URL, beyond what uvicorn reads of a
    request line (64 KiB): it answered 400 itself, a status the schema does not have. At the limit the
    request reaches the app; one id more is the app's 422."""
    with LiveServer(app) as live:
        def stories(ids: int):
            query = "&".join(["version_id=2147483647"] * ids) + "&q=" + "%F0%9F%A6%8A" * 200
            return httpx.get(f"{live.url}/api/v1/admin/stories?{query}", headers=admin_headers, timeout=30)

        assert stories(MAX_QUERY_IDS).status_code == 200
        assert_refused(stories(MAX_QUERY_IDS + 1), "query", "version_id")


# ---------------------------------------------------------------- bodies that cannot be parsed


def test_an_undecodable_body_is_a_422_naming_the_body(client):
    response = client.post("/api/v1/auth/token", content=b'{"username": "\xff\xfe"}',
                           headers={"Content-Type": "application/json"})
    assert_refused(response, "body")


# ---------------------------------------------------------------- bodies that arrive too slowly


def _trickle(url: str, connections: int, every: float, give_up: float) -> list[tuple[float, bytes]]:
    """Opens connections that each declare a 1,000-byte JSON body and send one byte of it every `every`
    seconds; returns, per connection, when the server answered and closed it and what it said (None
    for those still open after give_up seconds)."""
    host, port = url.removeprefix("http://").split(":")
    head = (b"POST /api/v1/auth/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{")
    sockets = [socket.create_connection((host, int(port)), timeout=5) for _ in range(connections)]
    for sock in sockets:
        sock.sendall(head)
    start, answers = time.monotonic(), [None] * connections
    while None in answers and time.monotonic() - start < give_up:
        readable, _, _ = io_select.select([s for s, a in zip(sockets, answers) if a is None], [], [], every)
        for sock in readable:
            answer = b""
            with contextlib.suppress(ConnectionResetError):  # closed with bytes of ours unread: a reset
                while chunk := sock.recv(65536):  # to the end: the server closes the connection
                    answer += chunk
            answers[sockets.index(sock)] = (time.monotonic() - start, answer)
        for sock, answer in zip(sockets, answers):
            if answer is None:
                with contextlib.suppress(OSError):
                    sock.sendall(b" ")
    for sock in sockets:
        sock.close()
    return answers


def test_a_body_trickled_in_is_cut_off_with_408(database, settings):
    """Under a real uvicorn: 20 connections sending a byte of their body every 0.2 s each get 408 and
    are closed once the body's time is up (here 1 s, plus 1 s per 20,000 bytes); they stayed open for
    as long as the bytes kept coming before. A body that arrives in time is answered as always."""
    from app.main import create_app

    make_user(database, "patient")
    app = create_app(Settings(**{**settings.model_dump(), "body_read_seconds": 1.0}), database)
    with LiveServer(app) as live:
        answers = _trickle(live.url, connections=20, every=0.2, give_up=8)
        assert None not in answers, f"{answers.count(None)} of 20 connections still open after 8 s"
        for seconds, answer in answers:
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"arrived too slowly" in answer and b"connection: close" in answer.lower()
            assert 0.9 < seconds < 4, seconds
        login = httpx.post(f"{live.url}/api/v1/auth/token", json={"username": "patient", "password": PASSWORD})
        assert login.status_code == 200, login.text
