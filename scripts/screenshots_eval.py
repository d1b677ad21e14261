"""Screenshots of the evaluation pages for docs/evaluation.md, taken in headless Chromium.

    python scripts/screenshots_eval.py [--out docs/screenshots]

Seeds a throwaway SQLite database with a plausible history (a base policy and three PPO rounds, an
imported source, PPO logs, reward models, BWS judgements on mixed tuples, and an evaluation campaign
rated by three evaluators through the ordinary task service), serves it under uvicorn and saves:
  results.png  the campaign's results page
  models.png   the model-versions page
Uses Debian's /usr/bin/chromium; no browser is downloaded.
"""

import asyncio
import argparse
import math
import random
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from playwright.sync_api import sync_playwright  # noqa: E402
from tests.live_server import CHROMIUM, CHROMIUM_ARGS, LiveServer  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import Database  # noqa: E402
from app.main import create_app  # noqa: E402
from app.migrate import upgrade_to_head  # noqa: E402
from app.models import (  # noqa: E402
    Assignment, Batch, BwsJudgement, Continuation, ModelVersion, Prompt, Task, TaskItem, TrainingLog, TrainingRound,
    User, utcnow,
)
from app.services import evaluation, tasks, users  # noqa: E402
from app.services.evaluation import CampaignCreate  # noqa: E402
from app.services.tasks import RatingSubmission  # noqa: E402

PASSWORD = "screenshot-password"
QUALITY = {"base-demo": 2.6, "policy-r1": 3.0, "policy-r2": 3.5, "policy-r3": 3.6, "human-stories": 4.1}


