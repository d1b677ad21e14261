"""Evaluation campaigns: building the blind eval batch, rating it, the numbers on the results, blindness.

Runs on SQLite and PostgreSQL. The results are checked against hand-computed means, Wilcoxon p-values
and Krippendorff's alpha on a crafted campaign of 2 versions x 4 prompts rated by 2 evaluators.
"""

import csv
import io
import json

import krippendorff
import numpy as np
import pytest
from scipy import stats
from sqlalchemy import select

from app.models import (
    Assignment,
    Batch,
    Campaign,
    Continuation,
    GenerationRequest,
    ModelVersion,
    Prompt,
    Task,
    User,
)
from app.services import evaluation
from app.services.evaluation import CampaignCreate
from app.services.scoring import bootstrap_mean_ci
from tests.conftest import make_user, token_headers
from tests.test_admin_pages import login, text_of

ALPHA, BETA = "SECRET-ALPHA-policy", "SECRET-BETA-source"

# Scores per dimension, version and evaluator over prompts 0..3 (hand-made so the statistics are easy).
SCORES = {
    "grammar": {ALPHA: {"e1": [4, 4, 5, 5], "e2": [4, 4, 5, 5]}, BETA: {"e1": [3, 3, 4, 4], "e2": [3, 3, 4, 4]}},
    "creativity": {ALPHA: {"e1": [3, 3, 3, 3], "e2": [3, 3, 3, 3]}, BETA: {"e1": [3, 3, 3, 3], "e2": [3, 3, 3, 3]}},
    "consistency": {ALPHA: {"e1": [1, 2, 3, 4], "e2": [2, 2, 4, 4]}, BETA: {"e1": [5, 4, 3, 2], "e2": [4, 4, 3, 1]}},
    "plot": {ALPHA: {"e1": [5, 4, 5, 4], "e2": [4, 4, 5, 5]}, BETA: {"e1": [3, 2, 3, 1], "e2": [2, 3, 3, 2]}},
}


def seed_two_versions(database, prompts: int = 4, alpha_has: int | None = None, beta_has: int | None = None):
    """Two versions (a policy and an imported source) with two continuations per prompt each (unless
    `*_has` limits them to the first n prompts). Returns (alpha id, beta id, prompt ids, earliest ids)."""
    with database.write() as db:
        a = ModelVersion(name=ALPHA, kind="policy", algorithm="ppo")
        b = ModelVersion(name=BETA, kind="source", algorithm="import")
        db.add_all([a, b])
        db.flush()
        prompt_ids, earliest = [], {}
        for i in range(prompts):
            p = Prompt(text=f"Prompt {i}: the lighthouse keeper heard a knock.")
            db.add(p)
            db.flush()
            prompt_ids.append(p.id)
            for version, has in ((a, alpha_has), (b, beta_has)):
                if has is not None and i >= has:
                    continue
                for k in range(2):
                    c = Continuation(prompt_id=p.id, model_version_id=version.id, text=f"Story {k} by someone about prompt {i}.")
                    db.add(c)
                    db.flush()
                    earliest.setdefault((version.id, p.id), c.id)
        return a.id, b.id, prompt_ids, earliest


def _create_via_api(client, headers, version_ids, prompt_ids, required=2):
    response = client.post("/api/v1/admin/campaigns", headers=headers,
                           json={"name": "alpha vs beta", "model_version_ids": version_ids, "prompt_ids": prompt_ids,
                                 "required": required, "seed": 7})
    assert response.status_code == 201, response.text
    return response.json()


def _rate_everything(client, database, evaluator_headers: dict[str, dict], version_names, prompt_index):
    """Each evaluator takes every eval task through the API and rates it from SCORES."""
    with database.read() as db:
        owner = {c.id: (version_names[c.model_version_id], prompt_index[c.prompt_id])
                 for c in db.scalars(select(Continuation))}
    for name, headers in evaluator_headers.items():
        while True:
            r = client.post("/api/v1/tasks/next", headers=headers)
            if r.status_code == 204:
                break
            task = r.json()
            assert task["kind"] == "eval" and len(task["items"]) == 1
            with database.read() as db:  # the evaluator sees a handle; the test looks the story up
                [continuation_id] = db.get(Assignment, task["assignment_id"]).item_order
            version, i = owner[continuation_id]
            body = {d: SCORES[d][version][name][i] for d in SCORES}
            body["idempotency_key"] = f"{name}-{task['assignment_id']}-key"
            body["comment"] = "fine" if i == 0 else ""
            s = client.post(f"/api/v1/tasks/{task['assignment_id']}/rating", headers=headers, json=body)
            assert s.status_code == 200 and s.json()["counted"], s.text


