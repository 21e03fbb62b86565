"""``rotaproxy demo``: the whole story on one machine, no AWS account needed.

A throwaway PostgreSQL (TLS, SCRAM) and, where installed, MariaDB (TLS), a local Secrets
Manager holding their credentials, rotaproxy in front, and concurrent clients that connect
without a password and write rows in transactions while the secrets are rotated with
rotaproxy's own rotation function, both strategies. Every claim printed at the end is
computed from what the clients, the databases and the proxy's log saw.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.localstack import DATABASE, LocalStack, Upstream, local_stack
from proxy.rotation import RotationSettings, Rotator, Strategy

MAX_SERVER_CONNECTIONS = 6
TRANSACTIONS_PER_SESSION = 5  # clients reconnect now and then, as real ones do
DRAIN_LINE = re.compile(
    r'pool "([^"]+)": rotation complete: the last old-generation connection closed ([\d.]+)s'
)


@dataclass
class Tally:
    """What one engine's clients saw."""

    acknowledged: set[tuple[int, int]] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


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
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
            tally.acknowledged.add((worker, seqs[worker]))
    finally:
        await connection.close()


async def _mysql_session(upstream: Upstream, worker: int, seqs: list[int], tally: Tally) -> None:
    import aiomysql

    dsn = upstream.proxy_dsn()
    connection = await aiomysql.connect(
        host=dsn["host"], port=dsn["port"], user=dsn["user"], db=dsn["database"]
    )
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
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
            tally.acknowledged.add((worker, seqs[worker]))
    finally:
        connection.close()


SESSIONS = {"postgres": _postgres_session, "mysql": _mysql_session}


async def _clients(upstream: Upstream, clients: int, tally: Tally, stop: asyncio.Event) -> None:
    seqs = [0] * clients
    session = SESSIONS[upstream.engine]

    async def worker(index: int) -> None:
        while not stop.is_set():
            try:
                await session(upstream, index, seqs, tally)
            except Exception as exc:  # counted and shown; the exit code says so
                tally.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)

    await asyncio.gather(*(worker(index) for index in range(clients)))


def _prepare(stack: LocalStack) -> None:
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


async def _rotations(stack: LocalStack, count: int, interval: float, client: Any) -> list[str]:
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
            print(line, flush=True)
            events.append(line)
    return events


async def _all_passwords(client: Any, upstream: Upstream) -> list[str]:
    described = await client.describe_secret(SecretId=upstream.secret_id)
    values = [upstream.admin_password]
    for version_id in described.get("VersionIdsToStages", {}):
        value = await client.get_secret_value(SecretId=upstream.secret_id, VersionId=version_id)
        values.append(json.loads(value["SecretString"])["password"])
    return values


async def run_demo(clients: int = 10, duration: float = 20.0, rotations: int = 4) -> int:
    import aioboto3

    async with local_stack(max_server_connections=MAX_SERVER_CONNECTIONS, poll_interval="1s") as stack:
        _prepare(stack)
        print(f"Secrets Manager (local) at {stack.sm.endpoint_url}")
        for upstream in stack.upstreams:
            print(
                f"  {upstream.engine}: database on 127.0.0.1:{upstream.port} (TLS, random password), "
                f"secret {upstream.secret_id!r}; rotaproxy on 127.0.0.1:{upstream.proxy_port}"
            )
        if stack.mysql is None:
            print("  (MariaDB is not installed here: PostgreSQL only)")
        print(
            f"{clients} clients per database write rows in transactions, no password, through at most "
            f"{MAX_SERVER_CONNECTIONS} server connections each; {rotations} rotations in {duration:g}s"
        )
        tallies = {upstream.engine: Tally() for upstream in stack.upstreams}
        stop = asyncio.Event()
        async with aioboto3.Session().client("secretsmanager", **stack.sm.client_kwargs()) as sm_client:
            load = asyncio.gather(*(_clients(u, clients, tallies[u.engine], stop) for u in stack.upstreams))
            started = time.perf_counter()
            try:
                await _rotations(stack, rotations, duration / (rotations + 1), sm_client)
                await asyncio.sleep(max(0.0, duration - (time.perf_counter() - started)))
            finally:
                stop.set()
                await load
            elapsed = time.perf_counter() - started
            passwords = [p for u in stack.upstreams for p in await _all_passwords(sm_client, u)]
        await asyncio.sleep(1.5)  # let the last rotation's drain reach the log
        log_text = stack.log_path.read_text(errors="replace")
        return _summary(stack, tallies, elapsed, log_text, passwords)


def _summary(
    stack: LocalStack, tallies: dict[str, Tally], elapsed: float, log_text: str, passwords: list[str]
) -> int:
    failed = False
    print("\n--- summary ---")
    for upstream in stack.upstreams:
        tally = tallies[upstream.engine]
        missing = tally.acknowledged - _stored(stack, upstream.engine)
        p50 = statistics.median(tally.latencies_ms) if tally.latencies_ms else float("nan")
        p99 = statistics.quantiles(tally.latencies_ms, n=100)[98] if len(tally.latencies_ms) > 1 else p50
        print(
            f"{upstream.engine}: {len(tally.acknowledged)} transactions in {elapsed:.1f}s "
            f"({len(tally.acknowledged) / elapsed:.0f}/s), p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
            f"acknowledged rows missing from the database: {len(missing)}; client errors: {len(tally.errors)}"
        )
        for error in tally.errors[:3]:
            print(f"  {error}")
        failed |= bool(tally.errors) or bool(missing) or not tally.acknowledged
    drains = DRAIN_LINE.findall(log_text)
    for pool, seconds in drains:
        print(f"pool {pool!r}: old-generation connections all closed {seconds}s after switching versions")
    leaks = sum(log_text.count(password) for password in passwords)
    print(f"times a password appears in rotaproxy's log: {leaks}")
    failed |= leaks > 0
    print("RESULT:", "FAIL" if failed else "OK, zero client errors and no lost writes")
    return 1 if failed else 0
