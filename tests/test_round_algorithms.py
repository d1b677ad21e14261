"""The algorithm of a round (ppo | alol | dpo) and the bake-off: asked for on the admin page and the
API, recorded on the round and its version, run end to end by the trainer with tiny models."""

import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.db import Database
from app.migrate import upgrade_to_head
from app.models import Campaign, CampaignVersion, Continuation, ModelVersion, Task, TrainingRound
from app.services import training
from tests.conftest import make_user
from tests.factories import judge_directly, seed_bws_batch
from tests.test_admin_pages import login, post_form, text_of
from tests.test_trainer_loop import tiny_base, tiny_cfg  # noqa: F401 (fixtures)


def _rounds(database) -> int:
    with database.read() as db:
        return db.scalar(select(func.count()).select_from(TrainingRound))


# ----------------------------------------------------------------------------- asking for one
def test_api_takes_an_algorithm_or_a_bakeoff_and_refuses_bad_ones(client, database, admin_headers):
    url = "/api/v1/admin/training/rounds"
    for body, field in (({"algorithm": "kto"}, "algorithm"), ({"bakeoff": ["alol"]}, "bakeoff"),
                        ({"bakeoff": ["alol", "trpo"]}, "bakeoff"), ({"bakeoff": ["dpo", "alol"], "bakeoff_required": 0},
                                                                      "bakeoff_required")):
        refused = client.post(url, json=body, headers=admin_headers)
        assert refused.status_code == 422 and field in refused.text, body
    both = client.post(url, json={"algorithm": "dpo", "bakeoff": ["dpo", "alol"]}, headers=admin_headers)
    assert both.status_code == 422 and "algorithm" in both.text
    same_twice = client.post(url, json={"bakeoff": ["dpo", "dpo"]}, headers=admin_headers)
    assert same_twice.status_code == 422 and "bakeoff" in same_twice.text
    assert _rounds(database) == 0  # nothing was queued by a refused request

    created = client.post(url, json={"algorithm": "alol"}, headers=admin_headers)
    assert created.status_code == 201 and created.json()["algorithm"] == "alol"
    with database.write() as db:  # let it finish, so another can be asked for
        db.scalar(select(TrainingRound)).status = "done"
    bake = client.post(url, json={"bakeoff": ["ppo", "dpo", "alol"], "bakeoff_required": 3}, headers=admin_headers)
    assert bake.status_code == 201
    assert bake.json()["algorithm"] == "bakeoff"
    assert bake.json()["bakeoff"] == {"algorithms": ["ppo", "dpo", "alol"], "policies": {}, "required": 3}
    with database.write() as db:
        db.get(TrainingRound, bake.json()["id"]).status = "done"
    plain = client.post(url, headers=admin_headers)  # no body: the trainer's default, decided when it starts
    assert plain.status_code == 201 and plain.json()["algorithm"] is None
    history = client.get("/api/v1/admin/training/status", headers=admin_headers).json()["history"]
    assert [r["algorithm"] for r in history] == [None, "bakeoff", "alol"]


def test_admin_page_starts_a_round_with_an_algorithm_and_a_bakeoff(client, database):
    make_user(database, "root", "admin")
    login(client, "root")
    page = post_form(client, "/admin/training", "/admin/training/rounds", {"algorithm": "nonsense"})
    assert "algorithm must be one of ppo, alol, dpo" in text_of(page) and _rounds(database) == 0
    page = post_form(client, "/admin/training", "/admin/training/rounds", {"algorithm": "dpo"})
    assert "Round 0 queued (dpo)" in text_of(page)  # the first round is round 0
    with database.write() as db:
        db.get(TrainingRound, 1).status = "done"
    page = post_form(client, "/admin/training", "/admin/training/bakeoff", {"algorithms": ["alol"]})
    assert "pick two or more different algorithms" in text_of(page) and _rounds(database) == 1
    page = post_form(client, "/admin/training", "/admin/training/bakeoff", {"algorithms": ["alol", "dpo"], "required": "2"})
    assert "Bake-off round 1 (alol, dpo) queued" in text_of(page)
    rows = {r.id: r for r in training.trainer_status(database).history}
    assert rows[1].algorithm == "dpo" and rows[2].bakeoff["algorithms"] == ["alol", "dpo"]
    assert "bakeoff (alol, dpo)" in text_of(page)  # the history table shows what each round trains with


# ----------------------------------------------------------------------------- running them


