"""Engine and sessions. SQLite by default (WAL, busy timeout); PostgreSQL by URL."""

import asyncio
import fcntl
import json
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Executable, create_engine, event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.faults import is_unavailable

try:  # the PostgreSQL drivers; absent on a SQLite-only install
    import asyncpg
    from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
except ImportError:  # pragma: no cover
    asyncpg = None


_SETTINGS = Settings.model_fields  # the pool sizes' defaults, for code without settings (scripts, tests)


def make_engine(url: str, pool_size: int = _SETTINGS["db_pool_size"].default,
                max_overflow: int = _SETTINGS["db_max_overflow"].default) -> Engine:
    if not url.startswith("sqlite"):
        # Opened on first use, not at start: most of these serve pages and admin requests.
        return create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)

    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):
        # Let SQLAlchemy (below) issue BEGIN instead of Python's sqlite3 module, so that
        # write transactions can take the write lock up front.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):
        # BEGIN IMMEDIATE: writers queue on the busy timeout instead of failing with
        # "database is locked" when a read transaction tries to upgrade to a write.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


@dataclass(frozen=True)
class Compiled:
    """A statement compiled once for a driver (asyncpg; sqlite3 for bulk inserts): its SQL, its
    parameters' names in positional order, the values of its literal parameters, and the bind
    processors of its typed ones (UTC datetimes, JSON): what SQLAlchemy does per execution."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    processors: dict[str, Callable[[Any], Any]]

    def arguments(self, values: dict[str, Any]) -> list[Any]:
        params = {**self.defaults, **values}
        for name, process in self.processors.items():
            params[name] = process(params[name])
        return [params[name] for name in self.names]


def compile_statement(statement: Executable, dialect, column_keys: Sequence[str] | None = None) -> Compiled:
    """The statement compiled for the dialect (column_keys: an INSERT's columns, all of them given)."""
    compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None)
    if "POSTCOMPILE" in compiled.string:  # e.g. IN (...) of a list: SQLAlchemy renders those per execution
        raise ValueError("a statement compiled once must not expand parameters per execution (IN lists)")
    defaults, processors = {}, {}
    for bind, name in compiled.bind_names.items():
        if not bind.required:
            defaults[name] = bind.effective_value
        if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None:
            processors[name] = process
    return Compiled(compiled.string, tuple(compiled.positiontup), defaults, processors)


if asyncpg is not None:
    class Row(asyncpg.Record):
        """A row whose columns read as attributes too (row.id), like SQLAlchemy's rows."""

        def __getattr__(self, name: str) -> Any:
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None


