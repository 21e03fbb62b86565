"""Graceful shutdown (SIGTERM, Ctrl-C) and reload (SIGHUP) of a real rotaproxy process, with
real PostgreSQL and MariaDB servers and real clients (psycopg, asyncpg, PyMySQL).

What is pinned: open transactions finish and nothing is half-written; every client is told
goodbye in its protocol at an idle point (PostgreSQL 57P01, MySQL 1053); a transaction that
outlives shutdown_timeout is cut and rolled back; a reload adds, removes and replaces pools
while the clients of an untouched pool notice nothing; an invalid reload changes nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import select
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pymysql
import pytest

from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port
from proxy.local.proxy_process import ProxyProcess
from tests.conftest import (
    MySqlUsers,
    ProxyLauncher,
    Users,
    get_json,
    new_secret,
    pool_toml,
    rds_mysql_secret,
    rds_secret,
    scrape,
)

SQLSTATE_ADMIN_SHUTDOWN = "57P01"
ER_SERVER_SHUTDOWN = 1053
TABLE = "lifecycle_rows"


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
async def pg_secret(pg: ThrowawayPostgres, users: Users, sm_client: Any) -> str:
    pg.sql(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (client text NOT NULL, seq int NOT NULL, part text NOT NULL);"
        f"ALTER TABLE {TABLE} OWNER TO app;",
        database="appdb",
    )
    return await new_secret(sm_client, rds_secret(pg, "app", users.app))


@pytest.fixture(scope="module")
async def mysql_secret(mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers, sm_client: Any) -> str:
    return await new_secret(sm_client, rds_mysql_secret(mariadb, "app", mysql_users.app))


def pg_pool(name: str, secret: str, pg: ThrowawayPostgres, **settings: object) -> str:
    settings.setdefault("mode", "session")
    return pool_toml(
        name,
        secret,
        engine="postgres",
        upstream=f"127.0.0.1:{pg.port}",
        database="appdb",
        tls="disable",
        **settings,
    )


def timeout_head(seconds: float) -> str:
    return f'shutdown_timeout = "{seconds:g}s"\n\n'


def dsn(port: int, database: str) -> str:
    return f"host=127.0.0.1 port={port} dbname={database} user=app connect_timeout=5"


def connect(port: int, database: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn(port, database), autocommit=True)


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def wait_for_log(proxy: ProxyProcess, text: str, count: int = 1, timeout: float = 10.0) -> str:
    """The proxy's log once ``text`` appears in it ``count`` times."""
    deadline = time.monotonic() + timeout
    while (logs := proxy.logs()).count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} time(s):\n{logs[-3000:]}"
        time.sleep(0.05)
    return logs


def wait_exit(proxy: ProxyProcess, timeout: float) -> int:
    assert proxy.process is not None
    return proxy.process.wait(timeout=timeout)


def send(proxy: ProxyProcess, signum: signal.Signals) -> None:
    assert proxy.process is not None
    proxy.process.send_signal(signum)


def is_goodbye(exc: BaseException) -> bool:
    """PostgreSQL's FATAL 57P01 from rotaproxy, as psycopg or asyncpg report it.

    asyncpg reports a FATAL that answers its query as ConnectionDoesNotExistError carrying
    the server's message (it does the same for PostgreSQL's own 57P01).
    """
    if isinstance(exc, psycopg.Error):
        return exc.sqlstate == SQLSTATE_ADMIN_SHUTDOWN and "terminating connection: " in str(exc)
    if isinstance(exc, asyncpg.PostgresError | asyncpg.ConnectionDoesNotExistError):
        return "terminating connection: " in str(exc)
    return False


def rows_of(pg: ThrowawayPostgres, prefix: str) -> dict[tuple[str, int], list[str]]:
    """(client, seq) → the parts of that transaction found in the table."""
    out = pg.sql(f"SELECT client, seq, part FROM {TABLE} WHERE client LIKE '{prefix}%'", database="appdb")
    found: dict[tuple[str, int], list[str]] = {}
    for line in filter(None, out.splitlines()):
        client, seq, part = line.split("|")
        found.setdefault((client, int(seq)), []).append(part)
    return found


