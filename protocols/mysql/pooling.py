"""The sans-IO core of MySQL transaction pooling: one client's commands, its virtual session
(variables, schema, statements, pins), and the answers it is owed, whichever server
connections serve it.

Theory of operation: the driver (``proxy.mysql.transaction``) feeds the core the client's
bytes (``receive_client``), the server's (``receive_server``) and what happens to its hold on
a connection (``attached(state)``, ``detached()``, ``connection_lost()``), and carries out the
commands it returns (``protocols.pooling``), in order.

Every server connection tracks its session (``session_track_*``, turned on by the connector);
its ``MySqlServerState`` is what the server reported. The client's virtual session is what
the server reported to the client's own commands. Attaching a connection whose session
differs brings the client's onto it, with commands of the proxy's own pipelined before the
client's (their answers hidden, ``ResponseTracker`` tags): ``SET`` the client's values,
``SET ... = DEFAULT`` what another client changed, ``COM_INIT_DB`` its schema,
``DO LAST_INSERT_ID(n)`` before a statement that reads it. Binary prepared statements belong
to the client: it is told ids of its own, each connection gets its own copy when first used
(prepared there, hidden), ids are mapped both ways, the parameter types the server no longer
has are sent again, and copies nobody needs are closed with the next work on their
connection.

The client may let go of its connection (``MayDetach``) when the server owes it nothing, no
transaction is open (SERVER_STATUS_IN_TRANS clear), no one-shot ``SET TRANSACTION`` waits,
and its last statement left no warnings (``SHOW WARNINGS`` must find them where they are).
What cannot move pins it until it leaves (``Pinned``): see ``protocols.mysql.session_state``.
"""

from __future__ import annotations

import re
import struct
from collections import OrderedDict, deque
from typing import Final

from protocols.endings import EndReason
from protocols.errors import ProtocolViolation
from protocols.mysql import constants as c
from protocols.mysql import sql
from protocols.mysql.messages import ChangeUser, ErrPacket, OkPacket, ok_fields
from protocols.mysql.packets import UINT32, Packet, PacketReader, decode_lenenc_str, encode_lenenc_str, frame
from protocols.mysql.session_state import (
    REASON_CURSOR,
    REASON_LOCK_TABLES,
    ROW_COUNT,
    WARNING_COUNT,
    counter_alone,
    ends_transaction,
    inspect,
)
from protocols.mysql.session_track import (
    TRACK_EVERYTHING,
    TRACKING_PREFIX,
    parse_session_state,
    set_variables,
)
from protocols.mysql.tracker import (
    A_DEFINITIONS_EOF,
    A_ERR,
    A_PREPARE_OK,
    A_RESULT_OK,
    A_ROWS_END,
    A_STATUS,
    CAPTURED,
    CAPTURED_ANSWER,
    VISIBLE,
    ResponseTracker,
    edited_status,
)
from protocols.pooling import (
    MAY_DETACH,
    MAY_DETACH_PINNED,
    NEED_CONNECTION,
    CloseWithError,
    Ended,
    MayDetach,
    NeedConnection,
    Pinned,
    Release,
    SendToClient,
    SendToServer,
)

Command = SendToServer | SendToClient | NeedConnection | MayDetach | Pinned | Ended | CloseWithError

CLIENT_QUIT: Final = Ended(EndReason.CLIENT_QUIT)

# Tags of the proxy's own commands (``ResponseTracker.send``): what their answers mean.
RESTORE_DEFAULTS: Final = -2  # SET ... = DEFAULT: another client's values off the connection
RESTORE_CLIENT: Final = -3  # SET / COM_INIT_DB to the client's values: reports are the client's
SET_INSERT_ID: Final = -4  # DO LAST_INSERT_ID(n)
RESET_TRACKING: Final = -5  # tracking and character set again after the client's reset
SIGNAL_DIAGNOSTICS: Final = -6  # SIGNAL: the client's warning or error brought back (an ERR is expected)
PREPARE_BASE: Final = -1000  # PREPARE_BASE - id: a copy of the client's statement ``id``

# The character set variables a login sets from the handshake: their baseline is the login
# collation, not the server's global default.
CHARSET_VARIABLES: Final = (
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
)
STATEMENTS_PER_CONNECTION: Final = 256  # copies of client statements one connection keeps
ER_UNKNOWN_STMT_HANDLER: Final = 1243
ER_TRACKING_REFUSED: Final = c.ER_NOT_SUPPORTED_YET
SHOW_WARNINGS: Final = bytes([c.COM_QUERY]) + b"SHOW WARNINGS"
_SHOW_WARNINGS_ALONE: Final = re.compile(rb"\s*SHOW\s+WARNINGS\s*;?\s*$", re.IGNORECASE)
MESSAGE_TEXT_LIMIT: Final = 128  # characters SIGNAL takes in MESSAGE_TEXT
LAST_PREPARED: Final = 0xFFFFFFFF  # MariaDB: the statement the connection prepared last
TEXT_ROW: Final = 1  # how the client's ROW_COUNT() goes in the row of the answer given here
BINARY_ROW: Final = 2
_INT64: Final = struct.Struct("<q")
CURSOR_FLAGS: Final = 0x07  # COM_STMT_EXECUTE flags that open a cursor (read-only, for update, scrollable)
_OPENING: Final = frozenset({c.COM_QUERY, c.COM_STMT_EXECUTE})  # what may open a transaction
_STATEMENT_FUNCTIONS: Final = {
    c.COM_STMT_EXECUTE: "mysqld_stmt_execute",
    c.COM_STMT_RESET: "mysqld_stmt_reset",
    c.COM_STMT_FETCH: "mysqld_stmt_fetch",
}


class ServerCopy:
    """A client statement prepared on one connection."""

    __slots__ = ("server_id", "types")

    def __init__(self, server_id: int) -> None:
        self.server_id = server_id
        self.types = b""  # the parameter types the server last got for it


