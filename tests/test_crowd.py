"""Crowd-platform sign-in (app/services/crowd.py): links, ids, resuming, quotas and time limits, on
SQLite and PostgreSQL. The browser test is in tests/test_crowd_browser.py."""

import asyncio
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.deps import client_address
from app.models import Assignment, BwsJudgement, CrowdParticipant, CrowdVisit, User, utcnow
from app.services import crowd, tasks
from app.services.errors import Invalid
from tests.conftest import make_user, token_headers
from tests.factories import seed_bws_batch, submit_bws_by_ids
from tests.test_pages_annotate import HTML, csrf_of, login

COMPLETION_URL = "https://app.prolific.com/submissions/complete?cc=C0DE42"


def new_link(client, headers, **fields) -> dict:
    body = {"platform": "prolific", "task_quota": 2, "completion_code": "C0DE42", "completion_url": COMPLETION_URL,
            **fields}
    response = client.post("/api/v1/admin/crowd-links", headers=headers, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def prolific_query(pid: str = "5f1a2b3c4d5e6f7a8b9c0d1e", study: str = "study1", session: str = "sess1") -> str:
    return f"PROLIFIC_PID={pid}&STUDY_ID={study}&SESSION_ID={session}"


def join(client, token: str, query: str):
    """Opens the link as the platform would, then presses Start."""
    welcome = client.get(f"/join/{token}?{query}", headers=HTML)
    assert welcome.status_code == 200, welcome.text
    ids = dict(re.findall(r'name="(participant|study|session)" value="([^"]*)"', welcome.text))
    return client.post(f"/join/{token}", headers=HTML, data={"csrf": csrf_of(welcome.text), **ids})


def next_task(client):
    page = client.get("/annotate", headers=HTML)
    return client.post("/annotate/next", headers=HTML, data={"csrf": csrf_of(page.text)})


def participant_user(database, pid: str) -> User:
    with database.read() as db:
        return db.scalar(select(User).join(CrowdParticipant, CrowdParticipant.user_id == User.id)
                         .where(CrowdParticipant.participant_id == pid))


# ---------------------------------------------------------------- making links


@pytest.mark.parametrize("url", ["ftp://example.org/done", "javascript:alert(1)", "/submissions/complete",
                                 "https://", "https://example.org/a b", "https://example.org/\x07", ""])
def test_completion_url_must_be_absolute_http(url):
    with pytest.raises(Invalid) as refused:
        crowd.check_completion_url(url)
    assert refused.value.details[0]["loc"] == ["body", "completion_url"]


def test_completion_urls_that_pass():
    assert crowd.check_completion_url(COMPLETION_URL) == COMPLETION_URL
    assert crowd.check_completion_url(" http://127.0.0.1:8000/thanks ") == "http://127.0.0.1:8000/thanks"


def test_bad_links_are_refused_naming_the_field(client, admin_headers):
    for fields, name in [({"completion_url": "javascript:alert(1)"}, "completion_url"),
                         ({"completion_code": "has space"}, "completion_code"),
                         ({"task_quota": 0}, "task_quota"),
                         ({"session_minutes": 0}, "session_minutes"),
                         ({"platform": "upwork"}, "platform")]:
        body = {"platform": "prolific", "task_quota": 2, "completion_code": "C0DE42", "completion_url": COMPLETION_URL,
                **fields}
        response = client.post("/api/v1/admin/crowd-links", headers=admin_headers, json=body)
        assert response.status_code == 422, fields
        assert any(name in error["loc"] for error in response.json()["errors"]), response.json()
    assert client.get("/api/v1/admin/crowd-links", headers=admin_headers).json() == []


def test_link_tokens_are_unguessable_and_listed_with_placeholders(client, admin_headers):
    first, second = new_link(client, admin_headers), new_link(client, admin_headers, platform="mturk")
    assert len(first["token"]) >= 40 and first["token"] != second["token"]
    assert first["link"].endswith("PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}")
    assert "workerId=" in second["link"] and "assignmentId=" in second["link"]
    assert [link["id"] for link in client.get("/api/v1/admin/crowd-links", headers=admin_headers).json()] == \
        [second["id"], first["id"]]


# ---------------------------------------------------------------- signing in through a link


def test_participant_signs_in_without_password_and_resumes(client, database, admin_headers):
    link = new_link(client, admin_headers, session_minutes=30)
    seed_bws_batch(database, required=3)
    response = join(client, link["token"], prolific_query(session="sess1"))
    assert str(response.url).endswith("/annotate")
    user = participant_user(database, "5f1a2b3c4d5e6f7a8b9c0d1e")
    assert (user.role, user.task_quota) == ("annotator", 2)
    assert user.work_ends_at - user.created_at == timedelta(minutes=30)
    first = next_task(client)
    assert "/task/" in str(first.url)

    # A second visit (another browser, another platform session) resumes the same account and task.
    client.cookies.clear()
    again = join(client, link["token"], prolific_query(session="sess2"))
    assert str(again.url).endswith("/annotate")
    assert participant_user(database, "5f1a2b3c4d5e6f7a8b9c0d1e").id == user.id
    assert next_task(client).url == first.url
    with database.read() as db:
        visits = db.scalars(select(CrowdVisit.session_id).order_by(CrowdVisit.id)).all()
        assert visits == ["sess1", "sess2"]
        assert db.scalar(select(func.count()).select_from(User).where(User.task_quota.is_not(None))) == 1

    # Another participant gets an account of their own; nobody can log in with a password.
    client.cookies.clear()
    join(client, link["token"], prolific_query(pid="other-participant"))
    assert participant_user(database, "other-participant").id != user.id
    login = client.post("/api/v1/auth/token", json={"username": user.username, "password": crowd.NO_PASSWORD})
    assert login.status_code == 401


@pytest.mark.parametrize("query, named", [
    ("STUDY_ID=s&SESSION_ID=x", "PROLIFIC_PID"),
    ("PROLIFIC_PID=&STUDY_ID=s&SESSION_ID=x", "PROLIFIC_PID"),
    ("PROLIFIC_PID=abc&SESSION_ID=x", "STUDY_ID"),
    ("PROLIFIC_PID=%3Cscript%3E&STUDY_ID=s&SESSION_ID=x", "PROLIFIC_PID"),
    ("PROLIFIC_PID=a%20b&STUDY_ID=s&SESSION_ID=x", "PROLIFIC_PID"),
    ("PROLIFIC_PID=" + "a" * 41 + "&STUDY_ID=s&SESSION_ID=x", "PROLIFIC_PID"),
    ("PROLIFIC_PID=abc&STUDY_ID=s&SESSION_ID=x%00", "SESSION_ID"),
])
def test_missing_or_bad_ids_get_an_error_page_and_no_account(client, database, admin_headers, query, named):
    link = new_link(client, admin_headers)
    page = client.get(f"/join/{link['token']}?{query}", headers=HTML)
    assert page.status_code == 422
    assert named in page.text and "Start" not in page.text
    assert "<script>" not in page.text
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(CrowdParticipant)) == 0


