"""Every page readable at phone width (390 px) and at desktop width (1280 px), in headless Chromium.

One site with demo-like data, seeded once: the demo's six writers plus a base policy and six trained
rounds (13 versions that wrote stories), reward models and PPO logs, BWS judgements and ratings from
four annotators this hour, a gold task, a four-version evaluation campaign rated by three evaluators, a
crowd link with a participant, an open invite and an API token. Each page, as the role that sees it:

- the page itself never scrolls sideways (document.scrollingElement.scrollWidth <= the viewport);
- every table cell and every chart lies within the viewport and within any scroll box around it: wide
  tables reflow instead of hiding columns behind a sideways scroll; the one chart that may scroll, the
  dashboard's judgements per hour, opens at the current hour;
- the content named for the page (the stories of all 13 versions, the campaign's second version, the
  paired tests and alpha, the reliability values, batch progress, the leaderboard's last column) is there
  and within view.
"""

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.config import Settings
from app.demo import seed_demo
from app.demo_data import demo_prompts
from app.models import Continuation, ModelVersion, Prompt, Task, TrainingLog, TrainingRound, User, utcnow
from app.services import crowd, evaluation, gold, tasks, users
from app.services.evaluation import CampaignCreate
from app.services.tasks import RatingSubmission
from tests.conftest import PASSWORD, TEST_SECRET_KEY, make_user
from tests.factories import submit_bws_by_ids
from tests.test_browser import playwright_browser, serve  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

VIEWPORTS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}
POLICIES = [("base-demo", "pretrain")] + [(f"policy-r{r}", ("ppo", "alol", "dpo")[r % 3]) for r in range(1, 7)]
POLICY_PROMPTS = 10  # the policies wrote stories for the first ten prompts: one page of the stories table
CAMPAIGN_VERSIONS = ("base-demo", "policy-r6", "demo-careful", "demo-wild")
LONG_ERROR = ("RuntimeError: could not load the reward backbone 'some-organisation/a-rather-long-model-name-v2' "
              "from the hub: the host is unreachable (check the network or set STORYLOOP_REWARD_BACKBONE to a local folder)")


def _seed_versions(database) -> None:
    """The base policy and six trained rounds, each with a reward model, PPO logs, automatic metrics and a
    story for each of the first prompts; round 0 (the base) and a failed round 7 in the history."""
    now = utcnow()
    prompts = demo_prompts()
    with database.write() as db:
        prompt_ids = db.scalars(select(Prompt.id).order_by(Prompt.id).limit(POLICY_PROMPTS)).all()
        parent = base_id = None
        for r, (name, algorithm) in enumerate(POLICIES):
            version = ModelVersion(name=name, kind="policy", algorithm=algorithm, parent_id=parent, path=f"policy/{name}",
                                   metrics={"auto": {"mean_reward": -0.4 + 0.2 * r, "distinct_1": 0.47 - 0.01 * r,
                                                     "distinct_2": 0.84 - 0.02 * r, "mean_length": 60.0 + r,
                                                     "length_p10": 31, "length_p50": 58, "length_p90": 80, "eos_rate": 0.875,
                                                     "perplexity": 19.8 + r, "kl_to_reference": 0.3 * r,
                                                     "copy_similarity": 0.21},
                                            "compute": {"seconds": 412.0 + r, "peak_memory_mb": 1834.0, "device": "cuda:0"}})
            db.add(version)
            db.flush()
            parent = version.id
            base_id = base_id or version.id
            for i, prompt_id in enumerate(prompt_ids):
                story = prompts[i].continuations[r % len(prompts[i].continuations)].text
                db.add(Continuation(prompt_id=prompt_id, model_version_id=version.id, text=f"{story} ({name})"))
            if r == 0:
                db.add(TrainingRound(status="done", trigger="base", phase="done", policy_version_id=version.id,
                                     started_at=now, finished_at=now))
                continue
            reward = ModelVersion(name=f"reward-r{r}", kind="reward", algorithm="reward", parent_id=base_id,
                                  path=f"reward/r{r}", metrics={"held_out_accuracy": 0.6 + 0.03 * r, "train_accuracy": 0.8,
                                                                "held_out_pairs": 40 * r})
            db.add(reward)
            db.flush()
            training_round = TrainingRound(status="done", trigger="auto", phase="done", algorithm=algorithm,
                                           policy_version_id=version.id, reward_version_id=reward.id,
                                           judgements_used=120 * r, started_at=now - timedelta(hours=1), finished_at=now)
            db.add(training_round)
            db.flush()
            for step in range(1, 13):
                db.add(TrainingLog(round_id=training_round.id, phase="ppo", step=step, metrics={
                    "score": 0.1 * step + r, "kl": 0.05 * step, "policy_loss": -0.01 * step, "value_loss": 0.5 / step,
                    "kl_coef": 0.05}))
        db.add(TrainingRound(status="failed", trigger="admin", phase="reward model", algorithm="ppo", error=LONG_ERROR,
                             started_at=now, finished_at=now))


