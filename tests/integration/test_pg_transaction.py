"""PostgreSQL transaction pooling through a real rotaproxy process, with real clients:
many clients share few server connections, settings travel with their client, session
state pins, and nothing leaks between clients."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port
from proxy.local.proxy_process import ProxyProcess
from tests.conftest import (
    ProxyLauncher,
    Users,
    get_json,
    kill_client_after_insert,
    metric,
    new_secret,
    pool_toml,
    post_json,
    rds_secret,
    scrape,
    wait_for,
)
from tests.unit.test_build import expected_build

ADMIN_PORT = free_port()
# The issue asks for 20 s of driver load; the two drivers' runs take 40 s of the suite.
LOAD_SECONDS = 20.0


@pytest.fixture(scope="session")
async def txn_proxy(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any
) -> ProxyProcess:
    secret = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    upstream = f"127.0.0.1:{pg.port}"
    common = {
        "engine": "postgres",
        "mode": "transaction",
        "upstream": upstream,
        "database": "appdb",
        "tls": "disable",
    }
    return launcher.start(
        pool_toml("txn", secret, max_server_connections=3, borrow_timeout="10s", **common)
        + pool_toml("txn1", secret, max_server_connections=1, borrow_timeout="10s", **common)
        + pool_toml("txn5", secret, max_server_connections=5, borrow_timeout="10s", **common)
        + pool_toml("txn10", secret, max_server_connections=10, borrow_timeout="10s", **common)
        + pool_toml("txn_leave", secret, max_server_connections=4, borrow_timeout="10s", **common)
        + pool_toml("txn_metrics", secret, max_server_connections=2, **common)
        + pool_toml("txn_keep", secret, max_server_connections=1, borrow_timeout="10s", **common)
        + pool_toml("txn_short", secret, max_server_connections=1, borrow_timeout="1s", **common)
        + pool_toml(
            "txn_idle",
            secret,
            max_server_connections=1,
            borrow_timeout="10s",
            idle_transaction_timeout="1s",
            **common,
        ),
        admin_port=ADMIN_PORT,
    )


def connect(proxy: ProxyProcess, database: str = "txn", **extra: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(
        f"host=127.0.0.1 port={proxy.port} dbname={database} user=x connect_timeout=10",
        autocommit=True,
        **extra,
    )


def test_many_clients_share_a_few_server_connections(txn_proxy: ProxyProcess) -> None:
    clients = [connect(txn_proxy) for _ in range(20)]
    try:
        pids = set()
        for _ in range(3):
            for conn in clients:
                with conn.transaction():
                    conn.execute("INSERT INTO items (note) VALUES ('txn')")
                    pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        assert 1 <= len(pids) <= 3  # 20 clients, at most 3 server connections
        # The client is told a process id of the proxy's own, not a backend's.
        assert all(conn.info.backend_pid not in pids for conn in clients)
    finally:
        for conn in clients:
            conn.close()


def test_each_client_keeps_its_own_settings(txn_proxy: ProxyProcess) -> None:
    with (
        connect(txn_proxy, "txn1", application_name="alpha", options="-c DateStyle=German") as a,
        connect(txn_proxy, "txn1", application_name="beta") as b,
    ):
        for _ in range(3):
            assert a.execute(
                "SELECT current_setting('application_name'), current_setting('DateStyle')"
            ).fetchone() == ("alpha", "German, DMY")
            assert b.execute(
                "SELECT current_setting('application_name'), current_setting('DateStyle')"
            ).fetchone() == ("beta", "ISO, MDY")
        assert (
            a.execute("SELECT pg_backend_pid()").fetchone() == b.execute("SELECT pg_backend_pid()").fetchone()
        )


def test_session_state_pins_and_never_leaks(txn_proxy: ProxyProcess) -> None:
    a = connect(txn_proxy, "txn1")
    a.execute("SET search_path TO pg_catalog")  # pins a to the only server connection
    a.execute("CREATE TEMP TABLE scratch (x int)")
    seen: dict[str, Any] = {}

    def b_runs() -> None:
        with connect(txn_proxy, "txn1") as b:  # (a known login: greeted without the server)
            seen["state"] = b.execute(
                "SELECT current_setting('search_path'), to_regclass('pg_temp.scratch')"
            ).fetchone()
            seen["at"] = time.monotonic()

    thread = threading.Thread(target=b_runs)
    thread.start()
    time.sleep(1.0)
    assert "state" not in seen  # b waits: the only connection is pinned to a
    assert a.execute("SELECT current_setting('search_path')").fetchone() == ("pg_catalog",)
    released = time.monotonic()
    a.close()
    thread.join(timeout=10)
    assert seen["at"] >= released
    assert seen["state"] == ('"$user", public', None)  # reset before b got it
    pools = get_json(ADMIN_PORT, "/pools")
    assert pools["txn1"]["pins_total"] == {"SET": 1}
    assert pools["txn1"]["build"] == expected_build()  # the proxy runs the build under test


def test_listen_pins_and_notifications_arrive(txn_proxy: ProxyProcess) -> None:
    with connect(txn_proxy) as listener, connect(txn_proxy) as notifier:
        listener.execute("LISTEN rotaproxy_events")
        for index in range(3):
            notifier.execute(f"NOTIFY rotaproxy_events, 'hello {index}'")
        received = [n.payload for n in listener.notifies(timeout=5, stop_after=3)]
    assert received == ["hello 0", "hello 1", "hello 2"]
    assert get_json(ADMIN_PORT, "/pools")["txn"]["pins_total"]["LISTEN"] >= 1  # counted by kind


def test_cancel_reaches_exactly_the_right_query(txn_proxy: ProxyProcess) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def bystander() -> None:
        try:
            # prepare_threshold=None keeps the bystanders on unnamed statements: the subject
            # here is the cancel, statement renaming has its own tests.
            with connect(txn_proxy, prepare_threshold=None) as conn:
                while not stop.is_set():
                    conn.execute("SELECT pg_sleep(0.01)")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bystander) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        with connect(txn_proxy) as victim:
            timer = threading.Timer(0.7, victim.cancel_safe)
            timer.start()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                victim.execute("SELECT pg_sleep(20)")
            assert time.monotonic() - started < 5
            timer.join()
            assert victim.execute("SELECT 1").fetchone() == (1,)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []


def test_copy_both_ways_and_errors_inside_transactions(txn_proxy: ProxyProcess) -> None:
    with connect(txn_proxy) as conn:
        with conn.cursor().copy("COPY items (note) FROM STDIN") as copy:
            for index in range(1000):
                copy.write_row((f"copied {index}",))
        with conn.cursor().copy("COPY (SELECT note FROM items WHERE note LIKE 'copied %') TO STDOUT") as copy:
            assert sum(1 for _ in copy) >= 1000
        with pytest.raises(psycopg.errors.UndefinedTable), conn.transaction():
            conn.execute("SELECT * FROM no_such_table")
        with conn.pipeline():
            conn.execute("SELECT 1")
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1 / 0").fetchone()
        assert conn.execute("SELECT 'after errors'").fetchone() == ("after errors",)


async def _driver_load(client: Any, seconds: float, errors: list[str]) -> int:
    """Run a mix of fetch, executemany, transactions and expected errors; count rounds."""
    rounds = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await client()
            rounds += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return rounds


async def _all_load_without_errors(connections: list[Any], client: Any) -> None:
    """Every connection runs ``client(connection)`` rounds for LOAD_SECONDS, then closes:
    no round may fail, every connection must complete one."""
    errors: list[str] = []
    try:
        rounds = await asyncio.gather(*(_driver_load(client(c), LOAD_SECONDS, errors) for c in connections))
    finally:
        for connection in connections:
            await connection.close()
    assert errors == []
    assert min(rounds) > 0


async def test_asyncpg_default_settings_40_clients_pool_of_5(txn_proxy: ProxyProcess) -> None:
    connections = [
        await asyncpg.connect(host="127.0.0.1", port=txn_proxy.port, user="x", database="txn5")
        for _ in range(40)
    ]

    def client(connection: asyncpg.Connection) -> Any:
        async def one_round() -> None:
            rows = await connection.fetch("SELECT n, $1::text FROM generate_series(1, $2::int) AS n", "x", 5)
            assert [row["n"] for row in rows] == [1, 2, 3, 4, 5]
            await connection.executemany("INSERT INTO items (note) VALUES ($1)", [("asyncpg",), ("many",)])
            async with connection.transaction():
                await connection.execute("INSERT INTO items (note) VALUES ($1)", "in a transaction")
                assert await connection.fetchval("SELECT $1::int * 2", 21) == 42
            try:
                await connection.fetchval("SELECT 1 / $1::int", 0)
            except asyncpg.DivisionByZeroError:
                pass  # errors are part of the mix; the session goes on
            else:
                raise AssertionError("division by zero did not fail")

        return one_round

    await _all_load_without_errors(connections, client)
    pool = get_json(ADMIN_PORT, "/pools")["txn5"]
    assert pool["opened_total"] <= 5 and "named prepared statement" not in pool["pins_total"]


async def test_clients_that_connect_query_and_leave_never_cost_a_server_connection(
    txn_proxy: ProxyProcess,
) -> None:
    """asyncpg's connect + fetchval + close, ten at a time on four connections: clients move
    between connections, so each leaves copies of its statement behind on connections other
    clients keep between transactions. A client leaving is never a reason to close one (each
    one closed costs a later client a new server login)."""

    async def cycle() -> None:
        connection = await asyncpg.connect(
            host="127.0.0.1", port=txn_proxy.port, user="x", database="txn_leave"
        )
        assert await connection.fetchval("SELECT $1::int + 1", 1) == 2
        await connection.close()

    for _ in range(6):
        await asyncio.gather(*(cycle() for _ in range(10)))
    pool = get_json(ADMIN_PORT, "/pools")["txn_leave"]
    assert pool["opened_total"] <= 4, pool


async def test_psycopg_server_side_prepares_40_clients_pool_of_5(txn_proxy: ProxyProcess) -> None:
    dsn = f"host=127.0.0.1 port={txn_proxy.port} dbname=txn5 user=x"
    connections = [
        await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0) for _ in range(40)
    ]

    def client(connection: psycopg.AsyncConnection[Any]) -> Any:
        async def one_round() -> None:
            cursor = await connection.execute("SELECT n FROM generate_series(1, %s) AS n", (3,))
            assert [row[0] for row in await cursor.fetchall()] == [1, 2, 3]
            await cursor.executemany("INSERT INTO items (note) VALUES (%s)", [("psycopg",), ("many",)])
            async with connection.transaction():
                await connection.execute("INSERT INTO items (note) VALUES (%s)", ("psycopg",))
            try:
                await connection.execute("SELECT 1 / %s", (0,))
            except psycopg.errors.DivisionByZero:
                pass
            else:
                raise AssertionError("division by zero did not fail")

        return one_round

    await _all_load_without_errors(connections, client)


PGBENCH_SCRIPT = textwrap.dedent(
    """
    \\set n random(1, 1000)
    BEGIN;
    INSERT INTO items (note) VALUES ('pgbench');
    SELECT count(*) FROM items WHERE id < :n;
    END;
    """
)


@pytest.mark.parametrize(
    ("protocol", "clients", "pool"),
    [("simple", 20, "txn"), ("extended", 50, "txn10"), ("prepared", 50, "txn10")],
)
def test_pgbench_many_clients_few_connections(
    txn_proxy: ProxyProcess, tmp_path: Path, protocol: str, clients: int, pool: str
) -> None:
    script = tmp_path / "txn.sql"
    script.write_text(PGBENCH_SCRIPT)
    pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    run = subprocess.run(
        [
            pgbench,
            "-n",
            "-M",
            protocol,
            "-f",
            str(script),
            "-T",
            "4",
            "-c",
            str(clients),
            # One thread per client: pgbench prepares with a blocking PQprepare, so with several
            # clients per thread, one waiting for a server connection stalls the others that
            # hold one mid-transaction (any transaction pooler smaller than the client count).
            "-j",
            str(clients if protocol == "prepared" else 2),
            "-h",
            "127.0.0.1",
            "-p",
            str(txn_proxy.port),
            "-U",
            "x",
            pool,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    processed = int(re.search(r"number of transactions actually processed: (\d+)", run.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", run.stdout)
    assert processed > 100, run.stdout
    assert failed is None or failed.group(1) == "0", run.stdout


CLIENT_THAT_DIES = textwrap.dedent(
    """
    import sys, psycopg
    conn = psycopg.connect(sys.argv[1])
    conn.execute("INSERT INTO items (note) VALUES (%s)", (sys.argv[2],))
    print("inserted", flush=True)
    sys.stdin.read()
    """
)


def test_client_killed_inside_a_transaction_commits_nothing(
    txn_proxy: ProxyProcess, pg: ThrowawayPostgres
) -> None:
    marker = f"txn-killed-{time.monotonic_ns()}"
    dsn = f"host=127.0.0.1 port={txn_proxy.port} dbname=txn1 user=x"
    kill_client_after_insert(CLIENT_THAT_DIES, dsn, marker)
    with connect(txn_proxy, "txn1") as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE note = %s", (marker,)).fetchone() == (0,)
        assert conn.execute("SELECT txid_current_if_assigned()").fetchone() == (None,)
    assert pg.sql(f"SELECT count(*) FROM items WHERE note = '{marker}'", database="appdb") == "0"


def test_idle_in_transaction_timeout_ends_the_client_and_rolls_back(txn_proxy: ProxyProcess) -> None:
    marker = f"idle-{time.monotonic_ns()}"
    idler = connect(txn_proxy, "txn_idle")
    idler.execute("BEGIN")
    idler.execute("INSERT INTO items (note) VALUES (%s)", (marker,))
    started = time.monotonic()
    # The only server connection is the idler's: the second client waits for it (its login
    # needs one too) until the idler is thrown out after 1 s.
    waiting = connect(txn_proxy, "txn_idle")
    assert waiting.execute("SELECT count(*) FROM items WHERE note = %s", (marker,)).fetchone() == (0,)
    assert 0.8 < time.monotonic() - started < 8
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout, match="idle in a transaction for 1s"):
        idler.execute("SELECT 1")
    idler.close()
    # Idle outside a transaction is not idle in one: that client stays.
    time.sleep(1.5)
    assert waiting.execute("SELECT 1").fetchone() == (1,)
    waiting.close()


def test_transactions_queries_bytes_and_pins_are_counted(txn_proxy: ProxyProcess) -> None:
    labels = {"pool": "txn_metrics", "engine": "postgres"}

    def value(name: str, **extra: str) -> float:
        return metric(scrape(ADMIN_PORT)[1], name, **labels, **extra)

    with connect(txn_proxy, "txn_metrics") as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        assert value("rotaproxy_server_connections_in_transaction") == 1
        conn.execute("COMMIT")
        assert value("rotaproxy_server_connections_in_transaction") == 0
        for _ in range(3):
            conn.execute("SELECT 1")  # autocommit: a transaction each
        assert value("rotaproxy_queries_total") == 6
        assert value("rotaproxy_transactions_total") == 4
        assert value("rotaproxy_client_bytes_total", direction="in") > 0
        assert value("rotaproxy_client_bytes_total", direction="out") > 0
        assert value("rotaproxy_server_connections_pinned") == 0
        conn.execute("SET work_mem = '8MB'")
        assert value("rotaproxy_server_connections_pinned") == 1
        assert value("rotaproxy_pins_total", reason="SET") == 1
    deadline = time.monotonic() + 5
    while value("rotaproxy_server_connections_pinned") != 0:  # the client left
        assert time.monotonic() < deadline
        time.sleep(0.05)


def server_states(pool: str) -> dict[str, int]:
    by_state: dict[str, int] = get_json(ADMIN_PORT, "/pools")[pool]["server_connections"]["by_state"]
    return by_state


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_an_idle_client_keeps_its_connection_until_someone_needs_it(txn_proxy: ProxyProcess) -> None:
    with connect(txn_proxy, "txn_keep") as a:
        pid = backend_pid(a)
        # Nobody else wants the pool's only connection: it stays attached between transactions.
        assert server_states("txn_keep") == {"kept": 1}
        assert backend_pid(a) == pid
        # Another client logs in and queries at once: the pool takes the connection back
        # from the idle client rather than wait (the janitor would free it after 1 s).
        started = time.monotonic()
        with connect(txn_proxy, "txn_keep") as b:
            assert backend_pid(b) == pid
            took = time.monotonic() - started
            assert backend_pid(a) == pid  # and back again
        assert took < 0.9
        # Idle for a second: the pool takes it back for good.
        wait_for(lambda: server_states("txn_keep") == {"idle": 1}, 5, "the kept connection back in the pool")
        assert backend_pid(a) == pid


def test_a_kept_connection_the_server_closes_costs_its_client_nothing(
    txn_proxy: ProxyProcess, pg: ThrowawayPostgres
) -> None:
    with connect(txn_proxy, "txn_keep") as conn:
        pid = backend_pid(conn)
        assert server_states("txn_keep") == {"kept": 1}
        assert pg.sql(f"SELECT pg_terminate_backend({pid})") == "t"
        wait_for(lambda: server_states("txn_keep") == {}, 5, "the terminated connection gone")
        assert backend_pid(conn) != pid  # a fresh connection, and no error
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pause_and_reconnect_take_kept_connections_back(txn_proxy: ProxyProcess) -> None:
    with connect(txn_proxy, "txn_keep") as conn:
        pid = backend_pid(conn)
        status, body = post_json(ADMIN_PORT, "/pools/txn_keep/reconnect")
        assert status == 200 and body["idle_closed"] == 1 and body["busy_draining"] == 0
        assert backend_pid(conn) != pid  # logged in afresh; the client saw nothing
        assert server_states("txn_keep") == {"kept": 1}
        assert post_json(ADMIN_PORT, "/pause")[0] == 200
        try:
            assert server_states("txn_keep") == {"idle": 1}
            answered: list[Any] = []
            query = threading.Thread(target=lambda: answered.append(conn.execute("SELECT 1").fetchone()))
            query.start()
            time.sleep(0.5)
            assert answered == []  # its next transaction waits for resume
        finally:
            assert post_json(ADMIN_PORT, "/resume")[0] == 200
        query.join(5)
        assert answered == [(1,)]


def test_a_queued_client_is_served_when_the_connection_comes_back(txn_proxy: ProxyProcess) -> None:
    with connect(txn_proxy, "txn_keep") as holder, connect(txn_proxy, "txn_keep") as waiter:
        holder.execute("BEGIN")
        pid = backend_pid(holder)  # the pool's only connection, held by the open transaction
        answered: list[int] = []
        query = threading.Thread(target=lambda: answered.append(backend_pid(waiter)))
        query.start()
        time.sleep(0.3)
        assert answered == [] and get_json(ADMIN_PORT, "/pools")["txn_keep"]["waiting"] == 1
        holder.execute("COMMIT")
        query.join(5)
        assert answered == [pid]


def test_a_client_queued_past_borrow_timeout_is_told_why(txn_proxy: ProxyProcess) -> None:
    timeouts_before = get_json(ADMIN_PORT, "/pools")["txn_short"]["borrow_timeouts_total"]
    with connect(txn_proxy, "txn_short") as holder, connect(txn_proxy, "txn_short") as waiter:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.TooManyConnections, match="within borrow_timeout 1s"):
            waiter.execute("SELECT 1")
        assert 0.9 < time.monotonic() - started < 5
        holder.execute("COMMIT")
        assert holder.execute("SELECT 1").fetchone() == (1,)
    pools = get_json(ADMIN_PORT, "/pools")
    assert pools["txn_short"]["borrow_timeouts_total"] == timeouts_before + 1


REPORTED = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "server_version",
    "integer_datetimes",
)


def test_a_login_the_server_answered_before_needs_no_server_connection(txn_proxy: ProxyProcess) -> None:
    settings = {"application_name": "known-login", "options": "-c DateStyle=SQL,DMY"}
    with connect(txn_proxy, "txn_short", **settings) as first:  # asks the server: set_config
        first.execute("BEGIN")
        first.execute("SELECT 1")  # the pool's only connection is taken from here on
        started = time.monotonic()
        # The same settings again: greeted at once, as the server greeted the first login
        # (a borrow would time out after borrow_timeout 1s: the connection is in use).
        with connect(txn_proxy, "txn_short", **settings) as second:
            assert time.monotonic() - started < 0.5
            for name in REPORTED:
                assert second.info.parameter_status(name) == first.info.parameter_status(name), name
            assert second.info.parameter_status("DateStyle") == "SQL, DMY"  # normalised by the server
            # Settings the server has not answered yet need it: this login waits, and times out.
            with pytest.raises(psycopg.OperationalError, match="within borrow_timeout 1s"):
                connect(txn_proxy, "txn_short", application_name="unknown-login")
            first.execute("COMMIT")
            # The client's settings reached the server with its first transaction.
            assert second.execute(
                "SELECT current_setting('application_name'), current_setting('DateStyle')"
            ).fetchone() == ("known-login", "SQL, DMY")


def test_a_login_with_a_bad_setting_is_refused_even_beside_known_ones(txn_proxy: ProxyProcess) -> None:
    with connect(txn_proxy, "txn", application_name="fine"):
        pass
    with pytest.raises(psycopg.OperationalError, match='invalid value for parameter "TimeZone"'):
        connect(txn_proxy, "txn", application_name="fine", options="-c TimeZone=Nowhere/Nothing")
