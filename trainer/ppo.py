"""PPO for causal language models (RLHF), in one file that reads top to bottom.

Follows Ziegler et al. 2019 / Stiennon et al. 2020 and "The N Implementation Details of RLHF with PPO"
(Huang et al. 2024); style after CleanRL's single-file ppo.py. Four models:

  policy      AutoModelForCausalLM, trained.
  ref_policy  frozen copy of the policy before RL; the KL penalty keeps the policy close to it.
  reward      AutoModelForSequenceClassification (num_labels=1), frozen; scores prompt+response+EOS.
  value       read at EVERY position, trained. It reads the POLICY's token ids, so it is a copy of the
              reward model (AutoModelForSequenceClassification, its backbone's hidden states through its
              `score` head) only when both share a vocabulary; otherwise a zero-initialised linear head on
              the policy's own last hidden states (see default_value_model): one forward gives logits and
              values, which halves a step's compute and memory for a pretrained policy under LoRA.

Every log-prob (rollout, reference, update) comes from trainer/generate.py's response_logprobs with the
same `Sampling` the rollout drew from: temperature, no end-of-text before min_new_tokens, top-k/top-p.
The reward-model score is normalised per trainer (one round) by the mean and spread of the scores of its
first rollout, sampled from the policy the round starts from, so the KL coefficient means the same in
every round whatever the reward model's scale.

One PPO step = rollout (sample, score, per-token rewards, GAE) + `ppo_epochs` passes of clipped-surrogate
and clipped-value updates over minibatches. Policy and value model sit in one `PolicyAndValue` module with
one Adam optimizer (loss = pg_loss + vf_coef * vf_loss, gradients clipped jointly), so a single
`accelerator.prepare` call (and a single DDP wrapper under `accelerate launch`) covers both. With Adam,
vf_coef mostly matters through that joint gradient clipping.

Tokenizers: the reward model sees TEXT (prompt + decoded response + EOS, see reward_format.py) re-tokenized
with its own tokenizer, so it may share the policy's tokenizer or not. The response is scored as people
read stored stories (generate.shown_text): one cut by the token cap counts up to its last full sentence.

Shapes: B = rollouts (batch_size), b = minibatch, P = padded prompt length, K = response length,
T = P + K, V = vocabulary.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed

from .generate import (Sampling, context_length, decode_responses, left_pad_prompts, position_ids_from_mask,
                       response_logprobs, sample_tokens, shown_text, truncate_at_eos)
from .lora import make_trainable
from .reward_format import format_for_reward


@dataclass
class PPOConfig:
    # optimisation
    learning_rate: float = 1e-5  # Adam learning rate, policy and value model alike
    adam_eps: float = 1e-5  # Adam epsilon (CleanRL / N-details value)
    batch_size: int = 16  # rollouts (prompt, response) per PPO step, per process
    mini_batch_size: int = 8  # rollouts per gradient step; batch_size must be a multiple of it
    ppo_epochs: int = 4  # passes over the rollout batch per PPO step
    max_grad_norm: float = 1.0  # clip the joint (policy + value) gradient norm
    # sampling: every log-prob is taken under exactly these transforms (generate.Sampling)
    max_new_tokens: int = 48  # response length cap K
    temperature: float = 1.0
    min_new_tokens: int = 0  # no EOS among the first N sampled tokens
    # top-k / top-p: the policy's log-probs are those of the filtered distribution, the reference's of its
    # full tempered one (a token outside the reference's own nucleus would be infinitely far). Off by
    # default: the KL then compares the same kind of distribution on both sides.
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    max_prompt_tokens: int | None = None  # keep the last N prompt tokens (None = whole prompt)
    forward_batch_size: int = 32  # rows per no-grad forward pass in the rollout (memory knob only)
    reward_batch_size: int = 32  # texts per reward-model forward pass
    reward_max_length: int | None = None  # left-truncate reward inputs to this many tokens (None = no limit)
    # advantages
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    # losses
    cliprange: float = 0.2  # policy ratio clip epsilon
    cliprange_value: float = 0.2  # value prediction clip around the rollout values
    vf_coef: float = 0.1  # weight of the value loss in the joint loss
    # KL penalty
    init_kl_coef: float = 0.05  # beta in reward_t = -beta * (logp - ref_logp)
    adaptive_kl: bool = False  # Ziegler et al. proportional controller towards target_kl
    target_kl: float = 6.0  # target KL per response (nats, summed over tokens)
    kl_horizon: int = 10000  # controller horizon, in rollouts
    # reward shaping
    normalize_score: bool = True  # (score - mean) / std, both from this trainer's first rollout
    whiten_rewards: bool = False  # whiten per-token rewards (no mean shift) before GAE
    missing_eos_penalty: float | None = None  # subtract from the score of responses that never emit EOS
    # misc
    seed: int = 0  # seeds torch/numpy/random (offset by process index)
    mixed_precision: str = "auto"  # see make_accelerator

    @property
    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, min_new_tokens=self.min_new_tokens, top_k=self.top_k,
                        top_p=self.top_p)


# ----------------------------------------------------------------------------- small tensor helpers
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """rewards, values (B, K), both ZERO after each response's last token -> advantages (B, K).

    A_t = delta_t + gamma*lam*A_{t+1}, delta_t = r_t + gamma*V_{t+1} - V_t, V_K = 0. The zeros past the
    end make every sequence's GAE stop at its own last token.
    """
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])  # (B,)
    K = rewards.shape[1]
    for t in reversed(range(K)):
        next_values = values[:, t + 1] if t + 1 < K else torch.zeros_like(last)  # (B,)
        delta = rewards[:, t] + gamma * next_values - values[:, t]  # (B,)
        last = delta + gamma * lam * last
        advantages[:, t] = last
    return advantages


class AdaptiveKLController:
    """Ziegler et al. 2019: beta <- beta * (1 + clip(KL/target - 1, -0.2, 0.2) * n / horizon)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def disable_dropout(model: nn.Module) -> None:
    """PPO ratios must be exactly 1 on the first minibatch: no dropout in policy or value model."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


# ----------------------------------------------------------------------------- models
def token_values(value_model, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """Per-position values (B, T): the classifier's backbone, then its `score` head on every hidden state."""
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    return value_model.score(hidden).squeeze(-1).float()  # (B, T, H) -> (B, T)


