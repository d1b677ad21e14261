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
from tests.factories import seed_bws_batch
from tests.tiny_models import pretrain_lm, story_corpus, tiny_lm, train_tiny_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny GPT-2 saved with save_pretrained: the same path a hub id takes, minus the download."""
    folder = tmp_path_factory.mktemp("tiny-base")
    pairs = story_corpus(1500)
    tokenizer = train_tiny_tokenizer(p + c for p, c in pairs)
    model = pretrain_lm(tiny_lm(tokenizer, n_positions=128), tokenizer, [p + c for p, c in pairs], steps=150)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_trainer_env(base: Path) -> dict[str, str]:
    return {
        "STORYLOOP_TRAINER_BASE_POLICY": str(base),
        "STORYLOOP_TRAINER_PPO_STEPS": "3",
        "STORYLOOP_TRAINER_PPO__BATCH_SIZE": "8",
        "STORYLOOP_TRAINER_PPO__MINI_BATCH_SIZE": "4",
        "STORYLOOP_TRAINER_PPO__MAX_NEW_TOKENS": "12",
        "STORYLOOP_TRAINER_REWARD__EPOCHS": "1",
        "STORYLOOP_TRAINER_REWARD__BATCH_SIZE": "8",
        "STORYLOOP_TRAINER_GENERATION__CONTINUATIONS_PER_PROMPT": "4",
        "STORYLOOP_TRAINER_GENERATION__MAX_NEW_TOKENS": "12",
        "STORYLOOP_TRAINER_GENERATION__OLDER_PER_PROMPT": "3",
    }


@pytest.fixture
def tiny_cfg(tiny_base, monkeypatch):
    from trainer.config import TrainerSettings

    for key, value in tiny_trainer_env(tiny_base).items():
        monkeypatch.setenv(key, value)
    return TrainerSettings()


def test_full_loop(app, database, settings, tiny_cfg):
    from trainer.loop import train_once

    seed_bws_batch(database, prompts=3, per_prompt=6, required=2)
    make_user(database, "admin", "admin")
    with TestClient(app) as client:
        result = run_simulation("", "admin", PASSWORD, SimulationConfig(annotators=3, judgements=40, preference="longer"),
                                client=client)
    assert result.judgements == 40

    round_id = train_once(database, settings, tiny_cfg)

    with database.read() as db:
        r = db.get(TrainingRound, round_id)
        assert r.status == "done" and r.judgements_used == 40
        reward = db.get(ModelVersion, r.reward_version_id)
        policy = db.get(ModelVersion, r.policy_version_id)
        base = db.get(ModelVersion, policy.parent_id)
        assert (base.kind, base.algorithm, base.parent_id) == ("policy", "hub", None)
        assert (reward.kind, policy.algorithm) == ("reward", "ppo")
        assert 0.0 <= reward.metrics["held_out_accuracy"] <= 1.0
        auto = policy.metrics["auto"]  # automatic metrics of the new version's continuations
        assert 0 < auto["distinct_1"] <= 1 and auto["perplexity"] > 1 and auto["mean_reward"] is not None
        for version in (base, reward, policy):
            assert (settings.model_store / version.path / "config.json").exists()
        ppo_logs = db.scalars(select(TrainingLog).where(TrainingLog.round_id == round_id, TrainingLog.phase == "ppo")).all()
        assert len(ppo_logs) == tiny_cfg.ppo_steps and {"kl", "score"} <= set(ppo_logs[-1].metrics)
        new = db.scalars(select(Continuation).where(Continuation.model_version_id == policy.id)).all()
        assert new and all(c.generation_settings["max_new_tokens"] == 12 for c in new)
        tasks = db.scalars(select(Task).where(Task.batch_id == r.batch_id)).all()
        assert tasks
        # Tuples mix the new version with earlier ones, always within one prompt.
        mixed = 0
        for task in tasks:
            versions = {item.continuation.model_version_id for item in task.items}
            assert len({item.continuation.prompt_id for item in task.items}) == 1
            mixed += len(versions) > 1
        assert mixed >= len(tasks) // 2

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
    with database.write() as db:  # a few judgements to train on: best = first shown, worst = last
        from app.models import Assignment, User, utcnow

        user = User(username="judge", password_hash="x", role="annotator")
        db.add(user)
        db.flush()
        for task in db.scalars(select(Task)).all():
            order = [i.continuation_id for i in task.items]
            a = Assignment(task_id=task.id, user_id=user.id, item_order=order, status="submitted", expires_at=utcnow())
            db.add(a)
            db.flush()
            db.add(BwsJudgement(assignment_id=a.id, task_id=task.id, user_id=user.id, best_id=order[0],
                                worst_id=order[-1], shown_order=order, idempotency_key=f"key-{task.id}"))

    env = {**os.environ, **tiny_trainer_env(tiny_base), "STORYLOOP_DATABASE_URL": sqlite_url,
           "STORYLOOP_DATA_DIR": str(tmp_path / "data"), "STORYLOOP_TRAINER_PPO_STEPS": "400"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "train", "once"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until PPO is under way, then kill without warning
            with database.read() as db:
                r = db.scalar(select(TrainingRound))
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
        r = db.scalar(select(TrainingRound))
        assert r.status == "running" and r.reward_version_id is not None and r.policy_version_id is None
        versions = db.scalars(select(ModelVersion).where(ModelVersion.path.is_not(None))).all()
    visible = {v.path for v in versions}
    on_disk = {f"{kind.name}/{d.name}" for kind in store.iterdir() if kind.is_dir() and not kind.name.startswith(".")
               for d in kind.iterdir()}
    assert on_disk == visible  # every folder has its row and every row its complete folder
    assert all((store / p / "config.json").exists() for p in visible)

    settings = Settings(database_url=sqlite_url, data_dir=tmp_path / "data")
    assert train_once(database, settings, tiny_cfg) == r.id  # resumes the interrupted round
    with database.read() as db:
        r = db.scalar(select(TrainingRound))
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
    from trainer.rounds import RoundReporter, ensure_base_policy

    seed_bws_batch(database, prompts=2, per_prompt=4)
    with database.write() as db:
        r = TrainingRound(status="running")
        db.add(r)
        db.flush()
        round_id = r.id
    tiny_cfg.sft_base = True
    policy = ensure_base_policy(database, settings, tiny_cfg, RoundReporter(database, round_id, echo=False))
    with database.read() as db:
        base = db.get(ModelVersion, policy.parent_id)
    assert (policy.algorithm, base.algorithm, base.parent_id) == ("sft", "hub", None)
    assert policy.settings["pairs"] == 8 and (settings.model_store / policy.path / "config.json").exists()