def test_forged_start_form_is_checked_too(client, database, admin_headers):
    link = new_link(client, admin_headers)
    welcome = client.get(f"/join/{link['token']}?{prolific_query()}", headers=HTML)
    response = client.post(f"/join/{link['token']}", headers=HTML,
                           data={"csrf": csrf_of(welcome.text), "participant": "x y", "study": "s", "session": "t"})
    assert response.status_code == 422 and "PROLIFIC_PID" in response.text
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(CrowdParticipant)) == 0


def test_mturk_link_and_its_preview(client, database, admin_headers):
    link = new_link(client, admin_headers, platform="mturk")
    preview = client.get(f"/join/{link['token']}?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE&hitId=H1", headers=HTML)
    assert preview.status_code == 422 and "accept the HIT first" in preview.text
    join(client, link["token"], "workerId=A1B2C3D4E5&hitId=3ABCHIT&assignmentId=3XYZASSIGN")
    user = participant_user(database, "A1B2C3D4E5")
    assert user.username == f"mturk:{link['id']}:A1B2C3D4E5"
    with database.read() as db:
        visit = db.scalar(select(CrowdVisit))
        assert (visit.study_id, visit.session_id) == ("3ABCHIT", "3XYZASSIGN")


def test_unknown_and_closed_links_are_refused(client, database, admin_headers):
    assert client.get(f"/join/not-a-token?{prolific_query()}", headers=HTML).status_code == 404
    link = new_link(client, admin_headers)
    welcome = client.get(f"/join/{link['token']}?{prolific_query()}", headers=HTML)
    closed = client.post(f"/api/v1/admin/crowd-links/{link['id']}/close", headers=admin_headers)
    assert closed.status_code == 200 and closed.json()["closed_at"] is not None
    page = client.get(f"/join/{link['token']}?{prolific_query()}", headers=HTML)
    assert page.status_code == 410 and "closed" in page.text
    start = client.post(f"/join/{link['token']}", headers=HTML,
                        data={"csrf": csrf_of(welcome.text), "participant": "abc", "study": "s", "session": "t"})
    assert start.status_code == 410  # a Start page left open before the closing does not get in either
    assert client.post("/api/v1/admin/crowd-links/999/close", headers=admin_headers).status_code == 404
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(CrowdParticipant)) == 0


