"""How well does the offline base policy write? Held-out loss per character and a sentence measure.

    python benchmarks/base_quality.py                      # the demo preset (pretrained, or loaded from cache)
    python benchmarks/base_quality.py --preset tiny --set max_chars=150000
    python benchmarks/base_quality.py --model-dir data/corpus/bootstrap-<key>   # any saved bootstrap model

It pretrains the preset with trainer/bootstrap.py (or loads it from the cache under --cache-dir), then

* held-out loss: on the held-out split of the corpus as the CURRENT cleaning makes it, tokenized with the
  model's own tokenizer, in non-overlapping blocks of the model's context. Reported per token (and as
  perplexity, which depends on the tokenizer) and per character (nats and bits): only the per-character
  figures compare across tokenizers.
* sentence measure: continuations of every demo prompt (app/demo_data.py) sampled with the trainer's
  generation code (trainer/generate.py) and settings (trainer/config.py GenerationConfig unless given):
    - known words: share of the words (letters and apostrophes) that occur in the training split;
    - seen bigrams: share of adjacent word pairs (within a sentence) that occur in the training split;
    - good sentences: share of the complete sentences (those ending in . ! or ?, optionally followed by
      a closing quote; the unfinished tail of a continuation is not counted) that start with a capital
      letter, have at least 3 words, all of them known, and no word repeated twice in a row;
    - sentences per continuation: complete sentences per continuation.
  Then 3 samples (the first continuation of the first 3 demo prompts), unedited.

Threads: torch runs with --threads (default 1, as the trainer pretrains), so the timings are CPU-bound on
one core; ``train_cpu_seconds`` / ``steps`` is the time a step takes on one idle core.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from trainer.bootstrap import (  # noqa: E402
    PRESETS,
    BootstrapConfig,
    bootstrap_policy,
    encode_stream,
    eval_chars,
    evaluate_lm,
    load_corpus,
    split_corpus,
)

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)]*(?=\s|$)")


def complete_sentences(text: str) -> list[str]:
    """The sentences of ``text`` that end in . ! or ? (plus closing quotes); the unfinished tail is dropped."""
    out, start = [], 0
    for m in SENTENCE_END.finditer(text):
        sentence = text[start:m.end()].strip()
        if sentence:
            out.append(sentence)
        start = m.end()
    return out


def is_good_sentence(sentence: str, vocab: set[str]) -> bool:
    words = WORD.findall(sentence)
    first = sentence.lstrip("\"'\u201c\u2018(\u2014- ")
    return (len(words) >= 3 and first[:1].isupper() and all(w.lower() in vocab for w in words)
            and not any(a.lower() == b.lower() for a, b in zip(words, words[1:])))


def sentence_measure(continuations: list[str], vocab: set[str], bigrams: set[tuple[str, str]]) -> dict:
    words = [w.lower() for c in continuations for w in WORD.findall(c)]
    pairs = [(a.lower(), b.lower()) for c in continuations for s in re.split(r"[.!?;:\u2014\"]", c)
             for a, b in zip(WORD.findall(s), WORD.findall(s)[1:])]
    sentences = [s for c in continuations for s in complete_sentences(c)]
    good = sum(is_good_sentence(s, vocab) for s in sentences)
    return {
        "known_words": round(sum(w in vocab for w in words) / max(1, len(words)), 4),
        "seen_bigrams": round(sum(p in bigrams for p in pairs) / max(1, len(pairs)), 4),
        "good_sentences": round(good / max(1, len(sentences)), 4),
        "sentences_per_continuation": round(len(sentences) / max(1, len(continuations)), 3),
        "continuations": len(continuations),
    }


def held_out_loss(model, tokenizer, held_texts: list[str], batch_size: int = 16) -> dict:
    block = model.config.n_positions
    stream = encode_stream(tokenizer, held_texts)
    max_blocks = (len(stream) - 1) // block
    loss = evaluate_lm(model, stream, block, max_blocks, batch_size, str(next(model.parameters()).device))
    n_tokens, n_chars = eval_chars(tokenizer, stream, block, max_blocks)
    return {"loss_per_token": round(loss, 4), "perplexity": round(math.exp(loss), 2),
            "loss_per_char": round(loss * n_tokens / n_chars, 4),
            "bits_per_char": round(loss * n_tokens / n_chars / math.log(2), 4),
            "chars_per_token": round(n_chars / n_tokens, 3), "held_out_chars": n_chars}


def load_saved(folder: Path):
    from trainer.model_store import load_causal_lm, load_tokenizer

    meta = json.loads((folder / "storyloop_bootstrap.json").read_text())["metrics"]
    return load_causal_lm(folder, "cpu"), load_tokenizer(folder), {**meta, "cached": True}


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> dict:
    from app.demo_data import demo_prompts
    from trainer.config import GenerationConfig
    from trainer.generate import generate_stories

    gen = GenerationConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a BootstrapConfig field (JSON value), e.g. --set steps=300")
    parser.add_argument("--model-dir", type=Path, help="evaluate this saved bootstrap model instead")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/corpus"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=gen.max_new_tokens)
    parser.add_argument("--temperature", type=float, nargs="+", default=[gen.temperature])
    parser.add_argument("--top-p", type=float, default=gen.top_p)
    parser.add_argument("--min-new-tokens", type=int, default=gen.min_new_tokens)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = BootstrapConfig.preset(args.preset, device="cpu", cpu_threads=args.threads, **overrides)
    if args.model_dir:
        model, tok, metrics = load_saved(args.model_dir)
    else:
        def show(step, total, m):
            if step % 100 == 0 or step == total:
                print(f"step {step}/{total} loss {m['loss_ema']:.3f} lr {m['lr']:.2e} {m['seconds']:.0f}s",
                      file=sys.stderr, flush=True)
        model, tok, metrics = bootstrap_policy(cfg, args.cache_dir, show)

    docs = load_corpus("austen", args.cache_dir)
    train_texts, held_texts = split_corpus(docs, cfg.eval_fraction)
    vocab, bigrams = set(), set()
    for text in train_texts:
        for s in re.split(r"[.!?;:\u2014\"]", text):
            words = [w.lower() for w in WORD.findall(s)]
            vocab.update(words)
            bigrams.update(zip(words, words[1:]))

    steps = metrics.get("steps")
    result = {
        "model": str(args.model_dir or f"preset {args.preset} {overrides or ''}".strip()),
        "cached": metrics.get("cached"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "shape": {k: getattr(model.config, k) for k in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")},
        "steps": steps,
        "tokens_seen": metrics.get("tokens_seen"),
        "train_seconds": metrics.get("train_seconds"),
        "train_cpu_seconds": metrics.get("train_cpu_seconds"),
        "cpu_seconds_per_step": round(metrics["train_cpu_seconds"] / steps, 4) if steps else None,
        "held_out": held_out_loss(model, tok, held_texts),
        "sampling": {},
    }
    prompts = [p.text for p in demo_prompts()]
    for temperature in args.temperature:
        torch.manual_seed(args.seed)
        t0 = time.monotonic()
        stories = generate_stories(model, tok, prompts, num_return_sequences=args.samples_per_prompt,
                                   max_new_tokens=args.max_new_tokens, temperature=temperature, top_p=args.top_p,
                                   min_new_tokens=args.min_new_tokens)
        outs = [[s.text for s in per_prompt] for per_prompt in stories]
        flat = [c for per_prompt in outs for c in per_prompt]
        ended = [s.ended for per_prompt in stories for s in per_prompt]
        result["sampling"][f"T={temperature} top_p={args.top_p}"] = {
            **sentence_measure(flat, vocab, bigrams), "eos_rate": sum(ended) / len(ended),
            "seconds": round(time.monotonic() - t0, 1),
            "samples": [f"{prompts[i]}|||{outs[i][0]}" for i in range(3)]}

    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
