"""``rotaproxy demo``: the whole story on one machine, no AWS account needed.

A throwaway PostgreSQL (TLS, SCRAM) and, where installed, MariaDB (TLS), a local Secrets
Manager holding their credentials, rotaproxy in front, and concurrent clients that connect
without a password and write rows in transactions while the secrets are rotated with
rotaproxy's own rotation function, both strategies. A live view (rich) shows throughput,
latency, errors, server connections by credential generation and each rotation; at the end
a summary table and a PNG chart. Every claim printed at the end is computed from what the
clients, the databases and the proxy's log saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from proxy.bench.charts import timeline_chart
from proxy.bench.timeline import Timeline, percentile
from proxy.local.stack import DATABASE, LocalStack, Upstream, local_stack
from proxy.rotation.settings import RotationSettings, Strategy
from proxy.rotation.steps import Rotator

MAX_SERVER_CONNECTIONS = 6
TRANSACTIONS_PER_SESSION = 5  # clients reconnect now and then, as real ones do
DRAIN_LINE = re.compile(
    r'pool "([^"]+)": rotation complete: the last old-generation connection closed ([\d.]+)s'
)


@dataclass
class Tally:
    """What one engine's clients saw (latencies and errors per second go to the timeline)."""

    engine: str
    timeline: Timeline
    acknowledged: set[tuple[int, int]] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def committed(self, worker: int, seq: int, started: float) -> None:
        self.timeline.record(self.engine, (time.perf_counter() - started) * 1000)
        self.acknowledged.add((worker, seq))

    def failed(self, exc: Exception) -> None:
        self.timeline.error(self.engine)
        self.errors.append(f"{type(exc).__name__}: {exc}")


async def _postgres_session(upstream: Upstream, worker: int, seqs: list[int], tally: Tally) -> None:
    import asyncpg

    connection = await asyncpg.connect(**upstream.proxy_dsn())  # no password
    try:
        for _ in range(TRANSACTIONS_PER_SESSION):
            seqs[worker] += 1
            started = time.perf_counter()
            async with connection.transaction():
                await connection.execute(
                    "INSERT INTO demo_events (worker, seq) VALUES ($1, $2)", worker, seqs[worker]
                )
            tally.committed(worker, seqs[worker], started)
    finally:
        await connection.close()


async def _mysql_session(upstream: Upstream, worker: int, seqs: list[int], tally: Tally) -> None:
    import aiomysql

    dsn = upstream.proxy_dsn()
    database = dsn.pop("database")
    connection = await aiomysql.connect(db=database, **dsn)
    try:
        for _ in range(TRANSACTIONS_PER_SESSION):
            seqs[worker] += 1
            started = time.perf_counter()
            await connection.begin()
            async with connection.cursor() as cursor:
                await cursor.execute(
                    "INSERT INTO demo_events (worker, seq) VALUES (%s, %s)", (worker, seqs[worker])
                )
            await connection.commit()
            tally.committed(worker, seqs[worker], started)
    finally:
        connection.close()


SESSIONS = {"postgres": _postgres_session, "mysql": _mysql_session}


async def client_load(upstream: Upstream, clients: int, tally: Tally, stop: asyncio.Event) -> None:
    """``clients`` workers writing rows in transactions until ``stop``; what they saw goes to ``tally``."""
    seqs = [0] * clients
    session = SESSIONS[upstream.engine]

    async def worker(index: int) -> None:
        while not stop.is_set():
            try:
                await session(upstream, index, seqs, tally)
            except Exception as exc:  # counted and shown; the exit code says so
                tally.failed(exc)
                await asyncio.sleep(0.1)

    await asyncio.gather(*(worker(index) for index in range(clients)))


def prepare_tables(stack: LocalStack) -> None:
    stack.pg.sql(
        "CREATE TABLE demo_events (worker int, seq int, PRIMARY KEY (worker, seq));"
        "ALTER TABLE demo_events OWNER TO app;",
        database=DATABASE,
    )
    if stack.mariadb is not None:
        stack.mariadb.sql(
            "CREATE TABLE demo_events (worker INT, seq INT, PRIMARY KEY (worker, seq)) ENGINE=InnoDB",
            database=DATABASE,
        )


def _stored(stack: LocalStack, engine: str) -> set[tuple[int, int]]:
    if engine == "postgres":
        text = stack.pg.sql("SELECT worker || ' ' || seq FROM demo_events", database=DATABASE)
    else:
        assert stack.mariadb is not None
        text = stack.mariadb.sql("SELECT CONCAT(worker, ' ', seq) FROM demo_events", database=DATABASE)
    return {(int(w), int(s)) for w, s in (line.split() for line in text.splitlines() if line)}


