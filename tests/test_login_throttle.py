"""Login throttling on the API token endpoint and the login form, on SQLite and PostgreSQL.

After login_failures_per_account failures for a name (default 5), or login_failures_per_address from
one address (default 20), within login_window_seconds, further attempts get 429 with Retry-After; a
success resets the account. Unknown names answer and lock exactly like real ones. Time is moved with a
settable clock (app.state.clock), never by sleeping.
"""

import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import ApiToken, LoginThrottle, User, utcnow
from app.services import logins
from tests.conftest import PASSWORD, make_user
from tests.test_pages_annotate import HTML, login as form_login

WRONG = "not the password"


class Clock:
    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(app) -> Clock:
    app.state.clock = Clock()
    return app.state.clock


def token(client, username: str, password: str = PASSWORD):
    return client.post("/api/v1/auth/token", json={"username": username, "password": password})


def user_rows(database) -> list[tuple]:
    with database.read() as db:
        return [tuple(row) for row in db.execute(select(User.__table__).order_by(User.id))]


def test_api_account_limit_then_429_with_retry_after(client, database, clock):
    make_user(database, "ann")
    for _ in range(5):
        assert token(client, "ann", WRONG).status_code == 401
    refused = token(client, "ann", WRONG)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "900"
    assert "Too many failed logins for this account" in refused.json()["detail"]
    assert "15 minutes" in refused.json()["detail"]
    # Another account from the same address is not locked (5 < 20 address failures).
    make_user(database, "bob")
    assert token(client, "bob").status_code == 200


def test_form_account_limit_shows_the_message(client, database, clock):
    make_user(database, "ann")
    for _ in range(5):
        assert form_login(client, "ann", WRONG).status_code == 401
    refused = form_login(client, "ann", WRONG)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "900"
    assert "Too many failed logins for this account. Try again in 15 minutes." in refused.text
    assert 'value="ann"' in refused.text  # still the login page, with the name kept
    assert form_login(client, "ann").status_code == 429  # the right password too, while locked
    # The form and the API share the counters.
    assert token(client, "ann").status_code == 429


def test_address_limit_across_usernames(app, client, database, clock):
    make_user(database, "ann")
    for i in range(20):  # 2 failures each for 10 names: no account reaches its limit
        assert token(client, f"user{i // 2}", WRONG).status_code == 401
    refused = token(client, "somebody-new", WRONG)
    assert refused.status_code == 429
    assert "from your address" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) == 900
    assert token(client, "ann").status_code == 429  # the address is locked for everybody
    assert form_login(client, "ann").status_code == 429
    with TestClient(app, client=("203.0.113.7", 50000)) as elsewhere:  # another address is not
        assert token(elsewhere, "ann").status_code == 200


def test_success_resets_the_account(client, database, clock):
    make_user(database, "ann")
    for _ in range(4):
        assert token(client, "ann", WRONG).status_code == 401
    assert token(client, "ann").status_code == 200
    for _ in range(5):  # a fresh count of 5
        assert token(client, "ann", WRONG).status_code == 401
    assert token(client, "ann", WRONG).status_code == 429


def test_successes_do_not_use_up_the_address(client, database, settings, clock):
    make_user(database, "ann")
    settings.tokens_per_user = 30  # 30 successful logins, each making a token
    for _ in range(30):
        assert token(client, "ann").status_code == 200
    for i in range(20):
        assert token(client, f"user{i}", WRONG).status_code == 401
    assert token(client, "user99", WRONG).status_code == 429


def test_locked_account_refuses_the_right_password_until_the_window_passes(client, database, clock):
    make_user(database, "ann")
    for _ in range(5):
        assert token(client, "ann", WRONG).status_code == 401
    clock.advance(600)
    locked = token(client, "ann")
    assert locked.status_code == 429 and locked.headers["Retry-After"] == "300"
    clock.advance(299.5)
    locked = token(client, "ann")
    assert locked.status_code == 429 and locked.headers["Retry-After"] == "1"
    assert "1 minute." in locked.json()["detail"]
    clock.advance(0.5)  # the window (from the first failure) has passed
    assert token(client, "ann").status_code == 200


