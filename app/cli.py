"""The `storyloop` command: serve, demo, trainer, imports, exports, users, simulate.

Trainer commands import torch lazily, so the web commands stay light.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.config import InsecureSecretKey, checked_secret_key, get_settings
from app.db import Database
from app.faults import is_unavailable, refused_start
from app.migrate import upgrade_to_head

cli = typer.Typer(help="storyloop: human judgements of machine-written stories, and the RLHF loop on them.",
                  no_args_is_help=True, add_completion=False)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
users_cli = typer.Typer(help="Accounts and invites.", no_args_is_help=True)
train_cli = typer.Typer(help="Run training rounds from the command line.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(users_cli, name="users")
cli.add_typer(train_cli, name="train")


def _database(migrate: bool = True) -> Database:
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        upgrade_to_head(settings.resolved_database_url)
    return Database.from_settings(settings)


def _database_when_ready() -> Database:
    """The trainer does not migrate (the web app does); it waits until the schema is current."""
    import time

    from app.migrate import SchemaBehindError, check_schema_current

    database = _database(migrate=False)
    while True:
        try:
            check_schema_current(database.engine)
            return database
        except (SchemaBehindError, Exception) as exc:  # no database yet, or an older schema
            typer.echo(f"trainer: waiting for the database schema ({exc})", err=True)
            time.sleep(5)


# Annotators pause between requests for as long as they read (seconds, now and then minutes).
# uvicorn closes a kept-alive connection after 5 idle seconds by default, so many next requests met a
# socket the server had just closed, and came back as connection resets (1,000 annotators with 4 s of
# reading, benchmarks/annotate_load.py). Idle connections are cheap for the event loop; keep them a
# while longer than a typical pause. Behind a proxy, its upstream keep-alive should be shorter than this.
KEEP_ALIVE_SECONDS = 75
# Connections waiting to be accepted (uvicorn's default 2048): bursts of logins and reconnects.
BACKLOG = 4096


def default_workers() -> int:
    """One web worker per core this process may run on (taskset and container CPU sets count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _uvicorn(host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="info", access_log=False, timeout_keep_alive=KEEP_ALIVE_SECONDS, backlog=BACKLOG)


@db_cli.command("upgrade")
def db_upgrade():
    """Upgrade the database schema to the newest migration."""
    _database(migrate=True)
    typer.echo("database is at the newest schema")


@cli.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          workers: Annotated[Optional[int], typer.Option(min=1, help="web worker processes (default: one per core)")] = None):
    """Upgrade the schema, then serve the web app."""
    try:
        checked_secret_key(get_settings())  # before migrating: a refused start changes nothing
    except InsecureSecretKey as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    try:
        _database(migrate=True)
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        typer.echo(f"error: {refused_start(exc, get_settings().db_connections_per_worker)}", err=True)
        raise typer.Exit(1) from None
    _uvicorn(host, port, workers or default_workers())


@cli.command()
def demo(host: str = "127.0.0.1", port: int = 8000, trainer: bool = True):
    """Seed demo prompts, continuations, tuples and accounts; start the trainer and the web app."""
    from app.demo import demo_report, keep_accounts, seed_demo

    # Demo mode for this process and, through the environment, for uvicorn's and the trainer's: the
    # app signs sessions with a random key made once and kept in the data folder (unless
    # STORYLOOP_SECRET_KEY is a proper key already).
    os.environ["STORYLOOP_DEV_MODE"] = "true"
    get_settings.cache_clear()
    settings = get_settings()
    checked_secret_key(settings)  # makes the demo key file now, before the app's workers start
    database = _database(migrate=True)
    info = seed_demo(database, settings)
    accounts_file = settings.data_dir / "demo-accounts.txt"
    keep_accounts(info, accounts_file)
    typer.echo("\n=== storyloop demo ===")
    typer.echo(demo_report(info, accounts_file))
    typer.echo(f"\nopen http://{host}:{port}/ and log in.")
    if trainer:
        trigger = (f"{settings.trainer_min_newest_judgements} judgements are in on the newest round's tuples"
                   if settings.trainer_trigger == "newest"
                   else f"{settings.trainer_min_new_judgements} new judgements are in")
        typer.echo(f"The trainer first makes the base model and queues its stories (round 0); each later "
                   f"round starts once {trigger} (or from the admin page).\n")
    else:
        typer.echo("No trainer runs (--no-trainer): start one with `storyloop trainer`.\n")
    child = None
    if trainer:
        # The trainer is its own process: the web app never imports torch.
        child = subprocess.Popen([sys.executable, "-m", "app.cli", "trainer"])
    try:
        _uvicorn(host, port, 1)
    finally:
        if child is not None:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=30)