async def rotate_secrets(
    stack: LocalStack, count: int, interval: float, client: Any, on_rotation: Callable[[str, str], None]
) -> list[str]:
    """``count`` rotations, one every ``interval`` seconds, alternating the two strategies."""
    events = []
    for index in range(count):
        await asyncio.sleep(interval)
        strategy: Strategy = "single-user" if index % 2 == 0 else "alternating-users"
        rotator = Rotator(
            client, RotationSettings(strategy=strategy, tls="verify-full", tls_ca_file=stack.tls.ca_file)
        )
        for upstream in stack.upstreams:
            started = time.perf_counter()
            version = await rotator.rotate(upstream.secret_id)
            current = await client.get_secret_value(SecretId=upstream.secret_id, VersionStage="AWSCURRENT")
            user = json.loads(current["SecretString"])["username"]
            line = (
                f"rotation {index + 1} ({strategy}) {upstream.engine}: new version {version} "
                f"for user {user!r} in {time.perf_counter() - started:.2f}s"
            )
            on_rotation(f"rotation {index + 1} {upstream.engine}", line)
            events.append(line)
    return events


async def _all_passwords(client: Any, upstream: Upstream) -> list[str]:
    described = await client.describe_secret(SecretId=upstream.secret_id)
    values = [upstream.admin_password]
    for version_id in described.get("VersionIdsToStages", {}):
        value = await client.get_secret_value(SecretId=upstream.secret_id, VersionId=version_id)
        values.append(json.loads(value["SecretString"])["password"])
    return values


async def run_demo(
    clients: int = 10,
    duration: float = 20.0,
    rotations: int = 4,
    *,
    live: bool | None = None,
    chart: Path | None = Path("rotaproxy-demo.png"),
) -> int:
    """Run the demo; ``live`` None means a live view when stdout is a terminal."""
    import aioboto3

    console = Console(force_terminal=live or None)
    async with local_stack(
        max_server_connections=MAX_SERVER_CONNECTIONS, poll_interval="1s", sockets=True
    ) as stack:
        prepare_tables(stack)
        print(f"Secrets Manager (local) at {stack.sm.endpoint_url}")
        for upstream in stack.upstreams:
            print(
                f"  {upstream.engine}: database on 127.0.0.1:{upstream.port} (TLS, random password), "
                f"secret {upstream.secret_id!r}; rotaproxy on {upstream.proxy_listen} (this user only)"
            )
        if stack.mysql is None:
            print("  (MariaDB is not installed here: PostgreSQL only)")
        print(
            f"{clients} clients per database write rows in transactions, no password, through at most "
            f"{MAX_SERVER_CONNECTIONS} server connections each; {rotations} rotations in {duration:g}s",
            flush=True,
        )
        timeline = Timeline([upstream.engine for upstream in stack.upstreams])
        tallies = {u.engine: Tally(u.engine, timeline) for u in stack.upstreams}
        view = DemoView(stack, timeline, tallies, console, live=console.is_terminal if live is None else live)
        stop = asyncio.Event()
        async with (
            aioboto3.Session().client("secretsmanager", **stack.sm.client_kwargs()) as sm_client,
            view.running(),
        ):
            load = asyncio.gather(
                *(client_load(u, clients, tallies[u.engine], stop) for u in stack.upstreams)
            )
            try:
                await rotate_secrets(stack, rotations, duration / (rotations + 1), sm_client, view.rotated)
                await asyncio.sleep(max(0.0, duration - timeline.now()))
            finally:
                stop.set()
                timeline.stop()
                await load
            elapsed = timeline.now()
            passwords = [p for u in stack.upstreams for p in await _all_passwords(sm_client, u)]
        await asyncio.sleep(1.5)  # let the last rotation's drain reach the log
        log_text = stack.log_path.read_text(errors="replace")
        status = _summary(stack, tallies, elapsed, log_text, passwords, console)
        if chart is not None:
            path = timeline_chart(
                timeline, chart, f"rotaproxy demo: {clients} clients per database, {rotations} rotations"
            )
            print(f"chart: {path}")
        return status


NUMBER_COLUMNS = ("pool", "tx/s", "p50 ms", "p99 ms", "errors")


