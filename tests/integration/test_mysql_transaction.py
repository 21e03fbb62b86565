"""MySQL transaction pooling through a real rotaproxy process in front of a real MariaDB, with
real clients (PyMySQL, aiomysql, mysql-connector's binary protocol, sysbench): many clients
share a few server connections; each client's settings, schema, LAST_INSERT_ID() and warnings
go with it from connection to connection; session state that cannot move pins its client;
KILL QUERY reaches its target wherever it runs; and a client receives what MariaDB itself
answers it directly."""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiomysql
import mysql.connector
import pymysql
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.process import free_port
from proxy.local.proxy_process import ProxyProcess
from tests.conftest import (
    MySqlUsers,
    ProxyLauncher,
    Secrets,
    get_json,
    metric,
    new_secret,
    pool_toml,
    rds_mysql_secret,
    scrape,
    wait_for,
)

ER_NO_SUCH_THREAD = 1094
ER_BAD_FIELD_ERROR = 1054
ER_SERVER_SHUTDOWN = 1053
ER_NO_SUCH_TABLE = 1146
ER_QUERY_INTERRUPTED = 1317
PROXY_IDS_FROM = 1 << 30  # the proxy's own connection ids: far above any server thread id
SERVER_QUERY_WAS_SLOW = 0x0800  # timing, not state: left out of the comparisons

OTHER_SCHEMA = "otherdb"  # a second schema the pools' account may USE
BENCH_SCHEMA = "txnbench"  # sysbench's tables, apart from test_mysql_proxy.py's
ROWS = "txn_rows"  # the load test's rows, tagged by the client that wrote them
LOCKED = "txn_locked"  # what LOCK TABLES locks
INSERTS = "txn_inserts"  # AUTO_INCREMENT ids for LAST_INSERT_ID()
LOAD_USER = "txn_load"  # the load pool's own account: its server connections are counted by user
SCRATCH = "diff_scratch"  # the differential's table, made afresh for each script
DIFF_OTHERS = "diff_others"  # the differential's other clients' table: no lock waits with the script's

# name → max_server_connections; each pool on a listener of its own, any user name.
POOLS = {
    "load": 5,
    "bench": 4,
    "settings": 1,
    "pins": 1,
    "locks": 1,
    "kill": 5,
    "kill_idle": 1,
    "insert_ids": 1,
    "warnings": 1,
    "tracking": 1,
    "reset": 1,
    "no_schema": 1,
}
# The differential's pools share one listener (the launcher's port): the user name picks one.
DIFF_POOLS = {"diff1": 1, "diff2": 2}

LOAD_SECONDS = 20.0  # the contract: 40 clients on a pool of 5 for 20 s
SETTINGS = (
    "SELECT @@time_zone, @@sql_mode, @@character_set_client, @@character_set_results,"
    " @@collation_connection, DATABASE()"
)


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def load_password(mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers, known_secrets: Secrets) -> str:
    """The schemas and tables these tests use, and the load pool's own account."""
    mariadb.sql(f"CREATE DATABASE IF NOT EXISTS {OTHER_SCHEMA}; CREATE DATABASE IF NOT EXISTS {BENCH_SCHEMA}")
    mariadb.grant("ALL", f"{OTHER_SCHEMA}.*", "app")
    mariadb.grant("ALL", f"{BENCH_SCHEMA}.*", "app")
    mariadb.sql(
        f"CREATE TABLE {ROWS} (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(64) NOT NULL,"
        " n INT NOT NULL, KEY (tag)) ENGINE=InnoDB;"
        f"CREATE TABLE {LOCKED} (x INT) ENGINE=InnoDB;"
        f"CREATE TABLE {INSERTS} (id INT AUTO_INCREMENT PRIMARY KEY, who VARCHAR(20)) ENGINE=InnoDB;"
        f"CREATE TABLE {DIFF_OTHERS} (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(10)) ENGINE=InnoDB;",
        database="appdb",
    )
    password = known_secrets.new_password()
    mariadb.create_user(LOAD_USER, password)
    mariadb.grant("ALL", "appdb.*", LOAD_USER)
    return password


@dataclass
class TxnProxy:
    running: ProxyProcess
    admin_port: int
    ports: dict[str, int]  # pool → its own listener
    secret: str  # the app account's secret, for the tests that start a proxy of their own

    def pool(self, name: str) -> dict[str, Any]:
        state: dict[str, Any] = get_json(self.admin_port, "/pools")[name]
        return state


def txn_settings(mariadb: ThrowawayMariaDB, size: int) -> dict[str, object]:
    return {
        "engine": "mysql",
        "mode": "transaction",
        "upstream": f"127.0.0.1:{mariadb.port}",
        "database": "appdb",
        "tls": "disable",
        "max_server_connections": size,
        "borrow_timeout": "10s",
    }


@pytest.fixture(scope="module")
async def txn(
    launcher: ProxyLauncher,
    mariadb: ThrowawayMariaDB,
    mysql_users: MySqlUsers,
    sm_client: Any,
    load_password: str,
) -> TxnProxy:
    app = await new_secret(sm_client, rds_mysql_secret(mariadb, "app", mysql_users.app))
    load = await new_secret(sm_client, rds_mysql_secret(mariadb, LOAD_USER, load_password))
    ports = {name: free_port() for name in POOLS}
    config = "".join(
        pool_toml(
            name,
            load if name == "load" else app,
            listen=f"127.0.0.1:{ports[name]}",
            **txn_settings(mariadb, size),
        )
        for name, size in POOLS.items()
    ) + "".join(pool_toml(name, app, **txn_settings(mariadb, size)) for name, size in DIFF_POOLS.items())
    admin_port = free_port()
    return TxnProxy(launcher.start(config, admin_port=admin_port), admin_port, ports, app)


def client(
    port: int, user: str = "anyone", database: str | None = "appdb", autocommit: bool = True, **extra: Any
) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user=user,
        database=database,
        autocommit=autocommit,
        connect_timeout=10,
        read_timeout=30,  # a hang is a failure, never a stuck suite
        **extra,
    )


def connect(txn: TxnProxy, pool: str, **extra: Any) -> pymysql.Connection[Any]:
    return client(txn.ports[pool], **extra)


