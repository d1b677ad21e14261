"""The trainer page says what matters: a failed newest round at the top with what to do, a round on too few
new judgements warned about before and after, human metric labels grouped by part of the round, names
instead of bare ids, and why the start buttons are greyed."""

import html
import re

from sqlalchemy import select

from app.models import Batch, ModelVersion, TrainingRound, utcnow
from app.services import charts, training
from tests.conftest import make_user
from tests.factories import judge_directly, seed_bws_batch
from tests.test_admin_pages import login, post_form, text_of
from tests.test_training_admin import seed_rounds


def _visible(markup: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", markup))).strip()


def _section(page, element_id: str) -> str:
    """The visible text of the element with this id (up to its closing tag of the same name)."""
    match = re.search(rf'<(\w+)[^>]*id="{element_id}"[^>]*>(.*?)</\1>', page.text, re.S)
    assert match, f"no #{element_id}"
    return _visible(match.group(2))


def _round0_done(database) -> int:
    """Round 0 finished: the base policy exists, no judgements used."""
    with database.write() as db:
        base = ModelVersion(name="base", kind="policy", algorithm="pretrain")
        db.add(base)
        db.flush()
        r = TrainingRound(status="done", trigger="base", phase="done", policy_version_id=base.id, judgements_used=0,
                          started_at=utcnow(), finished_at=utcnow())
        db.add(r)
        db.flush()
        return r.id


def test_a_failed_newest_round_is_stated_at_the_top_with_its_error_and_what_to_do(client, database, admin_headers):
    with database.write() as db:
        db.add(TrainingRound(status="failed", trigger="base", phase="base policy", started_at=utcnow(), finished_at=utcnow(),
                             error="OSError: no-such/model is not a valid model identifier\nTraceback (most recent call last)"))
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get("/admin/training")
    top = _section(page, "trainer-failed")
    assert "Round 0 failed in phase base policy" in top
    assert "OSError: no-such/model is not a valid model identifier" in top and "Traceback" not in top
    assert "What to do:" in top and "STORYLOOP_TRAINER_BASE_POLICY" in top and "Start a round now" in top
    failed = client.get("/admin/training/status.json").json()["failed"]
    assert failed["number"] == 0 and failed["error"] == "OSError: no-such/model is not a valid model identifier"
    assert "STORYLOOP_TRAINER_BASE_POLICY" in failed["advice"]
    assert client.get("/api/v1/admin/training/status", headers=admin_headers).json()["failed"]["phase"] == "base policy"

    # Asking for a new round takes the failure off the top: the newest round is no longer the failed one.
    assert client.post("/api/v1/admin/training/rounds", headers=admin_headers).status_code == 201
    assert client.get("/admin/training/status.json").json()["failed"] is None
    assert 'id="trainer-failed" role="alert" hidden' in client.get("/admin/training").text


def test_a_failed_later_round_gets_the_general_advice(client, database):
    ids = seed_rounds(database)
    with database.write() as db:
        r = db.get(TrainingRound, ids["round3"])
        r.status, r.error, r.finished_at = "failed", "CUDA out of memory\nstack", utcnow()
    make_user(database, "root", "admin")
    login(client, "root")
    top = _section(client.get("/admin/training"), "trainer-failed")
    assert "Round 2 failed in phase ppo" in top and "CUDA out of memory" in top
    assert "the trainer's log has the whole traceback" in top


def test_a_round_on_too_few_new_judgements_is_warned_about_before_and_after(client, database, settings, admin_headers):
    _round0_done(database)
    batch_id = seed_bws_batch(database)
    judge_directly(database, "ann", batch_id, limit=2)
    make_user(database, "root", "admin")
    login(client, "root")
    threshold = settings.trainer_min_new_judgements
    before = _section(client.get("/admin/training"), "new-judgements")
    assert f"Only 2 new judgements since the last finished round (fewer than {threshold})" in before
    status = client.get("/api/v1/admin/training/status", headers=admin_headers).json()
    assert status["new_judgements"]["count"] == 2 and status["new_judgements"]["threshold"] == threshold

    created = client.post("/api/v1/admin/training/rounds", headers=admin_headers)
    assert created.status_code == 201 and "Only 2 new judgements" in created.json()["warning"]

    # The round ran on those 2: its row and the top card say so once it is done.
    with database.write() as db:
        reward = ModelVersion(name="reward-r1", kind="reward", algorithm="reward")
        db.add(reward)
        db.flush()
        r = db.get(TrainingRound, created.json()["id"])
        r.status, r.phase, r.reward_version_id, r.judgements_used = "done", "done", reward.id, 2
        r.started_at = r.finished_at = utcnow()
    page = client.get("/admin/training")
    row = re.search(rf'<tr data-round="{created.json()["id"]}">.*?</tr>', page.text, re.S).group(0)
    assert f"Trained on only 2 new judgements (fewer than {threshold})" in _visible(row)
    assert "Round 1:" in _section(page, "newest-round-warning")
    assert client.get("/admin/training/status.json").json()["history"][0]["new_judgements"] == 2


def test_the_page_form_warns_when_starting_a_round_on_few_judgements_and_not_on_enough(client, database, settings):
    _round0_done(database)
    batch_id = seed_bws_batch(database)
    judged = judge_directly(database, "ann", batch_id, limit=3)
    make_user(database, "root", "admin")
    login(client, "root")
    page = post_form(client, "/admin/training", "/admin/training/rounds")
    assert "Round 1 queued" in page.text and "Warning: Only 3 new judgements" in text_of(page)

    with database.write() as db:  # enough new judgements for the threshold: no warning anywhere
        db.execute(TrainingRound.__table__.delete().where(TrainingRound.status == "requested"))
    settings.trainer_min_new_judgements = judged
    page = post_form(client, "/admin/training", "/admin/training/rounds")
    assert "Round 1 queued" in page.text and "Warning:" not in text_of(page)
    assert f"{judged} new judgements since the last finished round" in _section(page, "new-judgements")


def test_greyed_start_buttons_say_why(client, database, admin_headers):
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get("/admin/training")
    assert _section(page, "start-round-reason") == "" and _section(page, "start-bakeoff-reason") == ""
    client.post("/api/v1/admin/training/rounds", headers=admin_headers)
    page = client.get("/admin/training")
    assert re.search(r'id="start-round"[^>]*disabled', page.text)
    for reason in ("start-round-reason", "start-bakeoff-reason"):
        assert _section(page, reason) == "Round 0 is already requested: the trainer runs one round at a time."


def test_metrics_have_human_labels_grouped_by_part_of_the_round(client, database):
    seed_rounds(database)
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get("/admin/training")
    charts_html = re.search(r'<div class="small-multiples" id="round-charts">(.*?)</div>\s*<p', page.text, re.S).group(1)
    assert '<h3 class="chart-group">Policy update (PPO)</h3>' in charts_html
    assert "held_out_accuracy" not in text_of(page)  # the single value reads "Reward model · held-out accuracy"
    series = client.get("/admin/training/status.json").json()["round_metrics"]["series"]
    assert {(s["metric"], s["label"], s["group"]) for s in series} >= {
        ("held_out_accuracy", "held-out accuracy", "Reward model"), ("kl", "KL to the reference (nats)", "Policy update (PPO)")}
    assert training.metric_label("train_pairs_within_max_length") == "training pairs within the length limit"
    assert training.metric_label("kl_coef") == "KL coefficient β"
    assert training.metric_label("some_new/metric_key") == "some new / metric key"  # unknown: readable, not raw


def test_history_names_and_links_the_reward_model_policy_and_batch(client, database):
    ids = seed_rounds(database)
    with database.write() as db:
        batch = Batch(name="round 2 tuples", kind="bws")
        reward = ModelVersion(name="reward-r2", kind="reward", algorithm="reward")
        db.add_all([batch, reward])
        db.flush()
        r = db.get(TrainingRound, ids["round2"])
        r.batch_id, r.reward_version_id = batch.id, reward.id
        batch_id, reward_id = batch.id, reward.id
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get("/admin/training")
    row = re.search(rf'<tr data-round="{ids["round2"]}">.*?</tr>', page.text, re.S).group(0)
    assert f'<a href="/admin/models#reward-{reward_id}">reward-r2</a>' in row
    assert f'<a href="/admin/models#version-{ids["r2"]}">policy-r2</a>' in row
    assert f'<a href="/admin/batches#batch-{batch_id}">#{batch_id} round 2 tuples</a>' in row
    # the anchors exist where the links point
    assert f'id="version-{ids["r2"]}"' in client.get("/admin/models").text
    assert f'id="batch-{batch_id}"' in client.get("/admin/batches").text
    with database.read() as db:
        assert db.scalar(select(Batch.name).where(Batch.id == batch_id)) == "round 2 tuples"


def test_tick_labels_of_a_small_range_are_distinct():
    ticks = charts.nice_ticks(0.05, 0.0503)  # an adaptive KL coefficient that barely moved
    assert [charts.fmt(t) for t in ticks] == ["0.05"] * len(ticks)  # what the chart printed before
    labels = charts.tick_labels(ticks)
    assert len(set(labels)) == len(labels) and labels[0] == "0.05" and labels[-1] == "0.0503"
    assert charts.tick_labels([0.0, 0.5, 1.0]) == ["0", "0.5", "1"]  # ordinary ranges as before
    svg = charts.line_chart([charts.Series("kl_coef", [(1.0, 0.05), (2.0, 0.0502), (3.0, 0.0503)])],
                            title="KL coefficient", x_label="step", y_label="β")
    y_labels = re.findall(r'text-anchor="end" font-size="11" fill="#555">([^<]+)<', str(svg))
    assert len(y_labels) >= 3 and len(set(y_labels)) == len(y_labels)


def test_the_few_judgements_warning_reads_well_at_none_and_one():
    assert training.few_judgements_warning(30, 30) is None and training.few_judgements_warning(31, 30, done=True) is None
    assert training.few_judgements_warning(0, 30).startswith("No new judgements since the last finished round (fewer than 30)")
    assert training.few_judgements_warning(1, 30).startswith("Only 1 new judgement since")
    assert training.few_judgements_warning(0, 30, done=True).startswith("Trained on no new judgements (fewer than 30)")
