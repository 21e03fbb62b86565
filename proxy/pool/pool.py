"""The engine-agnostic server-connection pool: borrowing and releasing within its limits, its
lifecycle, the operator's and the reload's actions on it, and what it counts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Hashable
from typing import Any, Final

from proxy.config import PoolConfig, format_seconds
from proxy.core.counters import PoolMetrics
from proxy.core.errors import BorrowTimeout, PoolClosed, PoolError, UpstreamLoginError, UpstreamUnavailable
from proxy.core.server import ConnectionState, Connector, ServerConnection
from proxy.credentials.base import Credentials, CredentialsError, CredentialSource
from proxy.pool import stats
from proxy.pool.generations import Generations
from proxy.pool.janitor import Janitor
from proxy.pool.keep import KeptConnections, TakeBack
from proxy.pool.known_logins import KnownLogins
from proxy.pool.queue import Handed, Waiter, WaitQueue
from proxy.pool.reset import Resets
from proxy.pool.states import BUSY, CLOSED, IDLE, KEPT, RESETTING, StateCounts

log = logging.getLogger("proxy.pool")

RETRY_DELAYS: Final[tuple[float, ...]] = (0.05, 0.1, 0.25, 0.5, 1.0)


class Pool:
    """The server connections of one pool, each lent to one client session at a time.

    It knows connections, not protocols: an engine plugs in a ``Connector`` and its
    ``ServerConnection`` subclass. A *variant* is an opaque, hashable flavour of connection an
    engine may ask for (MySQL's capability flags); a borrower only gets one of its variant.
    An operator can pause a pool and drain it (``reconnect``); a reload that removes or
    changes a pool *retires* it: it serves the clients it has until they leave.
    """

    def __init__(self, config: PoolConfig, credentials: CredentialSource, connector: Connector) -> None:
        self.config = config
        self.name = config.name
        self.credentials = credentials
        self.connector = connector
        self.metrics = PoolMetrics()  # what the relays report, read by /metrics and /pools
        self._states = StateCounts()
        self._connections: set[ServerConnection] = set()
        self.idle: deque[ServerConnection] = deque()  # most recently used last
        self.kept = KeptConnections(self._states)
        self._queue = WaitQueue(
            config.borrow_timeout,
            self._states,
            pass_on=self._pass_on,
            timed_out=self._borrow_timed_out,
            served=self._observe_queued_wait,
        )
        self.generations = Generations(self, credentials, connector)
        self._janitor = Janitor(self)
        self.connecting = 0  # logins in flight
        self._borrowers = 0  # borrow() calls not yet served
        self._resets = Resets(self._reset_done)
        self.closing = False
        # Paused (admin API): new borrows wait for resume; what is borrowed carries on.
        self.paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        # Retired by a reload: no refill, no idle connections kept; its clients are leaving.
        self.retired = False
        self.successor: Pool | None = None  # the pool that took this one's name (a changed pool)
        self.opened_total = 0
        self.failed_total = 0
        self.borrow_timeouts_total = 0
        self.pins_total: dict[str, int] = {}  # transaction mode: clients pinned, by reason
        self.known_logins = KnownLogins()  # transaction mode: logins answered without the server
        self.last_error: str | None = None  # of the last attempt to open a connection; None if it worked
        self.last_open_at: float | None = None  # wall clock of the last connection opened

    def __repr__(self) -> str:
        return f"Pool({self.name!r}, size={self.size}, waiting={len(self._queue.waiters)})"

    # --- what it counts ----------------------------------------------------------------------
    @property
    def counts(self) -> dict[ConnectionState, int]:
        """Connections by state: what metrics, /pools and the pool's own decisions read."""
        return self._states.counts

    @property
    def size(self) -> int:
        """Connections that count against max_server_connections."""
        return len(self._connections) + self.connecting

    @property
    def waiting(self) -> int:
        """Borrowers not served yet: queued, opening a connection, or held by a pause."""
        return self._borrowers + self._queue.places_waiting

    @property
    def borrowed(self) -> int:
        return self._states.counts[BUSY]

    @property
    def open_connections(self) -> int:
        """Connections whose transport is still open, whatever their state."""
        return sum(1 for connection in self._connections if not connection.is_closed)

    def connections(self) -> list[ServerConnection]:
        """Every connection of the pool, whatever its state."""
        return list(self._connections)

    def unheld(self) -> list[ServerConnection]:
        """Connections no borrower holds: idle, or being reset between two."""
        return [connection for connection in self._connections if connection.state in (IDLE, RESETTING)]

    @property
    def old_generation_count(self) -> int:
        current = self.generations.current
        return sum(1 for connection in self._connections if connection.generation != current)

    @property
    def generation(self) -> int:
        return self.generations.current

    @property
    def generation_credentials(self) -> Credentials | None:
        return self.generations.credentials

    @property
    def rotations_total(self) -> int:
        return self.generations.rotations_total

    @property
    def rotation_failures_total(self) -> int:
        return self.generations.rotation_failures_total

    @property
    def auth_failures_total(self) -> int:
        return self.generations.auth_failures_total

    @property
    def last_rotation(self) -> dict[str, Any] | None:
        return self.generations.last_rotation

    def connections_by_state_and_generation(self) -> dict[tuple[str, int], int]:
        return stats.by_state_and_generation(self._connections, self.connecting, self.generations.current)

    def stats(self) -> dict[str, Any]:
        return stats.report(self)

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._janitor.start()

    async def close(self) -> None:
        self.closing = True
        self._resumed.set()  # borrowers held by a pause wake up to PoolClosed
        self._queue.close(self._closed)
        await self._janitor.stop()
        await self.generations.stop()
        await self._resets.stop()
        for connection in list(self._connections):
            self.discard(connection)

    def _closed(self) -> PoolClosed:
        return PoolClosed(f'pool "{self.name}" is shutting down')

    # --- borrowing -----------------------------------------------------------------------------
    async def borrow(self, variant: Hashable = None) -> ServerConnection:
        """A logged-in connection of ``variant`` for the caller's exclusive use, within borrow_timeout."""
        if self.closing:
            raise self._closed()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.config.borrow_timeout
        self._borrowers += 1
        try:
            async with asyncio.timeout_at(deadline):
                connection = await self._borrow(variant, deadline)
        except TimeoutError:
            raise self._borrow_timed_out() from None
        finally:
            self._borrowers -= 1
        self.metrics.borrow_wait.observe(loop.time() - started)
        return connection

    def _borrow_timed_out(self) -> BorrowTimeout:
        """Count a borrower that waited borrow_timeout in vain; the error that tells it why."""
        self.borrow_timeouts_total += 1
        return BorrowTimeout(
            f'pool "{self.name}": no server connection became available within '
            f"borrow_timeout {format_seconds(self.config.borrow_timeout)} "
            f"({self.size} of max_server_connections {self.config.max_server_connections} "
            f"in use{'; the pool is paused' if self.paused else ''})"
        )

    def _observe_queued_wait(self, seconds: float) -> None:
        self.metrics.borrow_wait.observe(seconds)  # read at the time: a reload hands metrics on

    def borrow_now(self, variant: Hashable = None) -> ServerConnection | None:
        """An idle connection at once if one needs no liveness check, else None (then borrow())."""
        if self.closing or self.paused or self._queue.waiters:
            return None  # do not jump the queue; a paused pool makes borrow() wait
        connection = self._pop_idle(variant)
        if connection is None:
            return None
        if self.must_retire(connection) or (
            time.monotonic() - connection.idle_since >= self.config.liveness_check_after
        ):
            self.idle.append(connection)  # let borrow() retire or check it
            return None
        self._states.move(connection, BUSY)
        self.metrics.borrow_wait.observe(0.0)
        return connection

    def queue_for_release(self, handed: Handed, variant: Hashable = None) -> Waiter | None:
        """A place in the queue for the next connection released, without a task (cheaper than
        ``borrow``), for a borrower that ``borrow_now`` turned away from a full pool.

        None when there is more to do than wait (the pool may grow, is paused or closing, or
        has idle connections to check): then ``borrow``. The future's result is a connection
        borrowed for the caller, or None (a slot freed up: ``borrow``); it fails with
        ``BorrowTimeout`` after borrow_timeout, or ``PoolClosed``. ``handed`` gets the future
        once it is done; cancel it to give up the place.
        """
        if self.closing or self.paused or self.idle or self.size < self.config.max_server_connections:
            return None
        return self._queue.place(handed, variant)

    async def _borrow(self, variant: Hashable, deadline: float) -> ServerConnection:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            if self.paused:
                await self._resumed.wait()
            if self.closing:
                raise self._closed()
            connection = await self._take_idle(variant)
            if connection is not None:
                return connection
            if self.size >= self.config.max_server_connections and self.idle:
                # Full, but idle connections of another variant: make room for ours.
                self.discard(self.idle[0])
            # A connection being reset is ready within a round trip; opening a new
            # one costs a TCP, TLS and SCRAM handshake. Wait for it when one is free.
            resetting = sum(1 for c in self._connections if c.state is RESETTING and c.variant == variant)
            resetting_spare = resetting > len(self._queue.waiters)
            if self.size < self.config.max_server_connections and not resetting_spare:
                try:
                    return await self.open_connection(variant, for_borrower=True)
                except (UpstreamUnavailable, UpstreamLoginError) as exc:
                    # Outages and refused credentials may pass (a restart, a rotation's
                    # window): keep trying within this borrower's timeout. Other login
                    # errors (unknown database, TLS) will not, and fail at once.
                    if isinstance(exc, UpstreamLoginError) and not exc.is_auth_failure:
                        raise
                    delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                    attempt += 1
                    if loop.time() + delay >= deadline:
                        raise
                    await asyncio.sleep(delay)
                    continue
            connection = await self._queue.wait(variant)
            if connection is not None:
                return connection

    def _pop_idle(self, variant: Hashable) -> ServerConnection | None:
        idle = self.idle
        while True:
            # Most recently used first: warm caches, and the surplus ages out at the other end.
            for index in range(len(idle) - 1, -1, -1):
                if idle[index].variant == variant:
                    connection = idle[index]
                    del idle[index]
                    return connection
            # A kept connection is an idle one whose client has not let go yet: take it back
            # (it lands in the idle list, or with a waiter that queued first) rather than open one.
            if not self.kept.take_back_one(variant):
                return None

    async def _take_idle(self, variant: Hashable) -> ServerConnection | None:
        while (connection := self._pop_idle(variant)) is not None:
            if self.must_retire(connection):
                self.discard(connection)
                continue
            self._states.move(connection, BUSY)
            if time.monotonic() - connection.idle_since >= self.config.liveness_check_after:
                try:
                    await asyncio.wait_for(connection.check_alive(), self.config.connect_timeout)
                except (Exception, asyncio.CancelledError) as exc:
                    self.discard(connection)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    log.info('pool "%s": dropped a dead idle server connection (%s)', self.name, exc)
                    continue
            return connection
        return None

    async def open_connection(self, variant: Hashable, *, for_borrower: bool) -> ServerConnection:
        """Open and log in a connection of ``variant``: the caller's (``for_borrower``), or the pool's."""
        self.connecting += 1
        try:
            connection = await self.generations.login(variant)
        except BaseException as exc:
            self.connecting -= 1
            self._wake_one()  # the slot this attempt held is free again for a waiter
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.failed_total += 1
            self.last_error = str(exc)
            if isinstance(exc, CredentialsError):
                raise PoolError(str(exc)) from None
            raise
        self.connecting -= 1
        self.last_error = None
        connection.variant = variant
        self._join(connection)
        if for_borrower:
            self._states.move(connection, BUSY)
        else:
            self._make_available(connection)
        return connection

    def adopt(self, connection: ServerConnection) -> None:
        """A connection opened for no borrower (a rotation's first) joins the pool."""
        self._join(connection)
        self._make_available(connection)

    def _join(self, connection: ServerConnection) -> None:
        self.opened_total += 1
        self.last_open_at = time.time()
        connection.on_lost = self._on_connection_lost
        self._connections.add(connection)

    # --- returning -----------------------------------------------------------------------------
    def release(self, connection: ServerConnection, *, reusable: bool) -> None:
        """Give a borrowed (or kept) connection back; it is reset before anyone else gets it."""
        if connection.state is KEPT:
            self.kept.use_again(connection)
        if not reusable or self.closing or self.must_retire(connection) or connection.is_closed:
            self.discard(connection)
            return
        if not connection.needs_reset:
            self._make_available(connection)  # transaction mode's hot path: no task, no round trip
            return
        self._states.move(connection, RESETTING)
        self._resets.start(connection)

    def _reset_done(self, connection: ServerConnection, error: Exception | None) -> None:
        if error is not None:
            log.info('pool "%s": closing a server connection whose reset failed: %s', self.name, error)
            self.discard(connection)
        elif self.closing or self.must_retire(connection):  # closed, or drained while resetting
            self.discard(connection)
        else:
            self._make_available(connection)

    def _make_available(self, connection: ServerConnection) -> None:
        """Hand a connection nobody uses to the first waiter of its variant, or make it idle."""
        connection.idle_since = time.monotonic()
        queue = self._queue
        # Paused: nobody gets new work, the waiters retry on resume.
        if queue.waiters and not self.paused:
            if queue.hand(connection):
                return
            if queue.anyone_waiting():
                if self.size >= self.config.max_server_connections:
                    # Everyone waiting wants another variant and the pool is full: free the slot
                    # (discarding wakes the first waiter to open a connection of its own variant).
                    self.discard(connection)
                    return
                self._states.move(connection, IDLE)
                self.idle.append(connection)
                self._wake_one()  # a waiter counted on this reset; it can open its own now
                return
        self._states.move(connection, IDLE)
        self.idle.append(connection)

    def _pass_on(self, handed: ServerConnection | None) -> None:
        """What a waiter that gave up had been handed goes to the next one."""
        if handed is not None:
            self._make_available(handed)
        else:
            self._wake_one()

    def discard(self, connection: ServerConnection) -> None:
        """Close ``connection`` and forget it."""
        if connection.state is CLOSED:
            return
        with contextlib.suppress(ValueError):
            self.idle.remove(connection)
        self.kept.forget(connection)
        self._connections.discard(connection)
        self._states.move(connection, CLOSED)
        connection.on_lost = None
        connection.close()
        self.generations.note_drained()
        self._wake_one()

    def _on_connection_lost(self, connection: ServerConnection) -> None:
        # An idle connection the server closed (restart, idle timeout) leaves the pool now;
        # a busy one is discarded when its client session releases it.
        if connection.state is IDLE or connection.state is None:
            self.discard(connection)

    def _wake_one(self) -> None:
        """A slot freed up: let the first waiter try to open a connection itself."""
        if not self.closing:
            self._queue.wake_one()

    def must_retire(self, connection: ServerConnection) -> bool:
        """Closed, of an older generation, or older than server_lifetime."""
        return (
            connection.is_closed
            or connection.generation != self.generations.current
            or time.monotonic() - connection.created_at >= self.config.server_lifetime
        )

    # --- kept connections (transaction mode) ---------------------------------------------------
    def keep(self, connection: ServerConnection, take_back: TakeBack) -> bool:
        """Whether an idle transaction-mode client may keep ``connection`` until its next
        transaction (``use_again``) rather than release it and borrow again: only while nobody
        waits and nothing needs it back. Until then it counts as idle, and the pool may take it
        back at need by calling ``take_back``, which must ``release`` it (see ``keep.py``).
        """
        if (
            self._queue.waiters
            or self.paused
            or self.closing
            or self.retired
            or connection.generation != self.generations.current
        ):
            return False
        self.kept.keep(connection, take_back)
        return True

    def use_again(self, connection: ServerConnection) -> None:
        """The client that kept ``connection`` uses it again for its next transaction."""
        self.kept.use_again(connection)

    # --- reload --------------------------------------------------------------------------------
    def retire(self, successor: Pool | None) -> None:
        """A reload removed this pool (``successor`` None) or replaced it with ``successor``.

        The pool keeps serving the clients it has while they end at their next idle point;
        it opens no connections to refill itself and closes idle ones.
        """
        self.retired = True
        self.successor = successor
        self.kept.take_back_all()
        for connection in list(self.idle):
            self.discard(connection)

    def live_successor(self) -> Pool | None:
        """The pool now serving this one's name, following later reloads; None if removed."""
        pool = self.successor
        while pool is not None and pool.retired:
            pool = pool.successor
        return pool

    # --- operator actions (admin API) ----------------------------------------------------------
    def pause(self) -> None:
        """New borrows wait (within borrow_timeout) until ``resume``; borrowed connections carry on."""
        if not self.paused:
            self.paused = True
            self._resumed.clear()
            self.kept.take_back_all()  # their clients' next transactions wait too
            log.info('pool "%s": paused: new borrows wait for resume', self.name)

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self._resumed.set()
        # Waiters queued before the pause were passed over by releases since: let each retry.
        self._queue.wake_all()
        log.info('pool "%s": resumed', self.name)

    def reconnect(self) -> dict[str, int]:
        """Drain: idle connections close now, busy ones when released; new ones log in afresh."""
        return self.generations.reconnect()

    async def refresh_credentials(self) -> bool:
        """Re-read the credentials now; True when a new version turned up (the pool moves to it
        make-before-break, as when the poller finds it)."""
        changed = await self.credentials.check_now()
        self.generations.check_for_new_version()
        return changed
