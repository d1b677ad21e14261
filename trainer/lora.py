"""Policy versions as LoRA adapters (PEFT) on the round's reference policy.

A trained version is saved as its adapter only (megabytes, beside a base of hundreds), with
``settings["adapter_of"]`` naming the version it sits on; model_store.load_version puts it back on that
base. Every adapter sits on the reference (the base, or the supervised baseline), and a round continues
training the newest adapter, so the reference is always the same network with the adapter switched off
(:class:`AdapterOff`): no second copy of the model in memory.

Dropout stays 0: PPO's policy ratios must be exactly 1 before its first update.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class LoRASettings:
    r: int = 16  # rank of each adapter matrix
    alpha: int = 32  # scaling: the update is (alpha / r) * B A
    target_modules: str = "all-linear"  # PEFT's name for every linear layer but the output head
    dropout: float = 0.0


def is_adapter(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).exists()


def new_adapter(base_model, settings: LoRASettings):
    """A fresh, trainable LoRA adapter on `base_model` (whose own weights stay frozen). It starts as a no-op:
    PEFT initialises B to zero, so the adapted model equals the base until the first update."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    transposed = any(isinstance(m, Conv1D) for m in base_model.modules())  # GPT-2 keeps its weights (in, out)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, fan_in_fan_out=transposed, task_type="CAUSAL_LM")
    return get_peft_model(base_model, config)


def load_adapter(base_model, folder: Path, trainable: bool = False):
    """A saved adapter put back on its base model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(folder), is_trainable=trainable)


def backbone_state_dict(model) -> dict:
    """The weights of a causal LM's transformer body, without any LoRA layers PEFT put into it."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = getattr(core, core.base_model_prefix).state_dict()
    return {k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}


def make_trainable(model):
    """A PEFT model trains its adapter only (PEFT froze the rest); any other model trains every weight."""
    if not hasattr(model, "peft_config"):
        model.requires_grad_(True)
    return model


class AdapterOff:
    """The reference policy as a view of the policy: the same PeftModel called with its adapter disabled.

    Callable like a model; `.to`, `.eval` and `.requires_grad_` do nothing, because the network belongs
    to the policy being trained (freezing it here would freeze the adapter too)."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def __call__(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    @property
    def config(self):
        return self.peft_model.config

    def parameters(self):
        return self.peft_model.parameters()

    @property
    def training(self) -> bool:
        return self.peft_model.training

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def requires_grad_(self, requires_grad: bool = True):
        return self