def direct(mariadb: ThrowawayMariaDB, users: MySqlUsers, **extra: Any) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host="127.0.0.1",
        port=mariadb.port,
        user="app",
        password=users.app,
        database="appdb",
        autocommit=True,
        read_timeout=30,
        **extra,
    )


def as_root(mariadb: ThrowawayMariaDB) -> pymysql.Connection[Any]:
    """The server's administrator: sees every account's connections."""
    return pymysql.connect(
        host="127.0.0.1", port=mariadb.port, user="root", password=mariadb.root_password, autocommit=True
    )


def one(conn: pymysql.Connection[Any], sql: str, *args: Any) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(sql, args or None)
        return cursor.fetchone()


def rows(conn: pymysql.Connection[Any], sql: str, *args: Any) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(sql, args or None)
        return cursor.fetchall()


class Background:
    """``work()`` in a thread of its own: its answer (or exception), and when it came."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.answer: Any = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self.answer = work()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def result(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert self.done, f"no answer within {timeout}s"
        if self.error is not None:
            raise self.error
        return self.answer


def timed(conn: pymysql.Connection[Any], sql: str) -> Callable[[], tuple[Any, float]]:
    def run() -> tuple[Any, float]:
        started = time.monotonic()
        answer = one(conn, sql)
        return answer, time.monotonic() - started

    return run


@contextmanager
def watching(count: Callable[[], int], every: float = 0.2) -> Iterator[list[int]]:
    """Call ``count`` every ``every`` seconds while the block runs; the values seen."""
    seen: list[int] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def watch() -> None:
        try:
            while not stop.is_set():
                seen.append(count())
                stop.wait(every)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)
    assert failures == []


def server_connections(txn: TxnProxy, pool: str) -> int:
    """The pool's server connections in every state, logins in flight included."""
    by_state: dict[str, int] = txn.pool(pool)["server_connections"]["by_state"]
    return sum(by_state.values())


# --- many clients, few connections --------------------------------------------------------------


def test_forty_clients_of_three_drivers_share_five_server_connections(
    txn: TxnProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers
) -> None:
    """PyMySQL (autocommit, and explicit transactions with autocommit on and off), aiomysql
    and mysql-connector's server-side prepared statements: 40 clients on a pool of 5 for
    20 s. Every client checks every answer; every committed row is there afterwards."""
    run = f"load-{secrets.token_hex(3)}-"
    stop = threading.Event()
    errors: list[str] = []
    committed: dict[str, int] = {}  # rows each client has seen committed
    rounds: dict[str, int] = {}
    insert = f"INSERT INTO {ROWS} (tag, n) VALUES (%s, %s)"
    count = f"SELECT COUNT(*) FROM {ROWS} WHERE tag = %s"

    def pymysql_autocommit(tag: str) -> None:
        with connect(txn, "load") as conn, conn.cursor() as cursor:
            while not stop.is_set():
                cursor.execute(insert, (tag, committed[tag]))
                committed[tag] += 1
                cursor.execute(count, (tag,))
                assert cursor.fetchone() == (committed[tag],)
                rounds[tag] += 1

    def pymysql_transactions(tag: str, autocommit: bool) -> None:
        # With autocommit off (PyMySQL's default) the count after commit() opens the next
        # transaction, a read view MariaDB does not flag with SERVER_STATUS_IN_TRANS (only
        # @@in_transaction shows it), and the next BEGIN ends it.
        with connect(txn, "load", autocommit=autocommit) as conn, conn.cursor() as cursor:
            while not stop.is_set():
                conn.begin()
                cursor.executemany(insert, [(tag, committed[tag] + i) for i in range(3)])
                cursor.execute(count, (tag,))
                assert cursor.fetchone() == (committed[tag] + 3,)  # its own writes, not yet committed
                if rounds[tag] % 4 == 3:
                    conn.rollback()
                else:
                    conn.commit()
                    committed[tag] += 3
                cursor.execute(count, (tag,))
                assert cursor.fetchone() == (committed[tag],)
                rounds[tag] += 1

    async def aiomysql_client(tag: str) -> None:
        conn = await aiomysql.connect(
            host="127.0.0.1", port=txn.ports["load"], user="anyone", db="appdb", autocommit=True
        )
        try:
            while not stop.is_set():
                async with asyncio.timeout(30):
                    await conn.begin()
                    async with conn.cursor() as cursor:
                        await cursor.execute(insert, (tag, committed[tag]))
                        await cursor.execute(insert, (tag, committed[tag] + 1))
                    await conn.commit()
                    committed[tag] += 2
                    async with conn.cursor() as cursor:
                        await cursor.execute(count, (tag,))
                        assert await cursor.fetchone() == (committed[tag],)
                rounds[tag] += 1
        finally:
            conn.close()

    def prepared_statements(tag: str) -> None:
        conn = mysql.connector.connect(
            host="127.0.0.1",
            port=txn.ports["load"],
            user="anyone",
            database="appdb",
            use_pure=True,
            ssl_disabled=True,
            autocommit=True,
            connection_timeout=30,
        )
        try:
            # One cursor per statement: each is prepared once (COM_STMT_PREPARE) and then
            # executed (COM_STMT_EXECUTE, binary protocol) with new parameters every round.
            inserter, counter, echo = (conn.cursor(prepared=True) for _ in range(3))
            while not stop.is_set():
                inserter.execute(f"INSERT INTO {ROWS} (tag, n) VALUES (?, ?)", (tag, committed[tag]))
                committed[tag] += 1
                counter.execute(f"SELECT COUNT(*), COALESCE(SUM(n), 0) FROM {ROWS} WHERE tag = ?", (tag,))
                assert counter.fetchall() == [(committed[tag], sum(range(committed[tag])))]
                echo.execute("SELECT ? * 2, CONCAT(?, '!')", (rounds[tag], tag))
                assert echo.fetchall() == [(rounds[tag] * 2, tag + "!")]
                rounds[tag] += 1
        finally:
            conn.close()

    def guarded(tag: str, body: Callable[[], None]) -> None:
        try:
            body()
        except Exception as exc:
            errors.append(f"{tag}: {type(exc).__name__}: {exc}")

    def register(kind: str, index: int) -> str:
        tag = f"{run}{kind}-{index}"
        committed[tag] = rounds[tag] = 0
        return tag

    bodies: list[tuple[str, Callable[[], None]]] = []
    for index in range(14):
        tag = register("pymysql", index)
        bodies.append((tag, partial(pymysql_autocommit, tag)))
    for index in range(10):
        autocommit = index % 2 == 0
        tag = register(f"pymysql-txn-autocommit-{autocommit}", index)
        bodies.append((tag, partial(pymysql_transactions, tag, autocommit)))
    for index in range(6):
        tag = register("connector-prepared", index)
        bodies.append((tag, partial(prepared_statements, tag)))
    threads = [threading.Thread(target=guarded, args=body) for body in bodies]
    async_tags = [register("aiomysql", index) for index in range(10)]

    async def all_aiomysql() -> None:
        async def one_client(tag: str) -> None:
            try:
                await aiomysql_client(tag)
            except Exception as exc:
                errors.append(f"{tag}: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(one_client(tag) for tag in async_tags))

    threads.append(threading.Thread(target=lambda: asyncio.run(all_aiomysql())))

    with as_root(mariadb) as root, root.cursor() as processes:

        def upstream_connections() -> int:
            processes.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (LOAD_USER,)
            )
            return int(processes.fetchone()[0])

        with (
            watching(lambda: server_connections(txn, "load")) as in_pool,
            watching(upstream_connections) as upstream,
        ):
            for thread in threads:
                thread.start()
            time.sleep(LOAD_SECONDS)
            stop.set()
            for thread in threads:
                thread.join(40)
            assert not any(thread.is_alive() for thread in threads), "clients still busy 40 s after the end"
            opened = txn.pool("load")["opened_total"]

    assert errors == []
    assert min(rounds.values()) > 0, {tag: n for tag, n in rounds.items() if n == 0}  # nobody starved
    assert len(in_pool) >= 20 and len(upstream) >= 20  # the watchers watched the whole run
    assert max(in_pool) <= 5, in_pool
    assert max(upstream) <= 5, upstream  # as the server counts them
    # Never more than 5 opened at all: PyMySQL's clients (without CLIENT_MULTI_STATEMENTS) and
    # aiomysql's and mysql-connector's (with it) share the connections, none closed to make room.
    assert 1 <= opened <= 5
    with direct(mariadb, mysql_users) as conn:
        stored = dict(
            rows(conn, f"SELECT tag, COUNT(*) FROM {ROWS} WHERE tag LIKE %s GROUP BY tag", run + "%")
        )
    assert stored == committed  # every committed row, and no rolled-back one


