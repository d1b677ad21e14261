"""Admin pages: access control, CSRF, the numbers they show, import, batches, users, exports; the overview API."""

import asyncio
import html
import json
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import Prompt
from app.routes import api_overview
from app.services import tasks
from tests.conftest import PASSWORD
from tests.factories import submit_bws_by_ids
from tests.test_stats import LEASE, make_user, seed_known_dataset

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def app_with_overview(app):
    # The lead includes api_overview in app/main.py; until then the test adds it.
    if not any(getattr(r, "path", "") == "/api/v1/admin/overview" for r in app.routes):
        app.include_router(api_overview.router)
    return app


@pytest.fixture
def web(app_with_overview):
    with TestClient(app_with_overview) as c:
        yield c


def csrf_of(client: TestClient, url: str) -> str:
    page = client.get(url)
    assert page.status_code == 200, page.text
    return CSRF.search(page.text).group(1)


def login(client: TestClient, username: str) -> None:
    token = csrf_of(client, "/login")
    response = client.post("/login", data={"username": username, "password": PASSWORD, "csrf": token},
                           follow_redirects=False)
    assert response.status_code == 303, response.text


@pytest.fixture
def admin(web, database):
    make_user(database, "root", "admin")
    login(web, "root")
    return web


def post_form(client: TestClient, page: str, action: str, data: dict | None = None, files=None):
    """Post a form the way a browser does (CSRF from the page), follow the 303 and return the page."""
    token = csrf_of(client, page)
    response = client.post(action, data={**(data or {}), "csrf": token}, files=files, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == page
    return client.get(page)


def text_of(page) -> str:
    """The page's visible text: tags dropped, entities decoded, whitespace collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page.text)))


ADMIN_PAGES = ["/admin", "/admin/scores", "/admin/import", "/admin/batches", "/admin/users", "/admin/exports"]


# ---------------------------------------------------------------- access


def test_pages_need_an_admin(web, database):
    for url in ADMIN_PAGES:
        response = web.get(url, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login"), url
    make_user(database, "ann")
    login(web, "ann")
    for url in ADMIN_PAGES + ["/admin/exports/ratings.csv"]:
        assert web.get(url, headers={"accept": "text/html"}).status_code == 403, url
    token = CSRF.search(web.get("/login", follow_redirects=True).text).group(1)
    assert web.post("/admin/invites", data={"role": "admin", "csrf": token}).status_code == 403


def test_posts_without_csrf_are_refused(admin, database):
    for action, data in [("/admin/users", {"username": "eve", "password": "x" * 10, "role": "admin"}),
                         ("/admin/invites", {"role": "admin"}),
                         ("/admin/batches/bws", {"seed": "1", "required": "3"}),
                         ("/admin/users/1/active", {"active": "false"})]:
        assert admin.post(action, data=data, follow_redirects=False).status_code == 403, action
        assert admin.post(action, data={**data, "csrf": "forged"}, follow_redirects=False).status_code == 403
    assert admin.post("/admin/import", files={"file": ("a.jsonl", b"{}")}).status_code == 403
    with database.read() as db:
        from app.services import users
        assert [u.username for u in users.list_users(db)] == ["root"]


def test_every_page_renders_for_an_empty_database(admin):
    for url in ADMIN_PAGES:
        page = admin.get(url)
        assert page.status_code == 200, url
        assert '/static/css/admin.css"' in page.text


# ---------------------------------------------------------------- numbers


def test_dashboard_shows_the_numbers(admin, database):
    known = seed_known_dataset(database)
    page = admin.get("/admin")
    assert page.status_code == 200
    body = page.text
    for element, value in [("count-users", 9), ("count-prompts", 3), ("count-continuations", 11),
                           ("count-tasks", 5), ("count-bws", 5), ("count-ratings", 6)]:
        assert f'id="{element}">{value}<' in body, element
    text = text_of(page)
    assert "(1 surplus; 6 used by exports and training)" in text and "1 skip" in text and "1 skips" not in text
    # Batch progress: the rating batch has 5 of 6 judgements, 83.3 %.
    assert re.search(rf"#{known.rating_batch} ratings</td><td>rating</td><td class=\"num\">3</td>\s*"
                     r"<td class=\"num\">2</td><td class=\"num\">6</td><td class=\"num\">5</td>", body)
    assert "83.3 %" in text and "100.0 %" in text
    # Annotator rows: a has 2 BWS, median 2.0 s, agreement 50 % / 50 %.
    row_a = re.search(r"<tr><td>a</td>.*?</tr>", body, re.S).group(0)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row_a, re.S)
    assert [html.unescape(c).strip() for c in cells[:12]] == ["a", "annotator", "2", "0", "0", "0", "2.0 s", "–", "50 %", "50 %", "1", "–"]
    assert ">Exclude</button>" in cells[12]  # no gold answers yet; their judgements are used
    # Chart: an SVG with labelled axes and 24 bars.
    assert "<svg" in body and "hour of day (UTC)" in body and ">judgements</text>" in body
    assert body.count('class="bar-bws"') == 24
    assert "5 BWS, 6 ratings" in body  # the current hour's tooltip
    # Alpha is 1.000 on all four dimensions.
    dims = re.search(r'<table id="dimensions">.*?</table>', body, re.S).group(0)
    assert dims.count(">1.000<") == 4 and "grammar" in dims


def test_scores_page_escapes_and_truncates(admin, database):
    data = "\n".join(json.dumps(r) for r in [
        {"prompt": "P", "prompt_id": "p", "continuation": "<script>alert(1)</script>" + "long " * 100, "source": "evil<b>"},
        *({"prompt": "P", "prompt_id": "p", "continuation": f"plain {i}", "source": "evil<b>"} for i in range(3)),
    ]).encode()
    post_form(admin, "/admin/import", "/admin/import", files={"file": ("s.jsonl", data, "application/json")})
    post_form(admin, "/admin/batches", "/admin/batches/bws", {"seed": "0", "required": "1"})
    annotator = make_user(database, "ann")
    view = asyncio.run(tasks.next_task(database, annotator, LEASE, ["bws"]))
    ids = [i.continuation_id for i in view.items]
    evil = next(i.continuation_id for i in view.items if i.text.startswith("<script>"))
    worst = next(i for i in ids if i != evil)
    submit_bws_by_ids(database, annotator, view, evil, worst)
    page = admin.get("/admin/scores")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "evil&lt;b&gt;" in page.text and "evil<b>" not in page.text
    assert "long " * 100 not in page.text  # truncated
    rows = re.findall(r"<tr><td class=\"num\">\d+</td>", page.text)
    assert len(rows) == 4
    assert "1.000" in page.text and "-1.000" in page.text


# ---------------------------------------------------------------- import


def test_import_through_the_page(admin):
    good = b'{"prompt": "A fox", "continuation": " ran.", "source": "gpt2"}\n{"prompt": "A fox", "continuation": " sat.", "source": "gpt2"}\n'
    page = post_form(admin, "/admin/import", "/admin/import", files={"file": ("good.jsonl", good, "application/json")})
    text = text_of(page)
    assert "Imported good.jsonl." in text
    assert "prompts created: 1" in text and "continuations created: 2" in text and "sources created: 1" in text
    assert "Imported" not in text_of(admin.get("/admin/import"))  # the flash is shown once

    bad = b'prompt,continuation,source\nA hen,laid an egg.,gpt2\nA cat,sat.,\n'
    page = post_form(admin, "/admin/import", "/admin/import", files={"file": ("bad.csv", bad, "text/csv")})
    assert 'class="flash bad"' in page.text
    row = re.search(r'<table class="errors">.*?<tbody>\s*<tr>(.*?)</tr>', page.text, re.S).group(1)
    line, field, message = (html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S))
    assert (line, field) == ("3", "source") and message
    assert "line 3" in text_of(page)

    page = post_form(admin, "/admin/import", "/admin/import", files={"file": ("", b"", "text/plain")})
    assert "Choose a file" in page.text or 'class="flash bad"' in page.text


def test_an_oversized_form_post_goes_back_to_its_page_with_the_error(settings, database):
    """A browser's post over the body limit: back to the page it came from (on this site), with the
    error shown there; without such a page, an error page; the API's 413 JSON is in test_imports.py."""
    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(**{**settings.model_dump(), "max_upload_bytes": 2048}), database)
    with TestClient(app) as browser:
        make_user(database, "root", "admin")
        login(browser, "root")
        token = csrf_of(browser, "/admin/import")

        def post(referer: str | None):
            headers = {"accept": "text/html"} | ({"referer": referer} if referer else {})
            return browser.post("/admin/import", data={"csrf": token}, headers=headers, follow_redirects=False,
                                files={"file": ("big.jsonl", b'{"prompt": "A fox"}\n' * 200, "application/json")})

        response = post("http://testserver/admin/import")
        assert response.status_code == 303 and response.headers["location"] == "/admin/import"
        text = text_of(browser.get("/admin/import"))
        assert "Nothing was imported or saved: the upload is larger than the 2 KB limit." in text
        assert "Import prompts and continuations" in text
        for elsewhere in (None, "http://other.example/admin/import", "http://testserver//other.example/x"):
            response = post(elsewhere)
            assert response.status_code == 413 and response.headers["content-type"].startswith("text/html")
            assert "larger than the 2 KB limit" in text_of(response)
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(Prompt)) == 0


