"""Migrations build exactly the models' schema, go down and up again, and the app refuses an old schema.

Runs on SQLite and on PostgreSQL (the `database_url` fixture in conftest.py).
"""

from datetime import timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, select, text

from app.config import Settings
from app.db import Database
from app.migrate import SchemaBehindError, alembic_config, head_revision, upgrade_to_head
from app.models import ApiToken, Base, utcnow
from app.security import token_digest
from tests.conftest import TEST_SECRET_KEY

# SQLAlchemy cannot reflect expression indexes on SQLite (ix_task_serve); PostgreSQL compares it.
pytestmark = [pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index"),
              pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")]


def _current_revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _schema_differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_from_empty_gives_the_models_schema(database_url):
    upgrade_to_head(database_url)
    assert _current_revision(database_url) == head_revision()
    assert _schema_differences(database_url) == []
    assert _tables(database_url) == set(Base.metadata.tables) | {"alembic_version"}


def test_downgrade_to_base_and_upgrade_again(database_url):
    config = alembic_config(database_url)
    upgrade_to_head(database_url)
    command.downgrade(config, "base")
    assert _current_revision(database_url) is None
    assert _tables(database_url) <= {"alembic_version"}, "downgrade left tables behind"

    upgrade_to_head(database_url)
    assert _current_revision(database_url) == head_revision()
    assert _schema_differences(database_url) == []


def test_every_revision_steps_down_and_up(database_url):
    """Each migration's downgrade undoes its upgrade: walk the chain down one step at a time."""
    config = alembic_config(database_url)
    revisions = list(ScriptDirectory.from_config(config).walk_revisions("base", "heads"))  # newest first
    assert len(revisions) >= 1
    upgrade_to_head(database_url)
    for revision in revisions:
        command.downgrade(config, "-1")
        assert _current_revision(database_url) == revision.down_revision
        command.upgrade(config, "+1")
        assert _current_revision(database_url) == revision.revision
        command.downgrade(config, "-1")
    assert _current_revision(database_url) is None


def _create_app_on(database: Database, database_url: str, tmp_path):
    from app.main import create_app

    return create_app(Settings(database_url=database_url, data_dir=tmp_path / "data", secret_key=TEST_SECRET_KEY), database)


def _create_app(database_url: str, tmp_path):
    database = Database.from_url(database_url)
    try:
        return _create_app_on(database, database_url, tmp_path)
    finally:
        database.engine.dispose()


def test_app_refuses_an_empty_database(database_url, tmp_path):
    with pytest.raises(SchemaBehindError, match="storyloop db upgrade"):
        _create_app(database_url, tmp_path)


def test_app_refuses_a_schema_behind_head(database_url, tmp_path):
    config = alembic_config(database_url)
    upgrade_to_head(database_url)
    command.downgrade(config, "-1")  # one revision behind (with a single revision: nothing at all)
    with pytest.raises(SchemaBehindError):
        _create_app(database_url, tmp_path)

    upgrade_to_head(database_url)
    app = _create_app(database_url, tmp_path)  # at head it starts
    assert app.state.database is not None


def test_upgrade_from_0002_gives_existing_tasks_a_serving_order(database_url):
    """0003 (serving order): existing batches become normal, none the newest round's; existing tasks
    get rank normal and a serve_order that spreads each batch across its prompts; the lease query's
    index is there."""
    from sqlalchemy import text

    config = alembic_config(database_url)
    command.upgrade(config, "0002")
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO prompt (id, text, is_active, created_at) VALUES "
                              "(1, 'a', true, CURRENT_TIMESTAMP), (2, 'b', true, CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO batch (id, name, kind, seed, annotations_per_task, design, created_at) VALUES "
                              "(1, 'old', 'bws', 0, 3, '{}', CURRENT_TIMESTAMP), (2, 'older', 'bws', 0, 3, '{}', CURRENT_TIMESTAMP)"))
            # Batch 1: prompt 1 has tasks 1-3, prompt 2 tasks 4-5 (made prompt by prompt, as build_bws_batch did).
            for task_id, batch_id, prompt_id in [(1, 1, 1), (2, 1, 1), (3, 1, 1), (4, 1, 2), (5, 1, 2), (6, 2, 2)]:
                conn.execute(text("INSERT INTO task (id, batch_id, kind, prompt_id, required, done_count, active_leases, "
                                  "created_at) VALUES (:id, :batch, 'bws', :prompt, 3, 0, 0, CURRENT_TIMESTAMP)"),
                             {"id": task_id, "batch": batch_id, "prompt": prompt_id})
        upgrade_to_head(database_url)
        with engine.connect() as conn:
            batches = conn.execute(text("SELECT id, priority, is_newest_round FROM batch ORDER BY id")).all()
            tasks = conn.execute(text("SELECT id, serve_rank, serve_order FROM task ORDER BY id")).all()
            indexes = {i["name"] for i in inspect(conn).get_indexes("task")}
            if engine.dialect.name == "sqlite":  # SQLAlchemy does not reflect expression indexes on SQLite
                indexes |= set(conn.scalars(text("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'task'")))
    finally:
        engine.dispose()
    assert [tuple(b) for b in batches] == [(1, "normal", False), (2, "normal", False)]
    # j * n_prompts + prompt index: prompt 1's tuples 0, 2, 4; prompt 2's 1, 3; batch 2's only one 0.
    assert [tuple(t) for t in tasks] == [(1, 2, 0), (2, 2, 2), (3, 2, 4), (4, 2, 1), (5, 2, 3), (6, 2, 0)]
    assert "ix_task_serve" in indexes and "ix_task_free" not in indexes


def test_upgrade_from_0004_gives_existing_tokens_30_days(database_url, tmp_path):
    """0005: tokens made before the upgrade keep working, and expire 30 days after it."""
    config = alembic_config(database_url)
    command.upgrade(config, "0004")
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO user_account (id, username, password_hash, role, is_active, created_at) "
                              "VALUES (1, 'old', 'x', 'annotator', true, CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO api_token (id, user_id, token_hash, name, created_at) "
                              "VALUES (1, 1, :hash, 'old script', CURRENT_TIMESTAMP)"), {"hash": token_digest("old-token")})
    finally:
        engine.dispose()
    upgraded_at = utcnow()
    upgrade_to_head(database_url)

    database = Database.from_url(database_url)
    try:
        app = _create_app_on(database, database_url, tmp_path)
        with TestClient(app) as client:
            headers = {"Authorization": "Bearer old-token"}
            assert client.get("/api/v1/me", headers=headers).json()["username"] == "old"
            [listed] = client.get("/api/v1/me/tokens", headers=headers).json()
        with database.read() as db:
            expires_at = db.scalar(select(ApiToken.expires_at))
    finally:
        database.engine.dispose()
    assert listed["name"] == "old script"
    assert timedelta(days=30) <= expires_at - upgraded_at < timedelta(days=30, minutes=5)