class PolicyAndValue(nn.Module):
    """Both trainable networks behind one forward, so DDP sees (and syncs) both in one wrapper. Without a
    value model, values come from `value_head` on the policy's last hidden states (a shared backbone: the
    value loss trains the policy's adapter, or its weights, too, scaled by vf_coef)."""

    def __init__(self, policy, value_model=None):
        super().__init__()
        self.policy, self.value_model = policy, value_model
        if value_model is None:
            self.value_head = nn.Linear(policy.config.hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids):
        if self.value_model is not None:
            logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
            return logits, token_values(self.value_model, input_ids, attention_mask, position_ids)  # (B,T,V), (B,T)
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=True)
        hidden = out.hidden_states[-1]  # (B, T, H), after the final norm
        return out.logits, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()


def same_vocabulary(tokenizer_a, tokenizer_b) -> bool:
    return tokenizer_a is tokenizer_b or tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


def default_value_model(tokenizer, reward_model, reward_tokenizer):
    """The value model reads the policy's token ids. A copy of the reward model when it shares the policy's
    vocabulary (the references' choice: it starts out knowing what scores well); otherwise None: a head on
    the policy's own hidden states (PolicyAndValue), never one model's embeddings read with the other's
    token ids, and no second copy of a pretrained policy in memory."""
    return copy.deepcopy(reward_model) if same_vocabulary(tokenizer, reward_tokenizer) else None


@torch.no_grad()
def score_texts(reward_model, tokenizer, texts: list[str], batch_size: int = 32, max_length: int | None = None):
    """Reward-model scores (N,) of ALREADY formatted texts (see format_for_reward). Right-padded; the
    sequence-classification head pools at the last non-pad token, i.e. at the EOS we appended (the pad
    token must therefore differ from EOS for that EOS to be the pooled token, as it is in training)."""
    device = next(reward_model.parameters()).device
    max_length = max_length or context_length(reward_model)  # longer texts keep their end (and the EOS)
    old_side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    scores = []
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], padding=True, padding_side="right", return_tensors="pt",
                            truncation=max_length is not None, max_length=max_length).to(device)
            # input_ids + attention_mask only, as TRL's collator passes them (no token_type_ids)
            out = reward_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            scores.append(out.logits[:, 0].float())  # (n, 1) -> (n,)
    finally:
        tokenizer.truncation_side = old_side
    return torch.cat(scores)


def score_sequences(reward_model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 32,
                    max_length: int | None = None) -> torch.Tensor:
    """Scores (N,) of (prompt, completion) pairs, formatted exactly as TRL's RewardTrainer formats them."""
    texts = [format_for_reward(p, c, tokenizer.eos_token) for p, c in zip(prompts, completions)]
    return score_texts(reward_model, tokenizer, texts, batch_size, max_length)


