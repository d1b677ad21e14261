"""The parts that close the loop, one by one: stories that end or are trimmed to a full sentence,
what a round's tuples are made of, a held-out split that stays put across rounds, and when a round
starts by itself."""

import random
from types import SimpleNamespace

import pytest
import torch

from app.models import ModelVersion, TrainingRound, utcnow
from app.services.scoring import ItemTally
from tests.factories import judge_directly, seed_bws_batch
from tests.tiny_models import train_tiny_tokenizer
from trainer.config import GenerationConfig
from trainer.data import is_held_out
from trainer.generate import Sampling, generate_stories, sample_tokens, trim_to_sentence
from trainer.rounds import compose_tuples


def test_trim_to_sentence():
    assert trim_to_sentence("She smiled. Then the door") == "She smiled."
    assert trim_to_sentence('"Come in!" said he. And so') == '"Come in!" said he.'
    assert trim_to_sentence("Is it? Yes it is. No") == "Is it? Yes it is."
    assert trim_to_sentence("no sentence ends here") == "no sentence ends here"  # nothing better to show
    assert trim_to_sentence("He saw Mr. Darcy. Then Mrs. Bennet") == "He saw Mr. Darcy."  # titles end no sentence


class ScriptedLM(torch.nn.Module):
    """A causal LM stand-in that writes a fixed token script (greedy-certain logits), then repeats its last token."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab = script, vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))  # so next(parameters()) has a device
        self.config = SimpleNamespace(n_positions=256)
        self._prompt_len = 0

    def forward(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=True):
        if past_key_values is None:
            self._prompt_len = attention_mask.shape[1]
        t = attention_mask.shape[1] - self._prompt_len  # tokens written so far
        logits = torch.full((input_ids.shape[0], input_ids.shape[1], self.vocab), -1e9)
        logits[:, -1, self.script[min(t, len(self.script) - 1)]] = 0.0
        return SimpleNamespace(logits=logits, past_key_values=object())


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(["The cat sat down. The dog ran off and away. Hello there."] * 50, vocab_size=300)


def test_a_story_that_emits_eos_is_kept_whole_and_marked_ended(tokenizer):
    script = tokenizer(" The dog ran off and away")["input_ids"] + [tokenizer.eos_token_id]
    [[story]] = generate_stories(ScriptedLM(script, len(tokenizer)), tokenizer, ["Once"], max_new_tokens=40)
    assert story.ended and story.text == "The dog ran off and away"


def test_a_story_cut_by_the_token_cap_is_trimmed_to_its_last_full_sentence(tokenizer):
    script = tokenizer(" The cat sat down. The dog ran off and away and away and away")["input_ids"]
    [[story]] = generate_stories(ScriptedLM(script, len(tokenizer)), tokenizer, ["Once"], max_new_tokens=12)
    assert not story.ended and story.text == "The cat sat down."


def test_round_tuples_mix_new_stories_with_the_base_the_best_and_a_random_earlier_one():
    base, source, older = 1, 2, 3
    candidates = [(10, base), (11, base), (12, base), (20, source), (21, source), (22, source), (30, older), (31, older)]
    tallies = {20: ItemTally(appearances=6, best=5, worst=0), 21: ItemTally(6, 0, 3),  # scores 0.83, -0.5
               30: ItemTally(5, 2, 0), 10: ItemTally(3, 3, 0)}  # 0.4, 1.0
    gen = GenerationConfig(base_per_prompt=2, best_per_prompt=2, random_per_prompt=1)
    items = compose_tuples(candidates + [(40, 9), (41, 9)], [40, 41], base, tallies, gen, random.Random(0))
    assert items[:2] == [40, 41]  # the new version's stories first, all of them
    picked = items[2:]
    assert len(picked) == len(set(picked)) == 5
    base_picked = [c for c in picked[:2]]
    assert set(base_picked) <= {10, 11, 12}
    best = picked[2:4]
    # The best judged earlier stories not already picked: 10 if it was not a base pick, else 20 and 30.
    expected_best = [c for c in (10, 20, 30) if c not in base_picked][:2]
    assert best == expected_best
    assert picked[4] not in base_picked + best and picked[4] in {c for c, _ in candidates}

    # Fewer earlier stories than asked for: takes what there is, never a new one twice.
    few = compose_tuples([(10, base), (40, 9)], [40], base, {}, gen, random.Random(0))
    assert few == [40, 10]


def test_the_held_out_split_is_the_same_in_every_round():
    first = [is_held_out(j, 0.2, seed=0) for j in range(1, 2001)]
    again = [is_held_out(j, 0.2, seed=0) for j in range(1, 2001)]
    assert first == again and 0.15 < sum(first) / len(first) < 0.25
    assert first != [is_held_out(j, 0.2, seed=1) for j in range(1, 2001)]


def test_rounds_start_by_themselves_when_the_newest_tuples_are_judged(database, settings):
    from trainer.loop import round_due

    batch_id = seed_bws_batch(database, prompts=3, per_prompt=6, required=3)
    settings.trainer_min_newest_judgements = 5
    assert round_due(database, settings)  # round 0 needs no judgements: the base writes its stories
    from app.services.training import trainer_status
    from trainer.loop import next_round_id

    first = next_round_id(database, settings)  # asked for as what it is: the base's round, round 0
    [view] = trainer_status(database).history
    assert (view.id, view.number, view.trigger) == (first, 0, "base")
    assert view.trigger_label.startswith("the base policy") and "judgements" not in view.trigger_label.split("(")[0]

    with database.write() as db:  # round 0 is done: a base policy, its round and its batch
        base = ModelVersion(name="base", kind="policy", algorithm="pretrain", path="policy/base")
        db.add(base)
        db.flush()
        r = db.get(TrainingRound, first)
        r.status, r.policy_version_id, r.batch_id, r.finished_at = "done", base.id, batch_id, utcnow()
    assert not round_due(database, settings)  # nothing judged on the newest tuples yet
    judge_directly(database, "judge1", batch_id, limit=4)
    assert not round_due(database, settings)  # 4 < 5
    judge_directly(database, "judge2", batch_id, limit=1)
    assert round_due(database, settings)  # 5 judgements on the newest round's tuples
    second = next_round_id(database, settings)
    assert [(v.number, v.trigger) for v in trainer_status(database).history] == [(1, "auto"), (0, "base")]
    with database.write() as db:
        db.delete(db.get(TrainingRound, second))  # not run here

    # "any": the old rule, N new judgements of any batch since the last round.
    settings.trainer_trigger, settings.trainer_min_new_judgements = "any", 6
    assert not round_due(database, settings)
    judge_directly(database, "judge3", batch_id, limit=1)
    assert round_due(database, settings)

    # A failed round is not retried by itself until new judgements come in.
    with database.write() as db:
        db.add(TrainingRound(status="failed", finished_at=utcnow(), error="boom"))
    assert not round_due(database, settings)
    judge_directly(database, "judge4", batch_id, limit=1)
    assert round_due(database, settings)


def test_min_new_tokens_means_no_empty_story(tokenizer):
    eos = tokenizer.eos_token_id
    eager = ScriptedLM([eos], len(tokenizer))  # would end at once
    ids, mask = tokenizer(["Once"], return_tensors="pt").values()
    response = sample_tokens(eager, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                             sampling=Sampling(min_new_tokens=3))
    assert eos not in response[0, :3].tolist() and response[0, 3].item() == eos
    [[story]] = generate_stories(eager, tokenizer, ["Once"], max_new_tokens=10, min_new_tokens=3)
    assert story.ended and story.text