# ---------------------------------------------------------------- batches


def test_build_batches_from_the_page(admin, database):
    from tests.factories import seed_stories

    by_prompt = seed_stories(database, prompts=3, per_prompt=5)
    p1, p2, p3 = sorted(by_prompt)
    page = admin.get("/admin/batches")
    assert all(f'<option value="{p}">' in page.text for p in (p1, p2, p3))

    page = post_form(admin, "/admin/batches", "/admin/batches/bws",
                     {"name": "round <1>", "seed": "7", "required": "2", "prompt_ids": [str(p1)], "prompt_ids_text": f"{p2}"})
    text = text_of(page)
    assert "Built BWS batch #1 “round <1>” over 2 prompts (seed 7, R = 2)." in text
    assert "round &lt;1&gt;" in page.text
    with database.read() as db:
        from sqlalchemy import select

        from app.models import Batch, Task
        batch = db.scalar(select(Batch))
        assert (batch.seed, batch.annotations_per_task, batch.kind) == (7, 2, "bws")
        assert set(db.scalars(select(Task.prompt_id).where(Task.batch_id == batch.id))) == {p1, p2}

    page = post_form(admin, "/admin/batches", "/admin/batches/rating", {"required": "3", "prompt_ids_text": str(p3)})
    assert "Built rating batch #2" in text_of(page) and "with 5 continuations (R = 3)" in text_of(page)
    refused = admin.post("/admin/batches/bws", data={"seed": "1", "required": "2", "prompt_ids_text": "x1",
                                                     "csrf": csrf_of(admin, "/admin/batches")}, follow_redirects=False)
    assert refused.status_code == 422 and "prompt_ids_text: ids must be whole numbers" in refused.text
    page = post_form(admin, "/admin/batches", "/admin/batches/bws", {"seed": "1", "required": "0"})
    assert "No batch built" in text_of(page)


