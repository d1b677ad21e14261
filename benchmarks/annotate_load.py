"""Load test of the annotation API: many annotators fetching and submitting BWS judgements at once.

For each database it creates a fresh one (a SQLite temp file; a new PostgreSQL database next to
--postgres-url / STORYLOOP_BENCH_POSTGRES_URL), migrates it, seeds prompts, continuations, BWS
tasks and annotator accounts with API tokens, starts the real server as a subprocess
(`uvicorn --factory app.main:create_app`, configured through STORYLOOP_* variables), and runs N
simulated annotators over HTTP on loopback for a bounded time: fetch next task -> submit best/worst.
It prints judgements/s, fetch and submit latency percentiles, errors, and whether the database holds
exactly the judgements that were acknowledged.

    python benchmarks/annotate_load.py --annotators 50 200 --seconds 20 --db sqlite postgresql
    python benchmarks/annotate_load.py --annotators 200 --seconds 30 --db postgresql --potato
    python benchmarks/annotate_load.py --annotators 200 --seconds 20 --items 400 --db postgresql sqlite --potato
    python benchmarks/annotate_load.py --annotators 1000 --think 4 --db postgresql --minutes 10

The server is started as `storyloop serve` starts it (its worker count unless --workers, its
keep-alive and backlog settings). --potato runs Potato (benchmarks/potato_load.py, installed from
PyPI into its own virtualenv) on the same load right after each storyloop run, interleaved, and
prints storyloop's judgements/s over Potato's. --minutes N runs one long soak instead of --seconds
and prints fetch/submit latency and errors per minute (does latency grow with history?).
--server-cpus pins the server (not the load generator, not PostgreSQL) to some cores with taskset;
its default worker count follows (one per core), e.g. 1 worker on "0" against 2 on "0,1".

--items N seeds N BWS tuples, for storyloop and Potato alike (default: enough for 1500 judgements/s
over the run, about 10,000 for 20 s); Potato's cost per judgement grows with N and storyloop's does
not, so compare the two at stated, equal counts: hundreds (Potato's usual) and tens of thousands.
With few items storyloop may judge them all before the time is up; its rate is then over the time it
took (the rows' `seconds`).

Each row starts with its conditions: database, items, annotators, think time, workers, the
machine's cores and load average at the start, and the load generator's own CPU in cores (its CPU
seconds over the run's wall seconds: on a small machine it competes with the servers). Then server
CPU per judgement, the headline: the app's processes and, on PostgreSQL, the benchmark database's
backends apart (from /proc, sampled with the connection counts below; PostgreSQL must run on this
machine; the cluster's shared processes are not counted), and their sum; with --potato, that sum
over Potato's, and judgements/s over Potato's. CPU is counted over the timed window only, for Potato
too (its logins, a PBKDF2 check each, and its warm-up come before). Then judgements/s, latency
percentiles, connection errors (a request that failed on a fresh
connection: reset, refused, closed before the answer) and 5xx answers,
the largest RSS of a server process (each worker), whether the database holds exactly the
acknowledged judgements (and no task over R, none twice to one person), and on PostgreSQL the
server's connections to it once started and at most during the run (pg_stat_activity, sampled every
0.2 s; the pools' sizes are STORYLOOP_DB_* settings, passed on from the environment).

Without --think every annotator submits as soon as the server answers: the most load, and latency
is then annotators / throughput. --think gives each annotator a reading pause before each submission.

The load generator speaks HTTP/1.1 on raw asyncio streams by default (--client raw): on a small
machine it shares the CPUs with the server, and httpx costs several times more CPU per request.
--client httpx uses httpx.AsyncClient instead (storyloop's runs only: Potato's client,
benchmarks/potato_load.py, is always a raw one, so compare the two with --client raw). Client CPU is
reported so its share is visible.
Like a browser, the raw client sends a request again on a new connection when a kept-alive one
turns out to have been closed by the server while idle; only a failure on a fresh connection
counts as a connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from app.cli import default_workers  # noqa: E402
from app.db import Database  # noqa: E402
from app.migrate import upgrade_to_head  # noqa: E402
from app.models import (  # noqa: E402
    ApiToken, Batch, BwsJudgement, Continuation, ModelVersion, Prompt, Task, TaskItem, User, utcnow,
)
from app.security import hash_password, new_token, token_digest  # noqa: E402

MAX_SECONDS = 120
MAX_MINUTES = 60
MAX_ANNOTATORS = 2000
CONNECTION_ERRORS = (OSError, asyncio.IncompleteReadError)  # ConnectionResetError etc. are OSErrors


# ---------------------------------------------------------------- databases


def fresh_database(kind: str, postgres_url: str, workdir: Path) -> tuple[str, callable]:
    if kind == "sqlite":
        path = workdir / f"bench-{uuid.uuid4().hex[:8]}.db"
        return f"sqlite:///{path}", lambda: [p.unlink(missing_ok=True) for p in workdir.glob(path.name + "*")]
    if not postgres_url:
        raise SystemExit("PostgreSQL: pass --postgres-url or set STORYLOOP_BENCH_POSTGRES_URL")
    server = make_url(postgres_url)
    name = f"storyloop_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return server.set(database=name).render_as_string(hide_password=False), drop


def seed(url: str, tasks: int, annotators: int, required: int, per_prompt: int = 12, seed_: int = 0) -> list[str]:
    """Prompts, continuations, `tasks` BWS tuples (random 4-subsets per prompt) and annotator tokens."""
    rng = random.Random(seed_)
    database = Database.from_url(url)
    prompts = max(1, (tasks + 29) // 30)
    with database.write() as db:
        version = ModelVersion(name="bench-source", kind="source", algorithm="import")
        db.add(version)
        batch = Batch(name="bench", kind="bws", annotations_per_task=required)
        db.add(batch)
        db.flush()
        now = utcnow()
        db.execute(insert(Prompt), [{"text": f"Prompt {p}: once upon a time there was a fox called {p}. " * 3,
                                     "is_active": True, "created_at": now} for p in range(prompts)])
        prompt_ids = list(db.scalars(select(Prompt.id).order_by(Prompt.id)))
        db.execute(insert(Continuation), [
            {"prompt_id": pid, "model_version_id": version.id, "generation_settings": {}, "created_at": now,
             "text": f"Continuation {c} of prompt {pid}: the fox ran {c} miles and then sat down to think. " * 4}
            for pid in prompt_ids for c in range(per_prompt)])
        by_prompt: dict[int, list[int]] = {}
        for pid, cid in db.execute(select(Continuation.prompt_id, Continuation.id).order_by(Continuation.id)):
            by_prompt.setdefault(pid, []).append(cid)
        task_rows = [{"batch_id": batch.id, "kind": "bws", "prompt_id": prompt_ids[t % prompts], "required": required,
                      "done_count": 0, "created_at": now} for t in range(tasks)]
        db.execute(insert(Task), task_rows)
        items = []
        for task_id, prompt_id in db.execute(select(Task.id, Task.prompt_id).order_by(Task.id)):
            for position, cid in enumerate(rng.sample(by_prompt[prompt_id], 4)):
                items.append({"task_id": task_id, "position": position, "continuation_id": cid})
        db.execute(insert(TaskItem), items)

        password_hash = hash_password("benchmark password")  # one hash for everybody: argon2 is slow on purpose
        db.execute(insert(User), [{"username": f"bench{i}", "password_hash": password_hash, "role": "annotator",
                                   "is_active": True, "created_at": now} for i in range(annotators)])
        user_ids = list(db.scalars(select(User.id).order_by(User.id)))
        tokens = [new_token() for _ in user_ids]
        db.execute(insert(ApiToken), [{"user_id": uid, "token_hash": token_digest(tok), "name": "bench",
                                       "created_at": now, "expires_at": now + timedelta(days=1)}
                                      for uid, tok in zip(user_ids, tokens)])
    if not database.is_sqlite:
        # As after any bulk load: a soak seeds over a million rows a moment before the annotators
        # arrive, and autovacuum's first pass over them (seconds of a core) otherwise lands in the
        # first minute of the run.
        with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE)"))
    database.engine.dispose()
    return tokens


def stored_judgement_ids(url: str) -> tuple[set[int], dict]:
    engine = create_engine(url)
    with engine.connect() as conn:
        ids = set(conn.scalars(select(BwsJudgement.id)))
        over = conn.scalar(select(func.count()).select_from(Task).where(Task.done_count > Task.required))
        counted = dict(conn.execute(select(BwsJudgement.task_id, func.count()).where(BwsJudgement.is_surplus.is_(False))
                                    .group_by(BwsJudgement.task_id)).all())
        done = dict(conn.execute(select(Task.id, Task.done_count).where(Task.done_count > 0)).all())
        doubled = conn.scalar(select(func.count()).select_from(
            select(BwsJudgement.task_id).group_by(BwsJudgement.task_id, BwsJudgement.user_id)
            .having(func.count() > 1).subquery()))
    engine.dispose()
    return ids, {"tasks_over_R": over, "done_count_mismatch": int(counted != done), "task_user_twice": doubled}


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of one process, from /proc; None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class BackendCpu:
    """CPU seconds spent by a set of processes that come and go (PostgreSQL's backends) over a window:
    per pid, its last reading less its reading when the window opened (0 for a pid first seen later,
    whose whole life is in the window). A backend that exits between two readings loses only its
    CPU since the last one."""

    def __init__(self):
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def read(self, pids, opening: bool = False) -> None:
        for pid in pids:
            cpu = process_cpu(pid)
            if cpu is None:
                continue
            if pid not in self.first:
                self.first[pid] = cpu if opening else 0.0
            self.last[pid] = cpu

    def seconds(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


class ConnectionCounter:
    """PostgreSQL: the connections to the benchmark's database (pg_stat_activity, less this counter's
    own), now and at most while sampling in a thread: what the server's pools hold at start and under load.
    The same samples give the CPU of those connections' backends while sampling (`db_cpu_s`, read from
    /proc: PostgreSQL must run on this machine; the cluster's shared processes, WAL writer,
    checkpointer and the rest, are not counted, since other databases' work lands on them too)."""

    def __init__(self, url: str):
        self.engine = create_engine(url, poolclass=NullPool)
        self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.peak = 0
        self.cpu = BackendCpu()
        self.db_cpu_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def now(self) -> int:
        return self.conn.scalar(text("SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = current_database()"))

    def backend_pids(self) -> list[int]:
        return list(self.conn.scalars(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")))

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            pids = self.backend_pids()
            self.peak = max(self.peak, len(pids))
            self.cpu.read(pids)

    def __enter__(self) -> "ConnectionCounter":
        self.cpu.read(self.backend_pids(), opening=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu.read(self.backend_pids())
        self.db_cpu_s = self.cpu.seconds()

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str, workers: int | None, port: int, workdir: Path, cpus: str = "") -> subprocess.Popen:
    """`storyloop serve` on port, as an operator starts it: its default worker count (one per core it
    may run on) unless `workers`; with `cpus` (taskset's list, e.g. "0" or "0,1") pinned to those cores."""
    env = {**os.environ, "STORYLOOP_DATABASE_URL": url, "STORYLOOP_DATA_DIR": str(workdir / "data"),
           "STORYLOOP_SECRET_KEY": "benchmark-" + "x" * 32, "STORYLOOP_LEASE_SECONDS": "600", "PYTHONPATH": str(ROOT)}
    command = [*(["taskset", "-c", cpus] if cpus else []), sys.executable, "-m", "app.cli", "serve",
               "--host", "127.0.0.1", "--port", str(port), *(["--workers", str(workers)] if workers else [])]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "ab"))  # noqa: SIM115
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see {workdir / 'server.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    time.sleep(0.5 * (workers or default_workers()))  # let every worker finish starting
                    return process
        except OSError:
            time.sleep(0.2)
    stop_server(process)
    raise SystemExit("the server did not start")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# ---------------------------------------------------------------- HTTP clients


class RawConnection:
    """Minimal HTTP/1.1 keep-alive client for JSON APIs (Content-Length bodies only): cheap on CPU."""

    def __init__(self, port: int, token: str):
        self.port, self.reader, self.writer = port, None, None
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.reconnects = 0  # idle keep-alive connections found closed (and sent again)

    async def post(self, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        payload = json.dumps(body).encode() if body is not None else b""
        request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(payload)}\r\n").encode() + self.auth + b"\r\n" + payload
        while True:
            reused = self.writer is not None
            if not reused:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                self.writer.write(request)
                head = await self.reader.readuntil(b"\r\n\r\n")
                break
            except CONNECTION_ERRORS:
                self.writer.close()
                self.writer = None
                # A kept-alive connection the server closed while we were idle: send again on a
                # new one, as browsers do (these requests are idempotent). A fresh one failing is an error.
                if not reused:
                    raise
                self.reconnects += 1
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            if line[:15].lower() == "content-length:":
                length = int(line[15:])
        data = await self.reader.readexactly(length) if length else b""
        return status, (json.loads(data) if data else None)

    async def close(self):
        if self.writer is not None:
            self.writer.close()


class HttpxConnection:
    def __init__(self, client, token: str):
        self.client, self.headers = client, {"Authorization": f"Bearer {token}"}
        self.reconnects = 0  # httpx retries a closed idle connection itself, unseen

    async def post(self, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        response = await self.client.post(path, json=body, headers=self.headers)
        return response.status_code, (response.json() if response.content else None)

    async def close(self):
        pass


# ---------------------------------------------------------------- the load


@dataclass
class Results:
    """Latencies and errors of one run, also per minute since `started` (for the soak mode)."""

    started: float = field(default_factory=time.perf_counter)
    fetch_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    acknowledged: set = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)
    connection_errors: int = 0  # failed on a fresh connection
    server_errors: int = 0  # 5xx answers
    reconnects: int = 0  # kept-alive connections found closed while idle, sent again (not errors)
    ran_out: int = 0  # annotators that got 204
    minutes: dict[int, dict] = field(default_factory=dict)
    last_minute: int | None = None  # a request in flight at the deadline counts in the run's last minute

    @classmethod
    def for_run(cls, seconds: float) -> "Results":
        return cls(last_minute=max(0, math.ceil(seconds / 60) - 1))

    def _minute(self) -> dict:
        minute = int((time.perf_counter() - self.started) // 60)
        if self.last_minute is not None:
            minute = min(minute, self.last_minute)
        return self.minutes.setdefault(minute, {"fetch_ms": [], "submit_ms": [], "errors": 0, "acknowledged": 0})

    def latency(self, kind: str, ms: float) -> None:
        """kind: "fetch" or "submit"."""
        getattr(self, f"{kind}_ms").append(ms)
        self._minute()[f"{kind}_ms"].append(ms)

    def acknowledge(self, judgement) -> None:
        if judgement not in self.acknowledged:  # a retry answered with the same judgement counts once
            self.acknowledged.add(judgement)
            self._minute()["acknowledged"] += 1

    def error(self, what: str, exc: BaseException | None = None, status: int = 0) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        self.connection_errors += isinstance(exc, CONNECTION_ERRORS)
        self.server_errors += status >= 500
        self._minute()["errors"] += 1


async def annotator(conn, results: Results, deadline: float, rng: random.Random, retry_rate: float,
                    chain: bool = False, think: float = 0.0) -> None:
    """fetch -> submit, until the deadline. With chain, each submit asks for the next task too
    (POST .../bws?next=true), so a judgement costs one request instead of two. With think > 0, the
    annotator reads for a random time (exponential, mean `think` seconds) before each submission,
    as people do, and annotators arrive spread over the first `think` seconds rather than all at
    once; without it, every annotator submits as fast as the server answers."""
    clock = time.perf_counter
    task = None
    if think:
        await asyncio.sleep(rng.uniform(0, think))
    try:
        while clock() < deadline:
            if task is None:
                t0 = clock()
                try:
                    status, task = await conn.post("/api/v1/tasks/next")
                except Exception as exc:  # noqa: BLE001
                    results.error(f"fetch {type(exc).__name__}", exc)
                    task = None
                    await asyncio.sleep(0.05)
                    continue
                results.latency("fetch", (clock() - t0) * 1000)
                if status == 204:
                    results.ran_out += 1
                    return
                if status != 200:
                    results.error(f"fetch {status}", status=status)
                    task = None
                    continue
            if think:
                await asyncio.sleep(min(rng.expovariate(1 / think), max(0.0, deadline - clock())))
                if clock() >= deadline:
                    break
            handles = [item["handle"] for item in task["items"]]
            best, worst = rng.sample(handles, 2)
            body = {"best": best, "worst": worst, "idempotency_key": uuid.uuid4().hex,
                    "duration_ms": rng.randint(1000, 30000)}
            path = f"/api/v1/tasks/{task['assignment_id']}/bws" + ("?next=true" if chain else "")
            next_task = None
            for _ in range(2 if rng.random() < retry_rate else 1):
                t0 = clock()
                try:
                    status, answer = await conn.post(path, body)
                except Exception as exc:  # noqa: BLE001
                    results.error(f"submit {type(exc).__name__}", exc)
                    continue
                results.latency("submit", (clock() - t0) * 1000)
                if status == 200:
                    results.acknowledge(answer["judgement_id"])
                    next_task = answer.get("next_task") or next_task
                else:
                    results.error(f"submit {status}", status=status)
            task = next_task if chain else None
            if chain and task is None:
                results.ran_out += 1
                return
    finally:
        results.reconnects += conn.reconnects
        await conn.close()


async def run_load(port: int, tokens: list[str], seconds: float, client_kind: str, retry_rate: float,
                   chain: bool = False, think: float = 0.0) -> tuple[Results, float]:
    results = Results.for_run(seconds)
    started = results.started
    deadline = started + seconds
    rngs = [random.Random(i) for i in range(len(tokens))]
    if client_kind == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=len(tokens), max_keepalive_connections=len(tokens))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:
            await asyncio.gather(*(annotator(HttpxConnection(client, t), results, deadline, r, retry_rate, chain, think)
                                   for t, r in zip(tokens, rngs)))
    else:
        await asyncio.gather(*(annotator(RawConnection(port, t), results, deadline, r, retry_rate, chain, think)
                               for t, r in zip(tokens, rngs)))
    return results, time.perf_counter() - started


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def server_pids(pid: int) -> list[int]:
    """The server's processes: its process group (the server was started in a session of its own)."""
    try:
        found = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
    except FileNotFoundError:
        found = []
    return sorted({pid, *map(int, found)})


def children_cpu(pid: int) -> float:
    """CPU seconds of a process tree (server + its workers), read from /proc."""
    return sum(cpu for p in server_pids(pid) if (cpu := process_cpu(p)) is not None)


def largest_rss_mb(pid: int) -> float:
    """The largest resident set among the server's processes (a worker's, with several), in MB."""
    largest = 0
    for p in server_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    largest = max(largest, int(line.split()[1]))
        except OSError:
            pass
    return largest / 1024


def conditions(db: str, items: int, annotators: int, think: float, workers: int) -> dict:
    """What a row's figures depend on, recorded in every row (and printed beside every ratio). The
    load average is the machine's when the run starts: the load generator shares the machine."""
    return {"db": db, "items": items, "annotators": annotators, "think_s": think, "workers": workers,
            "load_average_start": os.getloadavg()[0], "cores": os.cpu_count()}


def result_row(setting: dict, results: Results, elapsed: float, client_cpu: float, server_cpu: float,
               rss_mb: float, stored: set, integrity: dict, db_cpu: float | None = None) -> dict:
    """One row of the table, for storyloop's runs and Potato's (benchmarks/potato_load.py) alike.
    server_cpu is the app's processes'; db_cpu PostgreSQL's backends' (None where there are none)."""
    judgements = len(results.acknowledged)
    app_ms = server_cpu * 1000 / max(1, judgements)
    db_ms = db_cpu * 1000 / max(1, judgements) if db_cpu is not None else None
    return {
        **setting, "seconds": round(elapsed, 1), "judgements": judgements, "judgements_per_s": judgements / elapsed,
        **{f"{kind}_p{p}": percentile(values, p)
           for kind, values in (("fetch", results.fetch_ms), ("submit", results.submit_ms)) for p in (50, 95, 99)},
        "errors": sum(results.errors.values()), "error_kinds": results.errors,
        "connection_errors": results.connection_errors, "server_errors": results.server_errors,
        "reconnects": results.reconnects, "ran_out": results.ran_out,
        "exact": stored == results.acknowledged, "stored": len(stored), **integrity,
        "client_cpu_s": round(client_cpu, 1), "server_cpu_s": round(server_cpu, 1),
        # The load generator's share of the machine, in cores: what the servers did not get.
        "client_cores": client_cpu / elapsed if elapsed else float("nan"),
        # CPU per judgement is the figure that survives a busy machine: 1000 / it = judgements/s per core.
        "server_cpu_ms_per_judgement": app_ms,
        "db_cpu_s": round(db_cpu, 1) if db_cpu is not None else None, "db_cpu_ms_per_judgement": db_ms,
        "total_cpu_ms_per_judgement": app_ms + (db_ms or 0.0),
        "rss_mb_per_worker": round(rss_mb, 1),
        "load_average_end": os.getloadavg()[0],
        "per_minute": [minute_row(m, results.minutes[m]) for m in sorted(results.minutes)],
    }


def minute_row(minute: int, bucket: dict) -> dict:
    return {"minute": minute + 1, "judgements": bucket["acknowledged"], "errors": bucket["errors"],
            **{f"{kind}_p{p}": percentile(bucket[f"{kind}_ms"], p) for kind in ("fetch", "submit") for p in (50, 99)}}


def row_is_exact(row: dict) -> bool:
    return row["exact"] and not row["tasks_over_R"] and not row["task_user_twice"] and not row["done_count_mismatch"]


def print_rows(rows: list[dict]) -> None:
    """The table. Every row starts with its conditions (database, items seeded, annotators, think
    time, workers, the machine's cores and load average at the start, the load generator's CPU in
    cores), then server CPU per judgement: the app's, PostgreSQL's backends' and their sum. With
    Potato rows, each storyloop row also shows its total CPU per judgement over Potato's and its
    judgements/s over Potato's in the same conditions, Potato run right after it."""
    header = (f"{'db':<12} {'items':>6} {'ann':>4} {'think':>5} {'wrk':>3} {'cores':>5} {'load0':>5} {'client':>6}  "
              f"{'app ms/j':>8} {'db ms/j':>7} {'tot ms/j':>8} {'cpu/pot':>7}  {'judg/s':>7} {'x potato':>8} "
              f"{'fetch p50/p95/p99 ms':>22} {'submit p50/p95/p99 ms':>22} {'conn err':>8} {'5xx':>4} {'exact':>5} "
              f"{'stored/ack':>11} {'rss MB/wrk':>10} {'pg conns start/peak':>19}")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio, cpu_ratio = r.get("ratio_to_potato"), r.get("cpu_ratio_to_potato")
        db_ms = r.get("db_cpu_ms_per_judgement")
        print(f"{r['db']:<12} {r.get('items', 0):>6} {r['annotators']:>4} {r['think_s']:>5g} {r['workers']:>3} "
              f"{r.get('cores', 0):>5} {r.get('load_average_start', float('nan')):>5.1f} {r.get('client_cores', float('nan')):>6.2f}  "
              f"{r['server_cpu_ms_per_judgement']:>8.2f} {(f'{db_ms:.2f}' if db_ms is not None else '-'):>7} "
              f"{r.get('total_cpu_ms_per_judgement', r['server_cpu_ms_per_judgement']):>8.2f} "
              f"{(f'{cpu_ratio:.2f}x' if cpu_ratio else ''):>7}  "
              f"{r['judgements_per_s']:>7.0f} {(f'{ratio:.1f}x' if ratio else ''):>8} "
              f"{r['fetch_p50']:>6.1f}/{r['fetch_p95']:>6.1f}/{r['fetch_p99']:>6.1f}  "
              f"{r['submit_p50']:>6.1f}/{r['submit_p95']:>6.1f}/{r['submit_p99']:>6.1f}  "
              f"{r['connection_errors']:>8} {r['server_errors']:>4} {'yes' if row_is_exact(r) else 'NO':>5} "
              f"{r['stored']:>5}/{r['judgements']:<5} {r['rss_mb_per_worker']:>10.0f} {_connections(r):>19}")
    print("(client: the load generator's CPU in cores; app/db ms/j: server CPU per judgement of the app's processes"
          " and of PostgreSQL's backends; cpu/pot: tot ms/j over Potato's, Potato run right after in the same conditions)")


def _connections(row: dict) -> str:
    if row.get("db_connections_at_start") is None:
        return ""
    return f"{row['db_connections_at_start']}/{row['db_connections_peak']}"


def print_minutes(rows: list[dict]) -> None:
    """Soak mode: latency and errors per minute of each run."""
    for r in rows:
        print(f"\n{r['db']}, {r['annotators']} annotators, think {r['think_s']:g} s: per minute")
        print(f"{'min':>3} {'judgements':>10} {'fetch p50/p99 ms':>17} {'submit p50/p99 ms':>18} {'errors':>6}")
        for m in r["per_minute"]:
            print(f"{m['minute']:>3} {m['judgements']:>10} {m['fetch_p50']:>8.1f}/{m['fetch_p99']:<8.1f} "
                  f"{m['submit_p50']:>8.1f}/{m['submit_p99']:<9.1f} {m['errors']:>6}")


def parse_cpus(cpus: str) -> set[int]:
    """taskset's core list ("0", "0,1", "0-3") as a set."""
    found = set()
    for part in cpus.split(","):
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found


def check_limits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The bounds every load run keeps (also benchmarks/potato_load.py's)."""
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    if any(not 0 < n <= MAX_ANNOTATORS for n in args.annotators):
        parser.error(f"--annotators must be in 1..{MAX_ANNOTATORS}")
    if getattr(args, "minutes", None) is not None and not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be in (0, {MAX_MINUTES}]")


def run_storyloop(kind: str, n: int, args: argparse.Namespace, seconds: float, workdir: Path) -> dict:
    """One storyloop run on a fresh database of `kind` with n annotators; returns its row."""
    tasks = args.items or default_items(seconds, n)
    url, drop = fresh_database(kind, args.postgres_url, workdir)
    try:
        upgrade_to_head(url)
        tokens = seed(url, tasks, n, args.required)
        port = free_port()
        server = start_server(url, args.workers, port, workdir, args.server_cpus)
        profiler = None
        counter = ConnectionCounter(url) if kind == "postgresql" else None
        connections = {"db_connections_at_start": counter.now() if counter else None, "db_connections_peak": None}
        try:
            if args.profile:
                profiler = subprocess.Popen(
                    [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                     str(server.pid), "--subprocesses", "--gil", "--nonblocking", "--rate", "100",
                     "--duration", str(int(seconds)),
                     "--format", "raw", "-o", f"{args.profile}-{kind}-{n}.folded"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            workers = args.workers or (len(parse_cpus(args.server_cpus)) if args.server_cpus else default_workers())
            setting = {**conditions(kind, tasks, n, args.think, workers),
                       "server_cpus": args.server_cpus or "any", "chain": args.chain, "client": args.client}
            cpu0, server_cpu0 = resource.getrusage(resource.RUSAGE_SELF), children_cpu(server.pid)
            with counter or contextlib.nullcontext():
                results, elapsed = asyncio.run(run_load(port, tokens, seconds, args.client, args.retry_rate,
                                                        args.chain, args.think))
            if counter:
                connections["db_connections_peak"] = counter.peak
            cpu1, server_cpu1 = resource.getrusage(resource.RUSAGE_SELF), children_cpu(server.pid)
            rss_mb = largest_rss_mb(server.pid)
            if profiler is not None:
                try:
                    profiler.wait(120)
                except subprocess.TimeoutExpired:
                    profiler.kill()
        finally:
            stop_server(server)
            if counter:
                counter.close()
        stored, integrity = stored_judgement_ids(url)
    finally:
        drop()
    client_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    db_cpu = counter.db_cpu_s if counter else None
    return {**result_row(setting, results, elapsed, client_cpu, server_cpu1 - server_cpu0, rss_mb, stored, integrity,
                         db_cpu), **connections}


def default_items(seconds: float, annotators: int, required: int = 3) -> int:
    """Tuples seeded when --items is not given: enough for 1500 judgements/s for the whole run, so
    that storyloop never runs out. Potato's cost grows with this number (storyloop's does not):
    compare the two at equal, stated item counts (--items)."""
    return int(1500 * seconds / required) + annotators


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--minutes", type=float, default=None,
                        help="soak: one run of this many minutes per setting, latency printed per minute")
    parser.add_argument("--db", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite"])
    parser.add_argument("--workers", type=int, default=None,
                        help="uvicorn worker processes (default: storyloop serve's, one per core)")
    parser.add_argument("--server-cpus", default="",
                        help="pin the server to these cores (taskset -c, e.g. 0 or 0,1); its default worker count follows")
    parser.add_argument("--potato", action="store_true",
                        help="side by side: run Potato on the same load after each setting and print the ratio")
    parser.add_argument("--postgres-url", default=os.environ.get("STORYLOOP_BENCH_POSTGRES_URL", ""),
                        help="server URL whose role may CREATE DATABASE (default: $STORYLOOP_BENCH_POSTGRES_URL)")
    parser.add_argument("--required", type=int, default=3, help="R: judgements per task")
    parser.add_argument("--items", "--tasks", dest="items", type=int, default=0,
                        help="BWS tuples to seed, for storyloop and Potato alike (default: enough for 1500 "
                             "judgements/s over the run). Potato's cost grows with it: compare at equal counts, "
                             "hundreds (Potato's usual) and tens of thousands")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--chain", action="store_true", help="submit with ?next=true: one request per judgement")
    parser.add_argument("--think", type=float, default=0.0,
                        help="mean seconds an annotator reads before submitting (0: submit at once, the most load)")
    parser.add_argument("--retry-rate", type=float, default=0.1, help="share of submissions sent twice (same key)")
    parser.add_argument("--profile", default="", help="py-spy: record the server's stacks while they hold the GIL, i.e. where its CPU goes "
                        "(collapsed, for flamegraph.pl/speedscope) to PREFIX-db-n.folded")
    parser.add_argument("--json", default="", help="also write the results as JSON to this file")
    args = parser.parse_args()
    check_limits(parser, args)
    seconds = args.minutes * 60 if args.minutes else args.seconds

    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="storyloop-bench-"))
    try:
        for n in args.annotators:
            for kind in args.db:
                row = run_storyloop(kind, n, args, seconds, workdir)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if args.potato:  # interleaved: the same load on Potato right after, on the same busy machine
                    from potato_load import run_potato

                    potato = run_potato(n, seconds, args.think, row["items"], retry_rate=args.retry_rate)
                    row["ratio_to_potato"] = row["judgements_per_s"] / max(potato["judgements_per_s"], 1e-9)
                    row["cpu_ratio_to_potato"] = (row["total_cpu_ms_per_judgement"]
                                                  / max(potato["total_cpu_ms_per_judgement"], 1e-9))
                    rows.append(potato)
                    print(json.dumps(potato), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print_rows(rows)
    if args.minutes:
        print_minutes(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
