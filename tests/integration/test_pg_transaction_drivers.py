"""Issue 14's five symptoms, as real drivers meet them: each script runs through a
transaction-mode pool and, as the reference, directly against PostgreSQL; both must behave
as PostgreSQL does.

(1) psycopg's async executemany into a missing table raises at once; (2) statements
prepared again after DDL see the new objects; (3) DISCARD ALL does not break the next
prepared statement; (4) asyncpg under SQLAlchemy recovers from a migration as it does
directly; (5) statements a client deallocates do not stay on the server.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors
from sqlalchemy import String, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from proxy.local.postgres import ThrowawayPostgres
from proxy.local.proxy_process import ProxyProcess
from tests.conftest import ProxyLauncher, Users, new_secret, pool_toml, rds_secret, transaction_pool_settings

TARGETS = ["direct", "proxy"]
# A hang is the failure symptom 1 is about: bound every driver call that could hang.
NO_HANG = 10.0
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{time.monotonic_ns() % 10**9}_{next(_names)}"


@pytest.fixture(scope="session")
async def drivers_proxy(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any
) -> ProxyProcess:
    secret = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    common = transaction_pool_settings(pg)
    return launcher.start(
        pool_toml("drv20", secret, max_server_connections=20, **common)
        + pool_toml("drv5", secret, max_server_connections=5, **common)
        + pool_toml("drv1", secret, max_server_connections=1, **common)
    )


class Dsn:
    """Where a target's connections go: the pool, or the server itself."""

    def __init__(self, target: str, proxy: ProxyProcess, pg: ThrowawayPostgres, users: Users) -> None:
        self.target = target
        self._proxy = proxy
        self._pg = pg
        self._users = users

    def libpq(self, pool: str = "drv20") -> str:
        if self.target == "proxy":
            return f"host=127.0.0.1 port={self._proxy.port} dbname={pool} user=x connect_timeout=10"
        return (
            f"host=127.0.0.1 port={self._pg.port} dbname=appdb user=app password={self._users.app}"
            " sslmode=disable connect_timeout=10"
        )

    def sqlalchemy(self, pool: str = "drv5") -> str:
        if self.target == "proxy":
            return f"postgresql+asyncpg://x@127.0.0.1:{self._proxy.port}/{pool}"
        return f"postgresql+asyncpg://app:{self._users.app}@127.0.0.1:{self._pg.port}/appdb"

    def asyncpg_kwargs(self, pool: str = "drv5") -> dict[str, Any]:
        if self.target == "proxy":
            return {"host": "127.0.0.1", "port": self._proxy.port, "user": "x", "database": pool}
        return {
            "host": "127.0.0.1",
            "port": self._pg.port,
            "user": "app",
            "password": self._users.app,
            "database": "appdb",
            "ssl": False,
        }


@pytest.fixture(params=TARGETS)
def dsn(
    request: pytest.FixtureRequest, drivers_proxy: ProxyProcess, pg: ThrowawayPostgres, users: Users
) -> Dsn:
    return Dsn(request.param, drivers_proxy, pg, users)


@pytest.fixture
async def aconn(dsn: Dsn) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(dsn.libpq(), autocommit=True, prepare_threshold=0)
    try:
        yield conn
    finally:
        await conn.close()


def bounded(awaitable: Awaitable[Any]) -> Awaitable[Any]:
    return asyncio.wait_for(awaitable, NO_HANG)


# --- (1) a pipeline whose statement fails at Parse -------------------------------------------


async def test_executemany_into_a_missing_table_raises_at_once(dsn: Dsn) -> None:
    # psycopg's defaults (prepare_threshold=5): executemany runs in pipeline mode.
    async with await psycopg.AsyncConnection.connect(dsn.libpq(), autocommit=True) as conn:
        cursor = conn.cursor()
        with pytest.raises(errors.UndefinedTable):
            await bounded(
                cursor.executemany("insert into nosuchtable values (%s, %s)", [(10, "hello"), (20, "world")])
            )
        # And the connection is still usable: the next thing it does is answered.
        cursor = await bounded(conn.execute("select 'after'"))
        assert await cursor.fetchone() == ("after",)


