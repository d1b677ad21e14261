"""The closed loop with tiny models: judgements -> reward model -> PPO -> new stories -> new tuples.

Also: the hub-id path (a model saved to a local folder), the one-trainer lease, and a trainer killed
in the middle of a round.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.config import Settings
from app.db import Database
from app.migrate import upgrade_to_head
from app.models import BwsJudgement, Continuation, ModelVersion, Task, TrainingLog, TrainingRound
from app.simulate import SimulationConfig, run_simulation
from tests.conftest import PASSWORD, make_user
from tests.factories import judge_directly, seed_bws_batch
from tests.tiny_models import save_tiny_base

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny GPT-2 saved with save_pretrained: the same path a hub id takes, minus the download."""
    return save_tiny_base(tmp_path_factory.mktemp("tiny-base"))


def tiny_trainer_env(base: Path) -> dict[str, str]:
    return {
        "STORYLOOP_TRAINER_BASE_POLICY": str(base),
        "STORYLOOP_TRAINER_POLICY_TRAINING": "lora",  # versions as adapters: the path pretrained bases take
        "STORYLOOP_TRAINER_REWARD__BACKBONE": "",  # the reward model on the tiny base's own network
        "STORYLOOP_TRAINER_PPO_STEPS": "3",
        "STORYLOOP_TRAINER_PPO__BATCH_SIZE": "8",
        "STORYLOOP_TRAINER_PPO__MINI_BATCH_SIZE": "4",
        "STORYLOOP_TRAINER_PPO__MAX_NEW_TOKENS": "12",
        "STORYLOOP_TRAINER_REWARD__EPOCHS": "1",
        "STORYLOOP_TRAINER_REWARD__BATCH_SIZE": "8",
        "STORYLOOP_TRAINER_GENERATION__CONTINUATIONS_PER_PROMPT": "4",
        "STORYLOOP_TRAINER_GENERATION__MAX_NEW_TOKENS": "12",
        "STORYLOOP_TRAINER_GENERATION__BASE_PER_PROMPT": "2",
        "STORYLOOP_TRAINER_GENERATION__BEST_PER_PROMPT": "2",
        "STORYLOOP_TRAINER_GENERATION__RANDOM_PER_PROMPT": "1",
    }


@pytest.fixture
def tiny_cfg(tiny_base, monkeypatch):
    from trainer.config import TrainerSettings

    for key, value in tiny_trainer_env(tiny_base).items():
        monkeypatch.setenv(key, value)
    return TrainerSettings()


def _simulate(app, n: int, preference: str = "longer", seed: int = 0):
    with TestClient(app) as client:
        result = run_simulation("", "admin", PASSWORD, SimulationConfig(annotators=3, judgements=n, preference=preference,
                                                                         seed=seed), client=client)
    assert result.judgements == n


def _judged_batches(database, after_id: int) -> list[int]:
    with database.read() as db:
        return list(db.scalars(select(Task.batch_id).join(BwsJudgement, BwsJudgement.task_id == Task.id)
                               .where(BwsJudgement.id > after_id)))


