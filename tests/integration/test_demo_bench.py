"""The README's main job (`rotaproxy demo`) and `rotaproxy bench`, run for real in short form."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_demo_rotates_under_load_without_client_errors(tmp_path: Path) -> None:
    chart = tmp_path / "demo.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "--log-level",
            "warning",
            "demo",
            "--clients",
            "4",
            "--duration",
            "6s",
            "--rotations",
            "2",
            "--live",  # forced: the output is a pipe here
            "--chart",
            str(chart),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout)  # the live view's escape codes
    # The live view showed every pool with its connections by generation and secret version.
    assert "rotaproxy demo:" in out and "server connections by generation" in out, out
    # The clients came through the recommended listener: a Unix socket only this user may use.
    assert re.search(r"postgres: .*rotaproxy on unix:\S+/\.s\.PGSQL\.\d+ \(this user only\)", out), out
    assert re.search(r"mysql: .*rotaproxy on unix:\S+/mysql\.sock \(this user only\)", out), out
    for pool in ("orders", "orders-mysql", "orders-txn"):
        assert re.search(rf"│ {pool} +│ .*│ gen \d+: \d+", out), out
    # A real PNG chart was written.
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 20_000
    assert f"chart: {chart}" in out
    summary_rows = re.findall(
        r"│ (postgres|mysql) +│ +(\d+) │ +\d+ │ +[\d.]+ │ +[\d.]+ │ +(\d+) │ +(\d+) │", out
    )
    assert {row[0] for row in summary_rows} == {"postgres", "mysql"}, out
    assert all(int(row[1]) > 50 and row[2] == "0" and row[3] == "0" for row in summary_rows), out
    # Both strategies ran, for both engines, with the project's rotation function.
    for engine in ("postgres", "mysql"):
        assert re.search(rf"rotation 1 \(single-user\) {engine}: new version \S+ for user 'app'", out), out
        assert re.search(
            rf"rotation 2 \(alternating-users\) {engine}: new version \S+ for user 'app_clone'", out
        )
        # The claims come from what the clients, the databases and the log saw.
        summary = re.search(
            rf"^{engine}: (\d+) transactions .* missing from the database: (\d+); "
            rf"client errors: (\d+)$",
            out,
            re.MULTILINE,
        )
        assert summary, out
        assert int(summary.group(1)) > 50 and summary.group(2) == "0" and summary.group(3) == "0"
    for pool in ("orders", "orders-mysql", "orders-txn"):  # every pool drained after each rotation
        assert len(re.findall(rf"pool '{pool}': old-generation connections all closed", out)) == 2, out
    assert "times a password appears in rotaproxy's log: 0" in out
    assert "RESULT: OK, zero client errors and no lost writes" in out


def test_bench_quick_runs_every_scenario_with_numbers_json_and_plots(tmp_path: Path) -> None:
    json_path, plots = tmp_path / "bench.json", tmp_path / "plots"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "proxy", "--log-level", "warning", "bench", "--quick"),
            *("--json", str(json_path), "--plots", str(plots)),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    payload = json.loads(json_path.read_text())["scenarios"]

    # 1. Connection overhead: every driver, both concurrencies, all numbers; every driver against
    # both of rotaproxy's modes, the PostgreSQL drivers against PgBouncer too.
    series = payload["connection_overhead"]
    postgres_targets = ("direct", "rotaproxy", "rotaproxy-transaction", "pgbouncer")
    assert {(s["driver"], s["target"], s["concurrency"]) for s in series} == {
        (driver, target, concurrency)
        for driver, targets in (
            ("asyncpg", postgres_targets),
            ("psycopg", postgres_targets),
            ("aiomysql", ("direct", "rotaproxy", "rotaproxy-transaction")),
        )
        for target in targets
        for concurrency in (1, 10)
    }
    for entry in series:
        assert entry["errors"] == 0
        assert len(entry["latencies_ms"]) == 60
        assert 0 < entry["median_ms"] <= entry["p99_ms"]
    assert "| asyncpg | 1 |" in result.stdout

    # 2. Throughput: pgbench direct vs rotaproxy vs PgBouncer (both modes); sysbench for MariaDB.
    assert payload["pgbouncer_absent"] is None  # the bench installs it; here it must have run
    runs = payload["throughput"]
    expected = {
        (scenario, clients, target)
        for scenario in ("select-only", "SELECT 1", "TPC-B-like")
        for clients in (10, 100)
        for target in ("direct", "rotaproxy", "pgbouncer")
    }
    expected |= {  # session mode only where every client has a server connection
        (scenario, 10, target)
        for scenario in ("select-only", "SELECT 1", "TPC-B-like")
        for target in ("rotaproxy-session", "pgbouncer-session")
    }
    expected |= {
        (f"sysbench {script}", 10, target)
        for script in ("oltp_read_only", "oltp_read_write")
        for target in ("direct", "rotaproxy", "rotaproxy-transaction")
    }
    assert {(r["scenario"], r["clients"], r["target"]) for r in runs} == expected
    for run in runs:
        assert run["errors"] == [] and run["median_tps"] > 0, run
        # Each pooler's CPU per transaction is measured; direct has no pooler.
        assert (len(run["cpu_us"]) > 0) == (run["target"] != "direct"), run
        assert all(0 < value < 100_000 for value in run["cpu_us"]), run
    assert "| select-only | 100 |" in result.stdout
    assert "| asyncpg | 10 |" in result.stdout and "absent" not in result.stdout

    # 3. Connection storm: every client ran its query, through both poolers.
    storms = payload["storm"]
    assert {(s["target"], s["clients"]) for s in storms} == {("rotaproxy", 300), ("pgbouncer", 300)}
    for storm in storms:
        assert storm["errors"] == [0] and storm["median_seconds"] > 0, storm
        assert 0 < storm["rss_per_client_kib"][0] < 1024, storm

    # 4. Rotation under load: latency per second, the rotations' moments, zero client errors.
    rotation = {row["engine"]: row for row in payload["rotation"]}
    assert set(rotation) == {"postgres", "mysql"}
    for row in rotation.values():
        assert row["errors"] == 0 and row["transactions"] > 50, row
        assert len(row["rotations_at"]) == 2 and len(row["seconds"]) >= 5, row
        assert sum(second["tps"] for second in row["seconds"]) <= row["transactions"]

    for name in ("connection-overhead", "throughput", "storm", "rotation"):
        assert (plots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_interrupted_stops_everything_it_started(tmp_path: Path, how: signal.Signals) -> None:
    demo = subprocess.Popen(
        [
            *(sys.executable, "-m", "proxy", "--log-level", "info", "demo", "--clients", "2"),
            *("--duration", "60s", "--no-live", "--chart", str(tmp_path / "demo.png")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    seen = []
    for line in demo.stdout:
        seen.append(line)
        if "clients per database" in line:  # the load is starting
            break
    time.sleep(2)
    demo.send_signal(how)  # Ctrl-C, or a timeout's SIGTERM
    rest = demo.stdout.read()
    assert demo.wait(timeout=60) == 130, "".join(seen) + rest
    assert "interrupted: the throwaway servers and the proxy were stopped" in rest
    assert "Traceback" not in rest, rest
    started = [int(pid) for pid in re.findall(r"started on \S+ \(pid (\d+)", "".join(seen))]
    assert len(started) >= 1, "".join(seen)  # PostgreSQL, and MariaDB where installed

    def alive(pid: int) -> bool:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False
        return "State:\tZ" not in status  # a zombie is dead, waiting to be reaped

    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in started):
        assert time.monotonic() < deadline, [pid for pid in started if alive(pid)]
        time.sleep(0.1)
    assert not (tmp_path / "demo.png").exists()  # interrupted before the end: no chart
