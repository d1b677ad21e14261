"""Issue 12's interface fixes, in headless Chromium against a real server (SQLite):

- rating by keyboard: 4 4 3 5, Tab, a comment, Enter stores the rating with the comment, never a skip
  (annotators and evaluators share the rating page); skipping a half-filled form asks first;
- an oversized import shows the import page with a readable error and stores nothing;
- the guidelines fit a phone and show no keyboard hints there; Submit stays in view beside long texts;
- a real favicon, referenced by the pages.
"""

import json

import pytest
from sqlalchemy import func, select, update

from app.models import Assignment, Continuation, Prompt, Rating
from app.services import evaluation
from app.services.evaluation import CampaignCreate
from tests.conftest import make_user
from tests.factories import seed_bws_batch, seed_rating_batch
from tests.test_browser import (  # noqa: F401 (fixtures)
    _login_and_start_by_touch,
    _login_with_keyboard,
    _next_task_with_keyboard,
    live,
    page,
    playwright_browser,
    serve,
)
from tests.test_evaluation import seed_two_versions

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _context(browser, server, viewport: dict, touch: bool = False):
    """A browser context at this size; `touch`: a phone proper (touch screen, no hover, mobile viewport)."""
    context = browser.new_context(base_url=server.url, viewport=viewport, has_touch=touch, is_mobile=touch)
    context.set_default_timeout(10_000)
    return context


def _seed_rating_task(database, role: str) -> None:
    """One rating task for an annotator, or one blind campaign item for an evaluator."""
    if role == "annotator":
        seed_rating_batch(database, required=1)
    else:
        a, b, prompt_ids, _ = seed_two_versions(database, prompts=1)
        with database.write() as db:
            evaluation.create_campaign(db, CampaignCreate(model_version_ids=[a, b], prompt_ids=prompt_ids, required=1))
    make_user(database, "rater", role)


def _task_id(page) -> int:
    return int(page.url.rsplit("/", 1)[1])


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone-width"])
@pytest.mark.parametrize("role", ["annotator", "evaluator"])
def test_scores_tab_comment_enter_stores_the_rating_with_the_comment(playwright_browser, live, role, viewport):
    server, database = live
    _seed_rating_task(database, role)
    context = _context(playwright_browser, server, viewport)
    page = context.new_page()
    _login_with_keyboard(page, "rater")
    _next_task_with_keyboard(page)
    assignment_id = _task_id(page)
    page.wait_for_selector("fieldset.dim.current")  # annotate.js is ready

    for key in ("Digit4", "Digit4", "Digit3", "Digit5"):
        page.keyboard.press(key)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "comment"
    page.keyboard.type("the ending contradicts the prompt")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "Saved." in page.locator(".flash").first.inner_text()
    context.close()

    with database.read() as db:
        rating = db.scalar(select(Rating).where(Rating.assignment_id == assignment_id))
        assert rating is not None, "no rating stored"
        assert (rating.grammar, rating.creativity, rating.consistency, rating.plot) == (4, 4, 3, 5)
        assert rating.comment == "the ending contradicts the prompt"
        assert db.get(Assignment, assignment_id).status == "submitted"
        assert db.scalar(select(func.count()).select_from(Assignment).where(Assignment.status == "skipped")) == 0


def test_without_javascript_enter_in_the_comment_submits_the_rating(playwright_browser, live):
    """The plain form post: the browser's own implicit submission from the one-line comment box."""
    server, database = live
    _seed_rating_task(database, "annotator")
    context = playwright_browser.new_context(base_url=server.url, java_script_enabled=False)
    page = context.new_page()
    _login_with_keyboard(page, "rater")
    with page.expect_navigation():
        page.get_by_role("button", name="Next task").click()
    assignment_id = _task_id(page)
    for dim, score in (("grammar", 2), ("creativity", 5), ("consistency", 4), ("plot", 1)):
        page.locator(f'fieldset[data-dim="{dim}"] label.score').nth(score - 1).click()
    page.locator("#comment").fill("plain form")
    with page.expect_navigation():
        page.locator("#comment").press("Enter")
    assert "Saved." in page.locator(".flash").first.inner_text()
    context.close()
    with database.read() as db:
        rating = db.scalar(select(Rating).where(Rating.assignment_id == assignment_id))
        assert (rating.grammar, rating.creativity, rating.consistency, rating.plot) == (2, 5, 4, 1)
        assert rating.comment == "plain form"


