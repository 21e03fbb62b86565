"""rotaproxy in front of a real MariaDB, credentials from a real local Secrets Manager, driven
by real clients: the mariadb CLI, PyMySQL, aiomysql, mysql-connector (binary protocol),
sysbench, and raw sockets."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import textwrap
import threading
import time
from dataclasses import dataclass
from typing import Any

import aiomysql
import mysql.connector
import pymysql
import pytest

from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.process import free_port
from proxy.local.proxy_process import ProxyProcess
from proxy.local.tls import TlsFiles
from tests.conftest import (
    MySqlUsers,
    ProxyLauncher,
    Secrets,
    kill_client_after_insert,
    new_secret,
    pool_toml,
    rds_mysql_secret,
)

ER_CON_COUNT_ERROR = 1040
ER_HANDSHAKE_ERROR = 1043
ER_BAD_DB_ERROR = 1049
ER_UNKNOWN_ERROR = 1105


@dataclass
class MyProxy:
    running: ProxyProcess
    solo_port: int  # a listener with one pool ("solo"): its greetings carry the server's thread id

    @property
    def port(self) -> int:
        return self.running.port


@pytest.fixture(scope="session")
async def my_proxy(
    launcher: ProxyLauncher,
    mariadb: ThrowawayMariaDB,
    mysql_users: MySqlUsers,
    sm_client: Any,
    tls: TlsFiles,
    wrong_tls: TlsFiles,
    known_secrets: Secrets,
) -> MyProxy:
    app = await new_secret(sm_client, rds_mysql_secret(mariadb, "app", mysql_users.app))
    wrong = await new_secret(sm_client, rds_mysql_secret(mariadb, "app", known_secrets.new_password()))
    upstream = f"127.0.0.1:{mariadb.port}"
    solo_port = free_port()

    def pool(name: str, secret: str, **settings: object) -> str:
        return pool_toml(name, secret, engine="mysql", **settings)

    config = "\n".join(
        [
            # host, port and dbname from the secret; TLS verified against the test CA.
            pool(
                "appdb",
                app,
                tls="verify-full",
                tls_ca_file=str(tls.ca_file),
                max_server_connections=8,
                borrow_timeout="3s",
            ),
            pool(
                "tiny",
                app,
                upstream=upstream,
                database="appdb",
                tls="verify-ca",
                tls_ca_file=str(tls.ca_file),
                max_server_connections=1,
                borrow_timeout="1s",
            ),
            pool("plain", app, upstream=upstream, database="appdb", tls="disable"),
            pool("badca", app, tls="verify-full", tls_ca_file=str(wrong_tls.ca_file)),
            pool("missing", "does/not/exist", upstream=upstream, tls="disable"),
            pool("wrongpw", wrong, upstream=upstream, tls="disable", borrow_timeout="1s"),
            pool(
                "solo",
                app,
                upstream=upstream,
                database="appdb",
                tls="disable",
                listen=f"127.0.0.1:{solo_port}",
                max_server_connections=3,
            ),
        ]
    )
    return MyProxy(launcher.start(config), solo_port)


def connect(proxy: MyProxy, database: str | None = "appdb", **extra: Any) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host="127.0.0.1",
        port=proxy.port,
        user="anyone",
        database=database,
        autocommit=True,
        connect_timeout=10,
        **extra,
    )


def one(conn: pymysql.Connection[Any], sql: str, *args: Any) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(sql, args or None)
        return cursor.fetchone()


def direct(mariadb: ThrowawayMariaDB, users: MySqlUsers) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host="127.0.0.1", port=mariadb.port, user="app", password=users.app, database="appdb", autocommit=True
    )


# --- real clients ---------------------------------------------------------------------------


def test_mariadb_cli_connects_without_password(my_proxy: MyProxy) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL")}
    result = subprocess.run(
        [
            "mariadb",
            "-h",
            "127.0.0.1",
            "-P",
            str(my_proxy.port),
            "-u",
            "whoever",
            "--batch",
            "--skip-column-names",
            "appdb",
            "-e",
            "SELECT CURRENT_USER(), VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS "
            "WHERE VARIABLE_NAME = 'Ssl_cipher'; SELECT 'second result'",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    # The secret's user, over verified TLS upstream; a multi-statement line gives two results.
    assert result.stdout.splitlines() == ["app@%\t1", "second result"]


def test_pymysql_queries_multi_statements_and_large_results(my_proxy: MyProxy) -> None:
    with connect(my_proxy, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS) as conn:
        assert one(conn, "SELECT CURRENT_USER()") == ("app@%",)
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1; SELECT 2, 3; DO 0")
            assert cursor.fetchall() == ((1,),)
            assert cursor.nextset() and cursor.fetchall() == ((2, 3),)
            cursor.execute("SELECT seq, REPEAT('x', 100) FROM seq_1_to_100000")
            rows = cursor.fetchall()
        assert len(rows) == 100_000 and rows[-1][0] == 100_000
        with pytest.raises(pymysql.err.ProgrammingError) as info:
            one(conn, "SELEC broken")
        assert info.value.args[0] == 1064
        assert one(conn, "SELECT 'still serving'") == ("still serving",)


def test_packets_larger_than_16_mib_pass_both_ways(my_proxy: MyProxy) -> None:
    blob = os.urandom(20 * 1024 * 1024)
    with connect(my_proxy, max_allowed_packet=64 * 1024 * 1024) as conn:
        with conn.cursor() as cursor:
            cursor.execute("INSERT INTO items (note, data) VALUES ('blob', %s)", (blob,))
            row_id = cursor.lastrowid
        fetched = one(conn, "SELECT data FROM items WHERE id = %s", row_id)[0]
    assert hashlib.sha256(fetched).digest() == hashlib.sha256(blob).digest()


def test_mysql_connector_binary_protocol_and_caching_sha2_client(my_proxy: MyProxy) -> None:
    conn = mysql.connector.connect(
        host="127.0.0.1",
        port=my_proxy.port,
        user="anyone",
        database="appdb",
        auth_plugin="caching_sha2_password",
        use_pure=True,
        ssl_disabled=True,
    )
    try:
        cursor = conn.cursor(prepared=True)
        cursor.execute("SELECT ? + 1, CONCAT(?, '!')", (41, "hi"))
        assert cursor.fetchall() == [(42, "hi!")]
        cursor.execute("SELECT ? + 1, CONCAT(?, '!')", (1, "again"))
        assert cursor.fetchall() == [(2, "again!")]
        cursor.execute("SELECT seq FROM seq_1_to_1000 WHERE seq > ?", (990,))
        assert [row[0] for row in cursor.fetchall()] == list(range(991, 1001))
        cursor.close()
    finally:
        conn.close()


async def test_aiomysql_transactions(my_proxy: MyProxy) -> None:
    conn = await aiomysql.connect(host="127.0.0.1", port=my_proxy.port, user="anyone", db="appdb")
    try:
        await conn.begin()
        async with conn.cursor() as cursor:
            await cursor.execute("INSERT INTO items (note) VALUES ('aiomysql')")
            row_id = cursor.lastrowid
        await conn.commit()
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT note FROM items WHERE id = %s", (row_id,))
            assert await cursor.fetchone() == ("aiomysql",)
    finally:
        conn.close()


def test_sysbench_oltp_read_write_through_the_proxy(my_proxy: MyProxy) -> None:
    sysbench = shutil.which("sysbench")
    assert sysbench, "sysbench is not installed (scripts/dev installs it: apt-get install sysbench)"
    common = [
        "--db-driver=mysql",
        "--mysql-host=127.0.0.1",
        f"--mysql-port={my_proxy.port}",
        "--mysql-user=anyone",
        "--mysql-password=",
        "--mysql-db=appdb",
        "--tables=2",
        "--table-size=2000",
    ]
    prepare = subprocess.run(
        [sysbench, "oltp_read_write", *common, "prepare"], capture_output=True, text=True, timeout=120
    )
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    run = subprocess.run(
        [sysbench, "oltp_read_write", *common, "--threads=4", "--time=5", "run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    subprocess.run([sysbench, "oltp_read_write", *common, "cleanup"], capture_output=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    # sysbench aborts (exit code != 0) on any error except deadlocks and lock-wait timeouts
    # (1213, 1020, 1205), which InnoDB may raise between its own threads on small tables.
    transactions = int(re.search(r"transactions:\s+(\d+)", run.stdout).group(1))
    assert transactions > 50, run.stdout


# --- TLS upstream -------------------------------------------------------------------------------


def test_upstream_tls_with_the_wrong_ca_is_refused(my_proxy: MyProxy) -> None:
    with pytest.raises(pymysql.err.OperationalError) as info:
        connect(my_proxy, "badca")
    code, message = info.value.args
    assert code == ER_UNKNOWN_ERROR
    assert 'pool "badca"' in message and "certificate" in message


# --- KILL ---------------------------------------------------------------------------------------


def test_kill_query_reaches_only_that_clients_query(my_proxy: MyProxy) -> None:
    with connect(my_proxy) as victim, connect(my_proxy) as bystander, connect(my_proxy) as killer:
        outcome: dict[str, Any] = {}

        def bystander_sleeps() -> None:
            started = time.monotonic()
            outcome["result"] = one(bystander, "SELECT SLEEP(2)")
            outcome["bystander"] = time.monotonic() - started

        thread = threading.Thread(target=bystander_sleeps)
        thread.start()
        victim_id = victim.thread_id()  # the id from the proxy's greeting
        timer = threading.Timer(0.5, lambda: one(killer, f"KILL QUERY {victim_id}"))
        timer.start()
        started = time.monotonic()
        try:
            result = one(victim, "SELECT SLEEP(20)")
            assert result == (1,)  # MariaDB: an interrupted SLEEP returns 1
        except pymysql.err.OperationalError as exc:
            assert exc.args[0] == 1317  # query interrupted
        assert time.monotonic() - started < 5
        timer.join()
        thread.join()
        # Not interrupted: SLEEP says so itself (0; 1 when killed), and the wait lasted (the
        # server's timer may end it a few ms before our clock reaches 2 s).
        assert outcome["result"] == (0,)
        assert outcome["bystander"] >= 1.9
        assert one(victim, "SELECT 1") == (1,)  # KILL QUERY leaves the connection
        with pytest.raises(pymysql.err.OperationalError) as info:
            one(killer, "KILL QUERY 1234567890")
        assert info.value.args[0] == 1094  # unknown thread id


def test_kill_connection_ends_that_client(my_proxy: MyProxy) -> None:
    with connect(my_proxy) as victim, connect(my_proxy) as killer:
        one(killer, f"KILL {victim.thread_id()}")
        with pytest.raises(pymysql.err.OperationalError):
            one(victim, "SELECT 1")
        assert one(killer, "SELECT 1") == (1,)


# --- pooling, reset and vanished clients ----------------------------------------------------------


def test_session_state_does_not_leak_to_the_next_client(my_proxy: MyProxy) -> None:
    with connect(my_proxy, "tiny") as first:
        upstream_id = one(first, "SELECT CONNECTION_ID()")[0]
        one(first, "SET @leak = 42, SESSION sql_mode = 'ANSI_QUOTES'")
        one(first, "CREATE TEMPORARY TABLE scratch (x INT)")
        one(first, "SELECT GET_LOCK('rotaproxy-test', 1)")
    with connect(my_proxy, "tiny") as second:
        assert one(second, "SELECT CONNECTION_ID()")[0] == upstream_id  # pooled: same server thread
        assert one(second, "SELECT @leak") == (None,)
        assert "ANSI_QUOTES" not in one(second, "SELECT @@SESSION.sql_mode")[0]
        with pytest.raises(pymysql.err.ProgrammingError) as info:
            one(second, "SELECT COUNT(*) FROM scratch")
        assert info.value.args[0] == 1146  # the temporary table went with the reset
        assert one(second, "SELECT IS_USED_LOCK('rotaproxy-test')") == (None,)


CLIENT_THAT_DIES = textwrap.dedent(
    """
    import sys, pymysql
    conn = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="x", database="tiny")
    conn.begin()
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO items (note) VALUES (%s)", (sys.argv[2],))
    print("inserted", flush=True)
    if sys.argv[3] == "busy":
        with conn.cursor() as cursor:
            cursor.execute("SELECT SLEEP(60)")
    else:
        sys.stdin.read()
    """
)


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_client_killed_inside_a_transaction_commits_nothing(
    my_proxy: MyProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers, state: str
) -> None:
    marker = f"killed-{state}-{time.monotonic_ns()}"
    kill_client_after_insert(CLIENT_THAT_DIES, str(my_proxy.port), marker, state, busy=state == "busy")
    with connect(my_proxy, "tiny") as conn:  # promptly: the busy query was killed, not waited out
        assert one(conn, "SELECT @@in_transaction") == (0,)
        assert one(conn, "SELECT COUNT(*) FROM items WHERE note = %s", marker) == (0,)
    with direct(mariadb, mysql_users) as conn:
        assert one(conn, "SELECT COUNT(*) FROM items WHERE note = %s", marker) == (0,)


def test_borrow_timeout_names_the_pool(my_proxy: MyProxy) -> None:
    with connect(my_proxy, "tiny"):
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as info:
            connect(my_proxy, "tiny")
        waited = time.monotonic() - started
    code, message = info.value.args
    assert code == ER_CON_COUNT_ERROR
    assert 'pool "tiny"' in message and "borrow_timeout 1s" in message
    assert 0.9 <= waited < 5


# --- bad input: clear errors, the proxy keeps serving ------------------------------------------


@pytest.mark.parametrize(
    ("database", "code", "fragments"),
    [
        ("nope", ER_BAD_DB_ERROR, ["Unknown database 'nope'"]),
        ("missing", ER_UNKNOWN_ERROR, ["'does/not/exist'", "does not exist"]),
        ("wrongpw", ER_UNKNOWN_ERROR, ['pool "wrongpw"', "Access denied", "1045"]),
    ],
)
def test_bad_setups_give_clear_errors(
    my_proxy: MyProxy, database: str, code: int, fragments: list[str]
) -> None:
    with pytest.raises(pymysql.err.OperationalError) as info:
        connect(my_proxy, database)
    assert info.value.args[0] == code, info.value.args
    for fragment in fragments:
        assert fragment in info.value.args[1]
    with connect(my_proxy) as conn:
        assert one(conn, "SELECT 1") == (1,)


def _read_packet(raw: socket.socket) -> tuple[int, bytes]:
    header = b""
    while len(header) < 4:
        chunk = raw.recv(4 - len(header))
        if not chunk:
            return -1, b""
        header += chunk
    length = int.from_bytes(header[:3], "little")
    payload = b""
    while len(payload) < length:
        chunk = raw.recv(length - len(payload))
        assert chunk, "closed mid-packet"
        payload += chunk
    return header[3], payload


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(b"\x01\x00\x00\x01garbage!", id="garbage-handshake"),
        pytest.param(b"\x20\x00\x00\x05" + bytes(32), id="wrong-sequence-id"),
        pytest.param(b"\xff\xff\xff\x01" + b"x" * 1000, id="oversized-then-gone"),
        pytest.param(
            struct.pack("<I", 32)[:3]
            + b"\x01"
            + struct.pack("<IIB", 0x0800 | 0x0200, 1 << 24, 45)
            + bytes(23),
            id="ssl-request",
        ),
    ],
)
def test_malformed_handshake_gets_an_error_or_a_clean_close(my_proxy: MyProxy, response: bytes) -> None:
    with socket.create_connection(("127.0.0.1", my_proxy.port), timeout=10) as raw:
        _, greeting = _read_packet(raw)
        assert greeting[0] == 10  # protocol version 10
        raw.sendall(response)
        raw.shutdown(socket.SHUT_WR)
        _, answer = _read_packet(raw)
        assert answer == b"" or answer[0] == 0xFF, answer  # an ERR packet, or closed
        if answer:
            assert struct.unpack_from("<H", answer, 1)[0] in (ER_HANDSHAKE_ERROR, 1156, 1153)
    with connect(my_proxy) as conn:
        assert one(conn, "SELECT 1") == (1,)


def test_proxy_connection_ids_are_its_own(my_proxy: MyProxy) -> None:
    with connect(my_proxy) as a, connect(my_proxy) as b:
        assert a.thread_id() != b.thread_id()
        assert a.thread_id() >= 1 << 30  # far from upstream thread ids, so KILL can tell them apart
        assert one(a, "SELECT CONNECTION_ID()")[0] < 1 << 30


def solo(proxy: MyProxy, **extra: Any) -> pymysql.Connection[Any]:
    """A client of the one-pool listener. Its greeting carries a server thread id when an
    idle connection of the kind most clients choose is there at once: give the last one's
    reset a moment (a round trip) first."""
    time.sleep(0.2)
    return pymysql.connect(
        host="127.0.0.1", port=proxy.solo_port, user="anyone", autocommit=True, connect_timeout=10, **extra
    )


def test_a_listener_of_one_pool_greets_with_the_server_thread_id(my_proxy: MyProxy) -> None:
    """Session mode, one pool: the connection is borrowed before the greeting, so thread_id()
    is CONNECTION_ID() and the Id in SHOW PROCESSLIST, as directly. (Borrowed with the
    capabilities most of the pool's clients choose: the first PyMySQL client teaches it.)"""
    solo(my_proxy).close()
    for _ in range(2):  # the second client gets the same, reset, server connection
        with solo(my_proxy) as conn:
            assert one(conn, "SELECT DATABASE()") == ("appdb",)  # no schema named: the pool's
            thread_id = conn.thread_id()
            assert one(conn, "SELECT CONNECTION_ID()") == (thread_id,)
            with conn.cursor() as cursor:
                cursor.execute("SHOW PROCESSLIST")
                ids = {row[0] for row in cursor.fetchall()}
            assert thread_id in ids


def test_kill_by_the_server_thread_id_ends_that_session_as_directly(
    my_proxy: MyProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers
) -> None:
    with solo(my_proxy) as victim, solo(my_proxy) as killer:
        one(killer, f"KILL {victim.thread_id()}")
        with pytest.raises(pymysql.err.OperationalError):
            one(victim, "SELECT 1")
        assert one(killer, "SELECT 1") == (1,)
    # A client killing its own connection gets what MariaDB itself answers.
    answers = []
    for conn in (direct(mariadb, mysql_users), solo(my_proxy)):
        with conn, pytest.raises(pymysql.err.OperationalError) as info:
            one(conn, f"KILL {conn.thread_id()}")
        answers.append(info.value.args[0])
    assert answers[0] == answers[1]
    with solo(my_proxy) as conn:  # and the pool goes on
        assert one(conn, "SELECT 1") == (1,)


def test_a_client_choosing_other_capabilities_keeps_the_thread_id_it_was_told(my_proxy: MyProxy) -> None:
    """The connection borrowed for the greeting has the capabilities most of the pool's
    clients choose. A client choosing others (CLIENT_FOUND_ROWS here) is served by a
    connection of its kind; the id it was greeted with still names its session, for KILL
    too, and the clients of the usual kind still get their own connection's id."""
    flags = pymysql.constants.CLIENT.FOUND_ROWS
    solo(my_proxy).close()  # (the pool learns what PyMySQL chooses)
    for _ in range(3):
        with solo(my_proxy) as usual:
            assert one(usual, "SELECT CONNECTION_ID()") == (usual.thread_id(),)
    with solo(my_proxy, client_flag=flags) as other, solo(my_proxy) as killer:
        with other.cursor() as cursor:  # CLIENT_FOUND_ROWS: matched rows, not changed ones
            cursor.execute("CREATE TEMPORARY TABLE t (x int)")
            cursor.execute("INSERT INTO t VALUES (1)")
            assert cursor.execute("UPDATE t SET x = 1") == 1
        one(killer, f"KILL {other.thread_id()}")
        with pytest.raises(pymysql.err.OperationalError):
            one(other, "SELECT 1")
    with solo(my_proxy) as usual:
        assert one(usual, "SELECT CONNECTION_ID()") == (usual.thread_id(),)


def test_a_greeted_client_that_never_answers_is_refused_and_frees_its_connection(my_proxy: MyProxy) -> None:
    """The server connection a one-pool listener borrows for a greeting waits at most 10 s
    (MariaDB's own connect_timeout) for the handshake response; everyone else is served."""
    time.sleep(0.2)  # (the last client's connection reset and idle: lent for the greeting)
    with socket.create_connection(("127.0.0.1", my_proxy.solo_port), timeout=20) as staller:
        _, greeting = _read_packet(staller)
        assert greeting[0] == 10
        thread_id = struct.unpack_from("<I", greeting, greeting.index(b"\0", 1) + 1)[0]
        assert thread_id < 1 << 30  # a server thread id: a connection waits for this client
        started = time.monotonic()
        with solo(my_proxy) as other:  # the pool has more: served meanwhile
            assert one(other, "SELECT 1") == (1,)
        _, answer = _read_packet(staller)
        assert 9 < time.monotonic() - started < 15
        assert answer[0] == 0xFF and struct.unpack_from("<H", answer, 1)[0] == ER_HANDSHAKE_ERROR
        assert b"no handshake response within 10 s" in answer
    for _ in range(4):  # more clients than the pool has connections, one after another
        with solo(my_proxy) as conn:
            assert one(conn, "SELECT 1") == (1,)


def test_a_pool_serves_every_schema_its_account_may_use(
    my_proxy: MyProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers
) -> None:
    """A pool is an upstream account: the handshake's schema becomes the client's current one
    (COM_INIT_DB), USE and COM_INIT_DB work as directly, the next client is back on the pool's
    own schema, and a schema the account may not use gets the server's own error."""
    mariadb.sql("CREATE DATABASE IF NOT EXISTS otherdb")
    mariadb.grant("ALL", "otherdb.*", "app")
    with solo(my_proxy, database="otherdb") as conn:
        assert one(conn, "SELECT DATABASE()") == ("otherdb",)
        one(conn, "USE appdb")
        assert one(conn, "SELECT DATABASE()") == ("appdb",)
        conn.select_db("otherdb")  # COM_INIT_DB
        assert one(conn, "SELECT DATABASE()") == ("otherdb",)
    with solo(my_proxy) as conn:
        assert one(conn, "SELECT DATABASE()") == ("appdb",)  # no schema named: the pool's
    errors = []
    for port, password in ((mariadb.port, mysql_users.app), (my_proxy.solo_port, None)):
        time.sleep(0.2)
        with pytest.raises(pymysql.err.OperationalError) as info:
            pymysql.connect(
                host="127.0.0.1",
                port=port,
                user="app",
                password=password,
                database="nosuchdb",
                connect_timeout=10,
            )
        errors.append(info.value.args)
    assert errors[0] == errors[1]  # (1044, "Access denied for user 'app'@'%' to database 'nosuchdb'")
    with solo(my_proxy) as conn:  # and the pool goes on
        assert one(conn, "SELECT DATABASE()") == ("appdb",)


def test_on_a_listener_of_several_pools_the_user_name_picks_the_pool(my_proxy: MyProxy) -> None:
    """Then the schema, as before; a client naming neither is told how pools are chosen."""
    with pytest.raises(pymysql.err.OperationalError) as info:  # "wrongpw" cannot log in upstream
        pymysql.connect(host="127.0.0.1", port=my_proxy.port, user="wrongpw", connect_timeout=10)
    assert 'pool "wrongpw"' in info.value.args[1]
    with pymysql.connect(host="127.0.0.1", port=my_proxy.port, user="plain", connect_timeout=10) as conn:
        assert one(conn, "SELECT DATABASE()") == ("appdb",)  # the pool's own schema
    with pytest.raises(pymysql.err.OperationalError) as info:
        pymysql.connect(host="127.0.0.1", port=my_proxy.port, user="anyone", connect_timeout=10)
    assert info.value.args[0] == 1046 and "by user name, then by schema" in info.value.args[1]


def test_tls_disable_connects_upstream_in_plain_text(my_proxy: MyProxy) -> None:
    with connect(my_proxy, "plain") as conn:
        assert one(conn, "SELECT CURRENT_USER()") == ("app@%",)
        assert one(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'") == ("Ssl_cipher", "")


def test_each_client_gets_its_own_character_set(my_proxy: MyProxy) -> None:
    with connect(my_proxy, "tiny", charset="latin1") as first:
        upstream_id = one(first, "SELECT CONNECTION_ID()")[0]
        assert one(first, "SELECT @@character_set_client, @@character_set_results") == ("latin1", "latin1")
        assert one(first, "SELECT %s", "café") == ("café",)  # round trip in the client's charset
    with connect(my_proxy, "tiny", charset="utf8mb4") as second:
        assert one(second, "SELECT CONNECTION_ID()")[0] == upstream_id
        assert one(second, "SELECT @@character_set_client, @@collation_connection")[0] == "utf8mb4"
        assert one(second, "SELECT %s", "🐘") == ("🐘",)


def test_change_user_is_refused_clearly_and_the_session_goes_on(my_proxy: MyProxy) -> None:
    conn = mysql.connector.connect(
        host="127.0.0.1",
        port=my_proxy.port,
        user="anyone",
        database="appdb",
        use_pure=True,
        ssl_disabled=True,
    )
    try:
        with pytest.raises(mysql.connector.Error) as info:
            conn.cmd_change_user(username="someone_else")
        assert info.value.errno == 1235
        assert "COM_CHANGE_USER is not supported by rotaproxy" in info.value.msg
        cursor = conn.cursor()
        cursor.execute("SELECT CURRENT_USER()")
        assert cursor.fetchall() == [("app@%",)]
    finally:
        conn.close()
