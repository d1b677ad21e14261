"""storyloop backup: an online copy of the SQLite database that restores with every judgement."""

import threading

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from app.cli import cli
from app.db import Database
from app.migrate import check_schema_current, upgrade_to_head
from app.models import Assignment, BwsJudgement
from app.services.backup import backup_sqlite
from app.services.errors import Invalid
from tests.factories import judge_directly, seed_bws_batch


def _judgements(database: Database) -> set[int]:
    with database.read() as db:
        return set(db.scalars(select(BwsJudgement.id)))


def test_backup_taken_while_the_app_writes_restores_every_judgement_before_it(tmp_path, sqlite_url):
    upgrade_to_head(sqlite_url)
    database = Database.from_url(sqlite_url)
    seed_bws_batch(database, prompts=4, per_prompt=6, required=3)
    judge_directly(database, "before")
    before = _judgements(database)
    assert before

    # Writes go on during the backup: the copy holds every judgement acknowledged before it began.
    writer = threading.Thread(target=lambda: [judge_directly(database, f"during{i}", limit=3) for i in range(5)])
    writer.start()
    size = backup_sqlite(database, tmp_path / "backups" / "copy.db")
    writer.join()
    assert size > 0 and not list((tmp_path / "backups").glob(".*partial"))

    restored = Database.from_url(f"sqlite:///{tmp_path / 'backups' / 'copy.db'}")
    check_schema_current(restored.engine)  # the copy is a complete, current database
    assert before <= _judgements(restored) <= _judgements(database)
    with restored.read() as db:  # each judgement came with its assignment
        assert db.scalar(select(func.count()).select_from(Assignment)) == len(_judgements(restored))


def test_backup_command(tmp_path, sqlite_url, monkeypatch):
    from app.config import get_settings

    upgrade_to_head(sqlite_url)
    database = Database.from_url(sqlite_url)
    seed_bws_batch(database, prompts=2, per_prompt=4, required=1)
    judge_directly(database, "judge")
    monkeypatch.setenv("STORYLOOP_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["backup", str(tmp_path / "b.db")])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert _judgements(Database.from_url(f"sqlite:///{tmp_path / 'b.db'}")) == _judgements(database)


def test_backup_of_postgresql_points_to_pg_dump(database, tmp_path):
    if database.is_sqlite:
        pytest.skip("the PostgreSQL case")
    with pytest.raises(Invalid, match="pg_dump"):
        backup_sqlite(database, tmp_path / "x.db")
