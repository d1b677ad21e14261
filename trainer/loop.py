"""The trainer process: holds the one-trainer lease, resumes an interrupted round, then polls.

A round starts when an admin asks for one (a "requested" row) or by itself: round 0 (the base writes
its stories) as soon as there are active prompts; later rounds once settings.trainer_min_newest_judgements
judgements have arrived on the newest round's tuples (trainer_trigger "newest", the default), or once
trainer_min_new_judgements judgements of any batch have arrived since the last round ("any").
"""

import logging
import time
import traceback

from sqlalchemy import func, select

from app.config import Settings
from app.db import Database
from app.models import BwsJudgement, Prompt, TrainingRound, utcnow
from trainer import model_store
from trainer.config import TrainerSettings
from trainer.eval_generation import fulfil_generation_requests
from trainer.lease import Heartbeat, holder_name, release, try_acquire
from trainer.rounds import judgements_since_last_round, newest_round_judgements, number_of, reference_policy, run_round

log = logging.getLogger("storyloop.trainer")


class TrainerBusy(RuntimeError):
    pass


def round_due(database: Database, settings: Settings) -> bool:
    """Whether enough has happened for an automatic round (see Settings.trainer_trigger). After a failed
    round, not before new judgements arrive: a round that failed on the same data would fail again."""
    with database.read() as db:
        last = db.scalar(select(TrainingRound).order_by(TrainingRound.id.desc()).limit(1))
        newest_judgement = db.scalar(select(func.max(BwsJudgement.created_at)))
    if last is not None and last.status == "failed" and (newest_judgement is None or newest_judgement <= last.finished_at):
        return False
    on_newest = newest_round_judgements(database)
    if reference_policy(database) is None or on_newest is None:
        return _has_active_prompts(database)  # round 0: the base writes its stories; no judgements needed
    if settings.trainer_trigger == "newest":
        return on_newest >= settings.trainer_min_newest_judgements
    now, used = judgements_since_last_round(database)
    new = now - used
    return now > 0 and new >= settings.trainer_min_new_judgements and new >= settings.trainer_min_new_fraction * max(used, 1)


def _has_active_prompts(database: Database) -> bool:
    with database.read() as db:
        return db.scalar(select(Prompt.id).where(Prompt.is_active).limit(1)) is not None


def next_round_id(database: Database, settings: Settings, auto: bool = True) -> int | None:
    """An interrupted or requested round, else a new automatic one when one is due."""
    with database.write() as db:
        pending = db.scalar(select(TrainingRound).where(TrainingRound.status.in_(("running", "requested")))
                            .order_by(TrainingRound.id).limit(1))
        if pending is not None:
            return pending.id
    if not auto or not round_due(database, settings):
        return None
    trigger = "base" if reference_policy(database) is None else "auto"  # round 0 needs no judgements
    with database.write() as db:
        r = TrainingRound(status="requested", trigger=trigger)
        db.add(r)
        db.flush()
        return r.id


def run_one(database: Database, settings: Settings, cfg: TrainerSettings, round_id: int, echo: bool = True) -> bool:
    """Runs a round and records success or failure on it. Returns True on success."""
    number = number_of(database, round_id)
    started = time.monotonic()
    log.info("starting round %s", number)
    try:
        run_round(database, settings, cfg, round_id, echo)
        log.info("round %s done in %.0f s", number, time.monotonic() - started)
        return True
    except Exception as exc:  # the round fails; the trainer keeps serving later rounds
        log.error("round %s failed after %.0f s: %s", number, time.monotonic() - started, exc)
        with database.write() as db:
            r = db.get(TrainingRound, round_id)
            r.status, r.error, r.finished_at = "failed", f"{exc}\n{traceback.format_exc(limit=5)}", utcnow()
        return False


def acquire_or_raise(database: Database, holder: str) -> None:
    other = try_acquire(database, holder)
    if other is not None:
        raise TrainerBusy(f"another trainer ({other}) holds the lease; only one trainer runs at a time")


def train_once(database: Database, settings: Settings, cfg: TrainerSettings, trigger: str = "cli") -> int:
    """One round now (resuming an interrupted one first). Returns the round id."""
    holder = holder_name()
    acquire_or_raise(database, holder)
    try:
        model_store.clean_incomplete(settings.model_store, database)
        with Heartbeat(database, holder):
            round_id = next_round_id(database, settings, auto=False)
            if round_id is None:
                with database.write() as db:
                    r = TrainingRound(status="requested", trigger=trigger)
                    db.add(r)
                    db.flush()
                    round_id = r.id
            if not run_one(database, settings, cfg, round_id):
                with database.read() as db:
                    raise RuntimeError(db.get(TrainingRound, round_id).error)
            return round_id
    finally:
        release(database, holder)


def serve_forever(database: Database, settings: Settings, cfg: TrainerSettings, max_rounds: int | None = None) -> None:
    """The background trainer. Waits while another trainer holds the lease."""
    holder = holder_name()
    while (other := try_acquire(database, holder)) is not None:
        log.warning("another trainer (%s) is running; waiting for its lease to expire", other)
        time.sleep(settings.trainer_poll_seconds)
    log.info("trainer %s started; polling every %ss", holder, settings.trainer_poll_seconds)
    rounds = 0
    try:
        model_store.clean_incomplete(settings.model_store, database)
        with Heartbeat(database, holder) as heartbeat:
            while not heartbeat.lost.is_set() and (max_rounds is None or rounds < max_rounds):
                fulfil_generation_requests(database, settings, cfg)  # continuations evaluation campaigns wait for
                round_id = next_round_id(database, settings)
                if round_id is None:
                    time.sleep(settings.trainer_poll_seconds)
                    continue
                run_one(database, settings, cfg, round_id)
                rounds += 1
            if heartbeat.lost.is_set():
                log.error("lost the trainer lease to another process; stopping")
    finally:
        release(database, holder)
