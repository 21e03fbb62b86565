"""``rotaproxy bench``: what a connection costs, direct (with a password, as an application
would) vs through rotaproxy (no password, pooled server connection), for PostgreSQL and MariaDB.

Runs are interleaved (direct, proxy, direct, proxy, ...) so the ratio holds on a noisy
machine; each figure is reported with its spread across rounds.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proxy.localstack import LocalStack, local_stack
from proxy.throughput import Run, throughput, throughput_markdown

Cycle = Callable[[dict[str, Any]], Awaitable[None]]


async def asyncpg_cycle(dsn: dict[str, Any]) -> None:
    import asyncpg

    connection = await asyncpg.connect(**dsn)
    await connection.fetchval("SELECT 1")
    await connection.close()


async def psycopg_cycle(dsn: dict[str, Any]) -> None:
    import psycopg

    params = {("dbname" if key == "database" else key): value for key, value in dsn.items()}
    connection = await psycopg.AsyncConnection.connect(**params)
    await connection.execute("SELECT 1")
    await connection.close()


async def aiomysql_cycle(dsn: dict[str, Any]) -> None:
    import aiomysql

    params = {("db" if key == "database" else key): value for key, value in dsn.items()}
    connection = await aiomysql.connect(**params)
    async with connection.cursor() as cursor:
        await cursor.execute("SELECT 1")
    connection.close()


# driver -> (engine, one connect + SELECT 1 + close)
DRIVERS: dict[str, tuple[str, Cycle]] = {
    "asyncpg": ("postgres", asyncpg_cycle),
    "psycopg": ("postgres", psycopg_cycle),
    "aiomysql": ("mysql", aiomysql_cycle),
}


@dataclass
class Series:
    driver: str
    target: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    round_medians_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99_ms(self) -> float:
        if len(self.latencies_ms) < 2:
            return self.median_ms
        return statistics.quantiles(self.latencies_ms, n=100)[98]

    @property
    def spread_ms(self) -> float:
        """Half the range of the per-round medians: how much a figure moved between rounds."""
        if len(self.round_medians_ms) < 2:
            return 0.0
        return (max(self.round_medians_ms) - min(self.round_medians_ms)) / 2


async def _batch(cycle: Cycle, dsn: dict[str, Any], count: int, concurrency: int, series: Series) -> None:
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            started = time.perf_counter()
            try:
                await cycle(dsn)
            except Exception:
                series.errors += 1
                return
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(one() for _ in range(count)))
    series.latencies_ms += latencies
    if latencies:
        series.round_medians_ms.append(statistics.median(latencies))


async def connection_overhead(
    stack: LocalStack, *, rounds: int, per_round: int, concurrencies: tuple[int, ...]
) -> list[Series]:
    upstreams = {"postgres": stack.postgres, "mysql": stack.mysql}
    results: list[Series] = []
    for driver, (engine, cycle) in DRIVERS.items():
        upstream = upstreams[engine]
        if upstream is None:
            continue  # MariaDB not installed here
        targets = {"direct": upstream.direct_dsn(), "rotaproxy": upstream.proxy_dsn()}
        for concurrency in concurrencies:
            pair = {name: Series(driver, name, concurrency) for name in targets}
            await _batch(cycle, targets["rotaproxy"], concurrency, concurrency, Series(driver, "warm-up", 1))
            for _ in range(rounds):
                for name, dsn in targets.items():  # interleaved: A B A B
                    await _batch(cycle, dsn, per_round, concurrency, pair[name])
            results += pair.values()
    return results


def markdown(results: list[Series]) -> str:
    lines = [
        "| driver | concurrency | direct median (ms) | rotaproxy median (ms) | ratio "
        "| direct p99 | rotaproxy p99 | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(s.driver, s.concurrency, s.target): s for s in results}
    for driver, concurrency in dict.fromkeys((s.driver, s.concurrency) for s in results):
        direct, proxied = by_key[(driver, concurrency, "direct")], by_key[(driver, concurrency, "rotaproxy")]
        lines.append(
            f"| {driver} | {concurrency} | {direct.median_ms:.2f} ± {direct.spread_ms:.2f} | "
            f"{proxied.median_ms:.2f} ± {proxied.spread_ms:.2f} | "
            f"{proxied.median_ms / direct.median_ms:.2f}x | {direct.p99_ms:.2f} | {proxied.p99_ms:.2f} | "
            f"{direct.errors + proxied.errors} |"
        )
    return "\n".join(lines)


POOL_SIZE = 20


async def run_bench(
    *,
    quick: bool = False,
    json_path: Path | None = None,
    scenarios: tuple[str, ...] = ("connections", "throughput"),
) -> int:
    rounds, per_round = (3, 20) if quick else (6, 50)
    concurrencies = (1, 10) if quick else (1, 10, 50)
    seconds, throughput_rounds = (3, 1) if quick else (10, 2)
    results: list[Series] = []
    runs: list[Run] = []
    absent = ""
    async with local_stack(max_server_connections=POOL_SIZE, min_server_connections=2) as stack:
        if "connections" in scenarios:
            results = await connection_overhead(
                stack, rounds=rounds, per_round=per_round, concurrencies=concurrencies
            )
        if "throughput" in scenarios:
            runs, absent = await throughput(
                stack, seconds=seconds, rounds=throughput_rounds, pool_size=POOL_SIZE
            )
    if results:
        print("## Connection overhead: connect + SELECT 1 + close")
        print()
        print("direct = the driver's defaults with the password (PostgreSQL: SCRAM + TLS; MariaDB:")
        print("native password, no TLS); rotaproxy = no password, pooled server connection (TLS upstream)")
        print(f"{rounds} interleaved rounds of {per_round}; median ± half the range of the per-round medians")
        print()
        print(markdown(results))
        print()
    if runs:
        print(
            f"## Throughput: pgbench -M extended, {seconds}s runs, {throughput_rounds} interleaved round(s)"
        )
        print()
        print(f"rotaproxy and PgBouncer in transaction mode, {POOL_SIZE} server connections each, TLS")
        print("(verify-full) upstream; direct = pgbench with the password, TLS; median ± half the range")
        print()
        print(throughput_markdown(runs, absent))
    if json_path is not None:
        payload = {
            "scenarios": {
                "connection_overhead": [
                    {**asdict(s), "median_ms": s.median_ms, "p99_ms": s.p99_ms, "spread_ms": s.spread_ms}
                    for s in results
                ],
                "throughput": [
                    {**asdict(r), "median_tps": r.median_tps, "spread_tps": r.spread_tps} for r in runs
                ],
                "pgbouncer_absent": absent or None,
            }
        }
        await asyncio.to_thread(json_path.write_text, json.dumps(payload, indent=2))
    failed = any(s.errors for s in results) or any(r.errors for r in runs)
    for run in runs:
        for problem in run.errors[:1]:
            print(f"{run.target} {run.scenario} {run.clients} clients: {problem}")
    return 1 if failed else 0
