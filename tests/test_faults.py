"""Faults as the operator and the annotator meet them: a full disk or a read-only database, PostgreSQL
restarted under load, and the trainer killed mid-round while the app serves.

A database or disk fault is answered 503 with Retry-After (a JSON body for the API, a "try again"
page for the browser), never a bare 500; nothing is half-stored, and a retry with the same
idempotency key stores the judgement exactly once.
"""

import errno
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.config import Settings
from app.db import Database
from app.faults import is_unavailable
from app.migrate import upgrade_to_head
from app.models import Assignment, BwsJudgement
from tests.conftest import PASSWORD, TEST_SECRET_KEY, make_user
from tests.factories import seed_bws_batch
from tests.live_server import CHROMIUM, CHROMIUM_ARGS, LiveServer, start_server_process

HTML = {"Accept": "text/html"}
INTERRUPTED = '<strong class="interrupted">interrupted</strong>'  # the trainer page's mark on a round nobody runs
DISK_FULL = "database or disk is full"
READ_ONLY = "attempt to write a readonly database"


# ---------------------------------------------------------------- which errors are faults


@pytest.mark.parametrize("exc", [
    sqlite3.OperationalError(DISK_FULL),
    sqlite3.OperationalError(READ_ONLY),
    sqlite3.OperationalError("unable to open database file"),
    sqlite3.OperationalError("disk I/O error"),
    OperationalError("INSERT ...", {}, sqlite3.OperationalError(DISK_FULL)),
    OperationalError("SELECT 1", {}, psycopg.OperationalError("connection failed: Connection refused")),
    OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown(
        "terminating connection due to administrator command")),
    PoolTimeout("QueuePool limit of size 20 overflow 40 reached"),
    # asyncpg, the annotation path's driver on PostgreSQL (app/db.py AsyncStatements)
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.DiskFullError("could not extend file: No space left on device"),
    asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
    asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 5432)"),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EROFS, "Read-only file system"),
], ids=repr)
def test_database_and_disk_faults_are_unavailability(exc):
    assert is_unavailable(exc)


@pytest.mark.parametrize("exc", [
    sqlite3.OperationalError("no such table: bws_judgements"),
    OperationalError("SELECT x", {}, sqlite3.OperationalError('near "x": syntax error')),
    IntegrityError("INSERT ...", {}, sqlite3.IntegrityError("UNIQUE constraint failed")),
    asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint"),
    asyncpg.exceptions.UndefinedTableError('relation "bws_judgements" does not exist'),
    OSError(errno.ENOENT, "No such file or directory"),
    ValueError("a bug"),
], ids=repr)
def test_programming_errors_are_not(exc):
    assert not is_unavailable(exc)


# ---------------------------------------------------------------- full disk, read-only database (SQLite)


class DiskFault:
    """Makes SQLite writes fail as a full disk or a read-only database file would: at the statement
    (an INSERT, UPDATE or DELETE) or at the commit. (chmod would not stop the root user tests run as.)"""

    def __init__(self, engine):
        self.message: str | None = None
        self.at, self.only, self.times = "statement", "", None
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def start(self, message: str, at: str, only: str = "", times: int | None = None) -> None:
        """From now on, fail writes (those whose statement contains `only`), `times` times or until cleared."""
        self.message, self.at, self.only, self.times = message, at, only, times

    def clear(self) -> None:
        self.message = None

    def _fail(self) -> None:
        error = sqlite3.OperationalError(self.message)
        if self.times is not None:
            self.times -= 1
            if self.times == 0:
                self.clear()
        raise error

    def _statement(self, _conn, _cursor, statement, *_args):
        if self.message and self.at == "statement" and statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE") \
                and self.only in statement:
            self._fail()

    def _commit(self, _conn):
        if self.message and self.at == "commit":
            self._fail()


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[tuple[TestClient, Database, DiskFault]]:
    from app.main import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'faults.db'}", data_dir=tmp_path / "data",
                        secret_key=TEST_SECRET_KEY, lease_seconds=600)
    upgrade_to_head(settings.resolved_database_url)
    database = Database.from_url(settings.resolved_database_url)
    seed_bws_batch(database, prompts=2, per_prompt=4, required=1)  # two tuples: one to judge, one to go on to
    make_user(database, "ann")
    fault = DiskFault(database.engine)
    with TestClient(create_app(settings, database), raise_server_exceptions=False) as client:
        yield client, database, fault
    database.engine.dispose()


