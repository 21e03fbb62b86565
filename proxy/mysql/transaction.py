"""MySQL transaction pooling: a client holds a server connection only while it needs one.

Theory of operation: this is the driver of the sans-IO pooling core
(``protocols.mysql.pooling``), which makes every protocol decision: it feeds the core both
sides' bytes and carries out its commands (writes, attaching a connection of the client's
capability variant when it asks, giving it back or keeping it when it may detach, counting
and logging pins); attaching, detaching, leaving and moving on reload are the skeleton's
(``proxy.transaction_mode``). A connection that holds the client's warnings when the pool
takes it back is reset before anyone else gets it; a query the client left running is
killed.

Shutdown and reload (``close_gracefully``) act at the detach point: a client that holds no
server connection is told ERR 1053 there (ER_SERVER_SHUTDOWN, as a MySQL server shutting
down says it); a pinned one once the server owes it nothing and no transaction is open.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Hashable
from typing import Protocol

from protocols.endings import EndReason
from protocols.errors import MessageTooLarge, ProtocolViolation
from protocols.mysql.packets import Packet
from protocols.mysql.pooling import PooledMySqlClient
from protocols.pooling import CloseWithError, Ended, Release
from proxy.core import limits
from proxy.core.counters import ClientMeter
from proxy.core.endpoint import Endpoint
from proxy.core.server import ServerConnection
from proxy.mysql.limits import limit_error
from proxy.mysql.server import MySqlServerConnection
from proxy.pool.pool import Pool
from proxy.transaction_mode import TransactionClient, TransactionSession

log = logging.getLogger(__name__)

KILL_TIMEOUT = 5.0
_serials = itertools.count(1)


class MySqlSession(TransactionSession, Protocol):
    """What MySQL transaction mode asks of its client session (``MySqlClientSession``)."""

    def answers(self, payload: bytes) -> bool:
        """Answer a command itself (KILL of a proxy connection id); True if it did."""
        ...


class MySqlTransactionRelay(TransactionClient[MySqlServerConnection, PooledMySqlClient, MySqlSession]):
    """Serves one logged-in MySQL client in transaction mode until it leaves."""

    def __init__(
        self,
        session: MySqlSession,
        client: Endpoint,
        pool: Pool,
        meter: ClientMeter,
        variant: Hashable,
        collation_id: int,
        schema: str | None,
        login_collation_id: int,
        multi_statements: bool,
    ) -> None:
        core = PooledMySqlClient(
            next(_serials), collation_id, schema, login_collation_id, pool.name, multi_statements
        )
        super().__init__(session, core, client, pool, meter, variant)
        core.reader.max_payload_size = pool.config.max_client_message_size
        core.reader.limit_name = limits.MESSAGE_TOO_LARGE

    def __repr__(self) -> str:
        pinned = self.core.pinned
        return f"MySqlTransactionRelay({self.session.peer}, server={self.server!r}, pinned={pinned!r})"

    # --- events into the core --------------------------------------------------------------
    def _on_client_data(self, data: bytes) -> None:
        self.metrics.bytes_in += len(data)
        server = self.server
        if self.kept and server is not None:
            self._use_again(server)
        core = self.core
        reader = core.reader
        reader.receive_data(data)
        # KILL of a proxy connection id is the session's to answer; the rest goes to the core.
        try:
            while isinstance(packet := reader.next_event(), Packet):
                if packet.sequence_id == 0 and packet.payload and self.session.answers(packet.payload):
                    continue
                core.queue(packet)
        except ProtocolViolation as exc:
            self._client_broke_protocol(exc)
            return
        self._run(core.forward())

    def _client_broke_protocol(self, exc: ProtocolViolation) -> None:
        """A packet too large is refused with MySQL's own error; any other violation ends the client."""
        if isinstance(exc, MessageTooLarge):
            error = limit_error(limits.MESSAGE_TOO_LARGE, str(exc), exc.sequence_id)
            self._run([CloseWithError(error, EndReason.MESSAGE_TOO_LARGE, str(exc))])
        else:
            self._run([Ended(EndReason.CLIENT_VIOLATION, str(exc))])

    def _on_server_data(self, data: bytes) -> None:
        if self.kept:
            # Nothing was asked: a server about to close says why. The connection is done.
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
        if self.kept:  # lost while the client was idle: it notices nothing
            self._take_back(reusable=False)
            return
        self._run([self.core.connection_lost()])

    # --- what the skeleton asks of the engine --------------------------------------------------
    def _take(self, server: ServerConnection) -> None:
        """Attach at once: the core brings the client's session with its first command."""
        assert isinstance(server, MySqlServerConnection) and server.server_state is not None
        self._attached(server)
        self._run(self.core.attached(server.server_state))

    def _fail(self, message: str, timeout: bool) -> None:
        self._run([self.core.no_connection(message, timeout)])

    def _take_back(self, reusable: bool = True) -> None:
        """As the skeleton's, but a connection holding the client's warnings is reset first."""
        server = self.server
        if server is not None and self.core.diagnostics_pending:
            server.dirty = True
        super()._take_back(reusable)

    def _leaving(self, terms: Release) -> None:
        server = self.server
        if server is not None and terms.needs_reset and self.core.rollback_suffices:
            server.rollback_only = True  # (the common case of autocommit off: no full reset)

    def _moved(self, successor: Pool) -> None:
        super()._moved(successor)
        self.core.leave_copies()  # (on the old pool's connections)

    async def _stop_abandoned(self, server: MySqlServerConnection) -> None:
        peer = self.session.peer
        log.info('pool "%s": client %s left mid-query; killing it on %r', server.pool, peer, server)
        try:
            async with asyncio.timeout(KILL_TIMEOUT):
                await server.kill_query()
        except Exception as exc:
            log.warning("could not kill the abandoned query on %r: %s", server, exc)
