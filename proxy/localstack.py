"""The local stack that demo and bench run on: throwaway PostgreSQL (TLS, SCRAM), a local
Secrets Manager holding the credentials, and rotaproxy in front, all in one context."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.throwaway import (
    LocalSecretsManager,
    ProxyProcess,
    ThrowawayPostgres,
    TlsFiles,
    create_secret,
    free_port,
    make_tls_files,
)

SECRET_ID = "local/orders/postgres"
DATABASE = "orders"
USER = "app"


@dataclass
class LocalStack:
    pg: ThrowawayPostgres
    sm: LocalSecretsManager
    tls: TlsFiles
    proxy_port: int
    secret_version: str
    password: str
    log_path: Path

    def direct_dsn(self) -> dict[str, Any]:
        """How an application would connect without rotaproxy: with the password."""
        return {
            "host": "127.0.0.1",
            "port": self.pg.port,
            "user": USER,
            "password": self.password,
            "database": DATABASE,
        }

    def proxy_dsn(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.proxy_port, "user": USER, "database": DATABASE}


def stack_config_toml(stack: LocalStack, *, max_server_connections: int, min_server_connections: int) -> str:
    return f"""
[aws]
endpoint_url = "{stack.sm.endpoint_url}"
region = "{stack.sm.region}"

[[pool]]
name = "{DATABASE}"
engine = "postgres"
listen = "127.0.0.1:{stack.proxy_port}"
mode = "session"
max_server_connections = {max_server_connections}
min_server_connections = {min_server_connections}
tls = "verify-full"
tls_ca_file = "{stack.tls.ca_file}"

[pool.credentials]
source = "secretsmanager"
secret_id = "{SECRET_ID}"
"""


@asynccontextmanager
async def local_stack(
    *, max_server_connections: int = 10, min_server_connections: int = 1
) -> AsyncIterator[LocalStack]:
    """Start everything (rotaproxy as its own process), yield it, stop everything."""
    import aioboto3

    with tempfile.TemporaryDirectory(prefix="rotaproxy-") as workdir:
        work = Path(workdir)
        tls = make_tls_files(work, "local")
        password = secrets.token_urlsafe(24)
        with ThrowawayPostgres(work, tls=tls) as pg, LocalSecretsManager() as sm:
            pg.create_user(USER, password)
            pg.create_database(DATABASE, owner=USER)
            os.environ.update(sm.environ())
            async with aioboto3.Session().client("secretsmanager", **sm.client_kwargs()) as client:
                version = await create_secret(
                    client,
                    SECRET_ID,
                    {
                        "engine": "postgres",
                        "host": "localhost",
                        "port": pg.port,
                        "username": USER,
                        "password": password,
                        "dbname": DATABASE,
                    },
                )
            stack = LocalStack(pg, sm, tls, free_port(), version, password, work / "rotaproxy.log")
            config_path = work / "rotaproxy.toml"
            config_path.write_text(
                stack_config_toml(
                    stack,
                    max_server_connections=max_server_connections,
                    min_server_connections=min_server_connections,
                )
            )
            # A separate process, as in production: it gets its own core and its own loop.
            with ProxyProcess(
                config_path, stack.log_path, stack.proxy_port, env=sm.environ(), log_level="info"
            ):
                yield stack
