"""The engine-agnostic server-connection pool: limits, waiters, lifetimes, health, generations.

It knows connections, not protocols. An engine plugs in a ``Connector`` (open and log in
with given credentials) and its ``ServerConnection`` subclass (reset, liveness check, close).
A *variant* is an opaque, hashable flavour of connection an engine may ask for (MySQL's
per-connection capability flags); a borrower only ever gets a connection of its variant.
Every state change goes through ``_set_state`` so the counts that metrics and the admin
API read are the very numbers the pool decides with. An operator can pause a pool (new
borrows wait, work in flight goes on) and drain it (``reconnect``: a new generation with the
same credentials). A reload that removes or changes a pool *retires* it: it serves the
clients it has until they leave, keeps no idle connections, and names its successor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

from proxy.config import PoolConfig, format_seconds
from proxy.core.counters import PoolMetrics
from proxy.core.errors import BorrowTimeout, PoolClosed, PoolError, UpstreamLoginError, UpstreamUnavailable
from proxy.core.server import ConnectionState, Connector, ServerConnection
from proxy.credentials import Credentials, CredentialsError, CredentialSource

log = logging.getLogger(__name__)

JANITOR_INTERVAL = 1.0
# How long an idle transaction-mode client may keep a server connection nobody asked for.
KEEP_LIMIT = 1.0
RESET_TIMEOUT = 5.0
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)
ROTATION_RETRY_FIRST = 2.0
ROTATION_RETRY_MAX = 60.0


class Pool:
    def __init__(self, config: PoolConfig, credentials: CredentialSource, connector: Connector) -> None:
        self.config = config
        self.name = config.name
        self.credentials = credentials
        self.connector = connector
        self.generation = 1
        # The credentials new connections log in with; the generation moves with them.
        self.generation_credentials: Credentials | None = None
        self._retired_versions: set[str | None] = set()
        self._rotation: asyncio.Task[None] | None = None
        self._rotation_started_at: float | None = None
        self._failed_version: str | None = None
        self._rotation_retry_at = 0.0
        self._rotation_failures_in_row = 0
        self.rotations_total = 0
        self.rotation_failures_total = 0
        self.last_rotation: dict[str, Any] | None = None
        self.rotation_error: str | None = None
        self._idle: deque[ServerConnection] = deque()
        # Transaction mode: connections an idle client keeps attached while nobody else needs
        # them (see ``keep``), oldest first, each with the client's callback to give it back.
        self._kept: dict[ServerConnection, Callable[[], None]] = {}
        self._connections: set[ServerConnection] = set()
        self._connecting = 0
        self._waiters: deque[tuple[Hashable, asyncio.Future[ServerConnection | None]]] = deque()
        # The places queue_for_release gave out, oldest first, with their deadlines.
        self._queued: deque[tuple[float, tuple[Hashable, asyncio.Future[ServerConnection | None]]]] = deque()
        self._queue_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._janitor: asyncio.Task[None] | None = None
        self._closing = False
        self.counts: dict[ConnectionState, int] = dict.fromkeys(ConnectionState, 0)
        self.opened_total = 0
        self.failed_total = 0
        self.borrow_timeouts_total = 0
        self.pins_total: dict[str, int] = {}  # transaction mode: clients pinned, by reason
        self.auth_failures_total = 0
        self.last_error: str | None = None  # of the last attempt to open a connection; None if it worked
        self.last_open_at: float | None = None  # wall clock of the last connection opened
        self.reconnects_total = 0
        self.last_reconnect_at: float | None = None
        self._borrowers = 0  # borrow() calls not yet served
        # Paused (admin API): new borrows wait for resume; what is borrowed carries on.
        self.paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self.metrics = PoolMetrics()  # what the relays report, read by /metrics and /pools
        # Retired by a reload: no refill, no idle connections kept; its clients are leaving.
        self.retired = False
        self.successor: Pool | None = None  # the pool that took this one's name (a changed pool)

    def __repr__(self) -> str:
        return f"Pool({self.name!r}, size={self.size}, waiting={len(self._waiters)})"

    @property
    def size(self) -> int:
        """Connections that count against max_server_connections."""
        return len(self._connections) + self._connecting

    @property
    def waiting(self) -> int:
        """Borrowers not served yet: queued, opening a connection, or held by a pause."""
        return self._borrowers

    @property
    def borrowed(self) -> int:
        return self.counts[ConnectionState.BUSY]

    @property
    def open_connections(self) -> int:
        """Connections whose transport is still open, whatever their state."""
        return sum(1 for connection in self._connections if not connection.is_closed)

    def connections_by_state_and_generation(self) -> dict[tuple[str, int], int]:
        counts: dict[tuple[str, int], int] = {}
        for connection in self._connections:
            state = connection.state.value if connection.state else "opening"
            key = (state, connection.generation)
            counts[key] = counts.get(key, 0) + 1
        if self._connecting:
            counts[("connecting", self.generation)] = self._connecting
        return counts

    def stats(self) -> dict[str, Any]:
        by_state: dict[str, int] = {}
        by_generation: dict[str, int] = {}
        for (state, generation), count in self.connections_by_state_and_generation().items():
            by_state[state] = by_state.get(state, 0) + count
            by_generation[str(generation)] = by_generation.get(str(generation), 0) + count
        clients = self.metrics.clients
        return {
            "name": self.name,
            "paused": self.paused,
            "clients": {
                "connected": clients,
                "active": max(clients - self.waiting, 0),
                "waiting": self.waiting,
                "in_transaction": self.metrics.clients_in_transaction,
                "pinned": self.metrics.clients_pinned,
            },
            "server_connections": {"by_state": by_state, "by_generation": by_generation},
            "connecting": self._connecting,
            **{
                state.value: count
                for state, count in self.counts.items()
                if state is not ConnectionState.CLOSED
            },
            "waiting": self.waiting,
            "generation": self.generation,
            "opened_total": self.opened_total,
            "failed_total": self.failed_total,
            "auth_failures_total": self.auth_failures_total,
            "last_open_at": self.last_open_at,
            "borrow_timeouts_total": self.borrow_timeouts_total,
            "pins_total": dict(self.pins_total),
            "last_error": self.last_error,
            "credential_version": self.generation_credentials.version_id
            if self.generation_credentials
            else None,
            "old_generation_connections": self.old_generation_count,
            "rotations_total": self.rotations_total,
            "rotation_failures_total": self.rotation_failures_total,
            "rotation_error": self.rotation_error,
            "last_rotation": self.last_rotation,
            "reconnects_total": self.reconnects_total,
            "last_reconnect_at": self.last_reconnect_at,
        }

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._janitor = asyncio.create_task(self._janitor_loop(), name=f"pool-{self.name}-janitor")

    async def close(self) -> None:
        self._closing = True
        self._resumed.set()  # borrowers held by a pause wake up to PoolClosed
        if self._queue_timer is not None:
            self._queue_timer.cancel()
        for task in (self._janitor, self._rotation):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosed(f'pool "{self.name}" is shutting down'))
        self._waiters.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for connection in list(self._connections):
            self._discard(connection)

    # --- borrowing -------------------------------------------------------------------------
    async def borrow(self, variant: Hashable = None) -> ServerConnection:
        """A logged-in connection of ``variant`` for the caller's exclusive use, within borrow_timeout."""
        if self._closing:
            raise PoolClosed(f'pool "{self.name}" is shutting down')
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

    def queue_for_release(
        self, handed: Callable[[asyncio.Future[ServerConnection | None]], None], variant: Hashable = None
    ) -> asyncio.Future[ServerConnection | None] | None:
        """A place in the queue for the next connection released, without a task (cheaper than
        ``borrow``), for a borrower that ``borrow_now`` turned away from a full pool.

        None when there is more to do than wait (the pool may grow, is paused or closing, or
        has idle connections to check): then ``borrow``. The future's result is a connection
        borrowed for the caller, or None (a slot freed up: ``borrow``); it fails with
        ``BorrowTimeout`` after borrow_timeout, or ``PoolClosed``. ``handed`` gets the future
        once it is done; cancel it to give up the place.
        """
        if self._closing or self.paused or self._idle or self.size < self.config.max_server_connections:
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[ServerConnection | None] = loop.create_future()
        entry = (variant, waiter)
        self._waiters.append(entry)
        self._borrowers += 1
        now = loop.time()
        # One timer for the whole queue: every place has the same timeout, so the oldest
        # place still waiting is always the next to time out.
        queued = self._queued
        while queued and queued[0][1][1].done():
            queued.popleft()  # served: most places leave from the front
        queued.append((now + self.config.borrow_timeout, entry))
        if self._queue_timer is None:
            self._queue_timer = loop.call_at(now + self.config.borrow_timeout, self._expire_queued)
        waiter.add_done_callback(functools.partial(self._left_queue, entry, now, handed))
        return waiter

    def _left_queue(
        self,
        entry: tuple[Hashable, asyncio.Future[ServerConnection | None]],
        queued_at: float,
        handed: Callable[[asyncio.Future[ServerConnection | None]], None],
        waiter: asyncio.Future[ServerConnection | None],
    ) -> None:
        self._borrowers -= 1
        if waiter.cancelled():
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
        elif waiter.exception() is None and waiter.result() is not None:
            self.metrics.borrow_wait.observe(asyncio.get_running_loop().time() - queued_at)
        handed(waiter)

    def _expire_queued(self) -> None:
        """borrow_timeout passed for the oldest places in the queue: they fail."""
        self._queue_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        queued = self._queued
        while queued:
            deadline, entry = queued[0]
            waiter = entry[1]
            if not waiter.done():
                if deadline > now:
                    self._queue_timer = loop.call_at(deadline, self._expire_queued)
                    return
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                waiter.set_exception(self._borrow_timed_out())
            queued.popleft()

    async def _borrow(self, variant: Hashable, deadline: float) -> ServerConnection:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            if self.paused:
                await self._resumed.wait()
            if self._closing:
                raise PoolClosed(f'pool "{self.name}" is shutting down')
            connection = await self._take_idle(variant)
            if connection is not None:
                return connection
            if self.size >= self.config.max_server_connections and self._idle:
                # Full, but idle connections of another variant: make room for ours.
                self._discard(self._idle[0])
            # A connection being reset is ready within a round trip; opening a new
            # one costs a TCP, TLS and SCRAM handshake. Wait for it when one is free.
            resetting = sum(
                1
                for connection in self._connections
                if connection.state is ConnectionState.RESETTING and connection.variant == variant
            )
            resetting_spare = resetting > len(self._waiters)
            if self.size < self.config.max_server_connections and not resetting_spare:
                try:
                    return await self._open(variant, for_borrower=True)
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
            connection = await self._wait_for_connection(variant)
            if connection is not None:
                return connection

    def _pop_idle(self, variant: Hashable) -> ServerConnection | None:
        while True:
            # Most recently used first: warm caches, and the surplus ages out at the other end.
            for index in range(len(self._idle) - 1, -1, -1):
                if self._idle[index].variant == variant:
                    connection = self._idle[index]
                    del self._idle[index]
                    return connection
            # A kept connection is an idle one whose client has not let go yet: take it back
            # (it lands in _idle, or with a waiter that queued first) rather than open one.
            if not self._reclaim(variant):
                return None

    def borrow_now(self, variant: Hashable = None) -> ServerConnection | None:
        """An idle connection at once if one needs no liveness check, else None (then borrow())."""
        if self._closing or self.paused or self._waiters:
            return None  # do not jump the queue; a paused pool makes borrow() wait
        connection = self._pop_idle(variant)
        if connection is None:
            return None
        if self._must_retire(connection) or (
            time.monotonic() - connection.idle_since >= self.config.liveness_check_after
        ):
            self._idle.append(connection)  # let borrow() retire or check it
            return None
        self._set_state(connection, ConnectionState.BUSY)
        self.metrics.borrow_wait.observe(0.0)
        return connection

    async def _take_idle(self, variant: Hashable) -> ServerConnection | None:
        while (connection := self._pop_idle(variant)) is not None:
            if self._must_retire(connection):
                self._discard(connection)
                continue
            self._set_state(connection, ConnectionState.BUSY)
            if time.monotonic() - connection.idle_since >= self.config.liveness_check_after:
                try:
                    await asyncio.wait_for(connection.check_alive(), self.config.connect_timeout)
                except (Exception, asyncio.CancelledError) as exc:
                    self._discard(connection)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    log.info('pool "%s": dropped a dead idle server connection (%s)', self.name, exc)
                    continue
            return connection
        return None

    async def _wait_for_connection(self, variant: Hashable) -> ServerConnection | None:
        waiter: asyncio.Future[ServerConnection | None] = asyncio.get_running_loop().create_future()
        entry = (variant, waiter)
        self._waiters.append(entry)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Handed a connection in the same tick we were cancelled: give it back.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is not None:
                    self._make_available(handed)
                else:
                    self._wake_one()
            raise
        finally:
            # Whoever hands a waiter its result takes it off the queue first: only a cancelled
            # one is still queued. (A failed deque.remove formats the entry's repr: slow.)
            if waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)

    async def _open(self, variant: Hashable, *, for_borrower: bool) -> ServerConnection:
        self._connecting += 1
        try:
            connection = await self._login(variant)
        except BaseException as exc:
            self._connecting -= 1
            self._wake_one()  # the slot this attempt held is free again for a waiter
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.failed_total += 1
            self.last_error = str(exc)
            if isinstance(exc, CredentialsError):
                raise PoolError(str(exc)) from None
            raise
        self._connecting -= 1
        self.opened_total += 1
        self.last_error = None
        self.last_open_at = time.time()
        connection.variant = variant
        connection.on_lost = self._on_connection_lost
        self._connections.add(connection)
        self._set_state(connection, ConnectionState.BUSY if for_borrower else ConnectionState.IDLE)
        if not for_borrower:
            self._make_available(connection)
        return connection

    async def _login(self, variant: Hashable) -> ServerConnection:
        credentials = self.generation_credentials or await self.credentials.current()
        try:
            connection = await self.connector(credentials, self.generation, variant)
        except UpstreamLoginError as exc:
            if not exc.is_auth_failure:
                raise
            self.auth_failures_total += 1
            # The password changed under us: a rotation's window (AWSPENDING already set in
            # the database) or a secret updated by hand. Find what works, and move to it.
            candidate = await self.credentials.after_auth_failure(credentials)
            if candidate is None or candidate.version_id in self._retired_versions:
                raise
            try:
                connection = await self.connector(candidate, self.generation + 1, variant)
            except UpstreamLoginError as candidate_exc:
                if candidate_exc.is_auth_failure:
                    self.auth_failures_total += 1
                raise
            self._promote(candidate, f"version {credentials.version_id} was refused by the upstream")
            connection.generation = self.generation
            return connection
        if self.generation_credentials is None:
            self.generation_credentials = credentials
        return connection

    # --- rotation (make-before-break) ------------------------------------------------------
    @property
    def old_generation_count(self) -> int:
        return sum(1 for connection in self._connections if connection.generation != self.generation)

    def _check_for_new_version(self) -> None:
        """Start moving to the source's newest version when it differs from ours."""
        latest, ours = self.credentials.cached, self.generation_credentials
        if latest is None or ours is None or self._rotation is not None or self._closing:
            return
        if latest.version_id == ours.version_id or latest.version_id in self._retired_versions:
            return
        if latest.version_id == self._failed_version and time.monotonic() < self._rotation_retry_at:
            return
        self._rotation = asyncio.create_task(self._rotate_to(latest), name=f"pool-{self.name}-rotation")
        self._rotation.add_done_callback(self._rotation_done)

    def _rotation_done(self, task: asyncio.Task[None]) -> None:
        self._rotation = None
        if not task.cancelled() and task.exception() is not None:
            log.error('pool "%s": rotation crashed', self.name, exc_info=task.exception())

    async def _rotate_to(self, credentials: Credentials) -> None:
        """Make before break: the new version is adopted only once a connection logs in with it."""
        self._connecting += 1
        try:
            connection = await self.connector(
                credentials, self.generation + 1, self.connector.default_variant
            )
        except Exception as exc:
            self._connecting -= 1
            self.rotation_failures_total += 1
            if isinstance(exc, UpstreamLoginError) and exc.is_auth_failure:
                self.auth_failures_total += 1
            self._rotation_failures_in_row = (
                self._rotation_failures_in_row + 1 if self._failed_version == credentials.version_id else 1
            )
            self._failed_version = credentials.version_id
            backoff = min(
                ROTATION_RETRY_MAX, ROTATION_RETRY_FIRST * 2 ** (self._rotation_failures_in_row - 1)
            )
            self._rotation_retry_at = time.monotonic() + backoff
            self.rotation_error = f"new version {credentials.version_id} does not log in: {exc}"
            log.error(
                'pool "%s": %s; keeping version %s and its connections, retrying in %gs',
                self.name,
                self.rotation_error,
                self.generation_credentials.version_id if self.generation_credentials else None,
                backoff,
            )
            return
        self._connecting -= 1
        self._promote(credentials, "Secrets Manager has a new AWSCURRENT version")
        connection.generation = self.generation
        connection.variant = self.connector.default_variant
        connection.on_lost = self._on_connection_lost
        self._connections.add(connection)
        self._set_state(connection, ConnectionState.IDLE)
        self.opened_total += 1
        self.last_open_at = time.time()
        self._make_available(connection)

    def _promote(self, credentials: Credentials, reason: str) -> None:
        old = self.generation_credentials
        if old is not None and old.version_id == credentials.version_id:
            return  # another login got here first
        self.generation += 1
        self.generation_credentials = credentials
        if old is not None:
            self._retired_versions.add(old.version_id)
        self._failed_version = None
        self._rotation_failures_in_row = 0
        self.rotation_error = None
        self.rotations_total += 1
        self._rotation_started_at = time.monotonic()
        idle_closed = self._close_idle_old()
        busy_old = self.old_generation_count
        self.last_rotation = {
            "from_version": old.version_id if old else None,
            "to_version": credentials.version_id,
            "at": time.time(),
            "idle_closed": idle_closed,
            "busy_draining": busy_old,
            "drained_after_seconds": None,
        }
        log.info(
            'pool "%s": rotated from version %s to %s (generation %d; %s): %d idle old connections '
            "closed, %d busy ones close when their clients release them",
            self.name,
            old.version_id if old else None,
            credentials.version_id,
            self.generation,
            reason,
            idle_closed,
            busy_old,
        )
        self._note_drained()

    def _close_idle_old(self) -> int:
        """After a generation change: close the idle (and kept) old connections; how many."""
        kept = self._reclaim_all()  # released into a new generation: they close
        idle_old = [connection for connection in self._idle if connection.generation != self.generation]
        for connection in idle_old:
            self._discard(connection)
        return kept + len(idle_old)

    def _note_drained(self) -> None:
        if self._rotation_started_at is None or self.old_generation_count:
            return
        elapsed = time.monotonic() - self._rotation_started_at
        self._rotation_started_at = None
        if self.last_rotation is not None:
            self.last_rotation["drained_after_seconds"] = round(elapsed, 3)
        self.metrics.rotation_duration.observe(elapsed)
        log.info(
            'pool "%s": rotation complete: the last old-generation connection closed %.3fs after the switch',
            self.name,
            elapsed,
        )

    # --- returning -------------------------------------------------------------------------
    def release(self, connection: ServerConnection, *, reusable: bool) -> None:
        """Give a borrowed (or kept) connection back; it is reset before anyone else gets it."""
        if connection.state is ConnectionState.KEPT:
            self.unkeep(connection)
        if not reusable or self._closing or self._must_retire(connection) or connection.is_closed:
            self._discard(connection)
            return
        if not connection.needs_reset:
            self._make_available(connection)  # transaction mode's hot path: no task, no round trip
            return
        self._set_state(connection, ConnectionState.RESETTING)
        self._spawn(self._reset_and_return(connection))

    def keep(self, connection: ServerConnection, give_back: Callable[[], None]) -> bool:
        """Whether an idle transaction-mode client may keep ``connection`` attached until its
        next transaction, instead of releasing it and borrowing again.

        Only while nobody waits and nothing needs the connection back. Until the client uses
        it again (``unkeep``) it counts as idle: a borrower with no idle connection, a pause,
        a drain, a rotation and the janitor (after ``KEEP_LIMIT`` of idleness) take it back
        by calling ``give_back``, which must ``release`` it.
        """
        if (
            self._waiters
            or self.paused
            or self._closing
            or self.retired
            or connection.generation != self.generation
        ):
            return False
        connection.idle_since = time.monotonic()
        self._set_state(connection, ConnectionState.KEPT)
        self._kept[connection] = give_back
        return True

    def unkeep(self, connection: ServerConnection) -> None:
        """The client that kept ``connection`` uses it again, or gives it back."""
        if self._kept.pop(connection, None) is not None:
            self._set_state(connection, ConnectionState.BUSY)

    def _reclaim(self, variant: Hashable) -> bool:
        """Take back the longest-kept connection of ``variant``; False if there is none."""
        kept = next((connection for connection in self._kept if connection.variant == variant), None)
        if kept is None:
            return False
        self._take_back(kept)
        return True

    def _reclaim_all(self) -> int:
        """Take back every kept connection (a pause, a drain, a reload); how many there were."""
        kept = list(self._kept)
        for connection in kept:
            if connection in self._kept:
                self._take_back(connection)
        return len(kept)

    def _take_back(self, connection: ServerConnection) -> None:
        """Have the client that kept ``connection`` release it (to a waiter, or idle)."""
        give_back = self._kept.pop(connection)
        self._set_state(connection, ConnectionState.BUSY)
        give_back()

    async def _reset_and_return(self, connection: ServerConnection) -> None:
        try:
            await asyncio.wait_for(connection.reset(), RESET_TIMEOUT)
        except Exception as exc:
            log.info('pool "%s": closing a server connection whose reset failed: %s', self.name, exc)
            self._discard(connection)
            return
        if self._closing or self._must_retire(connection):  # closed, or drained while resetting
            self._discard(connection)
            return
        self._make_available(connection)

    def _make_available(self, connection: ServerConnection) -> None:
        connection.idle_since = time.monotonic()
        if self.paused:
            # Nobody gets new work while paused: the waiters retry on resume.
            self._set_state(connection, ConnectionState.IDLE)
            self._idle.append(connection)
            return
        for entry in self._waiters:
            variant, waiter = entry
            if variant == connection.variant and not waiter.done():
                self._waiters.remove(entry)
                self._set_state(connection, ConnectionState.BUSY)
                waiter.set_result(connection)
                return
        others_waiting = any(not waiter.done() for _, waiter in self._waiters)
        if others_waiting and self.size >= self.config.max_server_connections:
            # Everyone waiting wants another variant and the pool is full: free the slot
            # (discarding wakes the first waiter to open a connection of its own variant).
            self._discard(connection)
            return
        self._set_state(connection, ConnectionState.IDLE)
        self._idle.append(connection)
        if others_waiting:
            self._wake_one()  # a waiter counted on this reset; it can open its own now

    def _discard(self, connection: ServerConnection) -> None:
        if connection.state is ConnectionState.CLOSED:
            return
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)
        self._kept.pop(connection, None)
        self._connections.discard(connection)
        self._set_state(connection, ConnectionState.CLOSED)
        connection.on_lost = None
        connection.close()
        self._note_drained()
        self._wake_one()

    def _on_connection_lost(self, connection: ServerConnection) -> None:
        # An idle connection the server closed (restart, idle timeout) leaves the pool now;
        # a busy one is discarded when its client session releases it.
        if connection.state in (ConnectionState.IDLE, None):
            self._discard(connection)

    def _wake_one(self) -> None:
        """A slot freed up: let the first waiter try to open a connection itself."""
        if self._closing:
            return
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _set_state(self, connection: ServerConnection, state: ConnectionState) -> None:
        if connection.state is not None:
            self.counts[connection.state] -= 1
        connection.state = state
        self.counts[state] += 1

    def _must_retire(self, connection: ServerConnection) -> bool:
        return (
            connection.is_closed
            or connection.generation != self.generation
            or time.monotonic() - connection.created_at >= self.config.server_lifetime
        )

    # --- reload ------------------------------------------------------------------------------
    def retire(self, successor: Pool | None) -> None:
        """A reload removed this pool (``successor`` None) or replaced it with ``successor``.

        The pool keeps serving the clients it has while they end at their next idle point;
        it opens no connections to refill itself and closes idle ones.
        """
        self.retired = True
        self.successor = successor
        self._reclaim_all()
        for connection in list(self._idle):
            self._discard(connection)

    def live_successor(self) -> Pool | None:
        """The pool now serving this one's name, following later reloads; None if removed."""
        pool = self.successor
        while pool is not None and pool.retired:
            pool = pool.successor
        return pool

    # --- operator actions (admin API) -------------------------------------------------------
    def pause(self) -> None:
        """New borrows wait (within borrow_timeout) until ``resume``; borrowed connections carry on."""
        if not self.paused:
            self.paused = True
            self._resumed.clear()
            self._reclaim_all()  # their clients' next transactions wait too
            log.info('pool "%s": paused: new borrows wait for resume', self.name)

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self._resumed.set()
        # Waiters queued before the pause were passed over by releases since: let each retry.
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        log.info('pool "%s": resumed', self.name)

    def reconnect(self) -> dict[str, int]:
        """Drain: idle connections close now, busy ones when released; new ones log in afresh.

        A new generation with the same credentials: the machinery that retires connections
        of an old credential version retires these too.
        """
        self.generation += 1
        self.reconnects_total += 1
        self.last_reconnect_at = time.time()
        idle_closed = self._close_idle_old()
        busy_old = self.old_generation_count
        log.info(
            'pool "%s": reconnect requested: %d idle connections closed, %d busy ones close when '
            "their clients release them (generation %d)",
            self.name,
            idle_closed,
            busy_old,
            self.generation,
        )
        return {"generation": self.generation, "idle_closed": idle_closed, "busy_draining": busy_old}

    async def refresh_credentials(self) -> bool:
        """Re-read the credentials now; True when a new version turned up.

        The pool moves to it make-before-break, as when the poller finds it.
        """
        changed = await self.credentials.check_now()
        self._check_for_new_version()
        return changed

    # --- upkeep ----------------------------------------------------------------------------
    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _janitor_loop(self) -> None:
        while True:
            self._check_for_new_version()
            self._expire_idle()
            await self._fill_to_minimum()
            await asyncio.sleep(JANITOR_INTERVAL)

    def _expire_idle(self) -> None:
        now = time.monotonic()
        for connection in list(self._kept):
            # Kept by a client idle this long, or due to retire: the pool takes it back.
            idle_too_long = now - connection.idle_since >= KEEP_LIMIT
            if connection in self._kept and (idle_too_long or self._must_retire(connection)):
                self._take_back(connection)
        for connection in list(self._idle):
            idle_too_long = now - connection.idle_since >= self.config.idle_timeout
            if (
                self.retired
                or self._must_retire(connection)
                or (idle_too_long and self.size > self.config.min_server_connections)
            ):
                self._discard(connection)

    async def _fill_to_minimum(self) -> None:
        while (
            self.size < self.config.min_server_connections
            and not self._closing
            and not self.paused
            and not self.retired
        ):
            try:
                await self._open(self.connector.default_variant, for_borrower=False)
            except (PoolError, OSError, Exception) as exc:
                log.warning('pool "%s": could not open a server connection: %s', self.name, exc)
                return
