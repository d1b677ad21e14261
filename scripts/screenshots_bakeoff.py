"""Screenshots of a real bake-off for the README, taken in headless Chromium.

    python scripts/screenshots_bakeoff.py [--out docs/screenshots]

With a throwaway SQLite database and the tests' tiny GPT-2 (seconds on a CPU): seeds stories and
judgements, runs round 0 (the base writes) and a bake-off round of A-LoL and DPO through the real
trainer, then saves:
  bakeoff-trainer.png   the trainer page: the algorithm menu, the bake-off form, the round history
  bakeoff-models.png    the models page: the bake-off's versions with their algorithm and training compute
Uses Debian's /usr/bin/chromium; no browser is downloaded.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import Database  # noqa: E402
from app.main import create_app  # noqa: E402
from app.migrate import upgrade_to_head  # noqa: E402
from app.services import training, users  # noqa: E402
from tests.factories import judge_directly, seed_bws_batch  # noqa: E402
from tests.live_server import CHROMIUM, CHROMIUM_ARGS, LiveServer  # noqa: E402
from tests.tiny_models import pretrain_lm, story_corpus, tiny_lm, train_tiny_tokenizer  # noqa: E402

ADMIN_PASSWORD = "screenshot-admin"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = story_corpus(1500)
        tokenizer = train_tiny_tokenizer(p + c for p, c in pairs)
        model = pretrain_lm(tiny_lm(tokenizer, n_positions=128), tokenizer, [p + c for p, c in pairs], steps=150)
        model.save_pretrained(tmp / "base")
        tokenizer.save_pretrained(tmp / "base")
        from tests.test_trainer_loop import tiny_trainer_env

        os.environ.update(tiny_trainer_env(tmp / "base"))
        from trainer.config import TrainerSettings
        from trainer.loop import train_once

        cfg = TrainerSettings()
        cfg.alol.steps, cfg.alol.max_new_tokens, cfg.dpo.max_steps = 20, 12, 10
        settings = Settings(database_url=f"sqlite:///{tmp / 'demo.db'}", data_dir=tmp / "data",
                            secret_key="screenshots-" + "x" * 32, annotations_per_tuple=1)
        upgrade_to_head(settings.resolved_database_url)
        database = Database.from_settings(settings)
        with database.write() as db:
            users.create_user(db, "admin", ADMIN_PASSWORD, "admin")
        seed_bws_batch(database, prompts=3, per_prompt=6, required=2)
        judge_directly(database, "judge-1")
        train_once(database, settings, cfg)  # round 0: the base writes
        judge_directly(database, "judge-2")
        training.request_round(database, trigger="admin", bakeoff=["alol", "dpo"])
        train_once(database, settings, cfg)
        app = create_app(settings, database)
        with LiveServer(app) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900}).new_page()
            page.goto("/login")
            page.fill("#username", "admin")
            page.fill("#password", ADMIN_PASSWORD)
            page.press("#password", "Enter")
            page.wait_for_url("**/admin")
            page.goto("/admin/training")
            page.screenshot(path=args.out / "bakeoff-trainer.png", full_page=True)
            page.goto("/admin/models")
            page.screenshot(path=args.out / "bakeoff-models.png", full_page=True)
            browser.close()


if __name__ == "__main__":
    main()
