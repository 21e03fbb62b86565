"""Rotation under load, end to end: 20 clients write rows in transactions through rotaproxy
while the secret is rotated with the project's own rotation function (single-user and
alternating-users), while Secrets Manager is down, and while the secret is wrong. The
claims — zero client errors, zero lost writes, no old-generation server connection left —
are checked against what the clients saw and what the database holds."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomysql
import asyncpg
import pytest

from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port
from proxy.local.proxy_process import ProxyProcess
from proxy.local.secrets_manager import LocalSecretsManager, put_secret_json
from proxy.rotation.settings import RotationSettings
from proxy.rotation.steps import Rotator
from tests.conftest import ProxyLauncher, Secrets, get_json, new_secret, pool_toml

CLIENTS = 20
POOL_SIZE = 10  # max_server_connections of the pool under test
TRANSACTIONS_PER_SESSION = 5  # session mode: clients reconnect now and then, as real ones do
DRAIN_DEADLINE = 8.0


@dataclass
class Load:
    """Clients writing rows in transactions; what they saw, and when."""

    acknowledged: set[tuple[int, int]] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (finished at, seconds)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Engine:
    name: str
    port: int
    secret_id: str
    user: str
    server: ThrowawayPostgres | ThrowawayMariaDB
    table: str

    async def session(self, worker: int, next_seq: Callable[[], int], load: Load) -> None:
        """One client session through the proxy: a few transactions, then goodbye."""
        if self.name == "postgres":
            conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user="x", database="appdb")
            try:
                for _ in range(TRANSACTIONS_PER_SESSION):
                    seq = next_seq()
                    started = time.monotonic()
                    async with conn.transaction():
                        await conn.execute(
                            f"INSERT INTO {self.table} (worker, seq) VALUES ($1, $2)", worker, seq
                        )
                    load.latencies.append((time.monotonic(), time.monotonic() - started))
                    load.acknowledged.add((worker, seq))
            finally:
                await conn.close()
        else:
            conn = await aiomysql.connect(host="127.0.0.1", port=self.port, user="x", db="appdb")
            try:
                for _ in range(TRANSACTIONS_PER_SESSION):
                    seq = next_seq()
                    started = time.monotonic()
                    await conn.begin()
                    async with conn.cursor() as cursor:
                        await cursor.execute(
                            f"INSERT INTO {self.table} (worker, seq) VALUES (%s, %s)", (worker, seq)
                        )
                    await conn.commit()
                    load.latencies.append((time.monotonic(), time.monotonic() - started))
                    load.acknowledged.add((worker, seq))
            finally:
                conn.close()

    def stored_rows(self) -> set[tuple[int, int]]:
        if isinstance(self.server, ThrowawayPostgres):
            text = self.server.sql(f"SELECT worker, seq FROM {self.table}", database="appdb")
            return {tuple(map(int, line.split("|"))) for line in text.splitlines() if line}  # type: ignore[misc]
        text = self.server.sql(f"SELECT worker, seq FROM {self.table}", database="appdb")
        return {tuple(map(int, line.split("\t"))) for line in text.splitlines() if line}  # type: ignore[misc]

    def session_ids(self, username: str | None = None) -> set[int]:
        """Server session ids (PostgreSQL pids, MySQL thread ids) of the app's users."""
        names = f"'{username}'" if username else f"'{self.user}', '{self.user}_clone'"
        if isinstance(self.server, ThrowawayPostgres):
            text = self.server.sql(f"SELECT pid FROM pg_stat_activity WHERE usename IN ({names})")
        else:
            text = self.server.sql(f"SELECT ID FROM information_schema.PROCESSLIST WHERE USER IN ({names})")
        return {int(value) for value in text.split()}


async def run_load(engine: Engine, load: Load, clients: int = CLIENTS, first: int = 0) -> None:
    counters: dict[int, int] = {}

    async def worker(index: int) -> None:
        def next_seq() -> int:
            counters[index] = counters.get(index, 0) + 1
            return counters[index]

        while not load.stop.is_set():
            try:
                await engine.session(index, next_seq, load)
            except Exception as exc:
                load.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)

    await asyncio.gather(*(worker(index) for index in range(first, first + clients)))


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float) -> float:
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"not reached within {within}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def logs_contain(running: ProxyProcess, text: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return text in await asyncio.to_thread(running.logs)

    return check


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


@dataclass
class Setup:
    engine: Engine
    rotator: Rotator
    master_secret: str


