"""A-LoL: Advantage-Leftover-Lunch offline RL (Baheti et al., ICLR 2024), in one file that reads top to bottom.

A-LoL treats a whole continuation as ONE action and learns from stored data only (no sampling while
training): every continuation storyloop ever stored, imported or generated, with the reward model's
opinion of it. A round starts from its newest policy, pi_0 ("start"); the paper's reference policy, the one
training starts from, is that start here.

  reward     R(x, y) = sigmoid(reward model's score of prompt + continuation + EOS), formatted exactly as
             in reward training (reward_format.py)
  value      V(x): how well the START policy does on prompt x. Sample continuations from it, score them,
             and fit a small head on its frozen last-layer prompt states (mean-pooled) by mean squared
             error, keeping the best epoch on a held-out split of the samples.
  advantage  A = R - V(x), computed once; only rows with A > 0 are trained on, drawn with probability
             proportional to A (priority sampling, as in the paper).
  loss       -A * sum_t w_t * log pi(y_t | x, y_<t) (the SUM of token log-probs, as the paper found
             best), the weights computed without gradient by one rule per variant (WEIGHT_RULES), from
             the log-ratio to the start policy, so every weight is 1 at the round's first step:
               alol           w_t = clip(pi(y|x) / pi_0(y|x), 1 - eps, 1 + eps)   (one sequence ratio)
               alol_seq       w_t = clip(pi(y_t) / pi_0(y_t), 1 - eps, 1 + eps)   (one ratio per token)
               alol_ref_free  w_t = 1
               alol_kl        w_t = 1, plus beta * (log pi(y|x) - log pi_ref(y|x)) with pi_ref the round's
                              reference (the base): a log-ratio penalty on the stored story, which
                              estimates a KL only on the policy's own samples
             eps = 0.9 in the paper: the weights stay within [0.1, 1.9].

Shapes: N = stored rows, B = batch, T = padded prompt + response length, H = hidden size.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .generate import context_length, generate_continuations
from .lora import make_trainable
from .ppo import disable_dropout, score_sequences

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
    max_new_tokens: int = 80  # response tokens kept per stored continuation, end-of-text included
    # value estimate V(x) of the reference policy
    value_samples_per_prompt: int = 4  # start-policy samples scored per prompt
    value_temperature: float = 0.8
    value_epochs: int = 60  # full-batch epochs of the value head; the best held-out epoch is kept
    value_learning_rate: float = 1e-2
    value_held_out_fraction: float = 0.25  # of those samples
    # misc
    forward_batch_size: int = 32  # rows per no-grad forward pass (start log-probs, prompt states)
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
    """(ids of prompt + response, prompt length) per row; long prompts keep their end, responses their start.
    A story that fits in max_new_tokens ends with end-of-text (it ended there); a longer one is cut
    WITHOUT it, so the cut is not taught as an ending."""
    rows = []
    for prompt, completion in zip(prompts, completions):
        response = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if len(response) < max_new_tokens:
            response = response + [tokenizer.eos_token_id]
        else:
            response = response[:max_new_tokens]
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


def select_rows(batch: Batch, rows: list[int]) -> Batch:
    """The given rows of a collated batch, cut to the longest of them."""
    T = int(batch.attention_mask[rows].sum(-1).max())
    return Batch(batch.input_ids[rows, :T], batch.attention_mask[rows, :T], batch.response_mask[rows, : T - 1])


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
# Each variant's importance weight, from the token log-ratios to the start policy (B, T-1) (zero outside the
# response) and the clip bounds: (B, 1) for a weight per sequence, (B, T-1) for one per token.
WEIGHT_RULES = {
    "alol": lambda log_ratio, lo, hi: log_ratio.sum(-1, keepdim=True).exp().clamp(lo, hi),
    "alol_seq": lambda log_ratio, lo, hi: log_ratio.exp().clamp(lo, hi),
    "alol_ref_free": lambda log_ratio, lo, hi: torch.ones_like(log_ratio[:, :1]),
    "alol_kl": lambda log_ratio, lo, hi: torch.ones_like(log_ratio[:, :1]),
}
VARIANTS = tuple(WEIGHT_RULES)


def alol_loss(cfg: ALoLConfig, logp: torch.Tensor, start_logp: torch.Tensor, advantages: torch.Tensor,
              response_mask: torch.Tensor, ref_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """logp (B, T-1) policy token log-probs (with gradient); start_logp (B, T-1) the start policy's and
    ref_logp (B, T-1) the reference's (alol_kl only), all zero outside the response (response_mask
    (B, T-1)); advantages (B,) > 0. Returns the loss and {"log_ratio": mean sequence log-ratio to the start
    policy, "clipfrac": share of the weights (sequences or tokens, by variant) at a clip bound}."""
    lo, hi = 1.0 - cfg.clip_epsilon, 1.0 + cfg.clip_epsilon
    log_ratio = (logp.detach() - start_logp) * response_mask  # (B, T-1)
    weight = WEIGHT_RULES[cfg.variant](log_ratio, lo, hi)  # (B, 1) or (B, T-1), no gradient
    loss = -(advantages[:, None] * weight * logp).sum(-1)  # (B,)
    if cfg.variant == "alol_kl":
        loss = loss + cfg.kl_beta * (logp.sum(-1) - ref_logp.sum(-1))
    per_token = weight.shape[1] > 1
    at_bound = ((weight <= lo) | (weight >= hi)).float()
    clipfrac = (at_bound * response_mask).sum() / response_mask.sum() if per_token else at_bound.mean()
    if cfg.variant in ("alol_ref_free", "alol_kl"):
        clipfrac = torch.zeros(())
    return loss.mean(), {"log_ratio": log_ratio.sum(-1).mean().item(), "clipfrac": clipfrac.item()}


# ----------------------------------------------------------------------------- trainer
class ALoLTrainer:
    """trainer = ALoLTrainer(cfg, policy, tokenizer, reward_model, ref_policy); trainer.prepare(prompts, completions);
    trainer.train() -> final stats. `policy` is trained in place from where it is (the start policy);
    `ref_policy` (frozen, the round's reference) is read only by alol_kl.

    prepare() does all the no-gradient work once: rewards of the stored rows, the value head fitted on
    start-policy samples, advantages, and the positive rows padded into one batch with the start
    policy's (and for alol_kl the reference's) token log-probs."""

    def __init__(self, config: ALoLConfig, policy, tokenizer, reward_model, ref_policy=None, reward_tokenizer=None,
                 on_step: Callable[[int, dict], None] | None = None):
        if config.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {config.variant!r}")
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs both an EOS and a pad token")
        if config.variant == "alol_kl" and ref_policy is None:
            raise ValueError("alol_kl needs the reference policy its penalty is measured against")
        self.config, self.tokenizer, self.on_step = config, tokenizer, on_step
        self.reward_tokenizer = reward_tokenizer or tokenizer
        self.device = next(policy.parameters()).device
        self.ref_policy = ref_policy.to(self.device).eval().requires_grad_(False) if ref_policy is not None else None
        self.reward_model = reward_model.to(self.device).eval().requires_grad_(False)
        if reward_model.config.pad_token_id is None:
            reward_model.config.pad_token_id = self.reward_tokenizer.pad_token_id
        disable_dropout(policy)
        self.policy = make_trainable(policy)
        self.optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=config.learning_rate)
        self.max_length = context_length(policy)
        self.rows: Batch | None = None  # (N+, T) the positive-advantage rows, padded once
        self.advantages = torch.zeros(0)  # (N+,)
        self.start_logp = torch.zeros(0)  # (N+, T-1)
        self.ref_logp: torch.Tensor | None = None  # (N+, T-1), alol_kl only
        self.data_stats: dict = {}

    @torch.no_grad()
    def _logprobs_of(self, model, rows: Batch) -> torch.Tensor:
        """(N, T-1) token log-probs of every row under `model`, in chunks of forward_batch_size rows."""
        N, T1 = rows.response_mask.shape
        out = torch.zeros(N, T1, device=self.device)
        was_training = model.training
        model.eval()
        for i in range(0, N, self.config.forward_batch_size):
            part = list(range(i, min(i + self.config.forward_batch_size, N)))
            logp = token_logprobs(model, select_rows(rows, part))  # (b, t-1)
            out[i : i + len(part), : logp.shape[1]] = logp
        model.train(was_training)
        return out

    @torch.no_grad()
    def prepare(self, prompts: list[str], completions: list[str]) -> dict:
        """Rewards, value head, advantages and start (and reference) log-probs of the stored rows."""
        cfg, tok = self.config, self.tokenizer
        if not prompts:
            raise ValueError("no stored continuations to learn from")
        torch.manual_seed(cfg.seed)
        reward = rewards(self.reward_model, self.reward_tokenizer, prompts, completions, cfg.reward_batch_size).cpu()
        # V(x): the start policy's own samples on the same prompts, scored by the same reward model
        unique = sorted(set(prompts))
        samples = generate_continuations(self.policy, tok, unique, cfg.value_samples_per_prompt,
                                         cfg.max_new_tokens, temperature=cfg.value_temperature,
                                         batch_size=cfg.forward_batch_size)
        sample_prompts = [p for p, row in zip(unique, samples) for _ in row]
        sample_reward = rewards(self.reward_model, self.reward_tokenizer, sample_prompts, [c for row in samples for c in row],
                                cfg.reward_batch_size).cpu()
        states = prompt_states(self.policy, tok, unique, cfg.forward_batch_size).cpu()  # (U, H)
        index = {p: i for i, p in enumerate(unique)}
        with torch.enable_grad():  # prepare() is no-grad, except for fitting the value head
            head, value_stats = fit_value_head(states[[index[p] for p in sample_prompts]], sample_reward, cfg)
        value = value_of(head, states)[[index[p] for p in prompts]]  # (N,)
        advantage = reward - value  # (N,)
        positive = (advantage > 0).nonzero().squeeze(-1).tolist()
        if not positive:
            raise ValueError("no stored continuation scores above the start policy's value: nothing to learn from")
        self.rows = collate(tokenize_rows(tok, [prompts[i] for i in positive], [completions[i] for i in positive],
                                          cfg.max_new_tokens, self.max_length), tok.pad_token_id, self.device)
        self.advantages = advantage[positive]
        self.positive_indices = positive
        self.start_logp = self._logprobs_of(self.policy, self.rows)  # the denominator of every importance weight
        if cfg.variant == "alol_kl":
            self.ref_logp = self._logprobs_of(self.ref_policy, self.rows)
        self.data_stats = {"rows": len(prompts), "positive_rows": len(positive), "mean_reward": reward.mean().item(),
                           "mean_value": value.mean().item(), "mean_positive_advantage": self.advantages.mean().item(),
                           **value_stats}
        return self.data_stats

    def _draw(self, rng: torch.Generator) -> list[int]:
        weights = self.advantages if self.config.priority_sampling else torch.ones_like(self.advantages)
        return torch.multinomial(weights, self.config.batch_size, replacement=True, generator=rng).tolist()

    def step(self, picked: list[int]) -> dict:
        cfg, t0 = self.config, time.time()
        batch = select_rows(self.rows, picked)  # (B, T)
        T1 = batch.response_mask.shape[1]
        logp = token_logprobs(self.policy, batch)  # (B, T-1)
        ref_logp = self.ref_logp[picked, :T1] if self.ref_logp is not None else None
        loss, stats = alol_loss(cfg, logp, self.start_logp[picked, :T1], self.advantages[picked].to(self.device),
                                batch.response_mask, ref_logp)
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        return {"loss": loss.item(), **stats, "grad_norm": float(grad_norm), "time_s": time.time() - t0}

    @property
    def total_steps(self) -> int:
        """cfg.steps, else cfg.epochs passes over the prepared positive-advantage rows. Few stored rows and
        many steps overfit them: in benchmarks/algorithms.py, 200 steps on ~60 rows drove the KL to the
        reference past 18 nats and distinct-2 down."""
        cfg = self.config
        return cfg.steps or max(1, math.ceil(cfg.epochs * len(self.advantages) / cfg.batch_size))

    def train(self) -> dict:
        """total_steps gradient steps over the prepared rows; returns the last step's stats plus the data stats."""
        if self.rows is None:
            raise RuntimeError("call prepare() with the stored continuations first")
        rng = torch.Generator().manual_seed(self.config.seed)
        self.policy.train()
        stats: dict = {}
        for step in range(1, self.total_steps + 1):
            stats = self.step(self._draw(rng))
            if self.on_step is not None:
                self.on_step(step, stats)
        self.policy.eval()
        return {**self.data_stats, **stats}