@pytest.fixture
def rated_campaign(client, database, admin_headers):
    a, b, prompt_ids, earliest = seed_two_versions(database)
    info = _create_via_api(client, admin_headers, [a, b], prompt_ids)
    for name in ("e1", "e2"):
        make_user(database, name, "evaluator")
    headers = {name: token_headers(client, name) for name in ("e1", "e2")}
    _rate_everything(client, database, headers, {a: ALPHA, b: BETA}, {p: i for i, p in enumerate(prompt_ids)})
    return info["id"], a, b, prompt_ids, earliest


def _per_prompt_means(dim, version):
    return [(x + y) / 2 for x, y in zip(SCORES[dim][version]["e1"], SCORES[dim][version]["e2"])]


# ---------------------------------------------------------------- building


def test_campaign_with_existing_continuations_opens_with_one_eval_task_per_version_and_prompt(client, database, admin_headers):
    a, b, prompt_ids, earliest = seed_two_versions(database)
    info = _create_via_api(client, admin_headers, [a, b], prompt_ids, required=3)
    assert info["status"] == "open" and info["items"] == 8 and info["requests_pending"] == 0
    with database.read() as db:
        campaign = db.get(Campaign, info["id"])
        batch = db.get(Batch, campaign.batch_id)
        tasks = db.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)).all()
    assert batch.kind == "eval" and batch.annotations_per_task == 3
    assert all(t.kind == "eval" and t.required == 3 and len(t.items) == 1 for t in tasks)
    # The earliest continuation of each (version, prompt), each once.
    assert sorted(t.items[0].continuation_id for t in tasks) == sorted(earliest.values())
    # Seeded random order: versions and prompts interleaved, not grouped.
    order = [t.items[0].continuation_id for t in tasks]
    assert order != sorted(order)


def test_campaign_needs_two_versions_and_writers_only(client, database, admin_headers):
    a, b, prompt_ids, _ = seed_two_versions(database)
    r = client.post("/api/v1/admin/campaigns", headers=admin_headers,
                    json={"model_version_ids": [a, a], "prompt_ids": prompt_ids})
    assert r.status_code == 422
    with database.write() as db:
        reward = ModelVersion(name="reward-r1", kind="reward", algorithm="reward")
        db.add(reward)
        db.flush()
        reward_id = reward.id
    r = client.post("/api/v1/admin/campaigns", headers=admin_headers,
                    json={"model_version_ids": [a, reward_id], "prompt_ids": prompt_ids})
    assert r.status_code == 422 and "reward-r1" in r.json()["detail"]


def test_annotators_get_no_eval_tasks(client, database, admin_headers):
    a, b, prompt_ids, _ = seed_two_versions(database)
    _create_via_api(client, admin_headers, [a, b], prompt_ids)
    make_user(database, "ann", "annotator")
    assert client.post("/api/v1/tasks/next", headers=token_headers(client, "ann")).status_code == 204
    make_user(database, "eve", "evaluator")
    r = client.post("/api/v1/tasks/next", headers=token_headers(client, "eve"))
    assert r.status_code == 200 and r.json()["kind"] == "eval"


def test_missing_continuations_become_generation_requests_and_the_campaign_opens_once_written(client, database, admin_headers):
    a, b, prompt_ids, _ = seed_two_versions(database, prompts=3, alpha_has=1)  # alpha lacks prompts 1 and 2
    info = _create_via_api(client, admin_headers, [a, b], prompt_ids)
    assert info["status"] == "waiting_for_generation" and info["items"] == 0 and info["requests_pending"] == 2
    with database.read() as db:
        requests = db.scalars(select(GenerationRequest).order_by(GenerationRequest.id)).all()
    assert [(r.model_version_id, r.prompt_id, r.status) for r in requests] == [(a, prompt_ids[1], "pending"), (a, prompt_ids[2], "pending")]

    # What trainer/eval_generation.py does, faked: write one continuation, mark the request done.
    with database.write() as db:
        db.add(Continuation(prompt_id=prompt_ids[1], model_version_id=a, text="A fresh story."))
        db.get(GenerationRequest, requests[0].id).status = "done"
        assert evaluation.open_pending_campaigns(db) == []  # one is still pending
    with database.write() as db:
        db.add(Continuation(prompt_id=prompt_ids[2], model_version_id=a, text="Another fresh story."))
        db.get(GenerationRequest, requests[1].id).status = "done"
        assert evaluation.open_pending_campaigns(db) == [info["id"]]
    r = client.get(f"/api/v1/admin/campaigns/{info['id']}", headers=admin_headers)
    assert r.json()["status"] == "open" and r.json()["items"] == 6


