"""``rotaproxy demo``: the whole story on one machine, no AWS account needed.

A throwaway PostgreSQL (TLS, SCRAM), a local Secrets Manager holding the database
credentials, rotaproxy in front, and concurrent clients connecting without a password.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from proxy.localstack import DATABASE, SECRET_ID, LocalStack, local_stack

MAX_SERVER_CONNECTIONS = 4


async def _client(stack: LocalStack, queries: int, connect_times: list[float]) -> int:
    import asyncpg

    started = time.perf_counter()
    # No password: rotaproxy logs in upstream with the secret's credentials.
    connection = await asyncpg.connect(**stack.proxy_dsn())
    connect_times.append(time.perf_counter() - started)
    try:
        for index in range(queries):
            async with connection.transaction():
                await connection.execute("INSERT INTO demo_events (note) VALUES ($1)", f"query {index}")
                await connection.fetchval("SELECT count(*) FROM demo_events")
        return queries
    finally:
        await connection.close()


async def run_demo(clients: int = 8, queries: int = 50) -> int:
    async with local_stack(max_server_connections=MAX_SERVER_CONNECTIONS) as stack:
        pg = stack.pg
        pg.sql("CREATE TABLE demo_events (id serial PRIMARY KEY, note text)", database=DATABASE)
        pg.sql("ALTER TABLE demo_events OWNER TO app", database=DATABASE)
        print(f"PostgreSQL {pg.host}:{pg.port}: TLS on, SCRAM, user 'app' with a random password")
        print(f"Secrets Manager {stack.sm.endpoint_url}: secret {SECRET_ID!r} version {stack.secret_version}")
        print(
            f"rotaproxy on 127.0.0.1:{stack.proxy_port}: {clients} clients connect with no password, "
            f"sharing at most {MAX_SERVER_CONNECTIONS} server connections"
        )
        connect_times: list[float] = []
        started = time.perf_counter()
        results = await asyncio.gather(
            *(_client(stack, queries, connect_times) for _ in range(clients)), return_exceptions=True
        )
        elapsed = time.perf_counter() - started
        errors = [result for result in results if isinstance(result, BaseException)]
        transactions = sum(result for result in results if isinstance(result, int))
        rows = int(pg.sql("SELECT count(*) FROM demo_events", database=DATABASE))
        sessions = pg.sql(
            "SELECT count(*) || ' sessions as ' || string_agg(DISTINCT usename, ',') || ', TLS ' || "
            "bool_and(ssl) FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) "
            f"WHERE datname = '{DATABASE}'"
        )
        print(
            f"{transactions} transactions in {elapsed:.2f}s ({transactions / elapsed:.0f}/s); "
            f"connect median {statistics.median(connect_times) * 1000:.1f} ms"
            if connect_times
            else ""
        )
        print(f"rows in the database: {rows} (expected {transactions}); upstream: {sessions}")
        leaks = stack.log_path.read_text(errors="replace").count(stack.password)
        print(f"client errors: {len(errors)}; times the password appears in rotaproxy's log: {leaks}")
        for error in errors[:5]:
            print(f"  {type(error).__name__}: {error}")
        return 0 if not errors and rows == transactions and not leaks else 1
