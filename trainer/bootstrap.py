"""The offline default policy: a small GPT-2 pretrained from scratch, BabyStories-style, with its own BPE.

No model or dataset can be downloaded from a hub where storyloop is built and tested, so when the trainer
is configured with ``base_policy = "bootstrap"`` it makes its own base model:

(a) corpus: Jane Austen's six novels (about 717K words of narrative prose, public domain), read from the
    Debian package ``r-cran-janeaustenr`` (R data files, parsed with the PyPI package ``rdata``; no R
    needed), cleaned (title pages, chapter and volume headings, end marks, scene breaks, footnotes,
    editors' [notes] and back matter dropped; ``_italics_`` marks removed; Gutenberg's ``--`` written
    as a spaced dash; words in CAPITALS for emphasis lowered) and cached as JSON under ``cache_dir``.
    Any other plain-text corpus works too: set ``BootstrapConfig.corpus`` to a ``.txt`` file or a
    folder of them (paragraphs separated by blank lines).
(b) tokenizer: byte-level BPE trained with ``tokenizers`` on the training split (GPT-2 style, so a decoded
    continuation keeps its leading space), special tokens ``<|endoftext|>`` (EOS = BOS) and ``<pad>``.
(c) model: ``GPT2LMHeadModel`` from a ``GPT2Config`` (input and output embeddings tied), trained with a
    plain torch loop (AdamW, linear warmup then cosine decay, random fixed-length blocks of the token
    stream, gradient clipping) for a fixed number of steps; loss is measured on a held-out split (the
    last ``eval_fraction`` of every book) per token (perplexity) and per character (``eval_loss_per_char``,
    ``eval_bits_per_char``: the figures that compare across tokenizers).

Presets:

* ``tiny`` (tests): 2 x 64, 1000-token vocabulary, 150 steps; seconds.
* ``demo`` (the default; 2 CPU cores): 4 x 128 (1.9M parameters, 1.0M of them the tied 8192 x 128
  embedding), an 8192-token vocabulary (4.5 characters per token), context 256 (a demo prompt, at most
  58 tokens, plus its continuation fits with room), 8 x 256 tokens a step, lr 3e-3 (warmup 50, cosine
  to 3e-4), 500 steps: 1.0M tokens, about 1.2 passes over the training split. A fixed number of steps and
  no time cap, so the model does not depend on the machine's load. One torch thread, 0.57 CPU-seconds
  a step: about 5 minutes on an idle core (286 s measured), plus ~10 s for corpus and tokenizer.
  Held-out loss 1.11 nats (1.60 bits) per character, perplexity 146 per token; the earlier preset
  (4 x 128, 4096 tokens, stopped by a 3-minute cap at step 148 of 600 on a busy machine) had 1.41 nats
  (2.03 bits) per character. Why this shape, measured at equal CPU time (~290 s on one thread): a
  vocabulary of 2048 / 4096 / 8192 / 16384 tokens gave 1.69 / 1.62 / 1.60 / 1.60 bits per character
  (and fewer made-up words the larger it is); 6 layers instead of 4 was worse (1.73 at 2048 tokens);
  lr 6e-3 no better than 3e-3; 950 steps of 4 blocks the same as 500 of 8. 16384 tokens would write
  slightly more real words but has 2.8M parameters and is 1.6x slower a step, in PPO too.
  ``benchmarks/base_quality.py`` measures all of this and samples the demo prompts.
* ``base`` (GPU): GPT-2 small shape, 12 x 768, 32K vocabulary as in BabyStories, 20K steps.

The pretrained model is cached under ``cache_dir`` keyed by every setting that changes its weights
(:meth:`BootstrapConfig.cache_key`, which includes the corpus cleaning's version), so a restarted trainer
does not pretrain again and a change of preset or cleaning does.

Install the corpus (no root needed; the loader also tries this itself when ``apt-get`` is on PATH)::

    pip install rdata
    cd "$(mktemp -d)" && apt-get download r-cran-janeaustenr && \\
        dpkg-deb -x r-cran-janeaustenr_*.deb "$STORYLOOP_DATA_DIR/corpus/janeaustenr"

or ``python -m trainer.bootstrap fetch-corpus --cache-dir data/corpus``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

EOS, PAD = "<|endoftext|>", "<pad>"
AUSTEN = "austen"
AUSTEN_BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
JANEAUSTENR_DEB = "r-cran-janeaustenr"
_R_DATA_SUBDIR = Path("usr/lib/R/site-library/janeaustenr/data")
CORPUS_CACHE_VERSION = 2  # bump when the cleaning changes: it re-reads the books

Progress = Callable[[int, int, dict], None]


class CorpusUnavailable(RuntimeError):
    """The offline corpus is neither cached nor installed, and could not be fetched."""


INSTALL_HELP = (
    "The Jane Austen corpus is not available. Install it with:\n"
    "    pip install rdata\n"
    "    cd \"$(mktemp -d)\" && apt-get download r-cran-janeaustenr && "
    "dpkg-deb -x r-cran-janeaustenr_*.deb {target}\n"
    "(or `python -m trainer.bootstrap fetch-corpus --cache-dir {cache_dir}`; `apt-get install r-cran-janeaustenr` "
    "works too), set STORYLOOP_JANEAUSTENR_DIR to the package's data/ folder, or point "
    "BootstrapConfig.corpus at a .txt file or folder of your own."
)


# ================================================================ configuration


@dataclass
class BootstrapConfig:
    # corpus: "austen", or a .txt file / folder of .txt files
    corpus: str = AUSTEN
    max_chars: int | None = None  # use only this many characters of the corpus (spread over its books)
    # 0: every document is one text, with one end-of-text at its end. N: each document is cut into
    # passages of passage_min_sentences..N sentences (seeded; a passage may run over a paragraph break),
    # each followed by end-of-text, so the model learns to end a short piece of story, as a
    # continuation of a prompt of a few sentences should, instead of writing on without end.
    passage_sentences: int = 0
    passage_min_sentences: int = 1
    eval_fraction: float = 0.05  # the last 5% of every book is held out
    # tokenizer
    vocab_size: int = 8000
    # model (GPT2Config)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 128  # training sequence length = n_positions
    dropout: float = 0.0
    # optimisation
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_max_blocks: int = 256
    max_seconds: float | None = None  # time cap on training; the LR schedule then anneals by time too
    seed: int = 0
    device: str | None = "auto"
    # torch CPU threads while training on a CPU (None: torch's default). One thread is the robust choice
    # for these small models: on a busy 2-core machine, 2 OpenMP threads ran 4-8x SLOWER than 1.
    cpu_threads: int | None = 1
    log_every: int = 10

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "BootstrapConfig":
        try:
            base = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown bootstrap preset {name!r}; choose one of {sorted(PRESETS)}") from None
        return dataclasses.replace(base, **overrides)

    def cache_key(self) -> str:
        """Everything that changes the trained weights (not device, logging or the time cap)."""
        d = dataclasses.asdict(self)
        for k in ("device", "cpu_threads", "log_every", "eval_max_blocks"):
            d.pop(k)
        if not d["passage_sentences"]:
            d.pop("passage_min_sentences")
        for k in ("max_seconds", "passage_sentences"):  # unset: keys of earlier configurations stay as they were
            if not d[k]:
                d.pop(k)
        if self.corpus == AUSTEN:  # the cleaned text changes with the cleaning rules
            d["corpus_version"] = CORPUS_CACHE_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


PRESETS: dict[str, BootstrapConfig] = {
    # tests: seconds on a CPU
    "tiny": BootstrapConfig(vocab_size=1000, n_layer=2, n_head=2, n_embd=64, block_size=64, steps=150,
                            batch_size=16, lr=3e-3, warmup_steps=10, eval_max_blocks=64, weight_decay=0.0),
    # a demo on 2 CPU cores (trains on one thread): a fixed number of steps, no time cap, so the model
    # does not depend on the machine's load; see the module docstring for the measured time
    "demo": BootstrapConfig(vocab_size=8192, n_layer=4, n_head=4, n_embd=128, block_size=256, steps=500,
                            batch_size=8, lr=3e-3, warmup_steps=50, passage_min_sentences=3, passage_sentences=5),
    # GPU: GPT-2 small shape (124M with a 32K vocabulary, as in BabyStories)
    "base": BootstrapConfig(vocab_size=32000, n_layer=12, n_head=12, n_embd=768, block_size=512, steps=20000,
                            batch_size=32, lr=6e-4, warmup_steps=1000, dropout=0.1, eval_max_blocks=512,
                            cpu_threads=None),
}


# ================================================================ corpus


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _janeaustenr_candidates(cache_dir: Path) -> list[Path]:
    out = []
    if os.environ.get("STORYLOOP_JANEAUSTENR_DIR"):
        out.append(Path(os.environ["STORYLOOP_JANEAUSTENR_DIR"]))
    out += [cache_dir / "janeaustenr" / _R_DATA_SUBDIR, Path("/") / _R_DATA_SUBDIR,
            Path("/usr/local/lib/R/site-library/janeaustenr/data")]
    return out


def find_janeaustenr(cache_dir: Path) -> Path | None:
    """The janeaustenr ``data/`` folder (holding Rdata.rdb and Rdata.rdx), if installed or extracted."""
    for d in _janeaustenr_candidates(Path(cache_dir)):
        if (d / "Rdata.rdb").is_file() and (d / "Rdata.rdx").is_file():
            return d
    return None


def fetch_janeaustenr(cache_dir: Path) -> Path:
    """``apt-get download r-cran-janeaustenr`` and ``dpkg-deb -x`` it into ``cache_dir/janeaustenr`` (no root)."""
    cache_dir = Path(cache_dir)
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise CorpusUnavailable("apt-get/dpkg-deb not found.\n" + _install_help(cache_dir))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        try:
            subprocess.run(["apt-get", "download", JANEAUSTENR_DEB], cwd=tmp, check=True,
                           capture_output=True, text=True, timeout=300)
            debs = sorted(Path(tmp).glob(f"{JANEAUSTENR_DEB}_*.deb"))
            if not debs:
                raise CorpusUnavailable("apt-get download produced no .deb.\n" + _install_help(cache_dir))
            extracted = Path(tmp) / "x"
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(extracted)], check=True, capture_output=True,
                           text=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            detail = getattr(e, "stderr", "") or str(e)
            raise CorpusUnavailable(f"fetching {JANEAUSTENR_DEB} failed: {detail.strip()}\n"
                                    + _install_help(cache_dir)) from e
        target = cache_dir / "janeaustenr"
        if target.exists():
            shutil.rmtree(target)
        os.rename(extracted, target)
    found = find_janeaustenr(cache_dir)
    if found is None:
        raise CorpusUnavailable(f"{JANEAUSTENR_DEB} has no {_R_DATA_SUBDIR}.\n" + _install_help(cache_dir))
    return found


def _install_help(cache_dir: Path) -> str:
    return INSTALL_HELP.format(target=Path(cache_dir) / "janeaustenr", cache_dir=cache_dir)


def read_janeaustenr(data_dir: Path) -> dict[str, list[str]]:
    """Each book's lines, read from R's lazy-load database (Rdata.rdx index + Rdata.rdb objects).

    The .rdx is a gzipped R serialisation of ``list(variables = list(name = c(offset, length)), ...)``;
    each object in the .rdb is a 4-byte big-endian length followed by zlib-compressed R serialisation.
    """
    try:
        import rdata
    except ImportError as e:
        raise CorpusUnavailable("the PyPI package `rdata` is needed to read the Austen corpus: pip install rdata") from e
    import warnings

    def parse(raw: bytes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS"
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    data_dir = Path(data_dir)
    index = parse(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()))
    variables = {str(k): v for k, v in index["variables"].items()}
    blob = (data_dir / "Rdata.rdb").read_bytes()
    books = {}
    for name in AUSTEN_BOOKS:
        if name not in variables:
            raise CorpusUnavailable(f"{data_dir}: janeaustenr has no object {name!r}")
        offset, length = (int(x) for x in variables[name])
        chunk = blob[offset:offset + length]
        (expected,) = struct.unpack(">I", chunk[:4])
        raw = zlib.decompress(chunk[4:])
        if len(raw) != expected:
            raise CorpusUnavailable(f"{data_dir}: object {name!r} is corrupt")
        books[name] = [str(line) for line in parse(raw)]
    return books


_HEADING = re.compile(r"^(CHAPTER|Chapter|VOLUME|Volume)\b[\s\dIVXLCivxlc.]*$")
# not the novel's text: end marks, scene-break asterisks, *footnotes, editors' [notes]
_NOT_TEXT = re.compile(r"^(THE END|Finis|FINIS|\*.*|\[.*\])$")
_BACK_MATTER = re.compile(r"^(A NOTE ON THE TEXT|NOTES?|APPENDIX)$")
_ROMAN = re.compile(r"^[IVXLC]+$")
_SHOUTED = re.compile(r"\b[A-Z][A-Z']*[A-Z]\b")  # a word in capitals: Gutenberg's mark for italics


def clean_paragraph(para: str, title_case: frozenset[str] = frozenset()) -> str:
    """One paragraph as modern plain prose: single spaces; no ``_italics_`` marks; Gutenberg's ``--``
    as a spaced dash (`` — ``, so the next word keeps its leading space and its usual BPE token; a dash
    after a comma or semicolon is dropped); words in CAPITALS for emphasis lowered (capitalised at a
    sentence start or when the word is a name, i.e. in ``title_case``); roman numerals and "I" kept."""
    para = re.sub(r"\s+", " ", para.replace("_", "")).strip()
    para = re.sub(r"([,;:])\s*-{2,}\s*", r"\1 ", para)
    para = re.sub(r"\s*-{2,}\s*", " \u2014 ", para).strip()

    def lower(m: re.Match) -> str:
        word = m.group(0)
        if _ROMAN.match(word):
            return word
        before = para[:m.start()].rstrip(" \"'(")
        if not before or before[-1] in ".!?\u2014" or word.lower() in title_case:
            return word.capitalize()
        return word.lower()

    return _SHOUTED.sub(lower, para)


def lines_to_paragraphs(lines: list[str]) -> list[str]:
    """Join wrapped lines into paragraphs; drop the title page (everything before the first chapter
    heading), chapter/volume headings, end marks, scene breaks, editorial [notes] and back matter;
    then :func:`clean_paragraph` each one."""
    raw, current, seen_heading = [], [], False
    for line in list(lines) + [""]:
        line = line.strip()
        if line:
            current.append(line)
            continue
        if current:
            para = re.sub(r"\s+", " ", " ".join(current)).strip()
            current = []
            if _HEADING.match(para):
                seen_heading = True
            elif _BACK_MATTER.match(para):
                break
            elif seen_heading and para and not _NOT_TEXT.match(para):
                raw.append(para)
    # names (and other capitalised words) as the text usually writes them, for lowering shouted words
    counts: dict[str, int] = {}
    for word in re.findall(r"[A-Za-z]+", " ".join(raw)):
        if not word.isupper():
            counts[word] = counts.get(word, 0) + 1
    title_case = frozenset(w.lower() for w, n in counts.items()
                           if w[0].isupper() and n > counts.get(w.lower(), 0))
    return [clean_paragraph(p, title_case) for p in raw]


def load_austen(cache_dir: Path, fetch: bool = True) -> dict[str, list[str]]:
    """{book: [paragraph, ...]} for the six novels, cached as ``cache_dir/austen.json``.

    Looks for the cache, then an installed or extracted janeaustenr package, then (``fetch``) downloads
    the Debian package with apt-get. Raises :class:`CorpusUnavailable` with install instructions.
    """
    cache_dir = Path(cache_dir)
    cached = cache_dir / "austen.json"
    if cached.is_file():
        try:
            data = json.loads(cached.read_text(encoding="utf-8"))
            if data.get("version") == CORPUS_CACHE_VERSION:
                return data["books"]
        except (ValueError, KeyError):
            pass
    data_dir = find_janeaustenr(cache_dir)
    if data_dir is None:
        if not fetch:
            raise CorpusUnavailable(_install_help(cache_dir))
        data_dir = fetch_janeaustenr(cache_dir)
    books = {name: lines_to_paragraphs(lines) for name, lines in read_janeaustenr(data_dir).items()}
    _atomic_write_text(cached, json.dumps({"version": CORPUS_CACHE_VERSION, "source": str(data_dir),
                                           "books": books}))
    return books


def load_text_corpus(path: Path) -> dict[str, list[str]]:
    """{file stem: [paragraph, ...]} from a .txt file or every .txt file in a folder (blank-line paragraphs)."""
    path = Path(path)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise CorpusUnavailable(f"no text corpus at {path}")
    docs = {}
    for f in files:
        paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", f.read_text(encoding="utf-8"))]
        docs[str(f.relative_to(path)) if path.is_dir() else f.stem] = [p for p in paras if p]
    return docs


def load_corpus(corpus: str, cache_dir: Path, fetch: bool = True) -> dict[str, list[str]]:
    """{document: [paragraph, ...]}: ``"austen"`` or a path to a .txt file / folder."""
    if corpus == AUSTEN:
        return load_austen(cache_dir, fetch=fetch)
    return load_text_corpus(Path(corpus))


def split_corpus(docs: dict[str, list[str]], eval_fraction: float, max_chars: int | None = None
                 ) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts), one text per document: the last ``eval_fraction`` of each
    document's paragraphs is held out. ``max_chars`` keeps only the start of each document (equal shares)."""
    train, held = [], []
    share = None if max_chars is None else max(1, max_chars // max(1, len(docs)))
    for name in sorted(docs):
        paras = docs[name]
        if share is not None:
            kept, n = [], 0
            for p in paras:
                if n >= share:
                    break
                kept.append(p)
                n += len(p) + 2
            paras = kept
        n_eval = max(1, int(round(len(paras) * eval_fraction))) if eval_fraction > 0 and len(paras) > 1 else 0
        train.append("\n\n".join(paras[:len(paras) - n_eval]))
        if n_eval:
            held.append("\n\n".join(paras[len(paras) - n_eval:]))
    return [t for t in train if t], [h for h in held if h]


# ================================================================ tokenizer


def train_tokenizer(texts: list[str], vocab_size: int = 8000):
    """Byte-level BPE (GPT-2 style) with ``<|endoftext|>`` as EOS/BOS and a separate ``<pad>``, left padding.

    A separate pad token matters for reward models: a GPT-2 sequence classifier pools at the last
    non-pad token, which must be the trailing EOS that TRL's RewardTrainer appends.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_paragraph_iter(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=None, padding_side="left", model_max_length=1_000_000)


def _paragraph_iter(texts: list[str]):
    for t in texts:
        yield from t.split("\n\n")


SENTENCE_BREAK = re.compile(r"""[.!?]['"\u2019\u201d)]*\s+(?=['"\u2018\u201c(]?[A-Z])""")
TITLE = re.compile(r"(?:^|\s)(?:Mr|Mrs|Ms|Dr|St|Col|Capt|Sir)\.$")  # "Mr. Darcy" does not end a sentence


def split_sentences(paragraph: str) -> list[str]:
    """A paragraph's sentences: breaks after . ! ? (and closing quotes) before a capital, not after a title."""
    sentences, start = [], 0
    for m in SENTENCE_BREAK.finditer(paragraph):
        if TITLE.search(paragraph[: m.start() + 1]):
            continue
        sentences.append(paragraph[start : m.end()].strip())
        start = m.end()
    tail = paragraph[start:].strip()
    return sentences + [tail] if tail else sentences


def passages(texts: list[str], min_sentences: int, max_sentences: int, seed: int = 0) -> list[str]:
    """Documents (paragraphs separated by blank lines) -> passages of min..max sentences (seeded), in
    order, keeping paragraph breaks inside a passage; each becomes a text of its own (and so ends with
    end-of-text). A document's last passage may be shorter."""
    rng = random.Random(seed)
    out: list[str] = []
    for text in texts:
        # (sentence, starts a paragraph) in reading order
        sentences = [(sentence, i == 0) for paragraph in text.split("\n\n")
                     for i, sentence in enumerate(split_sentences(paragraph))]
        while sentences:
            n = rng.randint(min_sentences, max_sentences)
            passage = ""
            for sentence, new_paragraph in sentences[:n]:
                passage += ("\n\n" if new_paragraph else " ") + sentence if passage else sentence
            out.append(passage)
            sentences = sentences[n:]
    return out


def encode_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """One long 1-D tensor of token ids: every text followed by EOS."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


# ================================================================ model and training


def build_model(cfg: BootstrapConfig, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=cfg.block_size, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                        attn_pdrop=cfg.dropout, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(config)


def lr_factor(cfg: BootstrapConfig, step: int, elapsed: float) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_lr_ratio``. The decay follows
    whichever runs out first, steps or ``max_seconds``, so a time-capped run still anneals fully."""
    if step < cfg.warmup_steps:
        return (step + 1) / max(1, cfg.warmup_steps)
    done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    if cfg.max_seconds:
        done = max(done, elapsed / cfg.max_seconds)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def _autocast(device: str):
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate_lm(model, stream: torch.Tensor, block_size: int, max_blocks: int, batch_size: int = 16,
                device: str = "cpu") -> float:
    """Mean next-token loss over consecutive, non-overlapping blocks of ``stream``."""
    n = min(max_blocks, (len(stream) - 1) // block_size)
    if n < 1:
        raise ValueError("held-out split is shorter than one block")
    blocks = stream[: n * block_size].view(n, block_size)
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, n, batch_size):
        x = blocks[i:i + batch_size].to(device)
        with _autocast(device):
            total += model(input_ids=x, labels=x).loss.float().item() * len(x)
    model.train(was_training)
    return total / n


def eval_chars(tokenizer, stream: torch.Tensor, block_size: int, max_blocks: int) -> tuple[int, int]:
    """(predicted tokens, their characters) in the blocks :func:`evaluate_lm` scores (each block's first
    token is context only; an EOS counts as one character). Loss per character = mean token loss x
    tokens / characters: comparable across tokenizers, unlike perplexity."""
    n = min(max_blocks, (len(stream) - 1) // block_size)
    blocks = stream[: n * block_size].view(n, block_size)[:, 1:]
    eos = tokenizer.eos_token_id
    chars = sum(len(tokenizer.decode(row, skip_special_tokens=True)) for row in blocks.tolist())
    return blocks.numel(), chars + int((blocks == eos).sum())


def pretrain(model, train: torch.Tensor, held: torch.Tensor, cfg: BootstrapConfig,
             progress: Progress | None = None) -> dict[str, Any]:
    """Next-token training on random ``block_size`` windows of ``train``; returns metrics."""
    from .model_store import resolve_device

    device = resolve_device(cfg.device)
    old_threads = torch.get_num_threads()
    if device == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _pretrain(model, train, held, cfg, progress, device)
    finally:
        torch.set_num_threads(old_threads)


def _pretrain(model, train, held, cfg: BootstrapConfig, progress, device: str) -> dict[str, Any]:
    model.to(device)
    if len(train) <= cfg.block_size + 1:
        raise ValueError(f"training split ({len(train)} tokens) is shorter than one block ({cfg.block_size})")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    offsets = torch.arange(cfg.block_size)

    eval_loss_initial = evaluate_lm(model, held, cfg.block_size, cfg.eval_max_blocks, cfg.batch_size, device)
    start, cpu_start, ema, step, lr = time.monotonic(), time.process_time(), None, 0, cfg.lr
    model.train()
    for step in range(1, cfg.steps + 1):
        lr = cfg.lr * lr_factor(cfg, step - 1, time.monotonic() - start)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train) - cfg.block_size, (cfg.batch_size,), generator=gen)
        x = train[starts[:, None] + offsets].to(device)  # (batch, block)
        with _autocast(device):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        value = loss.item()
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        elapsed = time.monotonic() - start
        if progress is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            progress(step, cfg.steps, {"loss": value, "loss_ema": ema, "lr": lr,
                                       "seconds": elapsed})
        if cfg.max_seconds and elapsed >= cfg.max_seconds:
            log.warning("bootstrap pretraining stopped at step %d/%d: max_seconds=%s reached",
                        step, cfg.steps, cfg.max_seconds)
            break
    train_seconds, train_cpu_seconds = time.monotonic() - start, time.process_time() - cpu_start
    model.eval()
    eval_loss = evaluate_lm(model, held, cfg.block_size, cfg.eval_max_blocks, cfg.batch_size, device)
    return {
        "steps": step,
        "tokens_seen": step * cfg.batch_size * cfg.block_size,
        "train_loss": ema,
        "eval_loss_initial": eval_loss_initial,
        "eval_loss": eval_loss,
        "eval_perplexity": math.exp(min(eval_loss, 50.0)),
        "train_seconds": round(train_seconds, 2),
        "train_cpu_seconds": round(train_cpu_seconds, 2),  # all threads; ~2x wall on 2 idle cores
        "device": device,
    }