def test_a_failed_request_leaves_its_prompt_out(database):
    a, b, prompt_ids, _ = seed_two_versions(database, prompts=2, beta_has=1)  # the source lacks prompt 1
    with database.write() as db:
        campaign = evaluation.create_campaign(db, CampaignCreate(model_version_ids=[a, b], prompt_ids=prompt_ids))
        campaign_id = campaign.id
        request = db.scalar(select(GenerationRequest))
        request.status, request.error = "failed", "an imported source cannot write"
        assert evaluation.open_pending_campaigns(db) == [campaign_id]
    with database.read() as db:
        info = evaluation.get_campaign(db, campaign_id)
    assert info.status == "open" and info.items == 2 and info.requests_failed == 1
    assert str(prompt_ids[1]) in info.note


# ---------------------------------------------------------------- results


def test_results_match_hand_computed_numbers(client, database, rated_campaign, admin_headers):
    campaign_id, a, b, prompt_ids, _ = rated_campaign
    r = client.get(f"/api/v1/admin/campaigns/{campaign_id}/results", headers=admin_headers)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["campaign"]["ratings"] == 16 and res["campaign"]["items_complete"] == 8 and res["evaluators"] == 2
    means = {(m["version"], m["dimension"]): m for m in res["means"]}

    # Means: plot ALPHA = (18 + 18) / 8 = 4.5, BETA = (9 + 10) / 8 = 2.375; grammar 4.5 and 3.5; creativity 3.
    assert means[(ALPHA, "plot")]["mean"] == pytest.approx(4.5)
    assert means[(BETA, "plot")]["mean"] == pytest.approx(2.375)
    assert means[(ALPHA, "grammar")]["mean"] == pytest.approx(4.5)
    assert means[(BETA, "grammar")]["mean"] == pytest.approx(3.5)
    assert means[(ALPHA, "creativity")]["mean"] == means[(ALPHA, "creativity")]["ci_low"] == 3.0
    # overall: the mean of a rating's four scores, averaged
    alpha_overall = np.mean([np.mean([SCORES[d][ALPHA][e][i] for d in SCORES]) for e in ("e1", "e2") for i in range(4)])
    assert means[(ALPHA, "overall")]["mean"] == pytest.approx(alpha_overall)
    for m in res["means"]:
        assert m["n"] == 8
        assert 1 <= m["ci_low"] <= m["mean"] <= m["ci_high"] <= 5
    values = SCORES["consistency"][ALPHA]["e1"] + SCORES["consistency"][ALPHA]["e2"]
    _, low, high = bootstrap_mean_ci(values, 0.95, 2000, seed=0)
    assert (means[(ALPHA, "consistency")]["ci_low"], means[(ALPHA, "consistency")]["ci_high"]) == pytest.approx((low, high))

    paired = {p["dimension"]: p for p in res["paired"]}
    assert set(paired) == set(evaluation.DIMENSIONS)
    # plot: per-prompt means ALPHA 4.5 4 5 4.5, BETA 2.5 2.5 3 1.5 -> differences 2, 1.5, 2, 3: all positive.
    # W- = 0, so W = 0; exact two-sided p with n = 4 is 2 / 2^4 = 0.125; rank-biserial +1.
    p = paired["plot"]
    assert (p["version_a"], p["version_b"], p["n"], p["n_nonzero"]) == (ALPHA, BETA, 4, 4)
    assert p["mean_difference"] == pytest.approx(2.125)
    assert p["wilcoxon_statistic"] == 0.0 and p["p_value"] == pytest.approx(0.125) and p["rank_biserial"] == 1.0
    assert p["significant"] is False
    # creativity: every difference zero -> no evidence.
    assert (paired["creativity"]["p_value"], paired["creativity"]["rank_biserial"]) == (1.0, 0.0)
    # consistency matches scipy on the per-prompt means.
    d = np.array(_per_prompt_means("consistency", ALPHA)) - np.array(_per_prompt_means("consistency", BETA))
    assert d.tolist() == [-3.0, -2.0, 0.5, 2.5]
    expected = stats.wilcoxon(d)
    assert paired["consistency"]["wilcoxon_statistic"] == pytest.approx(expected.statistic)
    assert paired["consistency"]["p_value"] == pytest.approx(expected.pvalue)
    # ranks of |d|: 0.5->1, 2->2, 2.5->3, 3->4; W+ = 1 + 3 = 4, W- = 2 + 4 = 6; r = (4 - 6) / 10
    assert paired["consistency"]["rank_biserial"] == pytest.approx(-0.2)

    alpha = {x["dimension"]: x for x in res["agreement"]}
    assert alpha["grammar"]["alpha"] == pytest.approx(1.0)  # the two evaluators agree exactly
    assert alpha["creativity"]["alpha"] is None  # everyone gave 3: undefined
    assert alpha["grammar"]["units"] == 8
    # consistency: the 2 x 8 reliability matrix built by hand, items in (ALPHA p0..p3, BETA p0..p3) order
    matrix = np.array([SCORES["consistency"][ALPHA]["e1"] + SCORES["consistency"][BETA]["e1"],
                       SCORES["consistency"][ALPHA]["e2"] + SCORES["consistency"][BETA]["e2"]], dtype=float)
    assert alpha["consistency"]["alpha"] == pytest.approx(krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal"))


def test_api_results_csv_is_a_download_named_like_the_pages(client, database, rated_campaign, admin_headers):
    campaign_id, *_ = rated_campaign
    r = client.get(f"/api/v1/admin/campaigns/{campaign_id}/results.csv", headers=admin_headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == f'attachment; filename="campaign-{campaign_id}-results.csv"'
    assert r.text.startswith("table,")


def test_results_export_as_csv_and_json(client, database, rated_campaign, admin_headers):
    campaign_id, *_ = rated_campaign
    make_user(database, "root", "admin")
    login(client, "root")
    r = client.get(f"/admin/campaigns/{campaign_id}/results.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    plot = next(x for x in rows if x["table"] == "mean" and x["version_a"] == BETA and x["dimension"] == "plot")
    assert float(plot["mean"]) == pytest.approx(2.375) and plot["n"] == "8"
    paired = next(x for x in rows if x["table"] == "paired" and x["dimension"] == "plot")
    assert float(paired["p_value"]) == pytest.approx(0.125)
    assert {x["table"] for x in rows} == {"mean", "paired", "agreement"}
    j = client.get(f"/admin/campaigns/{campaign_id}/results.json")
    assert j.status_code == 200
    data = json.loads(j.text)
    assert data["campaign"]["id"] == campaign_id and len(data["means"]) == 2 * len(evaluation.DIMENSIONS)


def test_results_leave_out_an_excluded_evaluator(client, database, rated_campaign, admin_headers):
    """Campaign results read only usable ratings (gold.usable), as exports and training do: excluding
    e2 leaves e1's ratings alone in the means, the paired tests and results.csv."""
    campaign_id, *_ = rated_campaign
    before = client.get(f"/api/v1/admin/campaigns/{campaign_id}/results.csv", headers=admin_headers).text
    with database.read() as db:
        e2 = db.scalar(select(User.id).where(User.username == "e2"))
    excluded = client.put(f"/api/v1/admin/users/{e2}/exclusion", headers=admin_headers, json={"note": "careless"})
    assert excluded.status_code == 200, excluded.text
    after = client.get(f"/api/v1/admin/campaigns/{campaign_id}/results.csv", headers=admin_headers).text
    assert after != before
    rows = list(csv.DictReader(io.StringIO(after)))
    plot = next(x for x in rows if x["table"] == "mean" and x["version_a"] == BETA and x["dimension"] == "plot")
    assert (plot["n"], float(plot["mean"])) == ("4", pytest.approx(sum(SCORES["plot"][BETA]["e1"]) / 4))
    assert {x["n"] for x in rows if x["table"] == "agreement"} == {"0"}  # no item has two usable ratings left
    res = client.get(f"/api/v1/admin/campaigns/{campaign_id}/results", headers=admin_headers).json()
    assert res["evaluators"] == 1
    assert {(m["n"]) for m in res["means"]} == {4}
    with database.read() as db:
        assert {means["n"] for means in evaluation.version_means(db, campaign_id).values()} == {4}


def test_results_page_shows_the_numbers(client, database, rated_campaign):
    campaign_id, *_ = rated_campaign
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get(f"/admin/campaigns/{campaign_id}")
    assert page.status_code == 200, page.text
    text = text_of(page)
    assert ALPHA in text and BETA in text
    assert "4.50" in text and "%.2f" % 2.375 in text  # plot means
    assert "+2.12" in text or "+2.13" in text  # plot mean difference
    assert "0.125" in text  # its p-value
    assert "1.000" in text  # grammar alpha
    assert "8 / 8" in text and "16" in text
    assert page.text.count("<svg") >= 1 and "bootstrap confidence intervals" in page.text
    listing = client.get("/admin/campaigns")
    assert listing.status_code == 200 and f"/admin/campaigns/{campaign_id}" in listing.text


def test_admin_creates_a_campaign_with_the_form(client, database):
    a, b, prompt_ids, _ = seed_two_versions(database)
    make_user(database, "root", "admin")
    login(client, "root")
    from tests.test_admin_pages import csrf_of

    token = csrf_of(client, "/admin/campaigns")
    r = client.post("/admin/campaigns", data={"csrf": token, "name": "form made", "required": "2", "seed": "1",
                                              "model_version_ids": [str(a), str(b)], "prompt_ids_text": ", ".join(map(str, prompt_ids[:2]))},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/admin/campaigns/")
    page = client.get(r.headers["location"])
    assert "form made" in page.text and "0 / 4" in text_of(page)
    # Too few versions: refused with a message.
    r = client.post("/admin/campaigns", data={"csrf": token, "model_version_ids": [str(a)], "first_active": "2"})
    assert "at least two" in r.text


# ---------------------------------------------------------------- blindness


def test_nothing_an_evaluator_can_reach_names_the_version(client, database, admin_headers):
    a, b, prompt_ids, _ = seed_two_versions(database)
    campaign = _create_via_api(client, admin_headers, [a, b], prompt_ids)
    make_user(database, "eve", "evaluator")
    api = token_headers(client, "eve")
    secret = (ALPHA, BETA, "SECRET", "model_version", "policy", "source")

    def check(response, where):
        assert response.status_code < 500, where
        body = response.text
        for word in secret:
            assert word not in body, f"{where} reveals {word!r}"

    # API
    r = client.post("/api/v1/tasks/next", headers=api)
    check(r, "POST /api/v1/tasks/next")
    assignment = r.json()["assignment_id"]
    assert set(r.json()) == {"assignment_id", "kind", "prompt", "items", "expires_at"}
    assert set(r.json()["items"][0]) == {"handle", "text"}
    for url in (f"/api/v1/tasks/{assignment}", "/api/v1/me", "/api/v1/me/progress"):
        check(client.get(url, headers=api), url)
    for url in ("/api/v1/admin/campaigns", f"/api/v1/admin/campaigns/{campaign['id']}/results",
                "/api/v1/admin/overview", "/api/v1/admin/training/status"):
        assert client.get(url, headers=api).status_code in (403, 404), url

    # Pages
    login(client, "eve")
    for url in ("/", "/evaluate", "/guidelines", f"/task/{assignment}", "/done?queue=evaluate"):
        check(client.get(url), url)
    page = client.get(f"/task/{assignment}")
    assert 'action="/task/%d/rating"' % assignment in page.text and "fieldset" in page.text
    for url in ("/admin", "/admin/campaigns", f"/admin/campaigns/{campaign['id']}", "/admin/models", "/admin/status.json",
                f"/admin/campaigns/{campaign['id']}/results.csv"):
        r = client.get(url, follow_redirects=False)
        assert r.status_code == 403, url
        check(r, url)

    # Rate one through the page form, then walk on: the next task page is blind too.
    token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    r = client.post(f"/task/{assignment}/rating", data={"csrf": token, "idempotency_key": "page-key-0001", "grammar": "4",
                                                        "creativity": "4", "consistency": "4", "plot": "4", "comment": "ok"},
                    follow_redirects=True)
    check(r, "after submitting")
    assert "/task/" in str(r.url)
    with database.read() as db:
        from app.models import Rating

        rating = db.scalar(select(Rating))
        assert rating.comment == "ok" and rating.grammar == 4
