"""Does PPO report the KL of the distributions it really samples? An independent check.

    .venv/bin/python benchmarks/ppo_kl_check.py                     # this checkout's trainer
    .venv/bin/python benchmarks/ppo_kl_check.py --code /path/to/an/older/checkout

Tiny offline models (tests/tiny_models.py: a 2-layer GPT-2 pretrained on one-sentence stories, a reward
model preferring the word "dragon"), PPO at the project's sampling settings (temperature 0.8, no
end-of-text before 8 new tokens, at most 16). Before every step, on 64 fresh samples of the policy as it
is, this script computes the exact KL of the SAMPLED distributions, per story: the sum over the story's
positions of the full-vocabulary KL between policy and reference after both get the sampling transforms
(temperature, end-of-text masked before min_new_tokens). Its expectation is the KL between the two story
distributions. It is written here on its own, importing nothing from trainer/ but the PPO it checks.
Then it prints, per step, PPO's reported KL beside it, and the end-of-text probability the policy puts
on the masked positions (where sampling never looks).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def sampled_kl(policy, reference, tok, prompts, temperature: float, min_new: int, max_new: int, n: int, seed: int):
    """(mean exact KL per story of the sampled distributions, mean EOS probability on masked positions)."""
    g = torch.Generator().manual_seed(seed)
    eos = tok.eos_token_id
    kls, eos_masked = [], []
    with torch.no_grad():
        for i in range(n):
            ids = tok(prompts[i % len(prompts)], return_tensors="pt")["input_ids"]
            total = 0.0
            for t in range(max_new):
                lp = policy(input_ids=ids).logits[0, -1].float() / temperature
                lr = reference(input_ids=ids).logits[0, -1].float() / temperature
                if t < min_new:
                    eos_masked.append(F.softmax(lp, -1)[eos].item())
                    lp[eos] = lr[eos] = float("-inf")
                p_log, r_log = F.log_softmax(lp, -1), F.log_softmax(lr, -1)
                p = p_log.exp()
                total += (p * (p_log - r_log)).nan_to_num(0.0).sum().item()
                nxt = torch.multinomial(p, 1, generator=g)
                ids = torch.cat([ids, nxt[None]], 1)
                if nxt.item() == eos:
                    break
            kls.append(total)
    return sum(kls) / len(kls), sum(eos_masked) / len(eos_masked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose trainer/ is checked")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--final", type=int, default=512, help="samples for the final-policy comparison")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(args.code))
    from tiny_models import (PROMPTS, pretrain_lm, preference_pairs, story_corpus, tiny_lm, tiny_reward_model,
                             train_reward_model, train_tiny_tokenizer)
    from trainer.ppo import PPOConfig, PPOTrainer
    from trainer.reward_format import format_for_reward

    torch.set_num_threads(1)
    corpus = story_corpus(3000, marker="dragon", marker_rate=0.1, seed=args.seed)
    tok = train_tiny_tokenizer(p + c for p, c in corpus)
    lm = pretrain_lm(tiny_lm(tok, seed=args.seed), tok, [p + c for p, c in corpus], steps=300, seed=args.seed)
    rm = train_reward_model(tiny_reward_model(tok, init_from=lm, seed=args.seed), tok,
                            preference_pairs(2000, "dragon", seed=args.seed + 1), format_for_reward, steps=150)
    import copy

    reference = copy.deepcopy(lm).eval()
    cfg = PPOConfig(learning_rate=5e-5, batch_size=32, mini_batch_size=8, ppo_epochs=4, max_new_tokens=16,
                    min_new_tokens=8, temperature=0.8, init_kl_coef=0.05, seed=args.seed)
    trainer = PPOTrainer(cfg, lm, tok, rm, ref_policy=reference)
    rng = random.Random(args.seed)
    print(f"trainer from {args.code}; {args.steps} steps of {cfg.batch_size} rollouts; exact KL on {args.samples} "
          "fresh samples before each step")
    print(f"{'step':>4} {'reported KL':>12} {'sampled KL':>11} {'EOS prob at masked positions':>29}")
    rows = []
    for step in range(1, args.steps + 1):
        true_kl, eos_masked = sampled_kl(trainer.policy.eval(), reference, tok, PROMPTS, cfg.temperature,
                                         cfg.min_new_tokens, cfg.max_new_tokens, args.samples, args.seed + step)
        trainer.policy.train()
        reported = trainer.step([rng.choice(PROMPTS) for _ in range(cfg.batch_size)])["kl"]
        rows.append((reported, true_kl))
        print(f"{step:>4} {reported:>12.3f} {true_kl:>11.3f} {eos_masked:>29.4f}")
    last = rows[-5:]
    rep, tru = sum(r for r, _ in last) / len(last), sum(t for _, t in last) / len(last)
    print(f"last 5 steps: reported {rep:.3f}, sampled {tru:.3f} nats per story "
          f"(reported / sampled {rep / tru if tru else float('nan'):.2f})")

    # The same two estimators at the final policy on many more samples, without training: PPO's own
    # rollout estimate (its KL line, on `--final` rollouts) against the exact sampled KL.
    per_story = []
    for _ in range(args.final // cfg.batch_size):
        r = trainer.rollout([rng.choice(PROMPTS) for _ in range(cfg.batch_size)])
        get = (lambda k: r[k]) if isinstance(r, dict) else (lambda k: getattr(r, k))
        per_story += ((get("logprobs") - get("ref_logprobs")) * get("mask")).sum(-1).tolist()
    true_kl, _ = sampled_kl(trainer.policy.eval(), reference, tok, PROMPTS, cfg.temperature, cfg.min_new_tokens,
                            cfg.max_new_tokens, args.final, args.seed + 999)
    mean = sum(per_story) / len(per_story)
    sd = (sum((x - mean) ** 2 for x in per_story) / (len(per_story) - 1)) ** 0.5
    print(f"final policy, {len(per_story)} rollouts: PPO's KL estimate {mean:.3f} (+- {1.96 * sd / len(per_story) ** 0.5:.3f}), "
          f"exact sampled KL {true_kl:.3f} on {args.final} samples (ratio {mean / true_kl:.2f})")


if __name__ == "__main__":
    main()
