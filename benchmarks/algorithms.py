"""Round algorithms side by side: PPO, A-LoL (its variants) and DPO on the same data and reward model.

One run on one machine:
  1. the base policy (the bootstrap demo preset by default, cached under data/corpus) writes K stories for
     each demo prompt: the "stored" stories;
  2. simulated annotators judge BWS tuples of them following a preference (app.simulate.preference_score,
     plus Gaussian noise), and a reward model is trained on the implied pairs (TRL RewardTrainer), as a
     round would;
  3. each algorithm trains a policy from the base (the reference) on that same data: PPO samples fresh
     text scored by the reward model, A-LoL learns from the stored stories, DPO from the pairs. Each runs
     in a fresh process so its peak memory is its own;
  4. each policy writes fresh stories for every prompt, and we print: training wall time, peak memory
     (process RSS on CPU, allocated GPU memory on CUDA), the reward model's score and the preference's
     (noise-free) score of the stories with 95% bootstrap intervals over prompts, distinct-2, and KL to
     the reference (nats per story).

    .venv/bin/python benchmarks/algorithms.py                       # demo size, CPU
    .venv/bin/python benchmarks/algorithms.py --base gpt2 --device cuda --ppo-steps 40   # GPT-2 small
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from app.demo_data import demo_prompts  # noqa: E402
from app.services.scoring import bootstrap_mean_ci, implied_pairs  # noqa: E402
from app.simulate import preference_score  # noqa: E402
from trainer import model_store  # noqa: E402
from trainer.alol import ALoLConfig, ALoLTrainer  # noqa: E402
from trainer.auto_metrics import distinct_n, kl_estimate  # noqa: E402
from trainer.data import PreferencePairs  # noqa: E402
from trainer.dpo import DPOSettings, train_dpo  # noqa: E402
from trainer.generate import generate_stories  # noqa: E402
from trainer.ppo import PPOConfig, PPOTrainer, score_sequences  # noqa: E402
from trainer.reward_model import RewardModelConfig, train_reward_model  # noqa: E402

ALGORITHMS = ("base", "ppo", "alol", "alol_seq", "alol_ref_free", "alol_kl", "dpo")


def stories(model, tokenizer, prompts, n, args) -> tuple[list[str], list[str]]:
    """(prompt per story, story) for n stories per prompt, sampled as a round's generate phase does."""
    written = generate_stories(model, tokenizer, prompts, n, args.max_new_tokens, args.temperature, top_p=0.95,
                               batch_size=32, min_new_tokens=8)
    return [p for p, row in zip(prompts, written) for _ in row], [" " + s.text for row in written for s in row]


def simulate_pairs(prompts, completions, preference: str, noise: float, judgements_per_prompt: int, seed: int):
    """BWS tuples of 4 stored stories per prompt, judged by the preference plus noise -> implied pairs."""
    score, rng = preference_score(preference), random.Random(seed)
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(p, []).append(i)
    pairs = PreferencePairs([], [], [], [])
    for p, items in by_prompt.items():
        for _ in range(judgements_per_prompt):
            shown = rng.sample(items, min(4, len(items)))
            noisy = {i: score(completions[i]) + rng.gauss(0, noise) for i in shown}
            best, worst = max(shown, key=noisy.get), min(shown, key=noisy.get)
            for winner, loser in implied_pairs(tuple(shown), best, worst):
                pairs.prompt.append(p)
                pairs.chosen.append(completions[winner])
                pairs.rejected.append(completions[loser])
                pairs.margin.append(1.0)
    return pairs


