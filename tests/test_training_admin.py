"""Asking for a training round and watching the trainer, from the admin page and the API."""

from datetime import timedelta

from sqlalchemy import select

from app.models import TrainerLease, TrainingLog, TrainingRound, utcnow
from tests.conftest import make_user
from tests.test_admin_pages import login, post_form, text_of


def test_admin_page_queues_a_round_once_and_shows_progress(client, database):
    make_user(database, "root", "admin")
    login(client, "root")
    page = post_form(client, "/admin/training", "/admin/training/rounds")
    assert "Round 0 queued" in page.text and "No trainer is running" in page.text  # the first round is round 0
    again = post_form(client, "/admin/training", "/admin/training/rounds")
    assert "round 0 is already requested" in again.text

    # The trainer (simulated here) is 10 of 40 PPO steps into the round, 20 s after the phase began.
    with database.write() as db:
        db.add(TrainerLease(name="trainer", holder="box:42", heartbeat_at=utcnow()))
        r = db.scalar(select(TrainingRound))
        r.status, r.phase, r.step, r.total_steps = "running", "ppo", 10, 40
        r.phase_started_at = utcnow() - timedelta(seconds=20)
        db.add(TrainingLog(round_id=r.id, phase="ppo", step=10, metrics={"score": 0.5, "kl": 0.01}))
    status = client.get("/admin/training/status.json").json()
    assert status["trainer_alive"] and status["trainer_holder"] == "box:42"
    assert status["current"]["phase"] == "ppo" and status["current"]["step"] == 10
    assert 55 <= status["current"]["eta_seconds"] <= 70  # 2 s a step, 30 steps to go
    page = client.get("/admin/training")
    assert "step 10 of 40" in page.text and "started by an admin (Start a round now)" in page.text
    assert "Round 0: logged metrics" in page.text and "Policy update (PPO) · reward-model score" in text_of(page)  # a single value, not a chart


def test_api_round_request_and_status(client, database, admin_headers):
    created = client.post("/api/v1/admin/training/rounds", headers=admin_headers)
    assert created.status_code == 201 and created.json()["status"] == "requested"
    assert client.post("/api/v1/admin/training/rounds", headers=admin_headers).status_code == 409
    status = client.get("/api/v1/admin/training/status", headers=admin_headers).json()
    assert status["current"]["id"] == created.json()["id"] and status["trainer_alive"] is False
    assert client.get(f"/api/v1/admin/training/rounds/{created.json()['id']}/logs", headers=admin_headers).json() == []


def test_logs_of_a_round_that_does_not_exist_are_a_404(client, database, admin_headers):
    response = client.get("/api/v1/admin/training/rounds/12345/logs", headers=admin_headers)
    assert response.status_code == 404 and "no training round 12345" in response.json()["detail"]


# ---------------------------------------------------------------- the live trainer page: ETA, metrics, KL, warnings

import re  # noqa: E402

import pytest  # noqa: E402

from app.models import ModelVersion  # noqa: E402
from app.services import training  # noqa: E402

PREVIOUS = {"reward model": 100.0, "ppo": 600.0, "generate": 60.0, "queue": 5.0, "metrics": 30.0}


@pytest.mark.parametrize("phase, phase_eta, elapsed, done, previous, expected", [
    ("ppo", 300.0, 100.0, {"reward model": 90.0}, PREVIOUS, 300 + 60 + 5 + 30),  # progress + later phases
    ("generate", None, 20.0, {"reward model": 90.0, "ppo": 500.0}, PREVIOUS, (60 - 20) + 5 + 30),  # no steps yet
    ("generate", None, 90.0, {}, PREVIOUS, 0 + 5 + 30),  # over the previous duration: not negative
    ("", None, None, {}, PREVIOUS, 100 + 600 + 60 + 5 + 30),  # started, no phase yet
    ("ppo", 300.0, 100.0, {}, {k: v for k, v in PREVIOUS.items() if k != "metrics"}, None),  # metrics never timed
    ("reward model", None, 10.0, {}, {k: v for k, v in PREVIOUS.items() if k != "reward model"}, None),
    ("ppo", 300.0, 100.0, {}, {}, None),  # no finished round to learn from
])
def test_round_eta(phase, phase_eta, elapsed, done, previous, expected):
    assert training.round_eta(phase, phase_eta, elapsed, done, previous, training.LATER_ROUND_PLAN) == expected