class AsyncStatements:
    """PostgreSQL: the annotation path's statements (token check, lease, submission) run on asyncpg
    connections, on the event loop. Through SQLAlchemy each ran in a worker thread: a thread hand-off
    there and back per statement, plus SQLAlchemy's execution (cache lookup, parameter and result
    processing), cost more server CPU than the statement itself; psycopg's async connections still
    cost about 2.7 times asyncpg's client CPU per statement (benchmarks/driver_cpu.py). Statements are
    built with SQLAlchemy as elsewhere and compiled once; asyncpg prepares them on the server.

    Connections are outside any transaction between statements (a single statement is atomic), and
    are not pinged before use: one broken by a database restart fails its statement with a
    connection error, which is answered 503 + Retry-After (app/main.py), and every idle connection
    is dropped with it, as SQLAlchemy's pool does. At most max_connections statements (and
    connections) at once per event loop: Settings.db_annotation_connections, sized in docs/operations.md."""

    def __init__(self, engine: Engine, max_connections: int = _SETTINGS["db_annotation_connections"].default) -> None:
        self.max_connections = max_connections
        self._dialect = asyncpg_dialect()
        self._dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        # The pool of each serving event loop (a worker's; a test client's): an asyncpg connection
        # belongs to the loop that opened it. Other loops (a script's or a test's asyncio.run) open a
        # connection per statement.
        self._pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> _LoopPool
        self._compiled: dict[Executable, Compiled] = {}

    async def fetch_one(self, statement: Executable, values: dict[str, Any]):
        """The statement's one row or None."""
        rows = await self.fetch_all(statement, values)
        return rows[0] if rows else None

    async def fetch_all(self, statement: Executable, values: dict[str, Any]) -> list:
        compiled = self._compiled.get(statement) or self._compile(statement)
        arguments = compiled.arguments(values)
        pool = self._pools.get(asyncio.get_running_loop())
        if pool is None:  # a loop that may end right after (asyncio.run): nothing to keep
            conn = await self._connect()
            try:
                return await _fetch(conn, compiled, arguments)
            finally:
                conn.terminate()
        async with pool.limit:
            conn = pool.take() or await self._connect()
            try:
                rows = await _fetch(conn, compiled, arguments)
            except IntegrityError:  # a unique key raced: the callers retry or replay
                pool.put_back(conn)
                raise
            except BaseException as exc:
                # The connection's state is unknown; a broken one means the database went away (a
                # restart): its idle siblings are as dead.
                broken = conn.is_closed() or is_unavailable(exc)  # before terminate(), which closes it
                conn.terminate()
                if broken:
                    pool.terminate()
                raise
            pool.put_back(conn)
            return rows

    async def open_connections(self, prepare: Sequence[Executable] = ()) -> BaseException | None:
        """Starts this event loop's pool and opens its connections ahead of need (at worker start),
        with the statements `prepare` prepared once on each. Returns why a connection could not be
        opened, if one could not (the database is not up yet, or refuses more connections): those
        open on demand later, as without this.

        Opening a connection costs a server process and a SCRAM password exchange, several ms of CPU
        on each side: when annotators arrive together, opening them on demand made the first seconds'
        p99 about 0.7 s at 1,000 annotators. A statement's first run on a connection costs about ten
        times a later run (the lease statement: 5 ms against 0.5), as PostgreSQL loads its catalog
        caches and asyncpg looks up the types; with 1,000 annotators arriving, the first second
        reached every connection, and its fetches waited 0.2-0.4 s. Preparing a statement does that
        work ahead (the prepared statement is dropped: what it warmed stays)."""
        pool = self._pools.setdefault(asyncio.get_running_loop(), _LoopPool(self.max_connections))
        wanted = self.max_connections - len(pool.idle)
        sqls = [(self._compiled.get(statement) or self._compile(statement)).sql for statement in prepare]
        opened = await asyncio.gather(*(self._connect(prepare=sqls) for _ in range(wanted)), return_exceptions=True)
        failed = [exc for exc in opened if isinstance(exc, BaseException)]
        pool.idle.extend(conn for conn in opened if not isinstance(conn, BaseException))
        return failed[0] if failed else None

    async def close(self) -> None:
        """Ends this event loop's pool, closing its connections (at shutdown)."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        while pool is not None and pool.idle:
            await pool.idle.pop().close()

    def close_outside_loop(self) -> None:
        """Drops every pool's idle connections, for code without an event loop (Database.dispose). A
        pool whose loop has closed cannot run its connections' callbacks: they close when collected."""
        for loop, pool in list(self._pools.items()):
            if not loop.is_closed():
                pool.terminate()
        self._pools.clear()

    async def _connect(self, prepare: Sequence[str] = ()):
        conn = await asyncpg.connect(
            self._dsn,
            # Generic plans: the lease statement's custom plan cost PostgreSQL about as much CPU to
            # make as to run, and it re-planned it on every call (a generic plan's estimate looked
            # worse; the plan is the same). These statements are point lookups and index walks.
            server_settings={"plan_cache_mode": "force_generic_plan"})
        # JSON parameters arrive serialized by SQLAlchemy's bind processors; results are decoded here.
        await conn.set_type_codec("json", schema="pg_catalog", encoder=str, decoder=json.loads)
        for sql in prepare:
            await conn.prepare(sql)
        return conn

    def _compile(self, statement: Executable) -> Compiled:
        self._compiled[statement] = result = compile_statement(statement, self._dialect)
        return result


async def _fetch(conn, compiled: Compiled, arguments: list) -> list:
    try:
        return await conn.fetch(compiled.sql, *arguments, record_class=Row)
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise IntegrityError(compiled.sql, arguments, exc) from exc