def _record_dialogs(page, accept: list[bool]) -> list[str]:
    """Answers each dialog with the next of `accept` (dismissing once they run out); returns their messages."""
    messages: list[str] = []

    def answer(dialog):
        messages.append(dialog.message)
        (dialog.accept if accept and accept.pop(0) else dialog.dismiss)()

    page.on("dialog", answer)
    return messages


# An untouched task is skipped without a question: test_browser.py's S key (a dialog would stop it).
@pytest.mark.parametrize("role", ["annotator", "evaluator"])
def test_skipping_a_half_filled_rating_asks_first(page, live, role):
    server, database = live
    _seed_rating_task(database, role)
    _login_with_keyboard(page, "rater")
    _next_task_with_keyboard(page)
    assignment_id = _task_id(page)
    page.wait_for_selector("fieldset.dim.current")  # annotate.js is ready
    answers = [False, False, True]  # cancel the S key, cancel the Skip button, then confirm
    dialogs = _record_dialogs(page, answers)

    page.keyboard.press("Digit4")
    page.keyboard.press("Digit2")
    page.keyboard.press("s")  # cancelled: the scores stay
    page.locator("#skip-btn").click()  # cancelled too
    assert len(dialogs) == 2 and all("scores" in m for m in dialogs)
    assert page.url.endswith(f"/task/{assignment_id}")
    checked = page.locator("fieldset.dim input:checked").evaluate_all("els => els.map(e => e.name + e.value)")
    assert checked == ["grammar4", "creativity2"]
    with database.read() as db:
        assert db.get(Assignment, assignment_id).status == "active"

    page.locator("#skip-reason").fill("unsure")
    with page.expect_navigation():
        page.locator("#skip-reason").press("Enter")  # confirmed: skipped, with the reason
    assert len(dialogs) == 3 and "Skipped." in page.content()
    with database.read() as db:
        assignment = db.get(Assignment, assignment_id)
        assert assignment.status == "skipped" and assignment.skip_reason == "unsure"
        assert db.scalar(select(func.count()).select_from(Rating)) == 0


def test_skipping_a_half_marked_bws_task_asks_first(page, live):
    server, database = live
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    make_user(database, "ann")
    _login_with_keyboard(page, "ann")
    _next_task_with_keyboard(page)
    assignment_id = _task_id(page)
    dialogs = _record_dialogs(page, [False])
    page.keyboard.press("Digit2")
    page.keyboard.press("s")
    assert len(dialogs) == 1
    assert page.locator('input[name="best"]').nth(1).is_checked()
    with database.read() as db:
        assert db.get(Assignment, assignment_id).status == "active"


def _jsonl(records: int) -> bytes:
    lines = (json.dumps({"prompt": f"Prompt {i}: a fox", "continuation": f" ran {i} miles.", "source": "gpt2"})
             for i in range(records))
    return "".join(line + "\n" for line in lines).encode()


def test_an_oversized_import_shows_the_import_page_with_the_error(playwright_browser, tmp_path):
    limit = 64 * 1024
    with serve(tmp_path, max_upload_bytes=limit) as (server, database):
        make_user(database, "boss", "admin")
        context = _context(playwright_browser, server, DESKTOP)
        page = context.new_page()
        _login_with_keyboard(page, "boss")

        big = _jsonl(2000)
        assert len(big) > limit
        page.goto("/admin/import")
        page.set_input_files("#file", files=[{"name": "big.jsonl", "mimeType": "application/x-ndjson", "buffer": big}])
        with page.expect_navigation():
            page.get_by_role("button", name="Import").click()
        assert page.url.endswith("/admin/import")
        assert page.locator("h1").inner_text() == "Import prompts and continuations"
        error = page.locator(".flash.bad").inner_text()
        assert "larger than the 64 KB limit" in error and "nothing was imported" in error.lower()
        assert "detail" not in page.locator("body").inner_text()
        with database.read() as db:
            assert db.scalar(select(func.count()).select_from(Prompt)) == 0

        # The same page, a file within the limit: imported, as before.
        page.set_input_files("#file", files=[{"name": "small.jsonl", "mimeType": "application/x-ndjson",
                                              "buffer": _jsonl(3)}])
        with page.expect_navigation():
            page.get_by_role("button", name="Import").click()
        assert "Imported small.jsonl" in page.locator(".flash").inner_text()
        with database.read() as db:
            assert db.scalar(select(func.count()).select_from(Prompt)) == 3
        context.close()


