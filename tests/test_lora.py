"""Policy versions as LoRA adapters (trainer/lora.py): the reference is the base with the adapter off, PPO,
A-LoL and DPO each learn through an adapter alone, and a version saved as its adapter loads back onto its
base to the same outputs. Tiny models: the marker task of test_ppo (a 2-layer GPT-2 where ~10% of stories
contain "dragon", a reward model that prefers them)."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from trainer import model_store
from trainer.alol import ALoLConfig, ALoLTrainer
from trainer.dpo import DPOSettings, train_dpo
from trainer.generate import generate_continuations
from trainer.lora import AdapterOff, LoRASettings, new_adapter
from trainer.ppo import PPOConfig, PPOTrainer

try:
    from tests.tiny_models import PROMPTS, marker_task, preference_pairs, story_corpus
except ImportError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from tiny_models import PROMPTS, marker_task, preference_pairs, story_corpus

MARKER = "dragon"
LORA = LoRASettings(r=8, alpha=16)


@pytest.fixture(scope="module")
def tiny_setup():
    return marker_task(MARKER)


def marker_rate(model, tok) -> float:
    torch.manual_seed(1)
    outs = generate_continuations(model, tok, PROMPTS, num_return_sequences=32, max_new_tokens=16, batch_size=128)
    completions = [c for row in outs for c in row]
    return sum(MARKER in c for c in completions) / len(completions)


def logits_of(model, tok) -> torch.Tensor:
    enc = tok(PROMPTS, padding=True, padding_side="right", return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def base_weights_unchanged(policy, base) -> bool:
    """Every weight of the base network inside the PEFT model equals the untouched base's."""
    from trainer.lora import backbone_state_dict

    before = backbone_state_dict(base)
    return all(torch.equal(before[k], v) for k, v in backbone_state_dict(policy).items())


def test_the_reference_is_the_base_with_the_adapter_off(tiny_setup):
    tok, lm, _ = tiny_setup
    policy = new_adapter(copy.deepcopy(lm), LORA)
    torch.testing.assert_close(logits_of(policy, tok), logits_of(lm, tok))  # a new adapter is a no-op
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    assert not torch.allclose(logits_of(policy, tok), logits_of(lm, tok))
    torch.testing.assert_close(logits_of(AdapterOff(policy), tok), logits_of(lm, tok))
    assert not torch.allclose(logits_of(policy, tok), logits_of(lm, tok))  # switched back on afterwards
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert 0 < trainable < 0.25 * sum(p.numel() for p in lm.parameters())


@pytest.mark.parametrize("values", ["reward model copy", "head on the policy"])
def test_ppo_learns_through_the_adapter_alone(tiny_setup, values, monkeypatch):
    """Both value models: a copy of the reward model (one vocabulary) and the head on the policy's own hidden
    states that PPO uses when the reward model reads other tokens (the default SmolLM2 + MiniLM pair)."""
    from trainer import ppo

    tok, lm, rm = tiny_setup
    if values == "head on the policy":
        monkeypatch.setattr(ppo, "default_value_model", lambda *args: None)
    before = marker_rate(lm, tok)
    policy = new_adapter(copy.deepcopy(lm), LORA)
    trainer = PPOTrainer(PPOConfig(learning_rate=3e-4, batch_size=32, mini_batch_size=8, max_new_tokens=16,
                                   init_kl_coef=0.1), policy, tok, rm, ref_policy=AdapterOff(policy))
    assert (trainer.accelerator.unwrap_model(trainer.model).value_model is None) == (values == "head on the policy")
    rng = random.Random(0)
    history = [trainer.step([rng.choice(PROMPTS) for _ in range(32)]) for _ in range(15)]
    after = marker_rate(policy, tok)
    print(f"\nPPO with LoRA: marker rate {before:.2f} -> {after:.2f}, KL {history[-1]['kl']:.2f}")
    assert before < 0.3 and after > 0.6
    assert 0 < history[-1]["kl"] < 8.0  # measured against the adapter-off reference
    assert base_weights_unchanged(policy, lm)


def test_alol_and_dpo_learn_through_the_adapter_alone(tiny_setup, tmp_path):
    from trainer.data import PreferencePairs

    tok, lm, rm = tiny_setup
    before = marker_rate(lm, tok)
    stored = story_corpus(800, marker=MARKER, marker_rate=0.1, seed=5)
    policy = new_adapter(copy.deepcopy(lm), LORA)
    trainer = ALoLTrainer(ALoLConfig(learning_rate=2e-3, batch_size=16, steps=60, max_new_tokens=16,
                                     value_samples_per_prompt=8), policy, tok, rm, ref_policy=AdapterOff(policy))
    trainer.prepare([p for p, _ in stored], [c for _, c in stored])
    trainer.train()
    alol_after = marker_rate(policy, tok)

    triples = preference_pairs(400, MARKER, seed=3)
    pairs = PreferencePairs([t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples], [0.0] * 400)
    dpo_policy = new_adapter(copy.deepcopy(lm), LORA)
    trained, stats = train_dpo(dpo_policy, AdapterOff(dpo_policy), tok, pairs,
                               DPOSettings(learning_rate=2e-3, batch_size=16, max_steps=25), tmp_path)
    dpo_after = marker_rate(trained, tok)
    print(f"\nmarker rate {before:.2f} -> A-LoL {alol_after:.2f}, DPO {dpo_after:.2f}")
    assert alol_after > before + 0.3 and dpo_after > before + 0.3
    assert base_weights_unchanged(policy, lm) and base_weights_unchanged(trained, lm)


def test_a_version_saved_as_its_adapter_loads_back_onto_its_base(tiny_setup, tmp_path, sqlite_url):
    from app.db import Database
    from app.migrate import upgrade_to_head

    tok, lm, _ = tiny_setup
    upgrade_to_head(sqlite_url)
    database = Database.from_url(sqlite_url)
    store = tmp_path / "models"
    base_id = model_store.save_version(database, store, kind="policy", name="base", parent_id=None, algorithm="hub",
                                       settings={}, metrics={}, model=lm, tokenizer=tok)
    policy = new_adapter(copy.deepcopy(lm), LORA)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    version_id = model_store.save_version(database, store, kind="policy", name="policy-r1", parent_id=base_id,
                                          algorithm="ppo", settings={"adapter_of": base_id}, metrics={},
                                          model=policy, tokenizer=tok)
    version, loaded, loaded_tok = model_store.load_version(database, store, version_id)
    folder = model_store.version_dir(store, version.path)
    assert (folder / "adapter_config.json").exists() and not (folder / "model.safetensors").exists()
    base_bytes = (model_store.version_dir(store, "policy/base") / "model.safetensors").stat().st_size
    assert (folder / "adapter_model.safetensors").stat().st_size < 0.3 * base_bytes
    torch.testing.assert_close(logits_of(loaded, loaded_tok), logits_of(policy, tok))
    assert not torch.allclose(logits_of(loaded, loaded_tok), logits_of(lm, tok))
