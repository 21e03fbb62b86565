"""Transaction mode, for every engine: a client holds a server connection only while it needs
one, and gives it back at the next idle point its engine's pooling core names.

The skeleton is here: attaching a connection when the core asks (an idle one at once when
the pool has one: no task, no wait; else a place in the pool's queue for the next one
released, or a borrow in a task), detaching when the core says the client may (kept while
nobody waits, which saves the release and borrow a busy client would pay per transaction;
the pool takes it back at need), leaving (the connection goes back reset if it must be,
the client's running query stopped first), and shutdown and reload (a detached client
moves to the pool that replaced its own, or leaves). Each engine subclasses
``TransactionClient`` with its core, its way of taking a connection and of stopping an
abandoned query, and its errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any, Generic, Protocol, TypeVar

from protocols.endings import EndReason
from protocols.pooling import (
    CloseWithError,
    Ended,
    MayDetach,
    NeedConnection,
    Pinned,
    Release,
    SendToClient,
    SendToServer,
)
from proxy.core import limits
from proxy.core.counters import ClientMeter
from proxy.core.endpoint import CONTROL_BUFFER_LIMIT, Endpoint
from proxy.core.errors import BorrowTimeout, PoolError
from proxy.core.server import ServerConnection
from proxy.core.upstream_connection import UpstreamConnection
from proxy.pool.pool import Pool

log = logging.getLogger(__name__)


class PoolingCore(Protocol):
    """What the skeleton asks of an engine's sans-IO pooling core."""

    pool_name: str

    @property
    def pinned(self) -> str | None: ...

    @property
    def pending(self) -> int: ...

    @property
    def at_idle_point(self) -> bool: ...

    @property
    def incomplete(self) -> bool: ...

    def detached(self) -> None: ...

    def stop(self) -> None: ...

    def release_terms(self) -> Release: ...

    def forget_statements(self) -> None: ...


class TransactionSession(Protocol):
    """What transaction mode may ask of the client session it serves.

    The session's fields stay the session's: the relay tells it what happened through these
    methods, and the session asks the relay what it needs (``running_on``).
    """

    @property
    def peer(self) -> str: ...

    def moved_to(self, pool: Pool) -> None:
        """A reload replaced the client's pool; the client now belongs to ``pool``."""


S = TypeVar("S", bound=UpstreamConnection[Any])  # the engine's server connection
C = TypeVar("C", bound=PoolingCore)  # its pooling core
T = TypeVar("T", bound=TransactionSession)  # its client session