@dataclass(repr=False)  # passwords: never in a failed test's output
class Accounts:
    """A user that owns a fresh table, a superuser to rotate it with, and where they log in."""

    user: str
    password: str
    admin: str
    admin_password: str
    table: str
    server: ThrowawayPostgres | ThrowawayMariaDB
    base: dict[str, object]  # engine, host, port, dbname: the JSON fields beside the credentials


def make_accounts(
    kind: str, pg: ThrowawayPostgres, mariadb: ThrowawayMariaDB, known_secrets: Secrets
) -> Accounts:
    suffix = secrets.token_hex(3)
    user, table = f"rot_{kind[:2]}_{suffix}", f"rot_rows_{suffix}"
    password, admin_password = known_secrets.new_password(), known_secrets.new_password()
    admin = f"rot_admin_{suffix}"
    server: ThrowawayPostgres | ThrowawayMariaDB
    if kind == "postgres":
        server = pg
        pg.create_user(user, password)
        pg.create_user(admin, admin_password, superuser=True)
        pg.sql(
            f"CREATE TABLE {table} (worker int, seq int, PRIMARY KEY (worker, seq));"
            f"ALTER TABLE {table} OWNER TO {user};",
            database="appdb",
        )
        pg.sql(f"GRANT CONNECT ON DATABASE appdb TO {user}")
        engine_field, port = "postgres", pg.port
    else:
        server = mariadb
        mariadb.create_user(user, password)
        mariadb.create_user(admin, admin_password)
        mariadb.sql(f"GRANT ALL ON *.* TO '{admin}'@'%' WITH GRANT OPTION")
        mariadb.sql(
            f"CREATE TABLE {table} (worker INT, seq INT, PRIMARY KEY (worker, seq)) ENGINE=InnoDB",
            database="appdb",
        )
        mariadb.sql(f"GRANT ALL ON appdb.* TO '{user}'@'%'")
        engine_field, port = "mariadb", mariadb.port
    base: dict[str, object] = {"engine": engine_field, "host": "127.0.0.1", "port": port, "dbname": "appdb"}
    return Accounts(user, password, admin, admin_password, table, server, base)


async def _setup(
    kind: str,
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    mariadb: ThrowawayMariaDB,
    sm_client: Any,
    known_secrets: Secrets,
    poll_interval: str = "1s",
    admin_port: int | None = None,
    mode: str = "session",
) -> Setup:
    accounts = make_accounts(kind, pg, mariadb, known_secrets)
    base, admin, admin_password = accounts.base, accounts.admin, accounts.admin_password
    user, password, table, server = accounts.user, accounts.password, accounts.table, accounts.server
    master = await new_secret(sm_client, {**base, "username": admin, "password": admin_password}, "master")
    master_arn = (await sm_client.describe_secret(SecretId=master))["ARN"]
    secret_id = await new_secret(
        sm_client, {**base, "username": user, "password": password, "masterarn": master_arn}
    )
    running = launcher.start(
        pool_toml(
            f"rot_{kind}",
            secret_id,
            poll_interval=poll_interval,
            engine="mysql" if kind == "mysql" else "postgres",
            database="appdb",
            tls="disable",
            max_server_connections=POOL_SIZE,
            borrow_timeout="10s",
            mode=mode,
        ),
        admin_port=admin_port,
    )

    engine = Engine(kind, running.port, secret_id, user, server, table)
    rotator = Rotator(sm_client, RotationSettings(tls="disable", upstream_host="127.0.0.1"))
    return Setup(engine, rotator, master)


