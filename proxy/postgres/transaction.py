"""PostgreSQL transaction pooling: a client holds a server connection only while it needs one.

Theory of operation: client messages are read whole. The first message after an idle
point attaches a server connection from the pool (waiting up to borrow_timeout); the
client's reported settings are brought onto it with one ``set_config`` query if they
differ; then messages are forwarded. Server bytes are relayed as they come while a
``BackendTracker`` counts ReadyForQuery: when the server reports idle (``I``) and owes the
client nothing, the connection goes back to the pool, unreset (nothing session-scoped
happened on it) and usable by the next client at once.

Statements whose effect outlives the transaction (session SET, LISTEN, temporary tables,
session advisory locks, SQL PREPARE, DECLARE WITH HOLD, LOAD) and named prepared
statements *pin* the client to its connection until it leaves, like RDS Proxy; the
connection is then reset before reuse. Renaming prepared statements so that they move with
their client (instead of pinning) is the next step: see docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from protocols.errors import ProtocolViolation
from protocols.events import NeedData
from protocols.postgres.extended import Parse, Query
from protocols.postgres.framing import MessageReader
from protocols.postgres.messages import (
    FUNCTION_CALL,
    PARSE,
    QUERY,
    SQLSTATE_CANNOT_CONNECT,
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_TOO_MANY_CONNECTIONS,
    STATUS_IDLE,
    SYNC,
    TERMINATE,
    ErrorResponse,
    RawMessage,
)
from protocols.postgres.session_state import (
    REASON_ADVISORY_LOCK,
    REASON_DECLARE_WITH_HOLD,
    REASON_LISTEN,
    REASON_LOAD,
    REASON_PREPARE,
    REASON_SET,
    REASON_SET_CONFIG,
    REASON_SET_SESSION_CHARACTERISTICS,
    REASON_TEMPORARY_OBJECT,
    REASON_TEMPORARY_TABLE,
    session_state_pins,
)
from protocols.postgres.tracker import BackendTracker
from proxy.endpoint import CONTROL_BUFFER_LIMIT, Endpoint
from proxy.pool import BorrowTimeout, Pool, PoolError
from proxy.postgres.server import PgServerConnection
from proxy.postgres.settings import set_config_query

if TYPE_CHECKING:
    from proxy.postgres.client import PgClientSession

log = logging.getLogger(__name__)

# Reported settings a client may change at login and expects to keep on every connection.
SYNCED_PARAMETERS = frozenset(
    {
        "application_name",
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "standard_conforming_strings",
        "search_path",
    }
)
_EXTENDED = frozenset(b"PBEDC")
_SYNC_POINTS = frozenset({QUERY, SYNC, FUNCTION_CALL})
CLIENT_CLOSED = "client closed"
CLIENT_TERMINATED = "client terminated"
SERVER_CLOSED = "server closed"
CANCEL_ON_EXIT_TIMEOUT = 2.0
INSPECT_LIMIT = 128 * 1024
PIN_NAMED_STATEMENT = "named prepared statement"
PIN_TOO_LARGE = "statement too large to inspect"
PIN_KINDS = (
    REASON_SET_SESSION_CHARACTERISTICS,
    REASON_SET,
    REASON_SET_CONFIG,
    REASON_LISTEN,
    REASON_TEMPORARY_TABLE,
    REASON_TEMPORARY_OBJECT,
    REASON_ADVISORY_LOCK,
    REASON_PREPARE,
    REASON_DECLARE_WITH_HOLD,
    REASON_LOAD,
    PIN_NAMED_STATEMENT,
    PIN_TOO_LARGE,
)


class TransactionRelay:
    """Serves one logged-in client in transaction mode until it leaves."""

    def __init__(self, session: PgClientSession, pool: Pool, parameters: dict[str, str]) -> None:
        self.session = session
        self.client = session.endpoint
        self.pool = pool
        self.parameters = parameters  # what the client has been told, kept on every connection
        self.reader = MessageReader()
        self.server: PgServerConnection | None = None
        self.backend = BackendTracker()
        self.sync_points = 0
        self.unsynced = False
        self.pinned: str | None = None
        self._attaching: asyncio.Task[None] | None = None
        self._done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"TransactionRelay({self.session.peer}, server={self.server!r}, pinned={self.pinned!r})"

    async def run(self) -> None:
        self.client.start_relay(self._on_client_data)
        self.client.on_lost(lambda _: self._finish(CLIENT_CLOSED))
        try:
            reason = await self._done
        finally:
            self.client.stop_relay()
            if self._attaching is not None:
                self._attaching.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._attaching
        await self._leave(reason)

    def _finish(self, reason: str) -> None:
        if not self._done.done():
            self._done.set_result(reason)

    # --- client → server -------------------------------------------------------------------
    def _on_client_data(self, data: bytes) -> None:
        self.reader.receive_data(data)
        try:
            self._pump()
        except ProtocolViolation as exc:
            log.info("client %s broke the protocol: %s", self.session.peer, exc)
            self._finish("client protocol violation")

    def _pump(self) -> None:
        while not self._done.done():
            if self.server is None:
                if len(self.reader) and self._attaching is None:
                    self._attaching = asyncio.create_task(self._attach())
                if len(self.reader) > CONTROL_BUFFER_LIMIT:
                    self.client.pause_reading()  # resumed once attached
                return
            message = self.reader.next_message()
            if isinstance(message, NeedData):
                return
            self._forward(message)

    def _forward(self, message: RawMessage) -> None:
        kind = message.type
        if kind == TERMINATE:
            self._finish(CLIENT_TERMINATED)
            return
        if kind == QUERY:
            self._check_pins(Query.decode(message.payload).sql)
        elif kind == PARSE:
            parse = Parse.decode(message.payload)
            if parse.statement:
                self._pin(PIN_NAMED_STATEMENT)
            self._check_pins(parse.query)
        if kind in _SYNC_POINTS:
            self.sync_points += 1
            if kind == SYNC:
                self.unsynced = False
        elif kind[0] in _EXTENDED:
            self.unsynced = True
        assert self.server is not None
        self.server.endpoint.write(message.encode())

    def _check_pins(self, sql: str) -> None:
        if len(sql) > INSPECT_LIMIT:
            # Classifying megabytes of literals would stall every client on this loop.
            self._pin(PIN_TOO_LARGE)
            return
        for pin in session_state_pins(sql):
            self._pin(pin.reason)

    def _pin(self, reason: str) -> None:
        if self.pinned is None:
            self.pinned = reason
            # Counted by kind ("SET", not "SET my_setting"): client-chosen names stay out.
            kind = next((k for k in PIN_KINDS if reason == k or reason.startswith(k + " ")), reason)
            self.pool.pins_total[kind] = self.pool.pins_total.get(kind, 0) + 1
            log.info(
                'pool "%s": client %s pinned to %r (%s)',
                self.pool.name,
                self.session.peer,
                self.server,
                reason,
            )

    # --- attaching and detaching -------------------------------------------------------------
    async def _attach(self) -> None:
        try:
            server = await self.pool.borrow()
        except BorrowTimeout as exc:
            self._fail(SQLSTATE_TOO_MANY_CONNECTIONS, str(exc))
            return
        except PoolError as exc:
            self._fail(SQLSTATE_CANNOT_CONNECT, str(exc))
            return
        finally:
            self._attaching = None
        assert isinstance(server, PgServerConnection)
        try:
            differences = {
                name: value
                for name, value in self.parameters.items()
                if name in SYNCED_PARAMETERS and server.parameters.get(name) != value
            }
            if differences:
                errors = await server.run_queries(set_config_query(differences))
                if errors:
                    log.warning(
                        "could not bring settings %s onto %r: %s",
                        sorted(differences),
                        server,
                        errors[0].message,
                    )
        except Exception as exc:
            self.pool.release(server, reusable=False)
            self._fail(SQLSTATE_CONNECTION_FAILURE, f'pool "{self.pool.name}": {exc}')
            return
        if self._done.done():
            self.pool.release(server, reusable=True)
            return
        self.server = self.session.server = server
        self.backend = BackendTracker(server.parameters)
        self.sync_points = 0
        self.unsynced = False
        self.client.peer, server.endpoint.peer = server.endpoint, self.client
        server.endpoint.start_relay(self._on_server_data)
        server.endpoint.on_lost(self._on_server_lost)
        self.client.resume_reading()
        self._pump()

    def _fail(self, code: str, message: str) -> None:
        log.warning("client %s: %s", self.session.peer, message)
        self.client.write(ErrorResponse.build("FATAL", code, message).encode())
        self._finish("no server connection")

    def _at_safe_point(self) -> bool:
        backend = self.backend
        return (
            backend.at_boundary
            and not self.unsynced
            and backend.ready_count == self.sync_points
            and backend.transaction_status == STATUS_IDLE
        )

    def _detach(self) -> None:
        server = self.server
        assert server is not None
        self.server = self.session.server = None
        server.endpoint.remove_on_lost(self._on_server_lost)
        server.endpoint.stop_relay()
        self.client.peer = None
        server.parameters = dict(self.backend.parameters)
        server.transaction_status = self.backend.transaction_status
        self.parameters.update(
            {name: value for name, value in server.parameters.items() if name in SYNCED_PARAMETERS}
        )
        self.pool.release(server, reusable=True)

    # --- server → client -------------------------------------------------------------------
    def _on_server_data(self, data: bytes) -> None:
        self.client.write(data)
        try:
            self.backend.feed(data)
        except ProtocolViolation as exc:
            log.warning("upstream %r broke the protocol: %s", self.server, exc)
            self._finish("server protocol violation")
            return
        if self.pinned is None and self._at_safe_point():
            self._detach()
            if len(self.reader):
                self._pump()

    def _on_server_lost(self, _: Endpoint) -> None:
        if self.backend.at_boundary and not self.client.closed:
            self.client.write(
                ErrorResponse.build(
                    "FATAL",
                    SQLSTATE_CONNECTION_FAILURE,
                    f'pool "{self.pool.name}": the server connection was lost',
                ).encode()
            )
        self._finish(SERVER_CLOSED)

    # --- the client leaves -------------------------------------------------------------------
    async def _leave(self, reason: str) -> None:
        server = self.server
        if server is None:
            return
        self.server = self.session.server = None
        server.endpoint.remove_on_lost(self._on_server_lost)
        server.endpoint.stop_relay()
        self.client.peer = None
        server.transaction_status = self.backend.transaction_status
        server.parameters = dict(self.backend.parameters)
        if reason == SERVER_CLOSED or server.is_closed:
            self.pool.release(server, reusable=False)
            return
        safe = self.backend.at_boundary and not self.unsynced and self.backend.ready_count == self.sync_points
        if not safe:
            log.info(
                'pool "%s": client %s left mid-query; cancelling it on %r',
                self.pool.name,
                self.session.peer,
                server,
            )
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CANCEL_ON_EXIT_TIMEOUT):
                    await server.cancel_query()
            self.pool.release(server, reusable=False)
            return
        # A pinned connection holds session state: reset it. An unpinned one left mid-
        # transaction is rolled back by the same reset.
        server.dirty = self.pinned is not None or server.transaction_status != STATUS_IDLE
        self.pool.release(server, reusable=True)
