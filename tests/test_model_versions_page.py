"""The model-versions page from seeded data: lineage, human BWS over mixed tuples, evaluation means,
automatic metrics, PPO curves and reward accuracy; the charts; and the live-status JSON."""

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.models import (
    Assignment,
    BwsJudgement,
    Continuation,
    ModelVersion,
    Prompt,
    Task,
    TaskItem,
    TrainingLog,
    TrainingRound,
    User,
    utcnow,
)
from app.services import charts, gold, model_versions
from tests.conftest import make_user
from tests.test_admin_pages import login, text_of

AUTO_R1 = {"mean_reward": 0.8125, "distinct_1": 0.4375, "distinct_2": 0.8125, "mean_length": 23.5, "perplexity": 17.25}


def seed_lineage(database, ppo_steps: int = 6) -> dict[str, int]:
    """base -> policy-r1 -> policy-r2, an imported source, two reward models, two rounds with PPO logs,
    BWS judgements on one mixed tuple (and one unmixed tuple that must not count)."""
    now = utcnow()
    with database.write() as db:
        base = ModelVersion(name="base-demo", kind="policy", algorithm="pretrain", path="policy/base")
        db.add(base)
        db.flush()
        r1 = ModelVersion(name="policy-r1", kind="policy", algorithm="ppo", parent_id=base.id, path="policy/r1",
                          metrics={"auto": AUTO_R1})
        reward1 = ModelVersion(name="reward-r1", kind="reward", algorithm="reward", parent_id=base.id, path="reward/r1",
                               metrics={"held_out_accuracy": 0.75, "train_accuracy": 0.9, "held_out_pairs": 40})
        source = ModelVersion(name="human-stories", kind="source", algorithm="import")
        db.add_all([r1, reward1, source])
        db.flush()
        r2 = ModelVersion(name="policy-r2", kind="policy", algorithm="ppo", parent_id=r1.id, path="policy/r2")
        reward2 = ModelVersion(name="reward-r2", kind="reward", algorithm="reward", parent_id=r1.id, path="reward/r2",
                               metrics={"held_out_accuracy": 0.825})
        db.add_all([r2, reward2])
        db.flush()
        db.add(TrainingRound(status="done", trigger="base", phase="done", policy_version_id=base.id,
                             started_at=now, finished_at=now))  # round 0: the base wrote its stories
        rounds = []
        for policy, reward in ((r1, reward1), (r2, reward2)):
            r = TrainingRound(status="done", trigger="auto", phase="done", policy_version_id=policy.id,
                              reward_version_id=reward.id, started_at=now, finished_at=now)
            db.add(r)
            db.flush()
            rounds.append(r.id)
            for step in range(1, ppo_steps + 1):
                db.add(TrainingLog(round_id=r.id, phase="ppo", step=step,
                                   metrics={"score": 0.1 * step + len(rounds), "kl": 0.05 * step, "policy_loss": -0.01 * step,
                                            "value_loss": 0.5 / step}))
        prompt = Prompt(text="The old clock struck thirteen.")
        db.add(prompt)
        db.flush()
        conts = {}
        for version, n in ((base, 3), (r1, 2)):
            for k in range(n):
                c = Continuation(prompt_id=prompt.id, model_version_id=version.id, text=f"{version.name} story {k}")
                db.add(c)
                db.flush()
                conts.setdefault(version.name, []).append(c.id)
    make_user(database, "ann1")
    make_user(database, "ann2")
    with database.write() as db:
        from app.models import Batch, User

        users = {u.username: u.id for u in db.scalars(select(User))}
        batch = Batch(name="mixed", kind="bws")
        db.add(batch)
        db.flush()
        b, p = conts["base-demo"], conts["policy-r1"]
        mixed = Task(batch_id=batch.id, kind="bws", prompt_id=prompt.id, required=2, done_count=2)
        mixed.items = [TaskItem(position=i, continuation_id=c) for i, c in enumerate([b[0], b[1], p[0], p[1]])]
        single = Task(batch_id=batch.id, kind="bws", prompt_id=prompt.id, required=1, done_count=1)
        single.items = [TaskItem(position=i, continuation_id=c) for i, c in enumerate([b[0], b[1], b[2]])]
        db.add_all([mixed, single])
        db.flush()
        # mixed tuple: ann1 best r1[0] worst base[0]; ann2 best r1[1] worst r1[0]. Unmixed: best base[0] worst base[1].
        for user, task, best, worst in (("ann1", mixed, p[0], b[0]), ("ann2", mixed, p[1], p[0]), ("ann1", single, b[0], b[1])):
            order = [i.continuation_id for i in task.items]
            a = Assignment(task_id=task.id, user_id=users[user], status="submitted", item_order=order,
                           leased_at=now, expires_at=now + timedelta(minutes=10), finished_at=now)
            db.add(a)
            db.flush()
            db.add(BwsJudgement(assignment_id=a.id, task_id=task.id, user_id=users[user], best_id=best, worst_id=worst,
                                shown_order=order, idempotency_key=f"seed-{a.id}-key", created_at=now))
    return {"base": base.id, "r1": r1.id, "r2": r2.id, "source": source.id, "round1": rounds[0], "round2": rounds[1]}


