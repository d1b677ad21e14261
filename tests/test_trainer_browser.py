"""The trainer page in headless Chromium: the round line, history table, metric charts and phase durations
update from status.json without a reload, with no JavaScript errors. SQLite only."""

import pytest
from sqlalchemy import select

from app.models import TrainingLog, TrainingRound
from tests.conftest import make_user
from tests.test_browser import _login_with_keyboard, live, page, playwright_browser  # noqa: F401 (fixtures)
from tests.test_training_admin import seed_rounds

pytestmark = pytest.mark.browser


def test_trainer_page_updates_without_reload(page, live):  # noqa: F811 (fixtures)
    server, database = live
    ids = seed_rounds(database)
    make_user(database, "boss", "admin")
    _login_with_keyboard(page, "boss")
    page.goto("/admin/training")
    page.wait_for_function("() => document.querySelector('#trainer-updated').textContent.startsWith('Updated')")
    assert "step 10 of 40" in page.locator("#trainer-round").inner_text()
    assert page.locator("#round-charts svg").count() == 2
    round3 = f'#rounds tbody tr[data-round="{ids["round3"]}"]'
    assert page.locator(f"{round3} td").nth(4).inner_text() == "95"

    with database.write() as db:
        r = db.get(TrainingRound, ids["round3"])
        r.step, r.judgements_used, r.algorithm = 20, 99, "ppo"
        for step in range(11, 21):
            db.add(TrainingLog(round_id=r.id, phase="ppo", step=step, metrics={"score": 0.1 * step, "kl": 0.01 * step,
                                                                                  "entropy": 2.0}))
    page.wait_for_function("() => document.querySelector('#trainer-round').textContent.includes('step 20 of 40')",
                           timeout=8000)
    page.wait_for_function(f"() => document.querySelector('{round3} td:nth-child(5)').textContent === '99'")
    assert page.locator(f"{round3} td").nth(3).inner_text() == "ppo"  # the round's algorithm, redrawn too
    page.wait_for_function("() => document.querySelector('#round-metrics').dataset.rows === '21'")
    assert page.locator("#round-charts svg").count() == 3  # entropy appeared
    assert page.locator("#round-charts svg polyline").count() >= 3
    assert "Whole round: about" in page.locator("#trainer-round-eta").inner_text()

    with database.write() as db:
        r = db.get(TrainingRound, ids["round3"])
        r.status, r.phase, r.error = "failed", "ppo", "CUDA out of memory\nstack"
        assert db.scalar(select(TrainingRound.id).where(TrainingRound.status == "running")) is None
    page.wait_for_function(f"() => document.querySelector('{round3} td:nth-child(2)').textContent === 'failed'")
    assert page.locator(f"{round3} td").nth(11).inner_text() == "CUDA out of memory"
    assert "No round is queued or running." in page.locator("#trainer-round").inner_text()
    assert page.locator("#start-round").is_enabled()