# ---------------------------------------------------------------- users


def test_users_roles_activation_and_invites(admin, database):
    page = post_form(admin, "/admin/users", "/admin/users", {"username": "newbie", "password": "long enough pw", "role": "evaluator"})
    assert "Created evaluator newbie." in text_of(page)
    with database.read() as db:
        from app.services import users
        newbie = next(u for u in users.list_users(db) if u.username == "newbie")
        root = next(u for u in users.list_users(db) if u.username == "root")

    page = post_form(admin, "/admin/users", f"/admin/users/{newbie.id}/role", {"role": "annotator"})
    assert "newbie is now annotator." in text_of(page)
    page = post_form(admin, "/admin/users", f"/admin/users/{newbie.id}/active", {"active": "false"})
    assert "newbie is deactivated." in text_of(page)
    page = post_form(admin, "/admin/users", f"/admin/users/{newbie.id}/active", {"active": "true"})
    assert "newbie is active." in text_of(page)
    page = post_form(admin, "/admin/users", f"/admin/users/{root.id}/active", {"active": "false"})
    assert "cannot deactivate your own account" in text_of(page)
    page = post_form(admin, "/admin/users", f"/admin/users/{root.id}/role", {"role": "annotator"})
    assert "cannot take away your own admin role" in text_of(page)
    page = post_form(admin, "/admin/users", "/admin/users", {"username": "x", "password": "short", "role": "admin"})
    assert "No user created: password must have at least 8 characters" in text_of(page)

    page = post_form(admin, "/admin/users", "/admin/invites", {"role": "evaluator", "days": "3"})
    url = re.search(r'value="(http://testserver/invite/[A-Za-z0-9_\-]+)"', page.text).group(1)
    assert "Invite link for a new evaluator" in text_of(page)
    assert url in admin.get("/admin/users").text  # listed under open invites
    with TestClient(admin.app) as stranger:
        assert stranger.get(url.removeprefix("http://testserver")).status_code == 200


