"""Client CPU per statement of the two PostgreSQL drivers on an event loop: psycopg's async
connections (what AsyncStatements used before) against asyncpg (what it uses now, app/db.py).

Both run the same prepared one-row query, on 20 connections at once, on uvloop as the server does.
The figure that matters is CPU µs per statement in this process: on a small machine the server's
CPU is what the annotators' p99 waits for.

    STORYLOOP_BENCH_POSTGRES_URL=postgresql+psycopg://u:pw@localhost/db python benchmarks/driver_cpu.py
"""

import argparse
import asyncio
import os
import resource
import time

import asyncpg
import psycopg
import uvloop
from psycopg.rows import namedtuple_row
from sqlalchemy.engine import make_url

QUERY = ("SELECT c.oid, c.relname, c.relkind, c.relpages FROM pg_catalog.pg_class c "
         "WHERE c.oid = {}")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(connect, fetch, statements: int, connections: int) -> tuple[float, float]:
    conns = [await connect() for _ in range(connections)]

    async def client(conn) -> None:
        for _ in range(statements // connections):
            await fetch(conn)

    cpu, wall = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    for conn in conns:
        await conn.close()
    return cpu / statements * 1e6, wall / statements * 1e6


async def main(url: str, statements: int, connections: int, rounds: int) -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def psycopg_connect():
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=namedtuple_row)

    async def psycopg_fetch(conn):
        cursor = await conn.execute(QUERY.format("%(oid)s"), {"oid": 1259}, prepare=True)
        return await cursor.fetchall()

    async def asyncpg_fetch(conn):
        return await conn.fetch(QUERY.format("$1"), 1259)

    drivers = {"psycopg": (psycopg_connect, psycopg_fetch), "asyncpg": (lambda: asyncpg.connect(dsn), asyncpg_fetch)}
    figures = {name: [] for name in drivers}
    for _ in range(rounds):  # interleaved: the machine's drift hits both alike
        for name, (connect, fetch) in drivers.items():
            figures[name].append(await measure(connect, fetch, statements, connections))
    print(f"{'driver':8} {'client CPU µs/statement':>24} {'wall µs/statement':>18}")
    for name, rows in figures.items():
        cpu = sorted(r[0] for r in rows)[len(rows) // 2]
        wall = sorted(r[1] for r in rows)[len(rows) // 2]
        print(f"{name:8} {cpu:24.1f} {wall:18.1f}")
    ratio = sorted(r[0] for r in figures["psycopg"])[rounds // 2] / sorted(r[0] for r in figures["asyncpg"])[rounds // 2]
    print(f"psycopg / asyncpg client CPU: {ratio:.2f}x (medians of {rounds} interleaved rounds)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres-url", default=os.environ.get("STORYLOOP_BENCH_POSTGRES_URL", ""))
    parser.add_argument("--statements", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not args.postgres_url:
        parser.error("pass --postgres-url or set STORYLOOP_BENCH_POSTGRES_URL")
    uvloop.install()
    asyncio.run(main(args.postgres_url, args.statements, args.connections, args.rounds))
