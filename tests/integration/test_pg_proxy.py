"""rotaproxy in front of a real PostgreSQL, credentials from a real local Secrets Manager,
driven by real clients: psql, asyncpg, psycopg 3, pgbench and raw sockets."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port
from proxy.local.proxy_process import ProxyProcess
from proxy.local.tls import TlsFiles
from tests.conftest import (
    ProxyLauncher,
    Secrets,
    Users,
    kill_client_after_insert,
    new_secret,
    pool_toml,
    rds_secret,
)


@dataclass
class PgProxy:
    running: ProxyProcess
    secret_ids: dict[str, str]
    not_json_marker: str

    @property
    def port(self) -> int:
        return self.running.port

    def dsn(self, database: str = "appdb") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={database} user=someone connect_timeout=10"


@pytest.fixture(scope="session")
async def pg_proxy(
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    users: Users,
    sm_client: Any,
    tls: TlsFiles,
    wrong_tls: TlsFiles,
    known_secrets: Secrets,
) -> PgProxy:
    marker = known_secrets.new_password()
    ids = {
        "app": await new_secret(sm_client, rds_secret(pg, "app", users.app)),
        "md5": await new_secret(sm_client, rds_secret(pg, "app_md5", users.app_md5)),
        "clear": await new_secret(sm_client, rds_secret(pg, "app_clear", users.app_clear)),
        "not_json": await new_secret(sm_client, f"username=app password={marker}"),
        "no_password": await new_secret(sm_client, {"username": "app", "host": "localhost"}),
        "deleted": await new_secret(sm_client, rds_secret(pg, "app", users.app)),
        "wrong_password": await new_secret(sm_client, rds_secret(pg, "app", known_secrets.new_password())),
    }

    def pool(name: str, secret: str, **settings: object) -> str:
        return pool_toml(name, secret, engine="postgres", **settings)

    await sm_client.delete_secret(SecretId=ids["deleted"], RecoveryWindowInDays=7)
    upstream = f"127.0.0.1:{pg.port}"
    config = "\n".join(
        [
            # host, port and dbname come from the secret; TLS verified against the test CA.
            pool(
                "appdb",
                ids["app"],
                tls="verify-full",
                tls_ca_file=str(tls.ca_file),
                max_server_connections=5,
                min_server_connections=1,
                borrow_timeout="3s",
            ),
            pool(
                "tiny",
                ids["app"],
                upstream=upstream,
                database="appdb",
                tls="verify-ca",
                tls_ca_file=str(tls.ca_file),
                max_server_connections=1,
                borrow_timeout="1s",
            ),
            pool("md5db", ids["md5"], upstream=upstream, database="appdb", tls="disable"),
            pool("cleardb", ids["clear"], upstream=upstream, database="appdb", tls="require"),
            pool("badca", ids["app"], tls="verify-full", tls_ca_file=str(wrong_tls.ca_file)),
            pool("missing", "does/not/exist", upstream=upstream, tls="disable"),
            pool("notjson", ids["not_json"], upstream=upstream, tls="disable"),
            pool("nopassword", ids["no_password"], upstream=upstream, tls="disable"),
            pool("deleted", ids["deleted"], upstream=upstream, tls="disable"),
            pool("wrongpw", ids["wrong_password"], upstream=upstream, tls="disable", borrow_timeout="1s"),
            pool(
                "deadend", ids["app"], upstream=f"127.0.0.1:{free_port()}", tls="disable", borrow_timeout="1s"
            ),
        ]
    )
    return PgProxy(launcher.start(config), ids, marker)


def connect(proxy: PgProxy, database: str = "appdb", **extra: str) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(database), autocommit=True, **extra)


async def startup_error(proxy: PgProxy, database: str) -> asyncpg.PostgresError:
    """The error a client gets at login, with its SQLSTATE (asyncpg keeps it; libpq does not)."""
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="x", database=database, timeout=10)
    return info.value


def direct(pg: ThrowawayPostgres, users: Users) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1",
        port=pg.port,
        dbname="appdb",
        user="app",
        password=users.app,
        sslmode="disable",
        autocommit=True,
    )


# --- real clients ---------------------------------------------------------------------------


def test_psql_connects_without_password_and_runs_as_the_secret_user(pg_proxy: PgProxy) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(
        [
            "psql",
            "-X",
            "-w",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg_proxy.port),
            "-U",
            "whoever",
            "-d",
            "appdb",
            "-c",
            "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app|t"  # the secret's user, over verified TLS upstream


async def test_asyncpg_with_default_settings(pg_proxy: PgProxy) -> None:
    connection = await asyncpg.connect(host="127.0.0.1", port=pg_proxy.port, user="x", database="appdb")
    try:
        assert await connection.fetchval("SELECT current_user") == "app"
        # The real backend PID, as drivers and NOTIFY payloads expect it.
        assert await connection.fetchval("SELECT pg_backend_pid()") == connection.get_server_pid()
        async with connection.transaction():
            row_id = await connection.fetchval("INSERT INTO items (note) VALUES ($1) RETURNING id", "asyncpg")
        statement = await connection.prepare("SELECT note FROM items WHERE id = $1")
        assert await statement.fetchval(row_id) == "asyncpg"
        values = await connection.fetch("SELECT generate_series(1, $1::int) AS n", 10_000)
        assert [row["n"] for row in values] == list(range(1, 10_001))
    finally:
        await connection.close()


def test_psycopg_sees_server_normalised_parameters(pg_proxy: PgProxy) -> None:
    with connect(
        pg_proxy,
        application_name="orders-api",
        client_encoding="utf8",
        options="-c search_path=pg_catalog,public -c statement_timeout=12345",
    ) as conn:
        assert conn.info.parameter_status("client_encoding") == "UTF8"  # server's spelling
        assert conn.info.parameter_status("application_name") == "orders-api"
        assert conn.info.backend_pid == conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        settings = conn.execute(
            "SELECT current_setting('search_path'), current_setting('statement_timeout')"
        ).fetchone()
        assert settings == ("pg_catalog,public", "12345ms")  # as PostgreSQL keeps it at login
        with conn.cursor() as cursor:
            cursor.execute("SELECT %s::int + 1", (41,), prepare=True)
            assert cursor.fetchone() == (42,)
        # COPY passes through the relay.
        with conn.cursor().copy("COPY (SELECT generate_series(1, 3)) TO STDOUT") as copy:
            assert [bytes(row) for row in copy] == [b"1\n", b"2\n", b"3\n"]


def test_pgbench_runs_through_the_proxy(pg_proxy: PgProxy, pg: ThrowawayPostgres, users: Users) -> None:
    pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    init = subprocess.run(
        [pgbench, "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", str(pg_proxy.port), "-U", "x", "appdb"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert init.returncode == 0, init.stderr
    run = subprocess.run(
        [
            pgbench,
            "-T",
            "5",
            "-c",
            "4",
            "-j",
            "2",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg_proxy.port),
            "-U",
            "x",
            "appdb",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    processed = int(re.search(r"number of transactions actually processed: (\d+)", run.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", run.stdout)
    assert processed > 100, run.stdout
    assert failed is None or failed.group(1) == "0", run.stdout


def test_md5_and_cleartext_upstream_auth(pg_proxy: PgProxy) -> None:
    with connect(pg_proxy, "md5db") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app_md5",)
    with connect(pg_proxy, "cleardb") as conn:
        # Cleartext only ever travels inside TLS here (tls = "require").
        row = conn.execute(
            "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row == ("app_clear", True)


# --- TLS upstream -------------------------------------------------------------------------------


async def test_upstream_tls_with_the_wrong_ca_is_refused(pg_proxy: PgProxy) -> None:
    error = await startup_error(pg_proxy, "badca")
    assert error.sqlstate == "08001"
    assert 'pool "badca"' in str(error) and "certificate" in str(error)


# --- cancel -----------------------------------------------------------------------------------


def test_cancel_stops_only_that_clients_query(pg_proxy: PgProxy) -> None:
    with connect(pg_proxy) as victim, connect(pg_proxy) as bystander:
        outcome: dict[str, object] = {}

        def bystander_sleeps() -> None:
            started = time.monotonic()
            bystander.execute("SELECT pg_sleep(2)")
            outcome["bystander"] = time.monotonic() - started

        thread = threading.Thread(target=bystander_sleeps)
        thread.start()
        timer = threading.Timer(0.5, victim.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            victim.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - started < 5
        thread.join()
        assert outcome["bystander"] >= 2  # not cancelled
        assert victim.execute("SELECT 1").fetchone() == (1,)  # the session goes on


def test_cancel_with_an_unknown_key_is_ignored(pg_proxy: PgProxy) -> None:
    with connect(pg_proxy) as conn:
        pid = conn.info.backend_pid
        with socket.create_connection(("127.0.0.1", pg_proxy.port)) as raw:
            raw.sendall(struct.pack("!IIiI", 16, 80877102, pid, 12345))
            assert raw.recv(1) == b""  # closed without an answer, as PostgreSQL does
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- pooling, reset and vanished clients ----------------------------------------------------------


def test_session_state_does_not_leak_to_the_next_client(pg_proxy: PgProxy) -> None:
    with connect(pg_proxy, "tiny") as first:
        pid = first.info.backend_pid
        first.execute("SET work_mem = '7MB'")
        first.execute("CREATE TEMP TABLE scratch (x int)")
        first.execute("PREPARE leaked AS SELECT 1")
        first.execute("SELECT pg_advisory_lock(4242)")
    with connect(pg_proxy, "tiny") as second:
        assert second.info.backend_pid == pid  # the same pooled server connection
        assert second.execute("SHOW work_mem").fetchone() == ("4MB",)
        assert second.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert second.execute("SELECT to_regclass('pg_temp.scratch')").fetchone() == (None,)
        assert second.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)


def test_a_login_whose_settings_the_connection_has_already_makes_no_round_trip(
    pg_proxy: PgProxy, pg: ThrowawayPostgres
) -> None:
    """Session mode: a login's startup settings go to the server (``set_config``) unless the
    pool has seen them answered and the connection reports that answer already. Seen from
    the server: the last statement its backend ran before the client's first query."""

    def set_at_login(conn: psycopg.Connection[Any]) -> bool:
        pid = conn.info.backend_pid
        return "set_config" in pg.sql(f"SELECT query FROM pg_stat_activity WHERE pid = {pid}")

    # A spelling no other test uses, of the encoding every pooled connection has (UTF8).
    same = {"client_encoding": "UtF8"}
    probe = {"application_name": "probe-login"}  # reported, and not what the connection has
    work_mem = {"options": "-c work_mem=5MB"}  # not reported: cannot be compared, always sent
    steps = [  # (the login's settings, sent at login, a setting to SHOW, its value)
        (same, True, "client_encoding", "UTF8"),  # never answered before: normalised there
        (same, False, "client_encoding", "UTF8"),
        (probe, True, "application_name", "probe-login"),
        (probe, True, "application_name", "probe-login"),  # the reset took it off again
        (same, False, "application_name", ""),
        (work_mem, True, "work_mem", "5MB"),
        (work_mem, True, "work_mem", "5MB"),
    ]
    for settings, sent, name, value in steps:
        with connect(pg_proxy, "tiny", **settings) as conn:
            assert set_at_login(conn) is sent, (settings, sent)
            assert conn.execute(f"SHOW {name}").fetchone() == (value,)


