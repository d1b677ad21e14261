"""Asking for a training round and watching the trainer, from the admin page and the API."""

from datetime import timedelta

from sqlalchemy import select

from app.models import TrainerLease, TrainingLog, TrainingRound, utcnow
from tests.conftest import make_user
from tests.test_admin_pages import login, post_form


def test_admin_page_queues_a_round_once_and_shows_progress(client, database):
    make_user(database, "root", "admin")
    login(client, "root")
    page = post_form(client, "/admin/training", "/admin/training/rounds")
    assert "Round 1 queued" in page.text and "No trainer is running" in page.text
    again = post_form(client, "/admin/training", "/admin/training/rounds")
    assert "round 1 is already requested" in again.text

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
    assert "step 10 of 40" in page.text and "score=0.5" in page.text


def test_api_round_request_and_status(client, database, admin_headers):
    created = client.post("/api/v1/admin/training/rounds", headers=admin_headers)
    assert created.status_code == 201 and created.json()["status"] == "requested"
    assert client.post("/api/v1/admin/training/rounds", headers=admin_headers).status_code == 409
    status = client.get("/api/v1/admin/training/status", headers=admin_headers).json()
    assert status["current"]["id"] == created.json()["id"] and status["trainer_alive"] is False
    assert client.get(f"/api/v1/admin/training/rounds/{created.json()['id']}/logs", headers=admin_headers).json() == []
