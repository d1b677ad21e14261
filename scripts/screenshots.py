"""Screenshots of the annotation pages for the README, taken in headless Chromium.

    python scripts/screenshots.py [--out docs/screenshots]

Starts the app under uvicorn on a free localhost port with a throwaway SQLite database, seeds a few
stories and an annotator, and saves:
  bws-desktop.png   a best-worst task at 1280px, best and worst marked with the keyboard
  bws-phone.png     the same at 390px (phone width)
  rating.png        a rating task at 1280px, partly scored
  rating-phone.png  the rating task at 390px
Uses Debian's /usr/bin/chromium; no browser is downloaded.
"""

import argparse
import random
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
from app.models import Continuation, ModelVersion, Prompt  # noqa: E402
from app.services import users  # noqa: E402
from app.services.tasks import build_bws_batch, build_rating_batch  # noqa: E402
from tests.live_server import CHROMIUM, CHROMIUM_ARGS, LiveServer  # noqa: E402

PASSWORD = "screenshot-password"

PROMPT = ("Lily found a small blue key under the old oak tree in the park. She showed it to her brother Tom. "
          "\"What does it open?\" Tom asked.")
CONTINUATIONS = [
    "Lily did not know. They walked around the park and tried the key in every lock they could find. "
    "At last it fit the little door of the birdhouse, and inside was a note: \"Thank you for finding my key!\"",
    "The key was blue. Lily liked blue. She liked the park and the tree and the key was blue and she liked it.",
    "Tom said they should ask Mom. Mom smiled and said the key belonged to Grandpa's old music box. "
    "When they turned it, the box played a song Grandpa used to sing, and Lily felt warm inside.",
    "The spaceship landed on the moon. The robot said beep beep and ate a sandwich with the captain.",
]
RATED = ("Tom and Lily ran home with the key. They looked in the attic, where a dusty chest sat in the corner. "
         "The key turned with a click. Inside were old photos of their grandma as a little girl, playing "
         "under the very same oak tree.")


def seed(database: Database) -> None:
    with database.write() as db:
        source = ModelVersion(name="demo-source", kind="source", algorithm="import")
        prompt = Prompt(text=PROMPT)
        db.add_all([source, prompt])
        db.flush()
        ids = []
        for text in CONTINUATIONS + [RATED]:
            continuation = Continuation(prompt_id=prompt.id, model_version_id=source.id, text=text)
            db.add(continuation)
            db.flush()
            ids.append(continuation.id)
        build_bws_batch(db, "demo tuples", {prompt.id: ids[:4]}, seed=3, required=1, factor=1.0)
        build_rating_batch(db, "demo ratings", [ids[4]], required=1)
        users.create_user(db, "alice", PASSWORD, "annotator")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    random.seed(7)  # the order items are shown in is shuffled per annotator; keep the pictures stable

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{Path(tmp) / 'demo.db'}", data_dir=Path(tmp),
                            secret_key="screenshots-" + "x" * 32, lease_seconds=3600)
        upgrade_to_head(settings.resolved_database_url)
        database = Database.from_settings(settings)
        seed(database)
        with LiveServer(create_app(settings, database)) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            desktop = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
            page = desktop.new_page()
            page.goto("/login")
            page.fill("#username", "alice")
            page.fill("#password", PASSWORD)
            page.press("#password", "Enter")
            page.wait_for_url("**/annotate")
            page.get_by_role("button", name="Next task").click()
            page.wait_for_url("**/task/*")
            bws_url = page.url
            texts = page.locator(".cont .story").all_inner_texts()
            best = 1 + next(i for i, t in enumerate(texts) if "music box" in t)
            worst = 1 + next(i for i, t in enumerate(texts) if "spaceship" in t)
            page.keyboard.press(f"Digit{best}")
            page.keyboard.press(f"Shift+Digit{worst}")
            page.evaluate("document.activeElement.blur()")
            page.screenshot(path=args.out / "bws-desktop.png", full_page=True)

            phone = browser.new_context(base_url=server.url, viewport={"width": 390, "height": 844},
                                        device_scale_factor=2, is_mobile=True, has_touch=True,
                                        storage_state=desktop.storage_state())
            phone_page = phone.new_page()
            phone_page.goto(bws_url)
            phone_page.get_by_label(f"Continuation {best} is best").check()
            phone_page.get_by_label(f"Continuation {worst} is worst").check()
            phone_page.screenshot(path=args.out / "bws-phone.png", full_page=True)

            with page.expect_navigation():
                page.keyboard.press("Enter")  # submit; on to the rating task
            page.wait_for_url("**/task/*")
            rating_url = page.url
            page.keyboard.press("Digit4")
            page.keyboard.press("Digit5")
            page.screenshot(path=args.out / "rating.png", full_page=True)
            phone_page.goto(rating_url)
            phone_page.screenshot(path=args.out / "rating-phone.png", full_page=True)
            browser.close()
        database.engine.dispose()
    for name in ("bws-desktop", "bws-phone", "rating", "rating-phone"):
        print(args.out / f"{name}.png")


if __name__ == "__main__":
    main()
