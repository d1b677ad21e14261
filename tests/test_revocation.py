"""Revocation holds on the very next request: role and active state are read on every API call,
browser sessions are server-side rows (logout, deactivation, role change and password change end
them), and API tokens expire, can be listed and revoked, and are capped per user.

Time is moved with a settable clock (app.state.clock), never by sleeping. SQLite and PostgreSQL.
"""

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.models import ApiToken, Assignment, LoginThrottle, User, UserSession
from app.services import sessions
from tests.conftest import PASSWORD, make_user, token_headers
from tests.factories import seed_bws_batch
from tests.test_login_throttle import Clock
from tests.test_pages_annotate import HTML, csrf_of, login as form_login

NEW_PASSWORD = "a brand new password"


@pytest.fixture
def clock(app) -> Clock:
    app.state.clock = Clock()
    return app.state.clock


def new_token(client, username: str, password: str = PASSWORD, **body) -> dict:
    response = client.post("/api/v1/auth/token", json={"username": username, "password": password, **body})
    assert response.status_code == 200, response.text
    return response.json()


def bearer(token: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


def count(database, model, *where) -> int:
    with database.read() as db:
        return db.scalar(select(func.count()).select_from(model).where(*where))


def user_row(database, username: str) -> tuple:
    with database.read() as db:
        return tuple(db.execute(select(User.__table__).where(User.username == username)).one())


def signed_in_browser(app, username: str, password: str = PASSWORD):
    """A TestClient of its own (its own cookie jar) signed in through the login form."""
    from fastapi.testclient import TestClient

    browser = TestClient(app, follow_redirects=False)
    assert form_login(browser, username, password).status_code == 303
    assert browser.get("/account", headers=HTML).status_code == 200
    return browser


def is_sent_to_login(response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith("/login")


# ---------------------------------------------------------------- every request reads role and activity


def test_a_deactivated_users_token_is_refused_on_the_very_next_request(client, database, admin_headers, clock):
    ann = make_user(database, "ann")
    seed_bws_batch(database)
    headers = token_headers(client, "ann")
    assert client.get("/api/v1/me", headers=headers).status_code == 200

    assert client.patch(f"/api/v1/admin/users/{ann.id}", json={"is_active": False},
                        headers=admin_headers).status_code == 200
    refused = client.post("/api/v1/tasks/next", headers=headers)
    assert refused.status_code == 401
    assert count(database, Assignment) == 0  # nothing leased
    assert count(database, ApiToken, ApiToken.user_id == ann.id) == 0  # and the token is gone for good

    # Reactivated, the old token stays dead: a new login makes a new one.
    assert client.patch(f"/api/v1/admin/users/{ann.id}", json={"is_active": True},
                        headers=admin_headers).status_code == 200
    assert client.get("/api/v1/me", headers=headers).status_code == 401


def test_an_inactive_user_in_the_database_is_refused_at_once(client, database, clock):
    """Active state is read per request, not cached: a change made behind the app's back (another
    worker, SQL by hand) holds on the next request even though the token row still exists."""
    ann = make_user(database, "ann")
    headers = token_headers(client, "ann")
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    with database.write() as db:
        db.execute(update(User).where(User.id == ann.id).values(is_active=False))
    assert client.get("/api/v1/me", headers=headers).status_code == 401
    assert count(database, ApiToken, ApiToken.user_id == ann.id) == 1


def test_a_demoted_admins_token_gets_403_on_the_next_admin_request(client, database, clock):
    make_user(database, "boss", "admin")
    headers = token_headers(client, "boss")
    assert client.post("/api/v1/admin/users", headers=headers,
                       json={"username": "first", "password": PASSWORD, "role": "admin"}).status_code == 201
    with database.write() as db:  # demoted behind the app's back: the token row stays
        db.execute(update(User).where(User.username == "boss").values(role="annotator"))
    users_before = count(database, User)

    refused = client.post("/api/v1/admin/users", headers=headers,
                          json={"username": "second", "password": PASSWORD, "role": "admin"})
    assert refused.status_code == 403
    assert count(database, User) == users_before  # nobody was created
    assert client.get("/api/v1/me", headers=headers).json()["role"] == "annotator"


def test_a_role_change_through_the_app_revokes_tokens_and_sessions(app, client, database, clock):
    boss = make_user(database, "boss", "admin")
    make_user(database, "other", "admin")
    boss_headers, other_headers = token_headers(client, "boss"), token_headers(client, "other")
    browser = signed_in_browser(app, "boss")

    assert client.patch(f"/api/v1/admin/users/{boss.id}", json={"role": "annotator"},
                        headers=other_headers).status_code == 200
    refused = client.post("/api/v1/admin/users", headers=boss_headers,
                          json={"username": "sneaky", "password": PASSWORD, "role": "admin"})
    assert refused.status_code == 401
    assert count(database, User, User.username == "sneaky") == 0
    assert is_sent_to_login(browser.get("/admin/users", headers=HTML))
    assert count(database, ApiToken, ApiToken.user_id == boss.id) == 0
    assert count(database, UserSession, UserSession.user_id == boss.id) == 0
    # Setting the role a user already has changes nothing and revokes nothing.
    assert client.patch(f"/api/v1/admin/users/{boss.id}", json={"role": "annotator"},
                        headers=other_headers).status_code == 200
    assert client.get("/api/v1/me", headers=other_headers).status_code == 200


# ---------------------------------------------------------------- browser sessions


def test_a_cookie_copied_before_logout_gets_the_login_page_after_it(app, database, clock):
    make_user(database, "ann")
    browser = signed_in_browser(app, "ann")
    copied = dict(browser.cookies)
    assert count(database, UserSession) == 1

    page = browser.get("/account", headers=HTML)
    assert browser.post("/logout", headers=HTML, data={"csrf": csrf_of(page.text)}).status_code == 303
    assert count(database, UserSession) == 0

    from fastapi.testclient import TestClient

    thief = TestClient(app, follow_redirects=False, cookies=copied)
    assert is_sent_to_login(thief.get("/annotate", headers=HTML))
    assert is_sent_to_login(thief.get("/account", headers=HTML))


def test_the_cookie_alone_signs_in_nobody(app, client, database, settings, clock):
    """A validly signed cookie without a session row (e.g. made before the upgrade, with user_id)
    is anonymous."""
    import base64
    import json

    from fastapi.testclient import TestClient
    from itsdangerous import TimestampSigner

    ann = make_user(database, "ann")
    for data in ({"user_id": ann.id}, {sessions.COOKIE_KEY: "made-up"}):
        signed = TimestampSigner(settings.secret_key).sign(base64.b64encode(json.dumps(data).encode())).decode()
        forged = TestClient(app, follow_redirects=False, cookies={"storyloop_session": signed})
        assert is_sent_to_login(forged.get("/annotate", headers=HTML))


def test_deactivation_ends_every_session(app, client, database, admin_headers, clock):
    ann = make_user(database, "ann")
    browsers = [signed_in_browser(app, "ann") for _ in range(2)]
    assert count(database, UserSession, UserSession.user_id == ann.id) == 2

    assert client.patch(f"/api/v1/admin/users/{ann.id}", json={"is_active": False},
                        headers=admin_headers).status_code == 200
    assert count(database, UserSession, UserSession.user_id == ann.id) == 0
    assert client.patch(f"/api/v1/admin/users/{ann.id}", json={"is_active": True},
                        headers=admin_headers).status_code == 200
    for browser in browsers:  # reactivation brings no old session back
        assert is_sent_to_login(browser.get("/annotate", headers=HTML))


def test_sessions_end_after_the_idle_and_the_absolute_limits(app, database, settings, clock):
    make_user(database, "ann")
    idle, most = settings.session_idle_seconds, settings.session_max_seconds

    idler = signed_in_browser(app, "ann")
    clock.advance(idle - 60)
    assert idler.get("/account", headers=HTML).status_code == 200  # used in time: the idle limit restarts
    clock.advance(idle - 60)
    assert idler.get("/account", headers=HTML).status_code == 200
    clock.advance(idle + 1)
    assert is_sent_to_login(idler.get("/account", headers=HTML))

    busy = signed_in_browser(app, "ann")
    started = clock.now
    while clock.now - started < timedelta(seconds=most - idle / 2):
        assert busy.get("/account", headers=HTML).status_code == 200
        clock.advance(idle / 2)
    assert busy.get("/account", headers=HTML).status_code == 200  # used within the idle limit all along
    clock.now = started + timedelta(seconds=most)
    assert is_sent_to_login(busy.get("/account", headers=HTML))  # past the absolute limit, however busy


def test_a_password_change_keeps_this_browser_and_ends_the_others(app, client, database, clock):
    ann = make_user(database, "ann")
    here, elsewhere = signed_in_browser(app, "ann"), signed_in_browser(app, "ann")
    headers = token_headers(client, "ann")
    before = user_row(database, "ann")

    page = here.get("/account", headers=HTML)
    assert page.status_code == 200 and "signed in on 1 other browser." in page.text
    form = {"csrf": csrf_of(page.text), "current": PASSWORD, "new": NEW_PASSWORD, "new2": NEW_PASSWORD}

    wrong = here.post("/account/password", headers=HTML, data={**form, "current": "not the password"})
    assert wrong.status_code == 401 and "current password is wrong" in wrong.text
    differ = here.post("/account/password", headers=HTML, data={**form, "new2": "something else entirely"})
    assert differ.status_code == 422 and "differ" in differ.text
    short = here.post("/account/password", headers=HTML, data={**form, "new": "short", "new2": "short"})
    assert short.status_code == 422 and "new password must have at least 8 characters" in short.text
    assert user_row(database, "ann") == before  # nothing changed, nobody signed out
    assert elsewhere.get("/account", headers=HTML).status_code == 200

    changed = here.post("/account/password", headers=HTML, data=form)
    assert changed.status_code == 303 and changed.headers["location"] == "/account"
    assert here.get("/annotate", headers=HTML).status_code == 200
    assert is_sent_to_login(elsewhere.get("/annotate", headers=HTML))
    assert count(database, UserSession, UserSession.user_id == ann.id) == 1
    # The new password signs in, the old one no longer; the API token stays (it is listed to revoke).
    assert client.post("/api/v1/auth/token", json={"username": "ann", "password": PASSWORD}).status_code == 401
    assert client.post("/api/v1/auth/token", json={"username": "ann", "password": NEW_PASSWORD}).status_code == 200
    assert client.get("/api/v1/me", headers=headers).status_code == 200


def test_sign_out_everywhere_else(app, database, clock):
    make_user(database, "ann")
    here, elsewhere = signed_in_browser(app, "ann"), signed_in_browser(app, "ann")
    page = here.get("/account", headers=HTML)
    assert here.post("/account/sessions/others", headers=HTML, data={"csrf": csrf_of(page.text)}).status_code == 303
    page = here.get("/account", headers=HTML)
    assert page.status_code == 200 and "Signed out 1 other browser." in page.text
    assert is_sent_to_login(elsewhere.get("/account", headers=HTML))


# ---------------------------------------------------------------- API tokens


def test_an_expired_token_is_refused(client, database, settings, clock):
    make_user(database, "ann")
    short, full = new_token(client, "ann", expires_in_days=1), new_token(client, "ann")
    assert short["expires_at"] != full["expires_at"]
    clock.advance(24 * 3600 - 1)
    assert client.get("/api/v1/me", headers=bearer(short)).status_code == 200
    clock.advance(1)
    refused = client.get("/api/v1/me", headers=bearer(short))
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]
    listed = client.get("/api/v1/me/tokens", headers=bearer(full)).json()
    assert [t["id"] for t in listed] == [full["id"]]
    clock.advance(settings.token_max_days * 24 * 3600)
    assert client.get("/api/v1/me", headers=bearer(full)).status_code == 401


@pytest.mark.parametrize("body, field", [({"expires_in_days": 31}, "expires_in_days"),
                                         ({"expires_in_days": 0}, "expires_in_days"),
                                         ({"name": "x" * 101}, "name")])
def test_a_bad_lifetime_or_name_is_refused_naming_the_field(client, database, body, field, clock):
    make_user(database, "ann")
    refused = client.post("/api/v1/auth/token", json={"username": "ann", "password": PASSWORD, **body})
    assert refused.status_code == 422
    assert field in refused.text
    assert count(database, ApiToken) == 0
    assert count(database, LoginThrottle) == 0  # refused before the login was even tried


def test_list_and_revoke_own_tokens_through_the_api(client, database, clock):
    make_user(database, "ann")
    make_user(database, "bob")
    first, second = new_token(client, "ann", name="laptop"), new_token(client, "ann", name="cluster job")
    bobs = new_token(client, "bob")

    listed = client.get("/api/v1/me/tokens", headers=bearer(first))
    assert listed.status_code == 200
    assert [(t["id"], t["name"]) for t in listed.json()] == [(second["id"], "cluster job"), (first["id"], "laptop")]
    assert set(listed.json()[0]) == {"id", "name", "created_at", "expires_at", "last_used_at"}  # no secret
    assert first["access_token"] not in listed.text

    # Another user's token is as unknown as a missing one, and stays valid.
    assert client.delete(f"/api/v1/me/tokens/{bobs['id']}", headers=bearer(first)).status_code == 404
    assert client.get("/api/v1/me", headers=bearer(bobs)).status_code == 200

    assert client.delete(f"/api/v1/me/tokens/{second['id']}", headers=bearer(first)).status_code == 204
    assert client.get("/api/v1/me", headers=bearer(second)).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(first)).status_code == 200
    assert client.delete(f"/api/v1/me/tokens/{second['id']}", headers=bearer(first)).status_code == 404
    assert count(database, ApiToken) == 2  # ann's first, bob's


