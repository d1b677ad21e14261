"""A reward model on its own backbone (RewardModelConfig.backbone), not a head on the policy's network.

The backbone here is a tiny BERT (2 layers, 32 dims) with the MiniLM encoder's tokenizer, saved to a
folder: an encoder with another tokenizer than the policy's, as the offline default candidates are.
It learns a preference, and in rounds it is trained cold, then warm-started from its own previous
version, while PPO scores its samples with it through text.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.migrate import upgrade_to_head
from app.models import ModelVersion, TrainingRound
from app.services import training
from tests.factories import judge_directly, seed_bws_batch
from tests.test_trainer_loop import tiny_base, tiny_cfg  # noqa: F401 (fixtures)
from trainer import model_store
from trainer.data import PreferencePairs
from trainer.pretrained import minilm_folder
from trainer.reward_model import RewardModelConfig, train_reward_model

try:
    from tests.tiny_models import preference_pairs
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from tiny_models import preference_pairs


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A tiny BERT with the MiniLM tokenizer, saved as a folder (what a hub id would download)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()), local_files_only=True)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _pairs(triples) -> PreferencePairs:
    return PreferencePairs([t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples],
                           [0.0] * len(triples))


def test_a_reward_model_on_an_encoder_backbone_learns_a_preference(tiny_encoder, tmp_path):
    tokenizer = model_store.load_tokenizer(tiny_encoder)
    assert tokenizer.eos_token == tokenizer.sep_token  # an encoder's separator ends the text
    model, metrics = train_reward_model(tiny_encoder, tokenizer, _pairs(preference_pairs(600, "dragon", seed=1)),
                                        _pairs(preference_pairs(200, "dragon", seed=2)),
                                        RewardModelConfig(learning_rate=1e-3, epochs=2, batch_size=16), tmp_path)
    print(f"\nheld-out accuracy {metrics['held_out_accuracy']:.2f}")
    assert metrics["held_out_accuracy"] > 0.9
    assert model.config.model_type == "bert"


@pytest.mark.slow
def test_rounds_train_the_reward_model_on_its_own_backbone_and_warm_start_it(tmp_path, sqlite_url, tiny_cfg,  # noqa: F811
                                                                              tiny_encoder):
    from trainer.loop import train_once

    upgrade_to_head(sqlite_url)
    database = Database.from_url(sqlite_url)
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path / "data", annotations_per_tuple=1)
    seed_bws_batch(database, prompts=3, per_prompt=6, required=2)
    judge_directly(database, "judge-1")
    tiny_cfg.reward.backbone = str(tiny_encoder)
    train_once(database, settings, tiny_cfg)  # round 0: the base writes its stories
    rewards = []
    for n in (1, 2):
        judge_directly(database, f"judge-round-{n}", limit=6)
        round_id = training.request_round(database, trigger="test", algorithm="ppo").id
        assert train_once(database, settings, tiny_cfg) == round_id
        with database.read() as db:
            r = db.get(TrainingRound, round_id)
            assert r.status == "done"
            rewards.append(db.get(ModelVersion, r.reward_version_id))
    first, second = rewards
    assert first.settings["backbone"] == str(tiny_encoder) and first.parent_id is None  # not on the policy
    assert first.metrics["warm_start_from"] is None
    assert second.metrics["warm_start_from"] == first.id and second.parent_id == first.id
    _, reward_model, reward_tokenizer = model_store.load_version(database, settings.model_store, second.id)
    assert reward_model.config.model_type == "bert" and reward_tokenizer.sep_token == reward_tokenizer.eos_token
    with database.read() as db:  # PPO scored its samples with it: the round's policy carries its id
        policy = db.scalar(select(ModelVersion).where(ModelVersion.name == "policy-r2"))
        assert policy.settings["reward_version_id"] == second.id