def write_config(launcher: ProxyLauncher, proxy: ProxyProcess, pools: str, **kwargs: Any) -> Path:
    proxy.config_path.write_text(launcher.render(pools, port=proxy.port, **kwargs))
    return proxy.config_path


# --- SIGTERM -----------------------------------------------------------------------------------


async def test_sigterm_under_load_finishes_open_transactions_and_exits_0(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, pg_secret: str
) -> None:
    proxy = launcher.start(
        pg_pool("load_session", pg_secret, pg)
        + pg_pool("load_txn", pg_secret, pg, mode="transaction", max_server_connections=3),
        head=timeout_head(10),
    )
    run = f"load-{secrets.token_hex(3)}-"
    committed: set[tuple[str, int]] = set()
    committed_after_sigterm: list[tuple[str, int]] = []
    last_error: dict[str, BaseException] = {}
    results_read: list[int] = []
    sigterm_at = 0.0

    async def transaction_loop(name: str, database: str) -> None:
        conn = await psycopg.AsyncConnection.connect(dsn(proxy.port, database), autocommit=True)
        seq = 0
        try:
            while True:
                seq += 1
                await conn.execute("BEGIN")
                await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s, 'a')", (name, seq))
                await conn.execute("SELECT pg_sleep(0.2)")
                await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s, 'b')", (name, seq))
                await conn.execute("COMMIT")
                committed.add((name, seq))
                if sigterm_at:
                    committed_after_sigterm.append((name, seq))
        except psycopg.Error as exc:
            last_error[name] = exc
        finally:
            await conn.close()

    async def asyncpg_loop(name: str, database: str) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, database=database, user="app")
        seq = 0
        try:
            while True:
                seq += 1
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, $2, 'a')", name, seq)
                    await conn.execute("SELECT pg_sleep(0.2)")
                    await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, $2, 'b')", name, seq)
                committed.add((name, seq))
                if sigterm_at:
                    committed_after_sigterm.append((name, seq))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            last_error[name] = exc
        finally:
            conn.terminate()

    async def big_results(name: str, database: str) -> None:
        # Large results stream while the shutdown begins: each one arrives whole or not at all.
        conn = await psycopg.AsyncConnection.connect(dsn(proxy.port, database), autocommit=True)
        try:
            while True:
                cursor = await conn.execute("SELECT repeat('x', 500) FROM generate_series(1, 4000)")
                results_read.append(len(await cursor.fetchall()))
        except psycopg.Error as exc:
            last_error[name] = exc
        finally:
            await conn.close()

    clients = []
    for database in ("load_session", "load_txn"):
        for index in range(3):
            clients.append(transaction_loop(f"{run}{database}-psycopg-{index}", database))
        clients.append(asyncpg_loop(f"{run}{database}-asyncpg", database))
        clients.append(big_results(f"{run}{database}-results", database))
    tasks = [asyncio.create_task(client) for client in clients]
    await asyncio.sleep(1.5)
    assert not any(task.done() for task in tasks), last_error
    send(proxy, signal.SIGTERM)
    sigterm_at = time.monotonic()
    await asyncio.sleep(0.1)
    with pytest.raises(psycopg.OperationalError, match="refused"):
        await psycopg.AsyncConnection.connect(dsn(proxy.port, "load_session"))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)
    code = await asyncio.to_thread(wait_exit, proxy, 10)
    took = time.monotonic() - sigterm_at

    assert code == 0
    assert took < 3.0  # every open transaction is at most 0.2 s from its end; the timeout is 10 s
    assert len(last_error) == len(clients)  # every client ended on an error...
    wrong = {name: repr(exc) for name, exc in last_error.items() if not is_goodbye(exc)}
    assert not wrong, "\n".join(f"{k}: {v}" for k, v in wrong.items())  # ...and it is the goodbye
    for exc in last_error.values():
        assert "terminating connection: rotaproxy is shutting down" in str(exc)
    assert committed_after_sigterm  # transactions open at SIGTERM ran to their COMMIT
    found = rows_of(pg, run)
    assert {key: sorted(parts) for key, parts in found.items()} == {key: ["a", "b"] for key in committed}
    assert results_read and set(results_read) == {4000}
    logs = proxy.logs()
    assert "shutting down: stopped accepting; 10 client sessions" in logs
    assert "shutdown: 10 client sessions ended gracefully, 0 cut" in logs


