"""Does the token endpoint's answer time tell which usernames exist?

Times --rounds logins (default 20) of a known user with a wrong password and as many of an unknown
user, interleaved, through the real app (POST /api/v1/auth/token, in process, on a fresh SQLite file),
and prints the medians and their ratio. Throttling limits are raised for the run so that every attempt
reaches the password check. For contrast it also times the check the app made before the dummy hash
(argon2 only for known users), on the same database.

    python benchmarks/login_timing.py --rounds 20

A ratio near 1 means timing no longer reveals which names exist; before the dummy hash it was ~50.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import select  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import Database  # noqa: E402
from app.main import create_app  # noqa: E402
from app.migrate import upgrade_to_head  # noqa: E402
from app.models import User  # noqa: E402
from app.security import verify_password  # noqa: E402
from app.services import users  # noqa: E402


def old_check(database: Database, username: str, password: str) -> bool:
    """The login check as it was: a read, and argon2 only when the user exists."""
    with database.read() as db:
        user = db.scalar(select(User).where(User.username == username))
        return user is not None and user.is_active and verify_password(user.password_hash, password)


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="storyloop-login-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        settings = Settings(database_url=url, data_dir=Path(tmp) / "data", secret_key="benchmark-" + "x" * 32,
                            login_failures_per_account=1_000_000, login_failures_per_address=1_000_000)
        upgrade_to_head(url)
        database = Database.from_url(url)
        with database.write() as db:
            users.create_user(db, "known", "the right password")

        def attempt(client, username):
            response = client.post("/api/v1/auth/token", json={"username": username, "password": "a wrong password"})
            assert response.status_code == 401, response.text

        with TestClient(create_app(settings, database)) as client:
            for name in ("known", "nobody"):  # warm up (the dummy hash is made on first use)
                attempt(client, name)
            known, unknown = [], []
            for i in range(args.rounds):
                known.append(timed(lambda: attempt(client, "known")))
                unknown.append(timed(lambda i=i: attempt(client, f"nobody{i}")))
        old_known = [timed(lambda: old_check(database, "known", "a wrong password")) for _ in range(args.rounds)]
        old_unknown = [timed(lambda: old_check(database, "nobody", "a wrong password")) for _ in range(args.rounds)]
        database.engine.dispose()

    now_known, now_unknown = statistics.median(known), statistics.median(unknown)
    was_known, was_unknown = statistics.median(old_known), statistics.median(old_unknown)
    print(f"{args.rounds} logins each, median ms")
    print(f"token endpoint now:       known user {now_known:7.2f}   unknown user {now_unknown:7.2f}   "
          f"ratio known/unknown {now_known / now_unknown:5.2f}")
    print(f"check before dummy hash:  known user {was_known:7.2f}   unknown user {was_unknown:7.2f}   "
          f"ratio known/unknown {was_known / was_unknown:5.1f}")


if __name__ == "__main__":
    main()