def test_sync_executemany_into_a_missing_table_raises_at_once(dsn: Dsn) -> None:
    with psycopg.connect(dsn.libpq(), autocommit=True, prepare_threshold=0) as conn:
        with pytest.raises(errors.UndefinedTable):
            conn.cursor().executemany("insert into nosuchtable values (%s, %s)", [(10, "a"), (20, "b")])
        assert conn.execute("select 'after'").fetchone() == ("after",)


# --- (2) statements prepared again after DDL -------------------------------------------------


async def _create_enum_table(conn: psycopg.AsyncConnection[Any], enum: str, table: str) -> None:
    await conn.execute(f"create type {enum} as enum ('foo', 'bar', 'baz')")
    await conn.execute(f"create table {table} (id serial primary key, bar {enum}[])")


async def _drop_enum_table(conn: psycopg.AsyncConnection[Any], enum: str, table: str) -> None:
    await conn.execute(f"drop table {table}")
    await conn.execute(f"drop type {enum}")


Insert = Callable[[psycopg.AsyncConnection[Any], str, str], Awaitable[None]]


async def _insert_execute(conn: psycopg.AsyncConnection[Any], table: str, enum: str) -> None:
    await conn.execute(f"insert into {table} (bar) values (%(enum_col)s::{enum}[])", {"enum_col": ["foo"]})


async def _insert_executemany(conn: psycopg.AsyncConnection[Any], table: str, enum: str) -> None:
    await conn.cursor().executemany(
        f"insert into {table} (bar) values (%(enum_col)s::{enum}[])",
        [{"enum_col": ["foo"]}, {"enum_col": ["bar"]}],
    )


async def _insert_in_savepoint(conn: psycopg.AsyncConnection[Any], table: str, enum: str) -> None:
    async with conn.transaction(), conn.transaction():  # a transaction, and a savepoint inside
        await conn.execute(
            f"insert into {table} (bar) values (%(enum_col)s::{enum}[])", {"enum_col": ["baz"]}
        )


@pytest.mark.parametrize(
    "insert",
    [_insert_execute, _insert_executemany, _insert_in_savepoint],
    ids=["execute", "executemany", "savepoint"],
)
async def test_prepared_insert_works_after_its_type_is_dropped_and_created_again(
    aconn: psycopg.AsyncConnection[Any], insert: Insert
) -> None:
    enum, table = unique("prepenum"), unique("preptable")
    await bounded(_create_enum_table(aconn, enum, table))
    await bounded(insert(aconn, table, enum))
    await bounded(_drop_enum_table(aconn, enum, table))
    await bounded(_create_enum_table(aconn, enum, table))
    try:
        await bounded(insert(aconn, table, enum))  # through the pool: "cache lookup failed for type"
        cursor = await aconn.execute(f"select count(*) from {table}")
        assert await cursor.fetchone() == (2 if insert is _insert_executemany else 1,)
    finally:
        await bounded(_drop_enum_table(aconn, enum, table))


async def test_prepared_select_star_sees_a_column_added_between_two_runs(
    aconn: psycopg.AsyncConnection[Any],
) -> None:
    table = unique("altered")
    await aconn.execute(f"create table {table} (id int, data text)")
    try:
        await aconn.execute(f"insert into {table} values (1, 'one')")
        cursor = await bounded(aconn.execute(f"select * from {table}"))
        assert await cursor.fetchall() == [(1, "one")]
        await aconn.execute(f"alter table {table} add data2 text")
        # Through the pool: "cached plan must not change result type".
        cursor = await bounded(aconn.execute(f"select * from {table}"))
        assert await cursor.fetchall() == [(1, "one", None)]
    finally:
        await aconn.execute(f"drop table {table}")


