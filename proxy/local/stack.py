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

from proxy.local.mariadb import ThrowawayMariaDB, find_mariadb_binaries
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import ThrowawayError, free_port
from proxy.local.proxy_process import ProxyProcess
from proxy.local.secrets_manager import LocalSecretsManager, create_secret
from proxy.local.tls import TlsFiles, make_tls_files

DATABASE = "orders"
USER = "app"
ADMIN = "rotation_admin"  # the superuser alternating-users rotation works with
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
    admin_password: str
    # Where the session pool listens when it is a Unix socket (the demo's), else None.
    proxy_socket: Path | None = None

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
        """Through rotaproxy: no password at all (over the Unix socket where there is one: for
        PostgreSQL drivers its folder and port name the file, .s.PGSQL.<port>)."""
        if self.proxy_socket is not None and self.engine == "postgres":
            host = str(self.proxy_socket.parent)
            return {"host": host, "port": self.proxy_port, "user": USER, "database": DATABASE}
        if self.proxy_socket is not None:
            return {"unix_socket": str(self.proxy_socket), "user": USER, "database": DATABASE}
        return {"host": "127.0.0.1", "port": self.proxy_port, "user": USER, "database": DATABASE}

    @property
    def proxy_listen(self) -> str:
        """The session pool's listen, as the config has it."""
        return f"unix:{self.proxy_socket}" if self.proxy_socket else f"127.0.0.1:{self.proxy_port}"


@dataclass
class LocalStack:
    sm: LocalSecretsManager
    tls: TlsFiles
    log_path: Path
    pg: ThrowawayPostgres
    postgres: Upstream
    txn_proxy_port: int  # a second PostgreSQL pool, in transaction mode
    mariadb: ThrowawayMariaDB | None = None
    mysql: Upstream | None = None
    mysql_txn_proxy_port: int | None = None  # a second MySQL pool, in transaction mode
    proxy_pid: int | None = None  # the rotaproxy process, once started
    admin_port: int | None = None  # its admin API (/pools, /metrics)

    @property
    def upstreams(self) -> list[Upstream]:
        return [upstream for upstream in (self.postgres, self.mysql) if upstream is not None]


def _pool_toml(
    name: str,
    upstream: Upstream,
    tls: TlsFiles,
    max_server_connections: int,
    min_server_connections: int,
    poll_interval: str,
    *,
    port: int | None = None,
    mode: str = "session",
) -> str:
    listen = f"127.0.0.1:{port}" if port else upstream.proxy_listen
    # On a Unix socket, only this user's processes may connect (SO_PEERCRED).
    clients = f"\n[pool.clients]\nallow_uids = [{os.getuid()}]\n" if listen.startswith("unix:") else ""
    return f"""
[[pool]]
name = "{name}"
engine = "{upstream.engine}"
listen = "{listen}"
database = "{DATABASE}"
mode = "{mode}"
max_server_connections = {max_server_connections}
min_server_connections = {min_server_connections}
tls = "verify-full"
tls_ca_file = "{tls.ca_file}"

[pool.credentials]
source = "secretsmanager"
secret_id = "{upstream.secret_id}"
poll_interval = "{poll_interval}"
{clients}"""


def mariadb_available() -> bool:
    try:
        find_mariadb_binaries()
    except ThrowawayError:
        return False
    return True


async def _seed(
    client: Any, engine: str, server: ThrowawayPostgres | ThrowawayMariaDB, secret_id: str, proxy_port: int
) -> Upstream:
    """An app user and database, a superuser for alternating-users rotation, and the secrets
    (RDS layout; the app's names the master's ARN in ``masterarn``)."""
    password, admin_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    server.create_user(USER, password)
    server.create_database(DATABASE, owner=USER)
    if isinstance(server, ThrowawayPostgres):
        server.create_user(ADMIN, admin_password, superuser=True)
    else:
        server.create_user(ADMIN, admin_password)
        server.sql(f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN}'@'%' WITH GRANT OPTION")
    base = {
        "engine": "postgres" if engine == "postgres" else "mariadb",
        "host": "localhost",
        "port": server.port,
        "dbname": DATABASE,
    }
    await create_secret(
        client, f"{secret_id}/master", {**base, "username": ADMIN, "password": admin_password}
    )
    master_arn = (await client.describe_secret(SecretId=f"{secret_id}/master"))["ARN"]
    version = await create_secret(
        client, secret_id, {**base, "username": USER, "password": password, "masterarn": master_arn}
    )
    return Upstream(
        engine, "127.0.0.1", server.port, proxy_port, password, secret_id, version, admin_password
    )


