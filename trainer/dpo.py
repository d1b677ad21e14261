"""DPO from BWS judgements, with TRL's DPOTrainer: no reward model in the loop.

DPO (Rafailov et al. 2023) learns straight from the preference pairs that the BWS judgements imply (the
same prompt / chosen / rejected columns as the `pairs` export and reward training), with the round's
reference policy as the frozen reference.

KTO (TRL's KTOTrainer on the same pairs unpaired) was tried and left out: on the tests' marker task it
either barely moved the policy (DPO's settings, one pass) or collapsed it (three passes: KL to the
reference over 100 nats), so it is not offered as a round algorithm.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from trainer.data import PreferencePairs
from trainer.generate import context_length
from trainer.hf_args import checkpointing
from trainer.lora import AdapterOff, make_trainable
from trainer.reward_model import _Progress


@dataclass
class DPOSettings:
    beta: float = 0.1  # strength of the implicit KL leash to the reference (higher = closer to it)
    learning_rate: float = 5e-6
    epochs: float = 1.0
    batch_size: int = 8
    max_steps: int = -1  # > 0: stop after this many optimizer steps (overrides epochs)
    max_length: int = 256  # tokens of prompt + continuation; longer pairs are truncated by TRL
    seed: int = 0


def _dpo_args(cfg: DPOSettings, model, work_dir: Path) -> DPOConfig:
    return DPOConfig(output_dir=str(work_dir), beta=cfg.beta, learning_rate=cfg.learning_rate,
                num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
                max_length=min(cfg.max_length, context_length(model)), seed=cfg.seed, logging_steps=5,
                save_strategy="no", report_to=[], disable_tqdm=True, **checkpointing(False),
                use_cpu=not torch.cuda.is_available(),
                bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def train_dpo(policy, ref_policy, tokenizer, pairs: PreferencePairs, cfg: DPOSettings, work_dir: Path,
              report: Callable[[int, int, dict], None] = lambda step, total, metrics: None):
    """Train `policy` (in place) by DPO on `pairs`, leashed to the frozen `ref_policy`.
    Returns (policy in eval mode, metrics: the last logged values and the training loss)."""
    if len(pairs) == 0:
        raise ValueError("no preference pairs: collect BWS judgements first")
    make_trainable(policy)
    if isinstance(ref_policy, AdapterOff):  # LoRA: TRL reads the reference with the adapter off itself
        ref_policy = None
    else:
        ref_policy = ref_policy.eval().requires_grad_(False)
    logged: dict[str, float] = {}

    def remember(step: int, total: int, metrics: dict) -> None:
        logged.update(metrics)
        report(step, total, metrics)

    trainer = DPOTrainer(model=policy, ref_model=ref_policy,
                         args=_dpo_args(cfg, policy, work_dir), train_dataset=Dataset.from_dict(pairs.as_columns()),
                         processing_class=tokenizer, callbacks=[_LoggedMetrics(remember)])
    with warnings.catch_warnings():
        # Not our call: TRL's DPOTrainer reads `model.is_gradient_checkpointing` at every step
        # (trl/models/utils.py, disable_gradient_checkpointing), which transformers 5 has deprecated.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        result = trainer.train()
    return trainer.model.float().eval(), {**logged, "train_loss": float(result.training_loss), "pairs": len(pairs),
                                          "steps": int(result.global_step)}


class _LoggedMetrics(_Progress):
    """Every numeric value TRL logs (loss, rewards/margins, rewards/accuracies, ...), not only the loss."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) and k != "epoch"}
        if numbers:
            self.report(state.global_step, state.max_steps, numbers)