def seed(database: Database) -> int:
    rng = random.Random(4)
    now = utcnow()
    with database.write() as db:
        for name in ("admin", "eva", "ezra", "elin", "ann"):
            users.create_user(db, name, PASSWORD, "admin" if name == "admin" else "evaluator" if name[0] == "e" else "annotator")
        versions = {}
        parent = None
        for i, name in enumerate(["base-demo", "policy-r1", "policy-r2", "policy-r3"]):
            v = ModelVersion(name=name, kind="policy", algorithm="pretrain" if i == 0 else "ppo", parent_id=parent,
                             path=f"policy/{name}")
            if i:
                v.metrics = {"auto": {"mean_reward": -0.4 + 0.35 * i + rng.uniform(-0.05, 0.05),
                                      "distinct_1": 0.46 - 0.03 * i, "distinct_2": 0.83 - 0.04 * i,
                                      "mean_length": 38 + 4 * i, "perplexity": 21 + 3.5 * i}}
            else:
                v.metrics = {"auto": {"mean_reward": -0.42, "distinct_1": 0.47, "distinct_2": 0.84, "mean_length": 36.0,
                                      "perplexity": 19.8}}
            db.add(v)
            db.flush()
            versions[name] = v
            parent = v.id
        source = ModelVersion(name="human-stories", kind="source", algorithm="import")
        db.add(source)
        db.flush()
        versions["human-stories"] = source
        x = 0
        for r in range(1, 4):
            reward = ModelVersion(name=f"reward-r{r}", kind="reward", algorithm="reward", parent_id=versions["base-demo"].id,
                                  path=f"reward/r{r}", metrics={"held_out_accuracy": 0.61 + 0.06 * r, "train_accuracy": 0.8 + 0.04 * r,
                                                                "held_out_pairs": 60 * r})
            db.add(reward)
            db.flush()
            tr = TrainingRound(status="done", trigger="auto", phase="done", reward_version_id=reward.id,
                               policy_version_id=versions[f"policy-r{r}"].id, started_at=now, finished_at=now,
                               judgements_used=120 * r)
            db.add(tr)
            db.flush()
            for step in range(1, 21):
                x += 1
                db.add(TrainingLog(round_id=tr.id, phase="ppo", step=step, metrics={
                    "score": -0.5 + 0.25 * r + 0.4 * (1 - math.exp(-step / 6)) + rng.gauss(0, 0.04),
                    "kl": 0.9 * (1 - math.exp(-step / 8)) * (1 + 0.1 * r) + abs(rng.gauss(0, 0.04)),
                    "policy_loss": -0.02 * math.exp(-step / 10) + rng.gauss(0, 0.006),
                    "value_loss": 0.35 * math.exp(-step / 7) + 0.05 + abs(rng.gauss(0, 0.01))}))
        prompts = []
        for i in range(10):
            p = Prompt(text=f"Story {i + 1}: the lighthouse keeper heard three knocks at midnight, and then a voice called her name.")
            db.add(p)
            db.flush()
            prompts.append(p.id)
            for name, v in versions.items():
                for k in range(2):
                    db.add(Continuation(prompt_id=p.id, model_version_id=v.id, text=f"[{name}] continuation {k} of story {i + 1}."))
        db.flush()
        # BWS judgements on tuples mixing versions: better versions win more often.
        batch = Batch(name="round 3 mixed", kind="bws")
        db.add(batch)
        db.flush()
        ann = db.query(User).filter_by(username="ann").one()
        for p in prompts:
            conts = db.query(Continuation).filter_by(prompt_id=p).all()
            for t in range(3):
                items = rng.sample(conts, 4)
                task = Task(batch_id=batch.id, kind="bws", prompt_id=p, required=1, done_count=1)
                task.items = [TaskItem(position=j, continuation_id=c.id) for j, c in enumerate(items)]
                db.add(task)
                db.flush()
                noisy = sorted(items, key=lambda c: QUALITY[next(n for n, v in versions.items() if v.id == c.model_version_id)]
                               + rng.gauss(0, 0.6))
                order = [c.id for c in items]
                a = Assignment(task_id=task.id, user_id=ann.id, status="submitted", item_order=order, leased_at=now,
                               expires_at=now + timedelta(minutes=10), finished_at=now)
                db.add(a)
                db.flush()
                db.add(BwsJudgement(assignment_id=a.id, task_id=task.id, user_id=ann.id, best_id=noisy[-1].id,
                                    worst_id=noisy[0].id, shown_order=order, idempotency_key=f"shot-{a.id}-key", created_at=now))
        campaign = evaluation.create_campaign(db, CampaignCreate(
            name="round 3 vs base vs human", model_version_ids=[versions[n].id for n in ("base-demo", "policy-r3", "human-stories")],
            prompt_ids=prompts, required=3, seed=1))
        campaign_id = campaign.id
        version_of = {c.id: n for n, v in versions.items() for c in db.query(Continuation).filter_by(model_version_id=v.id)}
    for name in ("eva", "ezra", "elin"):
        with database.read() as db:
            user = db.query(User).filter_by(username=name).one()
        bias = {"eva": 0.2, "ezra": -0.2, "elin": 0.0}[name]
        while (view := asyncio.run(tasks.next_task(database, user, 600))) is not None:
            q = QUALITY[version_of[view.items[0].continuation_id]] + bias
            score = {d: max(1, min(5, round(q + off + rng.gauss(0, 0.7))))
                     for d, off in (("grammar", 0.4), ("creativity", -0.2), ("consistency", 0.0), ("plot", -0.3))}
            asyncio.run(tasks.submit_rating(database, user, view.assignment_id, RatingSubmission(
                **score, idempotency_key=f"{name}-{view.assignment_id}-key", duration_ms=20000)))
    return campaign_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/shots.db", data_dir=Path(tmp) / "data", secret_key="screenshots-" + "x" * 32)
        upgrade_to_head(settings.resolved_database_url)
        database = Database.from_settings(settings)
        campaign_id = seed(database)
        with LiveServer(create_app(settings, database)) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(base_url=server.url, viewport={"width": 1280, "height": 900})
            page.goto("/login")
            page.fill("#username", "admin")
            page.fill("#password", PASSWORD)
            with page.expect_navigation():
                page.keyboard.press("Enter")
            page.goto(f"/admin/campaigns/{campaign_id}")
            page.screenshot(path=args.out / "results.png", full_page=True)
            page.goto("/admin/models")
            page.screenshot(path=args.out / "models.png", full_page=True)
            browser.close()
        database.engine.dispose()
    print(f"saved results.png and models.png in {args.out}")


if __name__ == "__main__":
    main()
