"""The trainer page in headless Chromium: the round line, history table, metric charts and phase durations
update from status.json without a reload, with no JavaScript errors. SQLite only."""

import re

import pytest
from sqlalchemy import select

from app.models import TrainingLog, TrainingRound
from tests.conftest import make_user
from tests.test_browser import _login_with_keyboard, live, page, playwright_browser  # noqa: F401 (fixtures)
from tests.test_training_admin import seed_rounds

pytestmark = pytest.mark.browser


def _open_trainer_page(page, live):
    """Seeded rounds (tests.test_training_admin.seed_rounds), an admin on the trainer page after its first poll."""
    server, database = live
    ids = seed_rounds(database)
    make_user(database, "boss", "admin")
    _login_with_keyboard(page, "boss")
    page.goto("/admin/training")
    page.wait_for_function("() => document.querySelector('#trainer-updated').textContent.startsWith('Updated')")
    return database, ids


def test_trainer_page_updates_without_reload(page, live):  # noqa: F811 (fixtures)
    database, ids = _open_trainer_page(page, live)
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


def test_trainer_page_script_labels_ticks_groups_failures_and_times_in_utc(page, live):  # noqa: F811 (fixtures)
    """What trainer_status.js draws: distinct y-tick labels for a KL coefficient that barely moves, charts under
    a heading per part of the round, a failed newest round at the top, linked names in the history, UTC 24 h."""
    database, ids = _open_trainer_page(page, live)
    assert re.fullmatch(r"Updated \d\d:\d\d:\d\d UTC · refreshes every 3 s while this tab is visible\.",
                        page.locator("#trainer-updated").inner_text())
    assert page.locator(f'#rounds tbody tr[data-round="{ids["round1"]}"] a[href="/admin/models#version-{ids["r1"]}"]'
                        ).inner_text() == "policy-r1"

    with database.write() as db:  # new rows: the script redraws the charts itself
        for step in range(11, 21):
            db.add(TrainingLog(round_id=ids["round3"], phase="ppo", step=step,
                               metrics={"kl_coef": 0.05 + 4e-7 * (step - 11)}))  # 0.05 to 0.0500036
    page.wait_for_function("() => document.querySelector('#round-metrics').dataset.rows === '21'")
    assert page.locator("#round-charts h3.chart-group").all_inner_texts() == ["Policy update (PPO)"]
    chart = page.locator("#round-charts svg", has=page.locator("title", has_text="KL coefficient β"))
    labels = chart.locator("text.y-tick").evaluate_all("nodes => nodes.map(n => n.textContent)")
    assert len(labels) == 3 and len(set(labels)) == 3, labels  # before: "0.05" three times

    with database.write() as db:
        r = db.get(TrainingRound, ids["round3"])
        r.status, r.error = "failed", "CUDA out of memory\nstack"
    page.wait_for_function("() => !document.querySelector('#trainer-failed').hidden")
    failed = page.locator("#trainer-failed").inner_text()
    assert "Round 2 failed in phase ppo" in failed and "CUDA out of memory" in failed and "What to do:" in failed
    assert page.locator("#start-round-reason").inner_text() == ""