class TransactionClient(ABC, Generic[S, C, T]):
    """One transaction-mode client's hold on its pool: the connection attached while it needs
    one. The engine's subclass feeds the core and carries out its commands."""

    def __init__(
        self, session: T, core: C, client: Endpoint, pool: Pool, meter: ClientMeter, variant: Hashable
    ) -> None:
        self.session = session
        self.core = core
        self.client = client
        self.pool = pool
        self.metrics = pool.metrics
        self.meter = meter
        self.variant = variant
        self.server: S | None = None
        # Idle, but still attached: the pool let us keep the connection (see Pool.keep).
        self.kept = False
        # Getting a connection: a place in the pool's queue, or a task borrowing one.
        self._attaching: asyncio.Future[Any] | None = None
        self._done: asyncio.Future[EndReason] = asyncio.get_running_loop().create_future()
        self.closing = False  # shutdown or reload: leave the pool at the next detach point

    @property
    def running_on(self) -> S | None:
        """What a cancel or KILL from this client reaches: the connection running its request.
        Not a kept one: a late cancel must not reach whoever gets it next."""
        return None if self.kept else self.server

    def waiting_on_client(self) -> int:
        """What the client's next bytes are awaited for (see ``ClientSession.waiting_on_client``)."""
        core = self.core
        if core.incomplete:
            return limits.INCOMPLETE
        if core.pending or self._attaching is not None:
            return limits.BUSY  # a request waits for a connection (within borrow_timeout)
        if core.at_idle_point and (self.server is None or self.kept):
            return limits.IDLE
        return limits.BUSY

    async def relay(self, *, closing: bool = False) -> EndReason:
        """Serve the client until it leaves; ``closing``: it was asked to while logging in.
        Why it ended; its connection is back by then."""
        self.client.start_relay(self._on_client_data)
        self.client.on_lost(lambda _: self._finish(EndReason.CLIENT_CLOSED))
        if closing:
            self.close_gracefully()
        try:
            reason = await self._done
        except asyncio.CancelledError:
            # Cut (shutdown_timeout passed): a transaction still open dies with its connection.
            if self.server is not None:
                self.pool.release(self._unhook(), reusable=False)
            raise
        finally:
            self.client.stop_relay()
            self._stopped()
            if self._attaching is not None:
                self._attaching.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._attaching
        await self._leave(reason)
        return reason

    # --- what the engine plugs in ----------------------------------------------------------
    @abstractmethod
    def _on_client_data(self, data: bytes) -> None: ...

    def _stopped(self) -> None:
        """The client is no longer relayed: stop the engine's own timers."""

    @abstractmethod
    def _take(self, server: ServerConnection) -> None:
        """A connection was borrowed for the client: attach it (``_attached``), after whatever
        the engine does first."""

    @abstractmethod
    def _fail(self, message: str, timeout: bool) -> None:
        """No connection could be had (``timeout``: borrow_timeout passed): tell the client."""

    @abstractmethod
    def _on_server_data(self, data: bytes) -> None: ...

    @abstractmethod
    def _on_server_lost(self, _: Endpoint) -> None: ...

    @abstractmethod
    async def _stop_abandoned(self, server: S) -> None:
        """The client left while ``server`` ran its request: stop it there."""

    def _engine_command(self, command: object) -> None:
        """A command of the engine's own (PostgreSQL's idle-in-transaction timer)."""
        raise AssertionError(f"unexpected command {command!r}")

    def _leaving(self, terms: Release) -> None:
        """The client left on ``terms``; what the engine notes on its connection first."""

    def _moved(self, successor: Pool) -> None:
        """The client moves to ``successor`` (a reload): what the core must know of it."""
        self.core.pool_name = successor.name

    def _finish(self, reason: EndReason) -> None:
        if not self._done.done():
            self._done.set_result(reason)
            self.core.stop()

    # --- the core's commands ---------------------------------------------------------------
    def _run(self, commands: list[Any]) -> None:
        """Carry out the core's commands, in order (the engine's ``list[Command]``; typed Any
        here so that mypyc iterates it as a list and narrows each by its type)."""
        for command in commands:
            # By type, most frequent first: this runs for every chunk either way.
            if type(command) is SendToServer:
                server: UpstreamConnection[Any] | None = self.server  # (a native class: no getattr)
                assert server is not None
                server.endpoint.write(command.data)
            elif type(command) is SendToClient:
                self.metrics.bytes_out += len(command.data)
                self.client.write(command.data)
            elif type(command) is MayDetach:
                self._may_detach(command.clean)
            elif type(command) is NeedConnection:
                if self._attaching is None and self.server is None:
                    self._start_attaching()
                if self.server is None and self.core.pending > CONTROL_BUFFER_LIMIT:
                    self.client.pause_reading()  # resumed once attached
            elif type(command) is Pinned:
                self._pinned(command)
            elif type(command) is Ended or type(command) is CloseWithError:
                assert isinstance(command, (Ended, CloseWithError))
                if command.reason is EndReason.CLIENT_VIOLATION:
                    log.info("client %s broke the protocol: %s", self.session.peer, command.detail)
                elif command.reason is EndReason.SERVER_VIOLATION:
                    log.warning("upstream %r broke the protocol: %s", self.server, command.detail)
                if isinstance(command, CloseWithError):
                    self.client.write(command.error)
                    if command.reason is EndReason.MESSAGE_TOO_LARGE:
                        log.info("client %s: %s", self.session.peer, command.detail)
                        self.metrics.close(limits.MESSAGE_TOO_LARGE)
                self._finish(command.reason)
            else:
                self._engine_command(command)

    def _pinned(self, pin: Pinned) -> None:
        self.meter.pinned = True
        self.pool.pins_total[pin.kind] = self.pool.pins_total.get(pin.kind, 0) + 1
        peer = self.session.peer
        log.info('pool "%s": client %s pinned to %r (%s)', self.pool.name, peer, self.server, pin.reason)

    # --- attaching ---------------------------------------------------------------------------
    def _start_attaching(self) -> None:
        """Attach a connection: at once if the pool has an idle one, else queue for the next
        one released (a full pool) or borrow it in a task."""
        server = self.pool.borrow_now(self.variant)
        if server is not None:
            self._take(server)  # the common case: no task, no wait
            return
        self._attaching = self.pool.queue_for_release(self._handed, self.variant)
        if self._attaching is None:
            self._attaching = asyncio.create_task(self._attach())

    def _handed(self, waiter: asyncio.Future[Any]) -> None:
        """The pool answered our place in its queue."""
        self._attaching = None
        if waiter.cancelled():  # the client left
            return
        if (exc := waiter.exception()) is not None:
            if not self._done.done():
                self._fail(str(exc), isinstance(exc, BorrowTimeout))
            return
        server = waiter.result()
        if server is None:  # a slot freed up: open a connection the slow way
            if not self._done.done():
                self._attaching = asyncio.create_task(self._attach())
        elif self._done.done():
            self.pool.release(server, reusable=True)
        else:
            self._take(server)

    async def _attach(self) -> None:
        """Borrow a connection, then take it."""
        try:
            server = await self.pool.borrow(self.variant)
        except BorrowTimeout as exc:
            self._attaching = None
            self._fail(str(exc), True)
            return
        except PoolError as exc:
            self._attaching = None
            self._fail(str(exc), False)
            return
        self._attaching = None
        if self._done.done():
            self.pool.release(server, reusable=True)
            return
        self._take(server)

    def _attached(self, server: S) -> None:
        self.server = server
        upstream: Endpoint = server.endpoint
        self.client.peer, upstream.peer = upstream, self.client
        upstream.start_relay(self._on_server_data)
        upstream.on_lost(self._on_server_lost)
        self.client.resume_reading()

    # --- detaching ---------------------------------------------------------------------------
    def _unhook(self) -> S:
        """Undo what attaching did; the connection is the caller's to give back."""
        server = self.server
        assert server is not None
        self.server = None
        self.kept = False
        self.core.detached()
        upstream: Endpoint = server.endpoint
        upstream.remove_on_lost(self._on_server_lost)
        upstream.stop_relay()
        self.client.peer = None
        return server

    def _may_detach(self, clean: bool) -> bool:
        """The core says the client may let go of its connection: give it back (or keep it,
        while nobody waits); True if the client no longer runs on it."""
        if not clean:  # pinned: its session state cannot move
            if self.closing:
                self._finish(EndReason.GOODBYE)  # it ends here
            return False
        server = self.server
        assert server is not None
        if not self.closing and self.pool.keep(server, self._take_back):
            self.kept = True
            return True
        self._take_back()
        if self.closing:
            self._leave_pool()
        return True

    def _use_again(self, server: S) -> None:
        self.kept = False
        self.pool.use_again(server)

    def _take_back(self, reusable: bool = True) -> None:
        """The connection goes back: the client let go of it, or the pool takes back the one
        this idle client kept (it needs it, or it failed)."""
        server = self._unhook()
        self.pool.release(server, reusable=reusable and not server.interrupted)

    async def _leave(self, reason: EndReason) -> None:
        """The client left: the connection goes back, reset if it must be, its request
        stopped first if it still runs one."""
        self.core.forget_statements()  # closed upstream with the next work on each copy
        if self.server is None:
            return
        terms = self.core.release_terms()
        self._leaving(terms)
        server = self._unhook()
        if reason is EndReason.SERVER_CLOSED or server.is_closed:
            self.pool.release(server, reusable=False)
            return
        if terms.cancel_first:
            await self._stop_abandoned(server)
        else:
            server.dirty = terms.needs_reset
        self.pool.release(server, reusable=terms.reusable and not server.interrupted)

    # --- shutdown and reload -----------------------------------------------------------------
    def close_gracefully(self) -> None:
        """Leave the pool at the next detach point (the session says why).

        A client waiting for a connection (``_attaching``) already sent its request: it is
        served, and leaves when that is answered.
        """
        self.closing = True
        if self._done.done():
            return
        if self.kept:
            self._take_back()
        if self.server is None:
            if self._attaching is None:
                self._leave_pool()
        elif self.core.pinned is not None and self.core.at_idle_point:
            self._finish(EndReason.GOODBYE)

    def _leave_pool(self) -> None:
        """Detached, while closing: move to the pool that replaced ours, or say goodbye."""
        successor = self.pool.live_successor()
        if (
            successor is None
            or successor.config.mode != "transaction"
            or successor.config.listen != self.pool.config.listen
        ):
            self._finish(EndReason.GOODBYE)  # said by run(), after the connection is back
            return
        # Nothing of the client lives on a server connection: its session and statements
        # travel with it, so the next transaction simply runs on the new pool.
        log.debug('pool "%s": client %s moves to the reloaded pool', self.pool.name, self.session.peer)
        self._moved(successor)
        self.pool = successor
        self.metrics = successor.metrics  # the same object: a reload hands it on (see Proxy.reload)
        self.closing = False
        self.session.moved_to(successor)