# ---------------------------------------------------------------- quota and time limit


def test_quota_counts_down_then_the_completion_code(client, database, admin_headers):
    link = new_link(client, admin_headers, task_quota=2)
    seed_bws_batch(database, required=3)
    queue = join(client, link["token"], prolific_query())
    assert "<strong>2</strong> of 2 tasks left" in queue.text
    user = participant_user(database, "5f1a2b3c4d5e6f7a8b9c0d1e")
    for left in (1, 0):
        page = next_task(client)
        leased = tasks.get_task(database, user, int(str(page.url).rsplit("/", 1)[1]))
        submit_bws_by_ids(database, user, leased, leased.items[0].continuation_id, leased.items[1].continuation_id)
        if left:
            assert f"<strong>{left}</strong> of 2 tasks left" in client.get("/annotate", headers=HTML).text
    done = next_task(client)
    assert str(done.url).endswith("/crowd/finished")
    assert "C0DE42" in done.text and f'content="5;url={COMPLETION_URL}"' in done.text.replace("&amp;", "&")
    listed = client.get("/api/v1/admin/crowd-links", headers=admin_headers).json()[0]
    assert (listed["participants"], listed["finished"], listed["judgements"]) == (1, 1, 2)
    # Resuming after the end shows the code again, and no third task is leased.
    client.cookies.clear()
    join(client, link["token"], prolific_query(session="later"))
    assert str(next_task(client).url).endswith("/crowd/finished")
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(Assignment).where(Assignment.user_id == user.id)) == 2


def test_skips_do_not_count_towards_the_quota(database):
    seed_bws_batch(database, required=3)
    user = _user_with_quota(database, "skipper", 1)
    leased = asyncio.run(tasks.next_task(database, user, 600))
    asyncio.run(tasks.skip_task(database, user, leased.assignment_id))
    assert asyncio.run(tasks.next_task(database, user, 600)) is not None
    assert tasks.progress(database, user).quota_left == 1


def _user_with_quota(database, username: str, quota: int | None, ends=None) -> User:
    make_user(database, username)
    with database.write() as db:
        db.execute(update(User).where(User.username == username).values(task_quota=quota, work_ends_at=ends))
        return db.scalar(select(User).where(User.username == username))


