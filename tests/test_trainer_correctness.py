"""What PPO and A-LoL optimise is exactly what they sample and store (issue "Trainer correctness").

One test per finding of the review, each on tiny models (untrained where training is beside the point):
1. PPO's log-probs (rollout, reference, update, logged KL) follow the sampling transforms, end-of-text
   mask included, so a policy that differs from the reference only where sampling never looks reports
   KL 0.
2. A-LoL appends end-of-text only to a stored story that fits, never at the cut of a longer one.
3. A-LoL's importance weights are measured against the policy the round starts from: all 1 at its
   first step, however far that policy has moved from the reference.
4. PPO's value model reads the policy's token ids with embeddings of the policy's vocabulary, also when
   the reward model has its own, different tokenizer.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from trainer.alol import ALoLConfig, ALoLTrainer, tokenize_rows
from trainer.generate import Sampling, left_pad_prompts, position_ids_from_mask, response_logprobs, sample_tokens
from trainer.ppo import PPOConfig, PPOTrainer

try:
    from tests.tiny_models import PROMPTS, story_corpus, tiny_lm, tiny_reward_model, train_tiny_tokenizer
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from tiny_models import PROMPTS, story_corpus, tiny_lm, tiny_reward_model, train_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer(p + c for p, c in story_corpus(400))


def boost_eos(model, eos_token_id: int, amount: float):
    """The same network with `amount` added to the end-of-text logit at every position."""
    boost = torch.zeros(model.config.vocab_size)
    boost[eos_token_id] = amount
    model.lm_head.register_forward_hook(lambda module, inputs, logits: logits + boost)
    return model


def test_sampling_and_log_probs_share_the_transforms(tok):
    """Greedy by top-k 1: every sampled token has log-prob 0 under the same Sampling; end-of-text never
    appears before min_new_tokens and has log-prob -inf (floored) there."""
    lm = tiny_lm(tok, seed=1).eval()
    eos = tok.eos_token_id
    boost_eos(lm, eos, 20.0)  # end-of-text would win everywhere if it were allowed
    ids, mask = left_pad_prompts(tok, PROMPTS[:4], "cpu")
    sampling = Sampling(temperature=0.7, min_new_tokens=3, top_k=1)
    response = sample_tokens(lm, ids, mask, max_new_tokens=5, eos_token_id=eos, pad_token_id=tok.pad_token_id,
                             sampling=sampling)
    assert response.shape[1] == 4 and bool((response[:, :3] != eos).all()) and bool((response[:, 3] == eos).all())
    attn = torch.cat([mask, torch.ones_like(response)], 1)
    with torch.no_grad():
        logits = lm(input_ids=torch.cat([ids, response], 1), attention_mask=attn,
                    position_ids=position_ids_from_mask(attn)).logits
    logp, _ = response_logprobs(logits, response, ids.shape[1], sampling, eos)
    torch.testing.assert_close(logp, torch.zeros_like(logp), atol=1e-5, rtol=0)
    unmasked, _ = response_logprobs(logits, response, ids.shape[1], Sampling(temperature=0.7, top_k=1), eos)
    assert bool((unmasked[:, :3] < -100).all())  # without the end-of-text rule these tokens were impossible


def test_ppo_kl_is_zero_where_policy_and_reference_sample_alike(tok):
    """Policy = reference + 4 on the end-of-text logit, with min = max = 8 new tokens: end-of-text is never
    allowed, so both sample the same distribution and the true KL is 0 (the old code reported -0.89)."""
    reference = tiny_lm(tok, seed=0).eval()
    policy = boost_eos(copy.deepcopy(reference), tok.eos_token_id, 4.0)
    reward_model = tiny_reward_model(tok, seed=0)
    cfg = PPOConfig(batch_size=16, mini_batch_size=8, ppo_epochs=1, max_new_tokens=8, min_new_tokens=8,
                    temperature=0.8, learning_rate=0.0, seed=0)
    trainer = PPOTrainer(cfg, policy, tok, reward_model, ref_policy=reference)
    rng = random.Random(0)
    stats = trainer.step([rng.choice(PROMPTS) for _ in range(cfg.batch_size)])
    assert abs(stats["kl"]) < 1e-4, stats["kl"]
    assert stats["approx_kl"] < 1e-8 and stats["clipfrac"] == 0.0


def test_alol_appends_end_of_text_only_to_stories_that_fit(tok):
    eos = tok.eos_token_id
    long_story = " the cat saw a big red ball and went home and the dog found a small boat ."
    short_story = " the cat ."
    cap = 6
    assert len(tok(long_story)["input_ids"]) > cap and len(tok(short_story)["input_ids"]) < cap
    (long_ids, long_prompt), (short_ids, short_prompt) = tokenize_rows(tok, ["one day", "one day"],
                                                                       [long_story, short_story], cap, 64)
    assert len(long_ids) - long_prompt == cap and long_ids[-1] != eos  # cut: no ending taught
    assert long_ids[long_prompt:] == tok(long_story)["input_ids"][:cap]
    assert short_ids[short_prompt:] == tok(short_story)["input_ids"] + [eos]  # it ended here


def test_alol_weights_start_at_one_however_far_the_start_policy_moved(tok):
    """The round starts from a policy far from the reference (weights perturbed): the first step's
    importance weights are all 1 (log-ratio 0, none clipped), and alol_kl still sees the reference."""
    reference = tiny_lm(tok, seed=0).eval()
    start = copy.deepcopy(reference)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in start.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    reward_model = tiny_reward_model(tok, seed=3)
    stored = story_corpus(48, seed=7)
    for variant in ("alol", "alol_seq", "alol_kl"):
        cfg = ALoLConfig(variant=variant, steps=2, batch_size=8, max_new_tokens=12, value_samples_per_prompt=2,
                         value_epochs=5, seed=0)
        history: list[dict] = []
        trainer = ALoLTrainer(cfg, copy.deepcopy(start), tok, reward_model, ref_policy=reference,
                              on_step=lambda step, stats: history.append(stats))
        trainer.prepare([p for p, _ in stored], [c for _, c in stored])
        trainer.train()
        assert abs(history[0]["log_ratio"]) < 1e-3 and history[0]["clipfrac"] == 0.0, (variant, history[0])
        if variant == "alol_kl":  # its penalty is measured against the reference, which is far away
            assert (trainer.start_logp - trainer.ref_logp).abs().sum() > 10.0


def test_value_model_reads_the_policys_tokens_when_the_reward_model_has_another_tokenizer(tok):
    corpus = story_corpus(400, seed=9)
    reward_tok = train_tiny_tokenizer((p + c for p, c in corpus), vocab_size=300)
    assert len(reward_tok) < len(tok)
    policy = tiny_lm(tok, seed=0)
    reward_model = tiny_reward_model(reward_tok, seed=0)
    cfg = PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=8, seed=0)
    trainer = PPOTrainer(cfg, policy, tok, reward_model, reward_tokenizer=reward_tok)
    net = trainer.accelerator.unwrap_model(trainer.model)
    assert net.value_model is None  # values come from a head on the policy's own hidden states
    head_before = net.value_head.weight.detach().clone()
    stats = trainer.step(PROMPTS[:8])  # the old value model (a copy of the reward model) raised IndexError here
    assert torch.isfinite(torch.tensor(stats["value_loss"]))
    assert not torch.equal(net.value_head.weight, head_before)  # the value head learns

    # with one tokenizer, the value model starts as the reward model (its head included), as in the references
    shared = PPOTrainer(cfg, tiny_lm(tok, seed=0), tok, tiny_reward_model(tok, seed=0))
    shared_value = shared.accelerator.unwrap_model(shared.model).value_model
    torch.testing.assert_close(shared_value.score.weight, shared.reward_model.score.weight)


def test_pair_margins_leave_held_out_judgements_out(tmp_path, sqlite_url):
    """A training pair's margin is the counting-score difference over the TRAINING judgements: a
    held-out judgement must not reach training through it."""
    from sqlalchemy import select

    from app.db import Database
    from app.migrate import upgrade_to_head
    from app.models import BwsJudgement
    from app.services.scoring import BwsAnnotation, counting_scores, implied_pairs, pair_margin
    from tests.factories import judge_directly, seed_bws_batch
    from trainer.data import is_held_out, load_pairs

    upgrade_to_head(sqlite_url)
    database = Database.from_url(sqlite_url)
    seed_bws_batch(database, prompts=2, per_prompt=6, required=3)
    for name in ("judge-a", "judge-b", "judge-c"):
        judge_directly(database, name)
    with database.read() as db:
        judgements = [BwsAnnotation(j.id, tuple(j.shown_order), j.best_id, j.worst_id)
                      for j in db.scalars(select(BwsJudgement).order_by(BwsJudgement.id))]
    held = [j for j in judgements if is_held_out(j.tuple_id, 0.5, seed=0)]
    train = [j for j in judgements if not is_held_out(j.tuple_id, 0.5, seed=0)]
    assert held and train
    train_scores = counting_scores(train)
    expected = [pair_margin(train_scores, w, l) for j in train for w, l in implied_pairs(j.items, j.best, j.worst)]
    pairs = load_pairs(database, held_out_fraction=0.5, seed=0)
    assert pairs.new.margin == pytest.approx(expected)
    everything = counting_scores(judgements)
    assert expected != pytest.approx([pair_margin(everything, w, l) for j in train
                                      for w, l in implied_pairs(j.items, j.best, j.worst)])


def test_the_trainer_page_charts_whether_ppo_updates(tok):
    """The trainer page charts the first CHART_METRICS metrics a phase logs: PPO's clip fraction and
    approximate KL of its updates, and the response length, must be among them."""
    from app.services.training import CHART_METRICS

    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=8, seed=0),
                         tiny_lm(tok, seed=0), tok, tiny_reward_model(tok, seed=0))
    charted = list(trainer.step(PROMPTS[:8]))[:CHART_METRICS]
    assert {"score", "kl", "clipfrac", "approx_kl", "response_length", "eos_fraction"} <= set(charted)