def test_refused_attempts_do_not_lengthen_the_lock(client, database, clock):
    make_user(database, "ann")
    for _ in range(5):
        assert token(client, "ann", WRONG).status_code == 401
    for _ in range(10):
        clock.advance(60)
        assert token(client, "ann", WRONG).status_code == 429
    clock.advance(300)
    assert token(client, "ann").status_code == 200


def test_a_new_window_counts_from_zero(client, database, clock):
    make_user(database, "ann")
    for _ in range(4):
        assert token(client, "ann", WRONG).status_code == 401
    clock.advance(900)
    for _ in range(5):
        assert token(client, "ann", WRONG).status_code == 401
    assert token(client, "ann", WRONG).status_code == 429


def test_unknown_user_answers_like_a_wrong_password(client, database, clock):
    make_user(database, "ann")
    make_user(database, "gone")
    with database.write() as db:
        db.scalar(select(User).where(User.username == "gone")).is_active = False
    wrong = token(client, "ann", WRONG)
    unknown = token(client, "nobody", WRONG)
    inactive = token(client, "gone", PASSWORD)
    assert wrong.status_code == unknown.status_code == inactive.status_code == 401
    assert wrong.content == unknown.content == inactive.content
    assert wrong.headers.get("www-authenticate") == unknown.headers.get("www-authenticate")

    page_wrong, page_unknown = form_login(client, "ann", WRONG), form_login(client, "nobody", WRONG)
    assert page_wrong.status_code == page_unknown.status_code == 401
    # The same page but for the kept name (and the session's CSRF token).
    strip = lambda page, name: page.text.replace(f'value="{name}"', "").split('name="csrf"')[0]  # noqa: E731
    assert strip(page_wrong, "ann") == strip(page_unknown, "nobody")

    for _ in range(3):  # 2 failures so far each: an unknown name locks exactly like a known one
        assert token(client, "nobody", WRONG).status_code == 401
        assert token(client, "ann", WRONG).status_code == 401
    a, b = token(client, "nobody", WRONG), token(client, "ann", WRONG)
    assert a.status_code == b.status_code == 429
    assert a.content == b.content and a.headers["Retry-After"] == b.headers["Retry-After"]


def test_throttling_changes_no_user_row_and_makes_no_token(client, database, clock):
    make_user(database, "ann")
    make_user(database, "bob", "admin")
    before = user_rows(database)
    for _ in range(7):
        token(client, "ann", WRONG)
        form_login(client, "bob", WRONG)
    token(client, "ann")
    form_login(client, "bob")
    assert user_rows(database) == before
    with database.read() as db:
        assert db.scalar(select(func.count()).select_from(ApiToken)) == 0
        # Only the throttle's own rows: hashed keys, no names or addresses in clear.
        keys = list(db.scalars(select(LoginThrottle.key)))
    assert keys and all(len(key) == 64 and "ann" not in key for key in keys)


def test_the_password_check_holds_no_connection_or_lock(client, database, clock, monkeypatch):
    """argon2 runs outside any transaction: no pooled connection is checked out and (SQLite) the
    writer lock is free while it runs."""
    make_user(database, "ann")
    seen = []

    def watch(check):
        def checked(*args):
            writer_lock = database.state.get("writer_lock")
            seen.append((database.engine.pool.checkedout(), bool(writer_lock and writer_lock.locked())))
            return check(*args)
        return checked

    monkeypatch.setattr(logins, "verify_password", watch(logins.verify_password))
    monkeypatch.setattr(logins, "verify_dummy", watch(logins.verify_dummy))
    assert token(client, "ann", WRONG).status_code == 401
    assert token(client, "nobody", WRONG).status_code == 401
    assert token(client, "ann").status_code == 200
    assert form_login(client, "ann").status_code == 200
    assert seen == [(0, False)] * 4


def test_a_parallel_burst_gets_exactly_the_limit(database, settings):
    """Attempts are counted before the check, so 20 at once still get only 5 checks."""
    make_user(database, "ann")
    outcomes, start = [], threading.Barrier(20)

    def attempt():
        start.wait()
        try:
            logins.login(database, settings, "ann", WRONG, "198.51.100.1", utcnow())
        except logins.ServiceError as exc:
            outcomes.append(exc.status_code)

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [401] * 5 + [429] * 15
