"""Borrowing and releasing, scripted against an upstream in memory: which connection a borrower
gets, who waits and in what order, timeouts, resets, variants and closing."""

from __future__ import annotations

import asyncio

import pytest

from proxy.core.errors import BorrowTimeout, PoolClosed
from proxy.core.server import ConnectionState, ServerConnection
from proxy.pool.janitor import Janitor
from proxy.pool.pool import Pool
from tests.unit.test_pool_fakes import MemoryConnection, scripted_pool, settle

IDLE, BUSY, RESETTING, CLOSED = (
    ConnectionState.IDLE,
    ConnectionState.BUSY,
    ConnectionState.RESETTING,
    ConnectionState.CLOSED,
)


async def _borrow(pool: Pool, variant: object = None) -> MemoryConnection:
    connection = await pool.borrow(variant)
    assert isinstance(connection, MemoryConnection)
    return connection


def _queue_timers() -> int:
    """The timers armed for wait-queue timeouts, read from asyncio's own list of timers."""
    scheduled: list[asyncio.TimerHandle] = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
    return sum(
        1
        for timer in scheduled
        if not timer.cancelled() and timer._callback.__qualname__ == "WaitQueue._expire_places"  # type: ignore[attr-defined]
    )


# --- which connection -------------------------------------------------------------------------
async def test_idle_connections_are_lent_most_recently_released_first() -> None:
    async with scripted_pool(max_server_connections=3) as s:
        first, second = await _borrow(s.pool), await _borrow(s.pool)
        s.pool.release(first, reusable=True)
        s.pool.release(second, reusable=True)
        assert await s.pool.borrow() is second
        assert s.pool.borrow_now() is first
        assert len(s.upstream.opened) == 2 and s.counts_are_true()


async def test_a_connection_is_opened_only_when_none_is_idle_and_there_is_room() -> None:
    async with scripted_pool(max_server_connections=2) as s:
        first, second = await _borrow(s.pool), await _borrow(s.pool)
        assert s.upstream.opened == [first, second] and s.pool.size == 2 and s.pool.opened_total == 2
        s.pool.release(first, reusable=True)
        assert await s.pool.borrow() is first
        assert len(s.upstream.opened) == 2 and s.pool.borrowed == 2


async def test_a_full_pool_serves_its_waiting_borrowers_first_come_first_served() -> None:
    async with scripted_pool(max_server_connections=1, borrow_timeout=2.0) as s:
        held = await _borrow(s.pool)
        served: list[str] = []

        async def borrower(name: str) -> ServerConnection:
            connection = await s.pool.borrow()
            served.append(name)
            return connection

        waiting = [asyncio.create_task(borrower(name)) for name in ("a", "b", "c")]
        await settle()
        assert s.pool.waiting == 3 and served == []
        for task in waiting:
            s.pool.release(held, reusable=True)
            assert await task is held
        assert served == ["a", "b", "c"] and len(s.upstream.opened) == 1 and s.pool.waiting == 0


async def test_a_borrower_gives_up_after_borrow_timeout_and_is_told_why() -> None:
    async with scripted_pool(max_server_connections=1, borrow_timeout=0.1) as s:
        held = await _borrow(s.pool)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(
            BorrowTimeout,
            match=r'pool "unit": .* within borrow_timeout 0.1s \(1 of max_server_connections 1 in use\)',
        ):
            await s.pool.borrow()
        assert loop.time() - started >= 0.1
        assert s.pool.borrow_timeouts_total == 1 and s.pool.waiting == 0
        s.pool.release(held, reusable=True)
        assert s.pool.borrow_now() is held  # nobody left in the queue to serve first


async def test_a_long_idle_connection_is_checked_before_it_is_lent_and_a_dead_one_replaced() -> None:
    async with scripted_pool(liveness_check_after=0.0) as s:
        connection = await _borrow(s.pool)
        s.pool.release(connection, reusable=True)
        assert s.pool.borrow_now() is None  # a check is due: borrow() does it
        assert await s.pool.borrow() is connection and connection.checks == 1
        s.pool.release(connection, reusable=True)
        connection.dead = True
        replacement = await _borrow(s.pool)
        assert replacement is not connection and connection.state is CLOSED and connection.closes == 1
        assert s.counts_are_true()


async def test_a_connection_past_server_lifetime_closes_when_released() -> None:
    async with scripted_pool(server_lifetime=0.05) as s:
        connection = await _borrow(s.pool)
        await asyncio.sleep(0.06)
        s.pool.release(connection, reusable=True)
        assert connection.is_closed and s.pool.size == 0
        assert await s.pool.borrow() is not connection


async def test_an_idle_connection_the_server_closes_leaves_the_pool_a_busy_one_on_release() -> None:
    async with scripted_pool() as s:
        idle, busy = await _borrow(s.pool), await _borrow(s.pool)
        s.pool.release(idle, reusable=True)
        idle.hang_up()
        busy.hang_up()
        assert idle.state is CLOSED and busy.state is BUSY and s.pool.size == 1
        s.pool.release(busy, reusable=True)
        assert busy.state is CLOSED and s.pool.size == 0 and s.counts_are_true()