def test_api_refuses_a_new_task_once_the_quota_is_done(client, database):
    seed_bws_batch(database, required=3)
    user = _user_with_quota(database, "counted", 1)
    headers = token_headers(client, "counted")
    task = client.post("/api/v1/tasks/next", headers=headers).json()
    assert client.post("/api/v1/tasks/next", headers=headers).json()["assignment_id"] == task["assignment_id"]
    handles = [item["handle"] for item in task["items"]]
    submitted = client.post(f"/api/v1/tasks/{task['assignment_id']}/bws?next=true", headers=headers,
                            json={"best": handles[0], "worst": handles[1], "idempotency_key": "crowd-key-1"})
    assert submitted.status_code == 200 and submitted.json()["next_task"] is None
    refused = client.post("/api/v1/tasks/next", headers=headers)
    assert refused.status_code == 403
    assert refused.json() == {"detail": "you have done your quota of 1 task", "errors": [{"reason": "quota_reached"}]}
    assert client.get("/api/v1/me/progress", headers=headers).json()["quota_left"] == 0
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(Assignment).where(Assignment.user_id == user.id)) == 1


def test_concurrent_leases_of_one_participant_stay_within_the_quota(database):
    """Eight requests at once for a participant with one place left get the same single task."""
    seed_bws_batch(database, required=3)
    user = _user_with_quota(database, "eager", 2)
    first = asyncio.run(tasks.next_task(database, user, 600))
    submit_bws_by_ids(database, user, first, first.items[0].continuation_id, first.items[1].continuation_id)

    async def many():
        return await asyncio.gather(*(tasks.next_task(database, user, 600) for _ in range(8)), return_exceptions=True)

    results = asyncio.run(many())
    assert {r.assignment_id for r in results} == {results[0].assignment_id}, results
    submit_bws_by_ids(database, user, results[0], results[0].items[0].continuation_id,
                      results[0].items[1].continuation_id)
    refused = asyncio.run(many())
    assert all(isinstance(r, tasks.WorkLimitReached) and r.reason == "quota_reached" for r in refused), refused
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(Assignment).where(Assignment.user_id == user.id)) == 2


def test_time_up_lets_the_task_in_hand_finish_then_shows_a_page(client, database, admin_headers):
    link = new_link(client, admin_headers, task_quota=5, session_minutes=10)
    seed_bws_batch(database, required=3)
    join(client, link["token"], prolific_query())
    in_hand = next_task(client).url
    with database.write() as db:
        db.execute(update(User).where(User.task_quota.is_not(None)).values(work_ends_at=utcnow() - timedelta(seconds=1)))
    assert next_task(client).url == in_hand  # the running lease is still shown
    user = participant_user(database, "5f1a2b3c4d5e6f7a8b9c0d1e")
    leased = tasks.get_task(database, user, int(str(in_hand).rsplit("/", 1)[1]))
    submit_bws_by_ids(database, user, leased, leased.items[0].continuation_id, leased.items[1].continuation_id)
    page = next_task(client)
    assert str(page.url).endswith("/crowd/finished")
    assert "Your time is up" in page.text and "<strong>1</strong> of 5" in page.text
    assert "C0DE42" not in page.text


def test_finished_page_sends_others_back_to_work(client, database):
    make_user(database, "plain")
    login(client, "plain")
    assert client.get("/crowd/finished", headers=HTML, follow_redirects=False).headers["location"] == "/annotate"


def test_a_chosen_username_never_collides_with_a_participant(client, database, admin_headers):
    """Someone signed up (or an admin made an account) under the name the old scheme gave a
    participant, prolific-<link>-<PID>: the participant still gets in, with an account of their own."""
    link = new_link(client, admin_headers)
    pid = "5f1a2b3c4d5e6f7a8b9c0d1e"
    taken = make_user(database, f"prolific-{link['id']}-{pid}")
    started = join(client, link["token"], prolific_query(pid))
    assert started.status_code == 200 and started.url.path == "/annotate", started.text
    user = participant_user(database, pid)
    assert user.id != taken.id and user.username == f"prolific:{link['id']}:{pid}"
    with pytest.raises(Invalid):  # and nobody can choose a participant's name
        make_user(database, user.username)