CLIENT_THAT_DIES = textwrap.dedent(
    """
    import sys, psycopg
    conn = psycopg.connect(sys.argv[1])
    conn.execute("INSERT INTO items (note) VALUES (%s)", (sys.argv[2],))
    print("inserted", flush=True)
    if sys.argv[3] == "busy":
        conn.execute("SELECT pg_sleep(60)")
    else:
        sys.stdin.read()
    """
)


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_client_killed_inside_a_transaction_commits_nothing(
    pg_proxy: PgProxy, pg: ThrowawayPostgres, users: Users, state: str
) -> None:
    marker = f"killed-{state}-{time.monotonic_ns()}"
    kill_client_after_insert(CLIENT_THAT_DIES, pg_proxy.dsn("tiny"), marker, state, busy=state == "busy")
    # The next client gets a clean session, promptly (the busy one is cancelled, not waited out).
    with connect(pg_proxy, "tiny") as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT txid_current_if_assigned()").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM items WHERE note = %s", (marker,)).fetchone() == (0,)
    with direct(pg, users) as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE note = %s", (marker,)).fetchone() == (0,)


async def test_borrow_timeout_names_the_pool_and_the_timeout(pg_proxy: PgProxy) -> None:
    with connect(pg_proxy, "tiny"):
        started = time.monotonic()
        error = await startup_error(pg_proxy, "tiny")
        waited = time.monotonic() - started
    assert error.sqlstate == "53300"
    assert 'pool "tiny"' in str(error) and "borrow_timeout 1s" in str(error)
    assert 0.9 <= waited < 5
    with connect(pg_proxy, "tiny") as conn:  # the slot is free again
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- bad input: clear errors, the proxy keeps serving ------------------------------------------