def test_sysbench_oltp_read_write_32_threads_on_a_pool_of_4(txn: TxnProxy) -> None:
    sysbench = shutil.which("sysbench")
    assert sysbench, "sysbench is not installed (scripts/dev installs it: apt-get install sysbench)"
    common = [
        "--db-driver=mysql",
        "--mysql-host=127.0.0.1",
        f"--mysql-port={txn.ports['bench']}",
        "--mysql-user=anyone",
        "--mysql-password=",
        f"--mysql-db={BENCH_SCHEMA}",
        "--tables=2",
        "--table-size=2000",
        # Server-side prepared statements (COM_STMT_PREPARE/EXECUTE), each thread its own set,
        # all prepared before the first transaction: sysbench's default, said out loud.
        "--db-ps-mode=auto",
    ]
    prepare = subprocess.run(
        [sysbench, "oltp_read_write", *common, "prepare"], capture_output=True, text=True, timeout=120
    )
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    try:
        with watching(lambda: server_connections(txn, "bench")) as in_pool:
            run = subprocess.run(
                [sysbench, "oltp_read_write", *common, "--threads=32", "--time=10", "run"],
                capture_output=True,
                text=True,
                timeout=120,
            )
    finally:
        subprocess.run([sysbench, "oltp_read_write", *common, "cleanup"], capture_output=True, timeout=120)
    # sysbench exits non-zero on any error except deadlocks and lock-wait timeouts (1213, 1020,
    # 1205), which InnoDB may raise between its own threads on small tables.
    assert run.returncode == 0, run.stdout + run.stderr
    found = re.search(r"transactions:\s+(\d+)", run.stdout)
    assert found is not None and int(found.group(1)) > 50, run.stdout
    assert in_pool and max(in_pool) <= 4, in_pool


# --- what travels with the client, what pins it -------------------------------------------------


def test_settings_and_schema_go_with_their_client_from_transaction_to_transaction(
    txn: TxnProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers
) -> None:
    """Two clients take turns on the pool's only connection: each always sees its own
    time_zone, sql_mode, character set and schema, whatever the other set in between."""
    a_steps = (
        "SET time_zone = '+05:00'",
        "SET sql_mode = 'ANSI_QUOTES'",
        "SET NAMES latin1",
        f"USE {OTHER_SCHEMA}",
    )
    b_step = "SET time_zone = '-03:00'"
    with direct(mariadb, mysql_users) as fresh, direct(mariadb, mysql_users) as fresh_b:
        defaults = one(fresh, SETTINGS)
        a_expected = []
        for step in a_steps:
            one(fresh, step)
            a_expected.append(one(fresh, SETTINGS))
        one(fresh_b, b_step)
        b_expected = one(fresh_b, SETTINGS)
    assert len({defaults, *a_expected, b_expected}) == 6  # each step changes what SETTINGS shows

    with connect(txn, "settings") as a, connect(txn, "settings") as b:
        assert one(b, SETTINGS) == defaults
        one(b, b_step)
        for step, expected in zip(a_steps, a_expected, strict=True):
            one(a, step)
            assert one(b, SETTINGS) == b_expected, f"B after A's {step}"
            assert one(a, SETTINGS) == expected, f"A after its {step}"
        # In force, not only reported: under ANSI_QUOTES "x" names a column.
        with pytest.raises(pymysql.err.MySQLError) as info:
            one(a, 'SELECT "x"')
        assert info.value.args[0] == ER_BAD_FIELD_ERROR
        assert one(b, 'SELECT "x"') == ("x",)
        a.begin()
        assert one(a, SETTINGS) == a_expected[-1]  # A's next transaction
        assert one(a, "SELECT @@in_transaction") == (1,)
        a.commit()
        assert one(b, SETTINGS) == b_expected
    assert txn.pool("settings")["opened_total"] == 1  # one server connection served both