def test_mixed_bws_scores_by_hand(database):
    ids = seed_lineage(database)
    with database.read() as db:
        scores = model_versions.mixed_bws_scores(db)
    # base: 2 items x 2 judgements = 4 appearances, 0 best, 1 worst -> -0.25; r1: 4 appearances, 2 best, 1 worst -> +0.25.
    assert scores[ids["base"]] == {"score": -0.25, "appearances": 4, "best": 0, "worst": 1}
    assert scores[ids["r1"]] == {"score": 0.25, "appearances": 4, "best": 2, "worst": 1}
    assert ids["r2"] not in scores


def test_mixed_bws_scores_count_only_usable_judgements(client, database):
    """As exports and training do (gold.usable): an excluded annotator's judgements and answers to gold
    tasks leave the models page's BWS scores."""
    ids = seed_lineage(database)
    admin = make_user(database, "root", "admin")
    with database.write() as db:
        gold.exclude(db, db.scalar(select(User.id).where(User.username == "ann2")), admin, "gold accuracy 0 %")
    with database.read() as db:
        scores = model_versions.mixed_bws_scores(db)
    # ann1 on the mixed tuple only: base shown twice, worst once; r1 shown twice, best once.
    assert scores[ids["base"]] == {"score": -0.5, "appearances": 2, "best": 0, "worst": 1}
    assert scores[ids["r1"]] == {"score": 0.5, "appearances": 2, "best": 1, "worst": 0}
    login(client, "root")
    assert "+0.500" in text_of(client.get("/admin/models"))

    with database.write() as db:  # the mixed tuple becomes a gold check: no BWS data left
        mixed = db.scalar(select(Task.id).where(Task.required == 2))
        gold.mark(db, mixed, gold.GoldAnswer(best_id=db.get(Task, mixed).items[2].continuation_id))
    with database.read() as db:
        assert model_versions.mixed_bws_scores(db) == {}


def test_models_page_data(database):
    ids = seed_lineage(database, ppo_steps=6)
    page = model_versions.models_page(database)
    names = [(v.name, v.depth) for v in page.versions]
    assert names == [("base-demo", 0), ("policy-r1", 1), ("policy-r2", 2), ("human-stories", 0)]
    r1 = next(v for v in page.versions if v.id == ids["r1"])
    assert r1.auto == AUTO_R1 and r1.round_number == 1 and r1.parent_name == "base-demo"
    assert [(r.round_number, r.held_out_accuracy) for r in page.rewards] == [(1, 0.75), (2, 0.825)]
    assert len(page.ppo) == 12 and [p.x for p in page.ppo] == list(range(1, 13))
    assert page.round_starts == [(1, 1), (7, 2)]  # round numbers: round 0 is the base's


def test_models_page_renders_expected_numbers_and_charts(client, database):
    seed_lineage(database)
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get("/admin/models")
    assert page.status_code == 200, page.text
    text = text_of(page)
    for expected in ("base-demo", "policy-r1", "policy-r2", "human-stories", "+0.250", "-0.250",
                     "0.812", "0.438", "23.5", "17.2", "75.0 %", "82.5 %", "90.0 %"):
        assert expected in text, expected
    # lineage: r2 is shown under r1 under base
    assert text.index("base-demo") < text.index("policy-r1") < text.index("policy-r2")
    assert page.text.count("<svg") == 4  # score, KL, losses, reward accuracy
    assert page.text.count("<polyline") >= 4  # score, KL, policy loss, value loss
    for label in ("KL (nats per response)", "score (reward-model logit)", "held-out accuracy (%)", "chance (50 %)", "round 2"):
        assert label in page.text, label
    assert 'href="/admin/models" aria-current="page"' in page.text