# ----------------------------------------------------------------------------- rollout
@dataclass
class Rollout:
    """One PPO step's samples, all computed with the parameters as they were before the step's updates.
    B rollouts, P padded prompt length, K response length, T = P + K."""

    prompts: list[str]
    completions: list[str]  # decoded responses, up to (not including) end-of-text
    seq: torch.Tensor  # (B, T) left-padded prompt ids, then the response ids
    attn: torch.Tensor  # (B, T) 1 on prompt tokens and on response tokens up to and including the first EOS
    pos: torch.Tensor  # (B, T) position ids (start at 0 on each row's first real token)
    response: torch.Tensor  # (B, K) sampled ids, pad after the first EOS
    mask: torch.Tensor  # (B, K) float, 1 on response tokens up to and including the first EOS
    lengths: torch.Tensor  # (B,) tokens under the mask
    has_eos: torch.Tensor  # (B,) bool, the response emitted end-of-text
    logprobs: torch.Tensor  # (B, K) under the sampling distribution (the "old" policy of the ratio)
    ref_logprobs: torch.Tensor  # (B, K) reference, same temperature and end-of-text rule
    values: torch.Tensor  # (B, K) value of the state in which response token t is chosen
    entropy: torch.Tensor  # (B, K) of the sampling distribution
    scores: torch.Tensor  # (B,) raw reward-model scores

    @property
    def prompt_len(self) -> int:
        return self.seq.shape[1] - self.response.shape[1]


def make_accelerator(mixed_precision: str = "auto") -> Accelerator:
    """"auto": bf16 on a CUDA device that has it, else full precision; under `accelerate launch` its own
    choice. accelerate is set up once per process (a TRL trainer that ran before us in the same round
    already did), and asking for a precision again would raise, so then we ask for none."""
    mp = mixed_precision
    if mp == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        mp = None if "ACCELERATE_MIXED_PRECISION" in os.environ else ("bf16" if bf16 else "no")
    if AcceleratorState._shared_state:
        mp = None
    return Accelerator(mixed_precision=mp)