def _no_sideways_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def test_guidelines_fit_a_phone_without_keyboard_hints(playwright_browser, live):
    server, _ = live
    phone = _context(playwright_browser, server, PHONE, touch=True)
    page = phone.new_page()
    page.goto("/guidelines")
    assert _no_sideways_scroll(page), page.evaluate("document.documentElement.scrollWidth")
    text = page.locator("main").inner_text()  # what is shown: display:none is left out
    assert "Fluent, no errors" in text  # the rubric is still there
    assert "Shift" not in text
    phone.close()

    desktop = _context(playwright_browser, server, DESKTOP)
    page = desktop.new_page()
    page.goto("/guidelines")
    assert _no_sideways_scroll(page)
    assert "Shift" in page.locator("main").inner_text()  # a keyboard: the shortcuts are explained
    desktop.close()


def test_bws_task_on_a_phone_shows_no_keyboard_hints(playwright_browser, live):
    server, database = live
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    make_user(database, "ann")
    context = _context(playwright_browser, server, PHONE, touch=True)
    page = context.new_page()
    _login_and_start_by_touch(page, "ann")
    assert _no_sideways_scroll(page)
    page.get_by_label("Continuation 1 is best").check()  # the form's message now asks for the worst
    message = page.locator("#form-msg").inner_text()
    assert "worst" in message
    assert "Shift" not in page.locator("main").inner_text()
    context.close()


LONG = ("The fox walked along the river for a long time, thinking about the key and the door it might open, "
        "and about the old woman who had warned him never to go near the mill after dark. ") * 8


def test_submit_stays_in_view_beside_long_bws_texts(page, live):
    server, database = live
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    with database.write() as db:
        db.execute(update(Prompt).values(text=LONG[:600]))
        db.execute(update(Continuation).values(text=LONG))
    make_user(database, "ann")
    page.set_viewport_size(DESKTOP)
    _login_with_keyboard(page, "ann")
    _next_task_with_keyboard(page)
    assert page.evaluate("document.documentElement.scrollHeight") > 2 * DESKTOP["height"]  # really long
    assert page.evaluate("window.scrollY") == 0
    box = page.locator("#submit-btn").bounding_box()
    assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= DESKTOP["height"], box

    page.keyboard.press("Digit1")
    page.keyboard.press("Shift+Digit4")
    box = page.locator("#submit-btn").bounding_box()
    assert box["y"] + box["height"] <= DESKTOP["height"]
    with page.expect_navigation():
        page.locator("#submit-btn").click()  # clickable where it is: nothing covers it
    assert "Saved." in page.locator(".flash").first.inner_text()


def test_favicon_is_served_and_referenced(page, live):
    server, database = live
    make_user(database, "boss", "admin")
    answer = page.request.get("/favicon.ico")
    assert answer.status == 200 and answer.headers["content-type"] in ("image/x-icon", "image/vnd.microsoft.icon")
    assert answer.body()[:4] == b"\x00\x00\x01\x00"  # an ICO file
    _login_with_keyboard(page, "boss")
    for path in ("/login", "/guidelines", "/annotate", "/admin", "/admin/import"):
        page.goto(path)
        href = page.locator('link[rel="icon"]').get_attribute("href")
        assert href, f"{path} links no icon"
        icon = page.request.get(href)
        assert icon.status == 200 and icon.body() == answer.body(), (path, href)
