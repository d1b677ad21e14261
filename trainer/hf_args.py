"""Arguments of transformers' TrainingArguments (and so of TRL's configs) whose names changed."""

import dataclasses
from functools import cache

from transformers import TrainingArguments


@cache
def _argument_names() -> frozenset[str]:
    return frozenset(field.name for field in dataclasses.fields(TrainingArguments))


def checkpointing(enabled: bool) -> dict[str, bool]:
    """Activation (gradient) checkpointing on or off, under the name the installed transformers knows.
    Newer ones call it `activation_checkpointing` and warn (FutureWarning) for `gradient_checkpointing`,
    which TRL's configs set by default (to True) unless the new name is given."""
    name = "activation_checkpointing" if "activation_checkpointing" in _argument_names() else "gradient_checkpointing"
    return {name: enabled}
