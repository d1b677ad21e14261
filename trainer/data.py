"""From stored judgements to training data: implied preference pairs with a held-out split.

Every BWS judgement (surplus ones too: nothing a person did is thrown away) becomes its 2k-3 implied
pairs, except those an admin left out: judgements by excluded annotators, and those on gold tasks
(app/services/gold.py, as in the exports). The held-out split is by judgement, not by pair, and fixed per judgement across rounds, so no
pair of a held-out judgement leaks into training, not even through a warm-started reward model.
Training pairs are split into those of judgements new since the previous reward model and the rest,
so a round can train on the new pairs plus a sample of the old (a cost that does not grow with history).
"""

import random
from dataclasses import dataclass

from sqlalchemy import select

from app.db import Database
from app.models import BwsJudgement, Continuation, Prompt, Task
from app.services.gold import usable
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


def is_held_out(judgement_id: int, fraction: float, seed: int = 0) -> bool:
    """A judgement's split, the same in every round, so a reward model warm-started from the previous
    round's never saw a held-out judgement in any round."""
    return random.Random(f"held-out:{seed}:{judgement_id}").random() < fraction


@dataclass
class RoundPairs:
    """The implied pairs of all stored judgements, split for one round of reward training."""

    new: PreferencePairs  # training pairs of judgements after `since_judgement_id`
    old: PreferencePairs  # training pairs of earlier judgements
    held_out: PreferencePairs  # pairs of held-out judgements, old and new
    judgements: int  # judgements in all
    last_judgement_id: int  # the newest judgement included (0: none)

    def train_sample(self, old_per_new: float | None, seed: int) -> PreferencePairs:
        """New pairs plus a random sample of old ones (old_per_new per new pair; None: all old pairs)."""
        n_old = len(self.old) if old_per_new is None else min(len(self.old), round(old_per_new * len(self.new)))
        picked = sorted(random.Random(seed).sample(range(len(self.old)), n_old))
        return PreferencePairs(
            *(new + [old[i] for i in picked] for new, old in
              ((self.new.prompt, self.old.prompt), (self.new.chosen, self.old.chosen),
               (self.new.rejected, self.old.rejected), (self.new.margin, self.old.margin))))


def load_pairs(database: Database, held_out_fraction: float = 0.2, seed: int = 0,
               since_judgement_id: int = 0) -> RoundPairs:
    """Every judgement's implied pairs, split into held-out (stable per judgement) and training pairs,
    the latter into those of judgements newer than `since_judgement_id` and the rest."""
    with database.read() as db:
        judgements = db.execute(
            select(BwsJudgement.id, BwsJudgement.shown_order, BwsJudgement.best_id, BwsJudgement.worst_id, Task.prompt_id)
            .join(Task, Task.id == BwsJudgement.task_id)
            .where(usable(BwsJudgement))
            .order_by(BwsJudgement.id)
        ).all()
        needed = {c for j in judgements for c in j.shown_order}
        text = dict(db.execute(select(Continuation.id, Continuation.text).where(Continuation.id.in_(needed))).all()) if needed else {}
        prompts = dict(db.execute(select(Prompt.id, Prompt.text)).all())

    # margins come from the training judgements only: a held-out judgement must not reach training
    # through the counting scores of the items it judged
    scores = counting_scores(BwsAnnotation(j.id, tuple(j.shown_order), j.best_id, j.worst_id) for j in judgements
                             if not is_held_out(j.id, held_out_fraction, seed))
    pairs = RoundPairs(PreferencePairs([], [], [], []), PreferencePairs([], [], [], []), PreferencePairs([], [], [], []),
                       judgements=len(judgements), last_judgement_id=judgements[-1].id if judgements else 0)
    for j in judgements:
        if is_held_out(j.id, held_out_fraction, seed):
            split = pairs.held_out
        else:
            split = pairs.new if j.id > since_judgement_id else pairs.old
        for winner, loser in implied_pairs(tuple(j.shown_order), j.best_id, j.worst_id):
            split.prompt.append(prompts[j.prompt_id])
            split.chosen.append(completion_text(text[winner]))
            split.rejected.append(completion_text(text[loser]))
            split.margin.append(pair_margin(scores, winner, loser))
    return pairs
