"""The trainer's settings: one place, nested per part, read from STORYLOOP_TRAINER_* variables.

Nested fields use a double underscore: STORYLOOP_TRAINER_PPO__BATCH_SIZE=32,
STORYLOOP_TRAINER_BASE_POLICY=gpt2, STORYLOOP_TRAINER_BOOTSTRAP_PRESET=tiny.
"""

from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainer.alol import ALoLConfig
from trainer.dpo import DPOSettings
from trainer.lora import LoRASettings
from trainer.ppo import PPOConfig
from trainer.reward_model import RewardModelConfig


@dataclass
class GenerationConfig:
    continuations_per_prompt: int = 4  # K new continuations per active prompt and round (round 0: the base's)
    max_new_tokens: int = 80  # a story that reaches this without ending is trimmed to its last full sentence
    # 0.8: a small base writes clearly better sentences than at 1.0 (benchmarks/base_quality.py).
    # PPO samples (and computes every log-prob) at the same temperature and min_new_tokens, so it
    # optimises what people read, except for top-p: PPO's is 1.0 (see PPOConfig.top_p), so its KL to the
    # reference compares full distributions; the nucleus here only cuts the 5 % least likely tail.
    temperature: float = 0.8
    min_new_tokens: int = 8  # no end-of-text before this: no empty stories
    top_p: float = 0.95
    top_k: int = 0
    batch_size: int = 16
    max_prompts: int = 0  # 0 = every active prompt
    # What the new version's stories meet in a round's tuples, per prompt (see rounds.compose_tuples):
    base_per_prompt: int = 2  # the base (reference) policy's, so every version is compared with it directly
    best_per_prompt: int = 2  # the best-scoring earlier continuations by BWS score, imported sources included
    random_per_prompt: int = 1  # one more earlier continuation drawn at random


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STORYLOOP_TRAINER_", env_nested_delimiter="__",
                                      env_file=".env", extra="ignore")

    # "bootstrap" pretrains a small GPT-2 offline; anything else is a hub id or a local folder.
    base_policy: str = "bootstrap"
    bootstrap_preset: str = "demo"  # tiny | demo | base
    # Fine-tune the base on the imported prompt -> continuation texts before the first round
    # (a supervised baseline, TRL's SFTTrainer); PPO then starts from that version.
    sft_base: bool = False
    sft_epochs: float = 1.0
    # What a round trains with unless the admin picks another for it: ppo (samples fresh text, scored by
    # the reward model), alol (offline, from every stored continuation), dpo (TRL, straight from the
    # judgements' pairs). See docs/training.md, "Choosing a round algorithm".
    algorithm: Literal["ppo", "alol", "dpo"] = "ppo"
    # How a round trains its policy: "lora" (a LoRA adapter on the reference, saved as the adapter alone;
    # the reference is the same network with the adapter off; for pretrained bases) or "full" (every
    # weight; two whole models in memory, a whole copy per version: the default while the default base
    # is the 1.9M-parameter bootstrap GPT-2, whose PPO settings were measured with full fine-tuning).
    policy_training: Literal["lora", "full"] = "full"
    lora: LoRASettings = Field(default_factory=LoRASettings)
    ppo_steps: int = 20  # PPO steps per round
    seed: int = 0
    # CPU threads for torch; 0 = all cores but one, which stays free for the web app beside the trainer.
    # (On a busy 2-core machine one thread ran a PPO step ~9x faster than two competing threads.)
    cpu_threads: int = 0
    # missing_eos_penalty: a story that never ends loses 1.0 of its reward-model score, so the policy
    # learns to finish stories within max_new_tokens (the rollout and the stored stories share the cap).
    ppo: PPOConfig = Field(default_factory=lambda: PPOConfig(batch_size=16, mini_batch_size=8, max_new_tokens=80,
                                                             temperature=0.8, min_new_tokens=8,
                                                             learning_rate=1e-5, adaptive_kl=True,
                                                             missing_eos_penalty=1.0))
    reward: RewardModelConfig = Field(default_factory=RewardModelConfig)
    alol: ALoLConfig = Field(default_factory=lambda: ALoLConfig(max_new_tokens=80, value_temperature=0.8))
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