@pytest.mark.parametrize(
    ("database", "sqlstate", "fragments"),
    [
        ("nope", "3D000", ['database "nope" does not exist']),
        ("missing", "08001", ["'does/not/exist'", "does not exist"]),
        ("notjson", "08001", ["not valid JSON"]),
        ("nopassword", "08001", ["lacks", "'password'"]),
        ("deleted", "08001", ["InvalidRequestException", "marked"]),
        ("wrongpw", "08001", ['pool "wrongpw"', "password authentication failed", "28P01"]),
        ("deadend", "08001", ['pool "deadend"', "cannot reach upstream"]),
    ],
)
async def test_bad_setups_give_clear_errors(
    pg_proxy: PgProxy, database: str, sqlstate: str, fragments: list[str]
) -> None:
    error = await startup_error(pg_proxy, database)
    message = str(error)
    assert error.sqlstate == sqlstate, message
    for fragment in fragments:
        assert fragment in message
    assert pg_proxy.not_json_marker not in message
    with connect(pg_proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(data)
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
        return received


def _startup(parameters: dict[str, str], version: int = 196608) -> bytes:
    body = (
        struct.pack("!I", version)
        + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in parameters.items())
        + b"\0"
    )
    return struct.pack("!I", len(body) + 4) + body


def _error_fields(data: bytes) -> dict[str, str]:
    assert data[:1] == b"E", data
    (length,) = struct.unpack_from("!I", data, 1)
    fields = {}
    for part in data[5 : 1 + length].split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