async def test_an_outage_is_retried_within_borrow_timeout() -> None:
    async with scripted_pool(borrow_timeout=1.0) as s:
        s.upstream.down = True
        borrowing = asyncio.create_task(s.pool.borrow())
        await asyncio.sleep(0.07)
        assert not borrowing.done() and s.pool.failed_total >= 1
        s.upstream.down = False
        assert (await borrowing).state is BUSY
        assert len(s.upstream.logins) >= 2 and s.pool.last_error is None


# --- borrow_now and queue_for_release (transaction mode's borrowing without a task) ---------
async def test_borrow_now_lends_an_idle_connection_at_once_and_otherwise_says_none() -> None:
    async with scripted_pool(max_server_connections=1) as s:
        assert s.pool.borrow_now() is None  # nothing idle: borrow() opens one
        assert s.upstream.logins == []
        connection = await _borrow(s.pool)
        s.pool.release(connection, reusable=True)
        s.pool.pause()
        assert s.pool.borrow_now() is None  # paused: borrow() waits for resume
        s.pool.resume()
        assert s.pool.borrow_now() is connection and s.pool.borrowed == 1


async def test_queue_for_release_declines_when_borrow_has_more_to_do_than_wait() -> None:
    async with scripted_pool(max_server_connections=1) as s:
        answered: list[asyncio.Future[ServerConnection | None]] = []
        assert s.pool.queue_for_release(answered.append) is None  # room: borrow() opens one
        connection = await _borrow(s.pool)
        s.pool.release(connection, reusable=True)
        assert s.pool.queue_for_release(answered.append) is None  # an idle one to check and lend
        assert s.pool.borrow_now() is connection
        s.pool.pause()
        assert s.pool.queue_for_release(answered.append) is None  # paused: borrow() waits
        s.pool.resume()
        assert s.pool.queue_for_release(answered.append) is not None  # full: wait for a release


async def test_released_connections_go_to_borrowers_and_places_in_arrival_order() -> None:
    async with scripted_pool(max_server_connections=2, borrow_timeout=1.0) as s:
        answered: list[asyncio.Future[ServerConnection | None]] = []
        first, second = await _borrow(s.pool), await _borrow(s.pool)
        borrower = asyncio.create_task(s.pool.borrow())
        await settle()
        place_1 = s.pool.queue_for_release(answered.append)
        place_2 = s.pool.queue_for_release(answered.append)
        assert place_1 is not None and place_2 is not None and s.pool.waiting == 3
        s.pool.release(second, reusable=True)
        s.pool.release(first, reusable=True)
        assert await borrower is second and await place_1 is first and not place_2.done()
        s.pool.release(second, reusable=True)
        assert await place_2 is second
        await settle()  # the queue's bookkeeping runs as the futures' callbacks
        assert answered == [place_1, place_2] and s.pool.waiting == 0 and s.pool.borrowed == 2


async def test_places_time_out_in_arrival_order_on_one_timer() -> None:
    async with scripted_pool(max_server_connections=1, borrow_timeout=0.1) as s:
        answered: list[asyncio.Future[ServerConnection | None]] = []
        await _borrow(s.pool)
        loop = asyncio.get_running_loop()
        assert _queue_timers() == 0
        started = loop.time()
        first = s.pool.queue_for_release(answered.append)
        assert _queue_timers() == 1
        await asyncio.sleep(0.05)
        later = [s.pool.queue_for_release(answered.append) for _ in range(20)]
        assert _queue_timers() == 1  # still one, however many wait
        assert first is not None and all(place is not None for place in later)
        with pytest.raises(BorrowTimeout, match=r"borrow_timeout 0\.1s"):
            await first
        assert loop.time() - started >= 0.099 and not any(place.done() for place in later if place)
        for place in later:
            assert place is not None
            with pytest.raises(BorrowTimeout):
                await place
        assert loop.time() - started >= 0.149
        await settle()
        assert s.pool.borrow_timeouts_total == 21 and s.pool.waiting == 0 and len(answered) == 21


async def test_a_place_given_up_leaves_the_queue() -> None:
    async with scripted_pool(max_server_connections=1, borrow_timeout=1.0) as s:
        answered: list[asyncio.Future[ServerConnection | None]] = []
        held = await _borrow(s.pool)
        place = s.pool.queue_for_release(answered.append)
        assert place is not None
        place.cancel()
        await settle()
        assert answered == [place] and s.pool.waiting == 0
        s.pool.release(held, reusable=True)
        assert held.state is IDLE and s.pool.borrow_now() is held


