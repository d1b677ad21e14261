"""docker-compose.yml, the Dockerfile and .dockerignore, checked without a Docker daemon or an image
registry (neither is reachable here): the services and how they meet (database URL, volumes,
healthchecks), that every STORYLOOP_* variable is a setting (a misspelt one would be ignored), that the
commands they run exist and take those options, and what goes into the build context. Where
`docker compose` or Debian's `docker-compose` (1.29) is installed, it validates the file too."""

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import typer
from typer.testing import CliRunner

from app import cli as cli_module
from app.config import Settings
from trainer.config import TrainerSettings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SECRET = "a-secret-key-for-checking-the-compose-file-only"


def _storyloop_commands() -> dict[str, list[str]]:
    """Every `storyloop ...` command line the compose file, the Dockerfile and the docs' Docker
    section run, by where it comes from."""
    commands = {f"compose {name}": shlex.split(SERVICES[name]["command"].split("#")[0]) for name in ("app", "trainer")}
    cmd = re.search(r"^CMD (\[.*\])", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    commands["Dockerfile CMD"] = yaml.safe_load(cmd.group(1))
    for source in ("docs/operations.md", "docker-compose.yml"):
        for line in (ROOT / source).read_text().splitlines():
            if found := re.search(r"docker(?: |-)compose exec (\w+) (storyloop [^`]*?)(?:`|\s{2,}|\s*\(|$)", line):
                commands[f"{source}: {found.group(0).rstrip('`( ')}"] = shlex.split(found.group(2))
    return commands


@pytest.mark.parametrize("source", list(_storyloop_commands()))
def test_each_storyloop_command_exists_and_takes_its_options(source):
    args = _storyloop_commands()[source]
    assert args[0] == "storyloop", source
    command, rest, path = typer.main.get_command(cli_module.cli), args[1:], ["storyloop"]
    context = command.context_class(command, info_name="storyloop")
    while hasattr(command, "get_command"):  # a group (Typer's own click): down to the subcommand named
        name, rest = rest[0], rest[1:]
        command = command.get_command(context, name)
        assert command is not None, f"{source}: no command `{' '.join(path)} {name}`"
        path.append(name)
        context = command.context_class(command, info_name=name, parent=context)
    options = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
    for word in rest:
        assert not word.startswith("-") or word.split("=")[0] in options, f"{source}: `{' '.join(path)}` has no {word}"
    # Parsed as the CLI would, without running it (resilient: no prompt for a password it would ask for)
    parsed = command.make_context(path[-1], list(rest), parent=context.parent, resilient_parsing=True)
    assert not parsed.args, f"{source}: arguments left over: {parsed.args}"
    helped = CliRunner().invoke(cli_module.cli, [*path[1:], "--help"])
    assert helped.exit_code == 0, helped.output
    for option in (a.split("=")[0] for a in args if a.startswith("--")):
        assert option in helped.output, f"{source}: {option} not in `{' '.join(path)} --help`"


def test_the_services_are_postgresql_the_app_and_the_trainer():
    assert set(SERVICES) == {"db", "app", "trainer"}
    assert SERVICES["db"]["image"].startswith("postgres:")
    assert SERVICES["app"]["build"] == SERVICES["trainer"]["build"] == "."  # one image, two commands
    assert set(COMPOSE["volumes"]) == {"pgdata", "data"}


def _environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else dict(env)


@pytest.mark.parametrize("service", ["app", "trainer"])
def test_every_storyloop_variable_is_a_setting(service):
    """pydantic-settings ignores unknown STORYLOOP_* variables (extra="ignore"): a misspelt one
    would silently not apply."""
    names = {f"STORYLOOP_{field}".upper() for field in Settings.model_fields}
    names |= {f"STORYLOOP_TRAINER_{field}".upper() for field in TrainerSettings.model_fields}
    env = _environment(service)
    assert env, service
    for variable in env:
        assert variable.split("__")[0] in names, f"{service}: {variable} is not a setting"
    assert {"STORYLOOP_DATABASE_URL", "STORYLOOP_SECRET_KEY", "STORYLOOP_DATA_DIR"} <= set(env)


@pytest.mark.parametrize("service", ["app", "trainer"])
def test_the_app_and_the_trainer_share_the_database_and_the_model_store(service):
    env = _environment(service)
    url = urlsplit(env["STORYLOOP_DATABASE_URL"])
    db = _environment("db")
    assert url.scheme == "postgresql+psycopg"
    assert (url.hostname, url.port or 5432) == ("db", 5432)  # the service's name on compose's network
    assert (url.username, url.password, url.path.lstrip("/")) == (db["POSTGRES_USER"], db["POSTGRES_PASSWORD"],
                                                                  db["POSTGRES_DB"])
    assert f"data:{env['STORYLOOP_DATA_DIR']}" in SERVICES[service]["volumes"]  # the shared model store
    assert SERVICES[service]["depends_on"]["db"]["condition"] == "service_healthy"
    assert "${STORYLOOP_SECRET_KEY:?" in env["STORYLOOP_SECRET_KEY"]  # compose refuses to start without a key


def test_the_database_keeps_its_data_and_says_when_it_is_ready():
    db = SERVICES["db"]
    assert "pgdata:/var/lib/postgresql/data" in db["volumes"]
    test = db["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and f"pg_isready -U {_environment('db')['POSTGRES_USER']}" in test[1]


def test_the_app_publishes_the_port_it_serves_and_checks_a_route_that_answers(sqlite_url, tmp_path):
    args = shlex.split(SERVICES["app"]["command"].split("#")[0])
    port = args[args.index("--port") + 1]
    assert f"{port}:{port}" in SERVICES["app"]["ports"]
    probe = SERVICES["app"]["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "python", "-c"] and f"'http://127.0.0.1:{port}/healthz'" in probe[3]
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.migrate import upgrade_to_head

    upgrade_to_head(sqlite_url)
    with TestClient(create_app(Settings(database_url=sqlite_url, data_dir=tmp_path, secret_key=SECRET))) as client:
        assert client.get("/healthz").status_code == 200


# ---------------------------------------------------------------- the Dockerfile and its build context


def _dockerignore() -> list[tuple[bool, str]]:
    """(excludes?, pattern) in order; the last pattern that matches a path decides, as in Docker."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((not line.startswith("!"), line.lstrip("!").strip("/")))
    return rules


def _excluded(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's matching, enough for these patterns: a pattern matches a path or one of its parent
    folders; one that starts with `**/` matches at any depth."""
    parts = path.split("/")
    excluded = False
    for excludes, pattern in rules:
        starts = range(len(parts)) if pattern.startswith("**/") else [0]
        pattern = pattern.removeprefix("**/")
        if any(fnmatch.fnmatchcase("/".join(parts[i:j]), pattern) for i in starts for j in range(i + 1, len(parts) + 1)):
            excluded = excludes
    return excluded


def _copy_sources() -> list[str]:
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            sources.extend(words[:-1])
    return sources


def test_every_copy_source_exists_and_is_in_the_build_context():
    sources = _copy_sources()
    assert {"pyproject.toml", "app", "trainer", "migrations", "templates", "static"} <= set(sources)
    rules = _dockerignore()
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not _excluded(source, rules), f"COPY {source}: left out of the build context by .dockerignore"


def test_the_build_context_leaves_out_the_virtualenv_data_git_and_caches():
    rules = _dockerignore()
    for path in (".venv", ".venv/lib/python3.11/site-packages/torch/__init__.py", "data", "data/storyloop.db",
                 "data/models/v1/model.safetensors", ".git", ".git/HEAD", "tests/test_docker.py", "benchmarks/out",
                 "app/__pycache__/main.cpython-311.pyc", ".env", ".pytest_cache"):
        assert _excluded(path, rules), f"{path} would be sent to the Docker daemon"
    assert not _excluded("app/main.py", rules) and not _excluded("migrations/env.py", rules)


def test_the_build_context_is_small():
    """What `docker build .` sends, walked here with .dockerignore's rules: it was 1.99 GB."""
    rules = _dockerignore()
    total = 0
    for folder, subfolders, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        # A left-out folder is not walked (nothing in these rules lets a path inside one back in).
        subfolders[:] = [s for s in subfolders if not _excluded(prefix + s, rules)]
        total += sum((Path(folder) / f).stat().st_size for f in files if not _excluded(prefix + f, rules))
    assert total < 20 * 2**20, f"the build context is {total / 2**20:.0f} MiB"


# ---------------------------------------------------------------- Compose itself, where installed


def _compose_commands() -> list[list[str]]:
    found = []
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        found.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    return found


@pytest.mark.parametrize("compose", _compose_commands() or [None], ids=lambda c: " ".join(c) if c else "none")
def test_compose_accepts_the_file(compose, tmp_path):
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOP_")}
    no_env_file = tmp_path / "empty.env"  # not a developer's .env
    no_env_file.write_text("")
    command = [*compose, "--env-file", str(no_env_file), "config", "-q"]
    checked = subprocess.run(command, cwd=ROOT, env={**env, "STORYLOOP_SECRET_KEY": SECRET},
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "set STORYLOOP_SECRET_KEY" in refused.stderr
