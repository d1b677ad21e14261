"""All settings in one place, read from environment variables (prefix STORYLOOP_) or a .env file."""

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STORYLOOP_", env_file=".env", extra="ignore")

    # Where everything lives: the SQLite file (by default) and the model store.
    data_dir: Path = Path("data")
    # SQLAlchemy URL; empty means a SQLite file in data_dir. PostgreSQL: postgresql+psycopg://user:pw@host/db
    database_url: str = ""
    # Signs session cookies: whoever knows it can sign an admin session. Required (at least 32
    # characters) unless dev_mode is on; see checked_secret_key.
    secret_key: str = ""
    # Demo/development mode, set by `storyloop demo` for its own processes (through the environment,
    # so uvicorn's worker processes see it too): a missing or weak key is replaced by a random key
    # kept in the data folder. Never set it in production.
    dev_mode: bool = False
    # Cookies only over HTTPS (set true behind TLS).
    secure_cookies: bool = False

    # PostgreSQL connections per process: each web worker holds at most db_annotation_connections +
    # db_pool_size + db_max_overflow (docs/operations.md: how many workers fit in max_connections).
    # The annotation path (token check, lease, submission, on the event loop): at most this many
    # statements at once per worker, on connections opened at worker start and kept.
    db_annotation_connections: int = Field(10, ge=1)
    # Everything else (pages, admin, gold leases, the trainer): SQLAlchemy's pool keeps up to
    # db_pool_size connections, opened on first use, and opens up to db_max_overflow more under load
    # (closed when returned). A request that finds them all in use waits up to 30 s, then gets 503.
    db_pool_size: int = Field(5, ge=1)
    db_max_overflow: int = Field(10, ge=0)

    # Annotation
    annotations_per_tuple: int = Field(3, ge=1, description="R: annotations wanted per task")
    lease_seconds: int = Field(600, ge=10, description="how long a fetched task stays reserved")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    # A request's body must arrive within this many seconds, plus one for every body_min_bytes_per_second
    # bytes received (a large upload over a slow link goes on; a client trickling bytes is cut off: 408).
    body_read_seconds: float = Field(20.0, gt=0)
    body_min_bytes_per_second: int = Field(20_000, ge=1)
    tuple_size: int = 4
    design_factor: float = 2.0

    # Login throttling (API token endpoint and login form): after this many failed logins for one
    # account name, or from one client address, within a window that starts at the first failure,
    # further attempts get 429 (with Retry-After) until the window ends. A success resets the account.
    login_failures_per_account: int = Field(5, ge=1)
    login_failures_per_address: int = Field(20, ge=1)
    login_window_seconds: int = Field(900, ge=1)

    # Crowd links (app/services/crowd.py): new participant accounts per link, and per client address,
    # within a window that starts at the first; more get 429 with Retry-After (returning participants
    # are never counted). Against one person minting accounts, each with a fresh quota.
    crowd_accounts_per_link: int = Field(300, ge=1)
    crowd_accounts_per_address: int = Field(5, ge=1)
    crowd_window_seconds: int = Field(600, ge=1)

    # Browser sessions (server-side rows, app/models.py UserSession): a session ends after this long
    # without a request (idle), and at the latest this long after the login (absolute).
    session_idle_seconds: int = Field(3 * 24 * 3600, ge=60)
    session_max_seconds: int = Field(14 * 24 * 3600, ge=60)
    # API bearer tokens: the longest lifetime (POST /api/v1/auth/token may ask for fewer days), and
    # how many unexpired tokens one account may hold (a new one beyond that is refused with 409).
    token_max_days: int = Field(30, ge=1)
    tokens_per_user: int = Field(20, ge=1)

    # Trainer: when a round starts by itself. "newest": once trainer_min_newest_judgements judgements
    # have arrived on the newest round's tuples (each round learns from judgements of the previous
    # round's own stories); "any": once trainer_min_new_judgements judgements of any batch arrived
    # since the last round (and at least trainer_min_new_fraction of those it used).
    trainer_poll_seconds: float = 30.0
    trainer_trigger: Literal["newest", "any"] = "newest"
    trainer_min_newest_judgements: int = Field(60, ge=1)
    trainer_min_new_judgements: int = 30
    trainer_min_new_fraction: float = 0.0

    @property
    def db_connections_per_worker(self) -> int:
        """The most PostgreSQL connections one web worker holds."""
        return self.db_annotation_connections + self.db_pool_size + self.db_max_overflow

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'storyloop.db').resolve()}"

    @property
    def model_store(self) -> Path:
        return self.data_dir / "models"


SECRET_KEY_MIN_LENGTH = 32
# Keys that ever shipped as defaults in the source: anyone can read them, so they must never sign.
_PUBLIC_KEYS = frozenset({"dev-only-change-me"})
SECRET_KEY_HINT = ("set STORYLOOP_SECRET_KEY to a random string of at least "
                   f"{SECRET_KEY_MIN_LENGTH} characters, e.g. the output of "
                   '`python -c "import secrets; print(secrets.token_urlsafe(48))"`')
DEMO_KEY_FILE = "secret-key"


class InsecureSecretKey(RuntimeError):
    """The app refuses to start: its session key is missing, public or too short."""


def secret_key_problem(key: str) -> str | None:
    if not key:
        return "STORYLOOP_SECRET_KEY is not set"
    if key in _PUBLIC_KEYS:
        return "STORYLOOP_SECRET_KEY is the built-in development default"
    if len(key) < SECRET_KEY_MIN_LENGTH:
        return f"STORYLOOP_SECRET_KEY is shorter than {SECRET_KEY_MIN_LENGTH} characters"
    return None


def checked_secret_key(settings: Settings) -> str:
    """The key to sign sessions with. Outside dev mode a missing, default or short key raises
    InsecureSecretKey with what to set; in dev mode it is replaced by the data folder's demo key."""
    problem = secret_key_problem(settings.secret_key)
    if problem is None:
        return settings.secret_key
    if settings.dev_mode:
        return demo_secret_key(settings.data_dir)
    raise InsecureSecretKey(f"refusing to start: {problem}; {SECRET_KEY_HINT}")


def demo_secret_key(data_dir: Path) -> str:
    """A random key made once and kept in data_dir (owner-only), so demo sessions survive a restart."""
    path = data_dir / DEMO_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if secret_key_problem(key) is None:
            return key
        path.unlink()  # empty or damaged (a crash while writing): make a new one
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:
        # Created with mode 0600 (never readable by others, not even for a moment); O_EXCL: when two
        # processes start at once, one writes and the other reads its key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


@lru_cache
def get_settings() -> Settings:
    return Settings()
