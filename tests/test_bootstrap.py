"""The offline bootstrap policy: corpus loader, BPE tokenizer, and from-scratch pretraining that learns.

The learning test runs on a synthetic corpus, so it never depends on the Debian package. The Austen
corpus is tested separately; it is skipped when unavailable EXCEPT under CI (CI=true), where that fails.
The corpus is cached in pytest's cache folder, so only the first run downloads it (apt-get download).
"""

import os
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")

from tests.tiny_models import story_corpus  # noqa: E402
from trainer import bootstrap  # noqa: E402
from trainer.bootstrap import (  # noqa: E402
    AUSTEN_BOOKS,
    CORPUS_CACHE_VERSION,
    PRESETS,
    BootstrapConfig,
    CorpusUnavailable,
    bootstrap_policy,
    clean_paragraph,
    encode_stream,
    lines_to_paragraphs,
    load_corpus,
    split_corpus,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def austen_cache(request) -> Path:
    return Path(request.config.cache.mkdir("storyloop-corpus"))


def _austen_or_skip(cache: Path):
    try:
        return load_corpus("austen", cache)
    except CorpusUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the Austen corpus: {e}")
        pytest.skip(f"Austen corpus unavailable: {e}")


def _synthetic_corpus(path: Path, n_docs: int = 4, paras: int = 150) -> Path:
    """Story-like paragraphs with learnable structure, one .txt file per document."""
    path.mkdir()
    pairs = story_corpus(n_docs * paras * 3, seed=3)
    rng = random.Random(0)
    for d in range(n_docs):
        chunk = pairs[d * paras * 3:(d + 1) * paras * 3]
        text = "\n\n".join(
            " ".join(f"{p.capitalize()},{c}" for p, c in chunk[i:i + 3]) for i in range(0, len(chunk), 3))
        (path / f"doc{d}.txt").write_text(text + ("\n" if rng.random() < 0.5 else ""))
    return path


def test_tokenizer_round_trips_text():
    texts = ["It is a truth universally acknowledged, that a single man in possession of a good fortune.",
             "\"Mr. Bennet,\" said his lady to him one day, \"have you heard?\"\n\nNo, he had not."] * 20
    tok = train_tokenizer(texts, vocab_size=300)
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.pad_token == "<pad>"
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "left"
    for text in texts[:2] + [" a leading space, tabs\tand unicode: café — naïve ★", "  two  spaces\n"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    stream = encode_stream(tok, ["one", "two"])
    assert (stream == tok.eos_token_id).sum() == 2 and stream[-1] == tok.eos_token_id
    # left padding for generation
    batch = tok(["a", "a truth universally"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["input_ids"][0, 0] == tok.pad_token_id


def test_tiny_pretraining_learns_on_synthetic_corpus(tmp_path):
    corpus = _synthetic_corpus(tmp_path / "synthetic")
    cfg = BootstrapConfig.preset("tiny", corpus=str(corpus), vocab_size=400, device="cpu")
    seen = []
    model, tok, metrics = bootstrap_policy(cfg, tmp_path / "cache", lambda s, n, m: seen.append((s, n, m)))
    assert metrics["steps"] == cfg.steps and not metrics["cached"]
    assert metrics["eval_loss"] < 0.5 * metrics["eval_loss_initial"], metrics
    assert metrics["eval_perplexity"] == pytest.approx(torch.tensor(metrics["eval_loss"]).exp().item(), rel=1e-4)
    # per character: the token loss spread over the characters those tokens hold
    assert metrics["eval_chars_per_token"] > 1
    assert metrics["eval_loss_per_char"] == pytest.approx(metrics["eval_loss"] / metrics["eval_chars_per_token"])
    assert seen and seen[-1][0] == cfg.steps and seen[-1][1] == cfg.steps and "loss" in seen[-1][2]
    assert model.config.pad_token_id == tok.pad_token_id and model.config.eos_token_id == tok.eos_token_id

    # it writes the corpus's kind of text: a greedy continuation of a prompt uses its vocabulary
    enc = tok(["Once upon a time, the"], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    words = tok.decode(out[0, enc["input_ids"].shape[1]:]).split()
    assert words and set(words) & {"cat", "dog", "bird", "girl", "boy", "fox", "king", "queen", "frog", "baker",
                                   "saw", "found", "liked", "met", "chased", "fed", "painted", "lost", "a", "the"}

    # the second call loads the cached model instead of training again
    again, _, metrics2 = bootstrap_policy(cfg, tmp_path / "cache")
    assert metrics2["cached"] and metrics2["eval_loss"] == metrics["eval_loss"]
    with torch.no_grad():
        assert torch.allclose(again(enc["input_ids"]).logits, model(enc["input_ids"]).logits, atol=1e-5)


def test_missing_corpus_gives_install_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(bootstrap, "_janeaustenr_candidates", lambda cache_dir: [])
    with pytest.raises(CorpusUnavailable, match="apt-get download r-cran-janeaustenr"):
        load_corpus("austen", tmp_path, fetch=False)
    with pytest.raises(CorpusUnavailable):
        load_corpus(str(tmp_path / "nothing-here"), tmp_path)


def test_lines_to_paragraphs_drops_front_matter_and_headings():
    lines = ["EMMA", "", "By Jane Austen", "", "VOLUME I", "", "CHAPTER I", "", "Emma Woodhouse, handsome,",
             "clever, and _rich_.", "", "", "She was the youngest.", "", "CHAPTER II", "", "Mr. Weston."]
    assert lines_to_paragraphs(lines) == ["Emma Woodhouse, handsome, clever, and rich.", "She was the youngest.",
                                          "Mr. Weston."]


def test_lines_to_paragraphs_drops_end_marks_notes_and_back_matter():
    lines = ["CHAPTER I", "", "It began.", "", "* * * * *", "", "[At this point the first edition ends.]", "",
             "*Vide a letter from Mr. Richardson.", "", "It ended.", "", "THE END", "", "Finis", "",
             "A NOTE ON THE TEXT", "", "The text was written in 1797."]
    assert lines_to_paragraphs(lines) == ["It began.", "It ended."]


def test_clean_paragraph_dashes_and_shouted_words():
    # Gutenberg's -- becomes a spaced dash (the next word keeps its leading space); after , or ; it goes
    assert clean_paragraph("you would not go--and at another word,--might stay;--but no") == \
        "you would not go \u2014 and at another word, might stay; but no"
    # words in capitals (emphasis) are lowered, capitalised at a sentence start or when a name
    shouted = '"Well, LET something be done. THAT is all, said ROBERT, as I think."'
    assert clean_paragraph(shouted, frozenset({"robert"})) == \
        '"Well, let something be done. That is all, said Robert, as I think."'
    assert clean_paragraph("Volume II of   _Emma_ and  VI") == "Volume II of Emma and VI"  # roman numerals stay


def test_demo_preset_has_fixed_steps_and_fits_the_demo_prompts():
    demo = PRESETS["demo"]
    assert demo.max_seconds is None and isinstance(demo.steps, int) and demo.steps >= 500
    assert demo.cpu_threads == 1  # one thread: the step time is the same on an idle or a busy 2-core machine
    assert PRESETS["tiny"].max_seconds is None and PRESETS["tiny"].steps <= 200 and PRESETS["tiny"].n_embd <= 64
    from app.demo_data import demo_prompts
    from trainer.config import GenerationConfig

    # every demo prompt plus its continuation fits the context, with room to spare: the demo's BPE makes
    # ~4.5 characters per token of English (measured on Austen's held-out text; the longest demo prompt
    # is 58 tokens), so 2 bytes per token is a safe bound
    longest = max(len(p.text.encode()) for p in demo_prompts())
    assert longest // 2 + GenerationConfig().max_new_tokens <= demo.block_size


def test_passages_cut_paragraphs_into_a_few_sentences_each_so_the_model_learns_to_end():
    paragraph = 'Mr. Darcy smiled. "Do you?" said she. It was late; they went home. And so it ended! Why? Yes.'
    assert bootstrap.split_sentences(paragraph) == [
        "Mr. Darcy smiled.", '"Do you?" said she.', "It was late; they went home.", "And so it ended!", "Why?", "Yes."]
    document = paragraph + "\n\nA short one. Two."
    cut = bootstrap.passages([document], 3, 5, seed=0)
    assert "\n\n".join(cut).replace("\n\n", " ") == document.replace("\n\n", " ")  # nothing lost or reordered
    assert all(3 <= len(bootstrap.split_sentences(p.replace("\n\n", " "))) <= 5 for p in cut[:-1])
    assert any("\n\n" in p for p in cut)  # a passage may run over a paragraph break, which it keeps
    assert PRESETS["demo"].passage_sentences >= PRESETS["demo"].passage_min_sentences > 1  # stories end


def test_cache_key_covers_what_changes_the_weights():
    demo = BootstrapConfig.preset("demo")
    key = demo.cache_key()
    assert key == BootstrapConfig.preset("demo", device="cuda", cpu_threads=2, log_every=1).cache_key()
    assert key != BootstrapConfig.preset("demo", steps=demo.steps + 1).cache_key()
    assert key != BootstrapConfig.preset("demo", vocab_size=4096).cache_key()
    assert key != BootstrapConfig.preset("demo", max_seconds=60).cache_key()  # a capped run is another model
    assert key != BootstrapConfig.preset("demo", passage_sentences=0).cache_key()
    # the Austen corpus's cleaning version is part of the key, so new cleaning rules retrain
    assert key != BootstrapConfig.preset("demo", corpus="/some/file.txt").cache_key()
    assert CORPUS_CACHE_VERSION >= 2


def test_austen_corpus_loader(austen_cache):
    books = _austen_or_skip(austen_cache)
    assert set(books) == set(AUSTEN_BOOKS)
    words = sum(len(p.split()) for paras in books.values() for p in paras)
    assert 650_000 < words < 750_000
    assert books["prideprejudice"][0].startswith("It is a truth universally acknowledged")
    assert not any(p.startswith("CHAPTER") for p in books["emma"])
    text = "\n".join(p for paras in books.values() for p in paras)
    assert "--" not in text and "_" not in text and "[" not in text and "THE END" not in text
    assert books["northangerabbey"][-1].endswith(".") and "NOTE ON THE TEXT" not in text
    assert (austen_cache / "austen.json").is_file()  # cached for the next call
    train, held = split_corpus(books, 0.05)
    assert len(train) == len(held) == 6 and sum(map(len, held)) < 0.1 * sum(map(len, train))


def test_tiny_pretraining_on_austen_slice(austen_cache, tmp_path):
    _austen_or_skip(austen_cache)
    cfg = BootstrapConfig.preset("tiny", max_chars=150_000, device="cpu")
    model, tok, metrics = bootstrap_policy(cfg, _copy_cache(austen_cache, tmp_path))
    assert metrics["corpus"] == "austen" and metrics["steps"] == cfg.steps
    # from ln(1000) ~ 6.9 at initialisation to well below it
    assert metrics["eval_loss"] < metrics["eval_loss_initial"] - 1.0, metrics
    text = "Elizabeth was delighted, and Mr. Darcy said nothing."
    assert tok.decode(tok(text)["input_ids"]) == text


def _copy_cache(austen_cache: Path, tmp_path: Path) -> Path:
    """A fresh cache folder holding only the corpus, so the model is really trained in this test."""
    cache = tmp_path / "corpus"
    cache.mkdir()
    (cache / "austen.json").write_bytes((austen_cache / "austen.json").read_bytes())
    return cache


def test_sft_on_prompt_completion_pairs_lowers_completion_loss():
    """The supervised baseline (TRL SFTTrainer, prompt/completion data) runs offline and learns."""
    from tests.tiny_models import tiny_lm, train_tiny_tokenizer
    from trainer.bootstrap import sft

    pairs = story_corpus(300, seed=5)
    tok = train_tiny_tokenizer(p + c for p, c in pairs)
    tok.padding_side = "left"  # as load_tokenizer leaves it; sft must not change it
    model = tiny_lm(tok)

    def completion_loss() -> float:
        losses = []
        with torch.no_grad():
            for p, c in pairs[:40]:
                n_prompt = len(tok(p)["input_ids"])
                ids = tok(p + c + tok.eos_token, return_tensors="pt")["input_ids"]
                labels = ids.clone()
                labels[:, :n_prompt] = -100
                losses.append(model(ids, labels=labels).loss.item())
        return sum(losses) / len(losses)

    before = completion_loss()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, metrics = sft(model, tok, pairs, epochs=2, batch_size=16, lr=3e-3)
    finally:
        torch.set_num_threads(threads)
    assert metrics["steps"] > 0 and tok.padding_side == "left"
    assert completion_loss() < 0.6 * before