def _stored(database: Database) -> list[tuple[str, int]]:
    with database.read() as db:
        return [tuple(row) for row in db.execute(select(BwsJudgement.idempotency_key, BwsJudgement.assignment_id))]


def _assignment_status(database: Database, assignment_id: int) -> str:
    with database.read() as db:
        return db.get(Assignment, assignment_id).status


@pytest.mark.parametrize("message", [DISK_FULL, READ_ONLY])
@pytest.mark.parametrize("at", ["statement", "commit"])
def test_api_answers_503_with_retry_after_and_stores_nothing(sqlite_app, message, at):
    client, database, fault = sqlite_app
    token = client.post("/api/v1/auth/token", json={"username": "ann", "password": PASSWORD}).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    task = client.post("/api/v1/tasks/next", headers=headers).json()
    ids = [item["handle"] for item in task["items"]]
    body = {"best": ids[0], "worst": ids[1], "idempotency_key": "key-during-the-fault"}
    url = f"/api/v1/tasks/{task['assignment_id']}/bws"

    fault.start(message, at)
    refused = client.post(url, headers=headers, json=body)
    assert refused.status_code == 503, refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 10
    assert "try again" in refused.json()["detail"]
    assert _stored(database) == []  # nothing half-stored
    assert _assignment_status(database, task["assignment_id"]) == "active"

    fault.clear()
    stored = client.post(url, headers=headers, json=body)
    assert stored.status_code == 200, stored.text
    assert stored.json()["replayed"] is False
    assert _stored(database) == [("key-during-the-fault", task["assignment_id"])]
    assert _assignment_status(database, task["assignment_id"]) == "submitted"


def _form_fields(html: str) -> dict[str, str]:
    """The task form's hidden fields, and for each radio group its first value (generic over field names)."""
    form = re.search(r'<form[^>]*id="task-form".*?</form>', html, re.S).group(0)
    fields = dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', form))
    radios: dict[str, list[str]] = {}
    for name, value in re.findall(r'type="radio" name="([^"]+)" value="([^"]+)"', form):
        radios.setdefault(name, []).append(value)
    for i, (name, values) in enumerate(radios.items()):  # best: the first item, worst: the second
        fields[name] = values[i % len(values)]
    return fields


def _first_task_in_the_browser(client: TestClient) -> tuple[int, dict[str, str]]:
    """Logs "ann" in through the pages and opens her first task: its assignment id and a filled-in form."""
    page = client.get("/login", headers=HTML)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    client.post("/login", headers=HTML, data={"csrf": csrf, "username": "ann", "password": PASSWORD, "next": ""})
    annotate = client.get("/annotate", headers=HTML)
    csrf = re.search(r'name="csrf" value="([^"]+)"', annotate.text).group(1)
    task_page = client.post("/annotate/next", headers=HTML, data={"csrf": csrf})
    return int(str(task_page.url).rsplit("/", 1)[1]), _form_fields(task_page.text)


def test_the_script_s_submission_is_told_where_to_go_and_the_flash_waits_there(sqlite_app):
    """annotate.js sends the form with fetch; a redirect would be followed by fetch itself (and the
    page it fetched would take the "Saved." flash), so the script gets the address as JSON."""
    client, database, _fault = sqlite_app
    assignment_id, form = _first_task_in_the_browser(client)
    answer = client.post(f"/task/{assignment_id}/bws", headers={**HTML, "X-Storyloop-Submit": "fetch"}, data=form,
                         follow_redirects=False)
    assert answer.status_code == 200
    location = answer.json()["location"]
    assert re.fullmatch(r"/task/\d+", location) and location != f"/task/{assignment_id}"
    assert _stored(database) == [(form["idempotency_key"], assignment_id)]
    assert "Saved." in client.get(location, headers=HTML).text


def test_browser_post_during_a_full_disk_gets_the_try_again_page(sqlite_app):
    client, database, fault = sqlite_app
    assignment_id, form = _first_task_in_the_browser(client)
    action = f"/task/{assignment_id}/bws"

    fault.start(DISK_FULL, "statement")
    refused = client.post(action, headers=HTML, data=form, follow_redirects=False)
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert "try again" in refused.text.lower() and "submit again" in refused.text
    assert "Traceback" not in refused.text and DISK_FULL not in refused.text  # no internals shown
    assert _stored(database) == []

    fault.clear()
    saved = client.post(action, headers=HTML, data=form, follow_redirects=False)
    assert saved.status_code == 303
    assert _stored(database) == [(form["idempotency_key"], assignment_id)]


