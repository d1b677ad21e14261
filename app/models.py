"""The data model: who judges what, what they said, and which model version wrote each story.

Layers point one way: routes -> services -> models. The trainer reads and writes these tables too.
"""

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every database (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use app.models.utcnow()")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


ROLES = ("annotator", "evaluator", "admin")
TOKEN_NAME_MAX = 100
TASK_KINDS = ("bws", "rating")


# ---------------------------------------------------------------- people


class User(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Crowd participants (app/services/crowd.py): no new task once task_quota judgements are done, nor
    # after work_ends_at. Loaded with the user, so the lease path checks them without a query; None for
    # everybody else, who pay nothing for them.
    task_quota: Mapped[int | None] = mapped_column(Integer)
    work_ends_at: Mapped[datetime | None]


class ApiToken(Base):
    """A bearer token for scripts; only its SHA-256 is stored."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(TOKEN_NAME_MAX), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]  # refused from then on (settings.token_max_days at most after creation)
    # Written at most every LAST_USED_RESOLUTION (app/services/users.py), not on every request of the hot path.
    last_used_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()


class UserSession(Base):
    """A browser login. The signed session cookie carries a random id; only its SHA-256 is stored,
    and a page request is signed in only while this row exists and has not run out (app/deps.py).
    Logout deletes the row; deactivation, a role change and a password change delete a user's rows."""

    __tablename__ = "user_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)  # idle limit; written at most once a minute
    expires_at: Mapped[datetime] = mapped_column(index=True)  # absolute limit; index: expired rows are swept


class Invite(Base):
    __tablename__ = "invite"

    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    used_at: Mapped[datetime | None]


CROWD_PLATFORMS = ("prolific", "mturk")


class CrowdInvite(Base):
    """A reusable sign-in link for a crowd platform's participants (app/services/crowd.py): each
    participant id gets an annotator account without a password, a quota of tasks and a time limit,
    and a completion code when the quota is done."""

    __tablename__ = "crowd_invite"

    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    platform: Mapped[str] = mapped_column(String(16))  # CROWD_PLATFORMS
    task_quota: Mapped[int] = mapped_column(Integer)  # judgements per participant
    session_minutes: Mapped[int | None] = mapped_column(Integer)  # from the participant's first visit
    max_participants: Mapped[int | None] = mapped_column(Integer)  # None: no cap
    completion_code: Mapped[str] = mapped_column(String(64))
    completion_url: Mapped[str] = mapped_column(String(500))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]  # refused from then on


class CrowdParticipant(Base):
    """One platform participant on one crowd link, and the account made for them."""

    __tablename__ = "crowd_participant"

    id: Mapped[int] = mapped_column(primary_key=True)
    invite_id: Mapped[int] = mapped_column(ForeignKey("crowd_invite.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), unique=True)
    participant_id: Mapped[str] = mapped_column(String(64))  # PROLIFIC_PID or MTurk's workerId
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("invite_id", "participant_id", name="uq_crowd_participant_invite_pid"),)


class CrowdVisit(Base):
    """Each time a participant comes through the link, with the platform's ids of that visit."""

    __tablename__ = "crowd_visit"

    id: Mapped[int] = mapped_column(primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("crowd_participant.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[str] = mapped_column(String(64))  # Prolific's STUDY_ID, MTurk's hitId
    session_id: Mapped[str] = mapped_column(String(64))  # Prolific's SESSION_ID, MTurk's assignmentId
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LoginThrottle(Base):
    """Failed logins in the current window, one row per account name and per client address
    (services/logins.py). Kept in the database so every worker process sees the same counts."""

    __tablename__ = "login_throttle"

    # SHA-256 of "account:<name>" or "address:<ip>": fixed width, and a password typed into the
    # username field is not stored in clear.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_ends_at: Mapped[datetime] = mapped_column(index=True)  # index: expired rows are swept


# ---------------------------------------------------------------- stories


class ModelVersion(Base):
    """Whatever wrote continuations: a trained policy, a reward model, or an imported source."""

    __tablename__ = "model_version"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "policy" | "reward" | "source"
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    algorithm: Mapped[str] = mapped_column(String(32), default="")  # pretrain | sft | ppo | reward | import
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    path: Mapped[str | None] = mapped_column(String(500))  # folder in the model store
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    parent: Mapped["ModelVersion | None"] = relationship(remote_side=[id])


class Prompt(Base):
    __tablename__ = "prompt"

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    text: Mapped[str] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)  # the trainer writes for active prompts
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Continuation(Base):
    __tablename__ = "continuation"

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    generation_settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    prompt: Mapped[Prompt] = relationship()
    model_version: Mapped[ModelVersion] = relationship()


# ---------------------------------------------------------------- tasks


class Batch(Base):
    """A set of tasks built together (one import, one design run, one trainer round)."""

    __tablename__ = "batch"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # bws | rating
    seed: Mapped[int] = mapped_column(Integer, default=0)
    annotations_per_task: Mapped[int] = mapped_column(Integer, default=3)
    design: Mapped[dict[str, Any]] = mapped_column(default=dict)  # balance statistics of the design
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Serving order (app/services/tasks.py): an admin's pin, and whether this is the newest trainer
    # round's batch (at most one is). Both are copied into Task.serve_rank, which the lease query reads.
    priority: Mapped[str] = mapped_column(String(16), default="normal", server_default="normal")  # BATCH_PRIORITIES
    is_newest_round: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


BATCH_PRIORITIES = ("up", "normal", "down", "paused")


class Task(Base):
    """One unit of work: a BWS tuple (k continuations of one prompt) or one continuation to rate."""

    __tablename__ = "task"

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batch.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id"))
    required: Mapped[int] = mapped_column(Integer)  # R
    # Both counters change only through conditional UPDATEs of this row, so that concurrent
    # requests can never lease a task to more than R people at once, nor count more than R judgements.
    done_count: Mapped[int] = mapped_column(Integer, default=0)  # counted judgements
    active_leases: Mapped[int] = mapped_column(Integer, default=0)  # assignments still "active"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Denormalised from the batch (app/services/tasks.py keeps them): 0 pinned up, 1 newest round,
    # 2 normal, 3 pinned down, 4 paused (never leased); serve_order spreads a batch's tuples across
    # its prompts (the j-th tuple of the i-th of n prompts: j * n + i).
    serve_rank: Mapped[int] = mapped_column(Integer, default=2, server_default=text("2"))
    serve_order: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    items: Mapped[list["TaskItem"]] = relationship(order_by="TaskItem.position", lazy="selectin")
    prompt: Mapped[Prompt] = relationship()

    # Only tasks with a free slot, in serving order: the next-task query walks this index
    # (rank, least filled, spread across prompts, id) and stops at the first task the user has not seen.
    __table_args__ = (
        Index("ix_task_serve", "serve_rank", text("(done_count + active_leases)"), "serve_order", "id",
              sqlite_where=text("done_count + active_leases < required"),
              postgresql_where=text("done_count + active_leases < required")),
    )


class TaskItem(Base):
    __tablename__ = "task_item"

    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    continuation_id: Mapped[int] = mapped_column(ForeignKey("continuation.id"), index=True)

    continuation: Mapped[Continuation] = relationship(lazy="joined")


class Assignment(Base):
    """A task leased to one annotator. One row per (task, user): nobody gets a task twice."""

    __tablename__ = "assignment"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    # active -> submitted (counted) | surplus (stored, not counted) | skipped | expired;
    # expired -> surplus when the judgement arrives after all.
    status: Mapped[str] = mapped_column(String(16), default="active")
    item_order: Mapped[list[int]] = mapped_column(JSON)  # continuation ids in the order shown
    leased_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    skip_reason: Mapped[str | None] = mapped_column(String(500))

    task: Mapped[Task] = relationship()

    __table_args__ = (
        UniqueConstraint("task_id", "user_id", name="uq_assignment_task_user"),
        Index("ix_assignment_status_expires", "status", "expires_at"),
        Index("ix_assignment_user_status", "user_id", "status"),
    )


class BwsJudgement(Base):
    __tablename__ = "bws_judgement"

    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignment.id"), unique=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    best_id: Mapped[int] = mapped_column(ForeignKey("continuation.id"))
    worst_id: Mapped[int] = mapped_column(ForeignKey("continuation.id"))
    shown_order: Mapped[list[int]] = mapped_column(JSON)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    is_surplus: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


RATING_DIMENSIONS = ("grammar", "creativity", "consistency", "plot")


class Rating(Base):
    __tablename__ = "rating"

    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignment.id"), unique=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    continuation_id: Mapped[int] = mapped_column(ForeignKey("continuation.id"), index=True)
    grammar: Mapped[int] = mapped_column(Integer)
    creativity: Mapped[int] = mapped_column(Integer)
    consistency: Mapped[int] = mapped_column(Integer)
    plot: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    is_surplus: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


# ---------------------------------------------------------------- gold checks (app/services/gold.py)


class GoldItem(Base):
    """A task whose answer is known, to check annotators with: served to everyone once, at the gold
    rate, instead of by the serving order (its task's serve_rank is GOLD_RANK meanwhile). A BWS
    tuple names its known best and/or worst; a rating item names a range per dimension."""

    __tablename__ = "gold_item"

    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), primary_key=True)
    best_id: Mapped[int | None] = mapped_column(ForeignKey("continuation.id"))
    worst_id: Mapped[int | None] = mapped_column(ForeignKey("continuation.id"))
    rating_ranges: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {dimension: [low, high]}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AnnotatorExclusion(Base):
    """An annotator whose judgements exports and training leave out, until an admin includes them again
    (the row is deleted then)."""

    __tablename__ = "annotator_exclusion"

    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True)
    excluded_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id", ondelete="SET NULL"))
    excluded_at: Mapped[datetime] = mapped_column(default=utcnow)
    note: Mapped[str] = mapped_column(String(500), default="")  # e.g. the gold accuracy at the time


