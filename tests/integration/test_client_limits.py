"""Who may connect, and for how long (issue 17): rotaproxy as a process in front of a real
PostgreSQL and MariaDB, clients on real sockets. Never-finished logins, stalled messages
and idle clients are closed after their timeout, with their protocol's error; clients over
a limit get 53300 / 1040; a steady client meanwhile sees zero errors."""

from __future__ import annotations

import resource
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pymysql
import pytest

from protocols.mysql import constants as c
from protocols.postgres.messages import StartupMessage
from proxy.core.limits import RESERVED_FILES
from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port, port_open
from proxy.local.proxy_process import ProxyProcess
from tests.conftest import (
    MySqlUsers,
    ProxyLauncher,
    Users,
    metric,
    new_secret,
    rds_mysql_secret,
    rds_secret,
    scrape,
    wait_for,
)
from tests.integration.clientwire import (
    mysql_error,
    mysql_login,
    mysql_read_packet,
    pg_connect,
    pg_error,
    pg_login,
    read_to_end,
)

NEVER_LOGGED_IN = 2000
STALLED = 50


@dataclass
class Limited:
    running: ProxyProcess
    admin_port: int
    mysql_port: int

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.running.port)


@pytest.fixture(scope="module")
async def limited(
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    users: Users,
    mariadb: ThrowawayMariaDB,
    mysql_users: MySqlUsers,
    sm_client: Any,
) -> Limited:
    app = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    my = await new_secret(sm_client, rds_mysql_secret(mariadb, "app", mysql_users.app))
    admin_port, mysql_port = free_port(), free_port()
    upstream = f"127.0.0.1:{pg.port}"

    def pg_pool(name: str, mode: str, extra: str = "") -> str:
        return (
            f'[[pool]]\nname = "{name}"\nengine = "postgres"\nlisten = "127.0.0.1:{{port}}"\n'
            f'mode = "{mode}"\n'
            f'upstream = "{upstream}"\ndatabase = "appdb"\ntls = "disable"\nborrow_timeout = "10s"\n{extra}\n'
            f'[pool.credentials]\nsecret_id = "{app}"\n\n'
        )

    config = (
        pg_pool("appdb", "transaction", "max_server_connections = 5")
        + pg_pool("small", "session", 'max_client_message_size = "1MiB"')
        + pg_pool("idle", "session", 'client_idle_timeout = "1s"')
        + pg_pool("limited", "transaction", "max_client_connections = 2")
        + f'[[pool]]\nname = "my"\nengine = "mysql"\nlisten = "127.0.0.1:{mysql_port}"\n'
        'tls = "disable"\nmax_client_connections = 1\nmax_client_message_size = "1MiB"\n'
        f'[pool.credentials]\nsecret_id = "{my}"\n'
    )
    head = 'client_login_timeout = "1s"\nclient_stall_timeout = "1s"\n\n'
    running = launcher.start(config, admin_port=admin_port, head=head)
    wait_for(lambda: port_open("127.0.0.1", mysql_port), 20, "the MySQL listener")
    return Limited(running, admin_port, mysql_port)