# ----------------------------------------------------------------------------- trainer
class PPOTrainer:
    """trainer = PPOTrainer(cfg, policy, tokenizer, reward_model, on_step=log_fn); trainer.step(prompts) per step.

    `policy` is trained in place (also reachable as `trainer.policy`); `ref_policy` defaults to a frozen copy
    of it and `value_model` to default_value_model(...). `reward_tokenizer` defaults to `tokenizer`.
    Tokenizers need an EOS and a pad token; prompts must be non-empty strings.
    """

    def __init__(self, config: PPOConfig, policy, tokenizer, reward_model, reward_tokenizer=None,
                 ref_policy=None, value_model=None, on_step: Callable[[int, dict], None] | None = None,
                 accelerator: Accelerator | None = None):
        assert config.batch_size % config.mini_batch_size == 0, "batch_size must be a multiple of mini_batch_size"
        accelerator = accelerator or make_accelerator(config.mixed_precision)
        if config.max_prompt_tokens is None:  # prompt + response must fit the policy's context
            config = dataclasses.replace(config, max_prompt_tokens=max(1, context_length(policy) - config.max_new_tokens))
        self.config, self.accelerator, self.on_step = config, accelerator, on_step
        set_seed(config.seed, device_specific=True)  # different samples on every process
        self.tokenizer = tokenizer
        self.reward_tokenizer = tokenizer if reward_tokenizer is None else reward_tokenizer
        for tok in (self.tokenizer, self.reward_tokenizer):
            if tok.pad_token_id is None or tok.eos_token_id is None:
                raise ValueError("policy and reward tokenizers need both an EOS and a pad token")
        if reward_model.config.pad_token_id is None:  # the classifier finds the last token through the pad id
            reward_model.config.pad_token_id = self.reward_tokenizer.pad_token_id

        device = accelerator.device
        if ref_policy is None:
            ref_policy = copy.deepcopy(policy)  # the policy before RL
        self.ref_policy = ref_policy.to(device).eval().requires_grad_(False)
        self.reward_model = reward_model.to(device).eval().requires_grad_(False)
        if value_model is None:
            value_model = default_value_model(tokenizer, reward_model, self.reward_tokenizer)
        if value_model is not None:
            value_model.requires_grad_(True)
            disable_dropout(value_model)
        make_trainable(policy)
        disable_dropout(policy)
        model = PolicyAndValue(policy, value_model).train()
        trainable = [p for p in model.parameters() if p.requires_grad]  # a LoRA policy: its adapter only
        optimizer = torch.optim.Adam(trainable, lr=config.learning_rate, eps=config.adam_eps)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.kl_ctl = AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon)
        self.score_mean, self.score_std = 0.0, 1.0  # set from the first rollout when normalize_score
        self.step_count = 0
        self.last_rollout: Rollout | None = None  # the latest step's samples (for logging)

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model).policy

    def _logprobs(self, logits, response, prompt_len: int, nucleus: bool = True):
        return response_logprobs(logits, response, prompt_len, self.config.sampling, self.tokenizer.eos_token_id,
                                 nucleus=nucleus)

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Rollout:
        """Sample one response per prompt and score it: log-probs, reference log-probs, values, RM scores."""
        cfg, tok, acc = self.config, self.tokenizer, self.accelerator
        net = acc.unwrap_model(self.model)
        prompt_ids, prompt_mask = left_pad_prompts(tok, prompts, acc.device, cfg.max_prompt_tokens)  # (B, P)
        P = prompt_ids.shape[1]
        with acc.autocast():
            response = sample_tokens(net.policy, prompt_ids, prompt_mask, max_new_tokens=cfg.max_new_tokens,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                     sampling=cfg.sampling)  # (B, K)
            mask, lengths = truncate_at_eos(response, tok.eos_token_id)  # (B, K) bool, (B,)
            seq = torch.cat([prompt_ids, response], 1)  # (B, T)
            attn = torch.cat([prompt_mask, mask.long()], 1)  # (B, T): nothing after the first EOS
            pos = position_ids_from_mask(attn)  # (B, T)
            logprobs, values, ref_logprobs, entropy = [], [], [], []
            for i in range(0, len(prompts), cfg.forward_batch_size):  # chunks of rows, to bound memory
                s = slice(i, i + cfg.forward_batch_size)
                logits, v = net(seq[s], attn[s], pos[s])  # (b, T, V), (b, T)
                lp, ent = self._logprobs(logits, response[s], P)  # (b, K) x2
                ref_logits = self.ref_policy(input_ids=seq[s], attention_mask=attn[s], position_ids=pos[s]).logits
                ref_logprobs.append(self._logprobs(ref_logits, response[s], P, nucleus=False)[0])
                logprobs.append(lp)
                entropy.append(ent)
                values.append(v[:, P - 1 : -1])  # (b, K): value of the state in which y_t is chosen
            completions = decode_responses(tok, response, tok.eos_token_id)
            has_eos = response.eq(tok.eos_token_id).any(-1)  # (B,)
            # scored as people would read it: a story cut by the token cap, back to its last full sentence
            shown = [shown_text(c, ended) for c, ended in zip(completions, has_eos.tolist())]
            scores = score_sequences(self.reward_model, self.reward_tokenizer, prompts, shown,
                                     cfg.reward_batch_size, cfg.reward_max_length)  # (B,)
        self.last_rollout = Rollout(
            prompts=prompts, completions=completions, seq=seq, attn=attn, pos=pos, response=response,
            mask=mask.float(), lengths=lengths, has_eos=has_eos,
            logprobs=torch.cat(logprobs), ref_logprobs=torch.cat(ref_logprobs), values=torch.cat(values),
            entropy=torch.cat(entropy), scores=scores)
        return self.last_rollout

    def _set_score_normalisation(self, scores: torch.Tensor) -> None:
        """Mean and spread of the first rollout's scores (over all processes): samples of the policy the
        round starts from, so a normalised score of 0 means "as good as where we started"."""
        gathered = self.accelerator.gather(scores.float())
        self.score_mean, self.score_std = gathered.mean().item(), max(gathered.std().item(), 1e-3)

    def step(self, prompts: list[str]) -> dict[str, float]:
        """One PPO step on exactly `batch_size` prompts (repeats allowed). Returns stats averaged over
        processes: score (raw RM score), kl (per response, nats), kl_coef (beta used this step),
        non_score_reward, entropy, response_length, eos_fraction, value_mean, return_mean, policy_loss,
        value_loss, clipfrac, vf_clipfrac, approx_kl (of the PPO updates), time_s; then calls on_step."""
        cfg, t0 = self.config, time.time()
        assert len(prompts) == cfg.batch_size, f"step() takes batch_size={cfg.batch_size} prompts"
        r = self.rollout(prompts)
        mask, P, B = r.mask, r.prompt_len, len(prompts)  # mask (B, K)
        rows = torch.arange(B, device=mask.device)

        # 1. per-token rewards: KL penalty on every token, (normalised, penalised) RM score on the last one
        if cfg.normalize_score and self.step_count == 0:
            self._set_score_normalisation(r.scores)
        scores = (r.scores - self.score_mean) / self.score_std  # (B,)
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~r.has_eos).float()
        kl = (r.logprobs - r.ref_logprobs) * mask  # (B, K) per-token log-ratio estimate of KL
        kl_coef = self.kl_ctl.value
        rewards = -kl_coef * kl  # (B, K)
        rewards[rows, r.lengths - 1] += scores
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask

        # 2. advantages (GAE) and returns; values and rewards are zero after each response's end
        values = r.values * mask  # (B, K)
        advantages = compute_gae(rewards, values, cfg.gamma, cfg.lam)  # (B, K)
        returns = advantages + values  # (B, K)
        advantages = masked_whiten(advantages, mask) * mask

        # 3. PPO epochs over minibatches
        log: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "vf_clipfrac", "approx_kl")}
        for _ in range(cfg.ppo_epochs):
            for idx in torch.randperm(B, device=mask.device).split(cfg.mini_batch_size):  # (b,) rollout indices
                m = mask[idx]  # (b, K)
                logits, vpred = self.model(r.seq[idx], r.attn[idx], r.pos[idx])  # (b, T, V), (b, T)
                new_logp, _ = self._logprobs(logits, r.response[idx], P)  # (b, K)
                vpred = vpred[:, P - 1 : -1]  # (b, K)
                # clipped value loss
                old_v, ret = values[idx], returns[idx]
                vclipped = old_v + (vpred - old_v).clamp(-cfg.cliprange_value, cfg.cliprange_value)
                vf_losses = torch.max((vpred - ret) ** 2, (vclipped - ret) ** 2)
                vf_loss = 0.5 * masked_mean(vf_losses, m)
                # clipped surrogate
                log_ratio = new_logp - r.logprobs[idx]  # (b, K)
                ratio = log_ratio.exp()
                adv = advantages[idx]
                pg_losses = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.cliprange, 1 + cfg.cliprange))
                pg_loss = masked_mean(pg_losses, m)
                loss = pg_loss + cfg.vf_coef * vf_loss
                self.optimizer.zero_grad()
                self.accelerator.backward(loss)
                self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    log["policy_loss"].append(pg_loss.item())
                    log["value_loss"].append(vf_loss.item())
                    log["clipfrac"].append(masked_mean(((ratio - 1).abs() > cfg.cliprange).float(), m).item())
                    log["vf_clipfrac"].append(masked_mean((vf_losses > (vpred - ret) ** 2).float(), m).item())
                    log["approx_kl"].append(masked_mean(0.5 * log_ratio**2, m).item())

        # 4. KL controller and statistics (averaged over processes). The trainer page charts the first
        # eight of a phase's metrics, so what says whether PPO updates at all (clip fraction, approximate
        # KL of the updates) and whether stories shrink comes first.
        mean_kl = kl.sum(-1).mean()  # KL per response, summed over its tokens
        updates = {k: torch.tensor(sum(v) / len(v)) for k, v in log.items()}
        stats = {
            "score": r.scores.mean(), "kl": mean_kl, "clipfrac": updates.pop("clipfrac"),
            "approx_kl": updates.pop("approx_kl"), "response_length": r.lengths.float().mean(),
            "eos_fraction": r.has_eos.float().mean(), "entropy": masked_mean(r.entropy, mask),
            "kl_coef": torch.tensor(kl_coef), "normalized_score": scores.mean(),
            "non_score_reward": (-kl_coef * kl).sum(-1).mean(), "value_mean": masked_mean(values, mask),
            "return_mean": masked_mean(returns, mask), **updates,
        }
        keys = list(stats)
        reduced = self.accelerator.reduce(torch.stack([stats[k].float().to(mask.device) for k in keys]), "mean")
        stats = dict(zip(keys, reduced.tolist()))
        if cfg.adaptive_kl:
            self.kl_ctl.update(stats["kl"], cfg.batch_size * self.accelerator.num_processes)
        stats["time_s"] = time.time() - t0
        self.step_count += 1
        if self.on_step is not None:
            self.on_step(self.step_count, stats)
        return stats

    def save_pretrained(self, output_dir: str) -> None:
        """Save the policy (and its tokenizer) from the main process."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.policy.save_pretrained(output_dir)
            self.tokenizer.save_pretrained(output_dir)
