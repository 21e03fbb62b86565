"""PostgreSQL transaction pooling: a client holds a server connection only while it needs one.

Theory of operation: client messages are read whole. The first message after an idle
point attaches a server connection from the pool (waiting up to borrow_timeout); the
client's reported settings are brought onto it with one ``set_config`` query if they
differ; then messages are forwarded as they came, in one write per batch. Server bytes go
through the connection's ``ResponsePlan``, which relays them as they come while it only has
to count ReadyForQuery, and matches message by message where the proxy answers or hides
something. When the server reports idle (``I``) and owes the client nothing, the
connection goes back to the pool, unreset (nothing session-scoped happened on it) and usable
by the next client at once.

Named prepared statements move with their client: a client's Parse is sent under a
server-side name derived from the query and parameter types (shared by every client that
prepares the same statement), and a Bind or Describe naming a statement the connection lacks
is preceded by a Parse whose answer is hidden. Statements whose effect outlives the
transaction (session SET, LISTEN, temporary tables, session advisory locks, SQL PREPARE,
DECLARE WITH HOLD, LOAD) *pin* the client to its connection until it leaves, like RDS
Proxy; the connection is then reset before reuse.

Shutdown and reload (``close_gracefully``) act at the detach point: a client that holds no
server connection is told FATAL 57P01 there, or, when a reload replaced its pool, moves to
the new pool and notices nothing. A pinned client is told once the server is idle (``I``)
and owes it nothing. A client already waiting for a connection is served first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any, Protocol

from protocols.errors import ProtocolViolation
from protocols.events import NeedData
from protocols.postgres.extended import (
    CLOSE_COMPLETE_MESSAGE,
    PARSE_COMPLETE_MESSAGE,
    TARGET_STATEMENT,
    Close,
    Parse,
    Query,
    StatementNamer,
    parse_query,
    statement_field,
    with_name,
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
    HEADER,
    PARSE,
    QUERY,
    SQLSTATE_CANNOT_CONNECT,
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT,
    SQLSTATE_TOO_MANY_CONNECTIONS,
    STATUS_IDLE,
    SYNC,
    TERMINATE,
    ErrorResponse,
    ReadyForQuery,
    cstring,
    frame,
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
    statement_pins,
)
from proxy.config import format_seconds
from proxy.core.counters import ClientMeter
from proxy.core.endpoint import CONTROL_BUFFER_LIMIT, Endpoint
from proxy.core.errors import BorrowTimeout, PoolError
from proxy.core.relay import CLIENT_CLOSED, CLIENT_TERMINATED, GOODBYE, SERVER_CLOSED
from proxy.core.server import ServerConnection
from proxy.engine import SessionHost
from proxy.pool.pool import Pool
from proxy.postgres.server import PgServerConnection
from proxy.postgres.settings import set_config_query


class TransactionSession(Protocol):
    """What transaction mode needs of the client session it serves (``PgClientSession``)."""

    endpoint: Endpoint
    peer: str
    meter: ClientMeter | None
    closing: str | None  # why the session was asked to end at its next idle point
    server: PgServerConnection | None  # what a CancelRequest from this client reaches
    pool: Pool | None
    listener: SessionHost

    async def say_goodbye_at_idle(self, pending: int = 0) -> None: ...

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

    def __init__(self, session: TransactionSession, pool: Pool, parameters: dict[str, str]) -> None:
        self.session = session
        self.client = session.endpoint
        self.pool = pool
        # What the client has been told of the settings that travel with it.
        self.parameters = {name: value for name, value in parameters.items() if name in SYNCED_PARAMETERS}
        self.reader = MessageReader()
        self.server: PgServerConnection | None = None
        self.plan = ResponsePlan()  # of the attached connection; its status is the client's
        self.metrics = pool.metrics
        assert session.meter is not None
        self.meter = session.meter
        self.statements: dict[str, Parse] = {}  # the client's names → Parse under server-side names
        self.pinned: str | None = None
        # Idle, but still attached: the pool let us keep the connection (see Pool.keep).
        self.kept = False
        # Getting a connection: a place in the pool's queue, or a task borrowing one.
        self._attaching: asyncio.Future[Any] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None  # armed while idle in a transaction
        self._done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.closing = False  # shutdown or reload: leave the pool at the next detach point

    def __repr__(self) -> str:
        return f"TransactionRelay({self.session.peer}, server={self.server!r}, pinned={self.pinned!r})"

    async def run(self) -> None:
        self.client.start_relay(self._on_client_data)
        self.client.on_lost(lambda _: self._finish(CLIENT_CLOSED))
        if self.session.closing is not None:
            self.close_gracefully()  # asked while logging in
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
        if reason == GOODBYE:
            await self.session.say_goodbye_at_idle(pending=len(self.reader))

    def _finish(self, reason: str) -> None:
        if not self._done.done():
            self._done.set_result(reason)

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
            self._finish("client protocol violation")

    def _forward_all(self) -> None:
        while not self._done.done():
            if self.server is None:
                if self.reader.peek_type() == TERMINATE:
                    self._finish(CLIENT_TERMINATED)  # goodbye needs no server connection
                    return
                if len(self.reader) and self._attaching is None and self._start_attaching():
                    continue
                if len(self.reader) > CONTROL_BUFFER_LIMIT:
                    self.client.pause_reading()  # resumed once attached
                return
            server = self.server
            if self.kept:
                self._reuse_kept(server)
            # One write per batch of client messages: each write to a TLS upstream costs a
            # record and a system call, and a query is five messages in the extended protocol.
            batch: list[bytes] = []
            while not isinstance(message := self.reader.next_frame(), NeedData):
                if not self._forward(message, batch):
                    break
            if batch:
                server.endpoint.write(b"".join(batch))
            elif not self._done.done():
                self._detach_if_idle()  # everything was answered here (DEALLOCATE, Close)
            return

    def _forward(self, message: bytes, batch: list[bytes]) -> bool:
        """Queue what the server must get for this client message; False to stop reading.

        Messages pass as they came unless a statement name must change (see ``_renamed``).
        """
        kind = message[:1]
        plan = self.plan
        if kind == QUERY:
            sql = Query.decode(message[HEADER.size :]).sql
            if self._deallocate(sql):
                return True
            self._check_pins(sql)
            plan.expect(Request.QUERY)
        elif kind == PARSE:
            message = self._parse(message)
        elif kind == BIND:
            name, start, end = statement_field(message)
            if name:
                message = self._renamed(message, name, start, end, batch)
            plan.expect(Request.BIND)
        elif kind == EXECUTE:
            plan.expect(Request.EXECUTE)
        elif kind == SYNC:
            plan.expect(Request.SYNC)
        elif kind == DESCRIBE:
            name, start, end = statement_field(message)
            if message[HEADER.size : HEADER.size + 1] == TARGET_STATEMENT:
                if name:
                    message = self._renamed(message, name, start, end, batch)
                plan.expect(Request.DESCRIBE_STATEMENT)
            else:
                plan.expect(Request.DESCRIBE_PORTAL)
        elif kind == CLOSE:
            name, _, _ = statement_field(message)
            if message[HEADER.size : HEADER.size + 1] == TARGET_STATEMENT and name in self.statements:
                # Other clients may share the server-side statement: keep it, forget ours.
                del self.statements[name]
                self._to_client(plan.expect(Request.CLOSE, Handling.SYNTHETIC, CLOSE_COMPLETE_MESSAGE))
                return True
            plan.expect(Request.CLOSE)
        elif kind == FUNCTION_CALL:
            plan.expect(Request.QUERY)
        elif kind == TERMINATE:
            self._finish(CLIENT_TERMINATED)
            return False
        # Flush, CopyData, CopyDone, CopyFail: no answer of their own
        if message:
            batch.append(message)
        return True

    def _renamed(self, message: bytes, name: str, start: int, end: int, batch: list[bytes]) -> bytes:
        """``message`` naming the client's statement by its server-side name, prepared here first
        if this connection lacks it. A name we do not know passes: the server says it does not
        exist, as it should."""
        parse = self.statements.get(name)
        if parse is None:
            return message
        assert self.server is not None
        prepared = self.server.prepared
        if parse.statement in prepared:
            prepared.move_to_end(parse.statement)
        else:
            prepared[parse.statement] = None
            self.plan.expect(Request.PARSE, Handling.SWALLOW, statement=parse.statement)
            batch.append(self._evict() + parse.encode())
        return with_name(message, start, end, parse.statement)

    def _parse(self, message: bytes) -> bytes:
        """What the server gets for a Parse: the same, renamed, or nothing (it has it already)."""
        name, _, end = statement_field(message)
        self._check_pins(parse_query(message, end))
        if not name:  # the unnamed statement dies with the next Parse: no renaming
            self.plan.expect(Request.PARSE)
            return message
        parse = Parse.decode(message[HEADER.size :])
        server_name = StatementNamer.server_name(parse.query, parse.parameter_types)
        renamed = with_statement_name(parse, server_name)
        self.statements[name] = renamed
        assert self.server is not None
        prepared = self.server.prepared
        if server_name in prepared:
            prepared.move_to_end(server_name)
            self._to_client(self.plan.expect(Request.PARSE, Handling.SYNTHETIC, PARSE_COMPLETE_MESSAGE))
            return b""
        prepared[server_name] = None
        self.plan.expect(Request.PARSE, statement=server_name)
        return self._evict() + renamed.encode()

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
        answer = frame(COMMAND_COMPLETE, cstring(tag)) + ReadyForQuery(self.plan.status).encode()
        self._to_client(self.plan.expect(Request.QUERY, Handling.SYNTHETIC, answer))
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
    def _start_attaching(self) -> bool:
        """Attach a connection; True if done at once (an idle one with our settings).

        Otherwise queue for the next one released (a full pool) or borrow it in a task.
        """
        server = self.pool.borrow_now()
        if server is not None:
            return self._take(server)  # the common case: no task, no wait
        self._attaching = self.pool.queue_for_release(self._handed)
        if self._attaching is None:
            self._attaching = asyncio.create_task(self._attach())
        return False

    def _take(self, server: ServerConnection) -> bool:
        """A connection borrowed for us: attach it now if it has our settings (True), else
        bring them onto it first, in a task."""
        assert isinstance(server, PgServerConnection)
        if self._differences(server):
            self._attaching = asyncio.create_task(self._attach(server))
            return False
        self._attached(server)
        return True

    def _handed(self, waiter: asyncio.Future[Any]) -> None:
        """The pool answered our place in its queue."""
        self._attaching = None
        if waiter.cancelled():  # the client left
            return
        if (exc := waiter.exception()) is not None:
            if not self._done.done():
                timeout = isinstance(exc, BorrowTimeout)
                self._fail(SQLSTATE_TOO_MANY_CONNECTIONS if timeout else SQLSTATE_CANNOT_CONNECT, str(exc))
            return
        server = waiter.result()
        if server is None:  # a slot freed up: open a connection the slow way
            if not self._done.done():
                self._attaching = asyncio.create_task(self._attach())
        elif self._done.done():
            self.pool.release(server, reusable=True)
        elif self._take(server):
            self._pump()

    async def _attach(self, server: PgServerConnection | None = None) -> None:
        """Borrow a connection (unless handed ``server``), bring our settings onto it, attach."""
        try:
            if server is None:
                try:
                    borrowed = await self.pool.borrow()
                except BorrowTimeout as exc:
                    self._fail(SQLSTATE_TOO_MANY_CONNECTIONS, str(exc))
                    return
                except PoolError as exc:
                    self._fail(SQLSTATE_CANNOT_CONNECT, str(exc))
                    return
                assert isinstance(borrowed, PgServerConnection)
                server = borrowed
            try:
                await self._bring_settings(server)
            except BaseException as exc:
                self.pool.release(server, reusable=False)  # its session is in an unknown state
                if not isinstance(exc, Exception):
                    raise
                self._fail(SQLSTATE_CONNECTION_FAILURE, f'pool "{self.pool.name}": {exc}')
                return
        finally:
            self._attaching = None
        if self._done.done():
            self.pool.release(server, reusable=True)
            return
        self._attached(server)
        self._pump()

    async def _bring_settings(self, server: PgServerConnection) -> None:
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

    def _differences(self, server: PgServerConnection) -> dict[str, str]:
        """The client's settings this connection does not have right now."""
        return {
            name: value for name, value in self.parameters.items() if server.parameters.get(name) != value
        }

    def _attached(self, server: PgServerConnection) -> None:
        self.server = self.session.server = server
        self.plan.follow(server.parameters)
        self.client.peer, server.endpoint.peer = server.endpoint, self.client
        server.endpoint.start_relay(self._on_server_data)
        server.endpoint.on_lost(self._on_server_lost)
        self.client.resume_reading()

    def _fail(self, code: str, message: str) -> None:
        log.warning("client %s: %s", self.session.peer, message)
        self.client.write(ErrorResponse.build("FATAL", code, message).encode())
        self._finish("no server connection")

    def _unhook(self) -> PgServerConnection:
        """Undo what attaching did; the connection is the caller's to give back."""
        server = self.server
        assert server is not None
        self.server = self.session.server = None
        self.kept = False
        server.endpoint.remove_on_lost(self._on_server_lost)
        server.endpoint.stop_relay()
        self.client.peer = None
        server.transaction_status = self.plan.status
        return server

    def _detach_if_idle(self) -> bool:
        """Give the connection back when the client is idle, unpinned and owed nothing."""
        if self.plan.status != STATUS_IDLE or not self.plan.at_rest:
            return False
        if self.pinned is not None:
            if self.closing:
                self._finish(GOODBYE)  # its session state cannot move: it ends here
            return False
        if self.plan.parameters_changed:  # the client was told: the new value travels with it
            self.parameters.update(
                {name: value for name, value in self.plan.parameters.items() if name in SYNCED_PARAMETERS}
            )
        server = self.server
        assert server is not None
        if not self.closing and self.pool.keep(server, self._give_back):
            # Nobody waits: stay attached, and save the release and borrow a busy client would
            # otherwise pay per transaction. The pool takes it back the moment it needs it.
            self.kept = True
            self.session.server = None  # a late cancel must not reach whoever gets it next
            return True
        self.pool.release(self._unhook(), reusable=True)
        if self.closing:
            self._leave_pool()
        return True

    def _reuse_kept(self, server: PgServerConnection) -> None:
        self.kept = False
        self.pool.unkeep(server)
        self.session.server = server

    def _give_back(self, reusable: bool = True) -> None:
        """Return the connection this idle client kept: the pool needs it, or it failed."""
        self.pool.release(self._unhook(), reusable=reusable)

    # --- shutdown and reload -----------------------------------------------------------------
    def close_gracefully(self) -> None:
        """Leave the pool at the next detach point (the session says why in ``closing``).

        A client waiting for a connection (``_attaching``) already sent its request: it is
        served, and leaves when that is answered.
        """
        self.closing = True
        if self._done.done():
            return
        if self.kept:
            self._give_back()
        if self.server is None:
            if self._attaching is None:
                self._leave_pool()
        elif self.pinned is not None and self.plan.status == STATUS_IDLE and self.plan.at_rest:
            self._finish(GOODBYE)

    def _leave_pool(self) -> None:
        """Detached, while closing: move to the pool that replaced ours, or say goodbye."""
        successor = self.pool.live_successor()
        if (
            successor is None
            or successor.config.mode != "transaction"
            or successor.config.listen != self.pool.config.listen
        ):
            self._finish(GOODBYE)  # said by run(), after the connection is back
            return
        # Nothing of the client lives on a server connection: its settings and statements
        # travel with it, so the next transaction simply runs on the new pool.
        log.debug('pool "%s": client %s moves to the reloaded pool', self.pool.name, self.session.peer)
        self.pool = self.session.pool = successor
        self.metrics = successor.metrics  # the same object: a reload hands it on (see Proxy.reload)
        self.closing = False
        self.session.closing = None
        self.session.listener.session_changed()

    # --- server → client -------------------------------------------------------------------
    def _on_server_data(self, data: bytes) -> None:
        if self.kept:
            # Nothing was asked: a server about to close says why (FATAL). Not the client's
            # business; the connection is done.
            log.info("upstream %r spoke while idle; closing it", self.server)
            self._give_back(reusable=False)
            return
        plan = self.plan
        ready, idle = plan.ready_count, plan.idle_count
        try:
            out = plan.feed(data)
        except ProtocolViolation as exc:
            log.warning("upstream %r broke the protocol: %s", self.server, exc)
            self._finish("server protocol violation")
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
        self._finish("idle in transaction")

    def _disarm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_server_lost(self, _: Endpoint) -> None:
        if self.kept:  # lost while the client was idle: it notices nothing
            self._give_back(reusable=False)
            return
        if not self.plan.mid_message and not self.client.closed:
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
        if not self.plan.at_rest:
            await server.cancel_abandoned(self.session.peer)
            self.pool.release(server, reusable=False)
            return
        # A pinned connection holds session state: reset it. An unpinned one left mid-
        # transaction is rolled back by the same reset.
        server.dirty = self.pinned is not None or server.transaction_status != STATUS_IDLE
        self.pool.release(server, reusable=True)
