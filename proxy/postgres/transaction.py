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
import re
from typing import TYPE_CHECKING

from protocols.errors import ProtocolViolation
from protocols.events import NeedData
from protocols.postgres.extended import (
    CLOSE_COMPLETE_MESSAGE,
    PARSE_COMPLETE_MESSAGE,
    TARGET_STATEMENT,
    Bind,
    Close,
    Describe,
    Parse,
    Query,
    StatementNamer,
    with_statement_name,
)
from protocols.postgres.framing import MessageReader
from protocols.postgres.messages import (
    BIND,
    CLOSE,
    COMMAND_COMPLETE,
    DESCRIBE,
    EXECUTE,
    FUNCTION_CALL,
    PARAMETER_STATUS,
    PARSE,
    QUERY,
    READY_FOR_QUERY,
    SQLSTATE_CANNOT_CONNECT,
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_TOO_MANY_CONNECTIONS,
    STATUS_IDLE,
    SYNC,
    TERMINATE,
    ErrorResponse,
    RawMessage,
    ReadyForQuery,
    cstring,
    frame,
    read_cstring,
)
from protocols.postgres.responses import Handling, Request, ResponsePlan
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
from proxy.endpoint import CONTROL_BUFFER_LIMIT, Endpoint
from proxy.pool import BorrowTimeout, Pool, PoolError
from proxy.postgres.server import PgServerConnection
from proxy.postgres.settings import set_config_query
from proxy.relay import CLIENT_CLOSED, CLIENT_TERMINATED, SERVER_CLOSED

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
DEALLOCATE = re.compile(r'^\s*DEALLOCATE\s+(?:PREPARE\s+)?(ALL|"[^"]+"|[A-Za-z_][\w$]*)\s*;?\s*$', re.I)
DISCARD_ALL = re.compile(r"^\s*DISCARD\s+ALL\s*;?\s*$", re.I)
# Server-side statements kept per connection; the least recently used is closed beyond this.
PREPARED_PER_CONNECTION = 500
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
        self.server_reader = MessageReader()
        self.plan = ResponsePlan()
        self.status = STATUS_IDLE  # from the last ReadyForQuery the client got
        self.statements: dict[str, Parse] = {}  # the client's names → Parse under server-side names
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
                if self.reader.peek_type() == TERMINATE:
                    self._finish(CLIENT_TERMINATED)  # goodbye needs no server connection
                    return
                if len(self.reader) and self._attaching is None:
                    server = self.pool.borrow_now()
                    assert server is None or isinstance(server, PgServerConnection)
                    if server is not None and not self._differences(server):
                        self._attached(server)  # the common case: no task, no wait
                        continue
                    if server is not None:
                        self.pool.release(server, reusable=True)
                    self._attaching = asyncio.create_task(self._attach())
                if len(self.reader) > CONTROL_BUFFER_LIMIT:
                    self.client.pause_reading()  # resumed once attached
                return
            # One write per batch of client messages: each write to a TLS upstream costs a
            # record and a system call, and a query is five messages in the extended protocol.
            server = self.server
            batch: list[bytes] = []
            while not isinstance(message := self.reader.next_message(), NeedData):
                if not self._forward(message, batch) or self.server is not server:
                    break
            if batch:
                server.endpoint.write(b"".join(batch))
            if self.server is server or self._done.done():
                return

    def _forward(self, message: RawMessage, batch: list[bytes]) -> bool:
        """Queue what the server must get for this client message; False to stop reading."""
        kind = message.type
        server = self.server
        assert server is not None
        out: bytes = b""
        if kind == TERMINATE:
            self._finish(CLIENT_TERMINATED)
            return False
        if kind == QUERY:
            sql = Query.decode(message.payload).sql
            if self._deallocate(sql):
                return True
            self._check_pins(sql)
            self.plan.expect(Request.QUERY)
            out = message.encode()
        elif kind == FUNCTION_CALL:
            self.plan.expect(Request.QUERY)
            out = message.encode()
        elif kind == PARSE:
            out = self._parse(Parse.decode(message.payload))
        elif kind == BIND:
            bind = Bind.decode(message.payload)
            out = self._ensure_prepared(bind.statement)
            if bind.statement in self.statements:
                bind = with_statement_name(bind, self.statements[bind.statement].statement)
            self.plan.expect(Request.BIND)
            out += bind.encode()
        elif kind == DESCRIBE:
            describe = Describe.decode(message.payload)
            if describe.kind == TARGET_STATEMENT:
                out = self._ensure_prepared(describe.name)
                if describe.name in self.statements:
                    describe = with_statement_name(describe, self.statements[describe.name].statement)
                self.plan.expect(Request.DESCRIBE_STATEMENT)
            else:
                self.plan.expect(Request.DESCRIBE_PORTAL)
            out += describe.encode()
        elif kind == CLOSE:
            close = Close.decode(message.payload)
            if close.kind == TARGET_STATEMENT and close.name in self.statements:
                # Other clients may share the server-side statement: keep it, forget ours.
                del self.statements[close.name]
                self._to_client(self.plan.expect(Request.CLOSE, Handling.SYNTHETIC, CLOSE_COMPLETE_MESSAGE))
                return True
            self.plan.expect(Request.CLOSE)
            out = message.encode()
        elif kind == EXECUTE:
            self.plan.expect(Request.EXECUTE)
            out = message.encode()
        elif kind == SYNC:
            self.plan.expect(Request.SYNC)
            out = message.encode()
        else:  # Flush, CopyData, CopyDone, CopyFail: no answer of their own
            out = message.encode()
        if out:
            batch.append(out)
        return True

    def _parse(self, parse: Parse) -> bytes:
        self._check_pins(parse.query)
        if not parse.statement:  # the unnamed statement dies with the next Parse: no renaming
            self.plan.expect(Request.PARSE)
            return parse.encode()
        server_name = StatementNamer.server_name(parse.query, parse.parameter_types)
        renamed = with_statement_name(parse, server_name)
        self.statements[parse.statement] = renamed
        assert self.server is not None
        prepared = self.server.prepared
        if server_name in prepared:
            prepared.move_to_end(server_name)
            self._to_client(self.plan.expect(Request.PARSE, Handling.SYNTHETIC, PARSE_COMPLETE_MESSAGE))
            return b""
        prepared[server_name] = None
        self.plan.expect(Request.PARSE, statement=server_name)
        return self._evict() + renamed.encode()

    def _ensure_prepared(self, client_name: str) -> bytes:
        """Prepare the client's statement on this connection first if it lacks it."""
        parse = self.statements.get(client_name)
        assert self.server is not None
        if parse is None:
            return b""  # unknown to us: the server will say it does not exist, as it should
        prepared = self.server.prepared
        if parse.statement in prepared:
            prepared.move_to_end(parse.statement)
            return b""
        prepared[parse.statement] = None
        self.plan.expect(Request.PARSE, Handling.SWALLOW, statement=parse.statement)
        return self._evict() + parse.encode()

    def _evict(self) -> bytes:
        assert self.server is not None
        prepared = self.server.prepared
        out = []
        while len(prepared) > PREPARED_PER_CONNECTION:
            name, _ = prepared.popitem(last=False)
            self.plan.expect(Request.CLOSE, Handling.SWALLOW)
            out.append(Close(TARGET_STATEMENT, name).encode())
        return b"".join(out)

    def _deallocate(self, sql: str) -> bool:
        """Answer DEALLOCATE of the client's own statements here; True if handled."""
        if DISCARD_ALL.match(sql):
            self.statements.clear()
            assert self.server is not None
            self.server.prepared.clear()  # the server drops them all; then it runs as usual
            return False
        match = DEALLOCATE.match(sql)
        if match is None:
            return False
        target = match.group(1)
        if target.upper() == "ALL":
            self.statements.clear()
            tag = "DEALLOCATE ALL"
        else:
            name = target[1:-1] if target.startswith('"') else target.lower()
            if name not in self.statements:
                return False  # an SQL-level PREPARE (that pinned): the server knows it
            del self.statements[name]
            tag = "DEALLOCATE"
        answer = frame(COMMAND_COMPLETE, cstring(tag)) + ReadyForQuery(self.status).encode()
        self._to_client(self.plan.expect(Request.QUERY, Handling.SYNTHETIC, answer))
        return True

    def _to_client(self, data: bytes) -> None:
        if data:
            self.client.write(data)

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
            differences = self._differences(server)
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
        self._attached(server)
        self._pump()

    def _differences(self, server: PgServerConnection) -> dict[str, str]:
        """The client's settings this connection does not have right now."""
        return {
            name: value
            for name, value in self.parameters.items()
            if name in SYNCED_PARAMETERS and server.parameters.get(name) != value
        }

    def _attached(self, server: PgServerConnection) -> None:
        self.server = self.session.server = server
        self.server_reader = MessageReader()
        self.plan = ResponsePlan()
        self.client.peer, server.endpoint.peer = server.endpoint, self.client
        server.endpoint.start_relay(self._on_server_data)
        server.endpoint.on_lost(self._on_server_lost)
        self.client.resume_reading()

    def _fail(self, code: str, message: str) -> None:
        log.warning("client %s: %s", self.session.peer, message)
        self.client.write(ErrorResponse.build("FATAL", code, message).encode())
        self._finish("no server connection")

    def _owes_nothing(self) -> bool:
        """Every request answered and no half-received server message."""
        return not len(self.plan) and not len(self.server_reader)

    def _unhook(self) -> PgServerConnection:
        """Undo what attaching did; the connection is the caller's to give back."""
        server = self.server
        assert server is not None
        self.server = self.session.server = None
        server.endpoint.remove_on_lost(self._on_server_lost)
        server.endpoint.stop_relay()
        self.client.peer = None
        server.transaction_status = self.status
        return server

    def _detach(self) -> None:
        server = self._unhook()
        self.parameters.update(
            {name: value for name, value in server.parameters.items() if name in SYNCED_PARAMETERS}
        )
        self.pool.release(server, reusable=True)

    # --- server → client -------------------------------------------------------------------
    def _on_server_data(self, data: bytes) -> None:
        server = self.server
        assert server is not None
        self.server_reader.receive_data(data)
        out = []
        try:
            while not isinstance(message := self.server_reader.next_message(), NeedData):
                kind = message.type
                if kind == READY_FOR_QUERY:
                    self.status = message.payload
                elif kind == PARAMETER_STATUS:
                    name, offset = read_cstring(message.payload, 0)
                    server.parameters[name] = read_cstring(message.payload, offset)[0]
                out.append(self.plan.server_message(kind, message.encode()))
        except ProtocolViolation as exc:
            log.warning("upstream %r broke the protocol: %s", server, exc)
            self._finish("server protocol violation")
            return
        finally:
            if out:
                self.client.write(b"".join(out))
        for name in self.plan.unprepared:  # a Parse failed or was skipped: it is not there
            server.prepared.pop(name, None)
        self.plan.unprepared.clear()
        if self.pinned is None and self.status == STATUS_IDLE and self._owes_nothing():
            self._detach()
            if len(self.reader):
                self._pump()

    def _on_server_lost(self, _: Endpoint) -> None:
        if not len(self.server_reader) and not self.client.closed:
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
        if self.server is None:
            return
        server = self._unhook()
        if reason == SERVER_CLOSED or server.is_closed:
            self.pool.release(server, reusable=False)
            return
        if not self._owes_nothing():
            await server.cancel_abandoned(self.session.peer)
            self.pool.release(server, reusable=False)
            return
        # A pinned connection holds session state: reset it. An unpinned one left mid-
        # transaction is rolled back by the same reset.
        server.dirty = self.pinned is not None or server.transaction_status != STATUS_IDLE
        self.pool.release(server, reusable=True)