def test_admins_list_and_revoke_anyones_tokens(client, database, admin_headers, clock):
    ann, bob = make_user(database, "ann"), make_user(database, "bob")
    token = new_token(client, "ann", name="script")
    listed = client.get(f"/api/v1/admin/users/{ann.id}/tokens", headers=admin_headers)
    assert [t["name"] for t in listed.json()] == ["script"]
    assert client.delete(f"/api/v1/admin/users/{bob.id}/tokens/{token['id']}", headers=admin_headers).status_code == 404
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200
    assert client.delete(f"/api/v1/admin/users/{ann.id}/tokens/{token['id']}", headers=admin_headers).status_code == 204
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
    # Annotators may not.
    other = new_token(client, "bob")
    assert client.get(f"/api/v1/admin/users/{bob.id}/tokens", headers=bearer(other)).status_code == 403


def test_the_cap_on_live_tokens_holds(client, database, settings, clock):
    settings.tokens_per_user = 3
    make_user(database, "ann")
    tokens = [new_token(client, "ann", expires_in_days=1 if i == 0 else None) for i in range(3)]

    refused = client.post("/api/v1/auth/token", json={"username": "ann", "password": PASSWORD})
    assert refused.status_code == 409 and "revoke one" in refused.json()["detail"]
    assert count(database, ApiToken) == 3

    assert client.delete(f"/api/v1/me/tokens/{tokens[1]['id']}", headers=bearer(tokens[2])).status_code == 204
    new_token(client, "ann")  # a place was freed
    assert client.post("/api/v1/auth/token", json={"username": "ann", "password": PASSWORD}).status_code == 409
    clock.advance(24 * 3600)  # the first token expires: expired tokens do not count
    new_token(client, "ann")
    assert count(database, ApiToken) == 3


