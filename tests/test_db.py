"""Database.run_write: each job's writes stand or fall alone, and on SQLite jobs queued together
share one transaction (group commit)."""

import asyncio

import pytest
from sqlalchemy import event, func, insert, select

from app.db import Database
from app.models import Prompt, utcnow


class Refused(Exception):
    pass


def _add_prompt(text: str, fail: bool = False):
    def job(conn):
        conn.execute(insert(Prompt).values(text=text, is_active=True, created_at=utcnow()))
        if fail:
            raise Refused(text)
        return conn.scalar(select(func.count()).select_from(Prompt).where(Prompt.text == text))

    return job


def _count_commits(database: Database) -> list[int]:
    commits = [0]
    event.listen(database.engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
    return commits


def test_a_failing_job_undoes_only_its_own_writes(database: Database):
    async def run_all():
        return await asyncio.gather(
            database.run_write(_add_prompt("first")),
            database.run_write(_add_prompt("refused", fail=True)),
            database.run_write(_add_prompt("third")),
            return_exceptions=True,
        )

    first, refused, third = asyncio.run(run_all())
    assert first == 1 and third == 1
    assert isinstance(refused, Refused)
    with database.read() as db:
        assert sorted(db.scalars(select(Prompt.text))) == ["first", "third"]


def test_sqlite_jobs_queued_together_share_one_commit(sqlite_url: str):
    from app.migrate import upgrade_to_head

    upgrade_to_head(sqlite_url)
    database = Database.from_url(sqlite_url)
    commits = _count_commits(database)

    async def run_all():
        return await asyncio.gather(*(database.run_write(_add_prompt(f"p{i}", fail=i == 3)) for i in range(10)),
                                    return_exceptions=True)

    results = asyncio.run(run_all())
    assert sum(isinstance(r, Refused) for r in results) == 1
    assert commits[0] == 1  # ten jobs, one transaction
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(Prompt)) == 9
    database.engine.dispose()


@pytest.mark.parametrize("jobs", [1, 50])
def test_results_are_handed_back_only_after_the_commit(sqlite_url: str, jobs: int):
    """What a job returns is visible to a new connection by the time run_write returns."""
    from app.migrate import upgrade_to_head

    upgrade_to_head(sqlite_url)
    database = Database.from_url(sqlite_url)
    other = Database.from_url(sqlite_url)

    async def run_all():
        async def one(i):
            await database.run_write(_add_prompt(f"p{i}"))
            with other.read() as db:  # a separate connection sees only committed data
                return db.scalar(select(func.count()).select_from(Prompt).where(Prompt.text == f"p{i}"))

        return await asyncio.gather(*(one(i) for i in range(jobs)))

    assert asyncio.run(run_all()) == [1] * jobs
    database.engine.dispose()
    other.engine.dispose()