# --- (3) DISCARD ALL ---------------------------------------------------------------------------


async def test_discard_all_then_a_prepared_insert_works(aconn: psycopg.AsyncConnection[Any]) -> None:
    table = unique("discarded")
    await aconn.execute(f"create table {table} (id int)")
    try:
        await aconn.execute(f"insert into {table} values (%s)", (1,))
        await bounded(aconn.execute("DISCARD ALL"))
        # Through the pool: 'prepared statement "rp_..." does not exist'.
        await bounded(aconn.execute(f"insert into {table} values (%s)", (2,)))
        cursor = await aconn.execute(f"select array_agg(id order by id) from {table}")
        assert await cursor.fetchone() == ([1, 2],)
    finally:
        await aconn.execute(f"drop table {table}")


def test_sync_discard_all_then_a_prepared_insert_works(dsn: Dsn) -> None:
    table = unique("discarded_sync")
    with psycopg.connect(dsn.libpq(), autocommit=True, prepare_threshold=0) as conn:
        conn.execute(f"create table {table} (id int)")
        try:
            conn.execute(f"insert into {table} values (%s)", (1,))
            conn.execute("DISCARD ALL")
            conn.execute(f"insert into {table} values (%s)", (2,))
            assert conn.execute(f"select count(*) from {table}").fetchone() == (2,)
        finally:
            conn.execute(f"drop table {table}")


# --- (4) a migration under load, asyncpg under SQLAlchemy --------------------------------------

WORKERS = 20
LOAD_SECONDS = 4.0
MIGRATE_AT = 1.5


class Base(DeclarativeBase):
    pass


def _item_model(table: str) -> type[Any]:
    return type(
        f"Item_{table}",
        (Base,),
        {
            "__tablename__": table,
            "id": mapped_column(primary_key=True),
            "label": mapped_column(String(40)),
            "__annotations__": {"id": Mapped[int], "label": Mapped[str]},
        },
    )


def _is_invalid_cached_statement(exc: DBAPIError) -> bool:
    cause: BaseException | None = exc.orig
    while cause is not None:
        if isinstance(cause, asyncpg.InvalidCachedStatementError):
            return True
        cause = cause.__cause__
    return "InvalidCachedStatementError" in str(exc)


async def _orm_load(
    engine: AsyncEngine, model: type[Any], migrate: Callable[[], Awaitable[None]]
) -> tuple[Counter[int], Counter[str], list[int]]:
    """WORKERS sessions on ``engine`` insert and read items for LOAD_SECONDS while ``migrate``
    runs once; return the InvalidCachedStatementError count per worker, any other errors,
    and the rounds each worker completed after the migration."""
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    cached_errors: Counter[int] = Counter()
    other_errors: Counter[str] = Counter()
    rounds_after = [0] * WORKERS
    migrated = asyncio.Event()
    deadline = time.monotonic() + LOAD_SECONDS

    async def worker(index: int) -> None:
        while time.monotonic() < deadline:
            try:
                # One transaction a round: an open one would hold the lock the migration needs.
                async with sessions.begin() as session:
                    session.add(model(label=f"w{index}"))
                    await session.flush()
                    rows = (await session.execute(select(model).where(model.label == f"w{index}"))).scalars()
                    assert all(row.label == f"w{index}" for row in rows)
                if migrated.is_set():
                    rounds_after[index] += 1
            except DBAPIError as exc:
                if _is_invalid_cached_statement(exc):
                    cached_errors[index] += 1
                else:
                    other_errors[f"{type(exc.orig).__name__}: {exc.orig}"] += 1

    async def migration() -> None:
        await asyncio.sleep(MIGRATE_AT)
        await migrate()
        migrated.set()

    await bounded(asyncio.gather(migration(), *(worker(index) for index in range(WORKERS))))
    return cached_errors, other_errors, rounds_after