def test_a_transaction_idle_past_shutdown_timeout_is_cut_and_rolled_back(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, pg_secret: str
) -> None:
    admin_port = free_port()
    proxy = launcher.start(
        pg_pool("cut_session", pg_secret, pg, min_server_connections=1)
        + pg_pool("cut_txn", pg_secret, pg, mode="transaction", min_server_connections=1),
        admin_port=admin_port,
        head=timeout_head(2),
    )
    run = f"cut-{secrets.token_hex(3)}-"
    stuck = {database: connect(proxy.port, database) for database in ("cut_session", "cut_txn")}
    for database, conn in stuck.items():
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {TABLE} VALUES (%s, 1, 'a')", (run + database,))
    idle = connect(proxy.port, "cut_session")
    assert idle.execute("SELECT 1").fetchone() == (1,)
    assert get_json(admin_port, "/readyz")["status"] == "ready"

    send(proxy, signal.SIGTERM)
    sigterm_at = time.monotonic()
    # The idle client is told at once; libpq reads it as the answer to its next query.
    readable, _, _ = select.select([idle.fileno()], [], [], 1.0)
    assert readable and time.monotonic() - sigterm_at < 1.0
    with pytest.raises(psycopg.errors.AdminShutdown, match="rotaproxy is shutting down"):
        idle.execute("SELECT 1")
    # Admin answers until the end; not ready from the first moment of the shutdown.
    readiness = get_json(admin_port, "/readyz")
    assert readiness["status"] == "shutting down"
    assert readiness["pools"] == dict.fromkeys(["cut_session", "cut_txn"], "rotaproxy is shutting down")
    time.sleep(1.0)
    assert proxy.process is not None and proxy.process.poll() is None  # still waiting for the two

    assert wait_exit(proxy, 10) == 0
    took = time.monotonic() - sigterm_at
    assert 1.9 < took < 4.0
    for conn in stuck.values():
        with pytest.raises(psycopg.OperationalError):
            conn.execute("COMMIT")
        conn.close()
    idle.close()
    assert rows_of(pg, run) == {}  # both open transactions were rolled back
    logs = proxy.logs()
    assert 'pool "cut_session": 1 client sessions still busy after shutdown_timeout 2s: cut' in logs
    assert 'pool "cut_txn": 1 client sessions still busy after shutdown_timeout 2s: cut' in logs
    assert "shutdown: 1 client sessions ended gracefully, 2 cut after shutdown_timeout 2s" in logs


