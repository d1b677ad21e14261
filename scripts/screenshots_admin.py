"""Screenshots of the admin pages for the README, from the demo data and simulated annotators.

    python scripts/screenshots_admin.py [--out docs/screenshots]

Seeds the demo (prompts, continuations, tuples, accounts), lets 6 simulated annotators submit 300
judgements through the HTTP API (preferring longer continuations), and saves admin-dashboard.png,
admin-scores.png and admin-trainer.png. Uses Debian's /usr/bin/chromium.
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from fastapi.testclient import TestClient  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from tests.live_server import CHROMIUM, CHROMIUM_ARGS, LiveServer  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import Database  # noqa: E402
from app.demo import seed_demo  # noqa: E402
from app.main import create_app  # noqa: E402
from app.migrate import upgrade_to_head  # noqa: E402
from app.simulate import SimulationConfig, run_simulation  # noqa: E402

ADMIN_PASSWORD = "screenshot-admin"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{Path(tmp) / 'demo.db'}", data_dir=Path(tmp), secret_key="screenshots-" + "x" * 32)
        upgrade_to_head(settings.resolved_database_url)
        database = Database.from_settings(settings)
        seed_demo(database, settings, admin_password=ADMIN_PASSWORD)
        app = create_app(settings, database)
        with TestClient(app) as client:
            run_simulation("", "admin", ADMIN_PASSWORD,
                           SimulationConfig(annotators=6, judgements=300, preference="longer", noise=0.3), client=client)
        with LiveServer(app) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900}).new_page()
            page.goto("/login")
            page.fill("#username", "admin")
            page.fill("#password", ADMIN_PASSWORD)
            page.press("#password", "Enter")
            page.wait_for_url("**/admin")
            page.screenshot(path=args.out / "admin-dashboard.png", full_page=True)
            page.goto("/admin/scores?limit=15")
            page.screenshot(path=args.out / "admin-scores.png", full_page=True)
            page.goto("/admin/training")
            page.screenshot(path=args.out / "admin-trainer.png", full_page=True)
            browser.close()
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
