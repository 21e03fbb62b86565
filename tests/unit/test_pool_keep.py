"""Kept connections (transaction mode): a client keeps its connection while nobody needs it,
uses it again for its next transaction, or the pool takes it back; and the janitor's upkeep."""

from __future__ import annotations

import asyncio

from proxy.core.server import ConnectionState
from proxy.pool.janitor import Janitor
from proxy.pool.keep import KEEP_LIMIT
from proxy.pool.pool import Pool
from tests.unit.test_pool_fakes import MemoryConnection, scripted_pool, settle

IDLE, BUSY, KEPT, CLOSED = (
    ConnectionState.IDLE,
    ConnectionState.BUSY,
    ConnectionState.KEPT,
    ConnectionState.CLOSED,
)


class Client:
    """A transaction-mode client as the pool sees it: it keeps its connection when it can."""

    def __init__(self, pool: Pool, connection: MemoryConnection) -> None:
        self.pool, self.connection, self.taken_back = pool, connection, 0

    def keeps(self) -> bool:
        return self.pool.keep(self.connection, self.take_back)

    def take_back(self) -> None:
        self.taken_back += 1
        self.pool.release(self.connection, reusable=True)


async def _client(pool: Pool) -> Client:
    connection = await pool.borrow()
    assert isinstance(connection, MemoryConnection)
    return Client(pool, connection)


async def test_a_client_keeps_its_connection_and_uses_it_again_without_a_borrow() -> None:
    async with scripted_pool() as s:
        client = await _client(s.pool)
        assert client.keeps()
        assert client.connection.state is KEPT and s.pool.counts[KEPT] == 1 and s.pool.borrowed == 0
        s.pool.use_again(client.connection)
        assert client.connection.state is BUSY and s.pool.borrowed == 1 and s.pool.counts[KEPT] == 0
        assert client.taken_back == 0 and len(s.upstream.logins) == 1 and s.counts_are_true()


async def test_a_client_may_release_the_connection_it_kept() -> None:
    async with scripted_pool() as s:
        client = await _client(s.pool)
        assert client.keeps()
        s.pool.release(client.connection, reusable=True)  # it leaves while idle
        assert client.connection.state is IDLE and client.taken_back == 0
        s.pool.use_again(client.connection)  # a late word from it changes nothing
        assert client.connection.state is IDLE and s.counts_are_true()


async def test_nothing_is_kept_while_someone_waits_or_the_pool_is_paused() -> None:
    async with scripted_pool(max_server_connections=1, borrow_timeout=1.0) as s:
        client = await _client(s.pool)
        waiting = asyncio.create_task(s.pool.borrow())
        await settle()
        assert not client.keeps()
        s.pool.release(client.connection, reusable=True)
        assert await waiting is client.connection
        s.pool.pause()
        assert not client.keeps()
        s.pool.resume()
        assert client.keeps()
        s.pool.use_again(client.connection)
        s.pool.reconnect()  # an older generation's connection: released, it closes
        assert not client.keeps() and client.connection.state is BUSY


async def test_a_borrower_takes_back_the_longest_kept_connection_instead_of_opening_one() -> None:
    async with scripted_pool(max_server_connections=3) as s:
        first, second = await _client(s.pool), await _client(s.pool)
        assert first.keeps() and second.keeps()
        # The pool could open a third, but two idle ones are at hand.
        assert await s.pool.borrow() is first.connection
        assert (first.taken_back, second.taken_back) == (1, 0)
        assert s.pool.borrow_now() is second.connection and second.taken_back == 1
        assert len(s.upstream.opened) == 2 and s.counts_are_true()


async def test_pause_takes_back_kept_connections_and_a_drain_closes_them() -> None:
    async with scripted_pool() as s:
        paused, drained = await _client(s.pool), await _client(s.pool)
        assert paused.keeps()
        s.pool.pause()  # the client's next transaction waits for resume too
        assert paused.taken_back == 1 and paused.connection.state is IDLE
        s.pool.resume()
        assert drained.keeps()
        assert s.pool.reconnect()["idle_closed"] == 2  # the idle one, and the kept one
        assert drained.taken_back == 1 and drained.connection.state is CLOSED
        assert paused.connection.state is CLOSED and s.pool.size == 0 and s.counts_are_true()


async def test_the_janitor_takes_back_what_was_kept_for_keep_limit() -> None:
    async with scripted_pool() as s:
        client = await _client(s.pool)
        assert client.keeps()
        janitor = Janitor(s.pool)
        janitor.expire()
        assert client.taken_back == 0  # kept just now
        client.connection.idle_since -= KEEP_LIMIT
        janitor.expire()
        assert client.taken_back == 1 and client.connection.state is IDLE and s.counts_are_true()


async def test_the_janitor_closes_connections_idle_past_idle_timeout_down_to_the_minimum() -> None:
    async with scripted_pool(idle_timeout=10.0, min_server_connections=1) as s:
        older, newer = await s.pool.borrow(), await s.pool.borrow()
        s.pool.release(older, reusable=True)
        s.pool.release(newer, reusable=True)
        janitor = Janitor(s.pool)
        janitor.expire()
        assert s.pool.size == 2
        older.idle_since -= 10.0
        newer.idle_since -= 10.0
        janitor.expire()
        assert older.state is CLOSED and newer.state is IDLE and s.pool.size == 1


async def test_the_janitor_fills_the_pool_to_its_minimum() -> None:
    async with scripted_pool(min_server_connections=2) as s:
        await s.pool.start()
        for _ in range(50):
            if s.pool.counts[IDLE] == 2:
                break
            await asyncio.sleep(0.01)
        assert s.pool.counts[IDLE] == 2 and s.pool.size == 2 and len(s.upstream.opened) == 2
