"""Automatic metrics of a policy version's continuations, computed by the trainer after each round.

- mean_reward: mean reward-model score of ``prompt + completion_text(c)`` (trainer.ppo.score_sequences);
- distinct_1 / distinct_2: distinct word uni-/bigrams over all its continuations / all of them (Li et al. 2016);
- mean_length: mean number of words (whitespace-separated) per continuation;
- perplexity: exp(mean negative log-likelihood per continuation token) under the reference model (the
  root base policy), conditioned on the prompt. Lower = closer to the reference's idea of fluent text.

``auto_metrics`` is a pure function of texts and models; ``compute_for_version`` loads them from the
database and the model store. The lead stores the result in ModelVersion.metrics["auto"].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from sqlalchemy import select

from app.db import Database
from app.models import Continuation, ModelVersion, Prompt
from app.services.story_text import completion_text
from trainer.ppo import score_sequences


def words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct n-grams / total n-grams of words, pooled over all texts; None when there is no n-gram."""
    grams = [tuple(w[i : i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


@torch.no_grad()
def reference_perplexity(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 16) -> float | None:
    """exp(total NLL of completion tokens / their number), each completion conditioned on its prompt.

    Prompt and completion are tokenized separately and joined (as a GPT-2 tokenizer splits before a
    space anyway); too long sequences keep their end, up to the model's context."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    total_nll, total_tokens = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for i in range(0, len(prompts), batch_size):
        rows = []
        for p, c in zip(prompts[i : i + batch_size], completions[i : i + batch_size]):
            p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
            c_ids = tokenizer(c, add_special_tokens=False)["input_ids"][:limit - 1]
            if not c_ids:
                continue
            ids = (p_ids + c_ids)[-limit:]
            rows.append((ids, len(c_ids)))
        if not rows:
            continue
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, (ids, n_completion) in enumerate(rows):  # right padding; only completion tokens are scored
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention[r, : len(ids)] = 1
            labels[r, len(ids) - n_completion : len(ids)] = torch.tensor(ids[len(ids) - n_completion :])
        input_ids, attention, labels = input_ids.to(device), attention.to(device), labels.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()  # (B, T-1, V)
        target = labels[:, 1:]  # (B, T-1)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        mask = target != -100
        total_nll += float((nll * mask).sum())
        total_tokens += int(mask.sum())
    model.train(was_training)
    return math.exp(total_nll / total_tokens) if total_tokens else None


def auto_metrics(prompts: Sequence[str], continuations: Sequence[str], *, reward_model=None, reward_tokenizer=None,
                 reference_model=None, reference_tokenizer=None, batch_size: int = 16) -> dict[str, Any]:
    """The metrics dict for one version's (prompt, continuation) pairs; model-based ones only when given."""
    if len(prompts) != len(continuations):
        raise ValueError("one prompt per continuation")
    lengths = [len(words(c)) for c in continuations]
    result: dict[str, Any] = {
        "n": len(continuations),
        "distinct_1": distinct_n(continuations, 1),
        "distinct_2": distinct_n(continuations, 2),
        "mean_length": sum(lengths) / len(lengths) if lengths else None,
        "mean_reward": None,
        "perplexity": None,
    }
    if not continuations:
        return result
    completions = [completion_text(c) for c in continuations]
    if reward_model is not None:
        scores = score_sequences(reward_model, reward_tokenizer, list(prompts), completions, batch_size)
        result["mean_reward"] = float(scores.float().mean())
    if reference_model is not None:
        result["perplexity"] = reference_perplexity(reference_model, reference_tokenizer, prompts, completions, batch_size)
    return result


def root_policy_id(database: Database, version_id: int) -> int:
    """The base policy a version descends from (itself for a root)."""
    with database.read() as db:
        version = db.get(ModelVersion, version_id)
        while version.parent_id is not None:
            parent = db.get(ModelVersion, version.parent_id)
            if parent is None or parent.kind != "policy":
                break
            version = parent
        return version.id


def compute_for_version(database: Database, store, version_id: int, reward_version_id: int | None = None,
                        max_continuations: int = 256, device: str | None = "cpu") -> dict[str, Any]:
    """Loads the version's continuations (newest first, at most max_continuations), the latest reward
    model (or reward_version_id) and the reference policy, and returns ``auto_metrics``."""
    from trainer import model_store

    with database.read() as db:
        rows = db.execute(select(Prompt.text, Continuation.text).join(Prompt, Prompt.id == Continuation.prompt_id)
                          .where(Continuation.model_version_id == version_id)
                          .order_by(Continuation.id.desc()).limit(max_continuations)).all()
        if reward_version_id is None:
            reward_version_id = db.scalar(select(ModelVersion.id).where(ModelVersion.kind == "reward",
                                                                        ModelVersion.path.is_not(None))
                                          .order_by(ModelVersion.id.desc()).limit(1))
    prompts, texts = [p for p, _ in rows], [c for _, c in rows]
    kwargs: dict[str, Any] = {}
    if reward_version_id is not None:
        _, kwargs["reward_model"], kwargs["reward_tokenizer"] = model_store.load_version(database, store, reward_version_id, device)
    _, kwargs["reference_model"], kwargs["reference_tokenizer"] = model_store.load_version(
        database, store, root_policy_id(database, version_id), device)
    result = auto_metrics(prompts, texts, **kwargs)
    result["reward_version_id"] = reward_version_id
    return result
