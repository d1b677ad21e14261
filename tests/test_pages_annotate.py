"""Browser pages without a browser: login, invites, the BWS and rating forms, skip, CSRF, escaping."""

import re

import pytest
from sqlalchemy import func, select

from app.models import Assignment, BwsJudgement, Continuation, ModelVersion, Prompt, Rating, Task
from app.services import users
from app.services.tasks import build_bws_batch
from tests.conftest import PASSWORD, make_user
from tests.factories import HANDLES, seed_bws_batch, seed_rating_batch

HTML = {"Accept": "text/html"}


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no field {name}"
    return match.group(1)


def login(client, username: str, password: str = PASSWORD, next_url: str = ""):
    page = client.get("/login", headers=HTML)
    return client.post("/login", headers=HTML, data={"csrf": csrf_of(page.text), "username": username,
                                                     "password": password, "next": next_url})


def start(client, queue: str = "annotate"):
    page = client.get(f"/{queue}", headers=HTML)
    assert page.status_code == 200, page.text
    return client.post(f"/{queue}/next", headers=HTML, data={"csrf": csrf_of(page.text)})


def assignment_id_of(response) -> int:
    match = re.search(r"/task/(\d+)$", str(response.url))
    assert match, f"not on a task page: {response.url}"
    return int(match.group(1))


def shown_handles(html: str, name: str = "best") -> list[str]:
    return re.findall(rf'name="{name}" value="([A-Za-z0-9_-]+)"', html)


# ---------------------------------------------------------------- signing in


