"""``rotaproxy bench``: what a connection costs, direct (with a password, as an application
would) vs through rotaproxy (no password, pooled server connection) and PgBouncer, for PostgreSQL
and MariaDB; throughput against PgBouncer; a connection storm; latency across rotations under load.

Runs are interleaved (A B C A B C ...) so the ratios hold on a noisy machine; each figure is
reported with its spread across rounds.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proxy.bench.charts import bar_chart, timeline_chart
from proxy.bench.demo import Tally, client_load, prepare_tables, rotate_secrets
from proxy.bench.storm import Storm, connection_storm, storm_json, storm_markdown
from proxy.bench.throughput import (
    Run,
    mysql_markdown,
    mysql_throughput,
    pgbouncer_for,
    throughput,
    throughput_markdown,
)
from proxy.bench.timeline import Point, Timeline, half_range, percentile
from proxy.local.stack import LocalStack, local_stack

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
# Connection overhead's targets: "rotaproxy" is its session-mode pool.
TRANSACTION_POOL = "rotaproxy-transaction"
OVERHEAD_TARGETS = ("direct", "rotaproxy", TRANSACTION_POOL, "pgbouncer")
# PgBouncer 1.18's transaction mode does not carry named prepared statements from one server
# connection to the next, and asyncpg's statement cache names them: under concurrency a Bind
# lands where its Parse never ran ("does not exist"). Behind it asyncpg needs the setting its
# documentation gives for PgBouncer; every other setting, TLS included, stays the default.
BEHIND_PGBOUNCER: dict[str, dict[str, Any]] = {"asyncpg": {"statement_cache_size": 0}}


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
        return half_range(self.round_medians_ms)


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
    stack: LocalStack, *, rounds: int, per_round: int, concurrencies: tuple[int, ...], pool_size: int
) -> tuple[list[Series], str]:
    """Interleaved connect + SELECT 1 + close for every driver and target, pools warm; returns
    the series and why PgBouncer is absent (or "")."""
    upstreams = {"postgres": stack.postgres, "mysql": stack.mysql}
    results: list[Series] = []
    async with pgbouncer_for(stack, pool_size) as (bouncer, absent):
        for driver, (engine, cycle) in DRIVERS.items():
            upstream = upstreams[engine]
            if upstream is None:
                continue  # MariaDB not installed here
            pooled = upstream.proxy_dsn()
            targets = {"direct": upstream.direct_dsn(), "rotaproxy": pooled}
            transaction_port = stack.txn_proxy_port if engine == "postgres" else stack.mysql_txn_proxy_port
            if transaction_port is not None:
                targets[TRANSACTION_POOL] = {**pooled, "port": transaction_port}
            if engine == "postgres" and bouncer is not None:  # PgBouncer is PostgreSQL's
                targets["pgbouncer"] = {
                    **pooled,
                    "port": bouncer.port,
                    **BEHIND_PGBOUNCER.get(driver, {}),
                }
            for concurrency in concurrencies:
                series = {name: Series(driver, name, concurrency) for name in targets}
                for name, dsn in targets.items():
                    if name != "direct":
                        await _batch(cycle, dsn, concurrency, concurrency, Series(driver, "warm-up", 1))
                for _ in range(rounds):
                    for name, dsn in targets.items():  # interleaved: A B C D A B C D
                        await _batch(cycle, dsn, per_round, concurrency, series[name])
                results += series.values()
    return results, absent


def _latency_cell(series: Series | None, why: str) -> str:
    return f"{series.median_ms:.2f} ± {series.spread_ms:.2f}" if series else why


def _latency_ratio(ours: Series | None, reference: Series | None) -> str:
    return f"{ours.median_ms / reference.median_ms:.2f}x" if ours and reference else "-"


def markdown(results: list[Series], absent: str) -> str:
    lines = [
        "| driver | concurrency | direct median (ms) | rotaproxy session median (ms) "
        "| rotaproxy transaction median (ms) | PgBouncer median (ms) "
        "| rotaproxy/direct (session / transaction) | rotaproxy/PgBouncer (session / transaction) "
        "| p99 ms (direct / session / transaction / PgBouncer) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(s.driver, s.concurrency, s.target): s for s in results}
    for driver, concurrency in dict.fromkeys((s.driver, s.concurrency) for s in results):
        direct, session, transaction, bouncer = (
            by_key.get((driver, concurrency, target)) for target in OVERHEAD_TARGETS
        )
        mysql = DRIVERS[driver][0] == "mysql"
        transaction_why = "-"
        bouncer_why = "PostgreSQL only" if mysql else f"absent: {absent}"
        p99s = " / ".join(f"{s.p99_ms:.2f}" if s else "-" for s in (direct, session, transaction, bouncer))
        errors = sum(s.errors for s in (direct, session, transaction, bouncer) if s)
        lines.append(
            f"| {driver} | {concurrency} | {_latency_cell(direct, '-')} | {_latency_cell(session, '-')} | "
            f"{_latency_cell(transaction, transaction_why)} | {_latency_cell(bouncer, bouncer_why)} | "
            f"{_latency_ratio(session, direct)} / {_latency_ratio(transaction, direct)} | "
            f"{_latency_ratio(session, bouncer)} / {_latency_ratio(transaction, bouncer)} | "
            f"{p99s} | {errors} |"
        )
    return "\n".join(lines)


POOL_SIZE = 20
SCENARIOS = ("connections", "throughput", "storm", "rotation")


@dataclass
class RotationRun:
    """Latency over time while the secrets rotate (the demo's load, measured)."""

    timeline: Timeline
    tallies: dict[str, Tally]
    clients: int
    rotations: int

    def row(self, engine: str) -> dict[str, Any]:
        points = self.timeline.points(engine)
        rotated_at = [at for at, label in self.timeline.events if engine in label]
        near = [p for p in points if any(-1.0 <= p.at - at <= 2.0 for at in rotated_at)]
        away = [p for p in points if p not in near]
        latencies = self.timeline.latencies(engine)

        def worst(seconds: list[Point]) -> float:
            finite = [p.p99_ms for p in seconds if not math.isnan(p.p99_ms)]
            return max(finite) if finite else float("nan")

        def typical(seconds: list[Point]) -> float:
            finite = [p.p99_ms for p in seconds if not math.isnan(p.p99_ms)]
            return statistics.median(finite) if finite else float("nan")

        return {
            "engine": engine,
            "transactions": len(self.tallies[engine].acknowledged),
            "errors": len(self.tallies[engine].errors),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
            "p99_per_second_typical_ms": typical(away),
            "p99_per_second_worst_near_rotation_ms": worst(near),
            "seconds": [asdict(p) for p in points],
            "rotations_at": rotated_at,
        }


async def rotation_under_load(
    stack: LocalStack, *, clients: int, duration: float, rotations: int
) -> RotationRun:
    import aioboto3

    prepare_tables(stack)
    timeline = Timeline([upstream.engine for upstream in stack.upstreams])
    tallies = {upstream.engine: Tally(upstream.engine, timeline) for upstream in stack.upstreams}
    stop = asyncio.Event()
    async with aioboto3.Session().client("secretsmanager", **stack.sm.client_kwargs()) as sm_client:
        load = asyncio.gather(*(client_load(u, clients, tallies[u.engine], stop) for u in stack.upstreams))
        try:
            await rotate_secrets(
                stack, rotations, duration / (rotations + 1), sm_client, lambda label, _: timeline.mark(label)
            )
            await asyncio.sleep(max(0.0, duration - timeline.now()))
        finally:
            stop.set()
            timeline.stop()
            await load
    return RotationRun(timeline, tallies, clients, rotations)


def rotation_markdown(run: RotationRun) -> str:
    lines = [
        "| engine | transactions | client errors | p50 ms | p99 ms | per-second p99, typical (ms) "
        "| per-second p99, worst within 2 s of a rotation (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine in run.timeline.series:
        row = run.row(engine)
        figures = (row["p50_ms"], row["p99_ms"], row["p99_per_second_typical_ms"])
        lines.append(
            f"| {engine} | {row['transactions']} | {row['errors']} | "
            + " | ".join(f"{value:.1f}" for value in figures)
            + f" | {row['p99_per_second_worst_near_rotation_ms']:.1f} |"
        )
    return "\n".join(lines)


async def run_bench(
    *,
    quick: bool = False,
    json_path: Path | None = None,
    plots: Path | None = None,
    scenarios: tuple[str, ...] = SCENARIOS,
) -> int:
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        print(f"rotaproxy bench: unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
        return 2
    rounds, per_round = (3, 20) if quick else (6, 50)
    concurrencies = (1, 10) if quick else (1, 10, 50)
    seconds, throughput_rounds = (2, 1) if quick else (10, 2)
    storm_sizes, storm_rounds = ((300,), 1) if quick else ((1000, 5000), 2)
    rotation_seconds, rotation_count = (6.0, 2) if quick else (40.0, 4)
    results: list[Series] = []
    runs: list[Run] = []
    mysql_runs: list[Run] = []
    storms: list[Storm] = []
    rotation: RotationRun | None = None
    absent = overhead_absent = storm_absent = ""
    async with local_stack(
        max_server_connections=POOL_SIZE, min_server_connections=2, poll_interval="1s"
    ) as stack:
        if "connections" in scenarios:
            results, overhead_absent = await connection_overhead(
                stack, rounds=rounds, per_round=per_round, concurrencies=concurrencies, pool_size=POOL_SIZE
            )
        if "throughput" in scenarios:
            runs, absent = await throughput(
                stack, seconds=seconds, rounds=throughput_rounds, pool_size=POOL_SIZE
            )
            mysql_runs = await mysql_throughput(stack, seconds=seconds, rounds=throughput_rounds)
        if "storm" in scenarios:
            storms, storm_absent = await connection_storm(
                stack, sizes=storm_sizes, rounds=storm_rounds, pool_size=POOL_SIZE
            )
        if "rotation" in scenarios:
            rotation = await rotation_under_load(
                stack, clients=10, duration=rotation_seconds, rotations=rotation_count
            )
    if results:
        print("## Connection overhead: connect + SELECT 1 + close")
        print()
        print("direct = the driver's defaults with the password (PostgreSQL: SCRAM + TLS; MariaDB:")
        print("native password, no TLS); rotaproxy = no password, pooled server connection (TLS upstream),")
        print(f"session and transaction mode; PgBouncer = trust auth, transaction mode, {POOL_SIZE} server")
        print("connections. Pools warm, drivers' defaults (the PostgreSQL drivers ask the poolers for TLS")
        print("and are declined), but asyncpg behind PgBouncer has statement_cache_size=0, which PgBouncer's")
        print("transaction mode needs.")
        print(f"{rounds} interleaved rounds of {per_round}; median ± half the range of the per-round medians")
        print()
        print(markdown(results, overhead_absent))
        print()
    if runs:
        print(
            f"## Throughput: pgbench -M extended, {seconds}s runs, {throughput_rounds} interleaved round(s)"
        )
        print()
        print(f"rotaproxy and PgBouncer in transaction mode, {POOL_SIZE} server connections each, TLS")
        print("(verify-full) upstream; direct = pgbench with the password, TLS; median ± half the range.")
        print("Session mode columns: rotaproxy's session pool and the same PgBouncer's session-mode alias,")
        print("same pool size, where every client can hold a server connection")
        print()
        print(throughput_markdown(runs, absent))
        print()
    if mysql_runs:
        title = "sysbench oltp_read_only, oltp_read_write; direct vs session vs transaction mode"
        print(f"## Throughput, MariaDB: {title}; {seconds}s")
        print()
        print(mysql_markdown(mysql_runs))
        print()
    if storms:
        print(f"## Connection storm: clients connecting at once to a pool of {POOL_SIZE} (transaction mode)")
        print()
        print(storm_markdown(storms, storm_absent))
        print()
    if rotation is not None:
        print(
            f"## Rotation under load: {rotation.clients} clients per database, "
            f"{rotation.rotations} rotations in {rotation_seconds:g}s"
        )
        print()
        print(rotation_markdown(rotation))
        print()
    if plots is not None:
        for path in draw_plots(plots, results, runs, storms, rotation):
            print(f"plot: {path}")
    if json_path is not None:
        payload = {
            "scenarios": {
                "connection_overhead": [
                    {**asdict(s), "median_ms": s.median_ms, "p99_ms": s.p99_ms, "spread_ms": s.spread_ms}
                    for s in results
                ],
                "throughput": [
                    {**asdict(r), "median_tps": r.median_tps, "spread_tps": r.spread_tps}
                    for r in runs + mysql_runs
                ],
                "pgbouncer_absent": (absent or overhead_absent or storm_absent) or None,
                "storm": storm_json(storms),
                "rotation": [rotation.row(engine) for engine in rotation.timeline.series] if rotation else [],
            }
        }
        await asyncio.to_thread(json_path.write_text, json.dumps(payload, indent=2))
    failed = (
        any(s.errors for s in results)
        or any(r.errors for r in runs + mysql_runs)
        or any(sum(s.errors) for s in storms)
        or (rotation is not None and any(t.errors for t in rotation.tallies.values()))
    )
    for run in runs + mysql_runs:
        for problem in run.errors[:1]:
            print(f"{run.target} {run.scenario} {run.clients} clients: {problem}")
    for storm in storms:
        if storm.first_error:
            print(f"{storm.target} storm of {storm.clients}: {storm.first_error}")
    return 1 if failed else 0


def draw_plots(
    directory: Path,
    results: list[Series],
    runs: list[Run],
    storms: list[Storm],
    rotation: RotationRun | None,
) -> list[Path]:
    """PNG charts of whatever ran."""
    paths = []
    if results:
        groups, values = _bars([(f"{s.driver} x{s.concurrency}", s.target, s.median_ms) for s in results])
        paths.append(
            bar_chart(
                directory / "connection-overhead.png", "connect + SELECT 1 + close", groups, values, "ms"
            )
        )
    if runs:
        groups, values = _bars([(f"{r.scenario} x{r.clients}", r.target, r.median_tps) for r in runs])
        paths.append(bar_chart(directory / "throughput.png", "pgbench -M extended", groups, values, "TPS"))
    if storms:
        groups, values = _bars([(f"{s.clients:,} clients", s.target, s.median_seconds) for s in storms])
        paths.append(
            bar_chart(directory / "storm.png", "time until every client ran a query", groups, values, "s")
        )
    if rotation is not None:
        paths.append(
            timeline_chart(rotation.timeline, directory / "rotation.png", "rotation under load (rotaproxy)")
        )
    return paths


def _bars(figures: list[tuple[str, str, float]]) -> tuple[list[str], dict[str, list[float]]]:
    """(group, target, value) as a bar chart's groups and one value per group for each target
    (0 where a target did not run in a group)."""
    groups = list(dict.fromkeys(group for group, _, _ in figures))
    keyed = {(group, target): value for group, target, value in figures}
    targets = dict.fromkeys(target for _, target, _ in figures)
    return groups, {target: [keyed.get((group, target), 0.0) for group in groups] for target in targets}
