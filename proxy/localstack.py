"""The local stack that demo and bench run on: throwaway PostgreSQL (TLS, SCRAM) and, where
installed, MariaDB (TLS, native password), a local Secrets Manager holding their credentials,
and rotaproxy in front as its own process, all in one context."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.throwaway import (
    LocalSecretsManager,
    ProxyProcess,
    ThrowawayError,
    ThrowawayMariaDB,
    ThrowawayPostgres,
    TlsFiles,
    create_secret,
    find_mariadb_binaries,
    free_port,
    make_tls_files,
)

DATABASE = "orders"
USER = "app"
PG_SECRET_ID = "local/orders/postgres"
MYSQL_SECRET_ID = "local/orders/mariadb"


@dataclass
class Upstream:
    """One database behind the proxy, and how applications reach it with and without it."""

    engine: str
    host: str
    port: int
    proxy_port: int
    password: str
    secret_id: str
    secret_version: str

    def direct_dsn(self) -> dict[str, Any]:
        """How an application would connect without rotaproxy: with the password."""
        return {
            "host": self.host,
            "port": self.port,
            "user": USER,
            "password": self.password,
            "database": DATABASE,
        }

    def proxy_dsn(self) -> dict[str, Any]:
        """Through rotaproxy: no password at all."""
        return {"host": "127.0.0.1", "port": self.proxy_port, "user": USER, "database": DATABASE}


@dataclass
class LocalStack:
    sm: LocalSecretsManager
    tls: TlsFiles
    log_path: Path
    pg: ThrowawayPostgres
    postgres: Upstream
    mariadb: ThrowawayMariaDB | None = None
    mysql: Upstream | None = None

    @property
    def passwords(self) -> list[str]:
        return [upstream.password for upstream in (self.postgres, self.mysql) if upstream is not None]


def _pool_toml(
    name: str, upstream: Upstream, tls: TlsFiles, max_server_connections: int, min_server_connections: int
) -> str:
    return f"""
[[pool]]
name = "{name}"
engine = "{upstream.engine}"
listen = "127.0.0.1:{upstream.proxy_port}"
database = "{DATABASE}"
mode = "session"
max_server_connections = {max_server_connections}
min_server_connections = {min_server_connections}
tls = "verify-full"
tls_ca_file = "{tls.ca_file}"

[pool.credentials]
source = "secretsmanager"
secret_id = "{upstream.secret_id}"
"""


def mariadb_available() -> bool:
    try:
        find_mariadb_binaries()
    except ThrowawayError:
        return False
    return True


@asynccontextmanager
async def local_stack(
    *, mysql: bool = True, max_server_connections: int = 10, min_server_connections: int = 1
) -> AsyncIterator[LocalStack]:
    """Start everything (rotaproxy as its own process), yield it, stop everything.

    MariaDB joins when ``mysql`` is asked for and its binaries are installed.
    """
    import aioboto3

    with tempfile.TemporaryDirectory(prefix="rotaproxy-") as workdir, ExitStack() as servers:
        work = Path(workdir)
        tls = make_tls_files(work, "local")
        pg = servers.enter_context(ThrowawayPostgres(work, tls=tls))
        sm = servers.enter_context(LocalSecretsManager())
        os.environ.update(sm.environ())
        pg_password = secrets.token_urlsafe(24)
        pg.create_user(USER, pg_password)
        pg.create_database(DATABASE, owner=USER)
        mariadb = None
        if mysql and mariadb_available():
            mariadb = servers.enter_context(ThrowawayMariaDB(work, tls=tls))
        async with aioboto3.Session().client("secretsmanager", **sm.client_kwargs()) as client:
            pg_version = await create_secret(
                client,
                PG_SECRET_ID,
                {
                    "engine": "postgres",
                    "host": "localhost",
                    "port": pg.port,
                    "username": USER,
                    "password": pg_password,
                    "dbname": DATABASE,
                },
            )
            postgres = Upstream(
                "postgres", "127.0.0.1", pg.port, free_port(), pg_password, PG_SECRET_ID, pg_version
            )
            upstream_mysql = None
            if mariadb is not None:
                my_password = secrets.token_urlsafe(24)
                mariadb.create_user(USER, my_password)
                mariadb.create_database(DATABASE, owner=USER)
                my_version = await create_secret(
                    client,
                    MYSQL_SECRET_ID,
                    {
                        "engine": "mariadb",
                        "host": "localhost",
                        "port": mariadb.port,
                        "username": USER,
                        "password": my_password,
                        "dbname": DATABASE,
                    },
                )
                upstream_mysql = Upstream(
                    "mysql", "127.0.0.1", mariadb.port, free_port(), my_password, MYSQL_SECRET_ID, my_version
                )
        stack = LocalStack(sm, tls, work / "rotaproxy.log", pg, postgres, mariadb, upstream_mysql)
        config = f'[aws]\nendpoint_url = "{sm.endpoint_url}"\nregion = "{sm.region}"\n'
        config += _pool_toml(DATABASE, postgres, tls, max_server_connections, min_server_connections)
        if upstream_mysql is not None:
            config += _pool_toml(
                f"{DATABASE}-mysql", upstream_mysql, tls, max_server_connections, min_server_connections
            )
        config_path = work / "rotaproxy.toml"
        config_path.write_text(config)
        # A separate process, as in production: it gets its own core and its own loop.
        extra = (upstream_mysql.proxy_port,) if upstream_mysql is not None else ()
        with ProxyProcess(
            config_path,
            stack.log_path,
            postgres.proxy_port,
            extra_ports=extra,
            env=sm.environ(),
            log_level="info",
        ):
            yield stack
