"""Do wrong-password floods slow down annotation on SQLite?

Starts the real server (uvicorn, SQLite file, like benchmarks/annotate_load.py, whose seeding, server
and client it reuses), runs simulated annotators (fetch -> submit BWS) for --seconds alone, then again
while --flooders clients send wrong passwords to POST /api/v1/auth/token as fast as answered, and
prints the submission latency of both phases. Throttling limits are raised for the run so every flood
attempt reaches the argon2 check (with the defaults most would get a cheap 429).

The login's argon2 check holds no transaction, so submissions should barely notice the flood beyond
the CPU it takes. When the check ran inside the write transaction the median submission went from
5 ms to over a second. To measure a tree of the app as it was, pass --server-root to a copy of it:

    python benchmarks/login_flood.py --seconds 10 --annotators 20 --flooders 4
    mkdir /tmp/before && git archive <commit> app migrations static templates | tar -x -C /tmp/before
    python benchmarks/login_flood.py --server-root /tmp/before

Measured on the shared 2-core box (1 worker, 20 annotators, 4 flooders, 10 s per phase), submission
p50/p95 ms: before (argon2 inside the token endpoint's write transaction) 6.9/21 alone, 934/1350 in the
flood; now 7.1/18 alone, 132/353 in the flood. What is left is CPU: four argon2 checks at a time
(64 MiB, 4 lanes each) on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import annotate_load as load  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


async def flooder(port: int, deadline: float, latencies: list[float], statuses: dict[int, int], rng: random.Random):
    conn = load.RawConnection(port, "none")  # the token endpoint ignores the bearer header
    try:
        while time.perf_counter() < deadline:
            username = f"bench{rng.randrange(20)}"  # real accounts (seeded by annotate_load.seed)
            started = time.perf_counter()
            status, _body = await conn.post("/api/v1/auth/token", {"username": username, "password": "wrong guess"})
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        await conn.close()


async def phase(port: int, tokens: list[str], seconds: float, flooders: int, think: float):
    results = load.Results()
    login_ms, statuses = [], {}
    deadline = time.perf_counter() + seconds
    rngs = [random.Random(i) for i in range(len(tokens) + flooders)]
    await asyncio.gather(
        *(load.annotator(load.RawConnection(port, t), results, deadline, r, 0.0, False, think)
          for t, r in zip(tokens, rngs)),
        *(flooder(port, deadline, login_ms, statuses, rngs[len(tokens) + i]) for i in range(flooders)),
    )
    return results, login_ms, statuses


def migrate(url: str, server_root: Path) -> None:
    # The server's own migrations: a tree from before migration 0004 refuses a newer schema.
    subprocess.run([sys.executable, "-c", f"from app.migrate import upgrade_to_head; upgrade_to_head({url!r})"],
                   cwd=server_root, env={**os.environ, "PYTHONPATH": str(server_root)}, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--flooders", type=int, default=4, help="concurrent wrong-password clients")
    parser.add_argument("--think", type=float, default=0.2, help="mean seconds an annotator reads before submitting")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server-root", type=Path, default=ROOT, help="the app tree the server runs from")
    args = parser.parse_args()

    os.environ.update(STORYLOOP_LOGIN_FAILURES_PER_ACCOUNT="1000000", STORYLOOP_LOGIN_FAILURES_PER_ADDRESS="1000000")
    load.ROOT = args.server_root.resolve()  # start_server runs uvicorn from here
    workdir = Path(tempfile.mkdtemp(prefix="storyloop-flood-"))
    url, drop = load.fresh_database("sqlite", "", workdir)
    rows = []
    try:
        migrate(url, load.ROOT)
        tasks = int(200 * args.seconds * 2) + args.annotators
        tokens = load.seed(url, tasks, max(args.annotators, 20), 3)[:args.annotators]
        port = load.free_port()
        server = load.start_server(url, args.workers, port, workdir, [])
        try:
            for name, flooders in (("annotators alone", 0), (f"+ {args.flooders} login flooders", args.flooders)):
                results, login_ms, statuses = asyncio.run(phase(port, tokens, args.seconds, flooders, args.think))
                rows.append((name, results, login_ms, statuses))
        finally:
            load.stop_server(server)
    finally:
        drop()

    print(f"server: {load.ROOT}  ({args.workers} worker(s), SQLite, {args.annotators} annotators, think {args.think}s)")
    print(f"{'phase':<24} {'submits':>7} {'submit p50/p95/p99 ms':>24} {'errors':>6} {'logins':>6} "
          f"{'login p50 ms':>12} {'statuses':>10}")
    for name, results, login_ms, statuses in rows:
        p = [load.percentile(results.submit_ms, q) for q in (50, 95, 99)]
        print(f"{name:<24} {len(results.submit_ms):>7} {p[0]:>8.1f}/{p[1]:>7.1f}/{p[2]:>7.1f} "
              f"{sum(results.errors.values()):>6} {len(login_ms):>6} {load.percentile(login_ms, 50):>12.1f} "
              f"{statuses or '-'}")


if __name__ == "__main__":
    main()