@pytest.mark.parametrize(
    ("statement", "probe", "kept"),
    [
        pytest.param("SET @x = 1", "SELECT @x", (1,), id="user-variable"),
        pytest.param(
            "CREATE TEMPORARY TABLE pinned_scratch (x INT)",
            "SELECT COUNT(*) FROM pinned_scratch",
            (0,),
            id="temporary-table",
        ),
    ],
)
def test_session_state_pins_its_client_and_never_reaches_the_next(
    txn: TxnProxy, statement: str, probe: str, kept: tuple[int]
) -> None:
    pins_before = sum(txn.pool("pins")["pins_total"].values())
    a = connect(txn, "pins")
    try:
        with connect(txn, "pins") as b:
            assert one(b, "SELECT 1") == (1,)  # logged in and served
            one(a, statement)

            def b_looks() -> tuple[Any, int | str]:
                variable = one(b, "SELECT @x")
                try:
                    one(b, "SELECT COUNT(*) FROM pinned_scratch")
                except pymysql.err.ProgrammingError as exc:
                    return variable, exc.args[0]
                return variable, "the temporary table is there"

            looks = Background(b_looks)
            time.sleep(1.0)
            assert not looks.done  # B waits: the only connection is pinned to A
            assert txn.pool("pins")["waiting"] == 1
            assert one(a, probe) == kept  # A's state is intact
            released = time.monotonic()
            a.close()
            assert looks.result(timeout=10) == ((None,), ER_NO_SUCH_TABLE)  # reset before B got it
            assert looks.finished_at is not None and looks.finished_at >= released
    finally:
        if a.open:
            a.close()
    assert sum(txn.pool("pins")["pins_total"].values()) == pins_before + 1


def test_lock_tables_pins_until_unlock_tables(txn: TxnProxy) -> None:
    pins_before = txn.pool("locks")["pins_total"]
    with connect(txn, "locks") as a, connect(txn, "locks") as b:
        assert one(b, "SELECT 1") == (1,)
        one(a, f"LOCK TABLES {LOCKED} WRITE")
        waiting = Background(lambda: one(b, "SELECT 1"))
        time.sleep(1.0)
        assert not waiting.done  # B waits: the connection holds A's table lock
        one(a, f"INSERT INTO {LOCKED} VALUES (1)")  # A works under its lock meanwhile
        unlocked = time.monotonic()
        one(a, "UNLOCK TABLES")
        # Served while A is still connected: A no longer holds the connection.
        assert waiting.result(timeout=10) == (1,)
        assert waiting.finished_at is not None and waiting.finished_at >= unlocked
        assert one(b, f"SELECT COUNT(*) FROM {LOCKED}")[0] >= 1  # the table is unlocked too
        assert one(a, "SELECT 1") == (1,)
    pins = txn.pool("locks")["pins_total"]
    reasons = [reason for reason in pins if "lock" in reason.lower()]
    assert len(reasons) == 1, pins
    assert pins[reasons[0]] == pins_before.get(reasons[0], 0) + 1
    exported = metric(
        scrape(txn.admin_port)[1], "rotaproxy_pins_total", pool="locks", engine="mysql", reason=reasons[0]
    )
    assert exported == pins[reasons[0]]


# --- KILL QUERY ---------------------------------------------------------------------------------


def test_kill_query_interrupts_its_target_wherever_it_runs_and_nothing_else(txn: TxnProxy) -> None:
    stop = threading.Event()
    problems: list[str] = []
    rounds = [0, 0, 0]

    def other(index: int) -> None:
        try:
            with connect(txn, "kill") as conn:
                while not stop.is_set():
                    assert one(conn, "SELECT SLEEP(0.02)") == (0,)  # 1 would be an interrupted sleep
                    assert one(conn, "SELECT %s", index) == (index,)
                    rounds[index] += 1
        except Exception as exc:
            problems.append(f"other client {index}: {type(exc).__name__}: {exc}")

    others = [threading.Thread(target=other, args=(index,)) for index in range(3)]
    for thread in others:
        thread.start()
    try:
        with (
            connect(txn, "kill") as victim,
            connect(txn, "kill") as bystander,
            connect(txn, "kill") as killer,
        ):
            ids = [conn.thread_id() for conn in (victim, bystander, killer)]
            assert len(set(ids)) == 3 and min(ids) >= PROXY_IDS_FROM  # the proxy's own ids
            sleeping = Background(timed(bystander, "SELECT SLEEP(2)"))

            def kill_victim() -> Any:
                time.sleep(1.0)  # SLEEP(3) is running by then
                return one(killer, f"KILL QUERY {victim.thread_id()}")

            kill = Background(kill_victim)
            started = time.monotonic()
            try:
                answer = one(victim, "SELECT SLEEP(3)")
            except pymysql.err.OperationalError as exc:
                answer = exc.args[0]
            assert answer in ((1,), ER_QUERY_INTERRUPTED)  # MariaDB: an interrupted SLEEP returns 1
            assert time.monotonic() - started < 2.5
            assert kill.result(timeout=10) is None  # OK
            answer, lasted = sleeping.result(timeout=10)
            # Not interrupted: SLEEP says so itself (0), and it lasted (MariaDB's timer may end
            # it a few ms before our clock reaches 2 s).
            assert answer == (0,) and lasted >= 1.9
            assert one(victim, "SELECT 1") == (1,)  # KILL QUERY leaves the client connected
    finally:
        stop.set()
        for thread in others:
            thread.join(10)
    assert problems == []
    assert min(rounds) > 0


def test_kill_of_a_pool_connections_thread_id_reaches_nobody(txn: TxnProxy) -> None:
    """A thread id the client saw (CONNECTION_ID()) names a pooled connection, which may serve
    another client by the time of the KILL: it is no such thread, and nothing is stopped."""
    with connect(txn, "kill") as a, connect(txn, "kill") as b:
        thread = one(a, "SELECT CONNECTION_ID()")[0]
        assert thread < 2**30  # the server's own id, not the proxy's
        sleeping = Background(lambda: one(a, "SELECT SLEEP(1)"))
        time.sleep(0.3)
        with pytest.raises(pymysql.err.MySQLError) as info:
            one(b, f"KILL QUERY {thread}")
        assert info.value.args[0] == ER_NO_SUCH_THREAD
        assert sleeping.result(timeout=10) == (0,)  # not interrupted