@pytest.mark.parametrize(
    ("payload", "sqlstate", "fragment"),
    [
        (struct.pack("!I", 1 << 30), "08P01", "invalid startup packet length"),
        (struct.pack("!II", 8, 2 << 16), "08P01", "unsupported frontend protocol 2.0"),
        (_startup({"database": "appdb"}), "28000", "no PostgreSQL user name"),
        (_startup({"user": "u", "database": "appdb", "replication": "true"}), "0A000", "replication"),
        (
            _startup({"user": "u", "database": "appdb", "options": "-d 5"}),
            "0A000",
            "unsupported startup option",
        ),
        (_startup({"user": "u", "database": "appdb", "no_such_setting": "1"}), "42704", "no_such_setting"),
    ],
)
def test_malformed_startup_gets_a_protocol_error(
    pg_proxy: PgProxy, payload: bytes, sqlstate: str, fragment: str
) -> None:
    fields = _error_fields(_raw_exchange(pg_proxy.port, payload))
    assert fields["S"] == "FATAL"
    assert fields["C"] == sqlstate
    assert fragment in fields["M"]
    with connect(pg_proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_ssl_and_gssenc_requests_are_answered_no(pg_proxy: PgProxy) -> None:
    for code in (80877103, 80877104):
        with socket.create_connection(("127.0.0.1", pg_proxy.port), timeout=5) as raw:
            raw.sendall(struct.pack("!II", 8, code))
            assert raw.recv(1) == b"N"


def test_garbage_after_login_closes_only_that_client(pg_proxy: PgProxy) -> None:
    with (
        connect(pg_proxy) as bystander,
        socket.create_connection(("127.0.0.1", pg_proxy.port), timeout=5) as raw,
    ):
        raw.sendall(_startup({"user": "u", "database": "appdb"}))
        greeting = b""
        while not greeting.endswith(b"Z\x00\x00\x00\x05I"):
            greeting += raw.recv(65536)
        raw.sendall(b"Q\x00\x00\x00\x02")  # a length below 4 cannot be framed
        rest = b""
        while chunk := raw.recv(65536):
            rest += chunk
        assert bystander.execute("SELECT 1").fetchone() == (1,)


def test_non_loopback_listen_is_refused(launcher: ProxyLauncher) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "run",
            "--engine",
            "postgres",
            "--listen",
            "0.0.0.0:6432",
            "--secret-id",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr and "0.0.0.0:6432" in result.stderr


# --- relay behaviour ------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_does_not_balloon_the_proxy(pg_proxy: PgProxy) -> None:
    """Back-pressure: the proxy stops reading upstream while the client does not read."""
    assert pg_proxy.running.process is not None
    proxy_pid = pg_proxy.running.process.pid
    with socket.create_connection(("127.0.0.1", pg_proxy.port), timeout=30) as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        raw.sendall(_startup({"user": "u", "database": "appdb"}))
        greeting = b""
        while not greeting.endswith(b"Z\x00\x00\x00\x05I"):
            greeting += raw.recv(65536)
        before = _rss_kib(proxy_pid)
        sql = b"SELECT repeat('x', 1000) FROM generate_series(1, 200000)\x00"  # ~200 MB of rows
        raw.sendall(b"Q" + struct.pack("!I", len(sql) + 4) + sql)
        time.sleep(2.0)  # not reading: the proxy must stop reading the server too
        stalled = _rss_kib(proxy_pid)
        received = 0
        tail = b""
        while not tail.endswith(b"Z\x00\x00\x00\x05I"):
            chunk = raw.recv(1 << 20)
            assert chunk, "connection closed early"
            received += len(chunk)
            tail = (tail + chunk)[-6:]
    assert received > 200_000 * 1000
    assert stalled - before < 32 * 1024, f"proxy RSS grew {stalled - before} KiB while the client stalled"


def test_sigterm_stops_the_proxy_cleanly(launcher: ProxyLauncher, pg_proxy: PgProxy) -> None:
    config = pg_proxy.running.config_path.read_text().split("[[pool]]", 2)
    pool_only = "[[pool]]" + config[1]  # the first pool: appdb
    pool_only = re.sub(r'listen = "127\.0\.0\.1:\d+"', 'listen = "127.0.0.1:{port}"', pool_only)
    running = launcher.start(pool_only)
    with psycopg.connect(f"host=127.0.0.1 port={running.port} dbname=appdb user=x", autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert running.stop(timeout=10) == 0
    assert "rotaproxy stopped" in running.logs()


def test_clients_reconnect_after_an_upstream_restart(pg_proxy: PgProxy, pg: ThrowawayPostgres) -> None:
    with connect(pg_proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pg.restart()
        # The client in session learns its server went away, in protocol terms.
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    # New clients are served by fresh server connections; nothing stale is handed out.
    for _ in range(3):
        with connect(pg_proxy) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