def test_full_loop(app, database, settings, tiny_cfg):
    """Round 0 (the base writes), then two rounds, each learning from judgements of the newest tuples."""
    from trainer.loop import train_once

    seed_bws_batch(database, prompts=3, per_prompt=6, required=2)
    make_user(database, "admin", "admin")
    _simulate(app, 20)

    # Round 0: the base policy writes K stories per prompt, stored under its version, and they are queued.
    round0 = train_once(database, settings, tiny_cfg)
    with database.read() as db:
        r0 = db.get(TrainingRound, round0)
        base = db.get(ModelVersion, r0.policy_version_id)
        assert r0.status == "done" and r0.reward_version_id is None
        assert (base.kind, base.algorithm, base.parent_id) == ("policy", "hub", None)
        base_stories = db.scalars(select(Continuation).where(Continuation.model_version_id == base.id)).all()
        assert len(base_stories) == 3 * 4 and all("ended" in c.generation_settings for c in base_stories)
        for task in db.scalars(select(Task).where(Task.batch_id == r0.batch_id)):
            assert len({item.continuation.prompt_id for item in task.items}) == 1
        assert base.metrics["auto"]["kl_to_reference"] == 0.0 and base.metrics["auto"]["eos_rate"] is not None
        last_judgement = db.scalar(select(func.max(BwsJudgement.id)))

    # The next judgements all land on the newest round's tuples, not on the older imported batch.
    _simulate(app, 20)
    assert set(_judged_batches(database, last_judgement)) == {r0.batch_id}

    round1 = train_once(database, settings, tiny_cfg)
    with database.read() as db:
        r1 = db.get(TrainingRound, round1)
        assert r1.status == "done" and r1.judgements_used == 40
        reward1 = db.get(ModelVersion, r1.reward_version_id)
        policy1 = db.get(ModelVersion, r1.policy_version_id)
        assert (reward1.kind, policy1.algorithm, policy1.parent_id) == ("reward", "ppo", base.id)
        assert policy1.settings["reference_version_id"] == base.id
        assert reward1.metrics["warm_start_from"] is None and 0.0 <= reward1.metrics["held_out_accuracy"] <= 1.0
        auto = policy1.metrics["auto"]
        assert 0 < auto["distinct_1"] <= 1 and auto["perplexity"] > 1 and auto["mean_reward"] is not None
        assert auto["kl_to_reference"] is not None and 0 <= auto["copy_similarity"] <= 1
        ppo_logs = db.scalars(select(TrainingLog).where(TrainingLog.round_id == round1, TrainingLog.phase == "ppo")).all()
        assert len(ppo_logs) == tiny_cfg.ppo_steps and {"kl", "score"} <= set(ppo_logs[-1].metrics)
        timings = {t.metrics["phase"] for t in db.scalars(select(TrainingLog).where(
            TrainingLog.round_id == round1, TrainingLog.phase == "timing"))}
        assert {"reward model", "ppo", "generate", "queue", "metrics"} <= timings
        new = db.scalars(select(Continuation).where(Continuation.model_version_id == policy1.id)).all()
        assert new and all(c.generation_settings["max_new_tokens"] == 12 for c in new)
        # Every prompt's tuples hold the new version's stories AND the base's (compared directly).
        for prompt_id in {c.prompt_id for c in new}:
            versions = {item.continuation.model_version_id for task in db.scalars(
                select(Task).where(Task.batch_id == r1.batch_id, Task.prompt_id == prompt_id)) for item in task.items}
            assert {policy1.id, base.id} <= versions and len(versions) >= 3
        # The newest reward model scored every version that wrote for these prompts, on one scale.
        assert {str(base.id), str(policy1.id)} <= set(reward1.metrics["version_scores"])
        last_judgement = db.scalar(select(func.max(BwsJudgement.id)))

    _simulate(app, 20)
    assert set(_judged_batches(database, last_judgement)) == {r1.batch_id}
    round2 = train_once(database, settings, tiny_cfg)
    with database.read() as db:
        r2 = db.get(TrainingRound, round2)
        reward2 = db.get(ModelVersion, r2.reward_version_id)
        policy2 = db.get(ModelVersion, r2.policy_version_id)
        # PPO continues from the newest policy, but the KL leash stays tied to the base.
        assert policy2.parent_id == policy1.id and policy2.settings["reference_version_id"] == base.id
        assert policy2.metrics["auto"]["reference_version_id"] == base.id
        # The reward model warm-starts from the previous one, on the new pairs plus old_pairs_per_new older
        # ones per new pair (half of one by default).
        assert reward2.metrics["warm_start_from"] == reward1.id and reward2.parent_id == reward1.id
        new_pairs = reward2.metrics["new_pairs"]
        assert reward2.metrics["train_pairs"] == new_pairs + round(tiny_cfg.reward.old_pairs_per_new * new_pairs)
        assert reward2.metrics["train_pairs"] < reward1.metrics["train_pairs"] + reward2.metrics["new_pairs"]

    # The new tuples are waiting for annotators.
    with TestClient(app) as client:
        token = client.post("/api/v1/auth/token", json={"username": "sim1", "password": "simulated-0-sim1"}).json()
        task = client.post("/api/v1/tasks/next", headers={"Authorization": f"Bearer {token['access_token']}"})
        assert task.status_code == 200


