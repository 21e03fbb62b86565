"""Generations: a new credential version is adopted make-before-break, old connections close
once nobody uses them, a version that does not log in changes nothing, and a drain."""

from __future__ import annotations

import asyncio

from proxy.core.server import ConnectionState
from proxy.credentials.base import Credentials
from proxy.pool.pool import Pool
from tests.unit.test_pool_fakes import USER, MemoryConnection, scripted_pool, settle

IDLE, BUSY, CLOSED = ConnectionState.IDLE, ConnectionState.BUSY, ConnectionState.CLOSED


async def _borrow(pool: Pool) -> MemoryConnection:
    connection = await pool.borrow()
    assert isinstance(connection, MemoryConnection)
    return connection


async def test_a_new_version_is_adopted_only_once_a_login_with_it_succeeds() -> None:
    async with scripted_pool(max_server_connections=3) as s:
        old_idle, old_busy = await _borrow(s.pool), await _borrow(s.pool)
        s.pool.release(old_idle, reusable=True)
        s.upstream.password, s.upstream.login_gate = "pw-2", asyncio.Event()
        s.source.publish("v2", "pw-2")
        assert await s.pool.refresh_credentials()
        await settle()
        # The login with v2 is under way: nothing has moved, the old connections serve on.
        assert s.upstream.logins[-1] == ("v2", 2, None)
        assert s.pool.generation == 1
        assert s.pool.generation_credentials == Credentials(USER, "pw-1", version_id="v1")
        assert s.pool.borrow_now() is old_idle
        s.pool.release(old_idle, reusable=True)
        s.upstream.login_gate.set()
        await settle()
        assert s.pool.generation == 2 and s.pool.rotations_total == 1
        assert s.pool.generation_credentials is not None and s.pool.generation_credentials.version_id == "v2"
        assert old_idle.is_closed and not old_busy.is_closed  # idle old ones close at once
        assert s.pool.old_generation_count == 1 and s.pool.stats()["rotation_error"] is None
        new = s.pool.borrow_now()  # the login that proved v2 joined the pool
        assert isinstance(new, MemoryConnection)
        assert new.credentials.version_id == "v2" and new.generation == 2
        s.pool.release(old_busy, reusable=True)  # busy old ones close when released
        assert old_busy.is_closed and s.pool.old_generation_count == 0
        assert s.pool.last_rotation is not None and s.pool.last_rotation["drained_after_seconds"] is not None
        assert s.pool.metrics.rotation_duration.count == 1 and s.counts_are_true()


async def test_the_janitor_notices_a_new_version_and_rotates() -> None:
    async with scripted_pool() as s:
        connection = await _borrow(s.pool)
        s.pool.release(connection, reusable=True)
        s.upstream.password = "pw-2"
        s.source.publish("v2", "pw-2")
        await s.source.refresh()  # the poller's read: the pool is not told
        await s.pool.start()
        for _ in range(50):
            if s.pool.generation == 2:
                break
            await asyncio.sleep(0.01)
        assert s.pool.generation == 2 and connection.is_closed


async def test_a_new_version_that_does_not_log_in_keeps_the_old_one_and_says_why() -> None:
    async with scripted_pool() as s:
        connection = await _borrow(s.pool)
        s.pool.release(connection, reusable=True)
        s.source.publish("v2", "pw-2")  # the database still has pw-1
        assert await s.pool.refresh_credentials()
        await settle()
        assert s.pool.generation == 1 and s.pool.rotations_total == 0
        assert s.pool.rotation_failures_total == 1 and s.pool.auth_failures_total == 1
        assert s.pool.stats()["rotation_error"] == (
            "new version v2 does not log in: password of version v2 refused"
        )
        assert connection.state is IDLE and s.pool.borrow_now() is connection
        s.pool.generations.check_for_new_version()  # retried later, not at once
        await settle()
        assert [version for version, _, _ in s.upstream.logins] == ["v1", "v2"]
        s.upstream.password = "pw-3"
        s.source.publish("v3", "pw-3")  # a version that works: the error is history
        assert await s.pool.refresh_credentials()
        await settle()
        assert s.pool.generation == 2 and s.pool.stats()["rotation_error"] is None


async def test_a_refused_password_moves_the_pool_to_the_version_the_source_offers() -> None:
    async with scripted_pool() as s:
        old = await _borrow(s.pool)
        s.upstream.password = "pw-2"  # changed in the database before the secret's AWSCURRENT
        s.source.offered_after_failure = Credentials(USER, "pw-2", version_id="v2")
        new = await _borrow(s.pool)
        assert new.credentials.version_id == "v2" and new.generation == 2 == s.pool.generation
        assert s.pool.auth_failures_total == 1 and s.pool.rotations_total == 1
        s.pool.release(old, reusable=True)
        assert old.is_closed and s.counts_are_true()


async def test_a_refused_password_with_nothing_else_to_try_fails_the_borrow() -> None:
    async with scripted_pool(borrow_timeout=0.1) as s:
        s.upstream.password = "pw-2"
        borrowing = asyncio.create_task(s.pool.borrow())
        await asyncio.wait([borrowing])
        assert borrowing.exception() is not None and s.pool.generation == 1
        assert s.pool.auth_failures_total >= 1 and s.pool.last_error == "password of version v1 refused"


async def test_a_drain_starts_a_new_generation_with_the_same_credentials() -> None:
    async with scripted_pool() as s:
        idle, busy = await _borrow(s.pool), await _borrow(s.pool)
        s.pool.release(idle, reusable=True)
        assert s.pool.reconnect() == {"generation": 2, "idle_closed": 1, "busy_draining": 1}
        assert idle.is_closed and busy.state is BUSY and s.pool.stats()["reconnects_total"] == 1
        fresh = await _borrow(s.pool)
        assert fresh.generation == 2 and fresh.credentials.version_id == "v1"
        s.pool.release(busy, reusable=True)
        assert busy.state is CLOSED and s.pool.old_generation_count == 0 and s.counts_are_true()
