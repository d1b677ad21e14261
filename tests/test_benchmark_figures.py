"""The annotation benchmark reports what a reader needs to compare its figures (issue 26, item 14):
the conditions on every row (items, annotators, think time, workers, cores, load average at the
start, the load generator's CPU in cores), and server CPU per judgement with the app and
PostgreSQL's backends apart."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import annotate_load  # noqa: E402
from annotate_load import BackendCpu, ConnectionCounter, Results, conditions, print_rows, result_row  # noqa: E402
from conftest import POSTGRES_URL, _fresh_postgres_database  # noqa: E402


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_backend_cpu_counts_only_the_window_and_late_comers_whole():
    cpu = BackendCpu()
    cpu.read([os.getpid()], opening=True)
    burn(0.3)
    # A process first seen after the window opened: all its CPU is the window's.
    late = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                             "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while annotate_load.process_cpu(late.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu.read([os.getpid(), late.pid])
    finally:
        late.kill()
        late.wait()
    cpu.read([late.pid])  # gone: its last reading stands
    assert 0.55 <= cpu.seconds() < 0.55 + 1.0  # 0.3 here + 0.3 there (+ the interpreter's start), not this process's life


def test_every_row_carries_its_conditions_and_cpu_apart(capsys):
    results = Results()
    results.acknowledged = set(range(100))
    setting = conditions("postgresql", 400, 200, 0.0, 2)
    row = result_row(setting, results, 10.0, client_cpu=2.5, server_cpu=0.2, rss_mb=100, stored=set(range(100)),
                     integrity={"tasks_over_R": 0, "done_count_mismatch": 0, "task_user_twice": 0}, db_cpu=0.1)
    assert row["items"] == 400 and row["annotators"] == 200 and row["workers"] == 2
    assert row["load_average_start"] >= 0 and row["cores"] == os.cpu_count()
    assert row["client_cores"] == pytest.approx(0.25)
    assert row["server_cpu_ms_per_judgement"] == pytest.approx(2.0)
    assert row["db_cpu_ms_per_judgement"] == pytest.approx(1.0)
    assert row["total_cpu_ms_per_judgement"] == pytest.approx(3.0)

    potato = result_row(conditions("potato-files", 400, 200, 0.0, 1), results, 10.0, 1.0, 6.0, 100, set(range(100)),
                        {"tasks_over_R": 0, "done_count_mismatch": 0, "task_user_twice": 0})
    assert potato["db_cpu_ms_per_judgement"] is None and potato["total_cpu_ms_per_judgement"] == pytest.approx(60.0)
    row["cpu_ratio_to_potato"], row["ratio_to_potato"] = 0.05, 1.0
    print_rows([row, potato])
    header, _, line, potato_line, legend = capsys.readouterr().out.splitlines()
    for column in ("items", "ann", "think", "wrk", "cores", "load0", "client", "app ms/j", "db ms/j", "cpu/pot"):
        assert column in header
    assert line.split()[:3] == ["postgresql", "400", "200"]
    assert "0.25" in line.split() and "2.00" in line.split() and "1.00" in line.split() and "0.05x" in line.split()
    assert potato_line.split()[:3] == ["potato-files", "400", "200"] and "60.00" in potato_line.split()
    assert "load generator" in legend


@pytest.mark.skipif(not POSTGRES_URL, reason="STORYLOOP_TEST_POSTGRES_URL not set")
def test_connection_counter_measures_the_backends_cpu():
    url, drop = _fresh_postgres_database()
    busy = create_engine(url)
    try:
        with busy.connect() as conn:
            conn.execute(text("SELECT 1"))  # its backend exists before the window opens
            counter = ConnectionCounter(url)
            try:
                with counter:
                    conn.execute(text("SELECT count(*) FROM generate_series(1, 3000000) g WHERE g % 7 = 0"))
            finally:
                counter.close()
        assert counter.db_cpu_s is not None and counter.db_cpu_s > 0.1
        assert counter.peak >= 1
    finally:
        busy.dispose()
        drop()