class AppSetting(Base):
    """Settings an admin changes at run time (the gold checks' rate and thresholds), as JSON by key."""

    __tablename__ = "app_setting"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------- trainer


class TrainerLease(Base):
    """One row per named lock; the trainer holding it renews heartbeat_at. Only one trainer runs."""

    __tablename__ = "trainer_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime]


class TrainingRound(Base):
    __tablename__ = "training_round"

    id: Mapped[int] = mapped_column(primary_key=True)
    # requested -> running -> done | failed
    status: Mapped[str] = mapped_column(String(16), default="requested")
    trigger: Mapped[str] = mapped_column(String(32), default="auto")  # auto | admin | cli
    phase: Mapped[str] = mapped_column(String(32), default="")
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    phase_started_at: Mapped[datetime | None]
    judgements_used: Mapped[int] = mapped_column(Integer, default=0)
    reward_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    policy_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batch.id"))
    # ppo | alol | dpo | bakeoff; None until the trainer starts it with its configured default
    algorithm: Mapped[str | None] = mapped_column(String(32))
    # a bake-off's plan and progress: {"algorithms": [...], "policies": {algorithm: version id}, "campaign_id": id}
    bakeoff: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class TrainingLog(Base):
    """Per-step metrics of a round (PPO score, KL, losses...; reward-model accuracy)."""

    __tablename__ = "training_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("training_round.id"), index=True)
    phase: Mapped[str] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)



# ---------------------------------------------------------------- evaluation campaigns


class Campaign(Base):
    """A blind evaluation: one continuation per (model version, prompt), each rated by `required` evaluators.

    waiting_for_generation -> open (its eval batch is built) -> closed; "failed" when nothing could be built.
    """

    __tablename__ = "campaign"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    required: Mapped[int] = mapped_column(Integer, default=2)  # evaluators per item
    seed: Mapped[int] = mapped_column(Integer, default=0)  # order of the items
    status: Mapped[str] = mapped_column(String(32), default="waiting_for_generation")
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batch.id"))
    note: Mapped[str] = mapped_column(Text, default="")  # e.g. prompts dropped because generation failed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CampaignVersion(Base):
    __tablename__ = "campaign_version"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"), primary_key=True)


class CampaignPrompt(Base):
    __tablename__ = "campaign_prompt"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"), primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id"), primary_key=True)


class GenerationRequest(Base):
    """A continuation a campaign needs from a version that has none for that prompt; the trainer writes it."""

    __tablename__ = "generation_request"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending | done | failed
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    done_at: Mapped[datetime | None]
