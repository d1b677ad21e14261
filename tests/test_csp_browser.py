"""In headless Chromium, under the real Content-Security-Policy: the login page, an annotator's task
page, admin pages, an error page and /api/docs cause no CSP violation, and /api/docs renders Swagger
UI without one request to another host."""

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.config import Settings
from app.db import Database
from app.migrate import upgrade_to_head
from tests.conftest import PASSWORD, TEST_SECRET_KEY, make_user
from tests.factories import seed_bws_batch
from tests.live_server import LiveServer
from tests.test_browser import playwright_browser  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser

# Runs before any page script and outside the page's CSP: collects every violation the page reports.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI + " " + e.sourceFile + ":" + e.lineNumber);
});
"""


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveServer, Database]]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'csp.db'}", data_dir=tmp_path / "data",
                        secret_key=TEST_SECRET_KEY)
    upgrade_to_head(settings.resolved_database_url)
    database = Database.from_url(settings.resolved_database_url)
    from app.main import create_app

    with LiveServer(create_app(settings, database)) as server:
        yield server, database
    database.engine.dispose()


class Watched:
    """A page with every CSP violation, console error and request recorded."""

    def __init__(self, browser, base_url: str):
        self.context = browser.new_context(base_url=base_url)
        self.context.set_default_timeout(15_000)
        self.context.add_init_script(RECORD_VIOLATIONS)
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def visit(self, path: str, ready: str = "body") -> None:
        response = self.page.goto(path)
        assert response is not None and response.status < 500, path
        self.page.wait_for_selector(ready)
        self.page.wait_for_load_state("networkidle")
        self.check(path)

    def check(self, where: str) -> None:
        violations = self.page.evaluate("window.__csp")
        reported = [m for m in self.console if "Content Security Policy" in m or "Refused to" in m]
        assert not violations and not reported, f"CSP violations on {where}: {violations} {reported}"
        assert not self.errors, f"JavaScript errors on {where}: {self.errors}"

    def login(self, username: str) -> None:
        self.visit("/login", "#username")
        self.page.fill("#username", username)
        self.page.fill("#password", PASSWORD)
        with self.page.expect_navigation():
            self.page.locator("form.stack button").click()
        self.check("the page after logging in")


def test_pages_and_api_docs_keep_the_policy(playwright_browser, live):
    browser = playwright_browser
    server, database = live
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    make_user(database, "ann")
    make_user(database, "boss", "admin")

    annotator = Watched(browser, server.url)
    annotator.login("ann")
    with annotator.page.expect_navigation():
        annotator.page.get_by_role("button", name="Next task").click()
    assert "/task/" in annotator.page.url
    annotator.page.wait_for_load_state("networkidle")
    annotator.check("the task page")
    annotator.page.keyboard.press("Digit1")  # the task page's script runs under the policy
    assert annotator.page.locator('input[name="best"]').first.is_checked()
    annotator.visit("/no-such-page")  # the error page, with its "Go back" script
    annotator.context.close()

    admin = Watched(browser, server.url)
    admin.login("boss")
    for path in ("/admin", "/admin/models", "/admin/training", "/admin/users", "/admin/exports"):
        admin.visit(path, "nav.admin-nav")
    admin.visit("/api/docs", ".swagger-ui .opblock")
    assert "storyloop" in admin.page.locator(".swagger-ui .info .title").inner_text()
    assert admin.page.locator(".swagger-ui .opblock").count() > 10  # the operations rendered
    own = urlsplit(server.url).netloc
    elsewhere = [u for u in admin.requests if not u.startswith("data:") and urlsplit(u).netloc != own]
    assert not elsewhere, f"requests to other hosts: {elsewhere}"
    admin.context.close()
