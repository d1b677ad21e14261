"""PostgreSQL connections: a web worker holds no more than its pools are configured for
(Settings.db_annotation_connections, db_pool_size, db_max_overflow; it held 40 at start whatever the
load, and up to 100), and when PostgreSQL refuses a connection (its limit is reached) requests get
503 with Retry-After and the log says what to change, and `storyloop serve` stops with that message
instead of a traceback."""

import asyncio
import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from app.config import Settings
from app.db import Database
from app.faults import DatabaseUnavailable
from app.main import create_app
from app.migrate import upgrade_to_head
from tests.conftest import POSTGRES_URL, TEST_SECRET_KEY, _fresh_postgres_database, make_user, token_headers

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="STORYLOOP_TEST_POSTGRES_URL not set")

POOLS = {"db_annotation_connections": 3, "db_pool_size": 2, "db_max_overflow": 1}


@pytest.fixture
def postgres_url():
    url, drop = _fresh_postgres_database()
    upgrade_to_head(url)
    yield url
    drop()


@pytest.fixture
def pool_settings(postgres_url, tmp_path) -> Settings:
    return Settings(database_url=postgres_url, data_dir=tmp_path / "data", secret_key=TEST_SECRET_KEY, **POOLS)


class Backends:
    """Connections to the test's database, from another (unpooled) connection that is not counted."""

    def __init__(self, url: str):
        self.engine = create_engine(url, poolclass=NullPool)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(select(func.count() - 1).select_from(text("pg_stat_activity"))
                               .where(text("datname = current_database()")))


def _limit_connections(url: str, limit: int) -> None:
    """The database's CONNECTION LIMIT: PostgreSQL refuses more, as at max_connections (SQLSTATE 53300)."""
    admin = create_engine(make_url(POSTGRES_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{make_url(url).database}" CONNECTION LIMIT {limit}'))
    admin.dispose()


def test_a_worker_holds_at_most_its_configured_connections(pool_settings, postgres_url):
    backends = Backends(postgres_url)
    database = Database.from_settings(pool_settings)
    make_user(database, "ann")
    database.engine.dispose()
    try:
        with TestClient(create_app(pool_settings, database)) as client:
            at_start = backends.count()
            # the annotation path's connections are opened at start (an arrival burst otherwise paid for them)
            assert POOLS["db_annotation_connections"] <= at_start <= pool_settings.db_connections_per_worker
            headers = token_headers(client, "ann")
            assert client.post("/api/v1/tasks/next", headers=headers).status_code in (200, 204)
            assert backends.count() <= pool_settings.db_connections_per_worker
        assert backends.count() <= POOLS["db_pool_size"]  # the annotation path's closed at shutdown
    finally:
        database.dispose()
        backends.engine.dispose()


def test_the_annotation_path_keeps_to_its_connections_under_load(pool_settings, postgres_url):
    """Twenty statements at once on one event loop use at most db_annotation_connections connections."""
    backends = Backends(postgres_url)
    database = Database.from_settings(pool_settings)
    statements = database.statements
    slow = select(func.pg_sleep(0.2))

    async def twenty_at_once() -> int:
        await statements.open_connections()
        try:
            load = asyncio.gather(*(statements.fetch_one(slow, {}) for _ in range(20)))
            await asyncio.sleep(0.1)
            during = await asyncio.to_thread(backends.count)
            await load
            return during
        finally:
            await statements.close()

    try:
        assert asyncio.run(twenty_at_once()) == POOLS["db_annotation_connections"]
    finally:
        database.dispose()
        backends.engine.dispose()


def test_a_refused_connection_answers_503_and_the_log_says_what_to_change(pool_settings, postgres_url, caplog):
    database = Database.from_settings(pool_settings)
    make_user(database, "ann")
    try:
        with TestClient(create_app(pool_settings, database), raise_server_exceptions=False) as client:
            headers = token_headers(client, "ann")
            _limit_connections(postgres_url, 0)  # connections held stay; every new one is refused
            client.portal.call(database.statements.close)  # the annotation path's idle connections go
            database.engine.dispose()  # and the other pool's
            with caplog.at_level(logging.WARNING, logger="storyloop.app"):
                annotation = client.post("/api/v1/tasks/next", headers=headers)  # asyncpg: the token check
                login = client.post("/api/v1/auth/token", json={"username": "ann", "password": "whatever"})  # SQLAlchemy
                page = client.get("/login?next=/annotate", headers={"accept": "text/html"})  # no database: still served
    finally:
        database.dispose()
    for response in (annotation, login):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "3"
        assert response.json() == {"detail": "The service is briefly unavailable; try again in 3 seconds."}
    assert page.status_code == 200
    refused = [r.getMessage() for r in caplog.records if "connection limit is reached" in r.getMessage()]
    assert len(refused) == 2 and all(r.levelno == logging.ERROR for r in caplog.records if "limit" in r.getMessage())
    assert "up to 6 connections" in refused[0] and "STORYLOOP_DB_POOL_SIZE" in refused[0]
    assert "max_connections" in refused[0] and "docs/operations.md" in refused[0]
    assert not [r for r in caplog.records if r.exc_info]  # no traceback


def test_the_app_refuses_to_start_with_a_clear_message_when_postgresql_refuses(pool_settings, postgres_url):
    _limit_connections(postgres_url, 0)
    database = Database.from_settings(pool_settings)
    try:
        with pytest.raises(DatabaseUnavailable) as refused:
            create_app(pool_settings, database)
    finally:
        database.dispose()
    message = str(refused.value)
    assert message.startswith("refusing to start: PostgreSQL refused a new connection: its connection limit is reached")
    assert "too many connections for database" in message  # PostgreSQL's own words, on one line
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


def test_serve_stops_with_the_message_not_a_traceback(pool_settings, postgres_url, monkeypatch):
    from typer.testing import CliRunner

    from app import cli
    from app.config import get_settings

    _limit_connections(postgres_url, 0)
    for name, value in {"STORYLOOP_DATABASE_URL": postgres_url, "STORYLOOP_DATA_DIR": str(pool_settings.data_dir),
                        "STORYLOOP_SECRET_KEY": TEST_SECRET_KEY, "STORYLOOP_DB_ANNOTATION_CONNECTIONS": "4"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    monkeypatch.setattr(cli, "_uvicorn", lambda *args: pytest.fail("served although the database refused"))
    try:
        result = CliRunner().invoke(cli.cli, ["serve"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert "error: refusing to start: PostgreSQL refused a new connection" in result.output
    assert "up to 19 connections" in result.output  # 4 + the pool's default 5 + 10
    assert "Traceback" not in result.output
