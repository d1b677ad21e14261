"""PPO learns a simple preference with tiny offline models, plus unit tests of its pieces.

The learning test: a 2-layer GPT-2 pretrained on synthetic one-sentence stories where the marker word
"dragon" appears in ~10% of continuations; a reward model trained (Bradley-Terry) to prefer continuations
with the marker; PPO must raise the marker's frequency in fresh samples, raise the mean reward-model
score, and keep the KL to the reference policy bounded.
"""

from __future__ import annotations

import copy
import os
import random
import time

import pytest
import torch

from trainer.generate import generate_continuations, truncate_at_eos
from trainer.ppo import PPOConfig, PPOTrainer, compute_gae, score_sequences
from trainer.reward_format import format_for_reward

try:
    from tests.tiny_models import PROMPTS, marker_task, preference_pairs
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from tiny_models import PROMPTS, marker_task, preference_pairs

MARKER = "dragon"
SEED = int(os.environ.get("STORYLOOP_PPO_TEST_SEED", "0"))  # re-run with other seeds to check robustness
STEPS = 20  # PPO steps of 32 rollouts
# KL(policy || reference) bound, nats per response (mean of the last 5 steps' rollout estimates). Moving
# the marker from p=0.1 to p=0.97 alone costs about 0.97*ln(9.7) + 0.03*ln(0.03/0.9) ~ 2.1 nats. With these
# settings seeds 0-3 ended at 3.0-5.9 nats (per-step peaks 4-9.4); a run that drifts away from the
# reference (seen with lr 1e-4 and kl coef 0.05: 13.8 nats, peaks up to 30) fails.
KL_MAX = 8.0


# ----------------------------------------------------------------------------- unit tests
def test_format_for_reward_appends_eos_once():
    eos = "<|endoftext|>"
    assert format_for_reward("Once upon a time", " a fox ran.", eos) == "Once upon a time a fox ran." + eos
    assert format_for_reward("p", " c<|endoftext|>", "<|endoftext|>") == "p c<|endoftext|>"  # not doubled
    assert format_for_reward("p", "", "</s>") == "p</s>"
    with pytest.raises(ValueError):
        format_for_reward("p", "c", "")


def test_gae_matches_hand_computation():
    # row 0: gamma=1, lam=0.5, reward only at the end
    #   t2: delta = 1 + 0 - .5 = .5            -> A2 = .5
    #   t1: delta = 0 + .5 - .5 = 0            -> A1 = 0 + .5 * .5 = .25
    #   t0: delta = 0                           -> A0 = .5 * .25 = .125
    adv = compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5]]), gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.125, 0.25, 0.5]]))
    # row 1: gamma=.9, lam=1, response of 2 tokens (reward and value zero after the end)
    #   t2: 0;  t1: delta = 2 + .9*0 - 1 = 1 -> A1 = 1;  t0: delta = 0 + .9*1 - 1 = -.1 -> A0 = -.1 + .9*1 = .8
    #   (lam=1: A0 = discounted return .9*2 minus V0 = 1)
    adv = compute_gae(torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.8, 1.0, 0.0]]))


def test_truncate_at_eos_keeps_the_eos_token():
    eos, pad = 0, 9
    response = torch.tensor([[5, 6, eos, pad], [5, 6, 7, 8], [eos, pad, pad, pad]])
    mask, lengths = truncate_at_eos(response, eos)
    assert lengths.tolist() == [3, 4, 1]
    assert mask.long().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


# ----------------------------------------------------------------------------- learning test
@pytest.fixture(scope="module")
def tiny_setup():
    return marker_task(MARKER, seed=SEED)


def _sample_stats(model, tok, rm, n_per_prompt=32):
    """Marker frequency and mean RM score of fresh samples (n_per_prompt for every prompt)."""
    outs = generate_continuations(model, tok, PROMPTS, num_return_sequences=n_per_prompt, max_new_tokens=16,
                                  batch_size=128)
    prompts = [p for p, o in zip(PROMPTS, outs) for _ in o]
    completions = [c for o in outs for c in o]
    freq = sum(MARKER in c for c in completions) / len(completions)
    return freq, score_sequences(rm, tok, prompts, completions).mean().item()


