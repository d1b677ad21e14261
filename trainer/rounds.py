"""One training round, phase by phase, each phase's result recorded on the round before the next.

Round 0 (the first, started as soon as there are prompts, no judgements needed):
    base policy    pretrain offline or load a hub model -> policy version "base" (then SFT when enabled)
    generate       K continuations per active prompt from the base, stored under the base version
    queue          BWS tuples mixing them with the best and a random earlier (imported) continuation
Every later round (started once enough judgements arrived on the newest round's tuples):
    reward model   BWS judgements -> implied pairs -> TRL RewardTrainer, warm-started from the previous
                   reward model on the new pairs plus a sample of older ones
    policy         the round's algorithm (cfg.algorithm unless the round names one) from the newest
                   policy, leashed to the REFERENCE (the base, or the SFT baseline) in every round, so
                   drift from the base cannot add up over rounds:
                     ppo   our PPO (trainer/ppo.py), sampling fresh text scored by the reward model
                     alol  A-LoL (trainer/alol.py) on every stored continuation of the active prompts
                     dpo   TRL's DPOTrainer on the judgements' implied pairs
    generate       K continuations per active prompt from the new policy, and
    queue          BWS tuples mixing them with the base's, the best-scoring earlier ones and a random
                   earlier one, per prompt; the batch becomes the newest round's (served first)
    metrics        the new version's automatic metrics, and every version rescored by the new reward model

A killed trainer leaves the round "running" with the ids of the phases it finished; the next start
resumes from the first unfinished phase. Versions become visible only once completely written
(model_store.save_version), and generate + queue commit in one transaction, so nothing is doubled.
Each finished phase's wall time is logged (training_log phase "timing").

A bake-off round (algorithm "bakeoff") trains one policy per algorithm of its plan from the same
starting policy, judgements and reward model, writes each one's stories, queues ONE batch of BWS tuples
mixing them with the base's, and opens a blind evaluation campaign over the base and the new versions.
"""

import os
import random
import resource
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
from app.models import BwsJudgement, Continuation, ModelVersion, Prompt, Task, TrainingLog, TrainingRound, utcnow
from app.services.scoring import BwsAnnotation, ItemTally, counting_tallies
from app.services.evaluation import CampaignCreate, create_campaign
from app.services.gold import usable
from app.services.round_numbers import round_number
from app.services.story_text import completion_text
from app.services.tasks import build_bws_batch, mark_newest_round_batch
from app.services.training import BAKEOFF, ROUND_ALGORITHMS, judgement_counts
from trainer import lora, model_store, pretrained
from trainer.auto_metrics import compute_for_version, score_versions
from trainer.config import TrainerSettings
from trainer.data import load_pairs
from trainer.dpo import train_dpo
from trainer.generate import generate_stories
from trainer.alol import ALoLTrainer
from trainer.ppo import PPOTrainer
from trainer.reward_model import train_reward_model


class RoundReporter:
    """Writes phase / step / total to the round row (at most once a second), metrics to the log, and
    each phase's wall time (a "timing" log row) when the next phase starts or the round closes."""

    def __init__(self, database: Database, round_id: int, echo: bool = True):
        self.database, self.round_id, self.echo = database, round_id, echo
        self.number = number_of(database, round_id)  # what people see: round 0 is the base's
        self._last_write, self._bar = 0.0, None
        self._phase: tuple[str, float] | None = None  # (name, monotonic start)

    def _finish_phase(self) -> None:
        if self._phase is not None:
            name, started = self._phase
            with self.database.write() as db:
                db.add(TrainingLog(round_id=self.round_id, phase="timing", step=0,
                                   metrics={"phase": name, "seconds": time.monotonic() - started}))
            self._phase = None

    def phase(self, name: str, total: int = 0) -> None:
        self._finish_phase()
        self._phase = (name, time.monotonic())
        with self.database.write() as db:
            r = db.get(TrainingRound, self.round_id)
            r.phase, r.step, r.total_steps, r.phase_started_at = name, 0, total, utcnow()
        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(total=total or None, desc=f"round {self.number}: {name}", disable=not self.echo)
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
            tqdm.write(f"round {self.number}: " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))

    def close(self, finished: bool = False) -> None:
        """Ends the round's reporting; the open phase's time is logged only when it really finished."""
        if finished:
            self._finish_phase()
        if self._bar is not None:
            self._bar.close()