def test_models_page_shows_evaluation_means(client, database, admin_headers):
    from tests.test_evaluation import ALPHA, BETA, _create_via_api, _rate_everything, seed_two_versions

    a, b, prompt_ids, _ = seed_two_versions(database)
    _create_via_api(client, admin_headers, [a, b], prompt_ids)
    from tests.conftest import token_headers

    for name in ("e1", "e2"):
        make_user(database, name, "evaluator")
    _rate_everything(client, database, {n: token_headers(client, n) for n in ("e1", "e2")}, {a: ALPHA, b: BETA},
                     {p: i for i, p in enumerate(prompt_ids)})
    page = model_versions.models_page(database)
    beta = next(v for v in page.versions if v.id == b)
    assert beta.eval_means["plot"] == pytest.approx(2.375) and beta.eval_n == 8
    make_user(database, "root", "admin")
    login(client, "root")
    assert "2.38" in text_of(client.get("/admin/models"))


def test_empty_models_page_renders(client, database):
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get("/admin/models")
    assert page.status_code == 200 and "no data yet" in page.text


def test_live_status_json(client, database):
    ids = seed_lineage(database)
    with database.write() as db:
        db.add(TrainingRound(status="running", phase="ppo", step=5, total_steps=20,
                             phase_started_at=utcnow() - timedelta(seconds=50), started_at=utcnow()))
    make_user(database, "root", "admin")
    login(client, "root")
    data = client.get("/admin/status.json").json()
    current = data["trainer"]["current"]
    assert (current["phase"], current["step"], current["total_steps"]) == ("ppo", 5, 20)
    assert current["eta_seconds"] == pytest.approx(150, abs=15)  # 50 s for 5 steps -> 150 s for 15 more
    assert data["throughput"]["last_5_min"] == 3 and data["throughput"]["per_minute"] == 0.6
    assert data["trainer"]["last"]["round_id"] == ids["round2"]
    dashboard = client.get("/admin")
    assert 'id="live-status"' in dashboard.text and "js/live_status.js" in dashboard.text


def test_charts_escape_text_and_label_axes():
    svg = charts.line_chart([charts.Series("<b>x</b>", [(1, 0.5), (2, 1.5)])], title="t & <t>", x_label="step",
                            y_label="KL (nats)")
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "&amp;" in svg and "KL (nats)" in svg
    assert charts.nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]
    assert charts.nice_ticks(1, 5) == [1, 2, 3, 4, 5]
    empty = charts.bar_chart([("r1", None)], title="t", x_label="x", y_label="y")
    assert "no data yet" in empty


# ---------------------------------------------------------------- latest reward model, new auto metrics, warnings


def seed_latest_rm_and_metrics(database) -> dict[str, int]:
    """seed_lineage plus a newest reward model (reward-r3) that scored base and r1, and new auto metrics on r2:
    perplexity 2.3x r1's (a warning), KL 0.9 nats (below the 1-nat floor: none), copy similarity 0.5 (none)."""
    ids = seed_lineage(database)
    with database.write() as db:
        r2 = db.get(ModelVersion, ids["r2"])
        r2.metrics = {"auto": {"perplexity": 40.0, "kl_to_reference": 0.9, "copy_similarity": 0.5, "eos_rate": 0.625,
                               "length_p10": 12, "length_p50": 31, "length_p90": 58, "mean_reward": 2.5}}
        r1 = db.get(ModelVersion, ids["r1"])
        r1.metrics = {"auto": {**AUTO_R1, "kl_to_reference": 0.5}}
        rm3 = ModelVersion(name="reward-r3", kind="reward", algorithm="reward", parent_id=ids["r2"], path="reward/r3",
                           metrics={"held_out_accuracy": 0.8,
                                    "version_scores": {str(ids["base"]): {"mean": -0.5, "n": 3},
                                                       str(ids["r1"]): {"mean": 0.75, "n": 2}}})
        db.add(rm3)
        db.flush()
        ids["rm3"] = rm3.id
    return ids


