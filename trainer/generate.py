"""Batched sampling from a causal LM, shared by PPO rollouts and by the story generator.

We sample with our own loop instead of ``model.generate`` so that the distribution we sample from is
exactly the one PPO scores, with nothing merged in from a checkpoint's ``generation_config`` (repetition
penalties, default top_k=50, ...). ONE function, :func:`sampling_logits`, applies the transforms of a
:class:`Sampling` (temperature, no end-of-text before ``min_new_tokens``, top-k / top-p); the sampler draws
from its output and :func:`response_logprobs` scores a response with it, so log-probs are always those of
the distribution the tokens were drawn from.

Shapes: B = sequences in the batch, P = padded prompt length, K = new tokens, V = vocabulary.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def context_length(model) -> int:
    """How many positions the model can attend to (GPT-2: n_positions)."""
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024


def left_pad_prompts(tokenizer, prompts: list[str], device, max_prompt_tokens: int | None = None):
    """Tokenize prompts left-padded (so every row ends at the same column), keeping the END of long prompts.

    Returns ``input_ids`` (B, P) and ``attention_mask`` (B, P), 0 on padding.
    """
    old_side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"  # a story prompt's end matters more than its start
    try:
        enc = tokenizer(
            prompts,
            padding=True,
            padding_side="left",
            truncation=max_prompt_tokens is not None,
            max_length=max_prompt_tokens,
            return_tensors="pt",
        )
    finally:
        tokenizer.truncation_side = old_side
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B, T) positions that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then nucleus filtering on (..., V) logits; removed entries become -inf. 0 / 1.0 disable them."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)  # (..., V)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs > top_p  # keep the token that crosses top_p
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@dataclass(frozen=True)
class Sampling:
    """How a response's tokens are drawn. Sampling, PPO's rollout and update all go through
    :func:`sampling_logits` with one of these, so what is optimised is what was sampled."""

    temperature: float = 1.0
    min_new_tokens: int = 0  # no end-of-text among the first N new tokens (no empty stories)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off


def sampling_logits(logits: torch.Tensor, sampling: Sampling, eos_token_id: int, first_position: int = 0,
                    nucleus: bool = True) -> torch.Tensor:
    """Raw logits (B, K, V) for response positions ``first_position .. first_position + K - 1`` -> the
    logits that position's token is drawn from: divided by the temperature, end-of-text at -inf before
    ``min_new_tokens``, then top-k / top-p filtered (``nucleus=False`` skips that last step; see
    :func:`response_logprobs`)."""
    logits = logits.float() / sampling.temperature
    K = logits.shape[1]
    if sampling.min_new_tokens > first_position:
        early = torch.arange(first_position, first_position + K, device=logits.device) < sampling.min_new_tokens  # (K,)
        is_eos = torch.arange(logits.shape[-1], device=logits.device) == eos_token_id  # (V,)
        logits = logits.masked_fill(early[:, None] & is_eos[None, :], float("-inf"))  # not in place: autograd
    if nucleus:
        logits = filter_logits(logits, sampling.top_k, sampling.top_p)
    return logits


# A token outside the nucleus has probability 0. Its log-prob is floored here so that a masked-out
# position (padding after end-of-text) never turns a sum into NaN (0 * -inf).
MIN_LOGPROB = -1e4


def response_logprobs(logits: torch.Tensor, response: torch.Tensor, prompt_len: int, sampling: Sampling,
                      eos_token_id: int, nucleus: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, T, V) of prompt + response -> log-probs (B, K) and entropies (B, K) of the response
    tokens under the distribution sampling drew them from (position P-1+t predicts response token t).

    ``nucleus=False`` reads the model's distribution with the temperature and the end-of-text rule but
    without top-k/top-p: PPO scores its REFERENCE that way, because a token outside the reference's own
    nucleus would be infinitely far from it (PPO samples with top-k/top-p off by default anyway)."""
    K = response.shape[1]
    logits = sampling_logits(logits[:, prompt_len - 1 : prompt_len - 1 + K, :], sampling, eos_token_id,
                             nucleus=nucleus)  # (B, K, V)
    logp_all = F.log_softmax(logits, dim=-1)  # (B, K, V); -inf where filtered out
    logp = torch.gather(logp_all, 2, response[:, :, None]).squeeze(-1).clamp(min=MIN_LOGPROB)  # (B, K)
    probs = logp_all.exp()
    entropy = -(probs * logp_all.masked_fill(probs == 0, 0.0)).sum(-1)  # (B, K)
    return logp, entropy