def _judge(database, usernames: list[str], per_person: int) -> None:
    """Each annotator leases and answers `per_person` tasks through the task service (best the first shown,
    worst the last; ratings 4 3 4 2), so the judgements land in this hour of the dashboard's chart."""
    for n, username in enumerate(usernames):
        with database.read() as db:
            user = db.scalar(select(User).where(User.username == username))
        for k in range(per_person):
            leased = asyncio.run(tasks.next_task(database, user, 600))
            if leased is None:
                break
            key = f"{username}-{leased.assignment_id}-layout"
            if leased.kind == "bws":
                submit_bws_by_ids(database, user, leased, leased.items[0].continuation_id,
                                  leased.items[-1].continuation_id, idempotency_key=key, duration_ms=9000 + 300 * k)
            else:
                scores = {"grammar": 4, "creativity": 3 + (n + k) % 2, "consistency": 4, "plot": 2 + n % 3}
                asyncio.run(tasks.submit_rating(database, user, leased.assignment_id,
                                                RatingSubmission(**scores, idempotency_key=key, duration_ms=15000)))


def _seed_campaign(database) -> int:
    with database.read() as db:
        versions = {v.name: v.id for v in db.scalars(select(ModelVersion))}
        prompt_ids = db.scalars(select(Prompt.id).order_by(Prompt.id).limit(5)).all()
    with database.write() as db:
        campaign = evaluation.create_campaign(db, CampaignCreate(
            name="round 6 against the base and two imported writers",
            model_version_ids=[versions[n] for n in CAMPAIGN_VERSIONS], prompt_ids=prompt_ids, required=2, seed=1))
        campaign_id = campaign.id
    for name in ("eva", "ezra", "elin"):
        make_user(database, name, "evaluator")
    with database.read() as db:
        quality = {c.id: 2 + CAMPAIGN_VERSIONS.index(n) % 3
                   for n in CAMPAIGN_VERSIONS for c in db.scalars(select(Continuation).where(
                       Continuation.model_version_id == versions[n]))}
    for bias, name in enumerate(("eva", "ezra")):  # elin leaves hers for the evaluator's pages
        with database.read() as db:
            user = db.scalar(select(User).where(User.username == name))
        while (leased := asyncio.run(tasks.next_task(database, user, 600, kinds=("eval",)))) is not None:
            q = quality[leased.items[0].continuation_id] + bias
            asyncio.run(tasks.submit_rating(database, user, leased.assignment_id, RatingSubmission(
                grammar=min(5, q + 1), creativity=q, consistency=min(5, q + leased.assignment_id % 2), plot=q,
                idempotency_key=f"{name}-{leased.assignment_id}-layout", duration_ms=20000)))
    return campaign_id