@pytest.fixture
def more_open_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class SteadyClient(threading.Thread):
    """One client running SELECT 1 through the transaction-mode pool, counting errors."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.queries = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        dsn = f"host=127.0.0.1 port={self.port} dbname=appdb user=steady connect_timeout=10"
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                try:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
                    self.queries += 1
                except Exception as exc:
                    self.errors.append(repr(exc))
                time.sleep(0.005)


def busy_server_connections(limited: Limited, pool: str) -> float:
    _, samples = scrape(limited.admin_port)
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "rotaproxy_server_connections" and ("pool", pool) in labels and ("state", "busy") in labels
    )


def test_never_finished_logins_and_stalled_messages_are_closed_while_a_steady_client_runs(
    limited: Limited, more_open_files: None
) -> None:
    steady = SteadyClient(limited.running.port)
    steady.start()
    wait_for(lambda: steady.queries > 10, 10, "the steady client runs")
    started = time.monotonic()
    idle: list[socket.socket] = []
    for index in range(NEVER_LOGGED_IN):
        sock = pg_connect(limited.address)
        if index % 2:
            sock.sendall(b"\x00\x00\x00")  # 3 bytes of a startup packet's length
        idle.append(sock)
    stalled = []
    for _ in range(STALLED):
        sock = pg_login(limited.address, "appdb")
        sock.sendall(b"Q" + struct.pack("!I", (1 << 30) - 1) + b"SE")  # 7 bytes of a 1 GiB Query
        stalled.append(sock)
    # A stalled client holds no server connection: the pool of 5 serves the steady client.
    assert busy_server_connections(limited, "appdb") <= 1
    for sock in idle:
        data = read_to_end(sock)  # EOF comes only from the proxy closing the connection
        sock.close()
        assert not data or "client_login_timeout (1s)" in pg_error(data)["M"], data
    for sock in stalled:
        fields = pg_error(read_to_end(sock))
        sock.close()
        assert fields["C"] == "08P01" and "client_stall_timeout (1s)" in fields["M"]
    elapsed = time.monotonic() - started
    steady.stop.set()
    steady.join(10)
    assert steady.errors == [] and steady.queries > 20
    assert elapsed < 15
    _, samples = scrape(limited.admin_port)
    listener = f"127.0.0.1:{limited.running.port}"
    assert (
        metric(
            samples,
            "rotaproxy_listener_connections_closed_total",
            listener=listener,
            engine="postgres",
            reason="client_login_timeout",
        )
        >= NEVER_LOGGED_IN
    )
    closed = metric(
        samples,
        "rotaproxy_client_connections_closed_total",
        pool="appdb",
        engine="postgres",
        reason="client_stall_timeout",
    )
    assert closed == STALLED


def test_an_idle_client_is_closed_after_client_idle_timeout(limited: Limited) -> None:
    sock = pg_login(limited.address, "idle")
    started = time.monotonic()
    fields = pg_error(read_to_end(sock))
    assert fields["C"] == "57P05" and "client_idle_timeout (1s)" in fields["M"]
    assert 0.9 < time.monotonic() - started < 5


@pytest.mark.parametrize(("database", "length"), [("small", 2 << 20), ("appdb", (1 << 31) - 1)])
def test_an_oversized_message_is_refused_naming_the_limit(
    limited: Limited, database: str, length: int
) -> None:
    with pg_login(limited.address, database) as sock:
        sock.sendall(b"Q" + struct.pack("!I", length))
        fields = pg_error(read_to_end(sock))
    assert fields["C"] == "08P01" and "max_client_message_size" in fields["M"]


def test_a_client_over_the_pool_s_max_client_connections_gets_53300(limited: Limited) -> None:
    dsn = f"host=127.0.0.1 port={limited.running.port} dbname=limited user=u"
    with psycopg.connect(dsn), psycopg.connect(dsn), pg_connect(limited.address) as third:
        third.sendall(StartupMessage({"user": "u", "database": "limited"}).encode())
        fields = pg_error(read_to_end(third))
    assert fields["C"] == "53300" and "max_client_connections (2)" in fields["M"]
    with psycopg.connect(dsn) as again:  # room again once one left
        assert again.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    ("send", "sqlstate", "fragment"),
    [
        pytest.param(b"", "08P01", "a second SSLRequest", id="second-ssl-request"),
        pytest.param(struct.pack("!I", (1 << 31) - 1), "08P01", "invalid startup packet length", id="2^31"),
    ],
)
def test_startup_hardening_over_a_socket(limited: Limited, send: bytes, sqlstate: str, fragment: str) -> None:
    with pg_connect(limited.address) as sock:
        if not send:
            sock.sendall(struct.pack("!II", 8, 80877103))
            assert sock.recv(1) == b"N"
            send = struct.pack("!II", 8, 80877103)
        sock.sendall(send)
        fields = pg_error(read_to_end(sock))
    assert fields["C"] == sqlstate and fragment in fields["M"]


@pytest.mark.parametrize(
    "options", ["-c", "-c application_name='two words'", "-c application_name=x\\"], ids=["c", "quote", "bs"]
)
def test_malformed_options_get_a_protocol_error(limited: Limited, options: str) -> None:
    with pg_connect(limited.address) as sock:
        sock.sendall(StartupMessage({"user": "u", "database": "small", "options": options}).encode())
        fields = pg_error(read_to_end(sock))
    assert fields["C"] == "08P01" and "invalid startup options" in fields["M"]


@pytest.mark.parametrize("database", ["small", "appdb"])
def test_a_startup_packet_after_login_is_a_protocol_error(limited: Limited, database: str) -> None:
    with pg_login(limited.address, database) as sock:
        sock.sendall(struct.pack("!II", 8, 80877103))  # an SSLRequest, after the startup phase
        fields = pg_error(read_to_end(sock))
    assert fields["C"] == "08P01" and "after the startup phase" in fields["M"]
    with psycopg.connect(f"host=127.0.0.1 port={limited.running.port} dbname={database} user=u") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- MySQL -------------------------------------------------------------------------------------


def test_mysql_a_client_over_the_pool_s_max_client_connections_gets_1040(limited: Limited) -> None:
    with (
        pymysql.connect(host="127.0.0.1", port=limited.mysql_port, user="u", password=""),
        pytest.raises(pymysql.err.OperationalError) as caught,
    ):
        pymysql.connect(host="127.0.0.1", port=limited.mysql_port, user="u", password="")
    assert caught.value.args[0] == 1040 and "max_client_connections (1)" in caught.value.args[1]


def test_mysql_a_never_finished_handshake_gets_1043_after_client_login_timeout(limited: Limited) -> None:
    with pg_connect(("127.0.0.1", limited.mysql_port)) as sock:
        mysql_read_packet(sock)
        started = time.monotonic()
        error = mysql_error(read_to_end(sock))
    assert error is not None and error[0] == 1043 and "client_login_timeout (1s)" in error[2]
    assert time.monotonic() - started < 5


def test_mysql_a_handshake_response_with_lengths_past_the_packet_gets_1043(limited: Limited) -> None:
    with pg_connect(("127.0.0.1", limited.mysql_port)) as sock:
        mysql_read_packet(sock)
        flags = c.CLIENT_PROTOCOL_41 | c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        fixed = struct.pack("<IIB23x", flags, 1 << 24, 45)
        payload = fixed + b"u\0" + b"\xfe" + struct.pack("<Q", (1 << 64) - 1)
        sock.sendall(len(payload).to_bytes(3, "little") + b"\x01" + payload)
        error = mysql_error(read_to_end(sock))
    assert error is not None and error[0] == 1043 and "past the packet" in error[2]


def test_mysql_an_oversized_packet_gets_1153_and_a_stalled_one_1159(limited: Limited) -> None:
    with mysql_login(("127.0.0.1", limited.mysql_port)) as sock:
        sock.sendall(b"\xff\xff\xff\x00\x03SELECT")  # a packet announcing 16 MiB
        error = mysql_error(read_to_end(sock))
    assert error is not None and error[0] == 1153 and "max_client_message_size" in error[2]
    with mysql_login(("127.0.0.1", limited.mysql_port)) as sock:
        sock.sendall(b"\x10\x00\x00\x00\x03SEL")  # 7 bytes of a 16-byte COM_QUERY
        error = mysql_error(read_to_end(sock))
    assert error is not None and error[0] == 1159 and "client_stall_timeout (1s)" in error[2]


# --- the process's own limit ---------------------------------------------------------------------


def test_a_client_over_the_process_max_client_connections_gets_53300_or_1040(
    launcher: ProxyLauncher, limited: Limited
) -> None:
    config = limited.running.config_path.read_text()
    # The same pools on new addresses, under a process-wide limit of three clients.
    body = config[config.index("[[pool]]") :]
    body = body.replace(f'"127.0.0.1:{limited.running.port}"', '"127.0.0.1:{port}"')
    mysql_port = free_port()
    body = body.replace(f'"127.0.0.1:{limited.mysql_port}"', f'"127.0.0.1:{mysql_port}"')
    small = launcher.start(body, head="max_client_connections = 3\n")
    wait_for(lambda: port_open("127.0.0.1", mysql_port), 20, "the MySQL listener")
    address = ("127.0.0.1", small.port)
    held = [pg_login(address, "appdb") for _ in range(3)]
    try:
        with pg_connect(address) as fourth:
            fourth.sendall(StartupMessage({"user": "u", "database": "appdb"}).encode())
            fields = pg_error(read_to_end(fourth))
        assert fields["C"] == "53300" and "max_client_connections (3)" in fields["M"]
        with pg_connect(("127.0.0.1", mysql_port)) as mysql:
            error = mysql_error(read_to_end(mysql))
        assert error is not None and error[:2] == (1040, "08004")
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: _logs_in(address), 10, "room again once the held clients left")


def _logs_in(address: tuple[str, int]) -> bool:
    try:
        pg_login(address, "appdb").close()
        return True
    except AssertionError:
        return False


OPEN_FILES_LIMIT = 200  # the proxy's RLIMIT_NOFILE, soft and hard, in the next test


async def test_near_the_open_files_limit_new_clients_are_refused_and_the_admin_api_answers(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any, more_open_files: None
) -> None:
    app = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    admin_port = free_port()
    config = (
        f'[[pool]]\nname = "appdb"\nengine = "postgres"\nlisten = "127.0.0.1:{{port}}"\n'
        'mode = "transaction"\n'
        f'upstream = "127.0.0.1:{pg.port}"\ndatabase = "appdb"\ntls = "disable"\nmax_server_connections = 2\n'
        f'[pool.credentials]\nsecret_id = "{app}"\n'
    )
    running = launcher.start(
        config, admin_port=admin_port, prefix=("prlimit", f"--nofile={OPEN_FILES_LIMIT}:{OPEN_FILES_LIMIT}")
    )
    # What the limit leaves for clients: the reserve for the process and 2 per server connection.
    room = OPEN_FILES_LIMIT - RESERVED_FILES - 2 * 2
    assert f"open files limit {OPEN_FILES_LIMIT}: up to {room} client connections" in running.logs()
    address = ("127.0.0.1", running.port)
    held = [pg_connect(address) for _ in range(room)]  # (logins not finished: each holds a descriptor)
    try:
        wait_for(
            lambda: metric(scrape(admin_port)[1], "rotaproxy_process_client_connections") == room,
            10,
            "all held",
        )
        with pg_connect(address) as refused:
            fields = pg_error(read_to_end(refused))
        assert (
            fields["C"] == "53300" and f"open files limit ({OPEN_FILES_LIMIT}, RLIMIT_NOFILE)" in fields["M"]
        )
        # The admin API still answers, and says why.
        _, samples = scrape(admin_port)
        assert metric(samples, "rotaproxy_process_open_files_limit") == OPEN_FILES_LIMIT
        assert (
            sum(
                value
                for (name, labels), value in samples.items()
                if name == "rotaproxy_listener_connections_rejected_total"
                and ("reason", "open_files") in labels
            )
            >= 1
        )
    finally:
        for sock in held:
            sock.close()
    # Room again: a client logs in and runs a query, and the proxy never crashed.
    dsn = f"host=127.0.0.1 port={running.port} dbname=appdb user=u connect_timeout=10"
    wait_for(
        lambda: metric(scrape(admin_port)[1], "rotaproxy_process_client_connections") == 0, 10, "all closed"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert running.process is not None and running.process.poll() is None
