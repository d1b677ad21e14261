"""A-LoL (every variant) and DPO learn a simple preference from STORED data with tiny offline models.

Setup as in test_ppo: a 2-layer GPT-2 pretrained on one-sentence stories where the marker word "dragon"
appears in ~10% of continuations, and a reward model that prefers continuations with the marker. The
stored data are 800 such stories (imported ones, as it were), ~10% with the marker. Each algorithm must
raise the marker's frequency in fresh samples clearly while the KL to the reference stays bounded.
"""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.alol import ALoLConfig, ALoLTrainer, alol_loss, fit_value_head
from trainer.auto_metrics import kl_estimate
from trainer.generate import generate_continuations

try:
    from tests.tiny_models import PROMPTS, marker_task, preference_pairs, story_corpus
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from tiny_models import PROMPTS, marker_task, preference_pairs, story_corpus

MARKER = "dragon"
KL_MAX = 8.0  # nats per story, as in test_ppo: moving the marker from 0.1 to ~0.97 alone costs ~2 nats


@pytest.fixture(scope="module")
def tiny_setup():
    tok, lm, rm = marker_task(MARKER)
    stored = story_corpus(800, marker=MARKER, marker_rate=0.1, seed=5)
    return tok, lm, rm, stored


def marker_rate_and_kl(policy, reference, tok, n_per_prompt: int = 32, seed: int = 1) -> tuple[float, float]:
    torch.manual_seed(seed)
    outs = generate_continuations(policy, tok, PROMPTS, num_return_sequences=n_per_prompt, max_new_tokens=16,
                                  batch_size=128)
    prompts = [p for p, o in zip(PROMPTS, outs) for _ in o]
    completions = [c for o in outs for c in o]
    rate = sum(MARKER in c for c in completions) / len(completions)
    return rate, kl_estimate(policy, reference, tok, prompts, completions, batch_size=128)


# ----------------------------------------------------------------------------- A-LoL pieces
def test_importance_weight_is_clipped_and_detached():
    cfg = ALoLConfig(variant="alol", clip_epsilon=0.9)
    mask = torch.ones(3, 2)
    # sequence log-ratios to the start policy: +3 (ratio e^3 ~ 20 -> 1.9), -3 (0.05 -> 0.1), 0 (1 -> 1)
    start = torch.zeros(3, 2)
    logp = torch.tensor([[1.5, 1.5], [-1.5, -1.5], [0.0, 0.0]], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, 1.0])
    loss, stats = alol_loss(cfg, logp, start, adv, mask)
    loss.backward()
    # gradient of -A * w * sum_t logp w.r.t. each token = -A * w / B: the clipped weight, not the ratio
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.9, -1.9], [-0.1, -0.1], [-1.0, -1.0]]) / 3)
    assert stats["clipfrac"] == pytest.approx(2 / 3)
    assert stats["log_ratio"] == pytest.approx(0.0)  # mean of +3, -3 and 0: a log-ratio cannot overflow
    huge = alol_loss(cfg, torch.full((1, 2), 500.0), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2))[1]
    assert huge == {"log_ratio": 1000.0, "clipfrac": 1.0}  # e^1000 would be inf

    # per-token ratios, each clipped on its own: token log-ratios 3 and -3 -> weights 1.9 and 0.1
    seq_cfg = ALoLConfig(variant="alol_seq", clip_epsilon=0.9)
    logp = torch.tensor([[3.0, -3.0]], requires_grad=True)
    loss, stats = alol_loss(seq_cfg, logp, torch.zeros(1, 2), torch.tensor([2.0]), torch.ones(1, 2))
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0 * 1.9, -2.0 * 0.1]]))
    assert stats["clipfrac"] == 1.0

    # ref-free: weight 1 whatever the ratio; KL variant adds beta * (log pi - log pi_ref) with its gradient
    logp = torch.tensor([[3.0, 3.0]], requires_grad=True)
    alol_loss(ALoLConfig(variant="alol_ref_free"), logp, torch.zeros(1, 2), torch.tensor([0.5]), torch.ones(1, 2))[0].backward()
    torch.testing.assert_close(logp.grad, torch.full((1, 2), -0.5))
    logp = torch.tensor([[3.0, 3.0]], requires_grad=True)
    alol_loss(ALoLConfig(variant="alol_kl", kl_beta=0.2), logp, torch.full((1, 2), 3.0), torch.tensor([0.5]),
              torch.ones(1, 2), ref_logp=torch.zeros(1, 2))[0].backward()
    torch.testing.assert_close(logp.grad, torch.full((1, 2), -0.5 + 0.2))