def seed_site(database, settings: Settings) -> dict:
    seed_demo(database, settings, admin_password=PASSWORD)
    _seed_versions(database)
    annotators = ["annotator-one", "annotator-two", "a-rather-long-annotator-name", "ann"]
    for name in annotators:
        make_user(database, name)
    with database.write() as db:
        first_bws = db.scalars(select(Task).where(Task.kind == "bws").order_by(Task.id)).first()
        items = [i.continuation_id for i in first_bws.items]
        gold.mark(db, first_bws.id, gold.GoldAnswer(best_id=items[0], worst_id=items[-1]))
        admin = db.scalar(select(User).where(User.username == "admin"))
        invite_token = users.create_invite(db, "evaluator", admin).token
        link = crowd.create_crowd_invite(db, admin, platform="prolific", task_quota=20, session_minutes=45,
                                         completion_code="C0DE42", name="Pilot study, March",
                                         completion_url="https://app.prolific.com/submissions/complete?cc=C0DE42")
        link_path = crowd.link_template(link)
        ids_given = {"PROLIFIC_PID": "5f1a2b3c4d5e6f7a8b9c0d1e", "STUDY_ID": "60aa11bb22cc33dd44ee55ff", "SESSION_ID": "s1"}
        crowd.join(db, link.token, crowd.platform_ids("prolific", ids_given), utcnow(), "127.0.0.1",
                   crowd.NewAccountLimits.of(settings))
        ann = db.scalar(select(User).where(User.username == "ann"))
        users.create_api_token(db, ann, settings, utcnow(), name="a script that exports every night")
    gold.set_settings(database, gold.GoldSettings(rate=0.2, accuracy_threshold=0.7, min_answers=1))
    _judge(database, annotators[:3], per_person=24)
    campaign_id = _seed_campaign(database)
    joined = link_path
    for key, value in ids_given.items():
        joined = joined.replace(f"{{{{%{key}%}}}}", value)
    with database.read() as db:
        batch_id = db.scalar(select(Task.batch_id).where(Task.kind == "bws").order_by(Task.id))
    return {"campaign": campaign_id, "gold_task": first_bws.id, "batch": batch_id, "join": joined, "invite": invite_token}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("layout")
    with serve(tmp) as (server, database):
        settings = Settings(database_url=str(database.engine.url), data_dir=tmp / "data", secret_key=TEST_SECRET_KEY)
        # In a thread of its own: the task service's coroutines need an event loop, and Playwright's
        # synchronous API already runs one in this thread.
        with ThreadPoolExecutor(1) as pool:
            seeded = pool.submit(seed_site, database, settings).result()
        yield server, database, seeded


@pytest.fixture(scope="module")
def sessions(playwright_browser, site):  # noqa: F811 (fixture)
    """Each role's signed-in browser state, signed in once: the pages then open straight away."""
    server, _, _ = site
    states = {}
    for username in ("admin", "ann", "elin"):
        context = playwright_browser.new_context(base_url=server.url)
        page = context.new_page()
        page.goto("/login")
        page.fill("#username", username)
        page.fill("#password", PASSWORD)
        with page.expect_navigation():
            page.locator("form.stack button").click()
        assert "/login" not in page.url, page.locator("body").inner_text()
        states[username] = context.storage_state()
        context.close()
    return states


# Per page: who opens it and what must be in view there (CSS selectors; each must match at least once).
ADMIN_PAGES = {
    "/admin": ["#shr", "#batches progress", "#dimensions td", "#annotators td"],
    "/admin/scores": ["#scores td.story"],
    "/admin/import": [],
    "/admin/batches": ["#batches td.actions"],
    "/admin/users": ["#users td.actions", "#invites td.link-cell"],
    "/admin/crowd": ["#crowd-links td.link-cell", "table.crowd-participants td"],
    "/admin/gold": ["#gold-annotators td", "#gold-items td.actions"],
    "/admin/gold?batch_id={batch}": ["#candidates td"],
    "/admin/gold?task_id={gold_task}": ["#marking input[name=worst_id]"],
    "/admin/exports": [],
    "/admin/training": ["#rounds td", "#kl-chart svg"],
    "/admin/campaigns": ["#campaigns td"],
    "/admin/campaigns/{campaign}": ['#means td[data-version]', "#paired td", "#agreement td"],
    "/admin/models": ["#versions td.eval", "#auto td.compute", "#rewards td"],
    "/admin/stories": ["#stories .story-cell", "#stories .prompt-text"],
    "/admin/stories?limit=3&offset=8": ["#stories .story-cell"],
    "/account": [],
    "/api/docs": [],
}
ANNOTATOR_PAGES = {"/annotate": [], "/task": ["#submit-btn"], "/guidelines": [], "/account": ["#tokens td.actions"]}
EVALUATOR_PAGES = {"/evaluate": [], "/task": ["#submit-btn"]}
PAGES = ([("admin", path, keys) for path, keys in ADMIN_PAGES.items()]
         + [("ann", path, keys) for path, keys in ANNOTATOR_PAGES.items()]
         + [("elin", path, keys) for path, keys in EVALUATOR_PAGES.items()]
         + [(None, "/login", ["form.stack button"]), (None, "/invite/{invite}", ["main form button"]),
            (None, "/join", ["main button, main a.button"])])