@pytest.mark.parametrize(
    ("kind", "mode", "clients"),
    [
        ("postgres", "session", CLIENTS),
        ("mysql", "session", CLIENTS),
        # Fewer clients than server connections: between transactions most clients keep
        # theirs, and every rotation must take the kept ones back and close them.
        ("postgres", "transaction", 8),
        ("mysql", "transaction", 8),
        # More clients than server connections: clients queue for every transaction, and the
        # rotations happen under that queue (a connection is seldom kept there).
        ("mysql", "transaction", CLIENTS),
    ],
)
async def test_rotations_under_load_cost_no_client_an_error(
    kind: str,
    mode: str,
    clients: int,
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    mariadb: ThrowawayMariaDB,
    sm_client: Any,
    known_secrets: Secrets,
    users: Any,
    mysql_users: Any,
) -> None:
    admin_port = free_port()
    setup = await _setup(
        kind, launcher, pg, mariadb, sm_client, known_secrets, admin_port=admin_port, mode=mode
    )
    engine, load = setup.engine, Load()
    runner = asyncio.create_task(run_load(engine, load, clients=clients))
    windows: list[tuple[float, float]] = []
    drains: list[float] = []
    try:
        await asyncio.sleep(1.0)  # steady state first
        if mode == "transaction" and clients < POOL_SIZE:
            states = [
                await asyncio.to_thread(
                    lambda: get_json(admin_port, "/pools")[f"rot_{kind}"]["server_connections"]["by_state"]
                )
                for _ in range(20)
            ]
            assert any(state.get("kept") for state in states), states  # what the rotations must handle
        plan = ["single-user"] * 3 + ["alternating-users"] * 2
        for strategy in plan:
            started = time.monotonic()
            old_user = await current_username(sm_client, engine.secret_id)
            snapshot: set[int] = set()

            def on_step(step: str, snapshot: set[int] = snapshot) -> None:
                if step == "setSecret":  # from here on, only the new password logs in
                    snapshot.update(engine.session_ids())

            setup.rotator.settings = RotationSettings(
                strategy=strategy, tls="disable", upstream_host="127.0.0.1"
            )
            await setup.rotator.rotate(engine.secret_id, on_step=on_step)
            new_user = await current_username(sm_client, engine.secret_id)
            for value in await all_passwords(sm_client, engine.secret_id):
                known_secrets.values.add(value)

            # Old generation: single-user, the sessions that existed when setSecret changed
            # the password; alternating-users, every session of the previous user.
            async def drained(
                old_user: str = old_user, new_user: str = new_user, snapshot: set[int] = snapshot
            ) -> bool:
                if new_user != old_user:
                    return not await asyncio.to_thread(engine.session_ids, old_user)
                return not (snapshot & await asyncio.to_thread(engine.session_ids))

            drains.append(await wait_until(drained, DRAIN_DEADLINE))
            windows.append((started, time.monotonic()))
            await asyncio.sleep(0.5)
    finally:
        load.stop.set()
        await runner
    assert load.errors == []
    assert len(load.acknowledged) > 200
    missing = load.acknowledged - await asyncio.to_thread(engine.stored_rows)
    assert missing == set()  # every acknowledged write is in the database
    in_rotation = [d for at, d in load.latencies if any(a <= at <= b for a, b in windows)]
    steady = [d for at, d in load.latencies if not any(a <= at <= b for a, b in windows)]
    report = {
        "engine": kind,
        "mode": mode,
        "transactions": len(load.acknowledged),
        "drain_after_finish_seconds": [round(d, 3) for d in drains],
        "steady_p50_ms": round(percentile(steady, 0.5) * 1000, 2),
        "steady_p99_ms": round(percentile(steady, 0.99) * 1000, 2),
        "rotation_p50_ms": round(percentile(in_rotation, 0.5) * 1000, 2),
        "rotation_p99_ms": round(percentile(in_rotation, 0.99) * 1000, 2),
    }
    print("ROTATION-REPORT", json.dumps(report))


async def current_username(client: Any, secret_id: str) -> str:
    value = await client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    return str(json.loads(value["SecretString"])["username"])


async def all_passwords(client: Any, secret_id: str) -> list[str]:
    described = await client.describe_secret(SecretId=secret_id)
    values = []
    for version_id in described.get("VersionIdsToStages", {}):
        value = await client.get_secret_value(SecretId=secret_id, VersionId=version_id)
        values.append(str(json.loads(value["SecretString"])["password"]))
    return values


@pytest.mark.parametrize(
    ("kind", "mode"), [("postgres", "session"), ("mysql", "session"), ("mysql", "transaction")]
)
async def test_the_rotation_window_is_bridged_with_awspending(
    kind: str,
    mode: str,
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    mariadb: ThrowawayMariaDB,
    sm_client: Any,
    known_secrets: Secrets,
    users: Any,
    mysql_users: Any,
) -> None:
    setup = await _setup(kind, launcher, pg, mariadb, sm_client, known_secrets, mode=mode)
    engine, load = setup.engine, Load()
    running = launcher.started[-1]
    few = 3
    runners = [asyncio.create_task(run_load(engine, load, clients=few))]

    def in_window(step: str) -> None:
        if step == "setSecret":
            # The password changed in the database; AWSCURRENT still holds the old one. More
            # clients arrive now, so the pool must open new server connections: only
            # AWSPENDING can log them in.
            runners.append(asyncio.create_task(run_load(engine, load, clients=CLIENTS - few, first=few)))

    try:
        await asyncio.sleep(1.0)
        await setup.rotator.rotate(engine.secret_id, pause_after={"setSecret": 3.0}, on_step=in_window)
        await asyncio.sleep(1.0)
    finally:
        load.stop.set()
        await asyncio.gather(*runners)
    for value in await all_passwords(sm_client, engine.secret_id):
        known_secrets.values.add(value)
    assert load.errors == []
    assert "trying AWSPENDING version" in running.logs()
    assert load.acknowledged - await asyncio.to_thread(engine.stored_rows) == set()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