# ---------------------------------------------------------------- limits on new accounts


def _pid(i: int) -> str:
    return f"5f1a2b3c4d5e6f7a8b9c{i:04d}"


def _participants(database) -> int:
    with database.read() as db:
        return db.scalar(select(func.count()).select_from(CrowdParticipant))


@pytest.fixture
def from_address(app):
    """from_address("192.0.2.7"): the client's requests come from that address from then on."""
    def use(address: str) -> None:
        app.dependency_overrides[client_address] = lambda: address
    yield use
    app.dependency_overrides.pop(client_address, None)


def test_one_address_cannot_mint_accounts(client, database, admin_headers, settings, from_address):
    """One client inventing participant ids gets its first few accounts, then 429 with Retry-After;
    participants who already have an account still come back; another address is not held up."""
    link = new_link(client, admin_headers)
    from_address("192.0.2.1")
    for i in range(settings.crowd_accounts_per_address):
        assert join(client, link["token"], prolific_query(_pid(i))).url.path == "/annotate"
    refused = join(client, link["token"], prolific_query(_pid(99)))
    assert refused.status_code == 429 and "from your address" in refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= settings.crowd_window_seconds
    assert _participants(database) == settings.crowd_accounts_per_address
    assert join(client, link["token"], prolific_query(_pid(0))).url.path == "/annotate"  # resuming is not counted
    from_address("192.0.2.7")
    assert join(client, link["token"], prolific_query(_pid(99))).url.path == "/annotate"
    assert _participants(database) == settings.crowd_accounts_per_address + 1


def test_one_link_takes_new_accounts_at_a_bounded_rate(client, database, admin_headers, settings, from_address):
    settings.crowd_accounts_per_link = 3  # the app reads its settings per request
    link = new_link(client, admin_headers)
    statuses = []
    for i in range(4):
        from_address(f"192.0.2.{i + 1}")
        started = join(client, link["token"], prolific_query(_pid(i)))
        statuses.append(started.status_code)
    assert statuses == [200, 200, 200, 429] and "on this study link" in started.text
    assert _participants(database) == 3


def test_a_link_takes_at_most_its_cap_of_participants(client, database, admin_headers, from_address):
    link = new_link(client, admin_headers, max_participants=2)
    assert link["max_participants"] == 2
    statuses = []
    for i in range(3):
        from_address(f"198.51.100.{i + 1}")
        full = join(client, link["token"], prolific_query(_pid(i)))
        statuses.append(full.status_code)
    assert statuses == [200, 200, 410] and "this study is full" in full.text
    assert join(client, link["token"], prolific_query(_pid(0))).url.path == "/annotate"  # back again
    assert _participants(database) == 2
    bad = client.post("/api/v1/admin/crowd-links", headers=admin_headers,
                      json={"platform": "prolific", "task_quota": 2, "completion_code": "C", "completion_url": COMPLETION_URL,
                            "max_participants": 0})
    assert bad.status_code == 422


def test_the_crowd_page_lists_each_participant(client, database, admin_headers):
    seed_bws_batch(database, prompts=1, per_prompt=4, required=1)
    link = new_link(client, admin_headers, name="Pilot")
    join(client, link["token"], prolific_query(_pid(1)))
    page = next_task(client)
    handles = re.findall(r'name="best" value="([A-Za-z0-9_-]+)"', page.text)
    client.post(str(page.url.path) + "/bws", headers=HTML, data={
        "csrf": csrf_of(page.text), "best": handles[0], "worst": handles[1],
        "idempotency_key": re.search(r'name="idempotency_key" value="([^"]+)"', page.text).group(1)})
    make_user(database, "root", "admin")
    login(client, "root")
    html = client.get("/admin/crowd", headers=HTML).text
    rows = re.search(r'<table class="crowd-participants">.*?</table>', html, re.S).group(0)
    cells = [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td>.*?</td>|<td class=\"num\">.*?</td>", rows)]
    assert cells[:2] == [_pid(1), f"prolific:{link['id']}:{_pid(1)}"]
    assert cells[3:6] == ["1", "–", "1"]  # one judgement of a quota of 2; one visit