def test_kill_query_of_a_client_running_nothing_interrupts_nobody(
    txn: TxnProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers
) -> None:
    with direct(mariadb, mysql_users) as idle, direct(mariadb, mysql_users) as killer:
        direct_answer = one(killer, f"KILL QUERY {idle.thread_id()}")
        assert one(idle, "SELECT 1") == (1,)
    with (
        connect(txn, "kill_idle") as idle,
        connect(txn, "kill_idle") as busy,
        connect(txn, "kill_idle") as killer,
    ):
        assert one(idle, "SELECT 1") == (1,)  # the idle client was last on the only connection
        sleeping = Background(timed(busy, "SELECT SLEEP(2)"))  # now someone else runs there
        time.sleep(0.5)
        assert one(killer, f"KILL QUERY {idle.thread_id()}") == direct_answer  # OK, as directly
        answer, lasted = sleeping.result(timeout=10)
        assert answer == (0,) and lasted >= 1.9
        assert one(idle, "SELECT 1") == (1,)


# --- what each client is told about itself -----------------------------------------------------


def test_last_insert_id_is_each_clients_own(
    txn: TxnProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers
) -> None:
    with direct(mariadb, mysql_users) as fresh:
        never_inserted = one(fresh, "SELECT LAST_INSERT_ID()")
    clients = [connect(txn, "insert_ids") for _ in range(3)]
    try:
        for round_ in range(4):
            inserted = []
            for index, conn in enumerate(clients):  # each insert takes the connection from the last
                if round_ % 2:
                    conn.begin()
                with conn.cursor() as cursor:
                    cursor.execute(f"INSERT INTO {INSERTS} (who) VALUES (%s)", (f"client {index}",))
                    inserted.append(cursor.lastrowid)
                if round_ % 2:
                    conn.commit()
            assert len(set(inserted)) == 3
            for conn, row_id in zip(clients, inserted, strict=True):
                assert one(conn, "SELECT LAST_INSERT_ID()") == (row_id,)
        with connect(txn, "insert_ids") as newcomer:
            assert one(newcomer, "SELECT LAST_INSERT_ID()") == never_inserted
    finally:
        for conn in clients:
            conn.close()
    assert txn.pool("insert_ids")["opened_total"] == 1  # they did share the one connection


def test_row_count_is_each_clients_own_in_text_and_binary_protocol(
    txn: TxnProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers
) -> None:
    # Three clients on one server connection: each inserts its own number of rows, then reads
    # ROW_COUNT() after the others' inserts ran there, as SELECT ROW_COUNT() (PyMySQL) and as
    # a statement mysql-connector prepared once and executes again (binary protocol).
    def rounds(open_text: Callable[[], Any], open_binary: Callable[[], Any]) -> list[Any]:
        seen: list[Any] = []
        texts = [open_text() for _ in range(3)]
        binary = open_binary()
        try:
            reader = binary.cursor(prepared=True)
            reader.execute("SELECT ROW_COUNT()")
            seen.append(reader.fetchall())  # (after its own prepare)
            for round_ in range(2):
                for index, conn in enumerate(texts):
                    values = ", ".join(["(%s)"] * (index + 1))
                    one(conn, f"INSERT INTO {INSERTS} (who) VALUES {values}", *[f"rc {index}"] * (index + 1))
                with binary.cursor() as writer:
                    writer.execute(f"DELETE FROM {INSERTS} WHERE who = 'rc 2' LIMIT {round_ + 1}")
                for conn in texts:
                    seen.append(one(conn, "SELECT ROW_COUNT() AS n"))
                    seen.append(one(conn, "SELECT ROW_COUNT()"))  # (-1: the one before was a SELECT)
                reader.execute("SELECT ROW_COUNT()")
                seen.append(reader.fetchall())
        finally:
            for conn in texts:
                conn.close()
            binary.close()
        return seen

    def connector(port: int, **login: Any) -> Any:
        return mysql.connector.connect(
            host="127.0.0.1",
            port=port,
            database="appdb",
            use_pure=True,
            ssl_disabled=True,
            autocommit=True,
            **login,
        )

    expected = rounds(
        partial(direct, mariadb, mysql_users),
        partial(connector, mariadb.port, user="app", password=mysql_users.app),
    )
    assert expected[1:4] == [(1,), (-1,), (2,)]  # (what MariaDB says)
    got = rounds(
        partial(connect, txn, "insert_ids"), partial(connector, txn.ports["insert_ids"], user="anyone")
    )
    assert got == expected
    assert txn.pool("insert_ids")["opened_total"] == 1  # they did share the one connection


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("SELECT CAST('abc' AS INTEGER)", id="warning"),  # 1292 Truncated incorrect INTEGER value
        pytest.param("SELECT CAST('abc' AS INTEGER), CAST('def' AS INTEGER)", id="two warnings"),
        pytest.param("SELEC 1", id="error"),  # SHOW WARNINGS lists the last statement's error too
    ],
)
def test_show_warnings_shows_the_clients_own(
    txn: TxnProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers, statement: str
) -> None:
    def a_runs(conn: pymysql.Connection[Any]) -> int:
        with conn.cursor() as cursor:
            try:
                cursor.execute(statement)
            except pymysql.err.ProgrammingError as exc:
                return int(exc.args[0])
            return int(cursor.warning_count)

    with direct(mariadb, mysql_users) as a, direct(mariadb, mysql_users) as b:
        expected = (a_runs(a), one(b, "SELECT 1"), rows(a, "SHOW WARNINGS"), rows(b, "SHOW WARNINGS"))
        expected_count = one(a, "SELECT @@warning_count")
    assert len(expected[2]) == expected_count[0] >= 1 and expected[3] == ()  # (A's alone)
    with connect(txn, "warnings") as a, connect(txn, "warnings") as b:
        # B's warning-free statement runs between A's statement and A's SHOW WARNINGS.
        got = (a_runs(a), one(b, "SELECT 1"), rows(a, "SHOW WARNINGS"), rows(b, "SHOW WARNINGS"))
        assert got == expected
        assert one(a, "SELECT @@warning_count") == expected_count


