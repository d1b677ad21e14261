"""The model store: atomic, kill-safe versions on disk + in the database, and base-policy resolution."""

from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

pytest.importorskip("transformers")

from app.models import ModelVersion  # noqa: E402
from tests.tiny_models import story_corpus, tiny_lm, tiny_reward_model, train_tiny_tokenizer  # noqa: E402
from trainer import model_store  # noqa: E402
from trainer.model_store import (  # noqa: E402
    BasePolicyConfig,
    clean_incomplete,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    resolve_base_policy,
    save_version,
    version_dir,
)


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer(p + c for p, c in story_corpus(300))


def _save(database, store, model, tok, name="policy-v1", kind="policy", parent_id=None):
    return save_version(database, store, kind=kind, name=name, parent_id=parent_id, algorithm="pretrain",
                        settings={"lr": 1e-3, "path": Path("x")}, metrics={"loss": torch.tensor(2.5)},
                        model=model, tokenizer=tok)


def _rows(database) -> int:
    with database.read() as db:
        return db.scalar(select(func.count()).select_from(ModelVersion))


def test_save_and_load_round_trip(database, settings, tok):
    store = settings.model_store
    lm = tiny_lm(tok).eval()
    vid = _save(database, store, lm, tok)

    with database.read() as db:
        row = db.get(ModelVersion, vid)
    assert (row.name, row.kind, row.algorithm, row.path) == ("policy-v1", "policy", "pretrain", "policy/policy-v1")
    assert row.metrics == {"loss": 2.5} and row.settings == {"lr": 1e-3, "path": "x"}
    folder = version_dir(store, row.path)
    assert (folder / "config.json").is_file() and (folder / "storyloop_version.json").is_file()
    assert not [p for p in store.iterdir() if p.name.startswith(".tmp-")]

    loaded, loaded_tok = load_causal_lm(folder, "cpu"), load_tokenizer(folder)
    assert loaded_tok.padding_side == "left" and loaded_tok.pad_token is not None
    ids = tok(["once upon a time the cat saw a ball"], return_tensors="pt")["input_ids"]
    assert loaded_tok(["once upon a time the cat saw a ball"], return_tensors="pt")["input_ids"].equal(ids)
    with torch.no_grad():
        assert torch.allclose(lm(ids).logits, loaded(ids).logits, atol=1e-6)

    # a reward model, child of the policy; clean_incomplete keeps both (they have rows)
    rm = tiny_reward_model(tok, init_from=lm).eval()
    rid = _save(database, store, rm, tok, name="reward v1/α", kind="reward", parent_id=vid)
    with database.read() as db:
        rrow = db.get(ModelVersion, rid)
    assert rrow.parent_id == vid and rrow.path == "reward/reward-v1"
    loaded_rm = load_reward_model(version_dir(store, rrow.path))
    batch = tok(["one day the fox met a boat .", "at night"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(rm(**batch).logits, loaded_rm(**batch).logits, atol=1e-6)
    assert clean_incomplete(store, database) == []

    # names are unique
    with pytest.raises(ValueError, match="already exists"):
        _save(database, store, lm, tok)
    with pytest.raises(ValueError, match="kind"):
        _save(database, store, lm, tok, name="x", kind="source")


class SimulatedKill(BaseException):
    """Stands in for SIGKILL: not an Exception, so no cleanup handler runs."""


def test_crash_in_the_middle_of_save_leaves_nothing_visible(database, settings, tok, monkeypatch):
    store = settings.model_store

    def crash(root: Path):
        assert (root / "config.json").is_file()  # the model files are written...
        raise SimulatedKill()  # ...and the process dies before the rename

    monkeypatch.setattr(model_store, "_fsync_tree", crash)
    with pytest.raises(SimulatedKill):
        _save(database, store, tiny_lm(tok), tok)
    monkeypatch.undo()

    assert _rows(database) == 0
    assert not (store / "policy" / "policy-v1").exists()
    leftovers = [p for p in store.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "config.json").is_file()

    # a killed trainer between rename and insert: a final folder without a row
    orphan = store / "policy" / "orphan"
    orphan.mkdir(parents=True)
    (orphan / "config.json").write_text("{}")

    removed = clean_incomplete(store, database)
    assert sorted(removed) == sorted(leftovers + [orphan])
    assert not leftovers[0].exists() and not orphan.exists()

    # the store still works afterwards, under the same name
    vid = _save(database, store, tiny_lm(tok), tok)
    assert _rows(database) == 1 and (store / "policy" / "policy-v1" / "config.json").is_file()
    assert clean_incomplete(store, database) == []
    assert vid


def test_ordinary_exception_cleans_up_and_db_failure_removes_folder(database, settings, tok, monkeypatch):
    store = settings.model_store

    def fail(root: Path):
        raise OSError("disk full")

    monkeypatch.setattr(model_store, "_fsync_tree", fail)
    with pytest.raises(OSError):
        _save(database, store, tiny_lm(tok), tok)
    monkeypatch.undo()
    assert list(store.iterdir()) == [store / "policy"] and not any((store / "policy").iterdir())

    # the insert fails (JSON the column cannot hold is caught earlier, so break the parent FK instead)
    with pytest.raises(Exception):
        _save(database, store, tiny_lm(tok), tok, parent_id=999_999)
    assert _rows(database) == 0 and not (store / "policy" / "policy-v1").exists()


def test_resolve_base_policy_from_local_folder(tmp_path, tok):
    """The hub-id path (``from_pretrained(x)``), exercised with a model saved to a local folder."""
    folder = tmp_path / "my-gpt2"
    lm = tiny_lm(tok).eval()
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)

    model, tokenizer = resolve_base_policy(BasePolicyConfig(base=str(folder), device="cpu"))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    ids = tok(["long ago the king lost a hat"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, lm(ids).logits, atol=1e-6)
    # plain string form works too
    model2, _ = resolve_base_policy(str(folder))
    assert model2.config.n_layer == lm.config.n_layer


def test_load_tokenizer_sets_pad_to_eos_when_missing(tmp_path, tok):
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|endoftext|>")
    assert bare.pad_token is None
    bare.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.pad_token == loaded.eos_token and loaded.padding_side == "left"
