"""Potato beside storyloop: the same annotation load, run against Potato (potato-annotation on PyPI).

The side-by-side half of `annotate_load.py --potato` (issue 11). Run alone:

    python benchmarks/potato_load.py --annotators 50 200 --seconds 20
    python benchmarks/potato_load.py --annotators 1000 --seconds 30 --think 4

or side by side with storyloop: `annotate_load.py --potato` calls `run_potato(...)`, which returns a
row with annotate_load's keys (this module shares annotate_load's results, rows, table and limits).

What runs, and how it compares with storyloop's run:

- Potato: `potato-annotation==2.12.1` from PyPI, installed by `ensure_potato` into its own
  virtualenv (default `benchmarks/out/potato-venv`, git-ignored), started as its users start it:
  `potato start config.yaml -p PORT`, i.e. one process, Flask on Werkzeug's threaded server (a
  thread per connection; Potato keeps its item and user state in that process's memory, so more
  worker processes are not an option). Logging is Potato's default (INFO; it writes no access line per
  request), its console output sent to a file in the work directory.
- Storage: Potato's own files. Every accepted save rewrites
  `annotation_output/<user>/user_state.json` (and appends to `annotation_history.jsonl`). The
  stored count is read back from those `user_state.json` files after the server stopped.
- Task: Best-Worst Scaling over 4 story continuations. Potato 2.12 has a BWS scheme
  (`annotation_type: bws`), but it must come with `bws_config`, which builds its tuples from one
  pool of items across the whole data set: Potato cannot keep a tuple inside one prompt. Two
  configurations are therefore offered (`scheme=`):
    * "bws" (default): Potato's own BWS scheme and tuple generator. The pool is the seeded
      continuations, each item's text being its prompt followed by the continuation, so an
      annotator still reads the story before each candidate; the 4 candidates of a tuple can come
      from different prompts (unlike storyloop). Stored as `bws: {best: A..D, worst: A..D}`.
    * "radio": the faithful task shape: one instance per tuple, showing the prompt and its 4
      continuations (labelled A-D, `instance_display` fields), with two required radio schemes
      "best" and "worst" (A-D).
  Both use the same seeded text as annotate_load.py's `seed` (prompts and 12 continuations per
  prompt, same sentences), the same number of tuples by default (`1500 * seconds / 3 +
  annotators`), and Potato's `num_annotators_per_item: 3` for storyloop's R = 3 (random
  assignment). Potato enforces that cap when it assigns, not when it stores, so an
  over-subscribed pool can end with items holding more than 3 judgements (its own docs say so):
  `tasks_over_R` counts them from the stored files.
- Accounts: password accounts in Potato's user file (`user_config.json`, pre-hashed with Potato's
  own salt$PBKDF2 format), `allow_all_users: false`. Every annotator logs in once (POST /auth)
  before the timed window, as storyloop's annotators hold API tokens before theirs; the login cost
  is not in the figures. An extra account then annotates for 3 s, also untimed: Potato imports and
  compiles a lot on its first page and save, which a server in use has long done.
- Flow per judgement, as Potato 2.12's annotation.js does it when an annotator clicks Next:
  POST /updateinstance (JSON: instance id and the labels; the save: a judgement counts once this
  answers 200 with status "success") -> POST /annotate {action: next_instance} with
  `X-Potato-Navigation: 1` (short JSON answer) -> GET /annotate (the next item's whole page,
  about 40 kB of HTML). "submit" latency is the save; "fetch" latency is the navigation POST plus
  the page GET (the first page of each annotator is a GET only). Like annotate_load, 10% of saves
  are sent twice (Potato overwrites the same user+item; counted once). With think > 0 each
  annotator reads for an exponential pause (mean `think`) before each save.
- Not like for like: storyloop's annotators speak a JSON API with bearer tokens; Potato's get HTML
  pages (server-side rendering is part of Potato's cost, as it is for its users) and a signed
  session cookie that Potato re-issues on every answer. The browser's static files (cached, hashed
  URLs) and Potato's background telemetry beacons (/api/track_interactions and similar) are not
  sent, which flatters Potato. Werkzeug closes the connection after each answer, so the client
  reconnects for every request (as a browser would); storyloop's client keeps connections alive.
  Potato is one process whatever storyloop's worker count is. Potato's cost grows with the number
  of items: with random assignment, each Next walks every remaining item (on a busy 2-core machine,
  Next took 9 ms with 300 tuples and 51 ms with 10,050; a whole judgement 65 vs 106 ms of server
  CPU). The default seeds as many tuples as annotate_load does, so both servers hold the same data;
  storyloop seeds that many for headroom; `--items` sets the count for both (hundreds is Potato's usual). The
  client is a raw-asyncio HTTP/1.1 client like annotate_load's, so client CPU per request is
  comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# annotate_load imports this module only inside main() (for --potato), so importing it here is no cycle.
import annotate_load  # noqa: E402
from annotate_load import CONNECTION_ERRORS, Results, check_limits, print_rows  # noqa: E402


POTATO_VERSION = "2.12.1"
DEFAULT_VENV = Path(__file__).resolve().parent / "out" / "potato-venv"  # benchmarks/out/ is git-ignored
PASSWORD = "benchmark password"
WARMUP_USER = "warmup"  # annotates for a moment before the timed window; not counted
REQUIRED = 3  # annotators per item: storyloop's R in annotate_load's default run
POSITIONS = "ABCD"
INSTANCE_ID = re.compile(rb'name="instance_id"[^>]*?value="([^"]*)"')


# ---------------------------------------------------------------- installing and starting Potato


def ensure_potato(venv_dir: Path = DEFAULT_VENV) -> Path:
    """A virtualenv holding potato-annotation==POTATO_VERSION; returns its `potato` command."""
    venv_dir = Path(venv_dir)
    python = venv_dir / "bin" / "python"
    potato = venv_dir / "bin" / "potato"
    if potato.exists() and _installed_version(python) == POTATO_VERSION:
        return potato
    if not python.exists():
        # venv bases the new environment on the base interpreter, not on storyloop's venv.
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    f"potato-annotation=={POTATO_VERSION}"], check=True)
    return potato


def _installed_version(python: Path) -> str:
    probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('potato-annotation'))"],
                           capture_output=True, text=True)
    return probe.stdout.strip() if probe.returncode == 0 else ""


def seeded_stories(tuples: int, per_prompt: int = 12, seed_: int = 0) -> list[dict]:
    """annotate_load.seed's data shape: a prompt per 30 tuples, 12 continuations per prompt, each
    tuple 4 of one prompt's continuations chosen at random. Returns the tuples."""
    rng = random.Random(seed_)
    prompts = max(1, (tuples + 29) // 30)
    prompt_text = [f"Prompt {p}: once upon a time there was a fox called {p}. " * 3 for p in range(prompts)]

    def continuation(p: int, c: int) -> str:
        return f"Continuation {c} of prompt {p}: the fox ran {c} miles and then sat down to think. " * 4

    rows = []
    for t in range(tuples):
        p = t % prompts
        chosen = rng.sample(range(per_prompt), 4)
        rows.append({"prompt_index": p, "prompt": prompt_text[p],
                     "continuations": [(f"p{p}c{c}", continuation(p, c)) for c in chosen]})
    return rows


def write_project(workdir: Path, tuples: int, annotators: int, scheme: str = "bws") -> Path:
    """Potato project for the BWS task (see the module docstring); returns config.yaml's path."""
    if scheme not in ("bws", "radio"):
        raise ValueError(f"scheme must be 'bws' or 'radio', not {scheme!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    stories = seeded_stories(tuples)
    common = {
        "annotation_task_name": "storyloop BWS benchmark",
        "task_dir": ".",
        "output_annotation_dir": "annotation_output/",
        "require_password": True,
        "authentication": {"user_config_path": "user_config.json"},
        "user_config": {"allow_all_users": False},
        "num_annotators_per_item": REQUIRED,
        "assignment_strategy": "random",
        "secret_key": "benchmark-" + "x" * 32,
    }
    if scheme == "bws":
        pool = {}
        for story in stories:
            for source_id, text in story["continuations"]:
                pool[source_id] = story["prompt"] + "\n\n" + text
        _write_jsonl(workdir / "data" / "pool.jsonl", [{"id": k, "text": v} for k, v in pool.items()])
        config = {**common, "data_files": ["data/pool.jsonl"], "item_properties": {"id_key": "id", "text_key": "text"},
                  "bws_config": {"tuple_size": 4, "num_tuples": tuples, "seed": 0},
                  "annotation_schemes": [{
                      "annotation_type": "bws", "name": "bws", "tuple_size": 4,
                      "description": "Which continuation is best, and which is worst?",
                      "best_description": "Best continuation", "worst_description": "Worst continuation",
                      "label_requirement": {"required": True}}]}
    else:
        rows = [{"id": f"t{i}", "prompt": s["prompt"],
                 **{f"continuation_{pos.lower()}": text for pos, (_, text) in zip(POSITIONS, s["continuations"])}}
                for i, s in enumerate(stories)]
        _write_jsonl(workdir / "data" / "tuples.jsonl", rows)
        config = {**common, "data_files": ["data/tuples.jsonl"], "item_properties": {"id_key": "id", "text_key": "prompt"},
                  "instance_display": {"fields": [{"key": "prompt", "type": "text", "label": "Story so far"}] + [
                      {"key": f"continuation_{pos.lower()}", "type": "text", "label": pos} for pos in POSITIONS]},
                  "annotation_schemes": [
                      {"annotation_type": "radio", "name": role, "description": f"Which continuation is {role}?",
                       "labels": list(POSITIONS), "label_requirement": {"required": True}}
                      for role in ("best", "worst")]}
    # JSON is YAML, and needs no YAML library here.
    path = workdir / "config.yaml"
    path.write_text(json.dumps(config, indent=2))
    # One hash for everybody, in Potato's own salt$PBKDF2-SHA256 format: hashing is slow on purpose.
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt.encode(), 100_000).hex()
    _write_jsonl(workdir / "user_config.json",
                 [{"username": name, "password": f"{salt}${digest}"}
                  for name in [WARMUP_USER] + [f"bench{i}" for i in range(annotators)]])
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def start_potato(workdir: Path, tasks: int, port: int, annotators: int = 200, scheme: str = "bws",
                 potato: Path | None = None) -> subprocess.Popen:
    """Write the project into workdir (`tasks` BWS tuples, as annotate_load's --items: a prompt per 30
    of them), start Potato on port `port` in its own process group, and wait until /health answers 200."""
    potato = potato or ensure_potato()
    config = write_project(Path(workdir), tasks, annotators, scheme)
    log = open(Path(workdir) / "server.log", "ab")
    process = subprocess.Popen([str(potato), "start", str(config), "-p", str(port)], cwd=workdir,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 180  # Potato loads and indexes every item before it listens
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"Potato exited with {process.returncode}; see {Path(workdir) / 'server.log'}")
        try:
            status, _, _ = asyncio.run(_one_request(port, "GET", "/health"))
            if status == 200:
                return process
        except (OSError, asyncio.TimeoutError):
            pass
        time.sleep(0.3)
    annotate_load.stop_server(process)
    raise SystemExit(f"Potato did not start; see {Path(workdir) / 'server.log'}")


# ---------------------------------------------------------------- HTTP client


class PotatoConnection:
    """Minimal HTTP/1.1 client with one cookie (Potato's Flask session), raw asyncio streams like
    annotate_load.RawConnection. Werkzeug closes after each answer, so it reconnects as needed."""

    def __init__(self, port: int):
        self.port, self.reader, self.writer = port, None, None
        self.cookie = b""
        self.reconnects = 0

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = "",
                      extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        if body or method == "POST":
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n".encode()
        if self.cookie:
            head += b"Cookie: " + self.cookie + b"\r\n"
        message = head + extra + b"\r\n" + body
        while True:
            reused = self.writer is not None
            if not reused:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                self.writer.write(message)
                status, headers, data = await _read_response(self.reader)
                break
            except CONNECTION_ERRORS:
                await self.close()
                if not reused:  # as annotate_load.RawConnection: only a fresh connection failing is an error
                    raise
                self.reconnects += 1
        if "set-cookie" in headers:
            self.cookie = headers["set-cookie"].split(";", 1)[0].encode()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, data

    async def post_json(self, path: str, payload: dict, extra: bytes = b"") -> tuple[int, dict | None]:
        status, _, data = await self.request("POST", path, json.dumps(payload).encode(), "application/json", extra)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        data = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append((await reader.readexactly(size + 2))[:-2])  # each chunk ends in CRLF
        await reader.readuntil(b"\r\n")
        data = b"".join(chunks)
    else:
        data = await reader.read()
    return status, headers, data


async def _one_request(port: int, method: str, path: str, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    conn = PotatoConnection(port)
    try:
        return await asyncio.wait_for(conn.request(method, path), timeout)
    finally:
        await conn.close()


# ---------------------------------------------------------------- the load


async def log_in(conn: PotatoConnection, username: str) -> None:
    """The login form (POST /auth): Potato answers 302 to /annotate with the session cookie."""
    body = f"email={username}&pass={PASSWORD.replace(' ', '+')}".encode()
    status, headers, _ = await conn.request("POST", "/auth", body, "application/x-www-form-urlencoded")
    if status != 302 or "/annotate" not in headers.get("location", ""):
        raise SystemExit(f"Potato refused the login of {username} ({status})")


def labels_for(scheme: str, best: str, worst: str) -> dict[str, str]:
    """The `annotations` of annotation.js's save: `schema:label` -> value, as its DOM sync builds them."""
    if scheme == "bws":
        return {"bws:best": best, "bws:worst": worst}
    return {f"best:{best}": best, f"worst:{worst}": worst}


async def annotator(conn: PotatoConnection, username: str, scheme: str, results: Results, deadline: float,
                    rng: random.Random, retry_rate: float, think: float = 0.0) -> None:
    """Page -> save (best + worst) -> Next -> page, until the deadline; see the module docstring."""
    clock = time.perf_counter
    instance_id = None
    if think:
        await asyncio.sleep(rng.uniform(0, think))
    try:
        navigate_from = None  # the item just saved: Next is a POST before the page GET
        while clock() < deadline:
            if instance_id is None:
                t0 = clock()
                try:
                    if navigate_from is not None:
                        status, answer = await conn.post_json(
                            "/annotate", {"action": "next_instance", "instance_id": navigate_from},
                            b"X-Potato-Navigation: 1\r\n")
                        if status == 302:  # sent on to the end of the study: nothing left to assign
                            results.ran_out += 1
                            return
                        if status != 200:
                            results.error(f"next {status}", status=status)
                            navigate_from = None
                            continue
                    status, _, page = await conn.request("GET", "/annotate")
                except Exception as exc:  # noqa: BLE001
                    results.error(f"fetch {type(exc).__name__}", exc)
                    await asyncio.sleep(0.05)
                    continue
                results.latency("fetch", (clock() - t0) * 1000)
                if status != 200:
                    results.error(f"fetch {status}", status=status)
                    continue
                found = INSTANCE_ID.search(page)
                if found is None or found.group(1).decode() == navigate_from:
                    results.ran_out += 1  # no item on the page, or Next stayed put: nothing left
                    return
                instance_id, navigate_from = found.group(1).decode(), None
            if think:
                await asyncio.sleep(min(rng.expovariate(1 / think), max(0.0, deadline - clock())))
                if clock() >= deadline:
                    break
            best, worst = rng.sample(POSITIONS, 2)
            save = {"instance_id": instance_id, "annotations": labels_for(scheme, best, worst),
                    "cleared_schemas": [], "span_annotations": [], "client_timestamp": _now_iso(),
                    "response_time_seconds": rng.randint(1, 30)}
            for _ in range(2 if rng.random() < retry_rate else 1):
                t0 = clock()
                try:
                    status, answer = await conn.post_json("/updateinstance", save)
                except Exception as exc:  # noqa: BLE001
                    results.error(f"submit {type(exc).__name__}", exc)
                    continue
                results.latency("submit", (clock() - t0) * 1000)
                if status == 200 and answer and answer.get("status") == "success":
                    results.acknowledge((username, instance_id))
                else:
                    results.error(f"submit {status}", status=status)
            navigate_from, instance_id = instance_id, None
    finally:
        results.reconnects += conn.reconnects
        await conn.close()


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


async def run_load(port: int, annotators: int, seconds: float, scheme: str, retry_rate: float = 0.1,
                   think: float = 0.0, on_start=lambda: None) -> tuple[Results, float]:
    """Log everyone in (untimed, 16 at a time), warm Potato up, then run the annotators for `seconds`;
    `on_start()` is called as the timed window opens (to read CPU counters there).

    The warm-up matters: Potato imports and compiles a lot on its first page and first save (seconds
    on this machine), which a server in use has long done and which would weigh on a 20 s run. The
    logins matter to CPU: each checks a PBKDF2 hash (100,000 rounds), which storyloop's annotators,
    holding API tokens, do not pay in the window either."""
    usernames = [f"bench{i}" for i in range(annotators)]
    connections = [PotatoConnection(port) for _ in usernames]
    gate = asyncio.Semaphore(16)

    async def gated_login(conn, username):
        async with gate:
            await log_in(conn, username)

    await asyncio.gather(*(gated_login(c, u) for c, u in zip(connections, usernames)))
    warm = PotatoConnection(port)
    await log_in(warm, WARMUP_USER)
    await annotator(warm, WARMUP_USER, scheme, Results(), time.perf_counter() + 3, random.Random(-1), 0.0)
    on_start()
    results = Results.for_run(seconds)
    started = results.started
    deadline = started + seconds
    await asyncio.gather(*(annotator(c, u, scheme, results, deadline, random.Random(i), retry_rate, think)
                           for i, (c, u) in enumerate(zip(connections, usernames))))
    return results, time.perf_counter() - started


def stored_judgements(workdir: Path, scheme: str) -> tuple[set[tuple[str, str]], int]:
    """(user, instance id) pairs whose user_state.json holds both a best and a worst, and how many
    items hold more than REQUIRED annotators' judgements (the warm-up user's are left out)."""
    stored = set()
    for state_file in (Path(workdir) / "annotation_output").glob("*/user_state.json"):
        state = json.loads(state_file.read_text())
        if state["user_id"] == WARMUP_USER:
            continue
        for instance_id, labels in state.get("instance_id_to_label_to_value", {}).items():
            names = {(label["schema"], label["name"]) for label, _ in labels}
            roles = {schema if scheme == "radio" else name for schema, name in names}
            if {"best", "worst"} <= roles:
                stored.add((state["user_id"], instance_id))
    per_item: dict[str, int] = {}
    for _, instance_id in stored:
        per_item[instance_id] = per_item.get(instance_id, 0) + 1
    return stored, sum(1 for count in per_item.values() if count > REQUIRED)


def run_potato(annotators: int, seconds: float, think: float = 0.0, tasks: int = 0, scheme: str = "bws",
               retry_rate: float = 0.1, venv_dir: Path = DEFAULT_VENV, keep: bool = False) -> dict:
    """One Potato run; returns a row with annotate_load's keys (db is "potato-files", 1 process).
    CPU (Potato's and the load generator's) is counted over the timed window only, as for storyloop."""
    potato = ensure_potato(venv_dir)
    tasks = tasks or annotate_load.default_items(seconds, annotators, REQUIRED)
    workdir = Path(tempfile.mkdtemp(prefix="storyloop-potato-"))
    try:
        port = annotate_load.free_port()
        server = start_potato(workdir, tasks, port, annotators, scheme, potato)
        window = {}

        def open_window():
            window["setting"] = annotate_load.conditions("potato-files", tasks, annotators, think, 1)
            window["cpu0"] = resource.getrusage(resource.RUSAGE_SELF)
            window["server_cpu0"] = annotate_load.children_cpu(server.pid)

        try:
            results, elapsed = asyncio.run(run_load(port, annotators, seconds, scheme, retry_rate, think, open_window))
            cpu1, server_cpu1 = resource.getrusage(resource.RUSAGE_SELF), annotate_load.children_cpu(server.pid)
            cpu0, server_cpu0 = window["cpu0"], window["server_cpu0"]
            rss_mb = annotate_load.largest_rss_mb(server.pid)
        finally:
            annotate_load.stop_server(server)
        stored, over = stored_judgements(workdir, scheme)
    finally:
        if keep:
            print(f"Potato's project and output kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    client_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    setting = {**window["setting"], "chain": False, "potato": POTATO_VERSION, "scheme": scheme}
    # Potato has no done counter to drift, and keeps one annotation per user and item.
    integrity = {"tasks_over_R": over, "done_count_mismatch": 0, "task_user_twice": 0}
    return annotate_load.result_row(setting, results, elapsed, client_cpu, server_cpu1 - server_cpu0, rss_mb,
                                    stored, integrity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--think", type=float, default=0.0,
                        help="mean seconds an annotator reads before saving (0: save at once, the most load)")
    parser.add_argument("--items", "--tasks", dest="items", type=int, default=0,
                        help="BWS tuples to seed (default: as annotate_load's)")
    parser.add_argument("--scheme", choices=["bws", "radio"], default="bws",
                        help="bws: Potato's BWS scheme (tuples across prompts); radio: prompt + 4 continuations, "
                             "best and worst radio schemes")
    parser.add_argument("--retry-rate", type=float, default=0.1, help="share of saves sent twice")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="Potato's virtualenv (made if missing)")
    parser.add_argument("--keep", action="store_true", help="keep Potato's project and output folder")
    parser.add_argument("--json", default="", help="also write the results as JSON to this file")
    args = parser.parse_args()
    check_limits(parser, args)
    rows = []
    for n in args.annotators:
        row = run_potato(n, args.seconds, args.think, args.items, args.scheme, args.retry_rate, args.venv, args.keep)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print_rows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
