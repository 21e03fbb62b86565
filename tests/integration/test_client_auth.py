"""Who may connect: client authentication and client-side TLS, with real clients against a real
rotaproxy listening on the machine's non-loopback address.

psql, psycopg (direct TLS) and asyncpg log in to PostgreSQL pools with SCRAM-SHA-256 or a
client certificate; the mariadb CLI and PyMySQL to MySQL pools with caching_sha2_password or
mysql_native_password, all over verified TLS. The client secret is rotated under them: the
old password is refused, the new one accepted, sessions already in are untouched. A
non-loopback listener without client authentication is refused at start and on reload.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pymysql
import pytest
import trustme

from protocols.postgres.server_auth import ScramVerifier
from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port, port_open
from proxy.local.proxy_process import ProxyProcess
from proxy.local.secrets_manager import put_secret_json
from tests.conftest import (
    MySqlUsers,
    ProxyLauncher,
    Secrets,
    Users,
    get_json,
    new_secret,
    rds_mysql_secret,
    rds_secret,
    scrape,
    wait_for,
)

POLL = "1s"  # the client secret's poll_interval: a rotation takes effect within about a second


def host_address() -> str:
    """The machine's own non-loopback IPv4 address (where a route to the outside leaves)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 9))  # (no packet is sent: UDP connect only picks a route)
            address: str = probe.getsockname()[0]
    except OSError:
        address = socket.gethostbyname(socket.gethostname())
    # (a test of listening beyond loopback needs such an address: fail, never skip, without one)
    assert not address.startswith("127."), "this machine has no non-loopback IPv4 address"
    return address