def test_previous_durations_prefer_rounds_of_the_same_kind():
    round0 = {"base policy": 900.0, "generate": 30.0, "queue": 2.0, "metrics": 10.0}
    round1 = {"reward model": 100.0, "ppo": 600.0, "generate": 60.0, "queue": 5.0, "metrics": 30.0}
    # round 1 running: only round 0 finished; it knows generate/queue/metrics from it, not reward model and PPO
    learnt = training.previous_durations([round0], training.LATER_ROUND_PLAN)
    assert learnt == {"generate": 30.0, "queue": 2.0, "metrics": 10.0}
    assert training.round_eta("ppo", 50.0, 5.0, {}, learnt, training.LATER_ROUND_PLAN) == 50 + 42
    assert training.round_eta("reward model", None, 5.0, {}, learnt, training.LATER_ROUND_PLAN) is None
    # round 2: round 1 is newer and of the same kind
    assert training.previous_durations([round1, round0], training.LATER_ROUND_PLAN) == round1
    assert training.round_plan(set(), "base policy", first=False) == training.FIRST_ROUND_PLAN
    assert training.round_plan(set(), "", first=True) == training.FIRST_ROUND_PLAN
    assert training.round_plan({"reward model"}, "ppo", first=False) == training.LATER_ROUND_PLAN


def test_trigger_labels():
    assert training.trigger_label("auto") == "automatic (enough new judgements)"
    assert training.trigger_label("auto: 34 new judgements") == "automatic (enough new judgements): 34 new judgements"
    assert training.trigger_label("cli") == "command line (storyloop train once)"


def seed_rounds(database) -> dict[str, int]:
    """Two finished rounds with phase timings and KL to the reference (round 2's KL tripled: a warning), and a
    third round 10 of 40 PPO steps in, 20 s into the phase, its reward model timed and logged."""
    now = utcnow()
    ids = {}
    with database.write() as db:
        base = ModelVersion(name="base", kind="policy", algorithm="pretrain")
        db.add(base)
        db.flush()
        r1 = ModelVersion(name="policy-r1", kind="policy", algorithm="ppo", parent_id=base.id,
                          metrics={"auto": {"kl_to_reference": 0.4, "eos_rate": 0.5}})
        db.add(r1)
        db.flush()
        r2 = ModelVersion(name="policy-r2", kind="policy", algorithm="ppo", parent_id=r1.id,
                          metrics={"auto": {"kl_to_reference": 1.25, "eos_rate": 0.4}})
        db.add(r2)
        db.flush()
        for n, (policy, trigger, timings) in enumerate(((r1, "admin", {"base policy": 900, **PREVIOUS}),
                                                        (r2, "auto: 34 new judgements", {"reward model": 80, "ppo": 400,
                                                                                         "generate": 40, "queue": 4,
                                                                                         "metrics": 16})), start=1):
            r = TrainingRound(status="done", trigger=trigger, phase="done", policy_version_id=policy.id,
                              judgements_used=30 * n, started_at=now - timedelta(hours=3 - n),
                              finished_at=now - timedelta(hours=3 - n) + timedelta(seconds=sum(timings.values())))
            db.add(r)
            db.flush()
            ids[f"round{n}"] = r.id
            for phase, seconds in timings.items():
                db.add(TrainingLog(round_id=r.id, phase="timing", step=0, metrics={"phase": phase, "seconds": seconds}))
        r3 = TrainingRound(status="running", trigger="cli", phase="ppo", step=10, total_steps=40, judgements_used=95,
                           phase_started_at=now - timedelta(seconds=20), started_at=now - timedelta(seconds=100))
        db.add(r3)
        db.flush()
        ids["round3"] = r3.id
        db.add(TrainingLog(round_id=r3.id, phase="reward model", step=1, metrics={"held_out_accuracy": 0.7}))
        db.add(TrainingLog(round_id=r3.id, phase="timing", step=0, metrics={"phase": "reward model", "seconds": 75.0}))
        for step in range(1, 11):
            db.add(TrainingLog(round_id=r3.id, phase="ppo", step=step, metrics={"score": 0.1 * step, "kl": 0.01 * step}))
        ids.update(r1=r1.id, r2=r2.id)
    return ids


