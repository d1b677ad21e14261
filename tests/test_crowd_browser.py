"""A crowd campaign end to end in headless Chromium: an admin makes a Prolific link with a quota of 3,
a participant opens it with Prolific's ids, does 3 tasks while the bar counts down, sees the
completion code and is sent on to Prolific's completion URL (intercepted: there is no internet);
opening the link again resumes the same account. At desktop and phone width."""

import re

import pytest
from sqlalchemy import func, select

from app.models import BwsJudgement, CrowdParticipant, CrowdVisit
from tests.conftest import make_user
from tests.factories import seed_bws_batch
from tests.test_browser import _login_with_keyboard, live, page, playwright_browser  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

COMPLETION_URL = "https://app.prolific.com/submissions/complete?cc=C0DE42"
PID, STUDY = "5f1a2b3c4d5e6f7a8b9c0d1e", "60aa11bb22cc33dd44ee55ff"
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


def _create_link(page) -> str:
    """The admin's steps on /admin/crowd; returns the link shown to paste into Prolific."""
    page.goto("/admin/crowd")
    form = page.locator("#create-crowd-link")
    form.get_by_label("Name").fill("Pilot")
    form.get_by_label("Platform").select_option("prolific")
    form.get_by_label("Tasks per participant").fill("3")
    form.get_by_label("Session length in minutes").fill("30")
    form.get_by_label("Completion code").fill("C0DE42")
    form.get_by_label("Completion URL").fill(COMPLETION_URL)
    with page.expect_navigation():
        form.get_by_role("button", name="Create crowd link").click()
    link = page.locator("input.copy").input_value()
    assert "PROLIFIC_PID={{%PROLIFIC_PID%}}" in link
    assert page.locator("#crowd-links tbody tr").count() == 1
    return link


def _as_prolific_opens_it(link: str, session: str) -> str:
    return (link.replace("{{%PROLIFIC_PID%}}", PID).replace("{{%STUDY_ID%}}", STUDY)
            .replace("{{%SESSION_ID%}}", session))


def _tasks_left(page) -> str:
    return re.sub(r"\s+", " ", page.locator("#quota-left").inner_text()).strip()


def _judge(page, phone: bool) -> None:
    """Best 1, worst 4: by touch on a phone, by keyboard on a desktop."""
    if phone:
        page.get_by_label("Continuation 1 is best").check()
        page.get_by_label("Continuation 4 is worst").check()
        with page.expect_navigation():
            page.locator("#submit-btn").tap()
        return
    page.keyboard.press("Digit1")
    page.keyboard.press("Shift+Digit4")
    with page.expect_navigation():
        page.keyboard.press("Enter")


@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_crowd_campaign_end_to_end(playwright_browser, live, page, width):  # noqa: F811 (fixtures)
    server, database = live
    seed_bws_batch(database, prompts=3, per_prompt=6, required=1)
    make_user(database, "boss", "admin")
    _login_with_keyboard(page, "boss")
    link = _create_link(page)

    phone = width == "phone"
    context = playwright_browser.new_context(base_url=server.url, viewport=VIEWPORTS[width],
                                             has_touch=phone, is_mobile=phone)
    context.set_default_timeout(10_000)
    completions: list[str] = []

    def prolific(route):
        completions.append(route.request.url)
        route.fulfill(status=200, content_type="text/html", body="<h1>Prolific: submission complete</h1>")

    context.route("https://app.prolific.com/**", prolific)
    participant = context.new_page()
    errors: list[str] = []
    participant.on("pageerror", lambda exc: errors.append(str(exc)))

    participant.goto(_as_prolific_opens_it(link, "session-1"))
    assert participant.get_by_role("heading", name="Welcome to Pilot").is_visible()
    assert participant.evaluate("document.documentElement.scrollWidth") <= VIEWPORTS[width]["width"]
    with participant.expect_navigation():
        participant.get_by_role("button", name="Start").click()
    assert participant.url.endswith("/annotate")
    assert _tasks_left(participant) == "3 of 3 tasks left"
    with participant.expect_navigation():
        participant.get_by_role("button", name="Next task").click()

    for left in (2, 1, 0):
        assert "/task/" in participant.url
        assert participant.evaluate("document.documentElement.scrollWidth") <= VIEWPORTS[width]["width"]
        _judge(participant, phone)
        if left:
            assert _tasks_left(participant) == f"{left} of 3 tasks left"
            assert participant.locator("#quota progress").get_attribute("value") == str(3 - left)

    assert participant.url.endswith("/crowd/finished")
    assert participant.locator("#completion-code").inner_text() == "C0DE42"
    assert participant.evaluate("document.documentElement.scrollWidth") <= VIEWPORTS[width]["width"]
    participant.wait_for_url(COMPLETION_URL, timeout=15_000)  # the page sends the participant on by itself
    assert completions == [COMPLETION_URL]
    assert "submission complete" in participant.content()

    # Opened again from Prolific, without the old cookie: the same account, finished, code again.
    context.clear_cookies()
    participant.goto(_as_prolific_opens_it(link, "session-2"))
    with participant.expect_navigation():
        participant.get_by_role("button", name="Start").click()
    assert _tasks_left(participant) == "0 of 3 tasks left"
    with participant.expect_navigation():
        participant.get_by_role("button", name="Next task").click()
    assert participant.url.endswith("/crowd/finished")
    participant.get_by_role("link", name="Back to Prolific now").click()
    participant.wait_for_url(COMPLETION_URL)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"

    with database.read() as db:
        [user_id] = db.scalars(select(CrowdParticipant.user_id).where(CrowdParticipant.participant_id == PID)).all()
        assert db.scalar(select(func.count()).select_from(BwsJudgement).where(BwsJudgement.user_id == user_id)) == 3
        assert db.scalars(select(CrowdVisit.session_id).order_by(CrowdVisit.id)).all() == ["session-1", "session-2"]

    page.goto("/admin/crowd")  # the admin watches progress
    cells = page.locator("#crowd-links tbody tr").first.locator("td")
    assert [cells.nth(i).inner_text() for i in (6, 7, 8, 9)] == ["–", "1", "1", "3"]  # no cap, participants, finished, judgements
