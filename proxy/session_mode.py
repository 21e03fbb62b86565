"""Session mode, for every engine: a client holds one server connection from login until it
leaves; the connection goes back to the pool, reusable only if the client left it at rest.

The skeleton is here: borrow for a client's login (``borrow_for_client``), relay both
ways until either side leaves, count the bytes and each response that ends, end with a
goodbye at the first idle point once asked to (``close_gracefully``), give the connection
back (``give_back``). An engine plugs in what differs, its message headers and its idle
points, by subclassing ``SessionRelay``.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from protocols.endings import EndReason
from protocols.errors import MessageTooLarge, ProtocolViolation
from proxy.core import limits
from proxy.core.counters import REJECTED_BORROW_TIMEOUT, REJECTED_UPSTREAM, ClientMeter
from proxy.core.endpoint import Endpoint
from proxy.core.errors import BorrowTimeout, PoolError
from proxy.core.server import ServerConnection
from proxy.core.upstream_connection import UpstreamConnection
from proxy.pool.pool import Pool

log = logging.getLogger(__name__)

S = TypeVar("S", bound=UpstreamConnection[Any])


async def borrow_for_client(
    pool: Pool, refused: Callable[[PoolError], Exception], variant: Hashable = None
) -> ServerConnection:
    """A server connection for a client logging in. A refusal is counted, then raised as the
    engine's ``refused(exc)`` (what the client is told; the engine logs it under its name)."""
    try:
        return await pool.borrow(variant)
    except PoolError as exc:
        pool.metrics.reject(REJECTED_BORROW_TIMEOUT if isinstance(exc, BorrowTimeout) else REJECTED_UPSTREAM)
        raise refused(exc) from None


def give_back(pool: Pool, server: UpstreamConnection[Any], *, reusable: bool) -> None:
    """Return a connection a client session borrowed, its endpoint back in control mode."""
    server.endpoint.stop_relay()
    pool.release(server, reusable=reusable and not server.is_closed)


class SessionRelay(ABC, Generic[S]):
    """Relays one client and its server connection both ways until either leaves, then gives
    the connection back.

    In relay mode each chunk an endpoint receives comes straight here (``_to_server``,
    ``_to_client``), is counted, and goes to the engine's subclass, which forwards and
    follows it (``from_client``, ``from_server``). A protocol violation on either side ends
    the relay with a reason that says whose it was; ``close_gracefully`` ends it at the
    next idle point.
    """

    def __init__(self, client: Endpoint, pool: Pool, server: S, meter: ClientMeter, peer: str) -> None:
        self.client = client
        self.pool = pool
        self.server = server
        self.metrics = pool.metrics
        self.meter = meter
        self.peer = peer
        self.idle = True  # no transaction open, as of the last response that ended
        self.closing = False  # shutdown or reload: end at the next idle point
        self.done: asyncio.Future[EndReason] = asyncio.get_running_loop().create_future()

    # --- what the engine plugs in ----------------------------------------------------------
    @abstractmethod
    def from_client(self, data: bytes) -> EndReason | None:
        """Forward what the client sent; a reason when the session ends there (Terminate,
        COM_QUIT)."""

    @abstractmethod
    def from_server(self, data: bytes) -> int:
        """Follow what the server sent (already on its way to the client): how many responses
        ended in it, with ``idle`` brought up to date when any did."""

    @abstractmethod
    def at_idle_point(self) -> bool:
        """The server owes the client nothing, nothing is half-sent, no transaction is open."""

    @abstractmethod
    def incomplete(self) -> bool:
        """Part of a client message went by (or is buffered) and the rest has not."""

    @abstractmethod
    def too_large(self, exc: MessageTooLarge) -> bytes:
        """What the client is told when it announces a message over max_client_message_size."""

    def violation_error(self, exc: ProtocolViolation) -> bytes:
        """What the client is told when it breaks the protocol otherwise (nothing, unless the
        engine says)."""
        return b""

    def waiting_on_client(self) -> int:
        """What the client's next bytes are awaited for (see ``ClientSession.waiting_on_client``)."""
        if self.incomplete():
            return limits.INCOMPLETE
        return limits.IDLE if self.at_idle_point() else limits.BUSY

    @abstractmethod
    async def reusable_after(self, reason: EndReason) -> bool:
        """Whether the connection may serve another client now that the relay ended for
        ``reason`` (the engine may first stop a query the client left running)."""

    # --- the skeleton ----------------------------------------------------------------------
    async def run(self) -> EndReason:
        """Relay until either side leaves, give the connection back; why it ended.

        On GOODBYE the session says goodbye itself, once it no longer points at the connection.
        """
        client, server = self.client, self.server
        upstream = server.endpoint
        reusable = False
        try:
            client.peer, upstream.peer = upstream, client
            upstream.start_relay(self._to_client)
            client.start_relay(self._to_server)
            client.on_lost(lambda _: self._end(EndReason.CLIENT_CLOSED))
            upstream.on_lost(lambda _: self._end(EndReason.SERVER_CLOSED))
            try:
                reason = await self.done
            finally:
                client.stop_relay()
                upstream.stop_relay()
            reusable = await self.reusable_after(reason)
        finally:
            give_back(self.pool, server, reusable=reusable)
        return reason

    def close_gracefully(self) -> None:
        """End at the next idle point: now if the session is at one, else once it reaches one."""
        self.closing = True
        if not self.done.done() and self.at_idle_point():
            self.done.set_result(EndReason.GOODBYE)

    def _end(self, reason: EndReason) -> None:
        if not self.done.done():
            self.done.set_result(reason)

    def _to_server(self, data: bytes) -> None:
        if self.done.done():
            return
        self.metrics.bytes_in += len(data)
        try:
            reason = self.from_client(data)
        except MessageTooLarge as too_large:  # (a name of its own: mypyc types one per name)
            log.info("client %s: %s", self.peer, too_large)
            self.client.write(self.too_large(too_large))
            self.metrics.close(limits.MESSAGE_TOO_LARGE)
            self._end(EndReason.MESSAGE_TOO_LARGE)
            return
        except ProtocolViolation as exc:
            log.info("client %s broke the protocol: %s", self.peer, exc)
            self.client.write(self.violation_error(exc))
            self._end(EndReason.CLIENT_VIOLATION)
            return
        if reason is not None:
            self._end(reason)

    def _to_client(self, data: bytes) -> None:
        self.client.write(data)
        metrics = self.metrics
        metrics.bytes_out += len(data)
        try:
            answered = self.from_server(data)
        except ProtocolViolation as exc:
            log.warning("upstream %r broke the protocol: %s", self.server, exc)
            self._end(EndReason.SERVER_VIOLATION)
            return
        if answered:  # at most once per chunk: a few int operations per response
            idle, meter = self.idle, self.meter
            if idle:
                # Several answers in one chunk are autocommit statements, unless the chunk
                # closes a transaction (a tracker keeps only the last status).
                metrics.transactions += 1 if meter.in_transaction else answered
                if self.closing and not self.done.done() and self.at_idle_point():
                    self.done.set_result(EndReason.GOODBYE)  # the client's transaction is over: now
            meter.in_transaction = not idle