def train_one(algorithm: str, work: Path, args) -> dict:
    """In a fresh process: train `algorithm` from the base, then evaluate its fresh stories."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = args.device
    tokenizer = model_store.load_tokenizer(work / "base")
    policy = model_store.load_causal_lm(work / "base", device)
    reference = model_store.load_causal_lm(work / "base", device)
    reward = model_store.load_reward_model(work / "reward", device)
    data = torch.load(work / "data.pt", weights_only=False)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if algorithm == "ppo":
        cfg = PPOConfig(batch_size=16, mini_batch_size=8, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        min_new_tokens=8, learning_rate=args.ppo_lr, adaptive_kl=True, missing_eos_penalty=1.0, seed=args.seed)
        trainer = PPOTrainer(cfg, policy.train(), tokenizer, reward, ref_policy=reference)
        rng = random.Random(args.seed)
        for _ in range(args.ppo_steps):
            trainer.step([rng.choice(data["prompt_texts"]) for _ in range(cfg.batch_size)])
        policy = trainer.policy
    elif algorithm.startswith("alol"):
        cfg = ALoLConfig(variant=algorithm, epochs=args.alol_epochs, steps=args.alol_steps, learning_rate=args.alol_lr, batch_size=16,
                         max_new_tokens=args.max_new_tokens, value_temperature=args.temperature, seed=args.seed)
        trainer = ALoLTrainer(cfg, policy, tokenizer, reward, ref_policy=reference)
        trainer.prepare(data["prompts"], data["completions"])
        trainer.train()
        policy = trainer.policy
    elif algorithm == "dpo":
        cfg = DPOSettings(epochs=args.dpo_epochs, learning_rate=args.dpo_lr, batch_size=8, seed=args.seed)
        with tempfile.TemporaryDirectory() as out:
            policy, _ = train_dpo(policy, reference, tokenizer, data["pairs"], cfg, Path(out))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started if algorithm != "base" else 0.0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    policy.eval()
    torch.manual_seed(args.seed + 1)
    prompts, completions = stories(policy, tokenizer, data["prompt_texts"], args.eval_per_prompt, args)
    rm = score_sequences(reward, tokenizer, prompts, completions).tolist()
    pref = preference_score(args.preference)
    per_prompt_rm, per_prompt_pref = {}, {}
    for p, c, r in zip(prompts, completions, rm):
        per_prompt_rm.setdefault(p, []).append(r)
        per_prompt_pref.setdefault(p, []).append(pref(c))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"algorithm": algorithm, "seconds": seconds, "peak_mb": peak,
            "rm": bootstrap_mean_ci([mean(v) for v in per_prompt_rm.values()]),
            "pref": bootstrap_mean_ci([mean(v) for v in per_prompt_pref.values()]),
            "distinct_2": distinct_n(completions, 2),
            "kl": kl_estimate(policy, reference, tokenizer, prompts, completions, batch_size=32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="bootstrap", help='"bootstrap" (the --preset) or a hub id / local folder')
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--algorithms", nargs="+", default=["base", "ppo", "alol", "alol_seq", "alol_ref_free", "alol_kl", "dpo"],
                        choices=ALGORITHMS)
    parser.add_argument("--prompts", type=int, default=24, help="demo prompts used (0 = all)")
    parser.add_argument("--stored-per-prompt", type=int, default=8, help="stored stories per prompt (the base's)")
    parser.add_argument("--judgements-per-prompt", type=int, default=8, help="simulated BWS judgements per prompt")
    parser.add_argument("--preference", default="mix:dialogue=1,ends=0.5,repetition=-1")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--eval-per-prompt", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--ppo-steps", type=int, default=20)
    parser.add_argument("--ppo-lr", type=float, default=1e-5)
    parser.add_argument("--alol-epochs", type=float, default=2.0, help="passes over the positive-advantage rows")
    parser.add_argument("--alol-steps", type=int, default=0, help="> 0: this many steps instead of --alol-epochs")
    parser.add_argument("--alol-lr", type=float, default=2e-5)
    parser.add_argument("--dpo-epochs", type=float, default=2.0)
    parser.add_argument("--dpo-lr", type=float, default=5e-6)
    parser.add_argument("--reward-epochs", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        base = model_store.BasePolicyConfig(base=args.base, bootstrap_preset=args.preset, cache_dir=ROOT / "data" / "corpus",
                                            device=args.device)
        model, tokenizer = model_store.resolve_base_policy(base)
        model.save_pretrained(work / "base")
        tokenizer.save_pretrained(work / "base")
        prompt_texts = [p.text for p in demo_prompts()][: args.prompts or None]
        prompts, completions = stories(model, tokenizer, prompt_texts, args.stored_per_prompt, args)
        pairs = simulate_pairs(prompts, completions, args.preference, args.noise, args.judgements_per_prompt, args.seed)
        reward, metrics = train_reward_model(work / "base", tokenizer, pairs, PreferencePairs([], [], [], []),
                                             replace(RewardModelConfig(), epochs=args.reward_epochs), work / "rm")
        reward.save_pretrained(work / "reward")
        tokenizer.save_pretrained(work / "reward")
        torch.save({"prompt_texts": prompt_texts, "prompts": prompts, "completions": completions, "pairs": pairs},
                   work / "data.pt")
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"base {args.base}/{args.preset}: {params:.1f}M parameters on {args.device}; {len(prompt_texts)} prompts, "
              f"{len(completions)} stored stories, {len(pairs)} implied pairs (reward model train accuracy "
              f"{metrics['train_accuracy']:.2f}); setup {time.perf_counter() - t0:.0f} s")
        print(f"preference {args.preference!r} (noise {args.noise}); {args.eval_per_prompt} fresh stories per prompt; "
              f"intervals: 95% bootstrap over prompts")
        print(f"{'algorithm':14s} {'train s':>8s} {'peak MB':>8s} {'RM score [95% CI]':>24s} "
              f"{'preference [95% CI]':>24s} {'distinct-2':>10s} {'KL nats':>8s}")
        ctx = multiprocessing.get_context("spawn")
        for algorithm in args.algorithms:
            with ctx.Pool(1) as pool:
                r = pool.apply(train_one, (algorithm, work, args))
            ci = lambda c: f"{c[0]:+.3f} [{c[1]:+.3f}, {c[2]:+.3f}]"  # noqa: E731
            print(f"{r['algorithm']:14s} {r['seconds']:8.1f} {r['peak_mb']:8.0f} {ci(r['rm']):>24s} {ci(r['pref']):>24s} "
                  f"{r['distinct_2']:10.3f} {r['kl']:8.2f}", flush=True)


if __name__ == "__main__":
    main()