def test_the_clients_own_session_tracking_settings_are_refused_clearly(
    txn: TxnProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers
) -> None:
    """The proxy follows each client's state through the server's session tracking: a client
    may not turn it off or change it. MariaDB itself accepts every one of these."""
    statements = [
        "SET session_track_system_variables = '*'",
        "SET SESSION session_track_state_change = OFF",
        "SET @@session.session_track_schema = 0",
        "SET time_zone = '+01:00', session_track_transaction_info = 'STATE'",
    ]
    with direct(mariadb, mysql_users) as conn:
        default_zone = one(conn, "SELECT @@time_zone")
        for statement in statements:
            one(conn, statement)
    with connect(txn, "tracking") as a, connect(txn, "tracking") as b:
        for statement in statements:
            with pytest.raises(pymysql.err.MySQLError) as info:
                one(a, statement)
            message = info.value.args[1]
            assert "rotaproxy" in message and re.search(r"session[ _]track", message, re.IGNORECASE), message
            assert one(a, "SELECT 1") == (1,)  # the connection goes on
        assert one(a, "SELECT @@time_zone") == default_zone  # the refused SET changed nothing
        # And the proxy still follows A's settings across B's turns.
        one(a, "SET time_zone = '+05:00'")
        assert one(b, "SELECT @@time_zone") == default_zone
        assert one(a, "SELECT @@time_zone") == ("+05:00",)


def test_com_reset_connection_resets_that_clients_session(
    txn: TxnProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers
) -> None:
    with direct(mariadb, mysql_users) as fresh:
        defaults = one(fresh, "SELECT @@time_zone, @x")
    conn = mysql.connector.connect(
        host="127.0.0.1",
        port=txn.ports["reset"],
        user="anyone",
        database="appdb",
        use_pure=True,
        ssl_disabled=True,
        autocommit=True,
        connection_timeout=30,
    )

    def state() -> Any:
        cursor = conn.cursor()
        cursor.execute("SELECT @@time_zone, @x")
        return cursor.fetchone()

    try:
        with connect(txn, "reset") as other:
            conn.cursor().execute("SET time_zone = '+05:00'")
            assert one(other, "SELECT 1") == (1,)  # takes the only connection in between
            assert state() == ("+05:00", defaults[1])
            assert one(other, "SELECT 1") == (1,)
            assert conn.cmd_reset_connection() is True  # (False when it got an error)
            assert one(other, "SELECT 1") == (1,)
            assert state() == defaults  # not the +05:00 the proxy had been carrying for it
            conn.cursor().execute("SET @x = 7")  # pins
            assert state() == (defaults[0], 7)
            assert conn.cmd_reset_connection() is True
            assert state() == defaults
            # Nothing is left to pin: the other client is served while this one stays connected.
            assert Background(lambda: one(other, "SELECT 2")).result(timeout=5) == (2,)
    finally:
        conn.close()


def test_a_client_without_a_schema_can_choose_one_with_use(txn: TxnProxy) -> None:
    with connect(txn, "no_schema", database=None) as conn, connect(txn, "no_schema") as other:
        one(conn, "USE appdb")
        assert one(conn, "SELECT DATABASE()") == ("appdb",)
        one(other, f"USE {OTHER_SCHEMA}")  # on the same connection, in between
        note = f"no-schema-{secrets.token_hex(3)}"
        one(conn, "INSERT INTO items (note) VALUES (%s)", note)  # appdb.items: otherdb has none
        assert one(conn, "SELECT COUNT(*) FROM items WHERE note = %s", note) == (1,)
        assert one(conn, "SELECT DATABASE()") == ("appdb",)
        assert one(other, "SELECT DATABASE()") == (OTHER_SCHEMA,)


# --- the whole answer, as MariaDB gives it (differential) --------------------------------------

RESET = (
    f"DROP TABLE IF EXISTS {SCRATCH}",
    f"CREATE TABLE {SCRATCH} (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(10) NOT NULL) ENGINE=InnoDB",
    f"INSERT INTO {SCRATCH} (note) VALUES ('one'), ('two')",
)
EXAMPLES = settings.default.max_examples if settings.get_current_profile_name() == "long" else 30
STATE = SETTINGS + ", @@autocommit, @@in_transaction, @x"
# Statements that use no table and leave no conditions: MariaDB keeps showing the previous
# statement's warnings after them.
TABLE_FREE_STATEMENTS = [
    "SELECT 1",
    STATE,
    "SET time_zone = '+05:00'",
    "SET SESSION sql_mode = 'ANSI_QUOTES'",
    "SET sql_mode = ''",  # not strict: a value too long is cut with a warning
    "SET sql_mode = DEFAULT",
    "SET NAMES latin1",
    "SET NAMES utf8mb4",
    "SET autocommit = 0",
    "SET autocommit = 1",
    "SET @x = 5",
    "SELECT @x",
    f"USE {OTHER_SCHEMA}",
    "USE appdb",
    "SELECT DATABASE()",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SELECT LAST_INSERT_ID()",
    "SELECT ROW_COUNT()",
    "SELECT 1; SELECT 2",
]
DIAGNOSTIC_READ_STATEMENTS = ["SHOW WARNINGS", "SELECT @@warning_count", "SHOW COUNT(*) WARNINGS"]
STATEMENTS = [
    *TABLE_FREE_STATEMENTS,
    *DIAGNOSTIC_READ_STATEMENTS,
    f"INSERT INTO {SCRATCH} (note) VALUES ('new')",
    f"INSERT INTO {SCRATCH} (note) VALUES ('x'), ('y')",  # info: Records: 2  Duplicates: 0 ...
    f"INSERT INTO {SCRATCH} (id, note) VALUES (1, 'dup')",  # 1062
    f"INSERT INTO {SCRATCH} (note) VALUES (REPEAT('z', 30))",  # 1406, or a warning
    f"INSERT INTO {SCRATCH} (note) VALUES (REPEAT('z', 30)), (REPEAT('y', 40))",  # 1406, or 2 warnings
    f"UPDATE {SCRATCH} SET note = CONCAT(note, '+') WHERE id <= 2",  # info: Rows matched ...
    f"DELETE FROM {SCRATCH} WHERE id = 3",
    f"SELECT id, note FROM {SCRATCH} ORDER BY id",
    f"SELECT id FROM {SCRATCH} ORDER BY id FOR UPDATE",
    f'SELECT "note" FROM {SCRATCH} ORDER BY id',  # a string, or the column under ANSI_QUOTES
    "SELECT CAST('abc' AS INTEGER)",  # warning 1292
    "SELECT 1 / 0",  # warning 1365 (ERROR_FOR_DIVISION_BY_ZERO is in the default sql_mode)
    f"SELECT COUNT(*) FROM {SCRATCH}; SELEC 2",  # an error in the second result
    "SELEC 1",
    "SELECT * FROM no_such_table",
    "CREATE TEMPORARY TABLE diff_temp (x INT)",
    "SELECT COUNT(*) FROM diff_temp",
]
SCRIPT_TIMEOUT = 10.0
DIAGNOSTIC_READS = frozenset(DIAGNOSTIC_READ_STATEMENTS)
TABLE_FREE = frozenset(TABLE_FREE_STATEMENTS)


