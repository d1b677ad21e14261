"""End to end in headless Chromium against a real uvicorn server: keyboard-only annotation, and an export.

Uses Debian's Chromium (/usr/bin/chromium); Playwright never downloads a browser here. Without it
the module is skipped, except under CI, where a missing browser is an error.
"""

import csv
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.migrate import upgrade_to_head
from app.models import Assignment, BwsJudgement, Rating
from tests.conftest import PASSWORD, TEST_SECRET_KEY, make_user
from tests.factories import HANDLES, seed_bws_batch, seed_rating_batch
from tests.live_server import CHROMIUM, CHROMIUM_ARGS, LiveServer

pytestmark = pytest.mark.browser

@pytest.fixture(scope="module")
def playwright_browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests, but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); browser tests skipped")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextmanager
def serve(tmp_path: Path, **settings: Any) -> Iterator[tuple[LiveServer, Database]]:
    """A fresh SQLite database and the app on a live server; `settings` overrides the test defaults."""
    config = Settings(**{"database_url": f"sqlite:///{tmp_path / 'browser.db'}", "data_dir": tmp_path / "data",
                         "secret_key": TEST_SECRET_KEY, "lease_seconds": 600, **settings})
    upgrade_to_head(config.resolved_database_url)
    database = Database.from_url(config.resolved_database_url)
    from app.main import create_app

    with LiveServer(create_app(config, database)) as server:
        yield server, database
    database.engine.dispose()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveServer, Database]]:
    with serve(tmp_path) as server_and_database:
        yield server_and_database


@pytest.fixture
def page(playwright_browser, live):
    server, _ = live
    context = playwright_browser.new_context(base_url=server.url, accept_downloads=True)
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _wait_for_focus(page, selector: str) -> None:
    """Autofocus lands a moment after the page loads; keys pressed before then would go nowhere."""
    page.wait_for_function("s => document.activeElement && document.activeElement.matches(s)", arg=selector)


def _next_task_with_keyboard(page) -> None:
    _wait_for_focus(page, "form.start button")  # "Next task" has autofocus
    with page.expect_navigation():
        page.keyboard.press("Enter")


def _login_with_keyboard(page, username: str) -> None:
    page.goto("/login")
    _wait_for_focus(page, "#username")
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def _login_and_start_by_touch(page, username: str) -> None:
    """On a phone: log in and tap "Next task"."""
    page.goto("/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.locator("form.stack button").tap()
    page.wait_for_url("**/annotate")
    page.get_by_role("button", name="Next task").tap()
    page.wait_for_url("**/task/*")


def test_keyboard_only_bws_rating_and_skip(page, live):
    server, database = live
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)  # one BWS tuple, leased first
    seed_rating_batch(database, required=1)  # then three continuations to rate
    make_user(database, "ann")

    _login_with_keyboard(page, "ann")
    assert page.url.endswith("/annotate")
    _next_task_with_keyboard(page)
    assert "/task/" in page.url
    bws_assignment = int(page.url.rsplit("/", 1)[1])
    handles = page.locator('input[name="best"]').evaluate_all("els => els.map(e => e.value)")
    assert len(handles) == 4
    submit = page.locator("#submit-btn")
    message = page.locator("#form-msg")
    assert submit.is_disabled()

    page.keyboard.press("Digit2")  # best: continuation 2
    page.keyboard.press("Shift+Digit2")  # worst: the same one -> refused before submitting
    assert page.locator('input[name="best"]').nth(1).is_checked()
    assert page.locator('input[name="worst"]').nth(1).is_checked()
    assert submit.is_disabled()
    assert "must differ" in message.inner_text()
    page.keyboard.press("Enter")
    page.wait_for_timeout(200)
    assert page.url.endswith(f"/task/{bws_assignment}")  # nothing was sent

    page.keyboard.press("Digit3")  # best: continuation 3
    page.keyboard.press("Shift+Digit1")  # worst: continuation 1
    assert submit.is_enabled() and message.is_hidden()
    assert page.locator(".cont").nth(2).get_attribute("class").split().count("is-best") == 1
    page.wait_for_timeout(50)  # so that the measured duration is above zero
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "Saved." in page.locator(".flash").first.inner_text()
    with database.read() as db:
        judgement = db.scalar(select(BwsJudgement).where(BwsJudgement.assignment_id == bws_assignment))
        ids = judgement.shown_order  # shown under the handles, in this order
        assert [HANDLES.handle(bws_assignment, c) for c in ids] == handles
        assert (judgement.best_id, judgement.worst_id) == (ids[2], ids[0])
        assert judgement.duration_ms > 0 and not judgement.is_surplus

    # Straight on to the next task: a rating. 4, 3, 5, 2 score the four scales in turn; Enter submits.
    rating_assignment = int(page.url.rsplit("/", 1)[1])
    assert page.locator("fieldset.dim").count() == 4
    assert "current" in page.locator("fieldset.dim").first.get_attribute("class")
    for key in ("Digit4", "Digit3", "Digit5"):
        page.keyboard.press(key)
    assert "current" in page.locator("fieldset.dim").nth(3).get_attribute("class")
    assert page.locator("#submit-btn").is_disabled()  # plot coherence is still missing
    page.keyboard.press("Digit2")
    assert page.locator("#submit-btn").is_enabled()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    with database.read() as db:
        rating = db.scalar(select(Rating).where(Rating.assignment_id == rating_assignment))
        assert (rating.grammar, rating.creativity, rating.consistency, rating.plot) == (4, 3, 5, 2)
        assert rating.duration_ms > 0

    # S skips the next one.
    skipped_assignment = int(page.url.rsplit("/", 1)[1])
    with page.expect_navigation():
        page.keyboard.press("s")
    assert "Skipped." in page.content()
    with database.read() as db:
        assert db.get(Assignment, skipped_assignment).status == "skipped"


