"""One training round, phase by phase, each phase's result recorded on the round before the next.

    base policy  (first round only) pretrain offline or load a hub model -> policy version "base"
    reward       BWS judgements -> implied pairs -> TRL RewardTrainer  -> reward version
    ppo          our PPO against that reward model                     -> policy version, parent = previous
    generate     K continuations per active prompt from the new policy, and
    queue        BWS tuples mixing them with earlier versions' continuations of the same prompts

A killed trainer leaves the round "running" with the ids of the phases it finished; the next start
resumes from the first unfinished phase. Versions become visible only once completely written
(model_store.save_version), and generate + queue commit in one transaction, so nothing is doubled.
"""

import os
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch
from sqlalchemy import func, select
from tqdm import tqdm

from app.config import Settings
from app.db import Database
from app.models import BwsJudgement, Continuation, ModelVersion, Prompt, TrainingLog, TrainingRound, utcnow
from app.services.story_text import completion_text
from app.services.tasks import build_bws_batch
from trainer import model_store
from trainer.auto_metrics import compute_for_version
from trainer.config import TrainerSettings
from trainer.data import load_pairs
from trainer.generate import generate_continuations
from trainer.ppo import PPOTrainer
from trainer.reward_model import train_reward_model


class RoundReporter:
    """Writes phase / step / total to the round row (at most once a second) and metrics to the log."""

    def __init__(self, database: Database, round_id: int, echo: bool = True):
        self.database, self.round_id, self.echo = database, round_id, echo
        self._last_write, self._bar = 0.0, None

    def phase(self, name: str, total: int = 0) -> None:
        with self.database.write() as db:
            r = db.get(TrainingRound, self.round_id)
            r.phase, r.step, r.total_steps, r.phase_started_at = name, 0, total, utcnow()
        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(total=total or None, desc=f"round {self.round_id}: {name}", disable=not self.echo)
        self._last_write = 0.0

    def step(self, step: int, total: int, metrics: dict | None = None) -> None:
        if self._bar is not None:
            if total and self._bar.total != total:
                self._bar.total = total
            self._bar.update(step - self._bar.n)
            if metrics:
                self._bar.set_postfix({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
        now = time.monotonic()
        if not metrics and now - self._last_write < 1.0 and step < total:
            return
        self._last_write = now
        with self.database.write() as db:
            r = db.get(TrainingRound, self.round_id)
            r.step, r.total_steps = step, total or r.total_steps
            if metrics:
                db.add(TrainingLog(round_id=self.round_id, phase=r.phase, step=step, metrics=metrics))

    def log(self, metrics: dict) -> None:
        with self.database.write() as db:
            r = db.get(TrainingRound, self.round_id)
            db.add(TrainingLog(round_id=self.round_id, phase=r.phase, step=r.step, metrics=metrics))
        if self.echo:
            tqdm.write(f"round {self.round_id}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _set(database: Database, round_id: int, **values) -> None:
    with database.write() as db:
        r = db.get(TrainingRound, round_id)
        for key, value in values.items():
            setattr(r, key, value)


def latest_policy(database: Database) -> ModelVersion | None:
    with database.read() as db:
        return db.scalar(select(ModelVersion).where(ModelVersion.kind == "policy", ModelVersion.path.is_not(None))
                         .order_by(ModelVersion.id.desc()).limit(1))


def ensure_base_policy(database: Database, settings: Settings, cfg: TrainerSettings, reporter: RoundReporter) -> ModelVersion:
    """The newest policy, or (first round) the base policy: bootstrapped offline or loaded by hub id/folder."""
    policy = latest_policy(database)
    if policy is not None:
        return policy
    reporter.phase("base policy")
    base = model_store.BasePolicyConfig(base=cfg.base_policy, bootstrap_preset=cfg.bootstrap_preset,
                                        cache_dir=settings.data_dir / "corpus", device=model_store.resolve_device(None))
    model, tokenizer, metrics = model_store.resolve_base_policy_with_metrics(base, reporter.step)
    algorithm = "pretrain" if cfg.base_policy == model_store.BOOTSTRAP else "hub"
    name = f"base-{cfg.bootstrap_preset}" if algorithm == "pretrain" else f"base-{Path(cfg.base_policy).name}"
    base_id = model_store.save_version(database, settings.model_store, kind="policy", name=name, parent_id=None,
                                       algorithm=algorithm, settings={"base_policy": cfg.base_policy,
                                                                      "bootstrap_preset": cfg.bootstrap_preset},
                                       metrics=metrics, model=model, tokenizer=tokenizer)
    if cfg.sft_base:
        sft_phase(database, settings, cfg, base_id, model, tokenizer, reporter)
    return latest_policy(database)


def sft_phase(database, settings, cfg, base_id: int, model, tokenizer, reporter) -> int:
    """Supervised baseline: the base fine-tuned on every imported prompt -> continuation text."""
    from trainer.bootstrap import sft

    with database.read() as db:
        pairs = [(p, completion_text(c)) for p, c in db.execute(
            select(Prompt.text, Continuation.text).join(Prompt, Prompt.id == Continuation.prompt_id)
            .join(ModelVersion, ModelVersion.id == Continuation.model_version_id).where(ModelVersion.kind == "source"))]
    if not pairs:
        raise RuntimeError("sft_base is on but there are no imported continuations to fine-tune on")
    reporter.phase("sft")
    model, metrics = sft(model.train(), tokenizer, pairs, epochs=cfg.sft_epochs, seed=cfg.seed)
    return model_store.save_version(database, settings.model_store, kind="policy", name=f"sft-{base_id}",
                                    parent_id=base_id, algorithm="sft", settings={"epochs": cfg.sft_epochs,
                                                                                  "pairs": len(pairs)},
                                    metrics=metrics, model=model, tokenizer=tokenizer)


def _active_prompts(database: Database, cfg: TrainerSettings) -> list[tuple[int, str]]:
    with database.read() as db:
        query = select(Prompt.id, Prompt.text).where(Prompt.is_active).order_by(Prompt.id)
        if cfg.generation.max_prompts:
            query = query.limit(cfg.generation.max_prompts)
        return [tuple(row) for row in db.execute(query)]


def train_reward_phase(database, settings, cfg, round_id, policy: ModelVersion, reporter) -> int:
    train, held_out, used = load_pairs(database, cfg.reward.held_out_fraction, seed=cfg.seed + round_id)
    if len(train) == 0:
        raise RuntimeError("no BWS judgements yet: annotate some tuples before training")
    reporter.phase("reward model")
    policy_dir = model_store.version_dir(settings.model_store, policy.path)
    tokenizer = model_store.load_tokenizer(policy_dir)
    with tempfile.TemporaryDirectory() as work:
        model, metrics = train_reward_model(policy_dir, tokenizer, train, held_out, cfg.reward, Path(work), reporter.step)
    reporter.log({k: float(v) for k, v in metrics.items() if v is not None})
    version_id = model_store.save_version(
        database, settings.model_store, kind="reward", name=f"reward-r{round_id}", parent_id=policy.id,
        algorithm="reward", settings=asdict(cfg.reward), metrics={**metrics, "judgements": used},
        model=model, tokenizer=tokenizer,
    )
    _set(database, round_id, reward_version_id=version_id, judgements_used=used)
    return version_id


def ppo_phase(database, settings, cfg, round_id, policy: ModelVersion, reward_version_id: int, reporter) -> int:
    device = model_store.resolve_device(None)
    _, model, tokenizer = model_store.load_version(database, settings.model_store, policy.id, device)
    _, reward_model, _ = model_store.load_version(database, settings.model_store, reward_version_id, device)
    prompts = [text for _, text in _active_prompts(database, cfg)]
    if not prompts:
        raise RuntimeError("no active prompts to train on")
    reporter.phase("ppo", cfg.ppo_steps)
    trainer = PPOTrainer(cfg.ppo, model.train(), tokenizer, reward_model,
                         on_step=lambda step, stats: reporter.step(step, cfg.ppo_steps, stats))
    rng, stats = random.Random(cfg.seed + round_id), {}
    for _ in range(cfg.ppo_steps):
        stats = trainer.step([rng.choice(prompts) for _ in range(cfg.ppo.batch_size)])
    version_id = model_store.save_version(
        database, settings.model_store, kind="policy", name=f"policy-r{round_id}", parent_id=policy.id,
        algorithm="ppo", settings={"ppo": asdict(cfg.ppo), "steps": cfg.ppo_steps, "reward_version_id": reward_version_id},
        metrics={k: v for k, v in stats.items() if isinstance(v, (int, float))},
        model=trainer.policy, tokenizer=tokenizer,
    )
    _set(database, round_id, policy_version_id=version_id)
    return version_id


def _older_continuations(db, prompt_id: int, exclude_version: int, n: int, rng: random.Random) -> list[int]:
    """Up to n earlier continuations of a prompt, spread over as many versions as possible (round robin)."""
    by_version: dict[int, list[int]] = defaultdict(list)
    rows = db.execute(select(Continuation.model_version_id, Continuation.id)
                      .where(Continuation.prompt_id == prompt_id, Continuation.model_version_id != exclude_version)
                      .order_by(Continuation.id.desc()))
    for version_id, cid in rows:
        by_version[version_id].append(cid)
    for ids in by_version.values():
        rng.shuffle(ids)
    versions = sorted(by_version, reverse=True)  # newest versions first
    picked: list[int] = []
    while len(picked) < n and any(by_version.values()):
        for v in versions:
            if by_version[v] and len(picked) < n:
                picked.append(by_version[v].pop())
    return picked


def generate_and_queue_phase(database, settings, cfg, round_id, policy_version_id: int, reporter) -> int:
    gen = cfg.generation
    device = model_store.resolve_device(None)
    _, model, tokenizer = model_store.load_version(database, settings.model_store, policy_version_id, device)
    prompts = _active_prompts(database, cfg)
    reporter.phase("generate", len(prompts))
    texts: list[list[str]] = []
    for i in range(0, len(prompts), gen.batch_size):
        chunk = prompts[i : i + gen.batch_size]
        texts += generate_continuations(model, tokenizer, [t for _, t in chunk], gen.continuations_per_prompt,
                                        gen.max_new_tokens, gen.temperature, gen.top_p, gen.top_k, gen.batch_size)
        reporter.step(min(i + gen.batch_size, len(prompts)), len(prompts))
    reporter.phase("queue")
    rng = random.Random(cfg.seed + round_id)
    settings_used = {k: getattr(gen, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k")}
    with database.write() as db:
        ids_by_prompt: dict[int, list[int]] = {}
        for (prompt_id, _), continuations in zip(prompts, texts):
            new = [Continuation(prompt_id=prompt_id, model_version_id=policy_version_id, text=t.strip(),
                                generation_settings=settings_used) for t in continuations if t.strip()]
            db.add_all(new)
            db.flush()
            older = _older_continuations(db, prompt_id, policy_version_id, gen.older_per_prompt, rng)
            ids_by_prompt[prompt_id] = [c.id for c in new] + older
        batch = build_bws_batch(db, f"round {round_id}: policy-r{round_id} vs earlier", ids_by_prompt,
                                seed=cfg.seed + round_id, required=settings.annotations_per_tuple,
                                k=settings.tuple_size, factor=settings.design_factor)
        r = db.get(TrainingRound, round_id)
        r.batch_id = batch.id
        return batch.id


def metrics_phase(database, settings, policy_id: int, reward_id: int | None, reporter) -> None:
    """Automatic metrics of the new version's continuations (reward score, distinct-n, length, perplexity)."""
    reporter.phase("metrics")
    auto = compute_for_version(database, settings.model_store, policy_id, reward_version_id=reward_id,
                               device=model_store.resolve_device(None))
    with database.write() as db:
        version = db.get(ModelVersion, policy_id)
        version.metrics = {**version.metrics, "auto": auto}  # a new dict, so the JSON column is saved


def set_cpu_threads(cfg: TrainerSettings) -> None:
    threads = cfg.cpu_threads or max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(threads)


def run_round(database: Database, settings: Settings, cfg: TrainerSettings, round_id: int, echo: bool = True) -> None:
    """Runs (or resumes) a round to the end. Raises on failure; the caller marks the round failed."""
    set_cpu_threads(cfg)
    torch.manual_seed(cfg.seed + round_id)
    reporter = RoundReporter(database, round_id, echo)
    _set(database, round_id, status="running", started_at=utcnow(), error=None)
    try:
        with database.read() as db:
            r = db.get(TrainingRound, round_id)
            reward_id, policy_id, batch_id = r.reward_version_id, r.policy_version_id, r.batch_id
        if policy_id is None:
            parent = ensure_base_policy(database, settings, cfg, reporter)
            if reward_id is None:
                reward_id = train_reward_phase(database, settings, cfg, round_id, parent, reporter)
            policy_id = ppo_phase(database, settings, cfg, round_id, parent, reward_id, reporter)
        if batch_id is None:
            generate_and_queue_phase(database, settings, cfg, round_id, policy_id, reporter)
        metrics_phase(database, settings, policy_id, reward_id, reporter)
        _set(database, round_id, status="done", phase="done", finished_at=utcnow())
    finally:
        reporter.close()


def judgements_since_last_round(database: Database) -> tuple[int, int]:
    """(judgements now, judgements the last finished round used)."""
    with database.read() as db:
        now = db.scalar(select(func.count()).select_from(BwsJudgement)) or 0
        used = db.scalar(select(func.max(TrainingRound.judgements_used)).where(TrainingRound.status == "done")) or 0
    return now, used
