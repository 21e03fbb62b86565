"""The README's main job (`rotaproxy demo`) and `rotaproxy bench`, run for real in short form."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


def test_demo_rotates_under_load_without_client_errors() -> None:
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
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
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


def test_bench_quick_reports_every_series_with_numbers(tmp_path: Path) -> None:
    json_path = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "--log-level",
            "warning",
            "bench",
            "--quick",
            "--json",
            str(json_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    series = json.loads(json_path.read_text())["scenarios"]["connection_overhead"]
    combos = {(s["driver"], s["target"], s["concurrency"]) for s in series}
    assert combos == {
        (driver, target, concurrency)
        for driver in ("asyncpg", "psycopg", "aiomysql")
        for target in ("direct", "rotaproxy")
        for concurrency in (1, 10)
    }
    for entry in series:
        assert entry["errors"] == 0
        assert len(entry["latencies_ms"]) == 60
        assert 0 < entry["median_ms"] <= entry["p99_ms"]
    assert "| asyncpg | 1 |" in result.stdout


def test_bench_throughput_compares_direct_rotaproxy_and_pgbouncer(tmp_path: Path) -> None:
    json_path = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "--log-level",
            "warning",
            "bench",
            "--quick",
            "--scenarios",
            "throughput",
            "--json",
            str(json_path),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    payload = json.loads(json_path.read_text())["scenarios"]
    assert payload["pgbouncer_absent"] is None  # the bench installs it; here it must have run
    runs = payload["throughput"]
    assert {(r["scenario"], r["clients"], r["target"]) for r in runs} == {
        (scenario, clients, target)
        for scenario in ("select-only", "SELECT 1", "TPC-B-like")
        for clients in (10, 100)
        for target in ("direct", "rotaproxy", "pgbouncer")
    }
    for run in runs:
        assert run["errors"] == [] and run["median_tps"] > 0, run
        # Each pooler's CPU per transaction is measured; direct has no pooler.
        assert (len(run["cpu_us"]) > 0) == (run["target"] != "direct"), run
        assert all(0 < value < 10_000 for value in run["cpu_us"]), run
    assert "| select-only | 100 |" in result.stdout