class MySqlServerState:
    """What one transaction-mode server connection's session is, as its server reported it.
    Its I/O connection owns it; the core of whichever client is attached reads and updates it."""

    __slots__ = (
        "autocommit_open",
        "capabilities",
        "characteristics",
        "counted_for",
        "diagnostics_of",
        "last_insert_id",
        "login_collation_id",
        "login_schema",
        "multi_statements",
        "schema",
        "signalled_for",
        "statements",
        "status_flags",
        "to_close",
        "tracker",
        "variables",
    )

    def __init__(
        self, capabilities: int, login_collation_id: int, schema: str | None, status_flags: int
    ) -> None:
        self.capabilities = capabilities
        self.tracker = ResponseTracker(capabilities, status_flags=status_flags, editing=True)
        self.multi_statements = bool(capabilities & c.CLIENT_MULTI_STATEMENTS)  # COM_SET_OPTION moves it
        # With autocommit off, a transaction that only read is open without SERVER_STATUS_IN_TRANS
        # (MariaDB sets the flag at the first write): open from the first statement after
        # autocommit went off, or after a COMMIT/ROLLBACK, until the next one.
        self.autocommit_open = False
        self.login_collation_id = login_collation_id
        self.status_flags = status_flags
        self.schema = schema
        self.login_schema = schema  # where a client that named none is
        self.variables: dict[str, str] = {}
        self.characteristics = ""  # a one-shot SET TRANSACTION waiting for the next transaction
        self.last_insert_id = 0
        self.diagnostics_of = 0  # the client (serial) whose warnings or error are on it; 0: none
        self.counted_for = 0  # the client whose command it ran last (ROW_COUNT() is its); 0: none
        self.signalled_for = 0  # ... raised again by the proxy's SIGNAL (their text may be cut)
        # (client serial, client statement id) -> its copy here, least recently used first.
        self.statements: OrderedDict[tuple[int, int], ServerCopy] = OrderedDict()
        self.to_close: list[int] = []  # server statement ids nobody needs: closed with the next work

    def reset(self, schema: str | None) -> None:
        """The session was reset (COM_RESET_CONNECTION): as after login."""
        self.variables.clear()
        self.characteristics = ""
        self.autocommit_open = False
        self.diagnostics_of = self.signalled_for = self.counted_for = 0
        self.last_insert_id = 0
        self.statements.clear()
        self.to_close.clear()
        self.schema = schema

    @property
    def in_transaction(self) -> bool:
        return bool(self.status_flags & c.SERVER_STATUS_IN_TRANS) or self.autocommit_open

    @property
    def autocommit(self) -> bool:
        return self.variables.get("autocommit", "ON").upper() not in ("OFF", "0")

    @property
    def backslash_escapes(self) -> bool:
        return not self.status_flags & c.SERVER_STATUS_NO_BACKSLASH_ESCAPES


class ClientStatement:
    """A binary prepared statement of one client: its text and where it has copies."""

    __slots__ = ("copies", "counter", "parameters", "reads_insert_id", "sql", "statement_id", "types")

    def __init__(self, statement_id: int, sql: bytes) -> None:
        self.statement_id = statement_id
        self.sql = sql
        self.parameters = -1  # known from the first PREPARE_OK
        self.types = b""  # the parameter types the client last sent
        self.reads_insert_id = False  # LAST_INSERT_ID(): the client's is brought before each execute
        self.counter = 0  # SELECT ROW_COUNT() (session_state.counter_alone): given the client's
        self.copies: list[MySqlServerState] = []


