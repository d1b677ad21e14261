"""Backups of the embedded SQLite database, taken while the app runs.

sqlite3's online backup API copies the database page by page, consistently, while other connections
keep reading and writing (WAL included), so no acknowledged judgement is missing from a finished copy
and the app need not stop. PostgreSQL has its own tools (pg_dump / pg_restore; see docs/operations.md).
"""

import os
import sqlite3
from pathlib import Path

from app.db import Database
from app.services.errors import Invalid


def backup_sqlite(database: Database, target: Path) -> int:
    """Copies the database to `target` (written beside it, then renamed into place). Returns its size."""
    if not database.is_sqlite or not database.engine.url.database:
        raise Invalid("storyloop backup copies the SQLite database; for PostgreSQL use pg_dump (see docs/operations.md)")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    source = sqlite3.connect(database.engine.url.database)
    try:
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()
    os.replace(partial, target)  # a reader never sees a half-written backup
    return target.stat().st_size