def bootstrap_policy(config: BootstrapConfig, cache_dir: Path, progress: Progress | None = None):
    """(model, tokenizer, metrics): a GPT-2 pretrained from scratch on the offline corpus.

    Corpus, tokenizer and the finished model are cached under ``cache_dir`` (the model keyed by
    ``config.cache_key()``), so a second call with the same configuration loads instead of training.
    ``progress(step, total_steps, {"loss", "loss_ema", "lr", "seconds"})`` is called every ``log_every`` steps.
    """
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    from .model_store import _fsync_tree, resolve_device

    cache_dir = Path(cache_dir)
    key = config.cache_key()
    cached = cache_dir / f"bootstrap-{key}"
    if (cached / "storyloop_bootstrap.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(cached)
        tokenizer.padding_side = "left"
        model = GPT2LMHeadModel.from_pretrained(cached).to(resolve_device(config.device)).eval()
        metrics = json.loads((cached / "storyloop_bootstrap.json").read_text())["metrics"]
        return model, tokenizer, {**metrics, "cached": True}

    t0 = time.monotonic()
    docs = load_corpus(config.corpus, cache_dir)
    train_texts, held_texts = split_corpus(docs, config.eval_fraction, config.max_chars)
    if not held_texts:
        raise ValueError("the corpus is too small to hold out an evaluation split")
    if config.passage_sentences:
        span = (config.passage_min_sentences, config.passage_sentences)
        train_texts = passages(train_texts, *span, seed=config.seed)
        held_texts = passages(held_texts, *span, seed=config.seed + 1)
    tokenizer = train_tokenizer(train_texts, config.vocab_size)
    train_ids, held_ids = encode_stream(tokenizer, train_texts), encode_stream(tokenizer, held_texts)
    prep_seconds = time.monotonic() - t0

    model = build_model(config, tokenizer)
    metrics = pretrain(model, train_ids, held_ids, config, progress)
    n_tokens, n_chars = eval_chars(tokenizer, held_ids, config.block_size, config.eval_max_blocks)
    metrics.update({
        # held-out loss per character (nats) and bits per character: compare these across vocabularies
        "eval_loss_per_char": metrics["eval_loss"] * n_tokens / n_chars,
        "eval_bits_per_char": metrics["eval_loss"] * n_tokens / n_chars / math.log(2),
        "eval_chars_per_token": n_chars / n_tokens,
        "corpus": config.corpus,
        "corpus_words": sum(len(t.split()) for t in train_texts + held_texts),
        "train_tokens": len(train_ids),
        "eval_tokens": len(held_ids),
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "prep_seconds": round(prep_seconds, 2),
        "config": dataclasses.asdict(config),
    })

    tmp = cache_dir / f".tmp-bootstrap-{uuid.uuid4().hex}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "storyloop_bootstrap.json").write_text(json.dumps({"metrics": metrics}, indent=2, default=str))
        _fsync_tree(tmp)
        if cached.exists():
            shutil.rmtree(cached)
        os.rename(tmp, cached)
    except OSError as e:  # caching is an optimisation; never lose the trained model over it
        log.warning("could not cache the bootstrap model in %s: %s", cached, e)
        shutil.rmtree(tmp, ignore_errors=True)
    return model.eval(), tokenizer, {**metrics, "cached": False}


# ================================================================ supervised fine-tuning


def sft(model, tokenizer, pairs: list[tuple[str, str]], *, epochs: float = 1.0, lr: float = 5e-4,
        batch_size: int = 8, max_length: int | None = None, seed: int = 0, output_dir: Path | None = None):
    """Supervised baseline: fine-tune on (prompt, continuation) pairs with TRL's SFTTrainer.

    The dataset is plain ``prompt``/``completion`` text, so the loss covers the completion only (TRL's
    ``completion_only_loss``); TRL appends EOS to each completion. Returns (model, metrics).
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from trainer.hf_args import checkpointing

    if not pairs:
        raise ValueError("sft needs at least one (prompt, completion) pair")
    data = Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})
    old_side = tokenizer.padding_side
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=str(output_dir or tmp), num_train_epochs=epochs, learning_rate=lr,
            per_device_train_batch_size=batch_size, max_length=max_length or model.config.n_positions,
            lr_scheduler_type="cosine", warmup_steps=0, logging_steps=10, save_strategy="no",
            report_to="none", seed=seed, bf16=False, fp16=False, dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
            **checkpointing(True),  # TRL's default for SFT, named so transformers does not warn
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        result = trainer.train()
    tokenizer.padding_side = old_side
    model.eval()
    return model, {"train_loss": result.training_loss, "steps": result.global_step, "examples": len(pairs)}


# ================================================================ command line


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch-corpus", help="download and cache the Jane Austen corpus")
    f.add_argument("--cache-dir", type=Path, default=Path("data/corpus"))
    p = sub.add_parser("pretrain", help="pretrain a bootstrap policy and print metrics and samples")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument("--cache-dir", type=Path, default=Path("data/corpus"))
    p.add_argument("--steps", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.cmd == "fetch-corpus":
        books = load_austen(args.cache_dir)
        print(f"{len(books)} books, {sum(len(' '.join(b).split()) for b in books.values())} words "
              f"cached in {args.cache_dir / 'austen.json'}")
        return
    cfg = BootstrapConfig.preset(args.preset, **({"steps": args.steps} if args.steps else {}))

    def show(step, total, m):
        if step % 50 == 0 or step == total:
            print(f"step {step}/{total} loss {m['loss_ema']:.3f} lr {m['lr']:.2e} {m['seconds']:.0f}s", flush=True)

    model, tok, metrics = bootstrap_policy(cfg, args.cache_dir, show)
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=2))
    prompts = ["Once upon a time, there was a young woman who", "The old house stood at the end of the lane.",
               "\"I cannot believe it,\" said Elizabeth,"]
    enc = tok(prompts, return_tensors="pt", padding=True).to(model.device)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, max_new_tokens=48, top_p=0.95, temperature=0.9,
                         pad_token_id=tok.pad_token_id)
    for p, o in zip(prompts, tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)):
        print(f"--- {p}{o}")


if __name__ == "__main__":
    _main()