@asynccontextmanager
async def local_stack(
    *,
    mysql: bool = True,
    max_server_connections: int = 10,
    min_server_connections: int = 1,
    poll_interval: str = "2s",
    sockets: bool = False,
) -> AsyncIterator[LocalStack]:
    """Start everything (rotaproxy as its own process), yield it, stop everything.

    MariaDB joins when ``mysql`` is asked for and its binaries are installed. With
    ``sockets``, the session pools listen on Unix sockets in the work folder, open to this
    user alone (the recommended listener); otherwise on loopback TCP.
    """
    import aioboto3

    with tempfile.TemporaryDirectory(prefix="rotaproxy-") as workdir, ExitStack() as servers:
        work = Path(workdir)
        tls = make_tls_files(work, "local")
        pg = servers.enter_context(ThrowawayPostgres(work, tls=tls))
        sm = servers.enter_context(LocalSecretsManager())
        os.environ.update(sm.environ())
        mariadb = None
        if mysql and mariadb_available():
            mariadb = servers.enter_context(ThrowawayMariaDB(work, tls=tls))
        async with aioboto3.Session().client("secretsmanager", **sm.client_kwargs()) as client:
            postgres = await _seed(client, "postgres", pg, PG_SECRET_ID, free_port())
            upstream_mysql = None
            if mariadb is not None:
                upstream_mysql = await _seed(client, "mysql", mariadb, MYSQL_SECRET_ID, free_port())
        if sockets:
            postgres.proxy_socket = work / f".s.PGSQL.{postgres.proxy_port}"  # (libpq's name)
            if upstream_mysql is not None:
                upstream_mysql.proxy_socket = work / "mysql.sock"
        stack = LocalStack(
            sm, tls, work / "rotaproxy.log", pg, postgres, free_port(), mariadb, upstream_mysql
        )
        stack.admin_port = free_port()
        config = f'[aws]\nendpoint_url = "{sm.endpoint_url}"\nregion = "{sm.region}"\n'
        config += f'\n[admin]\nlisten = "127.0.0.1:{stack.admin_port}"\n'
        for name, upstream in ((DATABASE, postgres), (f"{DATABASE}-mysql", upstream_mysql)):
            if upstream is not None:
                config += _pool_toml(
                    name, upstream, tls, max_server_connections, min_server_connections, poll_interval
                )
        config += _pool_toml(
            f"{DATABASE}-txn",
            postgres,
            tls,
            max_server_connections,
            min_server_connections,
            poll_interval,
            port=stack.txn_proxy_port,
            mode="transaction",
        )
        if upstream_mysql is not None:
            stack.mysql_txn_proxy_port = free_port()
            config += _pool_toml(
                f"{DATABASE}-mysql-txn",
                upstream_mysql,
                tls,
                max_server_connections,
                min_server_connections,
                poll_interval,
                port=stack.mysql_txn_proxy_port,
                mode="transaction",
            )
        config_path = work / "rotaproxy.toml"
        config_path.write_text(config)
        # A separate process, as in production: it gets its own core and its own loop.
        ports = [stack.txn_proxy_port]
        if upstream_mysql is not None and stack.mysql_txn_proxy_port is not None:
            ports.append(stack.mysql_txn_proxy_port)
        for upstream in stack.upstreams:
            if upstream.proxy_socket is None:
                ports.append(upstream.proxy_port)
        with ProxyProcess(
            config_path,
            stack.log_path,
            ports[0],
            extra_ports=ports[1:],
            sockets=[u.proxy_socket for u in stack.upstreams if u.proxy_socket is not None],
            env=sm.environ(),
            log_level="info",
        ) as proxy:
            assert proxy.process is not None
            stack.proxy_pid = proxy.process.pid
            yield stack