class DemoView:
    """The live terminal view, or plain progress lines when there is no terminal."""

    def __init__(
        self,
        stack: LocalStack,
        timeline: Timeline,
        tallies: dict[str, Tally],
        console: Console,
        *,
        live: bool,
    ) -> None:
        self.stack = stack
        self.timeline = timeline
        self.tallies = tallies
        self.console = console
        self.live = live
        self.pools: dict[str, Any] = {}  # the proxy's GET /pools, refreshed every second
        self.rotations: list[str] = []

    def rotated(self, label: str, line: str) -> None:
        self.timeline.mark(label)
        self.rotations.append(line)
        if not self.live:
            print(line, flush=True)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        poller = asyncio.create_task(self._poll_pools())
        try:
            if self.live:
                with Live(self.render(), console=self.console, refresh_per_second=4) as live:
                    painter = asyncio.create_task(self._paint(live))
                    try:
                        yield
                    finally:
                        painter.cancel()
                        live.update(self.render())
            else:
                yield
        finally:
            poller.cancel()

    async def _paint(self, live: Live) -> None:
        while True:
            await asyncio.sleep(0.5)
            live.update(self.render())

    async def _poll_pools(self) -> None:
        import aiohttp

        url = f"http://127.0.0.1:{self.stack.admin_port}/pools"
        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                        self.pools = await response.json()
                await asyncio.sleep(1.0)

    def render(self) -> Group:
        table = Table(title=f"rotaproxy demo: {self.timeline.now():.0f}s", title_justify="left")
        for column in (
            "pool",
            "tx/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "server connections by generation",
            "secret version",
        ):
            table.add_column(
                column, justify="right" if column in ("tx/s", "p50 ms", "p99 ms", "errors") else "left"
            )
        engines = {upstream.proxy_listen: upstream.engine for upstream in self.stack.upstreams}
        for name, pool in sorted(self.pools.items()):
            engine = pool.get("engine", "")
            loaded = engines.get(str(pool.get("listen"))) == engine  # the clients' pools; the others idle
            recent = self.timeline.recent(engine) if loaded else None
            generations = pool.get("server_connections", {}).get("by_generation", {})
            version = (pool.get("credentials") or {}).get("version_id") or "-"
            table.add_row(
                name,
                f"{recent.tps:,.0f}" if recent else "-",
                _ms(recent.p50_ms) if recent else "-",
                _ms(recent.p99_ms) if recent else "-",
                str(len(self.tallies[engine].errors)) if loaded else "-",
                "  ".join(f"gen {g}: {n}" for g, n in sorted(generations.items(), key=lambda kv: int(kv[0])))
                or "-",
                version[:12],
            )
        lines = [Text(line, style="cyan") for line in self.rotations[-6:]]
        return Group(table, *lines)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _summary(
    stack: LocalStack,
    tallies: dict[str, Tally],
    elapsed: float,
    log_text: str,
    passwords: list[str],
    console: Console,
) -> int:
    failed = False
    table = Table(title="summary", title_justify="left")
    for column in ("engine", "transactions", "tx/s", "p50 ms", "p99 ms", "client errors", "lost writes"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    print("\n--- summary ---")
    for upstream in stack.upstreams:
        tally = tallies[upstream.engine]
        missing = tally.acknowledged - _stored(stack, upstream.engine)
        latencies = tally.timeline.latencies(upstream.engine)
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(
            f"{upstream.engine}: {len(tally.acknowledged)} transactions in {elapsed:.1f}s "
            f"({len(tally.acknowledged) / elapsed:.0f}/s), p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
            f"acknowledged rows missing from the database: {len(missing)}; client errors: {len(tally.errors)}"
        )
        table.add_row(
            upstream.engine,
            str(len(tally.acknowledged)),
            f"{len(tally.acknowledged) / elapsed:.0f}",
            _ms(p50),
            _ms(p99),
            str(len(tally.errors)),
            str(len(missing)),
        )
        for error in tally.errors[:3]:
            print(f"  {error}")
        failed |= bool(tally.errors) or bool(missing) or not tally.acknowledged
    console.print(table)
    drains = DRAIN_LINE.findall(log_text)
    for pool, seconds in drains:
        print(f"pool {pool!r}: old-generation connections all closed {seconds}s after switching versions")
    leaks = sum(log_text.count(password) for password in passwords)
    print(f"times a password appears in rotaproxy's log: {leaks}")
    failed |= leaks > 0
    print("RESULT:", "FAIL" if failed else "OK, zero client errors and no lost writes", flush=True)
    return 1 if failed else 0