def kv_cache_name(model) -> str:
    """The name of the KV cache, as the forward's argument and in its output: `cache` in newer
    transformers, which deprecate (and warn about) the older `past_key_values`. A PEFT model passes its
    keyword arguments on to the model under it, whose signature decides."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(core.forward).parameters else "past_key_values"


@torch.no_grad()
def sample_tokens(
    model,
    input_ids: torch.Tensor,  # (B, P) left-padded prompt ids
    attention_mask: torch.Tensor,  # (B, P)
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    sampling: Sampling,
) -> torch.Tensor:
    """Sample up to ``max_new_tokens`` tokens per row with a KV cache, each drawn from
    ``sampling_logits`` of the model's logits at its position.

    Returns the new tokens (B, K), K <= max_new_tokens (the loop stops once every row has produced EOS).
    After a row's first EOS its remaining tokens are ``pad_token_id``.
    """
    B = input_ids.shape[0]
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)  # (B,)
    mask = attention_mask.long()  # (B, P + t) grows by one column per step
    step_ids, step_pos = input_ids, position_ids_from_mask(mask)  # first step feeds the whole prompt
    cache_name = kv_cache_name(model)
    past, new_tokens = None, []
    for t in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
                    **{cache_name: past})
        past = getattr(out, cache_name)
        logits = sampling_logits(out.logits[:, -1:, :], sampling, eos_token_id, first_position=t)[:, 0]  # (B, V)
        probs = logits.softmax(-1)  # (B, V)
        nxt = torch.multinomial(probs, 1).squeeze(-1)  # (B,)
        nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
        new_tokens.append(nxt)
        finished |= nxt == eos_token_id
        if bool(finished.all()):
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)  # (B, P + t + 1)
        step_ids = nxt[:, None]  # (B, 1)
        step_pos = (mask.sum(-1, keepdim=True) - 1)  # (B, 1) position of the token just sampled
    return torch.stack(new_tokens, dim=1)  # (B, K)


def truncate_at_eos(response: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) response ids -> (response_mask (B, K) covering tokens up to AND including the first EOS,
    lengths (B,) = number of those tokens). Rows without EOS keep all K tokens."""
    is_eos = response == eos_token_id  # (B, K)
    K = response.shape[1]
    first_eos = is_eos.long().argmax(-1)  # (B,) index of the first EOS (0 when there is none)
    lengths = torch.where(is_eos.any(-1), first_eos + 1, torch.full_like(first_eos, K))  # (B,)
    response_mask = torch.arange(K, device=response.device)[None, :] < lengths[:, None]  # (B, K)
    return response_mask, lengths


def decode_responses(tokenizer, response: torch.Tensor, eos_token_id: int) -> list[str]:
    """Decode each row up to (not including) its first EOS; special tokens are dropped."""
    texts = []
    for row in response.tolist():
        if eos_token_id in row:
            row = row[: row.index(eos_token_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts


SENTENCE_END = re.compile(r"""[.!?]['"\u2019\u201d)]*(?=\s|$)""")
ABBREVIATIONS = re.compile(r"(?:^|\s)(?:Mr|Mrs|Ms|Dr|St|Col|Capt|Sir)\.$")  # "Mr. Darcy" is one sentence


def trim_to_sentence(text: str) -> str:
    """Cut a story that was stopped by the token cap back to its last full sentence.

    A text with no sentence end at all is kept as it is: there is nothing better to show."""
    ends = [m for m in SENTENCE_END.finditer(text) if not ABBREVIATIONS.search(text[: m.end()])]
    return text[: ends[-1].end()] if ends else text


def shown_text(text: str, ended: bool) -> str:
    """What people read (and the reward model scores) of a sample: stripped, and trimmed back to its last
    full sentence when it was stopped by the token cap rather than by end-of-text."""
    return text.strip() if ended else trim_to_sentence(text.strip())


@dataclass(frozen=True)
class Story:
    text: str  # stripped, trimmed to its last full sentence when it hit the token cap
    ended: bool  # the model emitted end-of-text (False: stopped by max_new_tokens)


@torch.no_grad()
def _sample_texts(model, tokenizer, prompts, num_return_sequences, max_new_tokens, temperature, top_p, top_k,
                  batch_size, max_prompt_tokens, min_new_tokens=0) -> list[tuple[str, bool]]:
    """(raw decoded text, whether it emitted EOS) for every prompt repeated ``num_return_sequences`` times."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if max_prompt_tokens is None:  # keep the end of long prompts so prompt + continuation fits the context
        max_prompt_tokens = max(1, context_length(model) - max_new_tokens)
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer needs a pad token (set tokenizer.pad_token = tokenizer.eos_token if unsure)")
    eos = tokenizer.eos_token_id
    flat = [p for p in prompts for _ in range(num_return_sequences)]  # each prompt repeated K times
    out: list[tuple[str, bool]] = []
    for i in range(0, len(flat), batch_size):
        ids, mask = left_pad_prompts(tokenizer, flat[i : i + batch_size], device, max_prompt_tokens)
        response = sample_tokens(
            model, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
            sampling=Sampling(temperature=temperature, min_new_tokens=min_new_tokens, top_k=top_k, top_p=top_p),
        )  # (b, K)
        out.extend(zip(decode_responses(tokenizer, response, eos), response.eq(eos).any(-1).tolist()))
    model.train(was_training)
    return out


def generate_stories(model, tokenizer, prompts: list[str], num_return_sequences: int = 1, max_new_tokens: int = 64,
                     temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, batch_size: int = 16,
                     max_prompt_tokens: int | None = None, min_new_tokens: int = 0) -> list[list[Story]]:
    """Sample ``num_return_sequences`` stories per prompt, ready to store and show to people.

    Returns one list per prompt, in prompt order. Texts are stripped; a story that ran into
    ``max_new_tokens`` without emitting end-of-text is trimmed back to its last full sentence."""
    sampled = _sample_texts(model, tokenizer, prompts, num_return_sequences, max_new_tokens, temperature, top_p,
                            top_k, batch_size, max_prompt_tokens, min_new_tokens)
    stories = [Story(shown_text(t, ended), bool(ended)) for t, ended in sampled]
    n = num_return_sequences
    return [stories[j * n : (j + 1) * n] for j in range(len(prompts))]


def generate_continuations(model, tokenizer, prompts: list[str], num_return_sequences: int = 1,
                           max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                           batch_size: int = 16, max_prompt_tokens: int | None = None) -> list[list[str]]:
    """Raw samples, one list per prompt: EOS and anything after it removed, nothing else (a byte-level
    BPE continuation keeps its leading space, so ``prompt + continuation`` is the full text)."""
    sampled = _sample_texts(model, tokenizer, prompts, num_return_sequences, max_new_tokens, temperature, top_p,
                            top_k, batch_size, max_prompt_tokens)
    n = num_return_sequences
    return [[t for t, _ in sampled[j * n : (j + 1) * n]] for j in range(len(prompts))]