@pytest.mark.parametrize(
    ("target", "ddl_via"),
    [("direct", "server"), ("proxy", "pool"), ("proxy", "server")],
    ids=["direct", "proxy-ddl-through-the-pool", "proxy-ddl-on-the-server"],
)
async def test_orm_on_asyncpg_heals_after_a_migration_under_load(
    drivers_proxy: ProxyProcess, pg: ThrowawayPostgres, users: Users, target: str, ddl_via: str
) -> None:
    table = unique("orm_items")
    model = _item_model(table)
    workload = Dsn(target, drivers_proxy, pg, users)
    ddl = Dsn("proxy" if ddl_via == "pool" else "direct", drivers_proxy, pg, users)

    async def migrate() -> None:
        conn = await asyncpg.connect(**ddl.asyncpg_kwargs())
        try:
            await conn.execute(f"ALTER TABLE {table} ALTER COLUMN label TYPE varchar(80)")
        finally:
            await conn.close()

    engine = create_async_engine(workload.sqlalchemy(), pool_size=WORKERS, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: model.__table__.create(sync))
        cached_errors, other_errors, rounds_after = await _orm_load(engine, model, migrate)
    finally:
        await engine.dispose()
        pg.sql(f"DROP TABLE IF EXISTS {table}", database="appdb")
    # asyncpg's contract (as directly): a connection whose cached statement the migration
    # invalidated raises InvalidCachedStatementError once, prepares afresh and carries on.
    assert other_errors == Counter()
    assert max(cached_errors.values(), default=0) <= 2, cached_errors
    assert sum(cached_errors.values()) <= WORKERS * 2, cached_errors
    assert min(rounds_after) > 0, rounds_after  # every worker carried on after the migration


# --- (5) deallocation reaches the server --------------------------------------------------------


def _server_statements(dsn: Dsn, marker: str) -> int:
    """How many server-side statements on the pool's only connection hold ``marker``: asked by
    another client (unprepared), which gets the same server connection."""
    with psycopg.connect(dsn.libpq("drv1"), autocommit=True, prepare_threshold=None) as other:
        row = other.execute(
            "select count(*) from pg_prepared_statements where statement like %s", (f"%{marker}%",)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _count_on_own_session(conn: psycopg.Connection[Any], marker: str) -> int:
    row = conn.execute(
        "select count(*) from pg_prepared_statements where statement like %s", (f"%{marker}%",), prepare=False
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_statements_evicted_by_the_driver_leave_the_server(dsn: Dsn) -> None:
    marker = unique("lru")
    with psycopg.connect(dsn.libpq("drv1"), autocommit=True, prepare_threshold=0) as conn:
        conn.prepared_max = 5
        for index in range(30):
            assert conn.execute(f"select %s::int + {index} as {marker}", (1,)).fetchone() == (1 + index,)
        conn.execute("select 'one more round trip'", prepare=False)
        # Directly, the reference: psycopg keeps prepared_max statements (and the server too).
        assert _count_on_own_session(conn, marker) <= 5 + 1
    if dsn.target == "proxy":  # and the pool's connection, once the client has left
        assert _server_statements(dsn, marker) <= 5 + 1


def test_deallocate_all_after_ddl_leaves_the_server(dsn: Dsn) -> None:
    marker = unique("ddl")
    with psycopg.connect(dsn.libpq("drv1"), autocommit=True, prepare_threshold=0) as conn:
        for index in range(10):
            conn.execute(f"select %s::int + {index} as {marker}", (1,))
        conn.execute(f"create table {marker} (id int)")
        conn.execute(f"drop table {marker}")  # psycopg: DROP → DEALLOCATE ALL
        conn.execute("select 'one more round trip'", prepare=False)
        assert _count_on_own_session(conn, marker) == 0
    if dsn.target == "proxy":
        assert _server_statements(dsn, marker) == 0
