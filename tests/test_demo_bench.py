"""The README's main job (`rotaproxy demo`) and `rotaproxy bench`, run for real in short form."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs_clients_through_the_proxy_without_errors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--log-level", "warning", "demo", "--clients", "6", "--queries", "5"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The claims come from what the clients and the databases saw, not from the demo's hopes.
    for engine in ("postgres", "mysql"):
        assert re.search(
            rf"^{engine}: 30 transactions .* rows in the database: 30 \(expected 30\); client errors: 0$",
            result.stdout,
            re.MULTILINE,
        ), result.stdout
    assert "times a password appears in rotaproxy's log: 0" in result.stdout
    assert "RESULT: OK, zero client errors" in result.stdout


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