def test_anonymous_is_sent_to_login(client, database):
    for path in ("/", "/annotate", "/evaluate", "/task/1", "/done"):
        response = client.get(path, headers=HTML, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login"), path
    assert client.get("/annotate", headers=HTML, follow_redirects=False).headers["location"] == "/login?next=/annotate"
    assert client.get("/guidelines", headers=HTML).status_code == 200  # readable before joining


def test_login_wrong_password_next_and_logout(client, database):
    make_user(database, "ann")
    wrong = login(client, "ann", "not the password")
    assert wrong.status_code == 401
    assert "Wrong username or password" in wrong.text
    assert 'value="ann"' in wrong.text  # the username is kept
    assert login(client, "nobody", PASSWORD).status_code == 401

    before = client.get("/login", headers=HTML)
    ok = login(client, "ann", next_url="/guidelines")
    assert ok.status_code == 200 and ok.url.path == "/guidelines"
    assert "ann (annotator)" in ok.text
    assert csrf_of(ok.text) != csrf_of(before.text)  # the session was rotated on login
    assert client.get("/", headers=HTML).url.path == "/annotate"

    out = client.post("/logout", headers=HTML, data={"csrf": csrf_of(ok.text)})
    assert out.url.path == "/login"
    assert client.get("/annotate", headers=HTML, follow_redirects=False).status_code == 303


@pytest.mark.parametrize("evil", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"])
def test_login_next_only_goes_to_local_paths(client, database, evil):
    make_user(database, "ann")
    response = login(client, "ann", next_url=evil)
    assert response.url.host == "testserver" and response.url.path == "/annotate"


def test_home_by_role(client, database):
    make_user(database, "eva", "evaluator")
    assert login(client, "eva").url.path == "/evaluate"
    assert client.get("/annotate", headers=HTML).url.path == "/evaluate"


def test_join_by_invite(client, database):
    with database.write() as db:
        token = users.create_invite(db, "evaluator", None).token
    page = client.get(f"/invite/{token}", headers=HTML)
    assert page.status_code == 200 and "evaluator" in page.text
    csrf = csrf_of(page.text)
    differ = client.post(f"/invite/{token}", headers=HTML,
                         data={"csrf": csrf, "username": "newbie", "password": PASSWORD, "password2": "other one"})
    assert differ.status_code == 422 and "The two passwords differ" in differ.text
    short = client.post(f"/invite/{token}", headers=HTML,
                        data={"csrf": csrf, "username": "newbie", "password": "short", "password2": "short"})
    assert short.status_code == 422 and "at least 8 characters" in short.text

    joined = client.post(f"/invite/{token}", headers=HTML,
                         data={"csrf": csrf, "username": "newbie", "password": PASSWORD, "password2": PASSWORD})
    assert joined.status_code == 200 and joined.url.path == "/evaluate"
    assert "newbie (evaluator)" in joined.text
    # Used once: the link is dead now, and the new account can log in.
    assert client.get(f"/invite/{token}", headers=HTML).status_code == 404
    client.cookies.clear()
    assert login(client, "newbie").url.path == "/evaluate"


def test_unknown_invite(client, database):
    assert client.get("/invite/nope", headers=HTML).status_code == 404


def test_csrf_missing_is_refused(client, database):
    make_user(database, "ann")
    seed_bws_batch(database, prompts=1, per_prompt=4)
    assert client.post("/login", data={"username": "ann", "password": PASSWORD}).status_code == 403
    login(client, "ann")
    assert client.post("/annotate/next", headers=HTML).status_code == 403
    assert client.post("/annotate/next", headers=HTML, data={"csrf": "forged"}).status_code == 403
    assignment_id = assignment_id_of(start(client))
    handles = shown_handles(client.get(f"/task/{assignment_id}", headers=HTML).text)
    refused = client.post(f"/task/{assignment_id}/bws", headers=HTML,
                          data={"best": handles[0], "worst": handles[1], "idempotency_key": "k" * 32})
    assert refused.status_code == 403
    assert client.post(f"/task/{assignment_id}/skip", headers=HTML).status_code == 403
    assert client.post("/logout", headers=HTML).status_code == 403
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(BwsJudgement)) == 0


# ---------------------------------------------------------------- best-worst


def test_bws_form_flow_best_equals_worst_and_double_submit(client, database):
    seed_bws_batch(database, prompts=1, per_prompt=4, required=2)  # exactly one tuple
    make_user(database, "ann")
    login(client, "ann")
    queue = client.get("/annotate", headers=HTML)
    assert "done today" in queue.text and "Next task" in queue.text

    task = start(client)
    assignment_id = assignment_id_of(task)
    html = task.text
    assert "Shift" in html and "Best and worst must differ" in html  # shortcut hint and the rule, on the page
    handles = shown_handles(html)
    assert shown_handles(html, "worst") == handles and len(handles) == 4
    with database.read() as db:
        ids = db.get(Assignment, assignment_id).item_order  # shown in the assignment's order, under handles
        assert [HANDLES.handle(assignment_id, c) for c in ids] == handles
        version_name = db.scalar(select(ModelVersion.name))
    assert version_name not in html  # blind
    key = field(html, "idempotency_key")
    assert len(key) >= 32
    assert field(html, "duration_ms") == ""

    same = client.post(f"/task/{assignment_id}/bws", headers=HTML,
                       data={"csrf": csrf_of(html), "best": handles[1], "worst": handles[1], "idempotency_key": key})
    assert same.status_code == 422
    assert "Best and worst must differ" in same.text
    missing = client.post(f"/task/{assignment_id}/bws", headers=HTML,
                          data={"csrf": csrf_of(html), "best": handles[1], "idempotency_key": key})
    assert missing.status_code == 422 and "Choose one best and one worst" in missing.text

    body = {"csrf": csrf_of(html), "best": handles[2], "worst": handles[0], "idempotency_key": key}
    first = client.post(f"/task/{assignment_id}/bws", headers=HTML, data=body)
    assert first.status_code == 200 and first.url.path == "/done"  # the only task: nothing left
    assert "Saved." in first.text and "Nothing left for you" in first.text
    again = client.post(f"/task/{assignment_id}/bws", headers=HTML, data=body)  # double click / resubmit
    assert again.status_code == 200 and "Already saved." in again.text

    with database.read() as db:
        judgements = db.scalars(select(BwsJudgement)).all()
        assert len(judgements) == 1
        assert (judgements[0].best_id, judgements[0].worst_id) == (ids[2], ids[0])
        assert judgements[0].idempotency_key == key and judgements[0].shown_order == ids
        assert judgements[0].duration_ms is not None  # no JS: the server measured from the lease
        assert db.scalar(select(Task.done_count)) == 1
    assert re.search(r"<strong>1</strong>\s+today", client.get("/done", headers=HTML).text)


def test_bws_redirects_straight_to_the_next_task_with_browser_duration(client, database):
    seed_bws_batch(database, prompts=2, per_prompt=4, required=1)  # two tuples
    make_user(database, "ann")
    login(client, "ann")
    task = start(client)
    first_id = assignment_id_of(task)
    handles = shown_handles(task.text)
    after = client.post(f"/task/{first_id}/bws", headers=HTML,
                        data={"csrf": csrf_of(task.text), "best": handles[0], "worst": handles[3],
                              "idempotency_key": field(task.text, "idempotency_key"), "duration_ms": "4321"})
    second_id = assignment_id_of(after)
    assert second_id != first_id and "Saved." in after.text
    assert "Saved." not in client.get(f"/task/{second_id}", headers=HTML).text  # the flash shows once
    with database.read() as db:
        assert db.scalar(select(BwsJudgement.duration_ms)) == 4321
    # Going back to the finished task shows that it is done, not a form.
    back = client.get(f"/task/{first_id}", headers=HTML)
    assert "already submitted" in back.text and 'name="best"' not in back.text


def test_someone_elses_task_is_not_found(client, database):
    seed_bws_batch(database, prompts=1, per_prompt=4)
    make_user(database, "ann")
    make_user(database, "bob")
    login(client, "ann")
    assignment_id = assignment_id_of(start(client))
    client.cookies.clear()
    page = login(client, "bob")
    assert client.get(f"/task/{assignment_id}", headers=HTML).status_code == 404
    refused = client.post(f"/task/{assignment_id}/skip", headers=HTML, data={"csrf": csrf_of(page.text)})
    assert refused.status_code == 404


def test_continuation_text_is_escaped(client, database):
    with database.write() as db:
        version = ModelVersion(name="secret-policy-v7", kind="policy", algorithm="ppo")
        prompt = Prompt(text='The <b>fox</b> said "hi" & left.')
        db.add_all([version, prompt])
        db.flush()
        for i in range(4):
            text = "<script>alert('pwned')</script> evil" if i == 0 else f"Plain continuation {i}."
            db.add(Continuation(prompt_id=prompt.id, model_version_id=version.id, text=text))
        db.flush()
        ids = list(db.scalars(select(Continuation.id).order_by(Continuation.id)))
        build_bws_batch(db, "xss", {prompt.id: ids}, seed=1, required=1)
    make_user(database, "ann")
    login(client, "ann")
    html = start(client).text
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt; evil" in html
    assert "<b>fox</b>" not in html and "&lt;b&gt;fox&lt;/b&gt;" in html
    assert "secret-policy-v7" not in html and "ppo" not in html  # blind


# ---------------------------------------------------------------- rating and skip


def test_rating_skip_and_rating_submit(client, database):
    seed_rating_batch(database, required=1)  # three continuations to rate
    make_user(database, "eva", "evaluator")
    login(client, "eva")
    task = start(client, "evaluate")
    first_id = assignment_id_of(task)
    for label in ("Grammar", "Creativity", "Consistency", "Plot coherence"):
        assert label in task.text
    assert "Fluent, no errors" in task.text  # the rubric is on the page

    skipped = client.post(f"/task/{first_id}/skip", headers=HTML,
                          data={"csrf": csrf_of(task.text), "reason": "  text is cut off  "})
    second_id = assignment_id_of(skipped)
    assert second_id != first_id and "Skipped." in skipped.text
    with database.read() as db:
        first = db.get(Assignment, first_id)
        assert (first.status, first.skip_reason) == ("skipped", "text is cut off")

    key = field(skipped.text, "idempotency_key")
    partial = client.post(f"/task/{second_id}/rating", headers=HTML,
                          data={"csrf": csrf_of(skipped.text), "grammar": "4", "plot": "2", "idempotency_key": key})
    assert partial.status_code == 422
    assert "missing: Creativity, Consistency" in partial.text
    assert re.search(r'name="grammar" value="4"[^>]*checked', partial.text)  # the answers are kept

    out_of_range = client.post(f"/task/{second_id}/rating", headers=HTML,
                               data={"csrf": csrf_of(skipped.text), "grammar": "6", "creativity": "3",
                                     "consistency": "3", "plot": "3", "idempotency_key": key})
    assert out_of_range.status_code == 422

    done = client.post(f"/task/{second_id}/rating", headers=HTML,
                       data={"csrf": csrf_of(skipped.text), "grammar": "5", "creativity": "3", "consistency": "4",
                             "plot": "2", "comment": "  nice twist ", "idempotency_key": key, "duration_ms": "900"})
    assert "Saved." in done.text
    third_id = assignment_id_of(done)
    assert third_id not in (first_id, second_id)
    with database.read() as db:
        rating = db.scalar(select(Rating))
        assert (rating.grammar, rating.creativity, rating.consistency, rating.plot) == (5, 3, 4, 2)
        assert rating.comment == "nice twist" and rating.duration_ms == 900 and not rating.is_surplus
        assert db.scalar(select(func.count()).select_from(Rating)) == 1

    # A rating form posted as BWS (or the reverse) is refused.
    assert client.post(f"/task/{third_id}/bws", headers=HTML,
                       data={"csrf": csrf_of(done.text), "best": "1", "worst": "2",
                             "idempotency_key": "x" * 32}).status_code == 422


def test_nothing_left_page(client, database):
    make_user(database, "ann")
    login(client, "ann")
    response = start(client)
    assert response.url.path == "/done"
    assert "Nothing left for you" in response.text
    make_user(database, "eva", "evaluator")
    seed_bws_batch(database, prompts=1, per_prompt=4)  # BWS only: nothing for an evaluator
    client.cookies.clear()
    login(client, "eva")
    assert start(client, "evaluate").url.path == "/done"


def test_guidelines_explain_bws_rubric_and_keys(client, database):
    html = client.get("/guidelines", headers=HTML).text
    for words in ("Best-Worst Scaling", "Grammar", "Creativity", "Consistency", "Plot coherence",
                  "Keyboard shortcuts", "Shift"):
        assert words in html