@pytest.mark.slow
def test_rounds_with_each_algorithm_and_a_bakeoff(tmp_path, sqlite_url, tiny_cfg):  # noqa: F811
    from trainer.loop import train_once

    upgrade_to_head(sqlite_url)  # SQLite only: the database layer is not what this test is about
    database = Database.from_url(sqlite_url)
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path / "data", annotations_per_tuple=1)
    seed_bws_batch(database, prompts=3, per_prompt=6, required=2)
    judge_directly(database, "judge-1")
    tiny_cfg.reward.batch_size = 32
    tiny_cfg.alol.steps, tiny_cfg.alol.max_new_tokens, tiny_cfg.alol.value_samples_per_prompt = 4, 12, 2
    tiny_cfg.dpo.max_steps, tiny_cfg.dpo.batch_size = 2, 4
    round0 = train_once(database, settings, tiny_cfg)  # the base writes its stories
    with database.read() as db:
        base_id = db.get(TrainingRound, round0).policy_version_id

    tiny_cfg.algorithm = "alol"  # the settings' default, used by a round that names none
    for asked in (None, "dpo"):
        judge_directly(database, f"judge-{asked}", limit=4)
        round_id = training.request_round(database, trigger="test", algorithm=asked).id
        assert train_once(database, settings, tiny_cfg) == round_id
        with database.read() as db:
            r = db.get(TrainingRound, round_id)
            version = db.get(ModelVersion, r.policy_version_id)
            expected = asked or "alol"
            assert (r.status, r.algorithm, version.algorithm) == ("done", expected, expected)
            assert version.settings["reference_version_id"] == base_id
            assert version.settings["reward_version_id"] == r.reward_version_id
            assert expected in version.settings  # the algorithm's own settings
            assert version.metrics["compute"]["seconds"] > 0 and version.metrics["compute"]["peak_memory_mb"] > 0
            assert version.metrics["auto"]["kl_to_reference"] is not None
            stories = db.scalar(select(func.count()).select_from(Continuation)
                                .where(Continuation.model_version_id == version.id))
            assert stories == 3 * 4 and r.batch_id is not None
        if expected == "alol":
            logs = training.round_logs(database, round_id)
            assert [row["step"] for row in logs if row["phase"] == "alol" and "loss" in row] == [1, 2, 3, 4]
            assert any(row.get("positive_rows", 0) > 0 for row in logs)

    judge_directly(database, "judge-bakeoff", limit=4)
    round_id = training.request_round(database, trigger="test", bakeoff=["alol", "dpo"], bakeoff_required=2).id
    assert train_once(database, settings, tiny_cfg) == round_id
    with database.read() as db:
        r = db.get(TrainingRound, round_id)
        assert r.status == "done" and r.algorithm == "bakeoff"
        policies = r.bakeoff["policies"]
        versions = {a: db.get(ModelVersion, policies[a]) for a in ("alol", "dpo")}
        assert {a: v.algorithm for a, v in versions.items()} == {"alol": "alol", "dpo": "dpo"}
        start = r.bakeoff["start_policy_id"]
        assert all(v.parent_id == start and v.settings["reward_version_id"] == r.reward_version_id
                   for v in versions.values())  # the same start, judgements and reward model
        assert all("compute" in v.metrics and "auto" in v.metrics for v in versions.values())
        # one batch of tuples mixing both new versions and the base, per prompt
        for task in db.scalars(select(Task).where(Task.batch_id == r.batch_id)):
            assert len({item.continuation.prompt_id for item in task.items}) == 1
        in_tuples = {item.continuation.model_version_id for task in db.scalars(select(Task).where(Task.batch_id == r.batch_id))
                     for item in task.items}
        assert {base_id, versions["alol"].id, versions["dpo"].id} <= in_tuples
        campaign = db.get(Campaign, r.bakeoff["campaign_id"])
        assert campaign.status == "open" and campaign.required == 2
        compared = set(db.scalars(select(CampaignVersion.model_version_id).where(CampaignVersion.campaign_id == campaign.id)))
        assert compared == {base_id, versions["alol"].id, versions["dpo"].id}
        assert db.scalar(select(func.count()).select_from(Task).where(Task.batch_id == campaign.batch_id)) == 3 * 3
    # the models page shows each algorithm's version with the compute it took
    from app.services.model_versions import models_page

    rows = {v.id: v for v in models_page(database).versions}
    for algorithm, version_id in policies.items():
        assert rows[version_id].algorithm == algorithm and rows[version_id].compute["seconds"] > 0


def test_round_eta_follows_the_rounds_algorithm(database):
    """An A-LoL round's ETA counts its "alol" phase as the previous A-LoL round took it (no "ppo" phase)."""
    from datetime import timedelta

    from app.models import TrainingLog, utcnow

    with database.write() as db:
        done = TrainingRound(status="done", algorithm="alol", started_at=utcnow(), finished_at=utcnow())
        db.add(done)
        db.flush()
        for phase, seconds in (("reward model", 10.0), ("alol", 30.0), ("generate", 5.0), ("queue", 1.0), ("metrics", 4.0)):
            db.add(TrainingLog(round_id=done.id, phase="timing", step=0, metrics={"phase": phase, "seconds": seconds}))
        db.add(TrainingRound(status="running", algorithm="alol", phase="alol", step=5, total_steps=10,
                             phase_started_at=utcnow() - timedelta(seconds=10), started_at=utcnow()))
    current = training.trainer_status(database).current
    # 10 s for 5 of 10 steps: 10 s left in this phase, then generate + queue + metrics as last time
    assert current.algorithm == "alol" and 19 <= current.round_eta_seconds <= 21
