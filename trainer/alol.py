"""A-LoL: Advantage-Leftover-Lunch offline RL (Baheti et al., ICLR 2024), in one file that reads top to bottom.

A-LoL treats a whole continuation as ONE action and learns from stored data only (no sampling while
training): every continuation storyloop ever stored, imported or generated, with the reward model's
opinion of it.

  reward     R(x, y) = sigmoid(reward model's score of prompt + continuation + EOS), formatted exactly as
             in reward training (reward_format.py)
  value      V(x): how well the REFERENCE policy does on prompt x. Sample continuations from it, score
             them, and fit a small head on the frozen reference's last-layer prompt states (mean-pooled)
             by mean squared error, keeping the best epoch on a held-out split of the samples.
  advantage  A = R - V(x), computed once; only rows with A > 0 are trained on, drawn with probability
             proportional to A (priority sampling, as in the paper).
  loss       per sequence -A * w * sum_t log pi(y_t | x, y_<t) (the SUM of token log-probs, as the paper
             found best), with the importance weight w computed without gradient:
               alol           w = clip(pi(y|x) / pi_ref(y|x), 1 - eps, 1 + eps)       (sequence ratio)
               alol_seq       sum_t -A * clip(pi(y_t)/pi_ref(y_t), 1 - eps, 1 + eps) * log pi(y_t)
               alol_ref_free  w = 1
               alol_kl        w = 1, plus beta * (log pi(y|x) - log pi_ref(y|x)) in the loss
             eps = 0.9 in the paper: the weights stay within [0.1, 1.9].

Shapes: N = stored rows, B = batch, T = padded prompt + response length, H = hidden size.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .generate import context_length, generate_continuations
from .ppo import disable_dropout, score_sequences

VARIANTS = ("alol", "alol_seq", "alol_ref_free", "alol_kl")


@dataclass
class ALoLConfig:
    variant: str = "alol"  # one of VARIANTS
    # optimisation
    learning_rate: float = 2e-5
    batch_size: int = 16  # rows per gradient step
    epochs: float = 2.0  # passes over the positive-advantage rows (rows drawn with replacement, by advantage)
    steps: int = 0  # > 0: exactly this many gradient steps instead (overrides epochs)
    max_grad_norm: float = 1.0
    clip_epsilon: float = 0.9  # importance weights clipped to [1 - eps, 1 + eps]
    kl_beta: float = 0.1  # alol_kl only: weight of log pi(y|x) - log pi_ref(y|x) in the loss
    priority_sampling: bool = True  # draw positive-advantage rows proportionally to A (False: uniformly)
    max_new_tokens: int = 80  # response tokens kept per stored continuation (EOS appended when it fits)
    # value estimate V(x) of the reference policy
    value_samples_per_prompt: int = 4  # reference samples scored per prompt
    value_temperature: float = 0.8
    value_epochs: int = 60  # full-batch epochs of the value head; the best held-out epoch is kept
    value_learning_rate: float = 1e-2
    value_held_out_fraction: float = 0.25  # of the reference samples
    # misc
    forward_batch_size: int = 32  # rows per no-grad forward pass (reference log-probs, prompt states)
    reward_batch_size: int = 32
    seed: int = 0


# ----------------------------------------------------------------------------- data
@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) prompt + response, right-padded
    attention_mask: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T-1) 1 where target token t+1 belongs to the response


def tokenize_rows(tokenizer, prompts: list[str], completions: list[str], max_new_tokens: int,
                  max_length: int) -> list[tuple[list[int], int]]:
    """(ids of prompt + response, prompt length) per row; long prompts keep their end, responses their start,
    and the response ends with EOS when it fits (the stored story ended there)."""
    rows = []
    for prompt, completion in zip(prompts, completions):
        response = tokenizer(completion, add_special_tokens=False)["input_ids"][:max_new_tokens - 1]
        response = response + [tokenizer.eos_token_id]
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        prompt_ids = prompt_ids[-max(1, max_length - len(response)):]
        rows.append((prompt_ids + response, len(prompt_ids)))
    return rows


def collate(rows: list[tuple[list[int], int]], pad_token_id: int, device) -> Batch:
    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), T), dtype=torch.long)
    response = torch.zeros((len(rows), T - 1), dtype=torch.float)
    for i, (ids, prompt_len) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        response[i, prompt_len - 1 : len(ids) - 1] = 1.0  # position t predicts token t+1
    return Batch(input_ids.to(device), attention.to(device), response.to(device))


def token_logprobs(model, batch: Batch) -> torch.Tensor:
    """Log-probs (B, T-1) of each next token; multiply by batch.response_mask to keep the response's."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()  # (B,T-1,V)
    logp = torch.gather(F.log_softmax(logits, -1), 2, batch.input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return logp * batch.response_mask


# ----------------------------------------------------------------------------- value estimate V(x)
class ValueHead(nn.Module):
    """Mean-pooled prompt state (H,) -> value in (0, 1), the range of the sigmoid reward."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, states: torch.Tensor) -> torch.Tensor:  # (N, H) -> (N,)
        return torch.sigmoid(self.net(states).squeeze(-1))


@torch.no_grad()
def prompt_states(ref_policy, tokenizer, prompts: list[str], batch_size: int = 32) -> torch.Tensor:
    """(N, H) the frozen reference's last-layer states, averaged over each prompt's tokens."""
    device = next(ref_policy.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], padding=True, padding_side="right", return_tensors="pt",
                        truncation=True, max_length=context_length(ref_policy)).to(device)
        hidden = ref_policy(**enc, output_hidden_states=True).hidden_states[-1].float()  # (b, P, H)
        mask = enc["attention_mask"][:, :, None].float()  # (b, P, 1)
        out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(out)


def fit_value_head(states: torch.Tensor, targets: torch.Tensor, cfg: ALoLConfig) -> tuple[ValueHead, dict]:
    """MSE fit of V on (prompt state, sampled reward) rows; the epoch with the lowest held-out loss is kept.
    Returns the head and {"value_held_out_mse_first", "value_held_out_mse", "value_best_epoch", ...}."""
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(targets), generator=g)
    n_held = max(1, int(len(targets) * cfg.value_held_out_fraction)) if len(targets) > 1 else 0
    held, train = order[:n_held], order[n_held:] if n_held < len(targets) else order
    torch.manual_seed(cfg.seed)
    head = ValueHead(states.shape[1]).to(states.device)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.value_learning_rate)
    scale = states[train].std(0).clamp(min=1e-4)  # whitened features: one learning rate fits any model size
    shift = states[train].mean(0)
    x = (states - shift) / scale

    def held_out_mse() -> float:
        with torch.no_grad():
            rows = held if n_held else train
            return F.mse_loss(head(x[rows]), targets[rows]).item()

    first = best = held_out_mse()
    best_state, best_epoch = {k: v.clone() for k, v in head.state_dict().items()}, 0
    for epoch in range(1, cfg.value_epochs + 1):
        loss = F.mse_loss(head(x[train]), targets[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
        mse = held_out_mse()
        if mse < best:
            best, best_epoch = mse, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    head.input_shift, head.input_scale = shift, scale  # applied by value_of
    return head.eval(), {"value_held_out_mse_first": first, "value_held_out_mse": best, "value_best_epoch": best_epoch,
                         "value_rows": len(targets), "value_held_out_rows": n_held}


@torch.no_grad()
def value_of(head: ValueHead, states: torch.Tensor) -> torch.Tensor:
    return head((states - head.input_shift) / head.input_scale)


def rewards(reward_model, reward_tokenizer, prompts: list[str], completions: list[str], batch_size: int = 32):
    """R(x, y) = sigmoid of the reward model's score, in (0, 1)."""
    return torch.sigmoid(score_sequences(reward_model, reward_tokenizer, prompts, completions, batch_size))


# ----------------------------------------------------------------------------- the loss
def alol_loss(cfg: ALoLConfig, logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              response_mask: torch.Tensor):
    """logp (B, T-1) policy token log-probs (with gradient), ref_logp (B, T-1) reference's, both zero outside
    the response (response_mask (B, T-1)); advantages (B,) > 0. Returns (loss, mean importance weight before clipping, clipped fraction)."""
    seq_logp, seq_ref = logp.sum(-1), ref_logp.sum(-1)  # (B,)
    lo, hi = 1.0 - cfg.clip_epsilon, 1.0 + cfg.clip_epsilon
    if cfg.variant == "alol_seq":  # one ratio per token, each clipped
        ratio = (logp.detach() - ref_logp).exp()  # (B, T-1); 1 outside the response (both zero there)
        weight = ratio.clamp(lo, hi)
        loss = -(advantages[:, None] * weight * logp).sum(-1)
        mask = response_mask.bool()
        return loss.mean(), ratio[mask].mean().item(), ((ratio != weight) & mask).float().sum().item() / max(1, mask.sum().item())
    if cfg.variant == "alol":  # one ratio per sequence
        ratio = (seq_logp.detach() - seq_ref).exp()  # (B,)
        weight = ratio.clamp(lo, hi)
    else:  # alol_ref_free, alol_kl: no importance weight
        ratio = weight = torch.ones_like(seq_logp)
    loss = -advantages * weight * seq_logp  # (B,)
    if cfg.variant == "alol_kl":
        loss = loss + cfg.kl_beta * (seq_logp - seq_ref)
    return loss.mean(), ratio.mean().item(), (ratio != weight).float().mean().item()


# ----------------------------------------------------------------------------- trainer
class ALoLTrainer:
    """trainer = ALoLTrainer(cfg, policy, tokenizer, reward_model, ref_policy); trainer.prepare(prompts, completions);
    trainer.train() -> final stats. `policy` is trained in place; `ref_policy` (frozen) defaults to a copy of it.

    prepare() does all the no-gradient work once: rewards of the stored rows, the value head fitted on
    reference samples, advantages, and the reference's token log-probs of the positive-advantage rows."""

    def __init__(self, config: ALoLConfig, policy, tokenizer, reward_model, ref_policy=None, reward_tokenizer=None,
                 on_step: Callable[[int, dict], None] | None = None):
        if config.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {config.variant!r}")
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs both an EOS and a pad token")
        self.config, self.tokenizer, self.on_step = config, tokenizer, on_step
        self.reward_tokenizer = reward_tokenizer or tokenizer
        self.device = next(policy.parameters()).device
        if ref_policy is None:
            ref_policy = copy.deepcopy(policy)
        self.ref_policy = ref_policy.to(self.device).eval().requires_grad_(False)
        self.reward_model = reward_model.to(self.device).eval().requires_grad_(False)
        if reward_model.config.pad_token_id is None:
            reward_model.config.pad_token_id = self.reward_tokenizer.pad_token_id
        disable_dropout(policy)
        self.policy = policy.train().requires_grad_(True)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
        self.max_length = context_length(policy)
        self.rows: list[tuple[list[int], int]] = []
        self.advantages = torch.zeros(0)
        self.ref_logp: list[torch.Tensor] = []
        self.data_stats: dict = {}

    @torch.no_grad()
    def prepare(self, prompts: list[str], completions: list[str]) -> dict:
        """Rewards, value head, advantages and reference log-probs of the stored (prompt, completion) rows."""
        cfg, tok = self.config, self.tokenizer
        if not prompts:
            raise ValueError("no stored continuations to learn from")
        torch.manual_seed(cfg.seed)
        reward = rewards(self.reward_model, self.reward_tokenizer, prompts, completions, cfg.reward_batch_size).cpu()
        # V(x): the reference's own samples on the same prompts, scored by the same reward model
        unique = sorted(set(prompts))
        samples = generate_continuations(self.ref_policy, tok, unique, cfg.value_samples_per_prompt,
                                         cfg.max_new_tokens, temperature=cfg.value_temperature,
                                         batch_size=cfg.forward_batch_size)
        sample_prompts = [p for p, row in zip(unique, samples) for _ in row]
        sample_reward = rewards(self.reward_model, self.reward_tokenizer, sample_prompts, [c for row in samples for c in row],
                                cfg.reward_batch_size).cpu()
        states = prompt_states(self.ref_policy, tok, unique, cfg.forward_batch_size).cpu()  # (U, H)
        index = {p: i for i, p in enumerate(unique)}
        with torch.enable_grad():  # prepare() is no-grad, except for fitting the value head
            head, value_stats = fit_value_head(states[[index[p] for p in sample_prompts]], sample_reward, cfg)
        value = value_of(head, states)[[index[p] for p in prompts]]  # (N,)
        advantage = reward - value  # (N,)
        positive = (advantage > 0).nonzero().squeeze(-1).tolist()
        if not positive:
            raise ValueError("no stored continuation scores above the reference policy's value: nothing to learn from")
        self.rows = [tokenize_rows(tok, [prompts[i]], [completions[i]], cfg.max_new_tokens, self.max_length)[0]
                     for i in positive]
        self.advantages = advantage[positive]
        self.positive_indices = positive
        self.ref_logp = []
        for i in range(0, len(self.rows), cfg.forward_batch_size):
            batch = collate(self.rows[i : i + cfg.forward_batch_size], tok.pad_token_id, self.device)
            self.ref_logp += list(token_logprobs(self.ref_policy, batch).cpu())
        self.data_stats = {"rows": len(prompts), "positive_rows": len(positive), "mean_reward": reward.mean().item(),
                           "mean_value": value.mean().item(), "mean_positive_advantage": self.advantages.mean().item(),
                           **value_stats}
        return self.data_stats

    def _draw(self, rng: torch.Generator) -> list[int]:
        weights = self.advantages if self.config.priority_sampling else torch.ones_like(self.advantages)
        return torch.multinomial(weights, self.config.batch_size, replacement=True, generator=rng).tolist()

    def step(self, picked: list[int]) -> dict:
        cfg = self.config
        t0 = time.time()
        batch = collate([self.rows[i] for i in picked], self.tokenizer.pad_token_id, self.device)
        T1 = batch.response_mask.shape[1]
        ref_logp = torch.stack([F.pad(self.ref_logp[i], (0, T1 - len(self.ref_logp[i])))[:T1] for i in picked]).to(self.device)
        logp = token_logprobs(self.policy, batch)  # (B, T-1)
        loss, mean_ratio, clipfrac = alol_loss(cfg, logp, ref_logp, self.advantages[picked].to(self.device),
                                               batch.response_mask)
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        return {"loss": loss.item(), "importance_weight": mean_ratio, "clipfrac": clipfrac,
                "log_ratio": (logp.detach().sum(-1) - ref_logp.sum(-1)).mean().item(),
                "grad_norm": float(grad_norm), "time_s": time.time() - t0}

    @property
    def total_steps(self) -> int:
        """cfg.steps, else cfg.epochs passes over the prepared positive-advantage rows. Few stored rows and
        many steps overfit them: in benchmarks/algorithms.py, 200 steps on ~60 rows drove the KL to the
        reference past 18 nats and distinct-2 down."""
        cfg = self.config
        return cfg.steps or max(1, math.ceil(cfg.epochs * len(self.rows) / cfg.batch_size))

    def train(self) -> dict:
        """total_steps gradient steps over the prepared rows; returns the last step's stats plus the data stats."""
        if not self.rows:
            raise RuntimeError("call prepare() with the stored continuations first")
        rng = torch.Generator().manual_seed(self.config.seed)
        stats: dict = {}
        for step in range(1, self.total_steps + 1):
            stats = self.step(self._draw(rng))
            if self.on_step is not None:
                self.on_step(step, stats)
        self.policy.eval()
        return {**self.data_stats, **stats}
