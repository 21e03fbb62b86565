"""``rotaproxy demo``: the whole story on one machine, no AWS account needed.

A throwaway PostgreSQL (TLS, SCRAM), a local Secrets Manager holding the database
credentials, rotaproxy in front, and concurrent clients connecting without a password.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from proxy.config import Config, parse_config
from proxy.throwaway import (
    LocalSecretsManager,
    ThrowawayPostgres,
    create_secret,
    free_port,
    make_tls_files,
)

SECRET_ID = "demo/orders/postgres"


def demo_config(pg: ThrowawayPostgres, sm: LocalSecretsManager, ca_file: Path, port: int) -> Config:
    return parse_config(
        {
            "aws": {"endpoint_url": sm.endpoint_url, "region": sm.region},
            "pool": [
                {
                    "name": "orders",
                    "engine": "postgres",
                    "listen": f"127.0.0.1:{port}",
                    "mode": "session",
                    "max_server_connections": 4,
                    "min_server_connections": 1,
                    "tls": "verify-full",
                    "tls_ca_file": str(ca_file),
                    "credentials": {"source": "secretsmanager", "secret_id": SECRET_ID},
                }
            ],
        },
        "<demo>",
    )


async def _client(port: int, queries: int, latencies: list[float]) -> tuple[int, int]:
    import asyncpg

    started = time.perf_counter()
    # No password: the proxy logs in upstream with the secret's credentials.
    connection = await asyncpg.connect(host="127.0.0.1", port=port, user="app", database="orders")
    latencies.append(time.perf_counter() - started)
    try:
        pid = 0
        for index in range(queries):
            pid = await connection.fetchval("SELECT pg_backend_pid()")
            await connection.execute("INSERT INTO demo_events (note) VALUES ($1)", f"query {index}")
        return pid, queries
    finally:
        await connection.close()


async def run_demo(clients: int = 8, queries: int = 50) -> int:
    from proxy.app import Proxy

    with tempfile.TemporaryDirectory(prefix="rotaproxy-demo-") as workdir:
        work = Path(workdir)
        tls = make_tls_files(work, "demo")
        password = secrets.token_urlsafe(24)
        with ThrowawayPostgres(work, tls=tls) as pg, LocalSecretsManager() as sm:
            pg.create_user("app", password)
            pg.create_database("orders", owner="app")
            pg.sql("CREATE TABLE demo_events (id serial PRIMARY KEY, note text)", database="orders")
            pg.sql("ALTER TABLE demo_events OWNER TO app", database="orders")
            os.environ.update(sm.environ())
            import aioboto3

            async with aioboto3.Session().client("secretsmanager", **sm.client_kwargs()) as client:
                version = await create_secret(
                    client,
                    SECRET_ID,
                    {
                        "engine": "postgres",
                        "host": "localhost",
                        "port": pg.port,
                        "username": "app",
                        "password": password,
                        "dbname": "orders",
                    },
                )
            print(f"PostgreSQL {pg.host}:{pg.port} (TLS, SCRAM), user 'app' with a random password")
            print(f"Secrets Manager {sm.endpoint_url}: secret {SECRET_ID!r} version {version}")
            port = free_port()
            proxy = Proxy(demo_config(pg, sm, tls.ca_file, port))
            await proxy.start()
            try:
                print(f"rotaproxy listening on 127.0.0.1:{port}: clients connect with no password")
                latencies: list[float] = []
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(_client(port, queries, latencies) for _ in range(clients)),
                    return_exceptions=True,
                )
                elapsed = time.perf_counter() - started
                errors = [r for r in results if isinstance(r, BaseException)]
                done = sum(r[1] for r in results if isinstance(r, tuple))
                rows = pg.sql("SELECT count(*) FROM demo_events", database="orders")
                who = pg.sql(
                    "SELECT string_agg(DISTINCT usename || ' ssl=' || ssl, ', ') FROM pg_stat_activity "
                    "JOIN pg_stat_ssl USING (pid) WHERE datname = 'orders'"
                )
                _report(
                    clients,
                    done,
                    elapsed,
                    latencies,
                    errors,
                    rows,
                    who,
                    proxy.pools["orders"].stats(),
                )
            finally:
                await proxy.close()
            return 1 if errors else 0


def _report(
    clients: int,
    queries: int,
    elapsed: float,
    latencies: list[float],
    errors: list[BaseException],
    rows: str,
    who: str,
    stats: dict[str, Any],
) -> None:
    print(
        f"{clients} clients ran {queries} query pairs in {elapsed:.2f}s "
        f"({2 * queries / elapsed:.0f} statements/s)"
    )
    if latencies:
        print(f"connect through rotaproxy: median {statistics.median(latencies) * 1000:.1f} ms")
    print(f"rows written: {rows}; upstream sessions seen by PostgreSQL: {who}")
    print(
        f"pool 'orders': opened {stats['opened_total']} server connections for {clients} clients "
        f"(max 4), failures {stats['failed_total']}"
    )
    print(f"client errors: {len(errors)}")
    for error in errors[:5]:
        print(f"  {type(error).__name__}: {error}")