def test_last_used_is_written_at_most_every_few_minutes(client, database, clock):
    make_user(database, "ann")
    token = new_token(client, "ann")

    def last_used():
        with database.read() as db:
            return db.scalar(select(ApiToken.last_used_at).where(ApiToken.id == token["id"]))

    assert last_used() is None
    first_use = clock.now
    client.get("/api/v1/me", headers=bearer(token))
    assert last_used() == first_use
    clock.advance(60)
    client.get("/api/v1/me", headers=bearer(token))
    assert last_used() == first_use  # no write on every request
    clock.advance(300)
    client.get("/api/v1/me", headers=bearer(token))
    assert last_used() == clock.now


def test_the_account_page_lists_and_revokes_tokens(app, client, database, clock):
    make_user(database, "ann")
    make_user(database, "bob")
    token, bobs = new_token(client, "ann", name="my laptop <script>"), new_token(client, "bob")
    browser = signed_in_browser(app, "ann")

    assert 'href="/account"' in browser.get("/account", headers=HTML).text  # linked from the header
    page = browser.get("/account", headers=HTML)
    assert page.status_code == 200
    assert "my laptop &lt;script&gt;" in page.text and token["access_token"] not in page.text
    csrf = csrf_of(page.text)

    refused = browser.post(f"/account/tokens/{bobs['id']}/revoke", headers=HTML, data={"csrf": csrf})
    assert refused.status_code == 404
    assert client.get("/api/v1/me", headers=bearer(bobs)).status_code == 200
    forged = browser.post(f"/account/tokens/{token['id']}/revoke", headers=HTML, data={"csrf": "wrong"})
    assert forged.status_code == 403
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200

    revoked = browser.post(f"/account/tokens/{token['id']}/revoke", headers=HTML, data={"csrf": csrf})
    assert revoked.status_code == 303
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
    page = browser.get("/account", headers=HTML)
    assert f"API token {token['id']} revoked." in page.text and "You have no API tokens." in page.text


def test_the_simulator_revokes_the_tokens_it_made(app, client, database, clock):
    """Each `storyloop simulate` run logs in afresh: it gives its tokens back, so that many runs do
    not run into the cap."""
    from app.simulate import SimulationConfig, run_simulation

    make_user(database, "admin", "admin")
    seed_bws_batch(database)
    for _ in range(2):
        result = run_simulation("", "admin", PASSWORD, SimulationConfig(annotators=2, judgements=2), client=client)
        assert result.judgements == 2
        assert count(database, ApiToken) == 0