@cli.command()
def backup(path: Path):
    """Copy the SQLite database to PATH while the app runs (online backup); PostgreSQL: use pg_dump."""
    from app.services.backup import backup_sqlite
    from app.services.errors import ServiceError

    try:
        size = backup_sqlite(_database(migrate=False), path)
    except ServiceError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1)
    typer.echo(f"backed up to {path} ({size / 1e6:.1f} MB)")


@cli.command("import")
def import_file(path: Path):
    """Import prompts and continuations from a JSONL or CSV file (all or nothing)."""
    from app.services.errors import ServiceError
    from app.services.imports import import_file as run_import

    try:
        summary = run_import(_database(), path.read_bytes(), path.name)
    except ServiceError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        typer.echo(_error_table(exc.details), err=True, nl=False)
        raise typer.Exit(1)
    typer.echo(summary.model_dump_json(indent=2))


def _error_table(details: list[dict]) -> str:
    """An import's errors ({"line", "field", "message"}, either may be None) as aligned lines."""
    rows = [("line", "field", "message")] + [
        (str(d.get("line") or "-"), d.get("field") or "-", d.get("message", "")) for d in details]
    line_width = max(len(row[0]) for row in rows)
    field_width = max(len(row[1]) for row in rows)
    return "".join(f"  {line:>{line_width}}  {field:<{field_width}}  {message}\n" for line, field, message in rows)


@cli.command()
def batch(name: str = "batch", seed: int = 0, annotations: Optional[int] = None):
    """Build balanced BWS tuples over every prompt's continuations."""
    from app.services.tasks import build_bws_batch, continuations_by_prompt

    settings = get_settings()
    database = _database()
    with database.write() as db:
        built = build_bws_batch(db, name, continuations_by_prompt(db), seed=seed,
                                required=annotations or settings.annotations_per_tuple,
                                k=settings.tuple_size, factor=settings.design_factor)
        typer.echo(f"batch {built.id}: {built.design['prompts']} prompts")


@cli.command()
def export(name: str, fmt: Annotated[str, typer.Option("--format")] = "jsonl", output: Optional[Path] = None):
    """Export pairs | judgements | ratings | scores as jsonl | csv | parquet (streamed)."""
    from app.services.exports import stream_export

    out = output.open("wb") if output else sys.stdout.buffer
    try:
        for chunk in stream_export(_database(), name, fmt):
            out.write(chunk)
    finally:
        if output:
            out.close()


@users_cli.command("create")
def users_create(username: str, role: str = "annotator",
                 password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)] = ""):
    """Create an account."""
    from app.services import users

    with _database().write() as db:
        user = users.create_user(db, username, password, role)
    typer.echo(f"created {user.username} ({user.role})")


@users_cli.command("invite")
def users_invite(role: str = "annotator", base_url: str = "http://127.0.0.1:8000"):
    """Print an invite link for a new account with this role."""
    from app.services import users

    with _database().write() as db:
        invite = users.create_invite(db, role, None)
    typer.echo(f"{base_url.rstrip('/')}/invite/{invite.token}")


@cli.command()
def trainer(max_rounds: Optional[int] = None):
    """The background trainer: polls the database and runs rounds when judgements arrive."""
    import logging

    from trainer.config import TrainerSettings
    from trainer.loop import serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve_forever(_database_when_ready(), get_settings(), TrainerSettings(), max_rounds)


@train_cli.command("once")
def train_once():
    """Run one training round now, in this process, with progress bars."""
    from trainer.config import TrainerSettings
    from trainer.loop import TrainerBusy
    from trainer.loop import train_once as run

    from app.services.round_numbers import round_number

    database = _database()
    try:
        round_id = run(database, get_settings(), TrainerSettings())
    except TrainerBusy as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3)
    with database.read() as db:
        typer.echo(f"round {round_number(db, round_id)} done")


@cli.command()
def simulate(
    url: str = "http://127.0.0.1:8000",
    admin: str = "admin",
    admin_password: Annotated[str, typer.Option(envvar="STORYLOOP_ADMIN_PASSWORD")] = "",
    annotators: int = 5,
    judgements: int = 100,
    preference: str = "longer",
    noise: float = 0.1,
    seed: int = 0,
):
    """Synthetic annotators judging through the HTTP API, following a preference
    (longer | shorter | random | word:X | mix:dialogue=1,ends=0.5,repetition=-1 ...)."""
    from app.simulate import SimulationConfig, run_simulation

    config = SimulationConfig(annotators=annotators, judgements=judgements, preference=preference, noise=noise, seed=seed)
    result = run_simulation(url, admin, admin_password, config)
    typer.echo(result.model_dump_json(indent=2))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli()


if __name__ == "__main__":
    main()