def within_known_limits(statements: tuple[str, ...]) -> bool:
    """False for the one script shape where the pool is known to answer differently
    (docs/architecture.md, MySQL transaction mode, Diagnostics): warnings read after a
    statement that uses no table and reports none, which followed the statement that left
    them. MariaDB shows them still; through the pool, a client that moved to another
    connection in between gets none (the proxy cannot tell a statement that uses a table,
    which ends them, from one that does not)."""
    seen_other = between_free = False
    for statement in statements:
        if statement in DIAGNOSTIC_READS:
            if seen_other and between_free:
                return False
        elif statement in TABLE_FREE:
            between_free = seen_other
        else:
            seen_other, between_free = True, False
    return True


@dataclass(frozen=True)
class Case:
    statements: tuple[str, ...]
    pool: str = "diff1"


cases = st.builds(
    Case,
    statements=st.lists(st.sampled_from(STATEMENTS), min_size=1, max_size=12).map(tuple),
    pool=st.sampled_from(sorted(DIFF_POOLS)),
)


def outcome(conn: pymysql.Connection[Any], statement: str) -> tuple[Any, ...]:
    """Everything PyMySQL tells of one statement: each result's columns, rows, row count,
    insert id, warning count and info string, an error's class, code and message, and the
    server status the client is left with."""
    results: list[Any] = []
    with conn.cursor() as cursor:
        try:
            cursor.execute(statement)
            while True:
                info = cursor._result.message if cursor._result is not None else None  # (no public API)
                results.append(
                    (
                        cursor.description,
                        cursor.fetchall(),
                        cursor.rowcount,
                        cursor.lastrowid,
                        cursor.warning_count,
                        info,
                    )
                )
                if not cursor.nextset():
                    break
        except pymysql.err.MySQLError as exc:
            results.append((type(exc).__name__, exc.args))
    return statement, results, conn.server_status & ~SERVER_QUERY_WAS_SLOW


def run_script(conn: pymysql.Connection[Any], case: Case) -> list[tuple[Any, ...]]:
    return [outcome(conn, statement) for statement in case.statements]


def other_round(conn: pymysql.Connection[Any]) -> tuple[Any, ...]:
    """What another client on the pool does meanwhile, and what it must see: its own insert
    id, the server's defaults, its own warning."""
    conn.begin()
    with conn.cursor() as cursor:
        cursor.execute(f"INSERT INTO {DIFF_OTHERS} (note) VALUES ('other')")
        inserted = cursor.lastrowid
    own_id = one(conn, "SELECT LAST_INSERT_ID()") == (inserted,)
    conn.commit()
    state = one(conn, STATE)
    with conn.cursor() as cursor:
        cursor.execute("SELECT CAST('other' AS INTEGER)")
        warned = cursor.warning_count
    return own_id, state, warned, rows(conn, "SHOW WARNINGS")


@dataclass
class Differential:
    txn: TxnProxy
    mariadb: ThrowawayMariaDB
    users: MySqlUsers = field(repr=False)
    other_expected: tuple[Any, ...] = ()

    def __repr__(self) -> str:  # hypothesis prints its arguments: never a password
        return "Differential(...)"

    def direct(self) -> pymysql.Connection[Any]:
        return direct(self.mariadb, self.users, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)

    def pooled(self, case: Case) -> pymysql.Connection[Any]:
        return client(
            self.txn.running.port, user=case.pool, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS
        )

    def reset(self) -> None:
        with direct(self.mariadb, self.users) as conn:
            one(conn, "SET SESSION lock_wait_timeout = 10")  # a connection left holding locks: fail, not hang
            for statement in RESET:
                one(conn, statement)


@pytest.fixture(scope="module")
def differential(txn: TxnProxy, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers) -> Differential:
    found = Differential(txn, mariadb, mysql_users)
    with direct(mariadb, mysql_users) as conn:
        found.other_expected = other_round(conn)
    assert found.other_expected[0] is True and found.other_expected[2] == 1
    return found


@contextmanager
def others_running(differential: Differential, case: Case) -> Iterator[list[str]]:
    """Another client doing rounds on the case's pool until the block ends; its problems."""
    problems: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        try:
            with differential.pooled(case) as conn:
                for _ in range(1000):  # bounded: a script is far shorter
                    if stop.is_set():
                        return
                    got = other_round(conn)
                    if got != differential.other_expected:
                        problems.append(f"other client got {got}, directly {differential.other_expected}")
                        return
        except Exception as exc:
            problems.append(f"other client: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield problems
    finally:
        stop.set()
        thread.join(SCRIPT_TIMEOUT)
        if thread.is_alive():
            problems.append(f"other client still busy {SCRIPT_TIMEOUT}s after the script")


def check(differential: Differential, case: Case) -> None:
    differential.reset()
    with differential.direct() as conn:
        expected = run_script(conn, case)
    differential.reset()
    with others_running(differential, case) as problems, differential.pooled(case) as conn:
        got = run_script(conn, case)
    index = next((i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b), None)
    assert index is None, (
        f"{case} answered differently at statement {index}:\n"
        f"directly:      {expected[index]}\nthrough pool: {got[index]}"
    )
    assert problems == [], f"{case}: {problems}"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases)
