"""Demo mode: fill an empty installation with stories, tasks and accounts, so a newcomer sees the whole flow.

    info = seed_demo(database, settings)
    keep_accounts(info, accounts_path)
    print(demo_report(info, accounts_path))

Idempotent: when the demo prompts already exist it changes nothing and only reports what is there.
Passwords are random; the database stores only their hashes, so `keep_accounts` writes the new ones to
a file in the data folder (owner-only) for `demo_report` to show again on a later run. When an account
already exists its password is left alone and the info says so.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.demo_data import SOURCES, demo_prompts
from app.models import Batch, Continuation, ModelVersion, Prompt, Task, User
from app.services import tasks as task_service
from app.services import users as user_service
from app.words import plural

DEMO_ACCOUNTS: tuple[tuple[str, str], ...] = (
    ("admin", "admin"),
    ("annotator1", "annotator"),
    ("annotator2", "annotator"),
    ("evaluator1", "evaluator"),
)
BWS_BATCH_NAME = "demo: best-worst tuples"
RATING_BATCH_NAME = "demo: ratings"
RATING_TASKS = 12
DEMO_SEED = 0


@dataclass
class DemoInfo:
    created: bool  # False: the demo was already there and nothing was changed
    admin_password: str | None  # None: the admin account existed before (password unchanged)
    accounts: dict[str, str] = field(default_factory=dict)  # new non-admin accounts: username -> password
    existing_users: list[str] = field(default_factory=list)  # demo usernames that already existed
    prompts: int = 0
    continuations: int = 0
    bws_tuples: int = 0
    rating_tasks: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return self.bws_tuples + self.rating_tasks

    @property
    def new_accounts(self) -> dict[str, str]:
        """The accounts this run created, admin first: username -> password."""
        admin = {"admin": self.admin_password} if self.admin_password is not None else {}
        return {**admin, **self.accounts}

    def summary(self) -> str:
        """What is in the database (counted there, not assumed) and which accounts were made or kept."""
        counts = (f"{plural(self.prompts, 'prompt')}, {plural(self.continuations, 'continuation')}, "
                  f"{plural(self.bws_tuples, 'best-worst tuple')}, {plural(self.rating_tasks, 'rating task')}.")
        lines = [("Demo data created: " if self.created
                  else "Demo data already present (nothing changed); the database holds ") + counts]
        lines.extend(f"  {username} password: {password}" for username, password in self.new_accounts.items())
        if self.existing_users:
            lines.append(f"  existing accounts kept, passwords unchanged: {', '.join(self.existing_users)}")
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


def keep_accounts(info: DemoInfo, path: Path) -> None:
    """Writes the passwords of the accounts this run created to `path` (owner-only), one
    "username password" a line, so that a later `storyloop demo` can show them again."""
    if info.created:
        path.touch(mode=0o600)
        path.chmod(0o600)  # before the passwords go in (touch leaves an existing file's mode alone)
        path.write_text("".join(f"{username} {password}\n" for username, password in info.new_accounts.items()))


def demo_report(info: DemoInfo, accounts_path: Path) -> str:
    """What `storyloop demo` prints: the summary and where the passwords are, true on every run."""
    lines = [info.summary()]
    kept = _read_accounts(accounts_path) if accounts_path.exists() else None
    if info.created and info.new_accounts:
        lines.append(f"  These passwords are also kept in {accounts_path} (readable by you only).")
    elif not info.created and kept:
        lines.append(f"Demo accounts, as kept in {accounts_path} when the demo was seeded "
                     "(a password changed since then is not updated there):")
        lines.extend(f"  {username} password: {password}" for username, password in kept)
    elif not info.created and kept is None:
        lines.append(f"  {accounts_path} is missing, and the database keeps only password hashes: to start "
                     "afresh with new passwords, remove the database and run `storyloop demo` again.")
    return "\n".join(lines)


def _read_accounts(path: Path) -> list[tuple[str, str]]:
    pairs = (line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)
    return [(username, password) for username, password in pairs]


class _AlreadySeeded(Exception):
    pass


def _demo_ids() -> list[str]:
    return [p.external_id for p in demo_prompts()]


def _demo_counts(db: Session) -> dict[str, int]:
    """The demo's own rows as the database holds them: its prompts, the demo writers' continuations
    and the tasks of its two batches (the trainer's stories and tuples on demo prompts are not counted)."""
    demo_prompt = Prompt.external_id.in_(_demo_ids())
    continuations = (select(func.count()).select_from(Continuation)
                     .join(Prompt, Prompt.id == Continuation.prompt_id)
                     .join(ModelVersion, ModelVersion.id == Continuation.model_version_id)
                     .where(demo_prompt, ModelVersion.name.in_(list(SOURCES))))

    def tasks(kind: str, batch_name: str):
        return (select(func.count()).select_from(Task).join(Batch, Batch.id == Task.batch_id)
                .where(Batch.kind == kind, Batch.name == batch_name))

    return {"prompts": db.scalar(select(func.count()).select_from(Prompt).where(demo_prompt)) or 0,
            "continuations": db.scalar(continuations) or 0,
            "bws_tuples": db.scalar(tasks("bws", BWS_BATCH_NAME)) or 0,
            "rating_tasks": db.scalar(tasks("rating", RATING_BATCH_NAME)) or 0}


def _database_counts(db: Session) -> dict[str, int]:
    """Everything the database holds now: the demo's rows plus what the trainer and admins added since."""
    def tasks(kind: str):
        return select(func.count()).select_from(Task).where(Task.kind == kind)

    return {"prompts": db.scalar(select(func.count()).select_from(Prompt)) or 0,
            "continuations": db.scalar(select(func.count()).select_from(Continuation)) or 0,
            "bws_tuples": db.scalar(tasks("bws")) or 0, "rating_tasks": db.scalar(tasks("rating")) or 0}


def _existing_info(database: Database) -> DemoInfo:
    """A later run changes nothing and reports the database as it is (the trainer's stories and tuples included)."""
    with database.read() as db:
        existing = list(db.scalars(select(User.username).where(User.username.in_([u for u, _ in DEMO_ACCOUNTS]))))
        return DemoInfo(created=False, admin_password=None, existing_users=sorted(existing), **_database_counts(db))


def seed_demo(database: Database, settings: Settings, *, admin_password: str | None = None) -> DemoInfo:
    """Create the demo sources, prompts, continuations, a BWS batch, a rating batch and accounts.

    `admin_password` sets the admin's password (when the admin is created); otherwise a random
    one is made. Does nothing but report when the demo prompts already exist.
    """
    if admin_password is not None and len(admin_password) < user_service.MIN_PASSWORD:
        raise ValueError(f"admin password must have at least {user_service.MIN_PASSWORD} characters")
    data = demo_prompts()
    ids = [p.external_id for p in data]
    try:
        with database.write() as db:
            if db.scalar(select(func.count()).select_from(Prompt).where(Prompt.external_id.in_(ids))):
                raise _AlreadySeeded
            # Sources: one ModelVersion per writer (reused if some other run created it already).
            source_ids: dict[str, int] = {}
            for name, meta in SOURCES.items():
                version = db.scalar(select(ModelVersion).where(ModelVersion.name == name))
                if version is None:
                    version = ModelVersion(name=name, kind="source", algorithm="import",
                                           settings={"demo": True, **meta})
                    db.add(version)
                    db.flush()
                source_ids[name] = version.id

            prompt_rows: list[Prompt] = []
            by_source: dict[str, list[int]] = {name: [] for name in SOURCES}
            for item in data:
                prompt = Prompt(external_id=item.external_id, text=item.text)
                db.add(prompt)
                db.flush()
                prompt_rows.append(prompt)
                for cont in item.continuations:
                    row = Continuation(
                        prompt_id=prompt.id, model_version_id=source_ids[cont.source], text=cont.text,
                        external_id=f"{item.external_id}-{cont.source.removeprefix('demo-')}",
                        generation_settings={"demo": True, "writer": cont.source, "template": cont.template},
                    )
                    db.add(row)
                    db.flush()
                    by_source[cont.source].append(row.id)

            prompt_ids = [p.id for p in prompt_rows]
            grouped = task_service.continuations_by_prompt(db, prompt_ids=prompt_ids)
            task_service.build_bws_batch(
                db, BWS_BATCH_NAME, grouped, seed=DEMO_SEED, required=settings.annotations_per_tuple,
                k=settings.tuple_size, factor=settings.design_factor,
            )
            # Ratings: one continuation from each of the first RATING_TASKS prompts, cycling through the
            # writers so each writer is rated about equally often.
            names = list(SOURCES)
            rating_ids = [by_source[names[i % len(names)]][i] for i in range(min(RATING_TASKS, len(prompt_ids)))]
            task_service.build_rating_batch(
                db, RATING_BATCH_NAME, rating_ids, required=settings.annotations_per_tuple
            )
            db.flush()
            info = DemoInfo(created=True, admin_password=None, **_demo_counts(db))
            for username, role in DEMO_ACCOUNTS:
                if db.scalar(select(User.id).where(User.username == username)) is not None:
                    info.existing_users.append(username)
                    if username == "admin" and admin_password:
                        info.notes.append("the admin account already existed; the given admin password was not applied")
                    continue
                password = admin_password if (username == "admin" and admin_password) else secrets.token_urlsafe(9)
                user_service.create_user(db, username, password, role)
                if username == "admin":
                    info.admin_password = password
                else:
                    info.accounts[username] = password
            if settings.tuple_size != 4:
                info.notes.append(f"tuples hold {settings.tuple_size} continuations (settings.tuple_size)")
            return info
    except _AlreadySeeded:
        return _existing_info(database)
    except IntegrityError:
        # Another process seeded the demo at the same moment and won; report what it made.
        info = _existing_info(database)
        if not info.prompts:
            raise
        return info
