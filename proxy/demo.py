"""``rotaproxy demo``: the whole story on one machine, no AWS account needed.

A throwaway PostgreSQL (TLS, SCRAM) and, where installed, MariaDB (TLS), a local Secrets
Manager holding their credentials, rotaproxy in front, and concurrent clients that connect
without a password and write in transactions. Every claim printed at the end is computed
from what the clients and the databases saw.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from proxy.localstack import DATABASE, LocalStack, Upstream, local_stack

MAX_SERVER_CONNECTIONS = 4


@dataclass
class Tally:
    transactions: int = 0
    connect_ms: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


async def _postgres_client(upstream: Upstream, transactions: int, tally: Tally) -> None:
    import asyncpg

    started = time.perf_counter()
    connection = await asyncpg.connect(**upstream.proxy_dsn())  # no password
    tally.connect_ms.append((time.perf_counter() - started) * 1000)
    try:
        for index in range(transactions):
            async with connection.transaction():
                await connection.execute("INSERT INTO demo_events (note) VALUES ($1)", f"pg {index}")
                await connection.fetchval("SELECT count(*) FROM demo_events")
            tally.transactions += 1
    finally:
        await connection.close()


async def _mysql_client(upstream: Upstream, transactions: int, tally: Tally) -> None:
    import aiomysql

    dsn = upstream.proxy_dsn()
    started = time.perf_counter()
    connection = await aiomysql.connect(
        host=dsn["host"], port=dsn["port"], user=dsn["user"], db=dsn["database"]
    )
    tally.connect_ms.append((time.perf_counter() - started) * 1000)
    try:
        for index in range(transactions):
            await connection.begin()
            async with connection.cursor() as cursor:
                await cursor.execute("INSERT INTO demo_events (note) VALUES (%s)", (f"mysql {index}",))
                await cursor.execute("SELECT COUNT(*) FROM demo_events")
            await connection.commit()
            tally.transactions += 1
    finally:
        connection.close()


async def _guarded(client: Awaitable[None], tally: Tally) -> None:
    try:
        await client
    except Exception as exc:  # counted, shown, and the exit code says so
        tally.errors.append(exc)


def _prepare(stack: LocalStack) -> None:
    stack.pg.sql("CREATE TABLE demo_events (id serial PRIMARY KEY, note text)", database=DATABASE)
    stack.pg.sql("ALTER TABLE demo_events OWNER TO app", database=DATABASE)
    if stack.mariadb is not None:
        stack.mariadb.sql(
            "CREATE TABLE demo_events (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(100)) ENGINE=InnoDB",
            database=DATABASE,
        )


def _rows(stack: LocalStack, engine: str) -> int:
    if engine == "postgres":
        return int(stack.pg.sql("SELECT count(*) FROM demo_events", database=DATABASE))
    assert stack.mariadb is not None
    return int(stack.mariadb.sql("SELECT COUNT(*) FROM demo_events", database=DATABASE))


async def run_demo(clients: int = 8, queries: int = 50) -> int:
    async with local_stack(max_server_connections=MAX_SERVER_CONNECTIONS) as stack:
        _prepare(stack)
        upstreams = [u for u in (stack.postgres, stack.mysql) if u is not None]
        print(f"Secrets Manager (local) at {stack.sm.endpoint_url}")
        for upstream in upstreams:
            print(
                f"  {upstream.engine}: database on 127.0.0.1:{upstream.port} (TLS, random password), "
                f"secret {upstream.secret_id!r} version {upstream.secret_version}"
            )
            print(
                f"  rotaproxy on 127.0.0.1:{upstream.proxy_port}: {clients} clients, no password, "
                f"at most {MAX_SERVER_CONNECTIONS} server connections"
            )
        if stack.mysql is None:
            print("  (MariaDB is not installed here: PostgreSQL only)")
        tallies = {upstream.engine: Tally() for upstream in upstreams}
        runners = {"postgres": _postgres_client, "mysql": _mysql_client}
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _guarded(runners[u.engine](u, queries, tallies[u.engine]), tallies[u.engine])
                for u in upstreams
                for _ in range(clients)
            )
        )
        elapsed = time.perf_counter() - started
        log_text = stack.log_path.read_text(errors="replace")
        leaks = sum(log_text.count(password) for password in stack.passwords)
        failed = leaks > 0
        for upstream in upstreams:
            tally = tallies[upstream.engine]
            rows = _rows(stack, upstream.engine)
            median = statistics.median(tally.connect_ms) if tally.connect_ms else float("nan")
            print(
                f"{upstream.engine}: {tally.transactions} transactions in {elapsed:.2f}s "
                f"({tally.transactions / elapsed:.0f}/s), connect median {median:.1f} ms; "
                f"rows in the database: {rows} (expected {tally.transactions}); "
                f"client errors: {len(tally.errors)}"
            )
            for error in tally.errors[:3]:
                print(f"  {type(error).__name__}: {error}")
            failed |= bool(tally.errors) or rows != tally.transactions
        print(f"times a password appears in rotaproxy's log: {leaks}")
        print("RESULT:", "FAIL" if failed else "OK, zero client errors")
        return 1 if failed else 0
