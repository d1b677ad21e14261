"""One trainer at a time: a lease row in the database, renewed by a heartbeat thread."""

import os
import socket
import threading
from datetime import timedelta

from app.db import Database
from app.models import TrainerLease, utcnow
from app.services.training import LEASE_STALE_SECONDS, TRAINER_LEASE


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead_on_this_host(holder: str) -> bool:
    """A holder on this machine whose process is gone (a killed trainer) need not be waited for."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def try_acquire(database: Database, holder: str) -> str | None:
    """Takes the lease if it is free, stale, ours, or held by a dead process on this host.
    Returns None on success, else the current holder."""
    with database.write() as db:
        now = utcnow()
        lease = db.get(TrainerLease, TRAINER_LEASE, with_for_update=True)
        if lease is None:
            db.add(TrainerLease(name=TRAINER_LEASE, holder=holder, heartbeat_at=now))
            return None
        stale = lease.heartbeat_at < now - timedelta(seconds=LEASE_STALE_SECONDS)
        if lease.holder == holder or stale or _dead_on_this_host(lease.holder):
            lease.holder, lease.heartbeat_at = holder, now
            return None
        return lease.holder


def release(database: Database, holder: str) -> None:
    with database.write() as db:
        lease = db.get(TrainerLease, TRAINER_LEASE, with_for_update=True)
        if lease is not None and lease.holder == holder:
            db.delete(lease)


class Heartbeat:
    """Renews the lease every few seconds in a daemon thread; `lost` is set if another trainer took it."""

    def __init__(self, database: Database, holder: str, every_seconds: float = 10.0):
        self.database, self.holder, self.every = database, holder, every_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="trainer-heartbeat")

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                if try_acquire(self.database, self.holder) is not None:
                    self.lost.set()
                    return
            except Exception:  # a database hiccup: try again at the next beat
                continue