def test_second_trainer_is_refused(database, settings, tiny_cfg):
    from trainer.lease import try_acquire
    from trainer.loop import TrainerBusy, train_once

    assert try_acquire(database, "other-host:1") is None
    with pytest.raises(TrainerBusy, match="other-host:1"):
        train_once(database, settings, tiny_cfg)


def test_killed_trainer_leaves_no_half_version_and_next_start_completes(tmp_path, sqlite_url, tiny_base, tiny_cfg):
    from trainer.loop import train_once

    upgrade_to_head(sqlite_url)
    database = Database.from_url(sqlite_url)
    seed_bws_batch(database, prompts=2, per_prompt=5, required=1)
    judge_directly(database, "judge")  # a few judgements to train on
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path / "data")
    train_once(database, settings, tiny_cfg)  # round 0: the base and its stories
    env = {**os.environ, **tiny_trainer_env(tiny_base), "STORYLOOP_DATABASE_URL": sqlite_url,
           "STORYLOOP_DATA_DIR": str(tmp_path / "data"), "STORYLOOP_TRAINER_PPO_STEPS": "400"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "train", "once"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until PPO is under way, then kill without warning
            with database.read() as db:
                r = db.scalar(select(TrainingRound).order_by(TrainingRound.id.desc()))
                if r is not None and r.phase == "ppo" and r.step >= 2:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the trainer never reached the PPO phase")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    store = tmp_path / "data" / "models"
    with database.read() as db:
        r = db.scalar(select(TrainingRound).order_by(TrainingRound.id.desc()))
        assert r.status == "running" and r.reward_version_id is not None and r.policy_version_id is None
        versions = db.scalars(select(ModelVersion).where(ModelVersion.path.is_not(None))).all()
    visible = {v.path for v in versions}
    on_disk = {f"{kind.name}/{d.name}" for kind in store.iterdir() if kind.is_dir() and not kind.name.startswith(".")
               for d in kind.iterdir()}
    assert on_disk == visible  # every folder has its row and every row its complete folder
    assert all((store / p / "config.json").exists() for p in visible)

    assert train_once(database, settings, tiny_cfg) == r.id  # resumes the interrupted round
    with database.read() as db:
        r = db.get(TrainingRound, r.id)
        assert r.status == "done" and r.policy_version_id is not None and r.batch_id is not None
        assert db.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.kind == "reward")) == 1


def test_lease_of_a_dead_trainer_on_this_host_is_taken_over(database):
    from trainer.lease import holder_name, try_acquire

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = holder_name().rpartition(":")[0]
    assert try_acquire(database, f"{host}:{dead.pid}") is None  # the dead trainer held it
    assert try_acquire(database, holder_name()) is None  # taken over at once, no stale wait
    assert try_acquire(database, f"{host}:{dead.pid}") == holder_name()  # and now it is ours


def test_supervised_baseline_before_the_first_round(database, settings, tiny_cfg):
    from trainer.rounds import RoundReporter, make_base_policy, reference_policy

    seed_bws_batch(database, prompts=2, per_prompt=4)
    with database.write() as db:
        r = TrainingRound(status="running")
        db.add(r)
        db.flush()
        round_id = r.id
    tiny_cfg.sft_base = True
    policy_id = make_base_policy(database, settings, tiny_cfg, RoundReporter(database, round_id, echo=False))
    policy = reference_policy(database)  # the KL reference of every round is the supervised baseline
    assert policy.id == policy_id
    with database.read() as db:
        base = db.get(ModelVersion, policy.parent_id)
    assert (policy.algorithm, base.algorithm, base.parent_id) == ("sft", "hub", None)
    assert policy.settings["pairs"] == 8 and (settings.model_store / policy.path / "config.json").exists()
