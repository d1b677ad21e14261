"""Engine and sessions. SQLite by default (WAL, busy timeout); PostgreSQL by URL."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine, create_engine, event
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
    read: sessionmaker[Session]
    write_factory: sessionmaker[Session]
    state: dict = field(default_factory=dict, compare=False)  # per-process bookkeeping (e.g. last lease sweep)

    @classmethod
    def from_url(cls, url: str) -> "Database":
        engine = make_engine(url)
        return cls(
            engine=engine,
            read=sessionmaker(engine, expire_on_commit=False),
            write_factory=sessionmaker(engine.execution_options(write=True), expire_on_commit=False),
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A short write transaction, committed on success and rolled back on any error."""
        with self.write_factory() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