# ---------------------------------------------------------------- exports


def test_exports_page_and_download(admin, database):
    from app.services import exports

    seed_known_dataset(database)
    page = admin.get("/admin/exports")
    for name in exports.EXPORT_NAMES:
        for fmt in exports.FORMATS:
            assert f'href="/admin/exports/{name}.{fmt}"' in page.text
    response = admin.get("/admin/exports/judgements.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(exports.media_type("csv").split(";")[0])
    assert exports.filename("judgements", "csv") in response.headers["content-disposition"]
    assert len(response.text.strip().splitlines()) == 1 + 5  # header + 5 BWS judgements
    assert admin.get("/admin/exports/nothing.csv").status_code == 404
    assert admin.get("/admin/exports/ratings.xlsx").status_code == 404


# ---------------------------------------------------------------- API


def test_overview_api(web, database):
    from tests.conftest import token_headers

    seed_known_dataset(database)
    assert web.get("/api/v1/admin/overview").status_code == 401
    assert web.get("/api/v1/admin/overview", headers=token_headers(web, "a")).status_code == 403
    headers = token_headers(web, "boss")
    body = web.get("/api/v1/admin/overview", headers=headers).json()
    assert body["counts"]["bws_judgements"] == 5 and body["counts"]["ratings_surplus"] == 1
    assert len(body["per_hour"]) == 24 and {d["alpha"] for d in body["reliability"]["dimensions"]} == {1.0}
    a = next(x for x in body["annotators"] if x["username"] == "a")
    assert (a["best_agreement"], a["median_bws_ms"]) == (0.5, 2000.0)
    scores = web.get("/api/v1/admin/scores", params={"limit": 3}, headers=headers).json()
    assert len(scores) == 3 and scores[0]["counting"] == 1.0
    assert web.get("/api/v1/admin/scores", params={"limit": 0}, headers=headers).status_code == 422


def test_scores_and_overview_shown_count_only_usable_judgements(web, database):
    """The scores page and API, and the dashboard, leave out an excluded annotator's judgements and gold
    answers, as exports and training do (the numbers, by hand, in test_stats)."""
    from tests.conftest import token_headers
    from tests.test_stats import _exclude_and_mark_gold

    known = seed_known_dataset(database)
    _exclude_and_mark_gold(database, known)
    headers = token_headers(web, "boss")
    scores = web.get("/api/v1/admin/scores", headers=headers).json()
    assert [(s["continuation_id"], s["appearances"], s["best"]) for s in scores] == [
        (known.c[0], 3, 3), (known.c[1], 3, 0), (known.c[2], 3, 0), (known.c[3], 3, 0)]
    body = web.get("/api/v1/admin/overview", headers=headers).json()
    assert (body["reliability"]["bws_judgements"], body["reliability"]["agreement_n"]) == (3, 3)
    login(web, "boss")
    rows = re.findall(r"<tr><td class=\"num\">\d+</td><td class=\"num\">(\d+)</td>", web.get("/admin/scores").text)
    assert [int(r) for r in rows] == known.c
    dashboard = text_of(web.get("/admin"))
    assert "5 BWS judgements (0 surplus; 3 used by exports and training)" in dashboard
    assert "6 ratings (1 surplus; 2 used by exports and training)" in dashboard