def _lease_and_let_expire(client, headers, database) -> dict:
    task = client.post("/api/v1/tasks/next", headers=headers).json()
    with database.write() as db:
        db.execute(update(Assignment).where(Assignment.id == task["assignment_id"])
                   .values(expires_at=utcnow() - timedelta(seconds=1)))
    return task


def test_expired_leases_cannot_take_a_participant_past_the_quota(client, database):
    """Quota 2: four leases left to run out (each frees its place in the quota), then all four
    answered. The first two are stored (as surplus: late); the others are refused with 403
    quota_reached and not stored, so the quota ends at 2 of 2."""
    seed_bws_batch(database, required=3)
    user = _user_with_quota(database, "hoarder", 2)
    headers = token_headers(client, "hoarder")
    leased = [_lease_and_let_expire(client, headers, database) for _ in range(4)]
    assert len({task["assignment_id"] for task in leased}) == 4
    answers = []
    for n, task in enumerate(leased):
        handles = [item["handle"] for item in task["items"]]
        answers.append(client.post(f"/api/v1/tasks/{task['assignment_id']}/bws", headers=headers,
                                   json={"best": handles[0], "worst": handles[1], "idempotency_key": f"hoard-key-{n}"}))
    assert [answer.status_code for answer in answers] == [200, 200, 403, 403], [a.text for a in answers]
    assert answers[2].json() == {"detail": "you have done your quota of 2 tasks: this answer was not stored",
                                 "errors": [{"reason": "quota_reached"}]}
    progress = client.get("/api/v1/me/progress", headers=headers).json()
    assert (progress["done_total"], progress["quota_left"]) == (2, 0)
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(BwsJudgement).where(BwsJudgement.user_id == user.id)) == 2
        # the refused leases are closed, their places given back
        assert db.scalar(select(func.count()).select_from(Assignment).where(
            Assignment.user_id == user.id, Assignment.status == "skipped")) == 2


def test_a_page_answer_beyond_the_quota_is_not_stored_and_says_so(client, database, admin_headers):
    """Through the pages: a participant with quota 1 and two leases that ran out answers both; the
    second answer leads to the completion page with a note that it was not stored."""
    link = new_link(client, admin_headers, task_quota=1)
    seed_bws_batch(database, required=3)
    join(client, link["token"], prolific_query())
    user = participant_user(database, "5f1a2b3c4d5e6f7a8b9c0d1e")
    pages = []
    for _ in range(2):
        pages.append(next_task(client))
        with database.write() as db:
            db.execute(update(Assignment).where(Assignment.user_id == user.id)
                       .values(expires_at=utcnow() - timedelta(seconds=1)))
    answered = []
    for page in pages:
        assignment_id = int(str(page.url).rsplit("/", 1)[1])
        handles = re.findall(r'name="best" value="([^"]+)"', page.text)
        answered.append(client.post(f"/task/{assignment_id}/bws", headers=HTML, data={
            "csrf": csrf_of(page.text), "idempotency_key": f"page-key-{assignment_id}",
            "best": handles[0], "worst": handles[1]}))
    assert str(answered[1].url).endswith("/crowd/finished")
    assert "not stored" in answered[1].text and "C0DE42" in answered[1].text
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(BwsJudgement).where(BwsJudgement.user_id == user.id)) == 1