async def test_secrets_manager_outage_and_a_wrong_secret_cost_no_client_an_error(
    kind: str,
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    mariadb: ThrowawayMariaDB,
    sm_client: Any,
    sm: LocalSecretsManager,
    known_secrets: Secrets,
    users: Any,
    mysql_users: Any,
) -> None:
    admin_port = free_port()
    setup = await _setup(kind, launcher, pg, mariadb, sm_client, known_secrets, admin_port=admin_port)
    engine, load = setup.engine, Load()
    running = launcher.started[-1]
    pool_name = f"rot_{kind}"

    async def pool_state() -> dict[str, Any]:
        state: dict[str, Any] = (await asyncio.to_thread(get_json, admin_port, "/pools"))[pool_name]
        return state

    runner = asyncio.create_task(run_load(engine, load))
    try:
        await asyncio.sleep(1.0)
        # Secrets Manager down for 10 s: cached credentials keep serving.
        await asyncio.to_thread(sm.stop)
        try:
            await asyncio.sleep(10.0)
            # The health API shows it; the pool stays ready on its cached credentials.
            during = await pool_state()
            assert during["credentials"]["poll_failures"] >= 2
            assert "unreachable" in during["credentials"]["last_poll_error"]
            assert (await asyncio.to_thread(get_json, admin_port, "/readyz"))["status"] == "ready"
        finally:
            await asyncio.to_thread(sm.start)
        await wait_until(logs_contain(running, "answers again"), 40.0)
        assert (await pool_state())["credentials"]["poll_failures"] == 0
        # A wrong password as the new AWSCURRENT: reported, old connections keep serving.
        good = json.loads(
            (await sm_client.get_secret_value(SecretId=engine.secret_id, VersionStage="AWSCURRENT"))[
                "SecretString"
            ]
        )
        await put_secret_json(sm_client, engine.secret_id, {**good, "password": known_secrets.new_password()})
        await wait_until(logs_contain(running, "does not log in"), 10.0)
        wrong = await pool_state()
        assert "does not log in" in wrong["rotation_error"] and wrong["rotation_failures_total"] >= 1
        await asyncio.sleep(1.0)
        # Fixing the secret recovers without a restart.
        fixed = await put_secret_json(sm_client, engine.secret_id, good)
        await wait_until(logs_contain(running, f"to {fixed} (generation"), 70.0)
        recovered = await pool_state()
        assert recovered["rotation_error"] is None and recovered["credential_version"] == fixed
        await asyncio.sleep(0.5)
    finally:
        load.stop.set()
        await runner
    assert load.errors == []
    assert load.acknowledged - await asyncio.to_thread(engine.stored_rows) == set()
    assert len(load.acknowledged) > 100


async def test_sighup_rereads_the_secret_at_once(
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    mariadb: ThrowawayMariaDB,
    sm_client: Any,
    known_secrets: Secrets,
    users: Any,
    mysql_users: Any,
) -> None:
    setup = await _setup("postgres", launcher, pg, mariadb, sm_client, known_secrets, poll_interval="1h")
    engine, running = setup.engine, launcher.started[-1]
    conn = await asyncpg.connect(host="127.0.0.1", port=engine.port, user="x", database="appdb")
    await conn.close()
    # Alternating users: the old credentials keep working, so only a re-read can move the pool.
    setup.rotator.settings = RotationSettings(
        strategy="alternating-users", tls="disable", upstream_host="127.0.0.1"
    )
    version = await setup.rotator.rotate(engine.secret_id)
    for value in await all_passwords(sm_client, engine.secret_id):
        known_secrets.values.add(value)
    await asyncio.sleep(1.5)
    assert f"to {version}" not in running.logs()  # an hour to the next poll
    assert running.process is not None
    running.process.send_signal(signal.SIGHUP)
    await wait_until(logs_contain(running, f"to {version} (generation"), 5.0)
    conn = await asyncpg.connect(host="127.0.0.1", port=engine.port, user="x", database="appdb")
    try:
        assert await conn.fetchval("SELECT current_user") == f"{engine.user}_clone"
    finally:
        await conn.close()