def number_of(database: Database, round_id: int) -> int:
    with database.read() as db:
        return round_number(db, round_id)


def _set(database: Database, round_id: int, **values) -> None:
    with database.write() as db:
        r = db.get(TrainingRound, round_id)
        for key, value in values.items():
            setattr(r, key, value)


BASE_ALGORITHMS = ("pretrain", "hub", "sft")  # the policies a round's KL leash may be tied to


def latest_policy(database: Database) -> ModelVersion | None:
    """The newest trained policy: where the next round's PPO starts."""
    with database.read() as db:
        return db.scalar(select(ModelVersion).where(ModelVersion.kind == "policy", ModelVersion.path.is_not(None))
                         .order_by(ModelVersion.id.desc()).limit(1))


def reference_policy(database: Database) -> ModelVersion | None:
    """The KL reference of every round: the base policy, or the supervised baseline made from it."""
    with database.read() as db:
        return db.scalar(select(ModelVersion).where(ModelVersion.kind == "policy", ModelVersion.path.is_not(None),
                                                    ModelVersion.algorithm.in_(BASE_ALGORITHMS))
                         .order_by(ModelVersion.id.desc()).limit(1))


def make_base_policy(database: Database, settings: Settings, cfg: TrainerSettings, reporter: RoundReporter) -> int:
    """Round 0: the base policy, bootstrapped offline or loaded by hub id/folder (then SFT when on).
    Returns the reference version's id."""
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
        return sft_phase(database, settings, cfg, base_id, model, tokenizer, reporter)
    return base_id


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


def _previous_reward(database: Database, round_id: int, backbone: str) -> ModelVersion | None:
    """The newest reward model of the same backbone: the one a warm start continues."""
    with database.read() as db:
        rewards = db.scalars(select(ModelVersion).where(ModelVersion.kind == "reward", ModelVersion.path.is_not(None),
                                                        ModelVersion.name != f"reward-r{round_number(db, round_id)}")
                             .order_by(ModelVersion.id.desc()))
        return next((r for r in rewards if (r.settings or {}).get("backbone", "") == backbone), None)


def reward_backbone(settings: Settings, cfg: TrainerSettings, reference: ModelVersion) -> str:
    """Where a reward model starts cold: a folder or hub id (see RewardModelConfig.backbone)."""
    if cfg.reward.backbone == "":
        return str(model_store.version_dir(settings.model_store, reference.path))
    return pretrained.model_folder(cfg.reward.backbone, settings.data_dir / "corpus")