def test_transaction_mode_shutdown_serves_waiting_clients_and_ends_pinned_ones_at_idle(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, pg_secret: str
) -> None:
    admin_port = free_port()
    proxy = launcher.start(
        pg_pool(
            "txn_stop", pg_secret, pg, mode="transaction", max_server_connections=2, borrow_timeout="10s"
        ),
        admin_port=admin_port,
        head=timeout_head(10),
    )
    run = f"txn-stop-{secrets.token_hex(3)}"
    pinned, in_txn, waiting = (connect(proxy.port, "txn_stop") for _ in range(3))
    pinned.execute("SET search_path TO public")  # pinned to its connection until it leaves
    in_txn.execute("BEGIN")
    in_txn.execute(f"INSERT INTO {TABLE} VALUES (%s, 1, 'a')", (run,))
    answers: list[Any] = []
    # Both connections are taken: this client's query waits for one.
    waiter = threading.Thread(target=lambda: answers.append(waiting.execute("SELECT 42").fetchone()))
    waiter.start()
    deadline = time.monotonic() + 5
    while get_json(admin_port, "/pools")["txn_stop"]["waiting"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # A client that has not even sent its startup packet yet.
    raw = socket.create_connection(("127.0.0.1", proxy.port))

    send(proxy, signal.SIGTERM)
    raw.settimeout(2)
    goodbye = raw.recv(4096)
    assert goodbye[:1] == b"E" and b"C57P01\x00" in goodbye and b"rotaproxy is shutting down" in goodbye
    assert raw.recv(4096) == b""  # and closed
    raw.close()
    # The pinned client is idle: it is told at once.
    assert select.select([pinned.fileno()], [], [], 1.0)[0]
    with pytest.raises(psycopg.errors.AdminShutdown, match='pool "txn_stop": terminating connection'):
        pinned.execute("SELECT 1")
    # The waiting client had sent its query before the shutdown: it is served.
    waiter.join(timeout=5)
    assert answers == [(42,)]
    # The open transaction runs to its end.
    in_txn.execute(f"INSERT INTO {TABLE} VALUES (%s, 1, 'b')", (run,))
    in_txn.execute("COMMIT")
    for conn in (in_txn, waiting):
        with pytest.raises(psycopg.errors.AdminShutdown):
            conn.execute("SELECT 1")
    assert wait_exit(proxy, 5) == 0
    assert sorted(rows_of(pg, run)[(run, 1)]) == ["a", "b"]
    for conn in (pinned, in_txn, waiting):
        conn.close()
    assert "shutdown: 4 client sessions ended gracefully, 0 cut" in proxy.logs()


def test_mysql_clients_get_err_1053_at_their_next_idle_point(
    launcher: ProxyLauncher, mariadb: ThrowawayMariaDB, mysql_secret: str
) -> None:
    proxy = launcher.start(
        pool_toml(
            "my_stop", mysql_secret, engine="mysql", upstream=f"127.0.0.1:{mariadb.port}", tls="disable"
        ),
        head=timeout_head(10),
    )
    note = f"shutdown-{secrets.token_hex(3)}"

    def connect_mysql() -> pymysql.Connection[Any]:
        return pymysql.connect(host="127.0.0.1", port=proxy.port, user="x", database="my_stop")

    idle = connect_mysql()
    busy = connect_mysql()
    # A client that has the proxy's greeting and has not answered it yet.
    raw = socket.create_connection(("127.0.0.1", proxy.port))
    raw.settimeout(5)
    assert raw.recv(4096)[3] == 0  # the greeting, sequence 0
    busy.begin()
    with busy.cursor() as cursor:
        cursor.execute("INSERT INTO items (note) VALUES (%s)", (note,))

    send(proxy, signal.SIGTERM)
    wait_for_log(proxy, "shutting down: stopped accepting; 3 client sessions")
    err = raw.recv(4096)
    # ERR, sequence 2: the answer to the handshake response the client would send next.
    assert err[3] == 2 and err[4] == 0xFF and int.from_bytes(err[5:7], "little") == ER_SERVER_SHUTDOWN
    assert err[7:13] == b"#08S01"
    raw.close()
    # Inside its transaction the busy client carries on to its COMMIT...
    with busy.cursor() as cursor:
        cursor.execute("INSERT INTO items (note) VALUES (%s)", (note,))
        cursor.execute("SELECT SLEEP(0.3)")
    busy.commit()
    # ...and then, like the idle one, gets ER_SERVER_SHUTDOWN as the answer to its next command.
    for conn in (busy, idle):
        with pytest.raises(pymysql.OperationalError) as info, conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        assert info.value.args[0] == ER_SERVER_SHUTDOWN
        assert 'pool "my_stop": terminating connection: rotaproxy is shutting down' in info.value.args[1]

    assert wait_exit(proxy, 10) == 0
    count = mariadb.sql(f"SELECT COUNT(*) FROM items WHERE note = '{note}'", database="appdb")
    assert count.strip() == "2"
    assert "shutdown: 3 client sessions ended gracefully, 0 cut" in proxy.logs()


def test_a_second_sigint_exits_at_once(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, pg_secret: str
) -> None:
    proxy = launcher.start(pg_pool("twice", pg_secret, pg), head=timeout_head(30))
    conn = connect(proxy.port, "twice")
    try:
        conn.execute("BEGIN")  # holds the graceful shutdown open for up to 30 s
        send(proxy, signal.SIGINT)
        wait_for_log(proxy, "SIGINT received: shutting down gracefully")
        time.sleep(0.5)
        assert proxy.process is not None and proxy.process.poll() is None
        send(proxy, signal.SIGINT)
        started = time.monotonic()
        assert wait_exit(proxy, 5) == 130
        assert time.monotonic() - started < 2.0
    finally:
        conn.close()
    assert "second interrupt: exiting now" in proxy.logs()


# --- SIGHUP ------------------------------------------------------------------------------------


class QueryLoop:
    """A client that runs a query every few milliseconds in a thread, counting what it sees."""

    def __init__(self, port: int, database: str) -> None:
        self.conn = connect(port, database)
        self.pids: set[int] = set()
        self.errors: list[BaseException] = []
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> QueryLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.pids.add(backend_pid(self.conn))
                self.queries += 1
            except psycopg.Error as exc:
                self.errors.append(exc)
                return
            time.sleep(0.01)


def test_sighup_adds_and_removes_pools_while_another_pools_clients_notice_nothing(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, pg_secret: str, users: Users
) -> None:
    admin_port = free_port()
    alone_port, new_port = free_port(), free_port()
    stay = pg_pool("stay", pg_secret, pg)
    proxy = launcher.start(
        stay
        + pg_pool("gone", pg_secret, pg)
        + pg_pool("gone_alone", pg_secret, pg, listen=f"127.0.0.1:{alone_port}"),
        admin_port=admin_port,
    )
    gone = connect(proxy.port, "gone")
    gone_alone = connect(alone_port, "gone_alone")
    for conn in (gone, gone_alone):
        conn.execute("SELECT 1")

    with QueryLoop(proxy.port, "stay") as loop:
        time.sleep(0.3)
        path = write_config(
            launcher,
            proxy,
            stay
            + pg_pool("fresh", pg_secret, pg)
            + pg_pool("fresh_alone", pg_secret, pg, listen=f"127.0.0.1:{new_port}"),
            admin_port=admin_port,
        )
        send(proxy, signal.SIGHUP)
        logs = wait_for_log(proxy, f"reloaded {path}")
        assert (
            f"reloaded {path}: added [fresh, fresh_alone], removed [gone, gone_alone], changed [], "
            "unchanged [stay]" in logs
        )
        # The added pools serve, on the shared listener and on a new one.
        with connect(proxy.port, "fresh") as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("appdb",)
        with connect(new_port, "fresh_alone") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # The removed pools' idle clients were told; new clients are turned away.
        for conn in (gone, gone_alone):
            with pytest.raises(psycopg.errors.AdminShutdown, match="removed from rotaproxy's configuration"):
                conn.execute("SELECT 1")
            conn.close()
        with pytest.raises(psycopg.OperationalError, match='database "gone" does not exist'):
            connect(proxy.port, "gone")
        with pytest.raises(psycopg.OperationalError, match="refused"):
            connect(alone_port, "gone_alone")
        # /pools and /metrics show the new set of pools.
        assert set(get_json(admin_port, "/pools")) == {"stay", "fresh", "fresh_alone"}
        _, samples = scrape(admin_port)
        pools_in_metrics = {
            dict(labels)["pool"] for (name, labels) in samples if name == "rotaproxy_client_connections"
        }
        assert pools_in_metrics == {"stay", "fresh", "fresh_alone"}
        time.sleep(0.3)
    # The untouched pool's client ran queries the whole time, on the same server connection.
    assert loop.errors == []
    assert len(loop.pids) == 1 and loop.queries > 10
    logs = wait_for_log(proxy, 'pool "gone_alone" (removed by the reload) closed')
    assert 'pool "gone" (removed by the reload) closed: 1 client sessions left or moved, 0 cut' in logs
    assert f"stopped listening on 127.0.0.1:{alone_port}" in logs
    assert users.app not in logs


def test_a_changed_pool_reconnects_and_transaction_mode_clients_move_over(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, pg_secret: str
) -> None:
    admin_port = free_port()

    def pools(size: int) -> str:
        return pg_pool("chg_txn", pg_secret, pg, mode="transaction", max_server_connections=size) + pg_pool(
            "chg_session", pg_secret, pg, max_server_connections=size
        )

    proxy = launcher.start(pools(2), admin_port=admin_port)
    run = f"chg-{secrets.token_hex(3)}"
    idle_txn = connect(proxy.port, "chg_txn")
    in_txn = connect(proxy.port, "chg_txn")
    session = connect(proxy.port, "chg_session")
    old_txn_pid = backend_pid(idle_txn)
    old_session_pid = backend_pid(session)
    in_txn.execute("BEGIN")
    in_txn.execute(f"INSERT INTO {TABLE} VALUES (%s, 1, 'a')", (run,))
    pid_in_txn = backend_pid(in_txn)

    path = write_config(launcher, proxy, pools(4), admin_port=admin_port)
    send(proxy, signal.SIGHUP)
    wait_for_log(
        proxy, f"reloaded {path}: added [], removed [], changed [chg_txn, chg_session], unchanged []"
    )
    assert get_json(admin_port, "/pools")["chg_txn"]["max_server_connections"] == 4

    # The open transaction finishes on its connection, then the client moves to the new pool.
    in_txn.execute(f"INSERT INTO {TABLE} VALUES (%s, 1, 'b')", (run,))
    assert backend_pid(in_txn) == pid_in_txn
    in_txn.execute("COMMIT")
    assert sorted(rows_of(pg, run)[(run, 1)]) == ["a", "b"]
    # Transaction-mode clients notice nothing but fresh server connections.
    for conn in (idle_txn, in_txn):
        assert backend_pid(conn) not in (old_txn_pid, pid_in_txn)
        conn.close()
    # A session-mode client cannot move its session: it is told, and connects again.
    with pytest.raises(psycopg.errors.AdminShutdown, match="configuration changed"):
        session.execute("SELECT 1")
    session.close()
    with connect(proxy.port, "chg_session") as again:
        assert backend_pid(again) != old_session_pid
    logs = wait_for_log(proxy, 'pool "chg_session" (replaced by the reload) closed')
    assert 'pool "chg_txn" (replaced by the reload) closed: 2 client sessions left or moved, 0 cut' in logs


def test_an_invalid_reload_is_rejected_and_the_old_pools_keep_working(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, pg_secret: str
) -> None:
    admin_port = free_port()
    steady = pg_pool("steady", pg_secret, pg)
    proxy = launcher.start(steady, admin_port=admin_port)
    path = proxy.config_path
    still = "; still running the previous configuration"
    with connect(proxy.port, "steady") as conn:
        pid = backend_pid(conn)

        path.write_text("[[pool]\nname = ")
        send(proxy, signal.SIGHUP)
        assert f"reload rejected: {path}: invalid TOML: " in wait_for_log(proxy, still)

        write_config(launcher, proxy, steady.replace('name = "steady"', 'name = "steady"\ncolour = "blue"'))
        send(proxy, signal.SIGHUP)
        assert f"reload rejected: {path}: pool[0].colour: unknown key{still}" in wait_for_log(proxy, still, 2)

        # A new listener that cannot bind rejects the whole reload, other new pools included.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy_port, spare_port = taken.getsockname()[1], free_port()
            write_config(
                launcher,
                proxy,
                steady
                + pg_pool("spare", pg_secret, pg, listen=f"127.0.0.1:{spare_port}")
                + pg_pool("blocked", pg_secret, pg, listen=f"127.0.0.1:{busy_port}"),
                admin_port=admin_port,
            )
            send(proxy, signal.SIGHUP)
            logs = wait_for_log(proxy, still, 3)
        assert f"reload rejected: {path}: pool[2].listen: cannot listen on 127.0.0.1:{busy_port}: " in logs
        with pytest.raises(psycopg.OperationalError, match="refused"):
            connect(spare_port, "spare")
        assert set(get_json(admin_port, "/pools")) == {"steady"}
        assert "reloaded" not in logs

        # Nothing changed for the client: same server connection, no error.
        assert backend_pid(conn) == pid

        # A valid file goes in; [admin] is read at start only, and the log says so.
        write_config(launcher, proxy, steady, admin_port=free_port(), head=timeout_head(5))
        send(proxy, signal.SIGHUP)
        logs = wait_for_log(proxy, f"reloaded {path}: added [], removed [], changed [], unchanged [steady]")
        assert "[admin] changed, but it is read at start only" in logs
        assert set(get_json(admin_port, "/pools")) == {"steady"}  # still on the old address
        assert backend_pid(conn) == pid
    assert proxy.process is not None and proxy.process.poll() is None