def test_a_programming_error_is_still_a_500(sqlite_app):
    client, database, fault = sqlite_app
    token = client.post("/api/v1/auth/token", json={"username": "ann", "password": PASSWORD}).json()["access_token"]
    fault.start("no such table: bws_judgement", "statement")  # a bug, not a fault: no 503, no Retry-After
    task = client.post("/api/v1/tasks/next", headers={"Authorization": f"Bearer {token}"})
    assert task.status_code == 500
    assert "Retry-After" not in task.headers


# ---------------------------------------------------------------- the annotator's page keeps the answer


@pytest.fixture
def browser_page(sqlite_app):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests, but {CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} not installed; browser tests skipped")
    from playwright.sync_api import sync_playwright

    client, database, fault = sqlite_app
    with LiveServer(client.app) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(base_url=server.url)
        page.set_default_timeout(10_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto("/login")
        page.fill("#username", "ann")
        page.fill("#password", PASSWORD)
        with page.expect_navigation():
            page.press("#password", "Enter")
        page.goto("/annotate")
        with page.expect_navigation():
            page.click("form.start button")
        yield page, database, fault
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def _sent_keys(page) -> list[str]:
    """Records the idempotency key of every submission the page sends."""
    keys: list[str] = []

    def record(request) -> None:
        if request.method == "POST" and request.url.endswith("/bws"):
            found = re.search(rb'name="idempotency_key"\r\n\r\n(\w+)', request.post_data_buffer or b"")
            keys.append(found.group(1).decode() if found else "(none)")

    page.on("request", record)
    return keys


def _mark_best_and_worst(page) -> None:
    page.keyboard.press("Digit1")  # best: continuation 1
    page.keyboard.press("Shift+Digit2")  # worst: continuation 2
    assert page.locator("#task-form input[type=radio]:checked").count() == 2


def test_a_503_keeps_the_choice_and_the_page_retries_with_the_same_key(browser_page):
    page, database, fault = browser_page
    task_url = page.url
    key = page.locator('input[name="idempotency_key"]').input_value()
    sent = _sent_keys(page)
    _mark_best_and_worst(page)
    checked = page.locator("#task-form input[type=radio]:checked").evaluate_all("els => els.map(e => e.value)")

    fault.start(DISK_FULL, "statement", only="INTO bws_judgement ", times=1)  # the first submission meets a full disk
    page.click("#submit-btn")
    page.wait_for_function("() => /retrying in/.test(document.getElementById('form-msg').textContent)")
    assert "server is busy" in page.locator("#form-msg").inner_text()
    assert page.locator("#retry-btn").is_visible()
    assert page.url == task_url  # still on the task, the choice still marked
    assert page.locator("#task-form input[type=radio]:checked").evaluate_all("els => els.map(e => e.value)") == checked
    assert _stored(database) == []

    with page.expect_navigation(timeout=15_000):  # the page retries by itself after Retry-After
        pass
    assert page.url != task_url and "Saved." in page.content()
    assert sent == [key, key]
    assert _stored(database) == [(key, int(task_url.rsplit("/", 1)[1]))]


def test_a_network_error_keeps_the_choice_and_try_again_resends(browser_page):
    page, database, _fault = browser_page
    task_url = page.url
    key = page.locator('input[name="idempotency_key"]').input_value()
    sent = _sent_keys(page)
    dropped = []

    def drop_the_first(route):
        if not dropped:
            dropped.append(route.request.url)
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/bws", drop_the_first)
    _mark_best_and_worst(page)
    page.click("#submit-btn")
    page.wait_for_function("() => /No answer from the server/.test(document.getElementById('form-msg').textContent)")
    assert page.locator("#task-form input[type=radio]:checked").count() == 2
    assert _stored(database) == []
    with page.expect_navigation():
        page.click("#retry-btn")  # at once, without waiting for the countdown
    assert page.url != task_url and "Saved." in page.content()
    assert sent == [key, key] and len(dropped) == 1
    assert _stored(database) == [(key, int(task_url.rsplit("/", 1)[1]))]


# ---------------------------------------------------------------- annotators under load, retrying as clients should


@dataclass
class Load:
    """What annotator threads met: every answer's status, 503s without Retry-After, broken connections,
    and every acknowledged judgement (idempotency key -> (judgement id, when))."""

    statuses: Counter = field(default_factory=Counter)
    no_retry_after: int = 0
    broken_connections: int = 0
    acknowledged: dict[str, tuple[int, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    think_seconds: float = 0.05  # between one judgement and the next task

    def post(self, client: httpx.Client, url: str, **kwargs) -> httpx.Response | None:
        """POST until an answer that is neither a 503 nor a broken connection (None once stopped).
        A real client waits Retry-After; these wait less, to keep the test short."""
        while not self.stop.is_set():
            try:
                response = client.post(url, **kwargs)
            except httpx.TransportError:
                with self.lock:
                    self.broken_connections += 1
                time.sleep(0.2)
                continue
            with self.lock:
                self.statuses[response.status_code] += 1
                self.no_retry_after += response.status_code == 503 and "Retry-After" not in response.headers
            if response.status_code != 503:
                return response
            time.sleep(0.3)
        return None

    def annotate(self, base_url: str, headers: dict[str, str], seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base_url, headers=headers, timeout=20) as client:
            while not self.stop.is_set():
                task = self.post(client, "/api/v1/tasks/next")
                if task is None or task.status_code != 200:
                    time.sleep(0.3)  # nothing to do now (204): ask again soon, new tuples may come
                    continue
                best, worst = rng.sample([i["handle"] for i in task.json()["items"]], 2)
                key = uuid.uuid4().hex  # one key per judgement, kept across every retry of it
                answer = self.post(client, f"/api/v1/tasks/{task.json()['assignment_id']}/bws",
                                   json={"best": best, "worst": worst, "idempotency_key": key})
                if answer is not None and answer.status_code == 200:
                    with self.lock:
                        self.acknowledged[key] = (answer.json()["judgement_id"], time.monotonic())
                time.sleep(self.think_seconds)

    def start(self, base_url: str, annotators: list[tuple[int, dict[str, str]]]) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.annotate, args=(base_url, headers, i), daemon=True)
                   for i, (_uid, headers) in enumerate(annotators)]
        for t in threads:
            t.start()
        return threads

    def finish(self, threads: list[threading.Thread]) -> None:
        self.stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "annotator threads still running"

    def acknowledged_after(self, moment: float) -> int:
        with self.lock:
            return sum(at > moment for _id, at in self.acknowledged.values())

    def wait_for_acknowledged(self, count: int, timeout: float, after: float = 0.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acknowledged_after(after) < count:
            assert time.monotonic() < deadline, f"only {self.acknowledged_after(after)} judgements acknowledged"
            time.sleep(0.05)


def _each_acknowledged_judgement_stored_once(database: Database, load: Load) -> None:
    with database.read() as db:
        stored = db.execute(select(BwsJudgement.id, BwsJudgement.idempotency_key, BwsJudgement.task_id,
                                   BwsJudgement.user_id)).all()
    by_key = Counter(j.idempotency_key for j in stored)
    lost = [key for key in load.acknowledged if key not in by_key]
    assert not lost, f"{len(lost)} acknowledged judgements lost"
    assert max(by_key.values()) == 1, "an idempotency key stored twice"
    ids = {j.idempotency_key: j.id for j in stored}
    assert all(ids[key] == judgement_id for key, (judgement_id, _at) in load.acknowledged.items())
    assert max(Counter((j.task_id, j.user_id) for j in stored).values()) == 1, "a task judged twice by one person"


def _kill_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


# ---------------------------------------------------------------- PostgreSQL restarted under load


def _postgres_bin() -> Path | None:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):  # the newest version
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OwnPostgres:
    """A throwaway PostgreSQL server of this test's own (never the shared one other tests use)."""

    bin: Path
    root: Path
    port: int
    as_owner: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://storyloop@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        subprocess.run([*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-w", *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    pg_bin = _postgres_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries (/usr/lib/postgresql/<version>/bin) not installed")
    root = Path(tempfile.mkdtemp(prefix="storyloop-pg-"))  # not under pytest's tmp: the postgres user must reach it
    as_owner = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    server = OwnPostgres(pg_bin, root, _free_port(), as_owner)
    subprocess.run([*as_owner, str(pg_bin / "initdb"), "-D", str(root / "data"), "-U", "storyloop", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120)
    server.pg_ctl("-l", str(root / "log"), "-o", f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c max_connections=200", "start")
    try:
        yield server
    finally:
        try:
            server.pg_ctl("-m", "immediate", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


def test_postgresql_restarted_under_load(own_postgres, tmp_path):
    """PostgreSQL restarts (pg_ctl restart -m fast) while annotators submit through the real server
    (2 workers): no 500s, the failures meanwhile are 503 with Retry-After or broken connections, the
    app recovers by itself, and every acknowledged judgement is stored exactly once."""
    from tests.test_concurrency import _make_annotators

    settings = Settings(database_url=own_postgres.url, data_dir=tmp_path / "data", secret_key=TEST_SECRET_KEY,
                        lease_seconds=600)
    upgrade_to_head(settings.resolved_database_url)
    database = Database.from_url(settings.resolved_database_url)
    seed_bws_batch(database, prompts=10, per_prompt=8, required=3)
    annotators = _make_annotators(database, 8)
    server, port = start_server_process(settings, workers=2)
    load = Load()
    threads = load.start(f"http://127.0.0.1:{port}", annotators)
    try:
        load.wait_for_acknowledged(30, timeout=20)
        before = dict(load.statuses)
        own_postgres.pg_ctl("-m", "fast", "restart")  # every connection is cut; new ones refused meanwhile
        restarted = time.monotonic()
        load.wait_for_acknowledged(30, timeout=20, after=restarted)  # the app recovered by itself
        during = load.statuses - Counter(before)
    finally:
        load.finish(threads)
        _kill_server(server)

    print(f"restart: answers {dict(load.statuses)}, during and after it {dict(during)}, "
          f"broken connections {load.broken_connections}, acknowledged {len(load.acknowledged)}")
    assert not [s for s in load.statuses if s >= 500 and s != 503], f"server errors: {load.statuses}"
    assert load.no_retry_after == 0, "a 503 without Retry-After"
    assert during[503] + load.broken_connections > 0, "the restart was not noticed: did it happen?"
    assert set(load.statuses) <= {200, 204, 503}, load.statuses
    _each_acknowledged_judgement_stored_once(database, load)
    database.engine.dispose()


# ---------------------------------------------------------------- the trainer killed mid-round while the app serves


def test_the_trainer_page_marks_a_running_round_without_a_live_trainer_interrupted(sqlite_app):
    from datetime import timedelta

    from app.models import TrainerLease, TrainingRound, utcnow
    from app.services.training import LEASE_STALE_SECONDS, TRAINER_LEASE

    client, database, _fault = sqlite_app
    make_user(database, "root", "admin")
    login = client.get("/login", headers=HTML)
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
    client.post("/login", headers=HTML, data={"csrf": csrf, "username": "root", "password": PASSWORD, "next": ""})
    with database.write() as db:
        db.add(TrainingRound(status="running", trigger="auto", phase="ppo", step=3, total_steps=40))
        db.add(TrainerLease(name=TRAINER_LEASE, holder="box:42", heartbeat_at=utcnow()))
    alive = client.get("/admin/training", headers=HTML).text
    assert "<strong>running</strong>" in alive and INTERRUPTED not in alive

    with database.write() as db:  # the trainer was killed: its heartbeat goes stale
        db.get(TrainerLease, TRAINER_LEASE).heartbeat_at = utcnow() - timedelta(seconds=LEASE_STALE_SECONDS + 1)
    stale = client.get("/admin/training", headers=HTML).text
    assert "<strong>running</strong>" in stale and INTERRUPTED in stale and "No trainer is running" in stale


def _newest_round(database: Database):
    from app.models import TrainingRound

    with database.read() as db:
        return db.scalar(select(TrainingRound).order_by(TrainingRound.id.desc()).limit(1))


@pytest.mark.slow
def test_trainer_killed_mid_round_while_the_app_serves(tmp_path):
    """The real trainer process (tiny models) runs round 0, then round 1 from the annotators' judgements;
    it is SIGKILLed during PPO while annotators keep submitting through the real server. No client sees
    a 5xx, no acknowledged judgement is lost, the round shows as running with no trainer alive once the
    heartbeat is stale, and a new trainer process takes the lease over and completes that round."""
    pytest.importorskip("torch")
    from datetime import timedelta

    from app.models import TrainerLease
    from app.services.training import LEASE_STALE_SECONDS, TRAINER_LEASE, trainer_status
    from tests.test_concurrency import _make_annotators
    from tests.test_trainer_loop import tiny_trainer_env
    from tests.tiny_models import save_tiny_base

    started = time.monotonic()
    base = save_tiny_base(tmp_path / "tiny-base", steps=40)  # writes poorly, but rounds only need it to write
    timings = {"tiny base built": time.monotonic() - started}
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'loop.db'}", data_dir=tmp_path / "data",
                        secret_key=TEST_SECRET_KEY, lease_seconds=600)
    upgrade_to_head(settings.resolved_database_url)
    database = Database.from_url(settings.resolved_database_url)
    seed_bws_batch(database, prompts=3, per_prompt=6, required=3)
    annotators = _make_annotators(database, 3)
    env = {**os.environ, **tiny_trainer_env(base), "STORYLOOP_DATABASE_URL": settings.resolved_database_url,
           "STORYLOOP_DATA_DIR": str(settings.data_dir), "STORYLOOP_TRAINER_POLL_SECONDS": "1",
           "STORYLOOP_TRAINER_MIN_NEWEST_JUDGEMENTS": "3", "STORYLOOP_TRAINER_PPO_STEPS": "400"}
    log = (tmp_path / "trainer.log").open("wb")

    def start_trainer(*args: str, **extra_env: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "app.cli", "trainer", *args], env={**env, **extra_env},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    server, port = start_server_process(settings)
    make_user(database, "root", "admin")

    def admin_page() -> str:
        """The trainer page as an admin sees it."""
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HTML) as browser:
            login = browser.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
            browser.post("/login", data={"csrf": csrf, "username": "root", "password": PASSWORD, "next": ""})
            return browser.get("/admin/training").text

    load = Load(think_seconds=0.3)  # people, not a benchmark: the trainer needs the CPU too
    threads = load.start(f"http://127.0.0.1:{port}", annotators)
    first = start_trainer()
    try:
        deadline = time.monotonic() + 150
        while True:  # round 0 (the base writes stories), then round 1, into PPO; then the kill
            assert first.poll() is None, (tmp_path / "trainer.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the trainer never reached PPO in round 1"
            r = _newest_round(database)
            if r is not None and r.reward_version_id is not None and r.phase == "ppo" and r.step >= 2:
                break
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        killed_at, killed_round = time.monotonic(), r.id
        timings["killed in round 1's PPO"] = killed_at - started

        # Once the heartbeat is LEASE_STALE_SECONDS old (made so here rather than waited for), the
        # trainer page says no trainer runs, and the round is still marked running: interrupted.
        with database.write() as db:
            lease = db.get(TrainerLease, TRAINER_LEASE)
            lease.heartbeat_at -= timedelta(seconds=LEASE_STALE_SECONDS + 1)
        status = trainer_status(database)
        assert not status.trainer_alive and status.current.id == killed_round and status.current.status == "running"
        page = admin_page()
        assert status.current.number == 1  # round 0 was the base's; the page names rounds by number
        assert "Round 1: <strong>running</strong>" in page and INTERRUPTED in page

        second = start_trainer("--max-rounds", "1", STORYLOOP_TRAINER_PPO_STEPS="3")
        assert second.wait(timeout=150) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
        timings["round finished by the new trainer"] = time.monotonic() - started
        load.wait_for_acknowledged(5, timeout=20, after=killed_at)  # the app served all along
    finally:
        for trainer in [first] + ([second] if "second" in locals() else []):
            if trainer.poll() is None:
                os.killpg(trainer.pid, signal.SIGKILL)
                trainer.wait()
        load.finish(threads)
        _kill_server(server)
        log.close()

    print("trainer killed:", {k: round(v, 1) for k, v in timings.items()}, f"answers {dict(load.statuses)}")
    resumed = _newest_round(database)
    assert (resumed.id, resumed.status) == (killed_round, "done")  # the interrupted round, finished by the new trainer
    assert resumed.policy_version_id is not None and resumed.batch_id is not None
    with database.read() as db:
        assert db.get(TrainerLease, TRAINER_LEASE) is None  # released at the end
    assert not [s for s in load.statuses if s >= 500], f"server errors: {load.statuses}"
    assert load.broken_connections == 0
    _each_acknowledged_judgement_stored_once(database, load)
    database.engine.dispose()