def train_reward_phase(database, settings, cfg, round_id, reference: ModelVersion, reporter) -> int:
    """Warm start (cfg.reward.warm_start and a previous reward model of the same backbone exists): from
    it, on the pairs of judgements new since it plus old_pairs_per_new older pairs per new pair. Cold: from
    the backbone (the reference policy's network unless set), on every training pair. Held-out accuracy:
    always on the held-out judgements of all time (a split fixed per judgement)."""
    previous = _previous_reward(database, round_id, cfg.reward.backbone) if cfg.reward.warm_start else None
    since = int(previous.metrics.get("last_judgement_id", 0)) if previous is not None else 0
    pairs = load_pairs(database, cfg.reward.held_out_fraction, seed=cfg.seed, since_judgement_id=since)
    if previous is not None and len(pairs.new):
        train = pairs.train_sample(cfg.reward.old_pairs_per_new, seed=cfg.seed + round_id)
        start, parent_id = str(model_store.version_dir(settings.model_store, previous.path)), previous.id
    else:
        train = pairs.train_sample(None, seed=cfg.seed + round_id)
        start, parent_id = reward_backbone(settings, cfg, reference), reference.id if not cfg.reward.backbone else None
        previous = None
    if len(train) == 0:
        raise RuntimeError("no BWS judgements yet: annotate some tuples before training")
    reporter.phase("reward model")
    tokenizer = model_store.load_tokenizer(start)  # the backbone's own (saved with every reward model)
    with tempfile.TemporaryDirectory() as work:
        model, metrics = train_reward_model(start, tokenizer, train, pairs.held_out, cfg.reward, Path(work),
                                            reporter.step)
    metrics = {**metrics, "new_pairs": len(pairs.new), "warm_start_from": previous.id if previous else None,
               "judgements": pairs.judgements, "last_judgement_id": pairs.last_judgement_id}
    reporter.log({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    version_id = model_store.save_version(
        database, settings.model_store, kind="reward", name=f"reward-r{reporter.number}", parent_id=parent_id,
        algorithm="reward", settings=asdict(cfg.reward), metrics=metrics, model=model, tokenizer=tokenizer,
    )
    _set(database, round_id, reward_version_id=version_id, judgements_used=pairs.judgements)
    return version_id


def _peak_memory_mb(device) -> float:
    """Peak memory so far: the accelerator's since the last reset, else this process's resident set."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def policy_phase(database, settings, cfg, round_id, algorithm: str, policy: ModelVersion, reference: ModelVersion,
                 reward_version_id: int, reporter, name: str | None = None) -> int:
    """Trains a new policy version from `policy` (the newest) with `algorithm`, leashed to `reference` (the
    base): the reward model scores PPO's samples and A-LoL's stored rows; DPO reads the judgements'
    pairs directly. Records its settings, final metrics and the compute it took (wall time, peak memory)."""
    device = model_store.resolve_device(None)
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    started = time.monotonic()
    model, ref_model, tokenizer = _policy_to_train(database, settings, cfg, policy, reference, device)
    common = {"reward_version_id": reward_version_id, "reference_version_id": reference.id,
              "policy_training": cfg.policy_training}
    if cfg.policy_training == "lora":
        common["adapter_of"] = reference.id  # saved as its adapter only; model_store.load_version rebuilds it
    if algorithm == "ppo":
        trained, used, stats = _train_ppo(database, cfg, round_id, model, ref_model, tokenizer, reward_version_id,
                                          settings, device, reporter)
    elif algorithm == "alol":
        trained, used, stats = _train_alol(database, cfg, model, ref_model, tokenizer, reward_version_id, settings,
                                           device, reporter)
    elif algorithm == "dpo":
        trained, used, stats = _train_dpo(database, cfg, model, ref_model, tokenizer, reporter)
    else:
        raise ValueError(f"unknown round algorithm {algorithm!r}; one of {', '.join(ROUND_ALGORITHMS)}")
    compute = {"seconds": time.monotonic() - started, "peak_memory_mb": _peak_memory_mb(device), "device": str(device)}
    return model_store.save_version(
        database, settings.model_store, kind="policy", name=name or f"policy-r{reporter.number}", parent_id=policy.id,
        algorithm=algorithm, settings={**used, **common},
        metrics={**{k: v for k, v in stats.items() if isinstance(v, (int, float))}, "compute": compute},
        model=trained, tokenizer=tokenizer,
    )


def _policy_to_train(database, settings, cfg, policy: ModelVersion, reference: ModelVersion, device):
    """(trainable policy, reference, tokenizer). LoRA (cfg.policy_training "lora"): the reference's network
    under the newest adapter (a new one in the first round), and the reference is that network with the
    adapter off. Full fine-tuning: two whole models."""
    if cfg.policy_training == "full":
        _, model, tokenizer = model_store.load_version(database, settings.model_store, policy.id, device)
        _, ref_model, _ = model_store.load_version(database, settings.model_store, reference.id, device)
        return model, ref_model, tokenizer
    if policy.id == reference.id:
        _, base, tokenizer = model_store.load_version(database, settings.model_store, reference.id, device)
        model = lora.new_adapter(base, cfg.lora)
    elif (policy.settings or {}).get("adapter_of") == reference.id:
        _, model, tokenizer = model_store.load_version(database, settings.model_store, policy.id, device, trainable=True)
    else:
        raise RuntimeError(f"the newest policy {policy.name!r} is not a LoRA adapter on the reference "
                           f"{reference.name!r} (it was fine-tuned in full): set STORYLOOP_TRAINER_POLICY_TRAINING=full "
                           "to go on training it that way")
    return model, lora.AdapterOff(model), tokenizer


def _train_ppo(database, cfg, round_id, model, ref_model, tokenizer, reward_version_id, settings, device, reporter):
    _, reward_model, reward_tokenizer = model_store.load_version(database, settings.model_store, reward_version_id, device)
    prompts = [text for _, text in _active_prompts(database, cfg)]
    if not prompts:
        raise RuntimeError("no active prompts to train on")
    reporter.phase("ppo", cfg.ppo_steps)
    trainer = PPOTrainer(cfg.ppo, model.train(), tokenizer, reward_model, reward_tokenizer=reward_tokenizer,
                         ref_policy=ref_model, on_step=lambda step, stats: reporter.step(step, cfg.ppo_steps, stats))
    rng, stats = random.Random(cfg.seed + round_id), {}
    for _ in range(cfg.ppo_steps):
        stats = trainer.step([rng.choice(prompts) for _ in range(cfg.ppo.batch_size)])
    return trainer.policy, {"ppo": asdict(cfg.ppo), "steps": cfg.ppo_steps}, stats


def stored_rows(database: Database, cfg: TrainerSettings) -> tuple[list[str], list[str]]:
    """(prompts, completions) of every stored continuation of the active prompts, imported and generated."""
    prompt_ids = dict(_active_prompts(database, cfg))
    with database.read() as db:
        rows = db.execute(select(Continuation.prompt_id, Continuation.text)
                          .where(Continuation.prompt_id.in_(list(prompt_ids))).order_by(Continuation.id)).all()
    rows = [(prompt_ids[p], completion_text(t)) for p, t in rows if t.strip()]
    return [p for p, _ in rows], [c for _, c in rows]


def _train_alol(database, cfg, model, ref_model, tokenizer, reward_version_id, settings, device, reporter):
    _, reward_model, reward_tokenizer = model_store.load_version(database, settings.model_store, reward_version_id, device)
    prompts, completions = stored_rows(database, cfg)
    reporter.phase("alol")
    trainer = ALoLTrainer(cfg.alol, model, tokenizer, reward_model, ref_policy=ref_model,
                          reward_tokenizer=reward_tokenizer, on_step=lambda step, stats: reporter.step(step, trainer.total_steps, stats))
    reporter.log({k: float(v) for k, v in trainer.prepare(prompts, completions).items()})
    stats = trainer.train()
    return trainer.policy, {"alol": asdict(cfg.alol)}, stats


def _train_dpo(database, cfg, model, ref_model, tokenizer, reporter):
    pairs = load_pairs(database, cfg.reward.held_out_fraction, seed=cfg.seed).train_sample(None, seed=cfg.seed)
    reporter.phase("dpo")
    with tempfile.TemporaryDirectory() as work:
        trained, stats = train_dpo(model, ref_model, tokenizer, pairs, cfg.dpo, Path(work), reporter.step)
    return trained, {"dpo": asdict(cfg.dpo)}, stats


def _bws_tallies(db) -> dict[int, ItemTally]:
    """Counting score, appearances, best and worst of every judged continuation."""
    rows = db.execute(select(BwsJudgement.id, BwsJudgement.shown_order, BwsJudgement.best_id, BwsJudgement.worst_id)
                      .where(usable(BwsJudgement))).all()
    return counting_tallies(BwsAnnotation(j.id, tuple(j.shown_order), j.best_id, j.worst_id) for j in rows)


def compose_tuples(candidates: list[tuple[int, int]], new_ids: list[int], base_version_id: int,
                   tallies: dict[int, ItemTally], gen, rng: random.Random) -> list[int]:
    """The items of one prompt's tuples in a round: the new version's continuations, plus up to
    gen.base_per_prompt of the base's, gen.best_per_prompt of the best-scoring earlier ones (BWS
    counting score, judged ones only, imported sources included) and gen.random_per_prompt random
    earlier ones. `candidates`: (continuation id, version id) of the prompt's earlier continuations."""
    new = set(new_ids)
    earlier = [(c, v) for c, v in candidates if c not in new]
    base = [c for c, v in earlier if v == base_version_id]
    rng.shuffle(base)
    picked = base[: gen.base_per_prompt]
    judged = sorted((c for c, _ in earlier if c in tallies and c not in picked),
                    key=lambda c: (-tallies[c].score, -tallies[c].appearances, c))
    picked += judged[: gen.best_per_prompt]
    rest = [c for c, _ in earlier if c not in picked]
    picked += rng.sample(rest, min(gen.random_per_prompt, len(rest)))
    return list(new_ids) + picked


def _generate(database, settings, cfg, version_id: int, reporter, phase: str = "generate"):
    """K stories per active prompt from a version: (version, [(prompt id, text)], stories per prompt)."""
    gen = cfg.generation
    device = model_store.resolve_device(None)
    version, model, tokenizer = model_store.load_version(database, settings.model_store, version_id, device)
    prompts = _active_prompts(database, cfg)
    reporter.phase(phase, len(prompts))
    stories = []
    for i in range(0, len(prompts), gen.batch_size):
        chunk = prompts[i : i + gen.batch_size]
        stories += generate_stories(model, tokenizer, [t for _, t in chunk], gen.continuations_per_prompt,
                                    gen.max_new_tokens, gen.temperature, gen.top_p, gen.top_k, gen.batch_size,
                                    min_new_tokens=gen.min_new_tokens)
        reporter.step(min(i + gen.batch_size, len(prompts)), len(prompts))
    return version, prompts, stories


def _store_stories(db, cfg, version_id: int, prompts, stories) -> dict[int, list[int]]:
    """Stores a version's stories; returns the new continuation ids per prompt id."""
    gen = cfg.generation
    settings_used = {k: getattr(gen, k) for k in ("max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k")}
    ids: dict[int, list[int]] = {}
    for (prompt_id, _), written in zip(prompts, stories):
        new = [Continuation(prompt_id=prompt_id, model_version_id=version_id, text=s.text,
                            generation_settings={**settings_used, "ended": s.ended}) for s in written if s.text]
        db.add_all(new)
        db.flush()
        ids[prompt_id] = [c.id for c in new]
    return ids


def _earlier_candidates(db, prompt_ids) -> dict[int, list[tuple[int, int]]]:
    """(continuation id, version id) of each prompt's stored continuations, oldest first."""
    candidates: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for cid, pid, vid in db.execute(select(Continuation.id, Continuation.prompt_id, Continuation.model_version_id)
                                    .where(Continuation.prompt_id.in_(prompt_ids)).order_by(Continuation.id)):
        candidates[pid].append((cid, vid))
    return candidates


def generate_and_queue_phase(database, settings, cfg, round_id, policy_version_id: int, base_version_id: int,
                             reporter) -> int:
    """K stories per active prompt from `policy_version_id`, stored, then queued in tuples with the
    base's, the best and a random earlier continuation of the same prompt (compose_tuples); the batch
    becomes the newest round's, which annotators are served first."""
    version, prompts, stories = _generate(database, settings, cfg, policy_version_id, reporter)
    reporter.phase("queue")
    rng = random.Random(cfg.seed + round_id)
    with database.write() as db:
        tallies = _bws_tallies(db)
        candidates = _earlier_candidates(db, [p for p, _ in prompts])
        new_ids = _store_stories(db, cfg, policy_version_id, prompts, stories)
        ids_by_prompt = {prompt_id: compose_tuples(candidates[prompt_id], new_ids[prompt_id], base_version_id,
                                                   tallies, cfg.generation, rng) for prompt_id, _ in prompts}
        batch = build_bws_batch(db, f"round {reporter.number}: {version.name} vs base, best and earlier", ids_by_prompt,
                                seed=cfg.seed + round_id, required=settings.annotations_per_tuple,
                                k=settings.tuple_size, factor=settings.design_factor)
        mark_newest_round_batch(db, batch.id)
        r = db.get(TrainingRound, round_id)
        r.batch_id = batch.id
        return batch.id


def metrics_phase(database, settings, cfg, policy_id: int, reference_id: int, reward_id: int | None, reporter) -> None:
    """The new version's automatic metrics (reward, distinct-n, lengths, end-of-text rate, perplexity and
    KL under the reference, copy similarity to its parent), and every version rescored by the newest
    reward model, so the models page compares versions on one scale."""
    reporter.phase("metrics")
    device = model_store.resolve_device(None)
    with database.read() as db:
        parent_id = db.get(ModelVersion, policy_id).parent_id
    auto = compute_for_version(database, settings.model_store, policy_id, reward_version_id=reward_id,
                               reference_version_id=reference_id, previous_version_id=parent_id, device=device)
    with database.write() as db:
        version = db.get(ModelVersion, policy_id)
        version.metrics = {**version.metrics, "auto": auto}  # a new dict, so the JSON column is saved
    if reward_id is not None:
        prompt_ids = [p for p, _ in _active_prompts(database, cfg)]
        scores = score_versions(database, settings.model_store, reward_id, prompt_ids, device=device)
        with database.write() as db:
            reward = db.get(ModelVersion, reward_id)
            reward.metrics = {**reward.metrics, "version_scores": scores}
    reporter.log({k: v for k, v in auto.items() if isinstance(v, float)})


def _has_stories(database: Database, version_id: int) -> bool:
    with database.read() as db:
        return db.scalar(select(Continuation.id).where(Continuation.model_version_id == version_id).limit(1)) is not None


def set_cpu_threads(cfg: TrainerSettings) -> None:
    threads = cfg.cpu_threads or max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(threads)


def _round_plan(database: Database, round_id: int) -> tuple[str | None, dict | None]:
    with database.read() as db:
        r = db.get(TrainingRound, round_id)
        return r.algorithm, (dict(r.bakeoff) if r.bakeoff is not None else None)


def bakeoff_phases(database, settings, cfg, round_id, reference: ModelVersion, reward_id: int | None, reporter) -> None:
    """Trains one policy per algorithm of the plan (same start, judgements and reward model; each one's
    compute recorded on its version), writes their stories, queues one BWS batch mixing them with the
    base's and opens a blind evaluation campaign over the base and the new versions. Resumable: the plan
    (round.bakeoff) records each version as it is saved."""
    _, plan = _round_plan(database, round_id)
    if "start_policy_id" not in plan:  # every algorithm starts from the policy that was newest at first
        plan = {**plan, "start_policy_id": latest_policy(database).id}
        _set(database, round_id, bakeoff=plan)
    with database.read() as db:
        start = db.get(ModelVersion, plan["start_policy_id"])
    if reward_id is None:
        reward_id = train_reward_phase(database, settings, cfg, round_id, reference, reporter)
    policies: dict[str, int] = dict(plan.get("policies", {}))
    for algorithm in plan["algorithms"]:
        if algorithm not in policies:
            policies[algorithm] = policy_phase(database, settings, cfg, round_id, algorithm, start, reference,
                                               reward_id, reporter, name=f"{algorithm}-r{reporter.number}")
            plan = {**plan, "policies": policies}
            _set(database, round_id, bakeoff=plan)
    written = [_generate(database, settings, cfg, policies[a], reporter, phase=f"generate {a}") for a in plan["algorithms"]]
    reporter.phase("queue")
    gen, rng = cfg.generation, random.Random(cfg.seed + round_id)
    with database.write() as db:
        prompt_ids = [p for p, _ in written[0][1]]
        candidates = _earlier_candidates(db, prompt_ids)
        ids_by_prompt: dict[int, list[int]] = defaultdict(list)
        for version, prompts, stories in written:
            for prompt_id, ids in _store_stories(db, cfg, version.id, prompts, stories).items():
                ids_by_prompt[prompt_id] += ids
        for prompt_id in prompt_ids:  # and the base's, so every algorithm meets it in the same tuples
            base = [c for c, v in candidates[prompt_id] if v == reference.id]
            ids_by_prompt[prompt_id] += rng.sample(base, min(gen.base_per_prompt, len(base)))
        names = ", ".join(plan["algorithms"])
        batch = build_bws_batch(db, f"round {reporter.number}: bake-off of {names} and the base", dict(ids_by_prompt),
                                seed=cfg.seed + round_id, required=settings.annotations_per_tuple,
                                k=settings.tuple_size, factor=settings.design_factor)
        mark_newest_round_batch(db, batch.id)
        campaign = create_campaign(db, CampaignCreate(
            name=f"Bake-off round {reporter.number}: {names} vs base",
            model_version_ids=[reference.id] + [policies[a] for a in plan["algorithms"]],
            prompt_ids=prompt_ids, required=plan.get("required", 2), seed=cfg.seed + round_id))
        r = db.get(TrainingRound, round_id)
        r.batch_id, r.bakeoff = batch.id, {**plan, "campaign_id": campaign.id}
    for algorithm in plan["algorithms"]:
        metrics_phase(database, settings, cfg, policies[algorithm], reference.id, reward_id, reporter)


def run_round(database: Database, settings: Settings, cfg: TrainerSettings, round_id: int, echo: bool = True) -> None:
    """Runs (or resumes) a round to the end. Raises on failure; the caller marks the round failed."""
    set_cpu_threads(cfg)
    torch.manual_seed(cfg.seed + round_id)
    reporter = RoundReporter(database, round_id, echo)
    _set(database, round_id, status="running", started_at=utcnow(), error=None)
    finished = False
    try:
        with database.read() as db:
            r = db.get(TrainingRound, round_id)
            reward_id, policy_id, batch_id = r.reward_version_id, r.policy_version_id, r.batch_id
        algorithm, _ = _round_plan(database, round_id)
        reference = reference_policy(database)
        if algorithm == BAKEOFF:
            if reference is None or not _has_stories(database, reference.id):
                raise RuntimeError("a bake-off needs a base policy with judged stories: run round 0 and annotate first")
            if batch_id is None:
                bakeoff_phases(database, settings, cfg, round_id, reference, reward_id, reporter)
            _set(database, round_id, status="done", phase="done", finished_at=utcnow())
            finished = True
            return
        if reward_id is None and (reference is None or policy_id == reference.id or not _has_stories(database, reference.id)):
            # Round 0: the base writes its own stories, which enter the tuples (generate + queue are
            # one transaction, so a base without stories has no tuples either).
            if reference is None:
                make_base_policy(database, settings, cfg, reporter)
                reference = reference_policy(database)
            policy_id = reference.id
            _set(database, round_id, policy_version_id=policy_id)
        elif policy_id is None:
            algorithm = algorithm or cfg.algorithm
            _set(database, round_id, algorithm=algorithm)  # what this round trains with, shown with it
            start = latest_policy(database)  # every round continues from the newest policy
            if reward_id is None:
                reward_id = train_reward_phase(database, settings, cfg, round_id, reference, reporter)
            policy_id = policy_phase(database, settings, cfg, round_id, algorithm, start, reference, reward_id, reporter)
            _set(database, round_id, policy_version_id=policy_id)
        if batch_id is None:
            generate_and_queue_phase(database, settings, cfg, round_id, policy_id, reference.id, reporter)
        metrics_phase(database, settings, cfg, policy_id, reference.id, reward_id, reporter)
        _set(database, round_id, status="done", phase="done", finished_at=utcnow())
        finished = True
    finally:
        reporter.close(finished)


def judgements_since_last_round(database: Database) -> tuple[int, int]:
    """(judgements now, judgements the last finished round used)."""
    with database.read() as db:
        return judgement_counts(db)


def newest_round_judgements(database: Database) -> int | None:
    """Judgements so far on the tuples of the newest finished round (None: no round has queued any)."""
    with database.read() as db:
        batch_id = db.scalar(select(TrainingRound.batch_id).where(TrainingRound.status == "done",
                                                                  TrainingRound.batch_id.is_not(None))
                             .order_by(TrainingRound.id.desc()).limit(1))
        if batch_id is None:
            return None
        return db.scalar(select(func.count()).select_from(BwsJudgement).join(Task, Task.id == BwsJudgement.task_id)
                         .where(Task.batch_id == batch_id, usable(BwsJudgement))) or 0
