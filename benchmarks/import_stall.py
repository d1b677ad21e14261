"""How long annotators wait while an admin imports a large file (SQLite by default).

Creates a fresh SQLite database (a temp file; or a new PostgreSQL database next to --postgres-url),
migrates it, seeds BWS tasks and annotator accounts, then runs the annotation path in one process as
a web worker runs it: annotators on one event loop leasing and submitting BWS judgements through
app/services/tasks.py (the group-committed write path), and the import in a thread of the same
process (the admin's upload runs in the worker's thread pool), through
app/services/imports.import_file. The file is --lines JSON Lines records (--per-prompt
continuations per prompt, prompt_id and continuation_id given, two sources, texts of about 300
characters: what a generation dump looks like).

It prints the import's wall time and, for the leases and submissions that overlapped the import,
how many there were, their worst wait and their p99, next to the worst wait before the import.

    python benchmarks/import_stall.py                   # 30,000 lines, 20 annotators, SQLite
    python benchmarks/import_stall.py --lines 100000 --annotators 50
    python benchmarks/import_stall.py --db postgresql --postgres-url postgresql+psycopg://...

Run it on a checkout before and after a change to compare (the same machine, the same load).

Measured (SQLite, defaults: 30,000 lines, 16.9 MB, 20 annotators, a 2-core machine shared with other
work, load average 3-4), two runs each:
- everything in one write transaction (before): import 5.6-7.8 s, worst wait during it 4.9-6.9 s;
- parse and check before the write, bulk INSERTs prepared outside it (after): import 1.3-1.8 s, worst
  wait 0.18-0.42 s (0.03-0.15 s before the import), the write transaction itself about 0.17 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from app.db import Database  # noqa: E402
from app.migrate import upgrade_to_head  # noqa: E402
from app.models import Continuation, ModelVersion, Prompt, User  # noqa: E402
from app.services import imports, tasks  # noqa: E402
from app.services.item_handles import ItemHandles  # noqa: E402
from app.services.tasks import BwsSubmission  # noqa: E402

WORDS = "the a fox moon lighthouse keeper heard knock river old clock struck thirteen quiet town dream".split()


def _text(rng: random.Random, chars: int) -> str:
    words = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(WORDS))
    return " " + " ".join(words)


def import_file_bytes(lines: int, per_prompt: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        p = i // per_prompt
        out.append(json.dumps({"prompt": f"Prompt {p}:" + _text(random.Random(p), 120), "prompt_id": f"bench-p{p}",
                               "continuation": _text(rng, 300), "continuation_id": f"bench-c{i}",
                               "source": f"bench-source-{i % 2}"}))
    return ("\n".join(out) + "\n").encode()


def seed(database: Database, prompts: int, annotators: int) -> list[User]:
    rng = random.Random(0)
    with database.write() as db:
        version = ModelVersion(name="seed-source", kind="source", algorithm="import")
        db.add(version)
        db.flush()
        by_prompt = {}
        for p in range(prompts):
            prompt = Prompt(text=f"Seeded prompt {p}:" + _text(rng, 100))
            db.add(prompt)
            db.flush()
            conts = [Continuation(prompt_id=prompt.id, model_version_id=version.id, text=_text(rng, 300)) for _ in range(6)]
            db.add_all(conts)
            db.flush()
            by_prompt[prompt.id] = [c.id for c in conts]
        tasks.build_bws_batch(db, "bench", by_prompt, seed=0, required=3)
        users = [User(username=f"bench-annotator-{n}", password_hash="x", role="annotator") for n in range(annotators)]
        db.add_all(users)
        db.flush()
        return users


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def annotate(database: Database, user: User, handles: ItemHandles, stop: asyncio.Event, think: float,
                   waits: list[tuple[float, float, str]]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        leased = await tasks.next_task(database, user, 600)
        waits.append((start, time.perf_counter() - start, "lease"))
        if leased is None:
            return
        first, last = leased.items[0].continuation_id, leased.items[-1].continuation_id
        data = BwsSubmission(best=handles.handle(leased.assignment_id, first), worst=handles.handle(leased.assignment_id, last),
                             idempotency_key=uuid.uuid4().hex)
        await asyncio.sleep(think)
        start = time.perf_counter()
        await tasks.submit_bws(database, user, leased.assignment_id, data, handles)
        waits.append((start, time.perf_counter() - start, "submit"))


async def run(database: Database, users: list[User], data: bytes, args) -> dict:
    handles = ItemHandles.from_secret("import-stall-benchmark-secret-key-0123456789")
    stop = asyncio.Event()
    waits: list[tuple[float, float, str]] = []
    workers = [asyncio.create_task(annotate(database, u, handles, stop, args.think, waits)) for u in users]
    await asyncio.sleep(args.warmup)
    span: dict[str, float] = {}
    outcome: dict[str, object] = {}

    def do_import() -> None:
        span["start"] = time.perf_counter()
        try:
            outcome["summary"] = imports.import_file(database, data, "bench.jsonl").model_dump()
        except Exception as exc:  # noqa: BLE001 (reported)
            outcome["error"] = repr(exc)
        span["end"] = time.perf_counter()

    thread = threading.Thread(target=do_import)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.05)
    await asyncio.sleep(args.after)
    stop.set()
    await asyncio.gather(*workers)
    before = [w for s, w, _ in waits if s + w < span["start"]]
    during = [w for s, w, _ in waits if s < span["end"] and s + w > span["start"]]
    return {"import_s": span["end"] - span["start"], "outcome": outcome,
            "before": {"n": len(before), "worst_s": max(before, default=float("nan")), "p99_s": percentile(before, 0.99)},
            "during": {"n": len(during), "worst_s": max(during, default=float("nan")), "p99_s": percentile(during, 0.99),
                       "median_s": percentile(during, 0.5)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=30_000)
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--think", type=float, default=0.05, help="seconds between a lease and its submission")
    parser.add_argument("--seed-prompts", type=int, default=1000, help="prompts with BWS tasks for the annotators")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--after", type=float, default=1.0)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres-url", default=os.environ.get("STORYLOOP_BENCH_POSTGRES_URL", ""))
    args = parser.parse_args()

    data = import_file_bytes(args.lines, args.per_prompt)
    with tempfile.TemporaryDirectory() as tmp:
        if args.db == "sqlite":
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        else:
            if not args.postgres_url:
                parser.error("--db postgresql needs --postgres-url")
            name = f"import_stall_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = args.postgres_url.rsplit("/", 1)[0] + f"/{name}"
        upgrade_to_head(url)
        database = Database.from_url(url)
        try:
            users = seed(database, args.seed_prompts, args.annotators)
            result = asyncio.run(run(database, users, data, args))
        finally:
            database.dispose()
            if args.db == "postgresql":
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    load = os.getloadavg()
    print(f"{args.db}: {args.lines} lines ({len(data) / 1e6:.1f} MB, {args.per_prompt} per prompt), "
          f"{args.annotators} annotators (think {args.think} s), {os.cpu_count()} CPUs, load average {load[0]:.1f}")
    print(f"import: {result['import_s']:.2f} s, {result['outcome']}")
    b, d = result["before"], result["during"]
    print(f"before the import: {b['n']} leases+submissions, worst wait {b['worst_s'] * 1000:.0f} ms, p99 {b['p99_s'] * 1000:.0f} ms")
    print(f"during the import: {d['n']} leases+submissions, worst wait {d['worst_s'] * 1000:.0f} ms, "
          f"p99 {d['p99_s'] * 1000:.0f} ms, median {d['median_s'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