# MariaDB leaves SERVER_STATUS_IN_TRANS clear after a SELECT under autocommit = 0, though the
# transaction (and its row locks, with FOR UPDATE) is open: @@in_transaction is 1.
@example(
    case=Case(
        (
            "SET autocommit = 0",
            f"SELECT id FROM {SCRATCH} ORDER BY id FOR UPDATE",
            STATE,
            "SELECT 1",
            STATE,
            "COMMIT",
            STATE,
        )
    )
)
@example(
    case=Case(
        (
            "SELECT CAST('abc' AS INTEGER)",
            "SELECT 1",
            "SELECT CAST('abc' AS INTEGER)",
            "SHOW WARNINGS",
            "SELECT @@warning_count",
            "SELEC 1",
            "SHOW WARNINGS",
        )
    )
)
@example(
    case=Case(
        (
            f"INSERT INTO {SCRATCH} (note) VALUES ('new')",
            "SELECT LAST_INSERT_ID()",
            "SET time_zone = '+05:00'",
            "SET NAMES latin1",
            f"USE {OTHER_SCHEMA}",
            STATE,
            "BEGIN",
            "USE appdb",
            f"INSERT INTO {SCRATCH} (id, note) VALUES (1, 'dup')",
            f"INSERT INTO {SCRATCH} (note) VALUES ('x'), ('y')",
            "ROLLBACK",
            f"SELECT id, note FROM {SCRATCH} ORDER BY id",
            STATE,
        ),
        pool="diff2",
    )
)
@example(  # two warnings, counted wherever the client runs next (SIGNAL raises one again)
    case=Case(
        (
            "SET sql_mode = ''",
            f"INSERT INTO {SCRATCH} (note) VALUES (REPEAT('z', 30)), (REPEAT('y', 40))",
            "SELECT @@warning_count",
            "SHOW COUNT(*) WARNINGS",
            "SHOW WARNINGS",
        )
    )
)
@example(  # ROW_COUNT() after the other client's round took the connection: the script's own
    case=Case(
        (
            f"INSERT INTO {SCRATCH} (note) VALUES ('x'), ('y')",
            "SELECT ROW_COUNT()",
            f"UPDATE {SCRATCH} SET note = CONCAT(note, '+') WHERE id <= 2",
            "SELECT 1",
            "SELECT ROW_COUNT()",
        )
    )
)
@pytest.mark.timeout(120 if EXAMPLES <= 30 else 60 * 60)  # (--long: 1,000 scripts, ~0.3 s each)
def test_every_script_is_answered_through_the_pool_as_mariadb_answers_it(
    differential: Differential, case: Case
) -> None:
    assume(within_known_limits(case.statements))
    check(differential, case)


def test_the_known_limit_is_the_only_shape_left_out() -> None:
    # The filter keeps what the pool answers exactly: warnings read right after their
    # statement, or after statements that use a table.
    warn, show = "SELECT CAST('abc' AS INTEGER)", "SHOW WARNINGS"
    assert within_known_limits((warn, show, "SELECT @@warning_count"))
    assert within_known_limits((warn, f"DELETE FROM {SCRATCH} WHERE id = 3", show))
    assert not within_known_limits((warn, "SELECT 1", show))


# --- the pool as the operator sees it; shutdown and reload ------------------------------------


def test_pools_reports_the_mysql_pool_in_transaction_mode(txn: TxnProxy) -> None:
    pool = txn.pool("load")
    assert (pool["engine"], pool["mode"]) == ("mysql", "transaction")
    assert (pool["settings"]["engine"], pool["settings"]["mode"]) == ("mysql", "transaction")


def test_sigterm_lets_an_open_transaction_finish_then_says_goodbye(
    launcher: ProxyLauncher, mariadb: ThrowawayMariaDB, txn: TxnProxy
) -> None:
    running = launcher.start(
        pool_toml("txn_stop", txn.secret, **txn_settings(mariadb, 2)), head='shutdown_timeout = "10s"\n\n'
    )
    note = f"stop-{secrets.token_hex(3)}"
    idle, busy = client(running.port), client(running.port)
    try:
        assert one(idle, "SELECT 1") == (1,)
        busy.begin()
        one(busy, "INSERT INTO items (note) VALUES (%s)", note)
        assert running.process is not None
        running.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down" in running.logs(), 10, "the shutdown begun")
        # Inside its transaction the client carries on to its COMMIT...
        one(busy, "INSERT INTO items (note) VALUES (%s)", note)
        one(busy, "SELECT SLEEP(0.3)")
        busy.commit()
        # ...then, like the idle one, is told at its next command.
        for conn in (busy, idle):
            with pytest.raises(pymysql.err.OperationalError) as info:
                one(conn, "SELECT 1")
            assert info.value.args[0] == ER_SERVER_SHUTDOWN
        assert running.process.wait(timeout=10) == 0
    finally:
        for conn in (idle, busy):
            if conn.open:
                conn.close()
    assert mariadb.sql(f"SELECT COUNT(*) FROM items WHERE note = '{note}'", database="appdb") == "2"


def test_sighup_moves_transaction_mode_clients_with_their_settings(
    launcher: ProxyLauncher, mariadb: ThrowawayMariaDB, txn: TxnProxy
) -> None:
    admin_port = free_port()

    def config(size: int) -> str:
        return pool_toml("txn_reload", txn.secret, **txn_settings(mariadb, size))

    running = launcher.start(config(2), admin_port=admin_port)
    note = f"reload-{secrets.token_hex(3)}"
    with client(running.port) as idle, client(running.port) as in_transaction:
        one(idle, "SET time_zone = '+05:00'")
        in_transaction.begin()
        one(in_transaction, "INSERT INTO items (note) VALUES (%s)", note)
        running.config_path.write_text(launcher.render(config(3), port=running.port, admin_port=admin_port))
        assert running.process is not None
        running.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded " in running.logs(), 10, "the reload")
        assert get_json(admin_port, "/pools")["txn_reload"]["max_server_connections"] == 3
        # The open transaction finishes; both clients go on, each with its own session.
        one(in_transaction, "INSERT INTO items (note) VALUES (%s)", note)
        in_transaction.commit()
        assert one(in_transaction, "SELECT COUNT(*) FROM items WHERE note = %s", note) == (2,)
        assert one(idle, "SELECT @@time_zone") == ("+05:00",)
        wait_for(
            lambda: (
                'pool "txn_reload" (replaced by the reload) closed: 2 client sessions left or moved, 0 cut'
                in running.logs()
            ),
            10,
            "the old pool closed, both clients moved",
        )
    running.stop()
