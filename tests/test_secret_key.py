"""No default secret key: the app factory and `storyloop serve` refuse a missing, built-in or short
key outside demo mode; `storyloop demo` makes a random key once, keeps it owner-only in the data
folder and reuses it."""

import stat
from pathlib import Path

import pytest
from starlette.middleware.sessions import SessionMiddleware
from typer.testing import CliRunner

from app import cli as cli_module
from app.config import DEMO_KEY_FILE, InsecureSecretKey, Settings, get_settings
from app.main import create_app
from tests.conftest import TEST_SECRET_KEY

BAD_KEYS = {"missing": "", "default": "dev-only-change-me", "short": "x" * 31}


def _session_key(app) -> str:
    return next(m.kwargs["secret_key"] for m in app.user_middleware if m.cls is SessionMiddleware)


@pytest.fixture
def clean_env(monkeypatch, tmp_path: Path):
    """STORYLOOP_* from the environment only as each test sets them; get_settings() read afresh."""
    for name in ("STORYLOOP_SECRET_KEY", "STORYLOOP_DATABASE_URL", "STORYLOOP_DEV_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORYLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no .env file
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.mark.parametrize("kind", list(BAD_KEYS))
def test_app_factory_refuses_a_weak_key(kind, sqlite_url, tmp_path):
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path / "data", secret_key=BAD_KEYS[kind])
    with pytest.raises(InsecureSecretKey) as refused:
        create_app(settings)
    message = str(refused.value)
    assert "STORYLOOP_SECRET_KEY" in message and "secrets.token_urlsafe(48)" in message
    assert not (tmp_path / "data").exists()  # refused before anything was made


@pytest.mark.parametrize("kind", list(BAD_KEYS))
def test_serve_refuses_a_weak_key(kind, clean_env, tmp_path):
    if BAD_KEYS[kind]:
        clean_env.setenv("STORYLOOP_SECRET_KEY", BAD_KEYS[kind])
    clean_env.setattr(cli_module, "_uvicorn", lambda *a: pytest.fail("serve started with a weak key"))
    result = CliRunner().invoke(cli_module.cli, ["serve"])
    assert result.exit_code == 2
    assert "STORYLOOP_SECRET_KEY" in result.output and "secrets.token_urlsafe(48)" in result.output
    assert not (tmp_path / "data" / "storyloop.db").exists()  # nothing migrated


def test_app_factory_takes_a_proper_key(clean_env):
    clean_env.setenv("STORYLOOP_SECRET_KEY", TEST_SECRET_KEY)
    from app.cli import _database

    _database(migrate=True)
    assert _session_key(create_app()) == TEST_SECRET_KEY


def test_demo_makes_its_key_once_and_reuses_it(clean_env, tmp_path):
    keys = []

    def fake_uvicorn(host, port, workers):
        # As uvicorn does in its worker: the factory with no arguments, settings from the environment.
        get_settings.cache_clear()
        keys.append(_session_key(create_app()))

    clean_env.setattr(cli_module, "_uvicorn", fake_uvicorn)
    clean_env.setenv("STORYLOOP_DEV_MODE", "false")  # restored after the test (demo sets it to true)
    for _ in range(2):
        result = CliRunner().invoke(cli_module.cli, ["demo", "--no-trainer"])
        assert result.exit_code == 0, result.output
    key_file = tmp_path / "data" / DEMO_KEY_FILE
    assert len(keys) == 2 and keys[0] == keys[1] == key_file.read_text().strip()
    assert len(keys[0]) >= 32 and keys[0] != "dev-only-change-me"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_dev_mode_with_a_proper_key_uses_it(clean_env, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", secret_key=TEST_SECRET_KEY, dev_mode=True)
    from app.config import checked_secret_key

    assert checked_secret_key(settings) == TEST_SECRET_KEY
    assert not (tmp_path / "data" / DEMO_KEY_FILE).exists()