# What the test finds out of view: the page's extra width, and each table cell, chart or named element that
# lies (partly) outside the viewport or outside the visible part of a box that scrolls or clips it.
OUT_OF_VIEW = """([keys, vw]) => {
  const out = [];
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (el.className && el.className.baseVal === undefined ? "." + String(el.className).trim().split(/\\s+/).join(".") : "") +
    " '" + (el.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 40) + "'";
  const shown = (el) => el.getClientRects().length > 0 && el.getBoundingClientRect().width > 1;
  function clipped(el, box) {
    const boxes = [];
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflowX === "visible") continue;
      const r = a.getBoundingClientRect();
      if (r.width <= 1) return null;  // visually hidden on purpose (a stacked table's header, for screen readers)
      boxes.push([a, r.left + a.clientLeft, r.left + a.clientLeft + a.clientWidth]);
    }
    if (box.left < -1 || box.right > vw + 1) return "outside the viewport";
    for (const [a, left, right] of boxes) {
      if (box.left < left - 1 || box.right > right + 1) return "hidden in " + name(a).slice(0, 60);
    }
    return null;
  }
  const page = document.scrollingElement.scrollWidth;
  if (page > vw + 1) out.push("the page is " + page + " px wide");
  const hourly = document.querySelector("svg.chart.per-hour");
  const check = (el) => {
    const why = clipped(el, el.getBoundingClientRect());
    if (why) out.push(name(el) + ": " + why);
  };
  for (const el of document.querySelectorAll("main td, main th, main svg.chart")) {
    if (el === hourly || !shown(el)) continue;
    check(el);
  }
  if (hourly) {  // it may scroll sideways, but it opens at the current hour: the last bar is in view
    const bars = hourly.querySelectorAll("rect.bar-rating");
    check(bars[bars.length - 1]);
  }
  for (const key of keys) {
    const found = Array.from(document.querySelectorAll(key)).filter(shown);
    if (!found.length) out.push(key + ": not shown");
    found.forEach((el) => check(el));
  }
  return out;
}"""




@pytest.mark.parametrize("width", list(VIEWPORTS))
@pytest.mark.parametrize("role,path,keys", PAGES, ids=[f"{r or 'anyone'}:{p}" for r, p, _ in PAGES])
def test_page_fits_the_width_and_shows_its_content(playwright_browser, site, sessions, width, role, path, keys):  # noqa: F811
    server, _, seeded = site
    viewport = VIEWPORTS[width]
    context = playwright_browser.new_context(base_url=server.url, viewport=viewport,
                                             storage_state=sessions[role] if role else None,
                                             has_touch=width == "phone", is_mobile=width == "phone")
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if path == "/task":
        page.goto("/annotate" if role == "ann" else "/evaluate")
        with page.expect_navigation():
            page.get_by_role("button", name=re.compile("Next task|Start")).click()
        assert "/task/" in page.url, page.locator("main").inner_text()
    else:
        answer = page.goto(seeded["join"] if path == "/join" else path.format(**seeded))
        assert answer.ok, (path, answer.status)
    page.wait_for_load_state("networkidle")
    problems = page.evaluate(OUT_OF_VIEW, [keys, viewport["width"]])
    context.close()
    assert not errors, errors
    assert not problems, f"{path} at {viewport['width']} px:\n" + "\n".join(problems[:25])
