"""Training rounds are numbered from 0 in the order they were asked for: round 0 is the base policy's
(it writes the first stories), round N the N-th after it. Every page, log, batch and version name uses
these numbers; the database id stays the key in URLs and the API."""

from sqlalchemy import func, select

from app.models import TrainingRound


def round_numbers(db) -> dict[int, int]:
    """{round id: round number} of every round."""
    return {round_id: n for n, round_id in enumerate(db.scalars(select(TrainingRound.id).order_by(TrainingRound.id)))}


def round_number(db, round_id: int) -> int:
    return db.scalar(select(func.count()).select_from(TrainingRound).where(TrainingRound.id < round_id))
