"""The app under a real uvicorn in a background thread, on a free localhost port; the real server
as its own processes; and the headless-Chromium settings. Used by the browser and concurrency tests
and the screenshot scripts."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import uvicorn

CHROMIUM = "/usr/bin/chromium"  # Debian's; never a downloaded browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


class LiveServer:
    def __init__(self, app):
        self.app = app

    def __enter__(self) -> "LiveServer":
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))  # a free port, held by us until uvicorn listens on it
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


def start_server_process(settings, workers: int = 2) -> tuple[subprocess.Popen, int]:
    """The real server as `storyloop serve` runs it (uvicorn with worker processes), in a process
    group of its own so a test can kill all of it; returns the process and its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "STORYLOOP_DATABASE_URL": settings.resolved_database_url,
           "STORYLOOP_DATA_DIR": str(settings.data_dir), "STORYLOOP_SECRET_KEY": settings.secret_key}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
        env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                time.sleep(1.0)  # let the other workers finish starting too
                return server, port
        except httpx.TransportError:
            time.sleep(0.1)
    os.killpg(server.pid, signal.SIGKILL)
    raise AssertionError("the server did not start")
