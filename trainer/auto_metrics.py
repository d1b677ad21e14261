"""Automatic metrics of a policy version's continuations, computed by the trainer after each round.

- mean_reward: mean reward-model score of ``prompt + completion_text(c)`` (trainer.ppo.score_sequences);
- distinct_1 / distinct_2: distinct word uni-/bigrams over all its continuations / all of them (Li et al. 2016);
- mean_length, length_p10/p50/p90: words (whitespace-separated) per continuation;
- eos_rate: share of continuations that ended with end-of-text (rather than at the token cap);
- perplexity: exp(mean negative log-likelihood per continuation token) under the reference model (the
  base policy, or the supervised baseline), conditioned on the prompt. Lower = closer to the
  reference's idea of fluent text;
- kl_to_reference: mean log pi(y|x) - log pi_ref(y|x) over the version's stories (nats per story);
- copy_similarity: median character similarity of its stories to the previous version's.
Besides, ``score_versions`` scores every version with one reward model, so versions compare.

``auto_metrics`` is a pure function of texts and models; ``compute_for_version`` loads them from the
database and the model store. The lead stores the result in ModelVersion.metrics["auto"].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from difflib import SequenceMatcher
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
def completion_logprobs(model, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                        batch_size: int = 16) -> tuple[list[float], list[int]]:
    """Per (prompt, completion): the summed log-probability of the completion tokens given the prompt,
    and their number (0 for an empty completion).

    Prompt and completion are tokenized separately and joined (as a GPT-2 tokenizer splits before a
    space anyway); too long sequences keep their end, up to the model's context."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sums, counts = [0.0] * len(prompts), [0] * len(prompts)
    for i in range(0, len(prompts), batch_size):
        rows = []  # (index, ids, completion tokens)
        for j, p, c in zip(range(i, i + batch_size), prompts[i : i + batch_size], completions[i : i + batch_size]):
            p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
            c_ids = tokenizer(c, add_special_tokens=False)["input_ids"][:limit - 1]
            if c_ids:
                rows.append((j, (p_ids + c_ids)[-limit:], len(c_ids)))
        if not rows:
            continue
        width = max(len(ids) for _, ids, _ in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, (_, ids, n_completion) in enumerate(rows):  # right padding; only completion tokens are scored
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention[r, : len(ids)] = 1
            labels[r, len(ids) - n_completion : len(ids)] = torch.tensor(ids[len(ids) - n_completion :])
        input_ids, attention, labels = input_ids.to(device), attention.to(device), labels.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()  # (B, T-1, V)
        target = labels[:, 1:]  # (B, T-1)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        mask = target != -100  # (B, T-1)
        for r, (j, _, n_completion) in enumerate(rows):
            sums[j], counts[j] = -float((nll[r] * mask[r]).sum()), n_completion
    model.train(was_training)
    return sums, counts


def perplexity_of(sums: Sequence[float], counts: Sequence[int]) -> float | None:
    """exp(total NLL of completion tokens / their number), from completion_logprobs' output."""
    return math.exp(-sum(sums) / sum(counts)) if sum(counts) else None


def mean_log_ratio(policy_lp: Sequence[float], reference_lp: Sequence[float], counts: Sequence[int]) -> float | None:
    """Mean over stories of log pi(y|x) - log pi_ref(y|x) (nats per story): the Monte-Carlo estimate of
    KL(pi || pi_ref) when the stories were sampled from pi (approximate here: stored stories were
    sampled with top-p and trimmed)."""
    per_story = [p - r for p, r, n in zip(policy_lp, reference_lp, counts) if n]
    return sum(per_story) / len(per_story) if per_story else None


def reference_perplexity(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 16) -> float | None:
    """Perplexity of the completions under ``model``, each conditioned on its prompt."""
    return perplexity_of(*completion_logprobs(model, tokenizer, prompts, completions, batch_size))


def kl_estimate(policy, reference, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                batch_size: int = 16) -> float | None:
    """mean_log_ratio of the completions under ``policy`` and ``reference``."""
    policy_lp, counts = completion_logprobs(policy, tokenizer, prompts, completions, batch_size)
    reference_lp, _ = completion_logprobs(reference, tokenizer, prompts, completions, batch_size)
    return mean_log_ratio(policy_lp, reference_lp, counts)


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def copy_similarity(new_by_prompt: dict[int, list[str]], old_by_prompt: dict[int, list[str]]) -> float | None:
    """Median over new stories of the highest character similarity (difflib ratio, 0..1) to any older
    story of the same prompt: near 1 means the new version mostly rewrites what the old one wrote."""
    best = [max(SequenceMatcher(None, new, old, autojunk=False).ratio() for old in old_by_prompt[prompt])
            for prompt, texts in new_by_prompt.items() if old_by_prompt.get(prompt) for new in texts]
    return quantile(best, 0.5)


def auto_metrics(prompts: Sequence[str], continuations: Sequence[str], *, ended: Sequence[bool | None] | None = None,
                 reward_model=None, reward_tokenizer=None, reference_model=None, reference_tokenizer=None,
                 policy_model=None, batch_size: int = 16) -> dict[str, Any]:
    """The metrics dict for one version's (prompt, continuation) pairs; model-based ones only when given.

    ``ended``: per continuation whether the model emitted end-of-text (None: unknown, e.g. imported).
    ``policy_model``: the version's own model (same tokenizer as the reference) for ``kl_to_reference``."""
    if len(prompts) != len(continuations):
        raise ValueError("one prompt per continuation")
    lengths = [len(words(c)) for c in continuations]
    known_ends = [e for e in (ended or []) if e is not None]
    result: dict[str, Any] = {
        "n": len(continuations),
        "distinct_1": distinct_n(continuations, 1),
        "distinct_2": distinct_n(continuations, 2),
        "mean_length": sum(lengths) / len(lengths) if lengths else None,
        "length_p10": quantile(lengths, 0.1),
        "length_p50": quantile(lengths, 0.5),
        "length_p90": quantile(lengths, 0.9),
        "eos_rate": sum(known_ends) / len(known_ends) if known_ends else None,
        "mean_reward": None,
        "perplexity": None,
        "kl_to_reference": None,
    }
    if not continuations:
        return result
    completions = [completion_text(c) for c in continuations]
    if reward_model is not None:
        scores = score_sequences(reward_model, reward_tokenizer, list(prompts), completions, batch_size)
        result["mean_reward"] = float(scores.float().mean())
    if reference_model is not None:
        # one pass of the reference serves both figures (on 2 CPU cores a pass over a round's stories
        # costs tens of seconds)
        reference_lp, counts = completion_logprobs(reference_model, reference_tokenizer, prompts, completions, batch_size)
        result["perplexity"] = perplexity_of(reference_lp, counts)
        if policy_model is not None:
            policy_lp, _ = completion_logprobs(policy_model, reference_tokenizer, prompts, completions, batch_size)
            result["kl_to_reference"] = mean_log_ratio(policy_lp, reference_lp, counts)
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


def _stories(db, version_id: int, limit: int):
    """(prompt id, prompt text, continuation text, ended or None) of a version, newest first."""
    rows = db.execute(select(Continuation.prompt_id, Prompt.text, Continuation.text, Continuation.generation_settings)
                      .join(Prompt, Prompt.id == Continuation.prompt_id)
                      .where(Continuation.model_version_id == version_id)
                      .order_by(Continuation.id.desc()).limit(limit)).all()
    return [(pid, p, c, (settings or {}).get("ended")) for pid, p, c, settings in rows]


def compute_for_version(database: Database, store, version_id: int, reward_version_id: int | None = None,
                        reference_version_id: int | None = None, previous_version_id: int | None = None,
                        max_continuations: int = 256, device: str | None = "cpu") -> dict[str, Any]:
    """Loads the version's continuations (newest first, at most max_continuations), the latest reward
    model (or reward_version_id), the reference policy (default: the root base) and the version's own
    model, and returns ``auto_metrics`` plus ``copy_similarity`` to ``previous_version_id``'s stories."""
    from trainer import model_store

    with database.read() as db:
        rows = _stories(db, version_id, max_continuations)
        previous = _stories(db, previous_version_id, 10 * max_continuations) if previous_version_id else []
        if reward_version_id is None:
            reward_version_id = db.scalar(select(ModelVersion.id).where(ModelVersion.kind == "reward",
                                                                        ModelVersion.path.is_not(None))
                                          .order_by(ModelVersion.id.desc()).limit(1))
    reference_version_id = reference_version_id or root_policy_id(database, version_id)
    kwargs: dict[str, Any] = {}
    if reward_version_id is not None:
        _, kwargs["reward_model"], kwargs["reward_tokenizer"] = model_store.load_version(database, store, reward_version_id, device)
    _, kwargs["reference_model"], kwargs["reference_tokenizer"] = model_store.load_version(
        database, store, reference_version_id, device)
    if reference_version_id != version_id:
        _, kwargs["policy_model"], _ = model_store.load_version(database, store, version_id, device)
    result = auto_metrics([p for _, p, _, _ in rows], [c for _, _, c, _ in rows], ended=[e for *_, e in rows], **kwargs)
    if reference_version_id == version_id:
        result["kl_to_reference"] = 0.0
    result["reward_version_id"] = reward_version_id
    result["reference_version_id"] = reference_version_id
    if previous:
        by_prompt: dict[int, list[str]] = {}
        for pid, _, c, _ in previous:
            by_prompt.setdefault(pid, []).append(c)
        new_by_prompt: dict[int, list[str]] = {}
        for pid, _, c, _ in rows:
            new_by_prompt.setdefault(pid, []).append(c)
        result["copy_similarity"] = copy_similarity(new_by_prompt, by_prompt)
        result["previous_version_id"] = previous_version_id
    return result


def score_versions(database: Database, store, reward_version_id: int, prompt_ids: Sequence[int],
                   max_per_version: int = 256, device: str | None = "cpu") -> dict[str, dict[str, float]]:
    """Every version's mean score under ONE reward model, on the given prompts: {str(version id): {mean, n}}.

    Scores from different rounds' reward models are on different scales; only scores from the same
    reward model compare versions, so each round rescores every version with its own new one."""
    from trainer import model_store

    with database.read() as db:
        rows = db.execute(select(Continuation.model_version_id, Prompt.text, Continuation.text)
                          .join(Prompt, Prompt.id == Continuation.prompt_id)
                          .where(Continuation.prompt_id.in_(list(prompt_ids)))
                          .order_by(Continuation.model_version_id, Continuation.id.desc())).all()
    by_version: dict[int, list[tuple[str, str]]] = {}
    for version_id, prompt, text in rows:
        if len(by_version.setdefault(version_id, [])) < max_per_version:
            by_version[version_id].append((prompt, completion_text(text)))
    _, reward_model, tokenizer = model_store.load_version(database, store, reward_version_id, device)
    result = {}
    for version_id, pairs in by_version.items():
        scores = score_sequences(reward_model, tokenizer, [p for p, _ in pairs], [c for _, c in pairs])
        result[str(version_id)] = {"mean": float(scores.mean()), "n": len(pairs)}
    return result
