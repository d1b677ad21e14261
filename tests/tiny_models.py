"""Tiny, offline models for tests: a byte-level BPE tokenizer trained on a synthetic story corpus, a
2-layer 64-dim GPT-2 pretrained on it for a few hundred steps, and a GPT-2 reward model trained with a
Bradley-Terry loss. Everything builds in seconds on a CPU and needs no hub download.

    pairs = story_corpus(2000)                       # [(prompt, continuation)], ~10% contain "dragon"
    tok = train_tiny_tokenizer(p + c for p, c in pairs)
    lm = pretrain_lm(tiny_lm(tok), tok, [p + c for p, c in pairs])
    rm = train_reward_model(tiny_reward_model(tok, init_from=lm), tok, preference_pairs(...))
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS, PAD = "<|endoftext|>", "<pad>"
PROMPTS = ["once upon a time", "one day", "long ago", "in the morning", "at night", "in a small town",
           "after the rain", "on a cold day"]
SUBJECTS = ["cat", "dog", "bird", "girl", "boy", "fox", "king", "queen", "frog", "baker"]
VERBS = ["saw", "found", "liked", "met", "chased", "fed", "painted", "lost"]
ADJECTIVES = ["big", "small", "red", "old", "happy", "quiet"]
OBJECTS = ["tree", "river", "ball", "moon", "cake", "house", "friend", "boat", "hat", "star"]
ENDINGS = ["", "", " and went home", " and smiled", " in the park"]


def story_continuation(rng: random.Random, marker: str | None = None) -> str:
    """One continuation such as " the cat saw a red ball and smiled ." (leading space, like GPT-2 text).
    With ``marker`` the marker word replaces the subject or the object."""
    subject, obj = rng.choice(SUBJECTS), rng.choice(OBJECTS)
    if marker is not None:
        if rng.random() < 0.5:
            subject = marker
        else:
            obj = marker
    adj = f"{rng.choice(ADJECTIVES)} " if rng.random() < 0.5 else ""
    return f" the {subject} {rng.choice(VERBS)} a {adj}{obj}{rng.choice(ENDINGS)} ."


def story_corpus(n: int, marker: str = "dragon", marker_rate: float = 0.1, seed: int = 0) -> list[tuple[str, str]]:
    """n (prompt, continuation) pairs; a fraction ``marker_rate`` of continuations contain ``marker``."""
    rng = random.Random(seed)
    return [(rng.choice(PROMPTS), story_continuation(rng, marker if rng.random() < marker_rate else None))
            for _ in range(n)]


def preference_pairs(n: int, marker: str = "dragon", seed: int = 1) -> list[tuple[str, str, str]]:
    """n (prompt, chosen, rejected) triples: chosen contains the marker, rejected does not."""
    rng = random.Random(seed)
    return [(rng.choice(PROMPTS), story_continuation(rng, marker), story_continuation(rng)) for _ in range(n)]


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style: decoded continuations keep their leading space) with EOS and a
    SEPARATE pad token, so a sequence classifier pools at a trailing EOS rather than skipping it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def tiny_gpt2_config(tokenizer, n_positions: int = 64, n_embd: int = 64, n_layer: int = 2, n_head: int = 2,
                     **kwargs) -> GPT2Config:
    return GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                      n_head=n_head, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, **kwargs)


def tiny_lm(tokenizer, seed: int = 0, **config_kwargs) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_gpt2_config(tokenizer, **config_kwargs))


def tiny_reward_model(tokenizer, init_from: GPT2LMHeadModel | None = None,
                      seed: int = 0) -> GPT2ForSequenceClassification:
    """num_labels=1 classifier; with ``init_from`` its transformer starts from that LM's weights."""
    torch.manual_seed(seed)
    cfg = init_from.config if init_from is not None else tiny_gpt2_config(tokenizer)
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("id2label", "label2id")}
    rm = GPT2ForSequenceClassification(GPT2Config.from_dict({**d, "num_labels": 1}))
    if init_from is not None:
        rm.transformer.load_state_dict(init_from.transformer.state_dict())
    return rm


def pretrain_lm(model, tokenizer, texts: list[str], steps: int = 300, batch_size: int = 32, lr: float = 3e-3,
                seed: int = 0):
    """Plain next-token training on ``text + EOS`` (pad positions ignored). Returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(texts), (batch_size,), generator=gen).tolist()
        enc = tokenizer([texts[i] + tokenizer.eos_token for i in idx], padding=True, padding_side="right",
                        return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_reward_model(rm, tokenizer, triples: list[tuple[str, str, str]], format_fn, steps: int = 150,
                       batch_size: int = 32, lr: float = 1e-3, seed: int = 0):
    """Bradley-Terry training, -log sigmoid(r(chosen) - r(rejected)), on texts built by ``format_fn(prompt,
    completion, eos_token)`` (pass trainer.reward_format.format_for_reward). Returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=0.0)
    rm.train()
    for _ in range(steps):
        idx = torch.randint(len(triples), (batch_size,), generator=gen).tolist()
        chosen = [format_fn(triples[i][0], triples[i][1], tokenizer.eos_token) for i in idx]
        rejected = [format_fn(triples[i][0], triples[i][2], tokenizer.eos_token) for i in idx]
        enc = tokenizer(chosen + rejected, padding=True, padding_side="right", return_tensors="pt")
        r = rm(**enc).logits[:, 0]  # (2 * batch,)
        loss = -torch.nn.functional.logsigmoid(r[:batch_size] - r[batch_size:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rm.eval()


def save_tiny_base(folder: Path, steps: int = 150) -> Path:
    """A tiny GPT-2 saved with save_pretrained: the same path a hub id takes, minus the download."""
    pairs = story_corpus(1500)
    tokenizer = train_tiny_tokenizer(p + c for p, c in pairs)
    model = pretrain_lm(tiny_lm(tokenizer, n_positions=128), tokenizer, [p + c for p, c in pairs], steps=steps)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def marker_task(marker: str = "dragon", seed: int = 0):
    """(tokenizer, LM, reward model) of the tests' learning task: an LM pretrained on stories where ~10% of
    continuations contain `marker`, and a reward model trained to prefer the ones that do."""
    from trainer.reward_format import format_for_reward

    corpus = story_corpus(3000, marker=marker, marker_rate=0.1, seed=seed)
    tok = train_tiny_tokenizer(p + c for p, c in corpus)
    lm = pretrain_lm(tiny_lm(tok, seed=seed), tok, [p + c for p, c in corpus], steps=300, seed=seed)
    rm = train_reward_model(tiny_reward_model(tok, init_from=lm, seed=seed), tok,
                            preference_pairs(2000, marker, seed=seed + 1), format_for_reward, steps=150, seed=seed)
    return tok, lm, rm