def test_reward_model_prefers_marker(tiny_setup):
    tok, _, rm = tiny_setup
    held_out = preference_pairs(200, MARKER, seed=99)
    chosen = score_sequences(rm, tok, [t[0] for t in held_out], [t[1] for t in held_out])
    rejected = score_sequences(rm, tok, [t[0] for t in held_out], [t[2] for t in held_out])
    assert (chosen > rejected).float().mean() > 0.95


def test_ppo_raises_marker_frequency(tiny_setup):
    tok, lm, rm = tiny_setup
    torch.manual_seed(SEED)
    freq_before, score_before = _sample_stats(lm, tok, rm)

    cfg = PPOConfig(learning_rate=5e-5, batch_size=32, mini_batch_size=8, ppo_epochs=4, max_new_tokens=16,
                    temperature=1.0, init_kl_coef=0.1, seed=SEED)
    history: list[dict] = []
    trainer = PPOTrainer(cfg, lm, tok, rm, on_step=lambda step, stats: history.append({"step": step, **stats}))
    rng = random.Random(SEED)
    t0 = time.time()
    for _ in range(STEPS):
        trainer.step([rng.choice(PROMPTS) for _ in range(cfg.batch_size)])
    seconds_per_step = (time.time() - t0) / STEPS

    torch.manual_seed(SEED + 1)
    freq_after, score_after = _sample_stats(trainer.policy, tok, rm)
    final_kl = sum(h["kl"] for h in history[-5:]) / 5
    print(f"\nseed {SEED}: marker frequency {freq_before:.2f} -> {freq_after:.2f}; RM score {score_before:.2f} -> "
          f"{score_after:.2f}; KL(last 5 steps) {final_kl:.2f} nats, max {max(h['kl'] for h in history):.2f}; "
          f"entropy {history[-1]['entropy']:.2f}; {seconds_per_step:.2f} s/step")

    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    assert set(history[0]) >= {"score", "kl", "policy_loss", "value_loss", "clipfrac", "entropy",
                               "response_length", "kl_coef"}
    assert freq_before < 0.3
    assert freq_after > 0.6
    assert score_after > score_before + 2.0
    assert 0.0 < final_kl < KL_MAX  # see KL_MAX above
    assert max(h["kl"] for h in history) < 2 * KL_MAX
    assert history[-1]["entropy"] > 0.3  # no collapse onto one sentence


def _eos_rate(model, tok, max_new_tokens: int, n_per_prompt: int = 16) -> float:
    from trainer.generate import generate_stories

    stories = generate_stories(model, tok, PROMPTS, num_return_sequences=n_per_prompt, max_new_tokens=max_new_tokens,
                               batch_size=128)
    flat = [s for row in stories for s in row]
    return sum(s.ended for s in flat) / len(flat)


def test_ppo_learns_to_end_stories_under_the_missing_eos_penalty(tiny_setup):
    """With a cap just under the stories' usual length, few responses end; the penalty teaches ending."""
    tok, lm, rm = tiny_setup
    policy = copy.deepcopy(lm)
    cap = 8
    torch.manual_seed(SEED)
    before = _eos_rate(policy, tok, cap)
    cfg = PPOConfig(learning_rate=5e-5, batch_size=32, mini_batch_size=8, ppo_epochs=4, max_new_tokens=cap,
                    init_kl_coef=0.05, missing_eos_penalty=3.0, seed=SEED)
    history: list[dict] = []
    trainer = PPOTrainer(cfg, policy, tok, rm, on_step=lambda step, stats: history.append(stats))
    rng = random.Random(SEED)
    for _ in range(20):
        trainer.step([rng.choice(PROMPTS) for _ in range(cfg.batch_size)])
    torch.manual_seed(SEED + 1)
    after = _eos_rate(trainer.policy, tok, cap)
    print(f"\nend-of-text rate at a {cap}-token cap: {before:.2f} -> {after:.2f} "
          f"(rollouts: {history[0]['eos_fraction']:.2f} -> {history[-1]['eos_fraction']:.2f})")
    assert before < 0.5
    assert after > before + 0.25
