"""Gold checks end to end in headless Chromium: an admin marks a gold tuple and sets the rate, an
annotator (desktop and phone width) answers it wrongly, the dashboard flags them, and the admin
excludes them with one click, and includes them again."""

import pytest
from sqlalchemy import select

from app.models import AnnotatorExclusion, Task
from app.services import exports
from tests.conftest import PASSWORD, make_user
from tests.factories import seed_bws_batch
from tests.test_browser import live, playwright_browser  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _context(browser, server, viewport):
    context = browser.new_context(base_url=server.url, viewport=viewport, has_touch=viewport == PHONE,
                                  is_mobile=viewport == PHONE)
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return context, page, errors


def _login(page, username):
    page.goto("/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.locator("form.stack button").click()


@pytest.mark.parametrize("annotator_viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_admin_marks_gold_dashboard_flags_and_excludes(playwright_browser, live, annotator_viewport):  # noqa: F811
    server, database = live
    batch_id = seed_bws_batch(database, prompts=2, per_prompt=4, required=1)
    make_user(database, "boss", "admin")
    make_user(database, "ann")
    with database.read() as db:
        gold_task = db.scalars(select(Task).where(Task.batch_id == batch_id).order_by(Task.id)).first()
        items = {i.continuation_id: i.continuation.text for i in gold_task.items}
    best_id, worst_id = list(items)[0], list(items)[-1]

    admin, page, admin_errors = _context(playwright_browser, server, DESKTOP)
    _login(page, "boss")
    page.goto("/admin/gold")
    page.select_option("select[name=batch_id]", str(batch_id))
    with page.expect_navigation():
        page.locator("#find-batch button").click()
    with page.expect_navigation():
        page.locator("#candidates a").first.click()
    page.get_by_label(f"best: continuation {best_id}").check()
    page.get_by_label(f"worst: continuation {worst_id}").check()
    with page.expect_navigation():
        page.locator("#mark-gold button").click()
    assert f"Task #{gold_task.id} is gold now." in page.locator(".flash").inner_text()
    assert page.locator("#gold-items tbody tr").count() == 1
    page.fill("input[name=rate_percent]", "100")  # every task a gold check while one is left
    page.fill("input[name=threshold_percent]", "70")
    page.fill("input[name=min_answers]", "1")
    with page.expect_navigation():
        page.locator("#gold-settings button").click()
    assert "100% of tasks" in page.locator(".flash").inner_text()

    # The annotator gets the gold tuple first and picks its known best as worst and known worst as best.
    annotator, ann_page, ann_errors = _context(playwright_browser, server, annotator_viewport)
    _login(ann_page, "ann")
    ann_page.get_by_role("button", name="Next task").click()
    ann_page.wait_for_url("**/task/*")
    assert ann_page.evaluate("document.documentElement.scrollWidth") <= annotator_viewport["width"]
    assert "gold" not in ann_page.content().lower()  # nothing on the page tells a gold check apart
    shown = [text.strip() for text in ann_page.locator("article.cont p.story").all_inner_texts()]
    position = {cid: shown.index(items[cid].strip()) + 1 for cid in (best_id, worst_id)}
    ann_page.get_by_label(f"Continuation {position[worst_id]} is best").check()
    ann_page.get_by_label(f"Continuation {position[best_id]} is worst").check()
    with ann_page.expect_navigation():
        ann_page.locator("#submit-btn").click()
    annotator.close()

    page.goto("/admin")
    row = page.locator("#annotators tbody tr", has_text="ann")
    assert "flagged" in row.inner_text() and "0 %" in row.inner_text()
    with page.expect_navigation():
        row.get_by_role("button", name="Exclude ann").click()
    assert "left out of" in page.locator(".flash").inner_text()
    assert "excluded" in page.locator("#annotators tbody tr", has_text="ann").inner_text()
    with database.read() as db:
        exclusion = db.scalar(select(AnnotatorExclusion))
        assert exclusion is not None and exclusion.note == "gold accuracy 0 % of 1"
    assert [e["annotator"] for e in exports.export_metadata(database)["excluded_annotators"]] == ["ann"]

    with page.expect_navigation():
        page.locator("#annotators tbody tr", has_text="ann").get_by_role("button", name="Include ann").click()
    assert exports.export_metadata(database)["excluded_annotators"] == []
    assert page.locator("#annotators tbody tr", has_text="ann").get_by_role("button", name="Exclude ann").is_visible()
    admin.close()
    assert not admin_errors and not ann_errors
