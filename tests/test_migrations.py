"""Migrations build exactly the models' schema, go down and up again, and the app refuses an old schema.

Runs on SQLite and on PostgreSQL (the `database_url` fixture in conftest.py).
"""

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from app.config import Settings
from app.db import Database
from app.migrate import SchemaBehindError, alembic_config, head_revision, upgrade_to_head
from app.models import Base


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


def _create_app(database_url: str, tmp_path):
    from app.main import create_app

    database = Database.from_url(database_url)
    try:
        return create_app(Settings(database_url=database_url, data_dir=tmp_path / "data", secret_key="test"), database)
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
