"""Connection storm: thousands of clients connect at once to a pool of 20 server connections,
each runs one query and stays connected until all have: how long until every client has run
its query, how many failed, and the pooler's memory per client connection.

rotaproxy (transaction mode) and PgBouncer (transaction mode, same pool size) take the same
storm, interleaved. Direct connections are not a column: PostgreSQL's max_connections (100
here, as by default) refuses a storm of thousands, which is why poolers exist.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.bench.throughput import pgbouncer_for
from proxy.bench.timeline import half_range
from proxy.local.stack import DATABASE, USER, LocalStack

STORM_TIMEOUT = 120.0


@dataclass
class Storm:
    target: str
    clients: int
    seconds: list[float] = field(default_factory=list)  # until every client had run its query
    errors: list[int] = field(default_factory=list)
    rss_per_client_kib: list[float] = field(default_factory=list)
    first_error: str = ""

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def _storm(port: int, clients: int, pid: int, result: Storm) -> None:
    import asyncpg

    connected = asyncio.Event()
    done = 0
    errors: list[str] = []
    before = rss_kib(pid)

    async def client() -> None:
        nonlocal done
        try:
            connection = await asyncpg.connect(
                host="127.0.0.1", port=port, user=USER, database=DATABASE, timeout=120
            )
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        try:
            await connection.fetchval("SELECT 1")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            done += 1
            if done + len(errors) >= clients:
                connected.set()
            await connected.wait()  # everyone stays until all have run their query
            await connection.close()

    started = time.perf_counter()
    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    try:
        await asyncio.wait_for(connected.wait(), STORM_TIMEOUT)
    except TimeoutError:
        errors.append(f"{clients - done} clients had not run their query within {STORM_TIMEOUT:g}s")
    elapsed = time.perf_counter() - started
    peak = rss_kib(pid)
    connected.set()
    await asyncio.gather(*tasks)
    result.seconds.append(elapsed)
    result.errors.append(len(errors))
    result.rss_per_client_kib.append(max(0, peak - before) / clients)
    if errors and not result.first_error:
        result.first_error = errors[0]


async def connection_storm(
    stack: LocalStack, *, sizes: tuple[int, ...], rounds: int, pool_size: int
) -> tuple[list[Storm], str]:
    """Interleaved storms; returns the results and why PgBouncer is absent (or "")."""
    assert stack.proxy_pid is not None
    targets: dict[str, tuple[int, int]] = {"rotaproxy": (stack.txn_proxy_port, stack.proxy_pid)}
    results: list[Storm] = []
    async with pgbouncer_for(stack, pool_size, max_clients=max(sizes) + 100) as (bouncer, absent):
        if bouncer is not None:
            assert bouncer.pid is not None
            targets["pgbouncer"] = (bouncer.port, bouncer.pid)
        for size in sizes:
            series = {name: Storm(name, size) for name in targets}
            for _ in range(rounds):
                for name, (port, pid) in targets.items():
                    await _storm(port, size, pid, series[name])
                    await asyncio.sleep(1.0)  # let the closes settle before the next storm
            results += series.values()
    return results, absent


def storm_markdown(results: list[Storm], absent: str) -> str:
    lines = [
        "| clients at once | pooler | time until all ran a query (s) | errors "
        "| RSS per client connection (KiB) |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result.clients:,} | {result.target} | {result.median_seconds:.2f} ± "
            f"{half_range(result.seconds):.2f} | "
            f"{sum(result.errors)} | {statistics.median(result.rss_per_client_kib):.1f} |"
        )
    if absent:
        lines.append(f"| - | pgbouncer | absent: {absent} | | |")
    return "\n".join(lines)


def storm_json(results: list[Storm]) -> list[dict[str, Any]]:
    return [
        {
            "target": r.target,
            "clients": r.clients,
            "seconds": r.seconds,
            "median_seconds": r.median_seconds,
            "errors": r.errors,
            "rss_per_client_kib": r.rss_per_client_kib,
            "first_error": r.first_error,
        }
        for r in results
    ]