def test_bws_works_without_keyboard_shortcuts_on_a_phone(playwright_browser, live):
    """Touch on a 390px-wide screen: tap the labels, tap submit."""
    server, database = live
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    make_user(database, "ann")
    context = playwright_browser.new_context(base_url=server.url, viewport={"width": 390, "height": 844},
                                             has_touch=True, is_mobile=True)
    page = context.new_page()
    _login_and_start_by_touch(page, "ann")
    # Nothing sticks out sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.get_by_label("Continuation 4 is best").check()
    page.get_by_label("Continuation 2 is worst").check()
    page.locator("#submit-btn").tap()
    page.wait_for_url("**/done*")
    with database.read() as db:
        judgement = db.scalar(select(BwsJudgement))
        assert judgement.best_id == judgement.shown_order[3] and judgement.worst_id == judgement.shown_order[1]
    context.close()


def test_admin_downloads_an_export(page, live):
    server, database = live
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    make_user(database, "ann")
    make_user(database, "boss", "admin")

    _login_with_keyboard(page, "ann")
    _next_task_with_keyboard(page)
    page.keyboard.press("Digit1")
    page.keyboard.press("Shift+Digit4")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.locator("form[action='/logout'] button").click()
    page.wait_for_url("**/login")

    _login_with_keyboard(page, "boss")
    response = page.goto("/admin/exports")
    assert response is not None and response.ok, "the admin exports page (/admin/exports) is missing"
    links = page.locator('a[href^="/admin/exports/"]')
    assert links.count() > 0, "no export links of the form /admin/exports/{name}.{fmt} on /admin/exports"
    wanted = page.locator('a[href="/admin/exports/judgements.csv"]')
    link = wanted if wanted.count() else links.first
    href = link.get_attribute("href")
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    content = Path(download.path()).read_text(encoding="utf-8")
    assert content, f"the export {href} is empty"
    assert download.suggested_filename.endswith("." + href.rsplit(".", 1)[1])
    if href.endswith("/judgements.csv"):
        with database.read() as db:
            judgement = db.scalar(select(BwsJudgement))
        rows = list(csv.DictReader(io.StringIO(content)))
        assert len(rows) == 1 and rows[0]["annotator"] == "ann"
        assert (int(rows[0]["best_id"]), int(rows[0]["worst_id"])) == (judgement.best_id, judgement.worst_id)
        assert (judgement.best_id, judgement.worst_id) == (judgement.shown_order[0], judgement.shown_order[3])
