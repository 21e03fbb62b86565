"""The engine-agnostic pool, driven with real PostgreSQL server connections (PgConnector)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable

import pytest

from proxy.config import Address, CredentialsConfig, PoolConfig
from proxy.core.errors import BorrowTimeout, PoolClosed
from proxy.core.server import ConnectionState, ServerConnection
from proxy.credentials.static import StaticCredentialSource
from proxy.local.postgres import ThrowawayPostgres
from proxy.pool.keep import KEEP_LIMIT
from proxy.pool.pool import Pool
from proxy.postgres.server import PgConnector, PgServerConnection
from tests.conftest import Users


@pytest.fixture
def pool_config(pg: ThrowawayPostgres, users: Users) -> PoolConfig:
    return PoolConfig(
        name="unit",
        engine="postgres",
        listen=Address("127.0.0.1", 1),
        upstream=Address("127.0.0.1", pg.port),
        database="appdb",
        tls="disable",
        max_server_connections=3,
        borrow_timeout=2.0,
        credentials=CredentialsConfig(source="static", username="app", password=users.app),
    )


@pytest.fixture
async def make_pool(pool_config: PoolConfig) -> AsyncIterator[Callable[..., Pool]]:
    pools: list[Pool] = []

    def make(**changes: object) -> Pool:
        config = dataclasses.replace(pool_config, **changes)  # type: ignore[arg-type]
        pool = Pool(config, StaticCredentialSource(config.credentials), PgConnector(config))
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def _wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def _pid(connection: object) -> int:
    assert isinstance(connection, PgServerConnection)
    return connection.backend_pid


async def test_pool_fills_to_its_minimum(make_pool: Callable[..., Pool], pg: ThrowawayPostgres) -> None:
    pool = make_pool(min_server_connections=2)
    await pool.start()
    await _wait_until(lambda: pool.counts[ConnectionState.IDLE] == 2)
    assert pool.size == 2
    backends = pg.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state = 'idle'")
    assert int(backends) >= 2


async def test_released_connection_is_reset_and_reused(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool()
    first = await pool.borrow()
    assert isinstance(first, PgServerConnection)
    await first.run_queries("SET work_mem = '9MB'", "BEGIN")
    first.transaction_status = b"T"
    pool.release(first, reusable=True)
    second = await pool.borrow()
    assert second is first and pool.opened_total == 1
    assert isinstance(second, PgServerConnection)
    errors = await second.run_queries("SELECT 1")
    assert errors == [] and second.transaction_status == b"I"  # the reset rolled back
    pool.release(second, reusable=True)


async def test_waiters_share_a_bounded_pool(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(max_server_connections=3, borrow_timeout=10.0)
    peak = 0

    async def worker() -> int:
        nonlocal peak
        connection = await pool.borrow()
        peak = max(peak, pool.size)
        await asyncio.sleep(0.02)
        pid = _pid(connection)
        pool.release(connection, reusable=True)
        return pid

    pids = await asyncio.gather(*(worker() for _ in range(30)))
    assert len(pids) == 30
    assert peak <= 3 and len(set(pids)) <= 3
    assert pool.opened_total <= 3


async def test_borrow_times_out_with_a_clear_error(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(max_server_connections=1, borrow_timeout=0.3)
    held = await pool.borrow()
    started = time.monotonic()
    with pytest.raises(BorrowTimeout, match=r'pool "unit".*borrow_timeout 0.3s'):
        await pool.borrow()
    assert 0.25 <= time.monotonic() - started < 2
    assert pool.waiting == 0 and pool.borrow_timeouts_total == 1
    pool.release(held, reusable=True)
    again = await pool.borrow()  # the pool still works
    pool.release(again, reusable=True)


async def test_idle_connection_killed_by_the_server_leaves_the_pool(
    make_pool: Callable[..., Pool], pg: ThrowawayPostgres
) -> None:
    pool = make_pool()
    connection = await pool.borrow()
    pid = _pid(connection)
    pool.release(connection, reusable=True)
    await _wait_until(lambda: pool.counts[ConnectionState.IDLE] == 1)
    pg.sql(f"SELECT pg_terminate_backend({pid})")
    await _wait_until(lambda: pool.size == 0)
    fresh = await pool.borrow()
    assert _pid(fresh) != pid
    pool.release(fresh, reusable=True)


async def test_long_idle_connection_is_checked_before_reuse(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(liveness_check_after=0.0)
    connection = await pool.borrow()
    assert isinstance(connection, PgServerConnection)
    pool.release(connection, reusable=True)
    await _wait_until(lambda: pool.counts[ConnectionState.IDLE] == 1)
    # Break the session without closing the socket: the check must notice and replace it.
    connection.endpoint.write(b"garbage that is no message")
    replacement = await pool.borrow()
    assert replacement is not connection
    assert await replacement.run_queries("SELECT 1") == []  # type: ignore[attr-defined]
    pool.release(replacement, reusable=True)


async def test_idle_timeout_and_server_lifetime_retire_connections(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(idle_timeout=0.3)
    await pool.start()
    connection = await pool.borrow()
    pool.release(connection, reusable=True)
    await _wait_until(lambda: pool.size == 0, within=5)

    aging = make_pool(server_lifetime=0.3)
    first = await aging.borrow()
    await asyncio.sleep(0.35)
    aging.release(first, reusable=True)
    second = await aging.borrow()
    assert second is not first and first.is_closed
    aging.release(second, reusable=True)


async def test_not_reusable_connections_are_closed(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool()
    connection = await pool.borrow()
    pool.release(connection, reusable=False)
    assert connection.is_closed or connection.state is ConnectionState.CLOSED
    assert pool.size == 0


async def test_close_fails_waiters_and_closes_connections(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(max_server_connections=1, borrow_timeout=10.0)
    held = await pool.borrow()
    waiter = asyncio.create_task(pool.borrow())
    await asyncio.sleep(0.05)
    await pool.close()
    with pytest.raises(PoolClosed):
        await waiter
    assert held.is_closed or held.state is ConnectionState.CLOSED
    with pytest.raises(PoolClosed):
        await pool.borrow()


async def test_upstream_restart_is_survived(make_pool: Callable[..., Pool], pg: ThrowawayPostgres) -> None:
    pool = make_pool(borrow_timeout=15.0)
    connection = await pool.borrow()
    pool.release(connection, reusable=True)
    await _wait_until(lambda: pool.counts[ConnectionState.IDLE] == 1)
    await asyncio.to_thread(pg.restart)
    fresh = await pool.borrow()
    assert fresh is not connection
    assert await fresh.run_queries("SELECT 1") == []  # type: ignore[attr-defined]
    pool.release(fresh, reusable=True)


async def test_borrowers_only_get_connections_of_their_variant(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(max_server_connections=1, borrow_timeout=5.0)
    first = await pool.borrow("a")
    pool.release(first, reusable=True)
    await _wait_until(lambda: pool.counts[ConnectionState.IDLE] == 1)
    again = await pool.borrow("a")
    assert again is first  # same variant: reused
    waiter = asyncio.create_task(pool.borrow("b"))
    await asyncio.sleep(0.05)
    pool.release(again, reusable=True)  # the full pool makes room for the other variant
    other = await waiter
    assert other is not first and other.variant == "b" and first.is_closed
    pool.release(other, reusable=True)
    await _wait_until(lambda: pool.counts[ConnectionState.IDLE] == 1)
    third = await pool.borrow("a")  # idle "b" is closed to open an "a" within the limit
    assert third.variant == "a" and other.is_closed and pool.size == 1
    pool.release(third, reusable=True)


class _Holder:
    """A transaction-mode client as the pool sees it while it keeps a connection."""

    def __init__(self, pool: Pool, connection: ServerConnection) -> None:
        self.pool, self.connection, self.taken_back = pool, connection, 0

    def take_back(self) -> None:
        self.taken_back += 1
        self.pool.release(self.connection, reusable=True)


async def _kept(pool: Pool) -> _Holder:
    """A connection borrowed, its transaction over, and kept by its client."""
    holder = _Holder(pool, await pool.borrow())
    holder.connection.transaction_status = b"I"  # type: ignore[attr-defined]
    assert pool.keep(holder.connection, holder.take_back)
    assert pool.counts[ConnectionState.KEPT] == 1 and pool.borrowed == 0
    return holder


async def test_a_kept_connection_is_taken_back_for_a_borrower_not_opened_anew(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool(max_server_connections=3)
    holder = await _kept(pool)
    # The client uses it again: no borrow at all.
    pool.use_again(holder.connection)
    assert pool.borrowed == 1 and pool.counts[ConnectionState.KEPT] == 0
    assert pool.keep(holder.connection, holder.take_back)
    # Someone else needs one: the pool could open a second, but an idle one is at hand.
    other = await pool.borrow()
    assert other is holder.connection and holder.taken_back == 1
    assert pool.opened_total == 1 and pool.counts[ConnectionState.KEPT] == 0
    pool.release(other, reusable=True)


async def test_nothing_is_kept_while_a_borrower_waits_or_the_pool_is_paused(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool(max_server_connections=1, borrow_timeout=5.0)
    connection = await pool.borrow()
    waiting = asyncio.create_task(pool.borrow())
    await _wait_until(lambda: pool.waiting == 1)
    assert not pool.keep(connection, lambda: None)
    pool.release(connection, reusable=True)
    assert await waiting is connection
    pool.pause()
    assert not pool.keep(connection, lambda: None)
    pool.resume()
    assert pool.keep(connection, lambda: pool.release(connection, reusable=True))
    pool.pause()  # takes it back: the client's next transaction waits for resume
    assert pool.counts[ConnectionState.IDLE] == 1 and pool.counts[ConnectionState.KEPT] == 0
    pool.resume()


async def test_the_janitor_takes_back_what_an_idle_client_kept(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool()
    await pool.start()
    holder = await _kept(pool)
    started = time.monotonic()
    await _wait_until(lambda: holder.taken_back == 1)
    assert time.monotonic() - started >= KEEP_LIMIT
    assert pool.counts[ConnectionState.IDLE] == 1 and pool.counts[ConnectionState.KEPT] == 0


async def test_a_drain_closes_kept_connections(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool()
    holder = await _kept(pool)
    assert pool.reconnect()["idle_closed"] == 1
    assert holder.taken_back == 1 and holder.connection.state is ConnectionState.CLOSED
    assert pool.size == 0


async def test_a_full_pool_queues_borrowers_without_a_task(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(max_server_connections=1, borrow_timeout=0.3)
    answered: list[asyncio.Future[ServerConnection | None]] = []
    assert pool.queue_for_release(answered.append) is None  # room to open one: borrow() does that
    held = await pool.borrow()
    queued = pool.queue_for_release(answered.append)
    assert queued is not None and pool.waiting == 1
    pool.release(held, reusable=True)
    assert await queued is held
    await asyncio.sleep(0)  # the queue's bookkeeping runs as the future's callback
    assert answered == [queued] and pool.waiting == 0 and pool.borrowed == 1
    # Nobody releases: the places time out in order, with the pool's borrow_timeout.
    started = time.monotonic()
    first = pool.queue_for_release(answered.append)
    await asyncio.sleep(0.1)
    second = pool.queue_for_release(answered.append)
    assert first is not None and second is not None
    with pytest.raises(BorrowTimeout, match=r'pool "unit".*borrow_timeout 0.3s'):
        await first
    assert 0.25 <= time.monotonic() - started < 1 and not second.done()
    with pytest.raises(BorrowTimeout):
        await second
    assert 0.35 <= time.monotonic() - started < 1
    await asyncio.sleep(0)
    assert pool.borrow_timeouts_total == 2 and pool.waiting == 0
    # A borrower that gives up leaves the queue; closing fails the ones still in it.
    gave_up, left = pool.queue_for_release(answered.append), pool.queue_for_release(answered.append)
    assert gave_up is not None and left is not None
    gave_up.cancel()
    await pool.close()
    with pytest.raises(PoolClosed):
        await left
    await asyncio.sleep(0)
    assert pool.waiting == 0 and len(answered) == 5