@dataclass(frozen=True)
class Pki:
    """The proxy's client-facing certificate, and client certificates of two CAs."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    alice_cert: Path
    alice_key: Path
    stranger_cert: Path  # "alice" too, but signed by another CA
    stranger_key: Path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def pki(workdir: Path) -> Pki:
    directory = workdir / "client-auth-pki"
    directory.mkdir(exist_ok=True)
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", host_address())
    alice = ca.issue_cert("alice", common_name="alice")
    stranger = other_ca.issue_cert("alice", common_name="alice")
    return Pki(
        ca_file=_write(directory / "ca.pem", ca.cert_pem.bytes()),
        cert_file=_write(directory / "proxy.crt", b"".join(b.bytes() for b in server.cert_chain_pems)),
        key_file=_write(directory / "proxy.key", server.private_key_pem.bytes()),
        alice_cert=_write(directory / "alice.crt", b"".join(b.bytes() for b in alice.cert_chain_pems)),
        alice_key=_write(directory / "alice.key", alice.private_key_pem.bytes()),
        stranger_cert=_write(
            directory / "stranger.crt", b"".join(b.bytes() for b in stranger.cert_chain_pems)
        ),
        stranger_key=_write(directory / "stranger.key", stranger.private_key_pem.bytes()),
    )


def clients_toml(pki: Pki, auth: str, secret_id: str | None = None, **extra: str) -> str:
    lines = [
        "[pool.clients]",
        f'auth = "{auth}"',
        f'tls_cert_file = "{pki.cert_file}"',
        f'tls_key_file = "{pki.key_file}"',
    ]
    if secret_id:
        lines += [f'secret_id = "{secret_id}"', f'poll_interval = "{POLL}"']
    if auth == "cert":
        lines.append(f'tls_ca_file = "{pki.ca_file}"')
    lines += [f'{key} = "{value}"' for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def pool_block(name: str, engine: str, listen: str, upstream: str, secret_id: str, clients: str) -> str:
    return (
        f'[[pool]]\nname = "{name}"\nengine = "{engine}"\nlisten = "{listen}"\nupstream = "{upstream}"\n'
        f'database = "appdb"\ntls = "disable"\n'
        f'[pool.credentials]\nsecret_id = "{secret_id}"\n' + clients
    )


def start_on(
    launcher: ProxyLauncher, config: str, host: str, ports: list[int], admin_port: int | None = None
) -> ProxyProcess:
    """Start rotaproxy and wait until ``host`` accepts on every port (the launcher looks at
    127.0.0.1 only)."""
    running = launcher.start(config, port=ports[0], wait=False, admin_port=admin_port)
    deadline = time.monotonic() + 20
    for port in ports:
        while not port_open(host, port):
            assert running.process is not None
            assert running.process.poll() is None, running.logs()
            assert time.monotonic() < deadline, running.logs()
            time.sleep(0.05)
    return running


@dataclass
class Passwords:
    """Client passwords by user; values only ever travel to the proxy."""

    values: dict[str, str]

    def __repr__(self) -> str:
        return "Passwords(***)"


# --- PostgreSQL ---------------------------------------------------------------------------------


@dataclass
class PgAuthProxy:
    running: ProxyProcess
    host: str
    port: int  # password auth, TLS required
    cert_port: int  # certificate auth
    client_secret: str
    passwords: Passwords
    admin_port: int

    def conninfo(self, user: str, port: int | None = None, **extra: str) -> str:
        options = {
            "host": self.host,
            "port": str(port or self.port),
            "dbname": "appdb",
            "user": user,
            "connect_timeout": "10",
            **extra,
        }
        return " ".join(f"{key}={value}" for key, value in options.items())


@pytest.fixture(scope="module")
async def pg_auth(
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    users: Users,
    sm_client: Any,
    known_secrets: Secrets,
    pki: Pki,
) -> PgAuthProxy:
    host = host_address()
    passwords = Passwords({"alice": known_secrets.new_password(), "bob": known_secrets.new_password()})
    client_secret = await new_secret(
        sm_client,
        {
            "alice": passwords.values["alice"],
            # bob is known by a SCRAM verifier only: the secret holds no password of his.
            "bob": ScramVerifier.from_password(passwords.values["bob"]).encode(),
        },
        prefix="clients",
    )
    known_secrets.values.add(ScramVerifier.from_password(passwords.values["bob"]).encode())
    upstream_secret = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    port, cert_port = free_port(), free_port()
    upstream = f"127.0.0.1:{pg.port}"
    config = "\n".join(
        [
            pool_block(
                "appdb",
                "postgres",
                f"{host}:{port}",
                upstream,
                upstream_secret,
                clients_toml(pki, "password", client_secret),
            ),
            pool_block(
                "certdb",
                "postgres",
                f"{host}:{cert_port}",
                upstream,
                upstream_secret,
                clients_toml(pki, "cert"),
            ),
        ]
    )
    admin_port = free_port()
    running = start_on(launcher, config, host, [port, cert_port], admin_port)
    return PgAuthProxy(running, host, port, cert_port, client_secret, passwords, admin_port)


def psql(
    conninfo: str, password: str | None, sql: str = "SELECT current_user"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(
        ["psql", conninfo, "--no-psqlrc", "-At", "-c", sql],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_psql_verify_full_with_a_password_over_the_network(pg_auth: PgAuthProxy, pki: Pki) -> None:
    info = pg_auth.conninfo("alice", sslmode="verify-full", sslrootcert=str(pki.ca_file))
    result = psql(info, pg_auth.passwords.values["alice"], "SELECT current_user; SHOW ssl")

    assert result.returncode == 0, result.stderr
    # Upstream as the secret's user; the client's own connection was TLS, verified by name.
    assert result.stdout.splitlines()[0] == "app"


def test_a_wrong_password_is_refused_with_28p01_naming_the_user(pg_auth: PgAuthProxy, pki: Pki) -> None:
    wrong = "not-" + pg_auth.passwords.values["alice"]
    result = psql(pg_auth.conninfo("alice", sslmode="verify-full", sslrootcert=str(pki.ca_file)), wrong)

    assert result.returncode != 0
    assert 'password authentication failed for user "alice"' in result.stderr
    assert wrong not in result.stderr and pg_auth.passwords.values["alice"] not in result.stderr
    # An unknown user is told exactly the same.
    result = psql(pg_auth.conninfo("mallory", sslmode="require"), wrong)
    assert 'password authentication failed for user "mallory"' in result.stderr
    # Both counted where an operator looks (psql tries without TLS too when not required to
    # use it, and is refused there as well: at least the two).
    assert refusals(pg_auth.admin_port, "client_auth_failed") >= 2


def refusals(admin_port: int, reason: str) -> float:
    """rotaproxy_listener_connections_rejected_total for ``reason``, over every listener."""
    _, samples = scrape(admin_port)
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "rotaproxy_listener_connections_rejected_total" and ("reason", reason) in labels
    )


async def test_asyncpg_sees_28p01_and_a_user_known_by_verifier_logs_in(
    pg_auth: PgAuthProxy, pki: Pki
) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    with pytest.raises(asyncpg.InvalidPasswordError) as refused:
        await asyncpg.connect(
            host=pg_auth.host,
            port=pg_auth.port,
            user="bob",
            password="wrong-password",
            database="appdb",
            ssl=context,
            timeout=10,
        )
    assert refused.value.sqlstate == "28P01"
    conn = await asyncpg.connect(
        host=pg_auth.host,
        port=pg_auth.port,
        user="bob",
        password=pg_auth.passwords.values["bob"],
        database="appdb",
        ssl=context,
        timeout=10,
    )
    try:
        assert await conn.fetchval("SELECT current_user") == "app"
    finally:
        await conn.close()


def test_plaintext_is_refused_where_tls_is_required(pg_auth: PgAuthProxy) -> None:
    before = refusals(pg_auth.admin_port, "tls_required")
    result = psql(pg_auth.conninfo("alice", sslmode="disable"), pg_auth.passwords.values["alice"])

    assert result.returncode != 0
    assert "requires TLS" in result.stderr
    assert refusals(pg_auth.admin_port, "tls_required") == before + 1


def test_direct_tls_with_alpn_postgresql(pg_auth: PgAuthProxy, pki: Pki) -> None:
    # psycopg[binary] brings its own libpq; sslnegotiation=direct needs 17 or later.
    assert psycopg.pq.version() >= 170000, f"libpq {psycopg.pq.version()} has no sslnegotiation=direct"
    info = pg_auth.conninfo(
        "alice", sslmode="verify-full", sslrootcert=str(pki.ca_file), sslnegotiation="direct"
    )
    with psycopg.connect(info, password=pg_auth.passwords.values["alice"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use


async def test_the_client_secret_rotates_for_new_logins_only(
    pg_auth: PgAuthProxy, pki: Pki, sm_client: Any, known_secrets: Secrets
) -> None:
    info = pg_auth.conninfo("alice", sslmode="verify-full", sslrootcert=str(pki.ca_file))
    old = pg_auth.passwords.values["alice"]
    session = psycopg.connect(info, password=old, autocommit=True)
    try:
        new = known_secrets.new_password()
        await put_secret_json(
            sm_client,
            pg_auth.client_secret,
            {"alice": new, "bob": ScramVerifier.from_password(pg_auth.passwords.values["bob"]).encode()},
        )
        pg_auth.passwords.values["alice"] = new

        wait_for(lambda: psql(info, old).returncode != 0, 10, "the old password refused")
        assert psql(info, new).stdout.strip() == "app"
        # The session that logged in with the old password carries on.
        assert session.execute("SELECT current_user").fetchone() == ("app",)
    finally:
        session.close()
    assert "client secret" in pg_auth.running.logs() and old not in pg_auth.running.logs()


def test_a_client_certificate_of_the_ca_is_accepted(pg_auth: PgAuthProxy, pki: Pki) -> None:
    info = pg_auth.conninfo(
        "alice",
        port=pg_auth.cert_port,
        sslmode="verify-full",
        sslrootcert=str(pki.ca_file),
        sslcert=str(pki.alice_cert),
        sslkey=str(pki.alice_key),
    )
    result = psql(info, None)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"


def test_no_certificate_or_another_name_or_another_ca_is_refused(pg_auth: PgAuthProxy, pki: Pki) -> None:
    base = {"port": pg_auth.cert_port, "sslmode": "verify-full", "sslrootcert": str(pki.ca_file)}
    without = psql(pg_auth.conninfo("alice", **base), None)  # type: ignore[arg-type]
    assert without.returncode != 0
    assert "connection requires a valid client certificate" in without.stderr

    as_bob = psql(
        pg_auth.conninfo("bob", sslcert=str(pki.alice_cert), sslkey=str(pki.alice_key), **base),  # type: ignore[arg-type]
        None,
    )
    assert 'certificate authentication failed for user "bob"' in as_bob.stderr

    stranger = psql(
        pg_auth.conninfo("alice", sslcert=str(pki.stranger_cert), sslkey=str(pki.stranger_key), **base),  # type: ignore[arg-type]
        None,
    )
    # TLS 1.3 checks the client's certificate after the client thinks the handshake is over:
    # it sees the connection closed; the proxy says why.
    assert stranger.returncode != 0 and "app" not in stranger.stdout
    wait_for(lambda: "certificate verify failed" in pg_auth.running.logs(), 5, "the handshake failure logged")


# --- MySQL ----------------------------------------------------------------------------------------


@dataclass
class MyAuthProxy:
    running: ProxyProcess
    host: str
    port: int  # caching_sha2_password (the default), TLS required
    native_port: int  # mysql_native_password greeting, TLS required
    client_secret: str
    passwords: Passwords
    admin_port: int
    cert_port: int  # certificate auth


@pytest.fixture(scope="module")
async def my_auth(
    launcher: ProxyLauncher,
    mariadb: ThrowawayMariaDB,
    mysql_users: MySqlUsers,
    sm_client: Any,
    known_secrets: Secrets,
    pki: Pki,
) -> MyAuthProxy:
    host = host_address()
    passwords = Passwords({"alice": known_secrets.new_password(), "bob": known_secrets.new_password()})
    verifier = ScramVerifier.from_password(passwords.values["bob"]).encode()
    known_secrets.values.add(verifier)
    client_secret = await new_secret(
        sm_client, {"alice": passwords.values["alice"], "bob": verifier}, prefix="clients"
    )
    upstream_secret = await new_secret(sm_client, rds_mysql_secret(mariadb, "app", mysql_users.app))
    port, native_port, cert_port = free_port(), free_port(), free_port()
    upstream = f"127.0.0.1:{mariadb.port}"
    config = "\n".join(
        [
            pool_block(
                "appdb",
                "mysql",
                f"{host}:{port}",
                upstream,
                upstream_secret,
                clients_toml(pki, "password", client_secret),
            ),
            pool_block(
                "native",
                "mysql",
                f"{host}:{native_port}",
                upstream,
                upstream_secret,
                clients_toml(pki, "password", client_secret, mysql_auth_plugin="mysql_native_password"),
            ),
            pool_block(
                "certs", "mysql", f"{host}:{cert_port}", upstream, upstream_secret, clients_toml(pki, "cert")
            ),
        ]
    )
    admin_port = free_port()
    running = start_on(launcher, config, host, [port, native_port, cert_port], admin_port)
    return MyAuthProxy(running, host, port, native_port, client_secret, passwords, admin_port, cert_port)


def mariadb_cli(
    proxy: MyAuthProxy, pki: Pki, user: str, password: str, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL")}
    env["MYSQL_PWD"] = password
    return subprocess.run(
        [
            "mariadb",
            "-h",
            proxy.host,
            "-P",
            str(port or proxy.port),
            "-u",
            user,
            "--ssl",
            "--ssl-ca",
            str(pki.ca_file),
            "--ssl-verify-server-cert",
            "--batch",
            "--skip-column-names",
            "appdb",
            "-e",
            "SELECT CURRENT_USER(); SHOW SESSION STATUS LIKE 'Ssl_version'",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def pymysql_connect(proxy: MyAuthProxy, pki: Pki, user: str, password: str, port: int | None = None) -> Any:
    return pymysql.connect(
        host=proxy.host,
        port=port or proxy.port,
        user=user,
        password=password,
        database="appdb",
        ssl={"ca": str(pki.ca_file), "check_hostname": True},
        connect_timeout=10,
        autocommit=True,
    )


def current_user(conn: Any) -> str:
    with conn.cursor() as cursor:
        cursor.execute("SELECT CURRENT_USER()")
        return str(cursor.fetchone()[0])


def test_a_mysql_login_that_never_finishes_holds_no_server_connection(my_auth: MyAuthProxy, pki: Pki) -> None:
    # A session pool greets a trusted client with the thread id of an idle server connection
    # it borrows at once; a client that has still to prove who it is must not get one.
    conn = pymysql_connect(my_auth, pki, "alice", my_auth.passwords.values["alice"])
    conn.close()  # (its connection goes back idle)
    wait_for(lambda: server_states(my_auth).get("idle", 0) >= 1, 10, "an idle server connection")
    stalled = [socket.create_connection((my_auth.host, my_auth.port), timeout=10) for _ in range(3)]
    try:
        for sock in stalled:
            assert sock.recv(4)  # the greeting came; the login never does
        states = server_states(my_auth)
        assert states.get("busy", 0) == 0 and states.get("idle", 0) >= 1, states
        conn = pymysql_connect(my_auth, pki, "alice", my_auth.passwords.values["alice"])
        assert current_user(conn) == "app@%"
        conn.close()
    finally:
        for sock in stalled:
            sock.close()


def server_states(proxy: MyAuthProxy) -> dict[str, int]:
    states: dict[str, int] = get_json(proxy.admin_port, "/pools")["appdb"]["server_connections"]["by_state"]
    return states


@pytest.mark.parametrize("greeting", ["caching_sha2_password", "mysql_native_password"])
def test_mariadb_cli_logs_in_with_a_password_over_verified_tls(
    my_auth: MyAuthProxy, pki: Pki, greeting: str
) -> None:
    port = my_auth.port if greeting == "caching_sha2_password" else my_auth.native_port
    result = mariadb_cli(my_auth, pki, "alice", my_auth.passwords.values["alice"], port)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "app@%"

    wrong = mariadb_cli(my_auth, pki, "alice", "wrong-password", port)
    assert wrong.returncode != 0
    assert "1045" in wrong.stderr and "Access denied for user 'alice'" in wrong.stderr
    assert "wrong-password" not in wrong.stderr


@pytest.mark.parametrize("greeting", ["caching_sha2_password", "mysql_native_password"])
def test_pymysql_logs_in_and_a_wrong_password_gets_1045(
    my_auth: MyAuthProxy, pki: Pki, greeting: str
) -> None:
    port = my_auth.port if greeting == "caching_sha2_password" else my_auth.native_port
    conn = pymysql_connect(my_auth, pki, "alice", my_auth.passwords.values["alice"], port)
    try:
        assert current_user(conn) == "app@%"
    finally:
        conn.close()
    before = refusals(my_auth.admin_port, "client_auth_failed")
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pymysql_connect(my_auth, pki, "alice", "wrong-password", port)
    assert refused.value.args[0] == 1045
    assert "Access denied for user 'alice'" in refused.value.args[1]
    assert refusals(my_auth.admin_port, "client_auth_failed") == before + 1


@pytest.mark.parametrize("greeting", ["caching_sha2_password", "mysql_native_password"])
def test_a_user_known_by_verifier_uses_full_authentication_over_tls(
    my_auth: MyAuthProxy, pki: Pki, greeting: str
) -> None:
    port = my_auth.port if greeting == "caching_sha2_password" else my_auth.native_port
    conn = pymysql_connect(my_auth, pki, "bob", my_auth.passwords.values["bob"], port)
    try:
        assert current_user(conn) == "app@%"
    finally:
        conn.close()


def test_plaintext_mysql_login_is_refused_where_tls_is_required(my_auth: MyAuthProxy) -> None:
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pymysql.connect(
            host=my_auth.host,
            port=my_auth.port,
            user="alice",
            password=my_auth.passwords.values["alice"],
            connect_timeout=10,
            ssl_disabled=True,  # (PyMySQL prefers TLS where offered)
        )
    assert refused.value.args[0] == 3159
    assert refusals(my_auth.admin_port, "tls_required") >= 1


async def test_mysql_client_secret_rotates_for_new_logins_only(
    my_auth: MyAuthProxy, pki: Pki, sm_client: Any, known_secrets: Secrets
) -> None:
    old = my_auth.passwords.values["alice"]
    session = pymysql_connect(my_auth, pki, "alice", old)
    try:
        new = known_secrets.new_password()
        bob = ScramVerifier.from_password(my_auth.passwords.values["bob"]).encode()
        known_secrets.values.add(bob)
        await put_secret_json(sm_client, my_auth.client_secret, {"alice": new, "bob": bob})
        my_auth.passwords.values["alice"] = new

        def old_refused() -> bool:
            try:
                pymysql_connect(my_auth, pki, "alice", old).close()
            except pymysql.err.OperationalError as exc:
                return bool(exc.args[0] == 1045)
            return False

        wait_for(old_refused, 10, "the old password refused")
        assert mariadb_cli(my_auth, pki, "alice", new).returncode == 0
        fresh = pymysql_connect(my_auth, pki, "alice", new)
        fresh.close()
        assert current_user(session) == "app@%"  # logged in with the old password: untouched
    finally:
        session.close()


# --- who may listen beyond loopback ----------------------------------------------------------------


def exposed_config(
    launcher: ProxyLauncher, secret_id: str, listen: str, upstream: str, clients: str = ""
) -> str:
    return launcher.render(pool_block("exposed", "postgres", listen, upstream, secret_id, clients), port=0)


async def test_a_non_loopback_listener_without_client_authentication_does_not_start(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any, workdir: Path
) -> None:
    secret_id = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    listen = f"{host_address()}:{free_port()}"
    path = workdir / "exposed.toml"
    path.write_text(exposed_config(launcher, secret_id, listen, f"127.0.0.1:{pg.port}"))

    result = subprocess.run(  # noqa: ASYNC221 (the proxy must exit by itself: nothing to await)
        [sys.executable, "-m", "proxy", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **launcher.sm.environ()},
    )

    assert result.returncode == 2
    assert f"pool[0].listen: {listen} is not a loopback address" in result.stderr
    assert 'auth = "password"' in result.stderr and "tls_cert_file" in result.stderr


async def test_a_reload_to_a_non_loopback_listener_without_client_authentication_is_rejected(
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    users: Users,
    sm_client: Any,
    pki: Pki,
    known_secrets: Secrets,
) -> None:
    secret_id = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    upstream = f"127.0.0.1:{pg.port}"
    running = launcher.start(pool_block("exposed", "postgres", "127.0.0.1:{port}", upstream, secret_id, ""))
    host = host_address()
    exposed = f"{host}:{free_port()}"
    assert running.process is not None

    running.config_path.write_text(exposed_config(launcher, secret_id, exposed, upstream))
    running.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in running.logs(), 10, "the reload rejected")
    assert f"pool[0].listen: {exposed} is not a loopback address" in running.logs()
    with psycopg.connect(
        f"host=127.0.0.1 port={running.port} dbname=appdb user=x connect_timeout=10"
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)  # still serving as before

    # With password authentication and TLS, the same reload goes through.
    client_secret = await new_secret(sm_client, {"carol": known_secrets.new_password()}, prefix="clients")
    running.config_path.write_text(
        exposed_config(launcher, secret_id, exposed, upstream, clients_toml(pki, "password", client_secret))
    )
    running.process.send_signal(signal.SIGHUP)
    wait_for(lambda: port_open(host, int(exposed.rsplit(":", 1)[1])), 10, "listening beyond loopback")


def test_mysql_a_client_certificate_of_the_ca_logs_in_and_no_other_does(
    my_auth: MyAuthProxy, pki: Pki
) -> None:
    def login(user: str, cert: Path | None, key: Path | None) -> Any:
        ssl_options: dict[str, Any] = {"ca": str(pki.ca_file), "check_hostname": True}
        if cert is not None and key is not None:
            ssl_options.update(cert=str(cert), key=str(key))
        return pymysql.connect(
            host=my_auth.host,
            port=my_auth.cert_port,
            user=user,
            database="appdb",
            ssl=ssl_options,
            connect_timeout=10,
        )

    conn = login("alice", pki.alice_cert, pki.alice_key)
    try:
        assert current_user(conn) == "app@%"  # (upstream as the pool's account)
    finally:
        conn.close()
    for user, cert, key in (("alice", None, None), ("bob", pki.alice_cert, pki.alice_key)):
        with pytest.raises(pymysql.err.OperationalError) as refused:
            login(user, cert, key)
        assert refused.value.args[0] == 1045 and f"Access denied for user '{user}'" in refused.value.args[1]
    # Another CA's certificate: the TLS handshake itself fails, and the proxy says why.
    with pytest.raises(pymysql.err.OperationalError):
        login("alice", pki.stranger_cert, pki.stranger_key)
    wait_for(lambda: "certificate verify failed" in my_auth.running.logs(), 5, "the handshake failure logged")


async def test_the_client_certificate_reloads_on_sighup_and_open_sessions_keep_theirs(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any, workdir: Path
) -> None:
    folder = workdir / "client-tls-reload"
    folder.mkdir(exist_ok=True)
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cert_file, key_file = folder / "proxy.crt", folder / "proxy.key"
    old_ca_file, new_ca_file = folder / "old-ca.pem", folder / "new-ca.pem"
    old_ca.cert_pem.write_to_path(str(old_ca_file))
    new_ca.cert_pem.write_to_path(str(new_ca_file))

    def install(ca: trustme.CA) -> None:
        issued = ca.issue_cert("127.0.0.1")
        _write(cert_file, b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        _write(key_file, issued.private_key_pem.bytes())

    install(old_ca)
    secret_id = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    clients = f'[pool.clients]\ntls_cert_file = "{cert_file}"\ntls_key_file = "{key_file}"\n'  # tls: require
    running = launcher.start(
        pool_block("tlsreload", "postgres", "127.0.0.1:{port}", f"127.0.0.1:{pg.port}", secret_id, clients)
    )
    assert running.process is not None

    def dsn(ca_file: Path) -> str:
        return (
            f"host=127.0.0.1 port={running.port} dbname=appdb user=x connect_timeout=10 "
            f"sslmode=verify-full sslrootcert={ca_file}"
        )

    with psycopg.connect(dsn(old_ca_file), autocommit=True) as open_session:
        assert open_session.execute("SELECT 1").fetchone() == (1,)
        install(new_ca)
        running.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "client TLS certificate reloaded" in running.logs(), 10, "the certificate reloaded")
        # New handshakes get the new certificate: verified by the new CA, refused by the old one.
        with psycopg.connect(dsn(new_ca_file), autocommit=True) as fresh:
            assert fresh.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(dsn(old_ca_file))
        # The session opened before keeps its connection and its TLS.
        assert open_session.execute("SELECT 2").fetchone() == (2,)
