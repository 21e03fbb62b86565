"""The sans-IO core of PostgreSQL transaction pooling: one client's message stream, its
named statements, its pins and the plan of the answers it is owed.

Theory of operation: the driver (``proxy.postgres.transaction``) feeds the core events and
carries out the commands it returns, in order. Events: ``receive_client(data)`` and
``receive_server(data)``; ``attached(connection)`` (a server connection, described by its
``ServerState``, was borrowed for the client) and ``settings_brought(connection)``;
``detached()`` (the driver gave the connection back), ``connection_lost()``,
``idle_timer_fired(...)``, ``release_terms()`` (the client is gone: on what terms its
connection goes back) and ``stop()`` (the driver ended the client for its own reasons).

Client messages are read whole. Without a connection the core asks for one
(``NeedConnection``); a borrowed connection lacking the client's reported settings is
first given them (``BringSettings``, one ``set_config`` round trip run by the driver).
Attached, messages pass as they came (``SendToServer``, one per batch), except where a
named statement must be renamed, prepared first or answered here (``ClientStatements``).
Server bytes go through the ``ResponsePlan`` (``SendToClient``). When the server is idle
(``I``) and owed nothing, the core says ``MayDetach``: clean unless the client is pinned
(``Pinned``, said once), when only its leaving frees the connection. Idle inside a
transaction with nothing owed it says ``ArmIdleTimer``; the client's next byte,
``DisarmIdleTimer``. ``Ended`` and ``CloseWithError`` (an ErrorResponse to send first) end
the client.

Written for mypyc: native classes, ``Final`` constants, byte-indexed dispatch, commands that
say nothing new built once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocols.endings import EndReason
from protocols.errors import MessageTooLarge, ProtocolViolation
from protocols.events import NeedData
from protocols.pooling import (
    ARM_IDLE_TIMER,
    CLIENT_TERMINATED,
    DISARM_IDLE_TIMER,
    MAY_DETACH,
    MAY_DETACH_PINNED,
    NEED_CONNECTION,
    ArmIdleTimer,
    CloseWithError,
    DisarmIdleTimer,
    Ended,
    MayDetach,
    NeedConnection,
    Pinned,
    Release,
    SendToClient,
    SendToServer,
)
from protocols.postgres.extended import FLUSH_MESSAGE, TARGET_STATEMENT, Query, parse_query, statement_field
from protocols.postgres.framing import FrameReader
from protocols.postgres.messages import (
    BIND,
    CLOSE,
    COPY_DONE,
    COPY_FAIL,
    DEFAULT_MAX_MESSAGE_SIZE,
    DESCRIBE,
    EXECUTE,
    FUNCTION_CALL,
    HEADER,
    PARSE,
    QUERY,
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT,
    SQLSTATE_PROTOCOL_VIOLATION,
    STATUS_IDLE,
    SYNC,
    TERMINATE,
    ErrorResponse,
)
from protocols.postgres.pins import INSPECT_LIMIT, PIN_TOO_LARGE, pin_kind
from protocols.postgres.responses import Request, ResponsePlan
from protocols.postgres.server_state import ServerState
from protocols.postgres.session_state import statement_pins
from protocols.postgres.statements import UNNAMED_END_TOKEN, ClientStatements, might_clear

# Reported settings a client may change at login and expects to keep on every connection.
SYNCED_PARAMETERS: Final = frozenset(
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

# Client message types, as the ints ``message[0]`` gives.
_QUERY: Final = QUERY[0]
_PARSE: Final = PARSE[0]
_BIND: Final = BIND[0]
_EXECUTE: Final = EXECUTE[0]
_SYNC: Final = SYNC[0]
_DESCRIBE: Final = DESCRIBE[0]
_CLOSE: Final = CLOSE[0]
_FUNCTION_CALL: Final = FUNCTION_CALL[0]
_TERMINATE: Final = TERMINATE[0]
_COPY_DONE: Final = COPY_DONE[0]
_COPY_FAIL: Final = COPY_FAIL[0]
_TARGET_STATEMENT: Final = TARGET_STATEMENT[0]
_HEADER_SIZE: Final = HEADER.size


# --- commands (the engine-agnostic ones are protocols.pooling's) -----------------------------


@dataclass(frozen=True, slots=True)
class BringSettings:
    """The borrowed connection lacks these client settings: set them, then ``settings_brought``."""

    settings: dict[str, str]


Command = (
    SendToServer
    | SendToClient
    | NeedConnection
    | BringSettings
    | MayDetach
    | Pinned
    | Ended
    | CloseWithError
    | ArmIdleTimer
    | DisarmIdleTimer
)


class PooledClient:
    """One transaction-mode client, from its login to its leaving, whichever connections
    serve it. ``parameters`` are the settings it reported at login; ``pool_name`` names the
    pool in the errors it is sent (the driver updates it when the client moves)."""

    def __init__(
        self, parameters: dict[str, str], pool_name: str, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ) -> None:
        self.reader = FrameReader(max_message_size, frontend=True)
        self.reader.limit_name = "max_client_message_size"
        self.plan = ResponsePlan()  # of the attached connection; its status is the client's
        self.statements = ClientStatements(self.plan)
        # What the client has been told of the settings that travel with it.
        self.parameters = {name: value for name, value in parameters.items() if name in SYNCED_PARAMETERS}
        self.pool_name = pool_name
        self.connection: ServerState | None = None
        self.pinned: str | None = None  # why the client may not leave its connection
        self._held: bytes | None = None  # a message waiting for the answers it depends on
        self._timer_armed = False
        self._ended = False

    @property
    def pending(self) -> int:
        """Bytes the client sent that are not forwarded yet."""
        held = self._held
        return len(self.reader) + (0 if held is None else len(held))

    @property
    def at_idle_point(self) -> bool:
        """The server is idle and owes the client nothing."""
        plan = self.plan
        return plan.status == STATUS_IDLE and plan.at_rest

    # --- events ---------------------------------------------------------------------------------
    def receive_client(self, data: bytes) -> list[Command]:
        """Client bytes in."""
        self.reader.receive_data(data)
        if self._timer_armed:
            self._timer_armed = False
            commands: list[Command] = [DISARM_IDLE_TIMER]
            commands.extend(self.forward())
            return commands
        return self.forward()

    def forward(self) -> list[Command]:
        """Forward what the client sent and is not forwarded yet (after a detach, say)."""
        if self._ended:
            return []
        connection = self.connection
        reader = self.reader
        if connection is None:
            if self._held is None and reader.peek_type() == TERMINATE:
                self._ended = True  # the goodbye needs no server connection
                return [CLIENT_TERMINATED]
            # Only a whole message asks for a connection: a client that stops halfway through
            # one holds none while it stalls (and is closed after client_stall_timeout).
            try:
                whole = self._held is not None or reader.has_message
            except ProtocolViolation as exc:
                return [self._violation(exc)]
            return [NEED_CONNECTION] if whole else []
        commands: list[Command] = []
        # One write per batch of client messages: each write to a TLS upstream costs a
        # record and a system call, and a query is five messages in the extended protocol.
        batch: list[bytes] = []
        # Copies nobody needs go first with the next work, and only with work: sent before a
        # Terminate, they would be owed answers that never come.
        closes_due = bool(connection.to_close)
        terminated = False
        plan = self.plan
        try:
            while True:
                held = self._held
                if held is None:
                    event = reader.next_event()
                    if isinstance(event, NeedData):
                        break
                    message = event
                else:
                    message = held
                    self._held = None
                if message[0] == _TERMINATE:
                    terminated = True
                    break
                if closes_due:
                    self.statements.flush_closes(connection, batch)
                    closes_due = False
                if not self._forward(message, connection, batch, commands):
                    self._held = message  # until the answers it depends on are in
                    batch.append(FLUSH_MESSAGE)
                    break
                if plan.outcomes:  # (requests the skipping server will not answer)
                    self._settle()
        except ProtocolViolation as exc:
            commands.append(self._violation(exc))
            return commands
        if batch:
            commands.append(SendToServer(b"".join(batch)))
        if terminated:
            self._ended = True
            commands.append(CLIENT_TERMINATED)
        return commands

    @property
    def incomplete(self) -> bool:
        """Part of a client message is here and the rest is not."""
        return len(self.reader) > 0 and not self.reader.has_message

    def _violation(self, exc: ProtocolViolation) -> Command:
        self._ended = True
        if isinstance(exc, MessageTooLarge):
            error = ErrorResponse.build(
                "FATAL", SQLSTATE_PROTOCOL_VIOLATION, f"invalid message length: {exc}"
            )
            return CloseWithError(error.encode(), EndReason.MESSAGE_TOO_LARGE, str(exc))
        error = ErrorResponse.build(
            "FATAL", SQLSTATE_PROTOCOL_VIOLATION, f"invalid message from client: {exc}"
        )
        return CloseWithError(error.encode(), EndReason.CLIENT_VIOLATION, str(exc))

    def receive_server(self, data: bytes) -> list[Command]:
        """Server bytes in (from the attached connection)."""
        plan = self.plan
        try:
            out = plan.receive_data(data)
        except ProtocolViolation as exc:
            self._ended = True
            return [Ended(EndReason.SERVER_VIOLATION, str(exc))]
        commands: list[Command] = [SendToClient(out)] if out else []
        if plan.outcomes:
            self._settle()
            if self._held is not None:
                commands.extend(self.forward())
        if (
            not self._idle_point(commands)
            and not self._timer_armed
            and plan.status != STATUS_IDLE
            and plan.at_rest
        ):
            self._timer_armed = True
            commands.append(ARM_IDLE_TIMER)
        return commands

    def attached(self, connection: ServerState) -> list[Command]:
        """A connection was borrowed for the client: attach it, unless it lacks the client's
        settings (then ``BringSettings``, and ``settings_brought`` once they are on it)."""
        differences = connection.differences(self.parameters)
        if differences:
            return [BringSettings(differences)]
        return self.settings_brought(connection)

    def settings_brought(self, connection: ServerState) -> list[Command]:
        """Attach ``connection`` (the client's settings were set on it) and forward."""
        self.connection = connection
        self.plan.follow(connection.parameters)
        self.statements.unnamed_here = False
        return self.forward()

    def detached(self) -> None:
        """The driver gave the connection back (``MayDetach``, or the pool took it)."""
        connection = self.connection
        assert connection is not None
        self.connection = None
        connection.transaction_status = self.plan.status

    def release_terms(self) -> Release:
        """The client is gone: on what terms the connection it held goes back (``detached``
        first)."""
        plan = self.plan
        if not plan.at_rest:
            return Release(reusable=False, cancel_first=True, needs_reset=False)
        # A pinned connection holds session state: reset it. An unpinned one left mid-
        # transaction is rolled back by the same reset.
        needs_reset = self.pinned is not None or plan.status != STATUS_IDLE
        return Release(reusable=True, cancel_first=False, needs_reset=needs_reset)

    def connection_lost(self) -> Command:
        """The attached connection closed under the client."""
        self._ended = True
        if self.plan.mid_message:  # an error now would land inside a message
            return Ended(EndReason.SERVER_CLOSED)
        message = f'pool "{self.pool_name}": the server connection was lost'
        error = ErrorResponse.build("FATAL", SQLSTATE_CONNECTION_FAILURE, message).encode()
        return CloseWithError(error, EndReason.SERVER_CLOSED)

    def idle_timer_fired(self, timeout: str) -> Command:
        """The idle-in-transaction clock ran out (``timeout`` as the client is told it)."""
        self._timer_armed = False
        self._ended = True
        message = f'pool "{self.pool_name}": terminating connection: idle in a transaction for {timeout}'
        error = ErrorResponse.build("FATAL", SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT, message).encode()
        return CloseWithError(error, EndReason.IDLE_IN_TRANSACTION, message)

    def no_connection(self, code: str, message: str) -> Command:
        """No connection could be had for the client (the pool said why)."""
        self._ended = True
        error = ErrorResponse.build("FATAL", code, message).encode()
        return CloseWithError(error, EndReason.NO_SERVER_CONNECTION, message)

    def stop(self) -> None:
        """The driver ended the client: forward nothing more."""
        self._ended = True

    def forget_statements(self) -> None:
        """The client is gone: its statements are closed upstream wherever a copy is."""
        self.statements.forget_all()

    # --- internals ------------------------------------------------------------------------------
    def _forward(
        self, message: bytes, connection: ServerState, batch: list[bytes], commands: list[Command]
    ) -> bool:
        """Queue what the server must get for this client message (not Terminate); False: hold
        it until the answers it depends on are in (``ClientStatements``).

        Messages pass as they came unless they name a statement (``ClientStatements``).
        """
        kind = message[0]
        plan = self.plan
        statements = self.statements
        if kind == _QUERY:
            sql = Query.decode(message[_HEADER_SIZE:]).sql
            if might_clear(sql):
                if not statements.query(message, sql, connection, batch):
                    return False
                statements.unnamed_ended()
            elif plan.unsynced:  # the server skips it if a request before it fails
                statements.unnamed_here = True
                plan.send(Request.QUERY, token=UNNAMED_END_TOKEN)
                batch.append(message)
            else:
                statements.unnamed_ended()
                plan.send(Request.QUERY)
                batch.append(message)
            self._check_pins(sql, commands)
            return True
        if kind == _PARSE:
            name, start, end = statement_field(message)
            sql = parse_query(message, end)
            if not statements.parse(message, name, start, end, sql, connection, batch):
                return False
            self._check_pins(sql, commands)
            return True
        if kind == _BIND:
            name, start, end = statement_field(message)
            if statements.watches_binds:
                statements.bound(name, _text_at(message, _HEADER_SIZE))
            if name:
                return statements.named(message, name, start, end, connection, batch, Request.BIND)
            if not statements.unnamed_here:
                statements.use_unnamed(batch)
            plan.send(Request.BIND)
        elif kind == _EXECUTE:
            if statements.watches_executes:
                portal = _text_at(message, _HEADER_SIZE)
                if statements.clears_portal(portal):
                    return statements.execute(message, portal, connection, batch)
            plan.send(Request.EXECUTE)
        elif kind == _SYNC:
            plan.send(Request.SYNC)
        elif kind == _DESCRIBE:
            if message[_HEADER_SIZE] == _TARGET_STATEMENT:
                name, start, end = statement_field(message)
                if name:
                    return statements.named(
                        message, name, start, end, connection, batch, Request.DESCRIBE_STATEMENT
                    )
                if not statements.unnamed_here:
                    statements.use_unnamed(batch)
                plan.send(Request.DESCRIBE_STATEMENT)
            else:
                plan.send(Request.DESCRIBE_PORTAL)
        elif kind == _CLOSE:
            if message[_HEADER_SIZE] == _TARGET_STATEMENT:
                name, start, end = statement_field(message)
                if name:
                    return statements.close(message, name, start, end, connection, batch)
                statements.unnamed_here = True
                plan.send(Request.CLOSE, token=UNNAMED_END_TOKEN)
                batch.append(message)
                return True
            plan.send(Request.CLOSE)
        elif kind == _FUNCTION_CALL:
            statements.unnamed_ended()
            plan.send(Request.QUERY)
        elif kind in (_COPY_DONE, _COPY_FAIL):
            plan.copy_end_sent()
        # Flush, CopyData, CopyDone, CopyFail: no answer of their own
        batch.append(message)
        return True

    def _settle(self) -> None:
        """Settle the books on what the server did with the requests that change statements."""
        plan = self.plan
        connection = self.connection
        assert connection is not None
        outcomes = plan.outcomes
        settle = self.statements.settle
        for token, ok in outcomes:
            settle(token, ok, connection)
        outcomes.clear()

    def _check_pins(self, sql: str, commands: list[Command]) -> None:
        if len(sql) > INSPECT_LIMIT:
            # Classifying megabytes of literals would stall every client on this loop.
            self._pin(PIN_TOO_LARGE, commands)
            return
        for pin in statement_pins(sql):
            self._pin(pin.reason, commands)

    def _pin(self, reason: str, commands: list[Command]) -> None:
        if self.pinned is None:
            self.pinned = reason
            commands.append(Pinned(reason, pin_kind(reason)))

    def _idle_point(self, commands: list[Command]) -> bool:
        """At an idle point, say ``MayDetach``; False if not at one."""
        plan = self.plan
        if plan.status != STATUS_IDLE or not plan.at_rest:
            return False
        if self.pinned is not None:
            commands.append(MAY_DETACH_PINNED)
            return True
        self.statements.at_rest()
        if plan.parameters_changed:  # the client was told: the new value travels with it
            self.parameters.update(
                {name: value for name, value in plan.parameters.items() if name in SYNCED_PARAMETERS}
            )
        commands.append(MAY_DETACH)
        return True


def _text_at(message: bytes, start: int) -> str:
    """The NUL-terminated name at ``start`` of a whole message (a Bind's or Execute's portal)."""
    end = message.find(b"\x00", start)
    if end < 0:
        raise ProtocolViolation(f"{chr(message[0])!r} portal name is not NUL-terminated")
    return message[start:end].decode("utf-8", "surrogateescape")