def test_status_json_has_everything_the_page_shows(client, database):
    ids = seed_rounds(database)
    make_user(database, "root", "admin")
    login(client, "root")
    s = client.get("/admin/training/status.json").json()
    current = s["current"]
    assert current["id"] == ids["round3"] and current["trigger_label"] == "command line (storyloop train once)"
    assert 55 <= current["eta_seconds"] <= 70  # 2 s a step, 30 steps to go
    # this phase ~60 s + the previous finished round's (round 2) generate, queue and metrics: 40 + 4 + 16
    assert 115 <= current["round_eta_seconds"] <= 130
    assert current["phase_seconds"] == {"reward model": 75.0}
    assert s["previous_phase_seconds"] == {"reward model": 80.0, "ppo": 400.0, "generate": 40.0, "queue": 4.0, "metrics": 16.0}
    assert [(r["id"], r["judgements_used"]) for r in s["history"]] == [(ids["round3"], 95), (ids["round2"], 60), (ids["round1"], 30)]
    assert s["history"][1]["trigger_label"] == "automatic (enough new judgements): 34 new judgements"
    assert s["history"][1]["duration_seconds"] == pytest.approx(540)
    assert [(k["round_id"], k["kl_to_reference"]) for k in s["kl_per_round"]] == [(ids["round1"], 0.4), (ids["round2"], 1.25)]
    series = {(m["phase"], m["metric"]): m["points"] for m in s["round_metrics"]["series"]}
    assert s["round_metrics"]["round_id"] == ids["round3"] and s["round_metrics"]["rows"] == 11  # timing rows left out
    assert series[("ppo", "score")][-1] == [10, 1.0] and len(series[("ppo", "kl")]) == 10
    assert series[("reward model", "held_out_accuracy")] == [[1, 0.7]]
    assert [(w["version_name"], w["code"]) for w in s["warnings"]] == [("policy-r2", "kl")]


def test_trainer_page_renders_charts_eta_and_warnings(client, database):
    seed_rounds(database)
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get("/admin/training")
    assert page.status_code == 200, page.text
    text = text_of(page)
    assert re.search(r"Whole round: about 2 min \d+ s left", text), text
    assert "KL to the reference more than doubled over policy-r1's (0.40 → 1.25 nats per story)" in text
    assert "Policy update (PPO): reward-model score" in page.text and "Policy update (PPO): KL to the reference (nats)" in page.text
    assert "KL (nats per story)" in page.text
    assert page.text.count("<svg") == 3  # two PPO metrics and KL per round; the single accuracy is a value
    assert "Reward model · held-out accuracy 0.7" in text
    phase_times = re.search(r'<table id="phase-times">.*?</table>', page.text, re.S).group(0)
    assert "1 min 15 s" in phase_times and "6 min 40 s" in phase_times  # this round's reward model, the previous PPO
    assert "key=" not in page.text and "score=" not in page.text
    assert "js/trainer_status.js" in page.text and "<script>" not in page.text


def test_trainer_pages_need_an_admin(client, database):
    make_user(database, "ann", "annotator")
    login(client, "ann")
    assert client.get("/admin/training/status.json").status_code == 403
    assert client.get("/admin/training", headers={"accept": "text/html"}).status_code == 403


def test_round_logs_keep_the_timed_phase(client, database, admin_headers):
    ids = seed_rounds(database)
    logs = client.get(f"/api/v1/admin/training/rounds/{ids['round3']}/logs", headers=admin_headers).json()
    assert {"phase": "timing", "step": 0, "timed_phase": "reward model", "seconds": 75.0} in logs
