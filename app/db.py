"""Engine and sessions. SQLite by default (WAL, busy timeout); PostgreSQL by URL."""

import fcntl
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)

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


T = TypeVar("T")
GROUP_COMMIT_MAX_JOBS = 64


@dataclass(frozen=True)
class Database:
    """The engine plus two session factories: plain reads, and short write transactions."""

    engine: Engine
    write_engine: Engine  # the same engine; its connections begin write transactions (BEGIN IMMEDIATE on SQLite)
    read: sessionmaker[Session]
    write_factory: sessionmaker[Session]
    state: dict = field(default_factory=dict, compare=False)  # per-process bookkeeping (e.g. last lease sweep)

    @classmethod
    def from_url(cls, url: str) -> "Database":
        engine = make_engine(url)
        write_engine = engine.execution_options(write=True)
        return cls(
            engine=engine,
            write_engine=write_engine,
            read=sessionmaker(engine, expire_on_commit=False),
            write_factory=sessionmaker(write_engine, expire_on_commit=False),
        )

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

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """The same short write transaction on a Core connection, without the ORM session."""
        with self._sqlite_writer_turn(), self.write_engine.begin() as conn:
            yield conn

    def run_write(self, job: Callable[[Connection], T]) -> T:
        """Runs job(conn) in a write transaction and returns its result once committed; its
        exception, if it raises, after undoing what it wrote. For the annotation hot path.

        PostgreSQL: one transaction per job, in the calling thread; row locks let jobs run side by side.
        SQLite has one writer at a time, so each process hands its jobs to one writer thread that
        runs all jobs waiting at that moment in one transaction, each inside a savepoint (group
        commit): one lock turn and one commit for many requests, and no threads contending for the
        lock. A job's result is handed back only after the commit, so nothing unsaved is acknowledged."""
        if not self.is_sqlite:
            with self.write_connection() as conn:
                return job(conn)
        future: Future = Future()
        self._group_commit_queue().put((job, future))
        return future.result()

    def _group_commit_queue(self) -> queue.SimpleQueue:
        if self.state.get("group_commit_pid") != os.getpid():  # a new process: its own writer thread
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=self._group_commit_writer, args=(jobs,), name="storyloop-writer", daemon=True).start()
            self.state.update(group_commit_pid=os.getpid(), group_commit_queue=jobs)
        return self.state["group_commit_queue"]

    def _group_commit_writer(self, jobs: queue.SimpleQueue) -> None:
        while True:
            batch = [jobs.get()]
            while len(batch) < GROUP_COMMIT_MAX_JOBS:
                try:
                    batch.append(jobs.get_nowait())
                except queue.Empty:
                    break
            outcomes = []
            try:
                with self.write_connection() as conn:
                    for job, future in batch:
                        try:
                            with conn.begin_nested():
                                outcomes.append((future, job(conn), None))
                        except Exception as exc:  # noqa: BLE001 (this job's writes are undone; the others' stand)
                            outcomes.append((future, None, exc))
            except Exception as exc:  # noqa: BLE001 (the commit failed: no job of this batch is saved)
                for _job, future in batch:
                    future.set_exception(exc)
                continue
            for future, result, exc in outcomes:
                if exc is None:
                    future.set_result(result)
                else:
                    future.set_exception(exc)

    @contextmanager
    def _sqlite_writer_turn(self) -> Iterator[None]:
        """SQLite has one writer at a time. Writers that find the lock taken wait in SQLite's busy
        handler, which sleeps in growing steps (up to 100 ms) and so wakes late: under load, p99
        latency grew to seconds. Queueing writers on a thread lock and a file lock (flock, across
        worker processes) instead wakes the next writer as soon as the previous one commits."""
        if not self.is_sqlite or not self.engine.url.database:
            yield
            return
        if self.state.get("writer_pid") != os.getpid():  # a new process: its own lock and file
            self.state.update(writer_pid=os.getpid(), writer_lock=threading.Lock(),
                              writer_file=open(f"{self.engine.url.database}.writer-lock", "a+b"))  # noqa: SIM115 (open for the process's life)
        with self.state["writer_lock"]:
            fcntl.flock(self.state["writer_file"], fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self.state["writer_file"], fcntl.LOCK_UN)