class PooledMySqlClient:
    """One transaction-mode MySQL client. ``collation_id`` and ``schema`` are what its
    handshake asked for; ``serial`` tells its statements apart from other clients' on a
    shared connection; ``login_schema`` is where a reset connection is."""

    def __init__(
        self,
        serial: int,
        collation_id: int,
        schema: str | None,
        login_collation_id: int,
        pool_name: str,
        multi_statements: bool = False,
    ) -> None:
        self.serial = serial
        self.multi_statements = multi_statements  # CLIENT_MULTI_STATEMENTS, as it stands now
        self.pool_name = pool_name
        self.reader = PacketReader()
        self.connection: MySqlServerState | None = None
        self.tracker: ResponseTracker | None = None
        self.variables: dict[str, str] = {}
        if collation_id != login_collation_id:
            self.variables = {name: str(collation_id) for name in CHARSET_VARIABLES}
        self.initial_variables = dict(self.variables)
        self.schema = schema
        self.initial_schema = schema
        self.last_insert_id = 0
        # What ROW_COUNT() is for the client: its last command's affected rows (OK), -1 after
        # a result set or an error. The connection's is that when the client's command was the
        # last it ran (``counted_for``) and none was answered here since.
        self.row_count = 0
        self._counted_here = False
        self._answering = 0  # the command whose answer is captured and edited here: its kind
        self._answer_value = 0  # ... and the value it gets
        self.warning_count = 0  # what the client's last statement reported (conditions past those shown too)
        # The last statement's conditions (level, code, message, SQLSTATE), read after it with a
        # hidden SHOW WARNINGS (warnings) or from its ERR, for a later SHOW WARNINGS elsewhere.
        self.diagnostics: list[tuple[str, int, str, str]] = []
        self.warnings_response = b""  # the hidden SHOW WARNINGS's answer, as it came
        self._capture_due = False
        self._reading_diagnostics = False  # the statement sent reads them: it leaves them be
        self.statements: dict[int, ClientStatement] = {}
        self._next_statement_id = 1
        self.pins: list[str] = []
        self._pinned_said: set[str] = set()
        self._pending: deque[Packet] = deque()  # commands not forwarded yet
        self._preparing = False  # a hidden prepare is answered before the next command goes on
        self._await_quiet = False  # an answer given here waits for the server's before it
        self._asked = False  # NeedConnection said, not yet attached
        self._ended = False
        self.queries = 0  # the client's commands answered (for the metrics)
        self.transactions = 0

    # --- what the driver asks ------------------------------------------------------------------
    @property
    def _blocked(self) -> bool:
        return self._preparing or self._await_quiet

    @property
    def pinned(self) -> str | None:
        return self.pins[0] if self.pins else None

    @property
    def incomplete(self) -> bool:
        """Part of a client packet is here and the rest is not."""
        return self.reader.incomplete

    @property
    def pending(self) -> int:
        return len(self.reader) + sum(len(packet.payload) for packet in self._pending)

    @property
    def at_idle_point(self) -> bool:
        """The server owes the client nothing and no transaction of its is open."""
        tracker, connection = self.tracker, self.connection
        if tracker is None or connection is None:
            return not self._pending
        return tracker.at_safe_point and not connection.in_transaction and not self._pending

    @property
    def in_transaction(self) -> bool:
        connection = self.connection
        return connection is not None and connection.in_transaction

    # --- events --------------------------------------------------------------------------------
    def receive_client(self, data: bytes) -> list[Command]:
        """Client bytes in (the driver may read ``reader`` itself and ``queue`` packets)."""
        self.reader.receive_data(data)
        reader = self.reader
        while isinstance(packet := reader.next_event(), Packet):
            self._pending.append(packet)
        return self.forward()

    def queue(self, packet: Packet) -> None:
        """A whole client packet to forward (with the next ``forward``)."""
        self._pending.append(packet)

    def forward(self) -> list[Command]:
        """Forward the commands not forwarded yet, as far as they can go now."""
        commands: list[Command] = []
        out: list[bytes] = []
        self._forward(out, commands)
        self._flush(out, commands)
        self._may_detach(commands)
        return commands

    def _forward(self, out: list[bytes], commands: list[Command]) -> None:
        if self._ended:
            return
        pending = self._pending
        while pending and not self._blocked:
            packet = pending[0]
            payload = packet.payload
            if packet.sequence_id == 0 and payload and payload[0] == c.COM_QUIT:
                self._ended = True
                self._flush(out, commands)
                commands.append(CLIENT_QUIT)
                return
            if self.connection is None:
                if self._answer_unattached(packet, commands):
                    pending.popleft()
                    continue
                if not self._asked:
                    self._asked = True
                    commands.append(NEED_CONNECTION)
                return
            pending.popleft()
            self._command(packet, out, commands)

    def _may_detach(self, commands: list[Command]) -> None:
        """Say the client may let go of its connection, if it may: the server owes it nothing,
        nothing waits to be forwarded, no transaction (or one-shot characteristics) is open,
        and its last statement left no diagnostics."""
        tracker, connection = self.tracker, self.connection
        if tracker is None or connection is None or self._ended or self._blocked or self._pending:
            return
        if not tracker.at_safe_point or connection.in_transaction or connection.characteristics:
            return
        if self._capture_due:
            # Read the warnings while they are here: the client may ask for them elsewhere.
            self._capture_due = False
            out: list[bytes] = []
            self._hidden(SHOW_WARNINGS, CAPTURED, out)
            self._flush(out, commands)
            return
        commands.append(MAY_DETACH_PINNED if self.pins else MAY_DETACH)

    @property
    def diagnostics_pending(self) -> bool:
        """The attached connection holds a client's warnings or error: reset it before anyone
        else gets it (never another client's warnings in a SHOW WARNINGS)."""
        connection = self.connection
        return connection is not None and connection.diagnostics_of != 0

    def attached(self, connection: MySqlServerState) -> list[Command]:
        """A server connection was borrowed for the client: bring its session, then forward
        (one write: the hidden commands and the client's)."""
        self.connection = connection
        self.tracker = connection.tracker
        self._asked = False
        out: list[bytes] = []
        commands: list[Command] = []
        self._restore(connection, out)
        self._forward(out, commands)
        self._flush(out, commands)
        self._may_detach(commands)
        return commands

    def detached(self) -> None:
        self.connection = None
        self.tracker = None

    def receive_server(self, data: bytes) -> list[Command]:
        tracker, connection = self.tracker, self.connection
        assert tracker is not None and connection is not None
        commands: list[Command] = []
        try:
            to_client = tracker.receive_data(data)
        except ProtocolViolation as exc:
            self._ended = True
            return [Ended(EndReason.SERVER_VIOLATION, str(exc))]
        if to_client:
            commands.append(SendToClient(to_client))
        notes = tracker.notes
        if notes:
            for tag, action, payload in notes:
                failed = self._note(connection, tag, action, payload, commands)
                if failed is not None:
                    notes.clear()
                    return [*commands, failed]
            notes.clear()
        if self._answering and tracker.at_safe_point:
            commands.append(SendToClient(self._captured_answer(connection, tracker)))
        if self._await_quiet and tracker.at_safe_point:
            self._await_quiet = False
        if self._pending and not self._blocked:
            out: list[bytes] = []
            self._forward(out, commands)
            self._flush(out, commands)
        if tracker.at_safe_point:
            self.transactions += 0 if connection.in_transaction else 1
        self._may_detach(commands)
        return commands

    def connection_lost(self) -> Command:
        """The attached connection closed under the client."""
        self._ended = True
        what = "in a transaction" if self.in_transaction else "while a command ran"
        return self._fatal(f"the server connection was lost {what}", EndReason.SERVER_CLOSED)

    def no_connection(self, message: str, timeout: bool) -> Command:
        """No connection could be had for the client's command."""
        self._ended = True
        code = c.ER_CON_COUNT_ERROR if timeout else c.ER_UNKNOWN_ERROR
        error = ErrPacket(code, message, "08004" if timeout else "HY000")
        return CloseWithError(frame(error.encode(), 1)[0], EndReason.NO_SERVER_CONNECTION, message)

    def stop(self) -> None:
        self._ended = True

    def release_terms(self) -> Release:
        """The client left: on what terms its connection goes back."""
        tracker, connection = self.tracker, self.connection
        if tracker is None or connection is None:
            return Release(reusable=False, cancel_first=False, needs_reset=False)
        if tracker.awaiting_response:
            return Release(reusable=False, cancel_first=True, needs_reset=True)
        dirty = (
            bool(self.pins)
            or connection.in_transaction
            or bool(connection.characteristics)
            or connection.diagnostics_of != 0
        )
        return Release(reusable=tracker.at_safe_point, cancel_first=False, needs_reset=dirty)

    @property
    def rollback_suffices(self) -> bool:
        """What the client leaves on its connection is an open transaction and nothing more
        (no pin, no pending characteristics, no warnings): a ROLLBACK resets it."""
        connection = self.connection
        return (
            connection is not None
            and not self.pins
            and not connection.characteristics
            and connection.diagnostics_of == 0
        )

    def forget_statements(self) -> None:
        """The client left: its statements' copies are closed with the next work on each."""
        self.leave_copies()
        self.statements.clear()

    def leave_copies(self) -> None:
        """The client moves to another pool: its statements stay its own, and are prepared
        again where they next run; the copies left behind are closed with the next work there."""
        for statement in self.statements.values():
            self._drop_copies(statement)

    # --- client commands -----------------------------------------------------------------------
    def _answer_unattached(self, packet: Packet, commands: list[Command]) -> bool:
        """Answer what needs no server connection; True if it was answered."""
        payload = packet.payload
        if packet.sequence_id != 0 or not payload:
            return False
        command = payload[0]
        if command == c.COM_PING:
            self._counted(0)
            commands.append(SendToClient(frame(OkPacket(0, 0, self._status(), 0).encode(), 1)[0]))
            return True
        if command == c.COM_STMT_CLOSE and len(payload) >= 5:
            self._close_statement(UINT32.unpack_from(payload, 1)[0], [])
            return True
        if command == c.COM_CHANGE_USER:
            self._change_user(packet, [], commands)
            return True
        return False

    def _status(self) -> int:
        autocommit = self.variables.get("autocommit", "ON").upper() not in ("OFF", "0")
        return c.SERVER_STATUS_AUTOCOMMIT if autocommit else 0

    def _command(self, packet: Packet, out: list[bytes], commands: list[Command]) -> None:
        tracker, connection = self.tracker, self.connection
        assert tracker is not None and connection is not None
        payload = packet.payload
        if packet.sequence_id != 0 or not payload:  # LOCAL INFILE data
            self._send(packet.payload, packet.sequence_id, VISIBLE, out)
            return
        command = payload[0]
        self._reading_diagnostics = False
        if command == c.COM_QUERY or command == c.COM_STMT_PREPARE:
            found = inspect(payload[1:], backslash_escapes=connection.backslash_escapes)
            if found.tracking and command == c.COM_QUERY:
                message = "session_track_* variables are rotaproxy's own in transaction mode: not changed"
                self._answer(packet, ErrPacket(ER_TRACKING_REFUSED, message, "42000"), out, commands)
                return
            for reason in found.pins:
                self._pin(reason, commands)
            if found.unlocks and REASON_LOCK_TABLES in self.pins:
                self.pins.remove(REASON_LOCK_TABLES)
                self._pinned_said.discard(REASON_LOCK_TABLES)
            if found.reads_insert_id and command == c.COM_QUERY:
                self._bring_insert_id(connection, out)
            self._reading_diagnostics = found.reads_diagnostics
            counter = counter_alone(payload[1:]) if found.reads_row_count or found.reads_diagnostics else 0
            if found.reads_diagnostics:
                if (
                    self.warnings_response
                    and (connection.diagnostics_of != self.serial or connection.signalled_for == self.serial)
                    and _SHOW_WARNINGS_ALONE.match(payload, 1)
                ):
                    # Answered here, as the server answered it where the warnings were.
                    self._answer_raw(packet, self.warnings_response, out, commands)
                    return
                if counter and command == c.COM_QUERY and self._diagnostics_moved(connection):
                    # (SIGNAL raises one condition again: the count is given here)
                    self._answer_with(packet, payload, TEXT_ROW, self._diagnostics_count(counter), out)
                    return
                self._bring_diagnostics(connection, out)
            if command == c.COM_STMT_PREPARE:
                statement_id = self._next_statement_id
                self._next_statement_id += 1
                statement = ClientStatement(statement_id, payload[1:])
                statement.reads_insert_id = found.reads_insert_id
                statement.counter = counter
                self.statements[statement_id] = statement
                self.queries += 1
                self._send(payload, 0, statement_id, out)
                return
            if counter == ROW_COUNT and self._row_count_moved(connection):
                self._answer_with(packet, payload, TEXT_ROW, self.row_count, out)
                return
        elif command in _STATEMENT_FUNCTIONS or command == c.COM_STMT_SEND_LONG_DATA:
            self._statement_command(packet, out, commands)
            return
        elif command == c.COM_STMT_CLOSE:
            if len(payload) >= 5:
                self._close_statement(UINT32.unpack_from(payload, 1)[0], out)
            return
        elif command == c.COM_RESET_CONNECTION:
            if self._wait_for_quiet(packet, out):
                return  # (no report of a command before it may arrive after the reset is applied)
            self._reset_session()
            self.queries += 1
            self._send(payload, 0, VISIBLE, out)
            self._after_reset(out)
            return
        elif command == c.COM_CHANGE_USER:
            self._change_user(packet, out, commands)
            return
        elif command == c.COM_SET_OPTION and len(payload) >= 3:
            # Multi-statements on (0) or off (1): the client's, brought onto each connection.
            self.multi_statements = connection.multi_statements = payload[1] == 0 and payload[2] == 0
        self.queries += 1
        self._send(payload, 0, VISIBLE, out)

    def _statement_command(self, packet: Packet, out: list[bytes], commands: list[Command]) -> None:
        """COM_STMT_EXECUTE, _RESET, _FETCH, _SEND_LONG_DATA: to the connection's copy of the
        client's statement, prepared there first (hidden) when it has none."""
        connection = self.connection
        assert connection is not None
        payload = packet.payload
        command = payload[0]
        statement_id = UINT32.unpack_from(payload, 1)[0] if len(payload) >= 5 else 0
        if statement_id == LAST_PREPARED:
            # MariaDB's "the statement just prepared" (a PREPARE and its EXECUTE pipelined): the
            # PREPARE went to this connection just before, so it means the same here.
            self.queries += command != c.COM_STMT_SEND_LONG_DATA
            self._send(payload, 0, VISIBLE, out)
            return
        statement = self.statements.get(statement_id)
        if statement is None:
            if command != c.COM_STMT_SEND_LONG_DATA:  # (which is never answered)
                function = _STATEMENT_FUNCTIONS[command]
                message = f"Unknown prepared statement handler ({statement_id}) given to {function}"
                self._answer(packet, ErrPacket(ER_UNKNOWN_STMT_HANDLER, message, "HY000"), out, commands)
            return
        key = (self.serial, statement_id)
        copy = connection.statements.get(key)
        if copy is None:
            # Prepare it here first; the command waits for the server's id.
            self._hidden(bytes([c.COM_STMT_PREPARE]) + statement.sql, PREPARE_BASE - statement_id, out)
            self._pending.appendleft(packet)
            self._preparing = True
            return
        connection.statements.move_to_end(key)
        edited = payload[:1] + UINT32.pack(copy.server_id) + payload[5:]
        if command == c.COM_STMT_EXECUTE:
            edited = self._with_types(statement, copy, edited)
            if statement.reads_insert_id:
                self._bring_insert_id(connection, out)
            if len(payload) > 5 and payload[5] & CURSOR_FLAGS:
                self._pin(REASON_CURSOR, commands)
            elif statement.counter == ROW_COUNT and self._row_count_moved(connection):
                self._answer_with(packet, edited, BINARY_ROW, self.row_count, out)
                return
        if command != c.COM_STMT_SEND_LONG_DATA:
            self.queries += 1
        self._send(edited, 0, VISIBLE, out)

    def _with_types(self, statement: ClientStatement, copy: ServerCopy, payload: bytes) -> bytes:
        """An execute as this copy needs it: the parameter types it sends are remembered, and
        sent again where this copy last got others (or none)."""
        parameters = statement.parameters
        if parameters <= 0:
            return payload
        bound_at = 10 + (parameters + 7) // 8  # header, id, flags, iterations, NULL bitmap
        if len(payload) <= bound_at:
            return payload
        if payload[bound_at] == 1:
            types = payload[bound_at + 1 : bound_at + 1 + 2 * parameters]
            statement.types = copy.types = types
            return payload
        if statement.types and copy.types != statement.types:
            copy.types = statement.types
            return payload[:bound_at] + b"\x01" + statement.types + payload[bound_at + 1 :]
        return payload

    def _close_statement(self, statement_id: int, out: list[bytes]) -> None:
        statement = self.statements.pop(statement_id, None)
        if statement is not None:
            self._drop_copies(statement)
            if self.connection is not None:
                self._send_closes(self.connection, out)

    def _drop_copies(self, statement: ClientStatement) -> None:
        key = (self.serial, statement.statement_id)
        for connection in statement.copies:
            copy = connection.statements.pop(key, None)
            if copy is not None:
                connection.to_close.append(copy.server_id)
        statement.copies.clear()

    def _reset_session(self) -> None:
        """The client's session as at its login (COM_RESET_CONNECTION, COM_CHANGE_USER); the
        attached connection's state too, which the caller resets on the server."""
        self.forget_statements()
        self.variables = dict(self.initial_variables)
        self.schema = self.initial_schema
        self.last_insert_id = 0
        self.pins.clear()
        self._pinned_said.clear()
        if self.connection is not None:
            self.connection.reset(self.connection.schema)

    def _after_reset(self, out: list[bytes]) -> None:
        """After a COM_RESET_CONNECTION on the attached connection: tracking and the login
        character set again (the reset turned them off), then the client's session."""
        connection = self.connection
        assert connection is not None
        login = connection.login_collation_id
        charset = set_variables({name: str(login) for name in CHARSET_VARIABLES}, backslash_escapes=True)
        self._hidden(bytes([c.COM_QUERY]) + TRACK_EVERYTHING.encode(), RESET_TRACKING, out)
        self._hidden(bytes([c.COM_QUERY]) + charset.encode(), RESET_TRACKING, out)
        self._restore(connection, out)

    def _change_user(self, packet: Packet, out: list[bytes], commands: list[Command]) -> None:
        """COM_CHANGE_USER (to the pool's account: the proxy has only that one): the client's
        session starts again as at a login with its schema and character set, and so does the
        connection it holds, reset (its transaction rolled back) with the new session brought.
        Answered here: clients of the proxy log in without a password."""
        if self._wait_for_quiet(packet, out):
            return
        request = ChangeUser.decode(packet.payload)
        connection = self.connection
        collation = request.character_set if request.character_set is not None else -1
        login = connection.login_collation_id if connection is not None else collation
        self.initial_variables = {}
        if collation >= 0 and collation != login:
            self.initial_variables = {name: str(collation) for name in CHARSET_VARIABLES}
        self.initial_schema = request.database
        self._reset_session()
        self._counted(0)
        if connection is not None:
            self._hidden(bytes([c.COM_RESET_CONNECTION]), RESET_TRACKING, out)
            self._after_reset(out)
        commands.append(SendToClient(frame(OkPacket(0, 0, c.SERVER_STATUS_AUTOCOMMIT, 0).encode(), 1)[0]))

    def _answer(
        self, packet: Packet, answer: ErrPacket | OkPacket, out: list[bytes], commands: list[Command]
    ) -> None:
        """Answer a command here, in its turn: after whatever the server still owes the client
        (until then the command waits, and what came after it)."""
        if not self._wait_for_quiet(packet, out):
            self._counted(answer.affected_rows if isinstance(answer, OkPacket) else -1)
            commands.append(SendToClient(frame(answer.encode(), 1)[0]))

    def _answer_raw(self, packet: Packet, response: bytes, out: list[bytes], commands: list[Command]) -> None:
        if not self._wait_for_quiet(packet, out):
            self.queries += 1
            self._counted(-1)  # (a result set)
            commands.append(SendToClient(response))

    def _wait_for_quiet(self, packet: Packet, out: list[bytes]) -> bool:
        """Whether ``packet`` must wait (put back) until the server has answered everything sent
        before it; the proxy answers it itself, and answers go to the client in order."""
        tracker = self.tracker
        if tracker is not None and (out or not tracker.at_safe_point):
            self._pending.appendleft(packet)
            self._await_quiet = True
            return True
        return False

    def _bring_diagnostics(self, connection: MySqlServerState, out: list[bytes]) -> None:
        """The client's last warning or error onto the connection (a SIGNAL raises it again),
        before a statement reads them, where the connection does not have them."""
        if connection.diagnostics_of == self.serial or not self.diagnostics:
            return
        level, code, message, sql_state = next(
            (each for each in self.diagnostics if each[0] == "Error"), self.diagnostics[0]
        )
        if level != "Error" or sql_state[:2] in ("00", "01", "02"):
            sql_state = "01000" if level != "Error" else "HY000"
        text = sql.literal(message[:MESSAGE_TEXT_LIMIT], backslash_escapes=connection.backslash_escapes)
        signal = f"SIGNAL SQLSTATE '{sql_state}' SET MYSQL_ERRNO = {int(code)}, MESSAGE_TEXT = {text}"
        self._hidden(bytes([c.COM_QUERY]) + signal.encode(), SIGNAL_DIAGNOSTICS, out)
        connection.diagnostics_of = connection.signalled_for = self.serial

    def _bring_insert_id(self, connection: MySqlServerState, out: list[bytes]) -> None:
        """The client's own LAST_INSERT_ID() onto the connection, before a statement reads it."""
        if connection.last_insert_id != self.last_insert_id:
            self._hidden(b"%cDO LAST_INSERT_ID(%d)" % (c.COM_QUERY, self.last_insert_id), SET_INSERT_ID, out)
            connection.last_insert_id = self.last_insert_id

    def _row_count_moved(self, connection: MySqlServerState) -> bool:
        """Whether ROW_COUNT() on ``connection`` is not the client's: another's command (or the
        proxy's) ran there since the client's, or the proxy answered the client's last."""
        return connection.counted_for != self.serial or self._counted_here

    def _counted(self, row_count: int) -> None:
        """A command answered here: what ROW_COUNT() is after it."""
        self.row_count = row_count
        self._counted_here = True

    def _diagnostics_moved(self, connection: MySqlServerState) -> bool:
        """Whether the client's conditions are not on ``connection`` as they were (it moved, or
        a SIGNAL raised one of them again there)."""
        return bool(self.diagnostics) and (
            connection.diagnostics_of != self.serial or connection.signalled_for == self.serial
        )

    def _diagnostics_count(self, counter: int) -> int:
        """@@warning_count (every condition) or @@error_count after the client's last statement."""
        if counter == WARNING_COUNT:
            return max(self.warning_count, len(self.diagnostics))
        return sum(1 for each in self.diagnostics if each[0] == "Error")

    def _answer_with(self, packet: Packet, payload: bytes, kind: int, value: int, out: list[bytes]) -> None:
        """A counter of the client's last statement read where the connection's is not the
        client's (``SELECT ROW_COUNT()``, ``SELECT @@warning_count``...): it runs there, alone
        (after all before it is answered, nothing after it until it is), and its answer is
        captured and sent on with ``value`` in its row (``_captured_answer``)."""
        if self._wait_for_quiet(packet, out):
            return
        self.queries += 1
        self._answering = kind
        self._answer_value = value
        self._await_quiet = True
        self._send(payload, 0, CAPTURED_ANSWER, out)

    def _captured_answer(self, connection: MySqlServerState, tracker: ResponseTracker) -> bytes:
        """A captured answer (``_answer_with``) as the client is to get it: its row holds the
        client's value, its status packets edited as every answer's are."""
        kind, self._answering = self._answering, 0
        response, value = bytes(tracker.captured), self._answer_value
        tracker.captured.clear()
        reader = PacketReader()
        reader.receive_data(response)
        packets: list[Packet] = []
        while isinstance(packet := reader.next_event(), Packet):
            packets.append(packet)
        if len(packets) < 4 or packets[0].payload != b"\x01":  # not the one-column result: as it came
            capabilities = connection.capabilities
            return b"".join(
                frame(edited_status(VISIBLE, A_RESULT_OK, each.payload, capabilities), each.sequence_id)[0]
                for each in packets
            )
        out: list[bytes] = []
        row_at = len(packets) - 2
        for index, each in enumerate(packets):
            body = each.payload
            if index == row_at:
                text = str(value).encode()
                body = encode_lenenc_str(text) if kind == TEXT_ROW else b"\x00\x00" + _INT64.pack(value)
            elif index > 1:
                body = edited_status(VISIBLE, A_ROWS_END, body, connection.capabilities)
            out.append(frame(body, each.sequence_id)[0])
        return b"".join(out)

    def _pin(self, reason: str, commands: list[Command]) -> None:
        if reason not in self.pins:
            self.pins.append(reason)
        if reason not in self._pinned_said:
            self._pinned_said.add(reason)
            commands.append(Pinned(reason, reason))

    # --- to the server -------------------------------------------------------------------------
    def _send(self, payload: bytes, sequence_id: int, tag: int, out: list[bytes]) -> None:
        tracker, connection = self.tracker, self.connection
        assert tracker is not None and connection is not None
        if connection.to_close and tracker.at_safe_point:
            self._send_closes(connection, out)  # (never inside another exchange: LOCAL INFILE)
        tracker.send(Packet(sequence_id, sequence_id, payload), tag)
        out.append(frame(payload, sequence_id)[0])
        if sequence_id != 0:
            return
        if tag >= VISIBLE or tag == CAPTURED_ANSWER:
            connection.counted_for = self.serial
            self._counted_here = False
            if not connection.autocommit and payload[0] in _OPENING:
                connection.autocommit_open = not ends_transaction(payload)
        else:
            connection.counted_for = 0

    def _hidden(self, payload: bytes, tag: int, out: list[bytes]) -> None:
        """A command of the proxy's own (``tag`` < 0): its answer is not the client's."""
        self._send(payload, 0, tag, out)

    def _send_closes(self, connection: MySqlServerState, out: list[bytes]) -> None:
        closes, connection.to_close = connection.to_close, []
        for server_id in closes:
            out.append(frame(bytes([c.COM_STMT_CLOSE]) + UINT32.pack(server_id), 0)[0])

    def _flush(self, out: list[bytes], commands: list[Command]) -> None:
        if out:
            commands.append(SendToServer(b"".join(out)))
            out.clear()

    def _restore(self, connection: MySqlServerState, out: list[bytes]) -> None:
        """Bring the client's session onto ``connection``: one hidden statement for what
        another client changed (back to DEFAULT, or the login character set), one for the
        client's own values, COM_INIT_DB for its schema."""
        theirs, mine = connection.variables, self.variables
        defaults: dict[str, str | None] = {}
        for name in theirs:
            if name not in mine:
                defaults[name] = str(connection.login_collation_id) if name in CHARSET_VARIABLES else None
        wanted: dict[str, str | None] = {
            name: value for name, value in mine.items() if theirs.get(name) != value
        }
        escapes = connection.backslash_escapes
        if defaults:
            for name in defaults:
                del theirs[name]
            self._hidden(
                bytes([c.COM_QUERY]) + set_variables(defaults, backslash_escapes=escapes).encode(),
                RESTORE_DEFAULTS,
                out,
            )
        if wanted:
            for name, value in wanted.items():
                theirs[name] = value or ""
            self._hidden(
                bytes([c.COM_QUERY]) + set_variables(wanted, backslash_escapes=escapes).encode(),
                RESTORE_CLIENT,
                out,
            )
        if self.multi_statements != connection.multi_statements:
            connection.multi_statements = self.multi_statements
            option = b"\x00\x00" if self.multi_statements else b"\x01\x00"
            self._hidden(bytes([c.COM_SET_OPTION]) + option, RESTORE_CLIENT, out)
        schema = self.schema if self.schema is not None else connection.login_schema
        if schema and schema != connection.schema:  # ("": the schema was dropped, none is current)
            connection.schema = schema
            self._hidden(bytes([c.COM_INIT_DB]) + schema.encode(), RESTORE_CLIENT, out)

    # --- from the server -----------------------------------------------------------------------
    def _note(
        self, connection: MySqlServerState, tag: int, action: int, payload: bytes, commands: list[Command]
    ) -> Command | None:
        """What one status packet of a response says; a command that ends the client when the
        proxy's own command failed."""
        first = payload[0] if payload else -1
        if tag == CAPTURED_ANSWER:
            tag = VISIBLE  # the client's own command: only its bytes are edited here
        if action == A_ERR:
            if tag >= VISIBLE:
                self.row_count = -1
                if not self._reading_diagnostics:  # the error is what SHOW WARNINGS shows now
                    error = ErrPacket.decode(payload)
                    self.diagnostics = [("Error", error.code, error.message, error.sql_state)]
                    self.warnings_response = b""
                    self.warning_count = 0  # (the conditions SHOW WARNINGS shows: the error among them)
                    self._capture_due = True  # (SHOW WARNINGS as the server shows it, too)
                    connection.diagnostics_of = self.serial
                if tag > VISIBLE:
                    self.statements.pop(tag, None)  # a prepare the server refused
                return None
            if tag in (SIGNAL_DIAGNOSTICS, CAPTURED):
                return None  # (the error brought back; or none to read)
            if tag <= PREPARE_BASE:
                return self._prepare_failed(PREPARE_BASE - tag, payload, commands)
            error = ErrPacket.decode(payload)
            return self._fatal(f"could not bring the session onto a server connection: {error.message}")
        # ROW_COUNT() after the client's command: an OK's affected rows, -1 after a result set
        # (or an error, above), 0 after a prepare or an EOF status.
        if action == A_PREPARE_OK:
            if tag > VISIBLE:
                self.row_count = 0
            self._prepared(connection, tag, UINT32.unpack_from(payload, 1)[0], payload)
            return None
        if first == c.OK and (action in (A_RESULT_OK, A_STATUS)):
            capabilities = connection.capabilities
            affected_rows, last_insert_id, flags, warnings, _ = ok_fields(payload, capabilities)
            if tag >= VISIBLE:
                self.row_count = affected_rows
            self._status_reported(connection, tag, flags, warnings)
            if last_insert_id:
                connection.last_insert_id = last_insert_id
                if tag >= VISIBLE:
                    self.last_insert_id = last_insert_id
            if flags & c.SERVER_SESSION_STATE_CHANGED:
                state = OkPacket.decode(payload, capabilities).session_state
                if state:
                    self._session_changed(connection, tag, state)
        elif first == c.EOF and action in (A_ROWS_END, A_STATUS, A_DEFINITIONS_EOF) and len(payload) >= 5:
            warnings, flags = payload[1] | payload[2] << 8, payload[3] | payload[4] << 8
            self._status_reported(connection, tag, flags, warnings)
            if tag >= VISIBLE and action != A_DEFINITIONS_EOF:
                self.row_count = -1 if action == A_ROWS_END else 0
            if tag == CAPTURED and action == A_ROWS_END:
                assert self.tracker is not None
                self.warnings_response = bytes(self.tracker.captured)
                self.tracker.captured.clear()
                errors = [each for each in self.diagnostics if each[0] == "Error"]
                shown = read_conditions(self.warnings_response)
                if not shown:  # gone: nothing of the client's is on the connection any more
                    self.diagnostics, self.warnings_response = [], b""
                    if connection.diagnostics_of == self.serial:
                        connection.diagnostics_of = 0
                    return None
                # (an ERR's own SQLSTATE is better than HY000)
                self.diagnostics = errors + [each for each in shown if each[0] != "Error" or not errors]
        return None

    def _status_reported(self, connection: MySqlServerState, tag: int, flags: int, warnings: int) -> None:
        connection.status_flags = flags
        if tag >= VISIBLE and not self._reading_diagnostics:
            self.warning_count = warnings
            if warnings:
                self.diagnostics = []
                self.warnings_response = b""
                self._capture_due = True
                connection.diagnostics_of = self.serial
            elif connection.diagnostics_of == self.serial and connection.signalled_for != self.serial:
                # MariaDB shows the last conditions until a statement that uses a table,
                # whatever count the statements between report: look again whether they stay.
                self._capture_due = True
            else:
                # Elsewhere (or raised again there by a SIGNAL, whose text MariaDB may cut) a
                # statement that reports none is taken to have ended them, as one that uses a
                # table does: the one thing that is not exact (docs/architecture.md).
                self.diagnostics, self.warnings_response = [], b""
            connection.signalled_for = 0

    def _session_changed(self, connection: MySqlServerState, tag: int, state: bytes) -> None:
        changes = parse_session_state(state)
        mine = tag >= VISIBLE or tag == RESTORE_CLIENT
        for name, value in changes.variables.items():
            if name.startswith(TRACKING_PREFIX):
                continue
            if tag in (RESTORE_DEFAULTS, RESET_TRACKING):
                connection.variables.pop(name, None)  # back at the connection's baseline
                continue
            connection.variables[name] = value
            if tag >= VISIBLE or (mine and name in self.variables):  # (the server's spelling)
                self.variables[name] = value
        if changes.schema is not None:
            connection.schema = changes.schema
            if mine:
                self.schema = changes.schema
        if changes.characteristics is not None:
            connection.characteristics = changes.characteristics
        if connection.autocommit_open and (connection.autocommit or changes.state[:1] == "_"):
            connection.autocommit_open = False  # autocommit on again (which commits), or none open

    def _prepared(self, connection: MySqlServerState, tag: int, server_id: int, payload: bytes) -> None:
        statement_id = tag if tag > VISIBLE else PREPARE_BASE - tag
        statement = self.statements.get(statement_id)
        if statement is None:  # closed meanwhile: not needed here either
            connection.to_close.append(server_id)
        else:
            statement.parameters = payload[7] | payload[8] << 8 if len(payload) >= 9 else 0
            key = (self.serial, statement_id)
            old = connection.statements.pop(key, None)
            if old is not None:
                connection.to_close.append(old.server_id)
            connection.statements[key] = ServerCopy(server_id)
            if connection not in statement.copies:
                statement.copies.append(connection)
            while len(connection.statements) > STATEMENTS_PER_CONNECTION:
                _, evicted = connection.statements.popitem(last=False)
                connection.to_close.append(evicted.server_id)
        if tag < VISIBLE:
            self._preparing = False  # the command that waited for this copy goes on

    def _prepare_failed(self, statement_id: int, payload: bytes, commands: list[Command]) -> Command | None:
        """The statement could not be prepared on this connection (a table dropped since, say):
        the command that waited for it gets the server's error, as it would directly."""
        self._preparing = False
        waiting = self._pending.popleft() if self._pending else None
        if waiting is not None and waiting.payload[0] != c.COM_STMT_SEND_LONG_DATA:
            commands.append(SendToClient(frame(payload, 1)[0]))
        return None

    def _fatal(self, message: str, reason: EndReason = EndReason.SERVER_VIOLATION) -> CloseWithError:
        self._ended = True
        error = ErrPacket(c.ER_UNKNOWN_ERROR, f'pool "{self.pool_name}": {message}', "08S01")
        return CloseWithError(frame(error.encode(), 1)[0], reason, message)


def read_conditions(response: bytes) -> list[tuple[str, int, str, str]]:
    """The rows of a SHOW WARNINGS response (its packets, as the server sent them): level,
    code and message, and SQLSTATE 01000 / HY000 by level (SHOW WARNINGS does not say)."""
    reader = PacketReader()
    reader.receive_data(response)
    packets = []
    while isinstance(packet := reader.next_event(), Packet):
        packets.append(packet.payload)
    conditions = []
    for payload in packets[5:]:  # column count 3, three definitions, EOF
        if payload[:1] == bytes([c.EOF]) and len(payload) < 9:
            break
        level, offset = decode_lenenc_str(payload, 0)
        code, offset = decode_lenenc_str(payload, offset)
        message, _ = decode_lenenc_str(payload, offset)
        name = level.decode("utf-8", "replace")
        state = "HY000" if name == "Error" else "01000"
        conditions.append((name, int(code or b"0"), message.decode("utf-8", "replace"), state))
    return conditions