class _LoopPool:
    """One event loop's connections: the idle ones, and a bound on statements at once."""

    def __init__(self, max_connections: int) -> None:
        self.idle: deque = deque()
        self.max_connections = max_connections
        self.limit = asyncio.Semaphore(max_connections)

    def take(self):
        """An idle connection that is still open, or None. PostgreSQL closes them all when it restarts."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.is_closed():
                return conn
        return None

    def put_back(self, conn) -> None:
        if not conn.is_in_transaction() and len(self.idle) < self.max_connections:
            self.idle.append(conn)
        else:
            conn.terminate()

    def terminate(self) -> None:
        """Drops the idle connections without waiting."""
        while self.idle:
            self.idle.pop().terminate()


T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Database:
    """The engine plus two session factories: plain reads, and short write transactions; and
    run_write, the group-committed write path of the annotation hot path."""

    engine: Engine
    write_engine: Engine  # the same engine; its connections begin write transactions (BEGIN IMMEDIATE on SQLite)
    read: sessionmaker[Session]
    write_factory: sessionmaker[Session]
    # PostgreSQL only: the annotation path's statements, on the event loop (None on SQLite).
    statements: AsyncStatements | None
    # Per-process bookkeeping: writer lock, group-commit queues, caches, the last lease sweep.
    state: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_url(cls, url: str, pool_size: int = _SETTINGS["db_pool_size"].default,
                 max_overflow: int = _SETTINGS["db_max_overflow"].default,
                 annotation_connections: int = _SETTINGS["db_annotation_connections"].default) -> "Database":
        engine = make_engine(url, pool_size, max_overflow)
        write_engine = engine.execution_options(write=True)
        return cls(
            engine=engine,
            write_engine=write_engine,
            read=sessionmaker(engine, expire_on_commit=False),
            write_factory=sessionmaker(write_engine, expire_on_commit=False),
            statements=None if url.startswith("sqlite") else AsyncStatements(engine, annotation_connections),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> "Database":
        """The database of the settings, with their connection pool sizes."""
        return cls.from_url(settings.resolved_database_url, settings.db_pool_size, settings.db_max_overflow,
                            settings.db_annotation_connections)

    def dispose(self) -> None:
        """Closes every pooled connection (scripts and tests, when done with the database)."""
        self.engine.dispose()
        if self.statements is not None:
            self.statements.close_outside_loop()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A short write transaction, committed on success and rolled back on any error."""
        with self._sqlite_writer_turn(), self.write_factory() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    async def run_write(self, job: Callable[[Connection], T]) -> T:
        """Runs job(conn) in a write transaction and returns its result once committed; if the job
        raises, its writes are undone and the exception is raised here. For the annotation hot path.

        PostgreSQL: one transaction per job, in a worker thread; row locks let jobs run side by side.
        SQLite has one writer at a time. Jobs wait in a queue per event loop, and the loop's own
        thread runs all jobs queued at that moment in one transaction, each inside a savepoint
        (group commit): one lock turn and one commit for many requests, and no other Python thread
        competes for the GIL while the database lock is held (a writer thread lost most of its time
        to that). Results are handed back only after the commit: nothing unsaved is acknowledged."""
        if not self.is_sqlite:
            return await asyncio.to_thread(self._run_write_now, job)
        loop = asyncio.get_running_loop()
        queue = self.state.setdefault("group_commit", weakref.WeakKeyDictionary()).setdefault(loop, _JobQueue())
        future = loop.create_future()
        queue.jobs.append((job, future))
        if not queue.commit_scheduled:
            queue.commit_scheduled = True
            queue.task = loop.create_task(self._group_commit(queue))
        return await future

    async def fetch_one(self, statement: Executable, values: dict[str, Any]):
        """A read of the annotation path (token check, replay): the statement's one row or None.
        PostgreSQL: on the event loop, without blocking it (AsyncStatements). SQLite: on the event
        loop's own thread, blocking it for the read, an index lookup that takes less CPU than a hand-off
        to a thread and back (measured: about 2.3 against 1.95 ms of server CPU per judgement)."""
        if self.statements is not None:
            return await self.statements.fetch_one(statement, values)
        with self.engine.connect() as conn:
            return conn.execute(statement, values).one_or_none()

    async def fetch_all(self, statement: Executable, values: dict[str, Any]) -> list:
        """fetch_one's many-row sibling: the statement's rows."""
        if self.statements is not None:
            return await self.statements.fetch_all(statement, values)
        with self.engine.connect() as conn:
            return conn.execute(statement, values).all()

    def _run_write_now(self, job: Callable[[Connection], T]) -> T:
        """The job in its own write transaction on a Core connection, in this thread."""
        with self._sqlite_writer_turn(), self.write_engine.begin() as conn:
            return job(conn)

    async def _group_commit(self, queue: "_JobQueue") -> None:
        try:
            if not self._take_writer_turn(blocking=False):
                await asyncio.to_thread(self._take_writer_turn, blocking=True)  # waits without blocking the loop
        except BaseException as exc:  # e.g. the loop is shutting down: nobody waits in vain
            _hand_back([(future, None, exc) for _job, future in queue.take()])
            raise
        batch = queue.take()
        try:
            outcomes = self._run_batch(batch)
        finally:
            self._end_writer_turn()
        _hand_back(outcomes)

    def _run_batch(self, batch: list) -> list:
        """Runs the jobs in one transaction, each in a savepoint; returns (future, result, exception)s."""
        outcomes = []
        try:
            with self.write_engine.begin() as conn:
                # Savepoints straight on the sqlite3 connection: SQLAlchemy's begin_nested() cost
                # about as much as a job's own statements. Jobs only run statements, so
                # SQLAlchemy's view of the transaction stays true.
                sqlite = conn.connection.driver_connection
                for job, future in batch:
                    sqlite.execute("SAVEPOINT job")
                    try:
                        outcomes.append((future, job(conn), None))
                    except Exception as exc:  # noqa: BLE001 (this job's writes are undone; the others' stand)
                        sqlite.execute("ROLLBACK TO SAVEPOINT job")
                        outcomes.append((future, None, exc))
                    sqlite.execute("RELEASE SAVEPOINT job")
        except Exception as exc:  # noqa: BLE001 (the commit failed: no job of this batch is saved)
            return [(future, None, exc) for _job, future in batch]
        return outcomes

    @contextmanager
    def wal_checkpoints_in_background(self, every_seconds: float = 0.5) -> Iterator[None]:
        """SQLite: while this is open, a thread checkpoints the write-ahead log every half second.

        Otherwise SQLite checkpoints inside whichever commit makes the log pass 1000 pages; on the
        web app that is a group commit on the event loop, and everybody waiting on it saw the pause
        in their p99. PASSIVE checkpoints run beside writers and readers without waiting for them."""
        if not self.is_sqlite or not self.engine.url.database:
            yield
            return
        stop = threading.Event()

        def checkpoint_until_stopped() -> None:
            while not stop.wait(every_seconds):
                connection = self.engine.raw_connection()  # the sqlite3 connection, outside any transaction
                try:
                    connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except Exception as exc:  # noqa: BLE001 (retried next time; commits still checkpoint when the log grows)
                    log.warning("WAL checkpoint failed: %s", exc)
                finally:
                    connection.close()

        thread = threading.Thread(target=checkpoint_until_stopped, name="storyloop-wal-checkpoint", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @contextmanager
    def _sqlite_writer_turn(self) -> Iterator[None]:
        """SQLite has one writer at a time. Writers that find the lock taken wait in SQLite's busy
        handler, which sleeps in growing steps (up to 100 ms) and so wakes late: under load, p99
        latency grew to seconds. Queueing writers on a thread lock and a file lock (flock, across
        worker processes) instead wakes the next writer as soon as the previous one commits."""
        self._take_writer_turn(blocking=True)
        try:
            yield
        finally:
            self._end_writer_turn()

    def _take_writer_turn(self, blocking: bool) -> bool:
        if not self.is_sqlite:
            return True
        if self.state.get("writer_pid") != os.getpid():  # a new process: its own lock and file
            path = self.engine.url.database
            self.state.update(writer_pid=os.getpid(), writer_lock=threading.Lock(),
                              writer_file=open(f"{path}.writer-lock", "a+b") if path else None)  # noqa: SIM115 (open for the process's life)
        lock, file = self.state["writer_lock"], self.state["writer_file"]
        if not lock.acquire(blocking=blocking):
            return False
        if file is None:  # an in-memory database: one process
            return True
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            lock.release()
            return False
        except BaseException:
            lock.release()
            raise

    def _end_writer_turn(self) -> None:
        if not self.is_sqlite:
            return
        if self.state["writer_file"] is not None:
            fcntl.flock(self.state["writer_file"], fcntl.LOCK_UN)
        self.state["writer_lock"].release()


def _hand_back(outcomes: list) -> None:
    for future, result, exc in outcomes:
        if future.done():  # the request went away meanwhile; a retry finds what was stored
            continue
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        elif exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


@dataclass
class _JobQueue:
    """Write jobs waiting for the next group commit of one event loop."""

    jobs: list = field(default_factory=list)
    commit_scheduled: bool = False
    task: asyncio.Task | None = None  # the pending commit (kept referenced, so it is not collected)

    def take(self) -> list:
        """All jobs queued so far, for this commit; jobs queued from now on schedule the next one."""
        batch, self.jobs, self.commit_scheduled = self.jobs, [], False
        return batch
