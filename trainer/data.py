"""From stored judgements to training data: implied preference pairs with a held-out split.

Every BWS judgement (surplus ones too: nothing a person did is thrown away) becomes its 2k-3 implied
pairs. The held-out split is by judgement, not by pair, so no pair of a held-out judgement leaks into
training.
"""

import random
from dataclasses import dataclass

from sqlalchemy import select

from app.db import Database
from app.models import BwsJudgement, Continuation, Prompt, Task
from app.services.scoring import BwsAnnotation, counting_scores, implied_pairs, pair_margin
from app.services.story_text import completion_text


@dataclass
class PreferencePairs:
    """Columns in the format TRL's RewardTrainer takes: prompt, chosen, rejected."""

    prompt: list[str]
    chosen: list[str]
    rejected: list[str]
    margin: list[float]  # counting-score difference (scoring.pair_margin), as in the pairs export

    def __len__(self) -> int:
        return len(self.prompt)

    def as_columns(self, with_margin: bool = False) -> dict[str, list]:
        columns = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        return {**columns, "margin": self.margin} if with_margin else columns


def load_pairs(database: Database, held_out_fraction: float = 0.2, seed: int = 0) -> tuple[PreferencePairs, PreferencePairs, int]:
    """(train pairs, held-out pairs, number of judgements used)."""
    with database.read() as db:
        judgements = db.execute(
            select(BwsJudgement.id, BwsJudgement.shown_order, BwsJudgement.best_id, BwsJudgement.worst_id, Task.prompt_id)
            .join(Task, Task.id == BwsJudgement.task_id)
            .order_by(BwsJudgement.id)
        ).all()
        needed = {c for j in judgements for c in j.shown_order}
        text = dict(db.execute(select(Continuation.id, Continuation.text).where(Continuation.id.in_(needed))).all()) if needed else {}
        prompts = dict(db.execute(select(Prompt.id, Prompt.text)).all())

    scores = counting_scores(BwsAnnotation(j.id, tuple(j.shown_order), j.best_id, j.worst_id) for j in judgements)
    rng = random.Random(seed)
    held_out_ids = {j.id for j in judgements if rng.random() < held_out_fraction}
    train, held_out = PreferencePairs([], [], [], []), PreferencePairs([], [], [], [])
    for j in judgements:
        split = held_out if j.id in held_out_ids else train
        for winner, loser in implied_pairs(tuple(j.shown_order), j.best_id, j.worst_id):
            split.prompt.append(prompts[j.prompt_id])
            split.chosen.append(completion_text(text[winner]))
            split.rejected.append(completion_text(text[loser]))
            split.margin.append(pair_margin(scores, winner, loser))
    return train, held_out, len(judgements)
