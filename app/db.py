"""Engine and sessions. SQLite by default (WAL, busy timeout); PostgreSQL by URL."""

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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
        """The same short write transaction on a Core connection, without the ORM session: for the
        annotation hot path, which runs prebuilt statements only."""
        with self._sqlite_writer_turn(), self.write_engine.begin() as conn:
            yield conn

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
                              writer_file=open(f"{self.engine.url.database}.writer-lock", "a+b"))
        with self.state["writer_lock"]:
            fcntl.flock(self.state["writer_file"], fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self.state["writer_file"], fcntl.LOCK_UN)
