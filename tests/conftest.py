"""Shared fixtures. Database tests run on SQLite and on PostgreSQL.

PostgreSQL: set STORYLOOP_TEST_POSTGRES_URL to a server URL whose role may CREATE DATABASE
(scripts/postgres-for-tests.sh starts one and prints it). Without it PostgreSQL cases are skipped,
except under CI=true, where a missing PostgreSQL is an error.
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import Database
from app.migrate import upgrade_to_head
from app.models import User
from app.services import users

POSTGRES_URL = os.environ.get("STORYLOOP_TEST_POSTGRES_URL", "")
PASSWORD = "correct horse battery"
# Long enough for the app factory, which refuses a key under 32 characters.
TEST_SECRET_KEY = "test-secret-key-long-enough-for-the-app-factory"


def _fresh_postgres_database() -> tuple[str, callable]:
    admin_url = make_url(POSTGRES_URL)
    name = f"storyloop_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must test PostgreSQL: STORYLOOP_TEST_POSTGRES_URL is not set")
        pytest.skip("STORYLOOP_TEST_POSTGRES_URL not set")
    url, drop = _fresh_postgres_database()
    yield url
    drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, data_dir=tmp_path / "data", secret_key=TEST_SECRET_KEY,
                    annotations_per_tuple=3, lease_seconds=600)


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    upgrade_to_head(settings.resolved_database_url)
    db = Database.from_url(settings.resolved_database_url)
    yield db
    db.dispose()


@pytest.fixture
def app(settings: Settings, database: Database):
    from app.main import create_app

    return create_app(settings, database)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def make_user(database: Database, username: str, role: str = "annotator") -> User:
    with database.write() as db:
        return users.create_user(db, username, PASSWORD, role)


def token_headers(client: TestClient, username: str) -> dict[str, str]:
    response = client.post("/api/v1/auth/token", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
def admin_headers(client: TestClient, database: Database) -> dict[str, str]:
    make_user(database, "admin", "admin")
    return token_headers(client, "admin")


@pytest.fixture
def cli_runner(settings: Settings, monkeypatch):
    """Runs `storyloop ...` in this process against the test's database and data folder."""
    from typer.testing import CliRunner

    from app import cli
    from app.config import get_settings

    for name, value in {"STORYLOOP_DATABASE_URL": settings.resolved_database_url,
                        "STORYLOOP_DATA_DIR": str(settings.data_dir), "STORYLOOP_SECRET_KEY": settings.secret_key,
                        "STORYLOOP_DEV_MODE": "false"}.items():
        monkeypatch.setenv(name, value)  # restored afterwards, even where a command sets it itself
    get_settings.cache_clear()

    def run(*args: str):
        return CliRunner().invoke(cli.cli, list(args))

    yield run
    get_settings.cache_clear()