# --- resets -----------------------------------------------------------------------------------
async def test_a_released_connection_is_reset_before_anyone_else_gets_it() -> None:
    async with scripted_pool(max_server_connections=1, borrow_timeout=1.0) as s:
        connection = await _borrow(s.pool)
        connection.dirty, connection.reset_gate = True, asyncio.Event()
        s.pool.release(connection, reusable=True)
        assert connection.state is RESETTING and s.pool.counts[RESETTING] == 1
        waiting = asyncio.create_task(s.pool.borrow())
        await settle()
        assert not waiting.done() and s.pool.borrow_now() is None
        connection.reset_gate.set()
        assert await waiting is connection and connection.resets == 1 and not connection.dirty
        assert s.counts_are_true()


async def test_a_borrower_waits_for_a_connection_being_reset_rather_than_open_one() -> None:
    async with scripted_pool(max_server_connections=2, borrow_timeout=1.0) as s:
        connection = await _borrow(s.pool)
        connection.dirty, connection.reset_gate = True, asyncio.Event()
        s.pool.release(connection, reusable=True)
        waiting = asyncio.create_task(s.pool.borrow())
        await settle()
        assert not waiting.done() and len(s.upstream.logins) == 1  # room for one more, not opened
        connection.reset_gate.set()
        assert await waiting is connection and len(s.upstream.opened) == 1


async def test_a_connection_whose_reset_fails_is_closed() -> None:
    async with scripted_pool() as s:
        connection = await _borrow(s.pool)
        connection.dirty, connection.reset_fails = True, True
        s.pool.release(connection, reusable=True)
        await settle()
        assert connection.state is CLOSED and connection.is_closed and s.pool.size == 0
        assert s.counts_are_true()


# --- variants ---------------------------------------------------------------------------------
async def test_borrowers_only_get_connections_of_their_variant() -> None:
    async with scripted_pool(max_server_connections=1, borrow_timeout=1.0) as s:
        a = await _borrow(s.pool, "a")
        s.pool.release(a, reusable=True)
        assert await s.pool.borrow("a") is a
        wants_b = asyncio.create_task(s.pool.borrow("b"))
        await settle()
        s.pool.release(a, reusable=True)  # full, and only "b" is wanted: "a" closes to make room
        b = await wants_b
        assert b.variant == "b" and a.is_closed and s.pool.size == 1
        s.pool.release(b, reusable=True)
        assert s.pool.borrow_now("a") is None  # an idle "b" is no use
        again = await s.pool.borrow("a")  # the idle "b" closes to open an "a" within the limit
        assert again.variant == "a" and b.is_closed and s.pool.size == 1
        assert [variant for _, _, variant in s.upstream.logins] == ["a", "b", "a"]
        assert s.counts_are_true()


# --- closing, pausing, retiring ---------------------------------------------------------------
async def test_closing_fails_every_waiter_with_pool_closed_and_closes_every_connection() -> None:
    async with scripted_pool(max_server_connections=1, borrow_timeout=5.0) as s:
        answered: list[asyncio.Future[ServerConnection | None]] = []
        held = await _borrow(s.pool)
        waiting = asyncio.create_task(s.pool.borrow())
        await settle()
        place = s.pool.queue_for_release(answered.append)
        assert place is not None
        await s.pool.close()
        with pytest.raises(PoolClosed, match='pool "unit" is shutting down'):
            await waiting
        with pytest.raises(PoolClosed):
            await place
        assert held.state is CLOSED and held.is_closed
        with pytest.raises(PoolClosed):
            await s.pool.borrow()
        assert s.pool.borrow_now() is None and s.pool.queue_for_release(answered.append) is None
        s.pool.release(held, reusable=True)  # its client gives it back late: nothing to do
        assert held.closes == 1 and s.counts_are_true()


async def test_a_paused_pool_holds_new_borrowers_until_resumed_and_fails_them_on_close() -> None:
    async with scripted_pool(borrow_timeout=2.0) as s:
        connection = await _borrow(s.pool)
        s.pool.release(connection, reusable=True)
        s.pool.pause()
        held = asyncio.create_task(s.pool.borrow())
        await settle()
        assert not held.done() and s.pool.waiting == 1
        s.pool.resume()
        assert await held is connection
        s.pool.pause()
        held_again = asyncio.create_task(s.pool.borrow())
        await settle()
        await s.pool.close()
        with pytest.raises(PoolClosed):
            await held_again


async def test_a_retired_pool_keeps_no_idle_connections_and_names_its_successor() -> None:
    async with scripted_pool() as s, scripted_pool() as replaced, scripted_pool() as latest:
        idle, busy = await _borrow(s.pool), await _borrow(s.pool)
        s.pool.release(idle, reusable=True)
        s.pool.retire(successor=replaced.pool)
        replaced.pool.retire(successor=latest.pool)
        assert idle.is_closed and not busy.is_closed
        assert s.pool.live_successor() is latest.pool
        assert not s.pool.keep(busy, lambda: None)
        s.pool.release(busy, reusable=True)  # lent again while its client's session goes on
        assert busy.state is IDLE
        Janitor(s.pool).expire()  # but not kept idle for long
        assert busy.is_closed and s.pool.size == 0
