"""The evaluator flow in headless Chromium: blind campaign items one at a time, rated with the keyboard;
and the admin dashboard's live status updating by polling. SQLite only."""

from sqlalchemy import select

import pytest

from app.models import Rating
from app.services import evaluation
from app.services.evaluation import CampaignCreate
from tests.conftest import make_user
from tests.test_browser import (  # noqa: F401 (fixtures)
    _login_with_keyboard,
    _next_task_with_keyboard,
    _wait_for_focus,
    live,
    page,
    playwright_browser,
)
from tests.test_evaluation import ALPHA, BETA, seed_two_versions

pytestmark = pytest.mark.browser


def test_evaluator_rates_blind_campaign_items_with_the_keyboard(page, live):
    server, database = live
    a, b, prompt_ids, _ = seed_two_versions(database, prompts=2)
    with database.write() as db:
        evaluation.create_campaign(db, CampaignCreate(model_version_ids=[a, b], prompt_ids=prompt_ids, required=2))
    make_user(database, "eve", "evaluator")

    _login_with_keyboard(page, "eve")
    assert page.url.endswith("/evaluate")
    assert "4" in page.locator(".stat").nth(2).inner_text()  # 4 items left
    _next_task_with_keyboard(page)
    seen = []
    for n in range(4):
        assert "/task/" in page.url
        html = page.content()
        for secret in (ALPHA, BETA, "SECRET"):
            assert secret not in html
        assert page.locator("fieldset.dim").count() == 4
        seen.append(int(page.url.rsplit("/", 1)[1]))
        if n == 0:  # a comment, typed without triggering the shortcuts
            page.locator("#comment").fill("nice twist")
            page.locator("fieldset.dim input").first.focus()
        for key in ("Digit4", "Digit3", "Digit5"):
            page.keyboard.press(key)
        assert page.locator("#submit-btn").is_disabled()
        page.keyboard.press("Digit2")
        assert page.locator("#submit-btn").is_enabled()
        page.wait_for_timeout(30)
        with page.expect_navigation():
            page.keyboard.press("Enter")
    assert "/done" in page.url and "Nothing left" in page.content()
    with database.read() as db:
        ratings = db.scalars(select(Rating).order_by(Rating.id)).all()
    assert len(ratings) == 4 and all((r.grammar, r.creativity, r.consistency, r.plot) == (4, 3, 5, 2) for r in ratings)
    assert ratings[0].comment == "nice twist"
    assert len(set(seen)) == 4


def test_dashboard_live_status_updates_without_reload(page, live):
    server, database = live
    make_user(database, "boss", "admin")
    _login_with_keyboard(page, "boss")
    page.goto("/admin")
    page.wait_for_selector("#live-trainer")
    assert "not running" in page.locator("#live-trainer").inner_text()
    assert page.locator("#live-throughput").inner_text() == "0"
    first = page.locator("#live-status").get_attribute("data-updated")

    from datetime import timedelta

    from app.models import TrainerLease, TrainingRound, utcnow

    with database.write() as db:
        db.add(TrainerLease(name="trainer", holder="test", heartbeat_at=utcnow()))
        db.add(TrainingRound(status="running", phase="ppo", step=3, total_steps=12,
                             phase_started_at=utcnow() - timedelta(seconds=30), started_at=utcnow()))
    page.wait_for_function("() => document.querySelector('#live-phase').textContent.includes('step 3 of 12')", timeout=8000)
    assert "running" in page.locator("#live-trainer").inner_text()
    assert "min" in page.locator("#live-eta").inner_text() or " s" in page.locator("#live-eta").inner_text()
    assert page.locator("#live-status").get_attribute("data-updated") != first
    # the time beside the UTC chart is UTC too, 24 h (it was the browser's 12-hour local time)
    updated = page.locator("#live-status").get_attribute("data-updated")
    assert page.locator("#live-status > p.small").inner_text() == f"Updated {updated[11:19]} UTC · refreshes every 3 s"