def test_latest_reward_model_column_and_warnings(database):
    ids = seed_latest_rm_and_metrics(database)
    page = model_versions.models_page(database)
    assert page.latest_rm.name == "reward-r3" and page.latest_rm.scored_versions == 2
    by_id = {v.id: v for v in page.versions}
    assert (by_id[ids["base"]].latest_rm_mean, by_id[ids["base"]].latest_rm_n) == (-0.5, 3)
    assert (by_id[ids["r1"]].latest_rm_mean, by_id[ids["r1"]].latest_rm_n) == (0.75, 2)
    assert by_id[ids["r2"]].latest_rm_mean is None
    assert [(w.version_name, w.code) for w in page.warnings] == [("policy-r2", "perplexity")]
    assert "2.3x over policy-r1's" in page.warnings[0].message


@pytest.mark.parametrize("auto, parent_auto, code", [
    ({"kl_to_reference": 2.5}, {"kl_to_reference": 1.0}, "kl"),  # more than doubled and above 1 nat
    ({"kl_to_reference": 0.9}, {"kl_to_reference": 0.2}, None),  # more than doubled, but under 1 nat
    ({"kl_to_reference": 1.9}, {"kl_to_reference": 1.0}, None),  # above 1 nat, not doubled
    ({"kl_to_reference": 1.6}, {"kl_to_reference": 0.0}, None),  # a first round off the reference: no jump
    ({"kl_to_reference": 12.5}, {"kl_to_reference": 0.0}, "kl"),  # but far from it all the same
    ({"copy_similarity": 0.81}, {}, "copy"),
    ({"copy_similarity": 0.8}, {}, None),
    ({"eos_rate": 0.0}, {}, "eos"),
    ({"eos_rate": 0.05}, {}, None),
    ({"perplexity": 15.0}, {"perplexity": 10.0}, None),  # 1.5x exactly: not more than
    ({"perplexity": 15.1}, {"perplexity": 10.0}, "perplexity"),
    ({"perplexity": 99.0}, {}, None),  # parent without perplexity: not judged
])
def test_warning_thresholds(database, auto, parent_auto, code):
    with database.write() as db:
        parent = ModelVersion(name="p", kind="policy", algorithm="ppo", metrics={"auto": parent_auto})
        db.add(parent)
        db.flush()
        db.add(ModelVersion(name="c", kind="policy", algorithm="ppo", parent_id=parent.id, metrics={"auto": auto}))
    with database.read() as db:
        found = [(w.version_name, w.code) for w in model_versions.version_warnings(db)]
    assert found == ([("c", code)] if code else [])


def test_models_page_shows_latest_rm_new_metrics_and_warnings(client, database):
    ids = seed_latest_rm_and_metrics(database)
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get("/admin/models")
    assert page.status_code == 200, page.text
    text = text_of(page)
    assert "scored by reward-r3" in text and "recomputed each round" in text
    assert "Reward (latest RM)" in text and "own round's RM" in text
    row = re.search(rf'<tr data-version="{ids["r1"]}">.*?</tr>', page.text, re.S).group(0)
    assert "+0.750" in row and "n=2" in row
    auto_r2 = re.search(rf'<table id="auto">.*?<tr data-version="{ids["r2"]}">(.*?)</tr>', page.text, re.S).group(1)
    for expected in ("12 / 31 / 58", "62 %", "0.90", "0.50", "40.0", "+2.500"):
        assert expected in auto_r2, expected
    auto_r1 = re.search(rf'<table id="auto">.*?<tr data-version="{ids["r1"]}">(.*?)</tr>', page.text, re.S).group(1)
    assert "– / – / –" in auto_r1  # old version without the new metrics
    warnings = re.search(r'<section class="card warnings".*?</section>', page.text, re.S).group(0)
    assert "policy-r2" in warnings and "perplexity under the base rose 2.3x" in warnings
    assert "copy the previous" not in warnings and "KL to the reference" not in warnings


def test_models_page_without_reward_model_says_so(client, database):
    with database.write() as db:
        db.add(ModelVersion(name="base-only", kind="policy", algorithm="pretrain", metrics={"auto": {"eos_rate": 0.5}}))
    make_user(database, "root", "admin")
    login(client, "root")
    text = text_of(client.get("/admin/models"))
    assert "no reward model yet" in text and "No warnings" in text
