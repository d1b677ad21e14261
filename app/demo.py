"""Demo mode: fill an empty installation with stories, tasks and accounts, so a newcomer sees the whole flow.

    info = seed_demo(database, settings)
    print(info.summary())

Idempotent: when the demo prompts already exist it changes nothing and only reports what is there.
Passwords are random and known only at creation (only their hashes are stored); when an account
already exists its password is left alone and the info says so.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.config import Settings
from app.db import Database
from app.demo_data import SOURCES, demo_prompts
from app.models import Continuation, ModelVersion, Prompt, Task, User
from app.services import tasks as task_service
from app.services import users as user_service

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
    tasks: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            ("Demo data created: " if self.created else "Demo data already present (nothing changed): ")
            + f"{self.prompts} prompts, {self.continuations} continuations, {self.tasks} tasks."
        ]
        if self.admin_password is not None:
            lines.append(f"  admin password: {self.admin_password}")
        for username, password in self.accounts.items():
            lines.append(f"  {username} password: {password}")
        if self.existing_users:
            lines.append(f"  existing accounts kept, passwords unchanged: {', '.join(self.existing_users)}")
        if self.accounts or self.admin_password is not None:
            lines.append("  These passwords are shown only now; write them down.")
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


class _AlreadySeeded(Exception):
    pass


def _demo_ids() -> list[str]:
    return [p.external_id for p in demo_prompts()]


def _existing_info(database: Database) -> DemoInfo:
    ids = _demo_ids()
    with database.read() as db:
        prompt_ids = list(db.scalars(select(Prompt.id).where(Prompt.external_id.in_(ids))))
        continuations = db.scalar(
            select(func.count()).select_from(Continuation).where(Continuation.prompt_id.in_(prompt_ids))
        )
        n_tasks = db.scalar(select(func.count()).select_from(Task).where(Task.prompt_id.in_(prompt_ids)))
        existing = list(db.scalars(select(User.username).where(User.username.in_([u for u, _ in DEMO_ACCOUNTS]))))
    return DemoInfo(
        created=False, admin_password=None, existing_users=sorted(existing), prompts=len(prompt_ids),
        continuations=continuations or 0, tasks=n_tasks or 0,
        notes=["The demo was seeded before; its passwords were printed then and are not stored."],
    )


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
            bws = task_service.build_bws_batch(
                db, BWS_BATCH_NAME, grouped, seed=DEMO_SEED, required=settings.annotations_per_tuple,
                k=settings.tuple_size, factor=settings.design_factor,
            )
            # Ratings: one continuation from each of the first 12 prompts, cycling through the
            # writers so each writer is rated about equally often.
            names = list(SOURCES)
            rating_ids = [by_source[names[i % len(names)]][i] for i in range(min(RATING_TASKS, len(prompt_ids)))]
            rating = task_service.build_rating_batch(
                db, RATING_BATCH_NAME, rating_ids, required=settings.annotations_per_tuple
            )
            n_tasks = db.scalar(
                select(func.count()).select_from(Task).where(Task.batch_id.in_([bws.id, rating.id]))
            )

            info = DemoInfo(created=True, admin_password=None, prompts=len(prompt_ids),
                            continuations=sum(len(v) for v in by_source.values()), tasks=n_tasks or 0)
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
