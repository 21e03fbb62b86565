"""MySQL transaction pooling: a client holds a server connection only while it needs one.

Theory of operation: this is the driver of the sans-IO pooling core
(``protocols.mysql.pooling``), which makes every protocol decision: it feeds the core both
sides' bytes and carries out its commands (writes, attaching a connection when it asks,
giving it back or keeping it when it may detach, counting and logging pins). Attaching
takes an idle connection of the client's capability variant at once when the pool has one,
else queues for the next one released or borrows in a task. A detached client keeps its
connection while nobody waits (``Pool.keep``), so a busy client pays no borrow per
transaction; the pool takes it back at need.

Shutdown and reload (``close_gracefully``) act at the detach point: a client that holds no
server connection is told ERR 1053 there (ER_SERVER_SHUTDOWN, as a MySQL server shutting
down says it); a pinned one once the server owes it nothing and no transaction is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Hashable
from typing import Any

from protocols.endings import EndReason
from protocols.mysql.packets import Packet
from protocols.mysql.pooling import Command, PooledMySqlClient
from protocols.pooling import (
    CloseWithError,
    Ended,
    MayDetach,
    NeedConnection,
    Pinned,
    SendToClient,
    SendToServer,
)
from proxy.core.counters import ClientMeter
from proxy.core.endpoint import CONTROL_BUFFER_LIMIT, Endpoint
from proxy.core.errors import BorrowTimeout, PoolError
from proxy.core.server import ServerConnection
from proxy.mysql.server import MySqlServerConnection
from proxy.pool.pool import Pool

log = logging.getLogger(__name__)

KILL_TIMEOUT = 5.0
_serials = itertools.count(1)


class MySqlTransactionRelay:
    """Serves one logged-in MySQL client in transaction mode until it leaves.

    ``session`` is the client session: it answers KILL and COM_CHANGE_USER itself
    (``answers``), and KILL of this client reaches ``server`` (None while nothing runs).
    """

    def __init__(
        self,
        session: Any,
        client: Endpoint,
        pool: Pool,
        meter: ClientMeter,
        variant: Hashable,
        collation_id: int,
        schema: str | None,
        login_collation_id: int,
        multi_statements: bool,
    ) -> None:
        self.session = session
        self.client = client
        self.pool = pool
        self.metrics = pool.metrics
        self.meter = meter
        self.variant = variant
        self.core = PooledMySqlClient(
            next(_serials), collation_id, schema, login_collation_id, pool.name, multi_statements
        )
        self.server: MySqlServerConnection | None = None
        self.kept = False  # idle, still attached: the pool let us keep it (Pool.keep)
        self._attaching: asyncio.Future[Any] | None = None
        self._done: asyncio.Future[EndReason] = asyncio.get_running_loop().create_future()
        self.closing = False

    def __repr__(self) -> str:
        return (
            f"MySqlTransactionRelay({self.session.peer}, server={self.server!r}, pinned={self.core.pinned!r})"
        )

    @property
    def running_on(self) -> MySqlServerConnection | None:
        """The connection running the client's command, for KILL (not a kept one)."""
        return None if self.kept else self.server

    async def run(self) -> EndReason:
        self.client.start_relay(self._on_client_data)
        self.client.on_lost(lambda _: self._finish(EndReason.CLIENT_CLOSED))
        try:
            reason = await self._done
        except asyncio.CancelledError:
            if self.server is not None:
                self.pool.release(self._unhook(), reusable=False)
            raise
        finally:
            self.client.stop_relay()
            if self._attaching is not None:
                self._attaching.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._attaching
        await self._leave(reason)
        return reason

    def _finish(self, reason: EndReason) -> None:
        if not self._done.done():
            self._done.set_result(reason)
            self.core.stop()

    # --- events into the core --------------------------------------------------------------
    def _on_client_data(self, data: bytes) -> None:
        self.metrics.bytes_in += len(data)
        if self.kept and self.server is not None:
            self.kept = False
            self.pool.use_again(self.server)
        core = self.core
        reader = core.reader
        reader.receive_data(data)
        # KILL and COM_CHANGE_USER are the session's to answer; the rest goes to the core.
        while isinstance(packet := reader.next_event(), Packet):
            if packet.sequence_id == 0 and packet.payload and self.session.answers(packet.payload):
                continue
            core.queue(packet)
        self._run(core.forward())

    def _on_server_data(self, data: bytes) -> None:
        if self.kept:
            log.info("upstream %r spoke while idle; closing it", self.server)
            self._take_back(reusable=False)
            return
        core = self.core
        queries, transactions = core.queries, core.transactions
        commands = core.receive_server(data)
        self.metrics.queries += core.queries - queries
        self.metrics.transactions += core.transactions - transactions
        self.meter.in_transaction = core.in_transaction
        self._run(commands)

    def _on_server_lost(self, _: Endpoint) -> None:
        if self.kept:
            self._take_back(reusable=False)
            return
        self._run([self.core.connection_lost()])

    # --- the core's commands ---------------------------------------------------------------
    def _run(self, commands: list[Command]) -> None:
        for command in commands:
            if type(command) is SendToServer:
                server = self.server
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
                    self.client.pause_reading()
            elif type(command) is Pinned:
                self._pinned(command)
            elif type(command) is Ended:
                if command.reason is EndReason.SERVER_VIOLATION:
                    log.warning("upstream %r broke the protocol: %s", self.server, command.detail)
                self._finish(command.reason)
            elif type(command) is CloseWithError:
                log.warning("client %s: %s", self.session.peer, command.detail)
                self.client.write(command.error)
                self._finish(command.reason)

    def _pinned(self, pin: Pinned) -> None:
        self.meter.pinned = True
        self.pool.pins_total[pin.kind] = self.pool.pins_total.get(pin.kind, 0) + 1
        log.info(
            'pool "%s": client %s pinned to %r (%s)',
            self.pool.name,
            self.session.peer,
            self.server,
            pin.reason,
        )

    # --- attaching ---------------------------------------------------------------------------
    def _start_attaching(self) -> None:
        server = self.pool.borrow_now(self.variant)
        if server is not None:
            self._attached(server)
            return
        self._attaching = self.pool.queue_for_release(self._handed, self.variant)
        if self._attaching is None:
            self._attaching = asyncio.create_task(self._attach())

    def _handed(self, waiter: asyncio.Future[Any]) -> None:
        self._attaching = None
        if waiter.cancelled():
            return
        if (exc := waiter.exception()) is not None:
            if not self._done.done():
                self._fail(str(exc), isinstance(exc, BorrowTimeout))
            return
        server = waiter.result()
        if server is None:
            if not self._done.done():
                self._attaching = asyncio.create_task(self._attach())
        elif self._done.done():
            self.pool.release(server, reusable=True)
        else:
            self._attached(server)

    async def _attach(self) -> None:
        try:
            try:
                server = await self.pool.borrow(self.variant)
            except BorrowTimeout as exc:
                self._fail(str(exc), True)
                return
            except PoolError as exc:
                self._fail(str(exc), False)
                return
        finally:
            self._attaching = None
        if self._done.done():
            self.pool.release(server, reusable=True)
            return
        self._attached(server)

    def _attached(self, server: ServerConnection) -> None:
        assert isinstance(server, MySqlServerConnection) and server.server_state is not None
        self.server = server
        self.session.server = server
        self.client.peer, server.endpoint.peer = server.endpoint, self.client
        server.endpoint.start_relay(self._on_server_data)
        server.endpoint.on_lost(self._on_server_lost)
        self.client.resume_reading()
        self._run(self.core.attached(server.server_state))

    def _fail(self, message: str, timeout: bool) -> None:
        self._run([self.core.no_connection(message, timeout)])

    # --- detaching ---------------------------------------------------------------------------
    def _unhook(self) -> MySqlServerConnection:
        server = self.server
        assert server is not None
        self.server = None
        self.session.server = None
        self.kept = False
        self.core.detached()
        server.endpoint.remove_on_lost(self._on_server_lost)
        server.endpoint.stop_relay()
        self.client.peer = None
        return server

    def _may_detach(self, clean: bool) -> None:
        if not clean:
            if self.closing:
                self._finish(EndReason.GOODBYE)
            return
        server = self.server
        assert server is not None
        if not self.closing and self.pool.keep(server, self._take_back):
            self.kept = True
            self.session.server = None
            return
        self._take_back()
        if self.closing:
            self._leave_pool()

    def _take_back(self, reusable: bool = True) -> None:
        """Give the connection back (the pool may be taking a kept one back): reset first if
        the client's warnings are on it."""
        diagnostics = self.core.diagnostics_pending
        server = self._unhook()
        server.dirty = server.dirty or diagnostics
        self.pool.release(server, reusable=reusable)

    async def _leave(self, reason: EndReason) -> None:
        self.core.forget_statements()
        if self.server is None:
            return
        terms = self.core.release_terms()
        server = self._unhook()
        if reason is EndReason.SERVER_CLOSED or server.is_closed:
            self.pool.release(server, reusable=False)
            return
        if terms.cancel_first:
            log.info(
                'pool "%s": client %s left mid-query; killing it on %r',
                server.pool,
                self.session.peer,
                server,
            )
            try:
                async with asyncio.timeout(KILL_TIMEOUT):
                    await server.kill_query()
            except Exception as exc:
                log.warning("could not kill the abandoned query on %r: %s", server, exc)
        server.dirty = terms.needs_reset
        self.pool.release(server, reusable=terms.reusable)

    # --- shutdown and reload -----------------------------------------------------------------
    def close_gracefully(self) -> None:
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
            self._finish(EndReason.GOODBYE)
            return
        # Nothing of the client lives on a server connection: its session and statements
        # travel with it, so its next transaction simply runs on the new pool.
        log.debug('pool "%s": client %s moves to the reloaded pool', self.pool.name, self.session.peer)
        self.core.leave_copies()  # (on the old pool's connections)
        self.pool = successor
        self.core.pool_name = successor.name
        self.metrics = successor.metrics
        self.closing = False
        self.session.moved_to(successor)