def test_value_head_fits_held_out_rows():
    """Rewards that depend on the prompt state: the held-out MSE falls well below the untrained head's."""
    g = torch.Generator().manual_seed(0)
    states = torch.randn(8, 16, generator=g)  # 8 prompts
    true_value = torch.sigmoid(states[:, 0] * 2)  # (8,)
    rows = torch.arange(8).repeat(25)  # 25 samples per prompt
    targets = (true_value[rows] + 0.05 * torch.randn(len(rows), generator=g)).clamp(0, 1)
    head, stats = fit_value_head(states[rows], targets, ALoLConfig(value_epochs=60))
    assert stats["value_held_out_rows"] == 50
    assert stats["value_held_out_mse"] < 0.25 * stats["value_held_out_mse_first"]
    assert stats["value_held_out_mse"] < 0.01
    assert stats["value_best_epoch"] > 0


def test_alol_trains_only_on_positive_advantage_rows(tiny_setup):
    tok, lm, rm, stored = tiny_setup
    cfg = ALoLConfig(steps=0, max_new_tokens=16, value_samples_per_prompt=8, seed=0)
    trainer = ALoLTrainer(cfg, copy.deepcopy(lm), tok, rm, ref_policy=lm)
    stats = trainer.prepare([p for p, _ in stored], [c for _, c in stored])
    assert 0 < stats["positive_rows"] < stats["rows"] == len(stored)
    assert bool((trainer.advantages > 0).all())
    assert stats["value_held_out_mse"] < stats["value_held_out_mse_first"]  # the value head fitted
    # nearly every marker story is above the start policy's value, and most positive rows have the marker
    kept = [stored[i][1] for i in trainer.positive_indices]
    marker_rows = sum(MARKER in c for _, c in stored)
    assert sum(MARKER in c for c in kept) > 0.9 * marker_rows
    # priority sampling draws rows proportionally to the advantage: only from the kept rows
    drawn = trainer._draw(torch.Generator().manual_seed(0))
    assert all(0 <= i < len(trainer.advantages) for i in drawn)
    # without a step count it makes cfg.epochs (2) passes over the positive rows
    assert trainer.total_steps == -(-2 * len(trainer.advantages) // cfg.batch_size)


@pytest.mark.parametrize("variant", ["alol", "alol_seq", "alol_ref_free", "alol_kl"])
def test_alol_raises_marker_frequency(tiny_setup, variant):
    tok, lm, rm, stored = tiny_setup
    before, _ = marker_rate_and_kl(lm, lm, tok)
    cfg = ALoLConfig(variant=variant, learning_rate=3e-4, batch_size=16, steps=60, max_new_tokens=16,
                     value_samples_per_prompt=8, kl_beta=0.05, seed=0)
    history: list[dict] = []
    trainer = ALoLTrainer(cfg, copy.deepcopy(lm), tok, rm, ref_policy=lm, on_step=lambda s, stats: history.append(stats))
    trainer.prepare([p for p, _ in stored], [c for _, c in stored])
    trainer.train()
    after, kl = marker_rate_and_kl(trainer.policy, lm, tok)
    print(f"\n{variant}: marker frequency {before:.2f} -> {after:.2f}, KL {kl:.2f} nats, "
          f"{trainer.data_stats['positive_rows']}/{trainer.data_stats['rows']} rows with A > 0")
    assert len(history) == cfg.steps
    assert before < 0.3
    assert after > before + 0.3
    assert 0.0 < kl < KL_MAX


# ----------------------------------------------------------------------------- DPO (TRL)
def test_dpo_raises_marker_frequency(tiny_setup, tmp_path):
    """Pairs as BWS judgements imply them: the chosen story has the marker, the rejected one not."""
    from trainer.data import PreferencePairs
    from trainer.dpo import DPOSettings, train_dpo

    tok, lm, _, _ = tiny_setup
    triples = preference_pairs(256, MARKER, seed=7)
    pairs = PreferencePairs([t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples], [1.0] * len(triples))
    before, _ = marker_rate_and_kl(lm, lm, tok)
    steps: list[int] = []
    policy, metrics = train_dpo(copy.deepcopy(lm), lm, tok, pairs,
                                DPOSettings(beta=0.1, learning_rate=1e-3, batch_size=16, epochs=1.0),
                                tmp_path, lambda step, total, m: steps.append(step))
    after, kl = marker_rate_and_kl(policy, lm, tok)
    print(f"\ndpo: marker frequency {before:.2f} -> {after:.2f}, KL {kl:.2f} nats, {metrics}")
    assert metrics["steps"] == 256 // 16 and steps[-1] == metrics["steps"] and metrics["pairs"] == 256
    assert after > before + 0.3
    assert 0.0 < kl < KL_MAX
