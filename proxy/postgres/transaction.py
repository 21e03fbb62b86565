"""PostgreSQL transaction pooling: a client holds a server connection only while it needs one.

Theory of operation: client messages are read whole. The first message after an idle
point attaches a server connection from the pool (waiting up to borrow_timeout); the
client's reported settings are brought onto it with one ``set_config`` query if they
differ; then messages are forwarded as they came, in one write per batch. Server bytes go
through the connection's ``ResponsePlan``, which relays them as they come while it only has
to count ReadyForQuery, and matches message by message where the proxy answers or hides
something. When the server reports idle (``I``) and owes the client nothing, the
connection goes back to the pool, unreset (nothing session-scoped happened on it) and usable
by the next client at once. Attaching and detaching are ``ServerAttachment``'s job
(``proxy.postgres.attachment``).

Named prepared statements move with their client (``proxy.postgres.statements``).
Statements whose effect outlives the transaction *pin* the client to its connection until
it leaves (``proxy.postgres.pins``); the connection is then reset before reuse.

Shutdown and reload (``close_gracefully``) act at the detach point: a client that holds no
server connection is told FATAL 57P01 there, or, when a reload replaced its pool, moves to
the new pool and notices nothing. A pinned client is told once the server is idle (``I``)
and owes it nothing. A client already waiting for a connection is served first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from protocols.errors import ProtocolViolation
from protocols.events import NeedData
from protocols.postgres.extended import TARGET_STATEMENT, Query, parse_query, statement_field
from protocols.postgres.framing import FrameReader
from protocols.postgres.messages import (
    BIND,
    CLOSE,
    DESCRIBE,
    EXECUTE,
    FUNCTION_CALL,
    HEADER,
    PARSE,
    QUERY,
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT,
    STATUS_IDLE,
    SYNC,
    TERMINATE,
    ErrorResponse,
)
from protocols.postgres.responses import Request
from protocols.postgres.session_state import statement_pins
from proxy.config import format_seconds
from proxy.core.counters import ClientMeter
from proxy.core.endpoint import CONTROL_BUFFER_LIMIT, Endpoint
from proxy.core.relay import EndReason
from proxy.pool.pool import Pool
from proxy.postgres.attachment import ServerAttachment, TransactionSession
from proxy.postgres.pins import INSPECT_LIMIT, PIN_TOO_LARGE, pin_kind
from proxy.postgres.server import PgServerConnection
from proxy.postgres.statements import ClientStatements

log = logging.getLogger(__name__)


class TransactionRelay(ServerAttachment):
    """Serves one logged-in client in transaction mode until it leaves."""

    def __init__(
        self,
        session: TransactionSession,
        client: Endpoint,
        pool: Pool,
        meter: ClientMeter,
        parameters: dict[str, str],
    ) -> None:
        super().__init__(session, client, pool, meter, parameters)
        self.reader = FrameReader()
        self.statements = ClientStatements(self.plan, self._to_client)
        self._idle_timer: asyncio.TimerHandle | None = None  # armed while idle in a transaction

    def __repr__(self) -> str:
        return f"TransactionRelay({self.session.peer}, server={self.server!r}, pinned={self.pinned!r})"

    async def run(self, *, closing: bool = False) -> None:
        """Relay until the client leaves; ``closing``: it was asked to while logging in."""
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
            self._disarm_idle_timer()
            if self._attaching is not None:
                self._attaching.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._attaching
        await self._leave(reason)
        if reason is EndReason.GOODBYE:
            await self.session.say_goodbye_at_idle(pending=len(self.reader))

    # --- client → server -------------------------------------------------------------------
    def _on_client_data(self, data: bytes) -> None:
        if self._idle_timer is not None:
            self._disarm_idle_timer()
        self.metrics.bytes_in += len(data)
        self.reader.receive_data(data)
        self._pump()

    def _pump(self) -> None:
        try:
            self._forward_all()
        except ProtocolViolation as exc:
            log.info("client %s broke the protocol: %s", self.session.peer, exc)
            self._finish(EndReason.CLIENT_VIOLATION)

    def _forward_all(self) -> None:
        while not self._done.done():
            if self.server is None:
                if self.reader.peek_type() == TERMINATE:
                    self._finish(EndReason.CLIENT_TERMINATED)  # goodbye needs no server connection
                    return
                if len(self.reader) and self._attaching is None and self._start_attaching():
                    continue
                if len(self.reader) > CONTROL_BUFFER_LIMIT:
                    self.client.pause_reading()  # resumed once attached
                return
            server = self.server
            if self.kept:
                self._use_again(server)
            # One write per batch of client messages: each write to a TLS upstream costs a
            # record and a system call, and a query is five messages in the extended protocol.
            batch: list[bytes] = []
            while not isinstance(message := self.reader.next_event(), NeedData):
                if not self._forward(message, server, batch):
                    break
            if batch:
                server.endpoint.write(b"".join(batch))
            elif not self._done.done():
                self._detach_if_idle()  # everything was answered here (DEALLOCATE, Close)
            return

    def _forward(self, message: bytes, server: PgServerConnection, batch: list[bytes]) -> bool:
        """Queue what the server must get for this client message; False to stop reading.

        Messages pass as they came unless a statement name must change (see ``ClientStatements``).
        """
        kind = message[:1]
        plan = self.plan
        if kind == QUERY:
            sql = Query.decode(message[HEADER.size :]).sql
            if self.statements.deallocate(sql, server.prepared):
                return True
            self._check_pins(sql)
            plan.send(Request.QUERY)
        elif kind == PARSE:
            name, _, end = statement_field(message)
            self._check_pins(parse_query(message, end))
            if name:
                message = self.statements.parse(message, name, server.prepared)
            else:  # the unnamed statement dies with the next Parse: no renaming
                plan.send(Request.PARSE)
        elif kind == BIND:
            name, start, end = statement_field(message)
            if name:
                message = self.statements.renamed(message, name, start, end, server.prepared, batch)
            plan.send(Request.BIND)
        elif kind == EXECUTE:
            plan.send(Request.EXECUTE)
        elif kind == SYNC:
            plan.send(Request.SYNC)
        elif kind == DESCRIBE:
            name, start, end = statement_field(message)
            if message[HEADER.size : HEADER.size + 1] == TARGET_STATEMENT:
                if name:
                    message = self.statements.renamed(message, name, start, end, server.prepared, batch)
                plan.send(Request.DESCRIBE_STATEMENT)
            else:
                plan.send(Request.DESCRIBE_PORTAL)
        elif kind == CLOSE:
            name, _, _ = statement_field(message)
            if message[HEADER.size : HEADER.size + 1] == TARGET_STATEMENT and self.statements.close(name):
                return True
            plan.send(Request.CLOSE)
        elif kind == FUNCTION_CALL:
            plan.send(Request.QUERY)
        elif kind == TERMINATE:
            self._finish(EndReason.CLIENT_TERMINATED)
            return False
        # Flush, CopyData, CopyDone, CopyFail: no answer of their own
        if message:
            batch.append(message)
        return True

    def _to_client(self, data: bytes) -> None:
        if data:
            self.metrics.bytes_out += len(data)
            self.client.write(data)

    def _check_pins(self, sql: str) -> None:
        if len(sql) > INSPECT_LIMIT:
            # Classifying megabytes of literals would stall every client on this loop.
            self._pin(PIN_TOO_LARGE)
            return
        for pin in statement_pins(sql):
            self._pin(pin.reason)

    def _pin(self, reason: str) -> None:
        if self.pinned is None:
            self.pinned = reason
            self.meter.pinned = True
            kind = pin_kind(reason)
            self.pool.pins_total[kind] = self.pool.pins_total.get(kind, 0) + 1
            log.info(
                'pool "%s": client %s pinned to %r (%s)',
                self.pool.name,
                self.session.peer,
                self.server,
                reason,
            )

    # --- server → client -------------------------------------------------------------------
    def _on_server_data(self, data: bytes) -> None:
        if self.kept:
            # Nothing was asked: a server about to close says why (FATAL). Not the client's
            # business; the connection is done.
            log.info("upstream %r spoke while idle; closing it", self.server)
            self._take_back(reusable=False)
            return
        plan = self.plan
        ready, idle = plan.ready_count, plan.idle_count
        try:
            out = plan.receive_data(data)
        except ProtocolViolation as exc:
            log.warning("upstream %r broke the protocol: %s", self.server, exc)
            self._finish(EndReason.SERVER_VIOLATION)
            return
        self._to_client(out)
        if plan.ready_count != ready:
            self.metrics.queries += plan.ready_count - ready
            self.metrics.transactions += plan.idle_count - idle
            self.meter.in_transaction = plan.status != STATUS_IDLE
        if self.plan.unprepared:  # a Parse failed or was skipped: it is not there
            assert self.server is not None
            for name in self.plan.unprepared:
                self.server.prepared.pop(name, None)
            self.plan.unprepared.clear()
        if self._detach_if_idle():
            if len(self.reader):
                self._pump()
        elif self._idle_timer is None and self.plan.status != STATUS_IDLE and self.plan.at_rest:
            timeout = self.pool.config.idle_transaction_timeout
            if timeout:
                self._idle_timer = asyncio.get_running_loop().call_later(timeout, self._idle_too_long)

    def _idle_too_long(self) -> None:
        self._idle_timer = None
        timeout = format_seconds(self.pool.config.idle_transaction_timeout)
        log.warning(
            'pool "%s": client %s idle in a transaction for %s: disconnected',
            self.pool.name,
            self.session.peer,
            timeout,
        )
        message = f'pool "{self.pool.name}": terminating connection: idle in a transaction for {timeout}'
        self.client.write(
            ErrorResponse.build("FATAL", SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT, message).encode()
        )
        self._finish(EndReason.IDLE_IN_TRANSACTION)

    def _disarm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_server_lost(self, _: Endpoint) -> None:
        if self.kept:  # lost while the client was idle: it notices nothing
            self._take_back(reusable=False)
            return
        if not self.plan.mid_message and not self.client.closed:
            self.client.write(
                ErrorResponse.build(
                    "FATAL",
                    SQLSTATE_CONNECTION_FAILURE,
                    f'pool "{self.pool.name}": the server connection was lost',
                ).encode()
            )
        self._finish(EndReason.SERVER_CLOSED)
