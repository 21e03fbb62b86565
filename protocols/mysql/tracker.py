"""Follow a relayed MySQL session to know when the server connection is at a safe point.

Theory of operation: the relay hands every whole client packet to ``ResponseTracker.send``
as it goes to the server (a command opens an exchange with sequence id 0; later packets of
the exchange are LOCAL INFILE data), and shows it every server chunk as it arrives
(``receive_data``). Each command that owes a response queues the grammar of that response
(clients may pipeline).
The tracker walks the server stream by packet headers, looks at the first byte of each
logical packet and, in the current phase of the response, decides from that byte and the
packet length what the packet is. Only OK, EOF, ERR, column-count and prepare-OK packets,
all small, are kept whole (their status flags and counts move the grammar on); rows and
column definitions are skipped without being copied.

Response grammars (``_COMMAND_RESPONSES`` maps each command to one, ``_TRANSITIONS`` maps
each (phase, packet kind) to the action that follows):

* result (COM_QUERY, COM_STMT_EXECUTE): OK | ERR | LOCAL INFILE request (COM_QUERY only:
  the client then sends its file, ending with an empty packet, and the server answers OK or
  ERR) | column count, that many column definitions, EOF (not with CLIENT_DEPRECATE_EOF),
  rows, then EOF (or an OK with a 0xFE header under CLIENT_DEPRECATE_EOF) or ERR. A final
  OK/EOF with SERVER_MORE_RESULTS_EXISTS means another result follows. For COM_STMT_EXECUTE,
  SERVER_STATUS_CURSOR_EXISTS in the EOF after the column definitions ends the response: the
  rows come later, through COM_STMT_FETCH (rows, then EOF/OK or ERR).
* COM_STMT_PREPARE: ERR | prepare-OK, the parameter definitions (+EOF), the column
  definitions (+EOF); each EOF only without CLIENT_DEPRECATE_EOF and only after a non-empty
  list.
* COM_FIELD_LIST: column definitions until EOF (or 0xFE OK), or ERR.
* status commands (COM_PING, COM_INIT_DB, COM_RESET_CONNECTION, ...): one OK, EOF or ERR.
* COM_STATISTICS: one packet of text. COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA and COM_QUIT:
  nothing.
* anything else (COM_CHANGE_USER, replication, unknown bytes): the tracker gives up and the
  connection is never at a safe point again, so the proxy will not reuse it.

A 0xFE packet ends rows (rather than being a text row whose first column is a length-encoded
8-byte length) when it is shorter than 9 bytes, or with CLIENT_DEPRECATE_EOF shorter than
0xFFFFFF bytes: such a row holds at least 16 MiB, so its first physical packet is always a
full one. That is the rule libmysqlclient applies. An ERR packet always ends the response,
except a MariaDB progress report (code 0xFFFF, with MARIADB_CLIENT_PROGRESS).

Capabilities that change the grammar are refused up front, so the proxy must not negotiate
them with the server: CLIENT_COMPRESS (other framing), MariaDB's
MARIADB_CLIENT_CACHE_METADATA (a "metadata follows" byte after the column count, then
possibly no column definitions) and MySQL's CLIENT_OPTIONAL_RESULTSET_METADATA (likewise).
Sequence ids are not checked here: the relay forwards bytes, and both ends check them.

Editing (``editing=True``, transaction mode): the proxy's server connections track session
state, which the clients never asked for, and the proxy sends commands of its own. Each
command is sent with a tag: VISIBLE, HIDDEN (the proxy's own: its response is dropped) or,
for a client's COM_STMT_PREPARE, the statement id the client is told. ``receive_data`` then
returns what the client is to get: bytes of rows and definitions pass as they came (no copy
when a chunk needs no edit), status packets (OK, ERR, EOF, PREPARE_OK) are held whole and
edited (``edited_status``), and every status packet is noted in ``notes`` as ``(tag, action,
payload)`` for the proxy to read its session changes, warnings and statement ids.

Call ``send`` no later than the callback that forwards the command, so the tracker expects
the answer before any of it can arrive. COM_QUIT owes no response: it only sets
``quit_received`` (the server closes the connection after it). After a ProtocolViolation
the tracker is in no defined state: close the connection.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Final

from protocols.errors import LocalProtocolError, ProtocolViolation
from protocols.mysql.constants import (
    CLIENT_COMPRESS,
    CLIENT_DEPRECATE_EOF,
    CLIENT_OPTIONAL_RESULTSET_METADATA,
    CLIENT_SESSION_TRACK,
    COM_CREATE_DB,
    COM_DEBUG,
    COM_DROP_DB,
    COM_FIELD_LIST,
    COM_INIT_DB,
    COM_PING,
    COM_PROCESS_INFO,
    COM_PROCESS_KILL,
    COM_QUERY,
    COM_QUIT,
    COM_REFRESH,
    COM_RESET_CONNECTION,
    COM_SET_OPTION,
    COM_STATISTICS,
    COM_STMT_CLOSE,
    COM_STMT_EXECUTE,
    COM_STMT_FETCH,
    COM_STMT_PREPARE,
    COM_STMT_RESET,
    COM_STMT_SEND_LONG_DATA,
    EOF,
    ERR,
    LOCAL_INFILE,
    MARIADB_CLIENT_CACHE_METADATA,
    MARIADB_CLIENT_PROGRESS,
    MAX_PACKET_PAYLOAD,
    OK,
    PROGRESS_REPORT_CODE,
    SERVER_MORE_RESULTS_EXISTS,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_CURSOR_EXISTS,
    SERVER_STATUS_IN_TRANS,
)
from protocols.mysql.messages import EOF_PACKET_LIMIT, EofPacket, ErrPacket, OkPacket, command_byte, ok_fields
from protocols.mysql.packets import HEADER_SIZE, UINT32, Packet, decode_lenenc_int, frame, payload_length_at

# An OK packet carrying session-state changes (session_track_system_variables='*') can run
# to kilobytes; nothing the tracker keeps whole is legitimately anywhere near this.
MAX_TRACKED_PAYLOAD: Final = 1 << 20

# --- response grammars ---------------------------------------------------------------------
TEXT_RESULT: Final = "text result"
BINARY_RESULT: Final = "binary result"
FETCHED_ROWS: Final = "fetched rows"
PREPARE_RESPONSE: Final = "prepare response"
FIELD_LIST: Final = "field list"
STATUS: Final = "status"
ONE_PACKET: Final = "one packet"
NO_RESPONSE: Final = "no response"

_COMMAND_RESPONSES: Final[dict[int, str]] = {
    COM_QUERY: TEXT_RESULT,
    COM_PROCESS_INFO: TEXT_RESULT,
    COM_STMT_EXECUTE: BINARY_RESULT,
    COM_STMT_FETCH: FETCHED_ROWS,
    COM_STMT_PREPARE: PREPARE_RESPONSE,
    COM_FIELD_LIST: FIELD_LIST,
    COM_PING: STATUS,
    COM_INIT_DB: STATUS,
    COM_RESET_CONNECTION: STATUS,
    COM_STMT_RESET: STATUS,
    COM_SET_OPTION: STATUS,
    COM_PROCESS_KILL: STATUS,
    COM_REFRESH: STATUS,
    COM_DEBUG: STATUS,
    COM_CREATE_DB: STATUS,
    COM_DROP_DB: STATUS,
    COM_STATISTICS: ONE_PACKET,
    COM_STMT_CLOSE: NO_RESPONSE,
    COM_STMT_SEND_LONG_DATA: NO_RESPONSE,
    COM_QUIT: NO_RESPONSE,
}

# --- phases within a response (small ints: the tracker looks one up for every packet) -----
IDLE: Final = 0
RESULT_START: Final = 1  # OK | ERR | LOCAL INFILE | column count
DEFINITIONS: Final = 2  # a counted run of column or parameter definitions
DEFINITIONS_EOF: Final = 3  # classic EOF after a run of definitions
ROWS: Final = 4
INFILE_DATA: Final = 5  # the client owes its file; the server is silent
INFILE_RESULT: Final = 6
PREPARE_OK: Final = 7
UNTIL_EOF: Final = 8  # COM_FIELD_LIST: definitions up to the terminator
SINGLE_STATUS: Final = 9
SINGLE_PACKET: Final = 10
_PHASE_NAMES: Final = (
    "idle",
    "result start",
    "definitions",
    "definitions EOF",
    "rows",
    "infile data",
    "infile result",
    "prepare OK",
    "until EOF",
    "single status",
    "single packet",
)

_INITIAL_PHASES: Final[dict[str, int]] = {
    TEXT_RESULT: RESULT_START,
    BINARY_RESULT: RESULT_START,
    FETCHED_ROWS: ROWS,
    PREPARE_RESPONSE: PREPARE_OK,
    FIELD_LIST: UNTIL_EOF,
    STATUS: SINGLE_STATUS,
    ONE_PACKET: SINGLE_PACKET,
}

# --- kinds of server packet, told from the first byte and the length ---------------------
K_OK: Final = 0
K_ERR: Final = 1
K_TERMINATOR: Final = 2  # 0xFE and short: an EOF, or an OK ending rows (DEPRECATE_EOF)
K_LOCAL_INFILE: Final = 3
K_EMPTY: Final = 4
K_OTHER: Final = 5
_KIND_NAMES: Final = ("OK", "ERR", "EOF", "LOCAL INFILE", "empty", "other")
_KINDS: Final = len(_KIND_NAMES)

# --- what a packet does, by phase and kind (``_TRANSITIONS``; ``_act`` carries it out) ----
UNEXPECTED: Final = 0
A_ERR: Final = 1
A_RESULT_OK: Final = 2
A_LOCAL_INFILE: Final = 3
A_COLUMN_COUNT: Final = 4
A_DEFINITION: Final = 5
A_DEFINITIONS_EOF: Final = 6
A_SKIP: Final = 7  # a row or a definition the grammar does not count: nothing to learn
A_ROWS_END: Final = 8
A_PREPARE_OK: Final = 9
A_STATUS: Final = 10
A_SINGLE_PACKET: Final = 11
# --- editing (transaction mode) ------------------------------------------------------------
# What becomes of a response: a tag given with its command. A client prepare's tag is the
# statement id the client is told (the PREPARE_OK's id is rewritten to it).
VISIBLE: Final = 0
HIDDEN: Final = -1  # any negative tag: the response is the proxy's own, never sent on
CAPTURED: Final = -99  # hidden, and its bytes kept whole in ``captured``
CAPTURED_ANSWER: Final = -98  # the same; the proxy sends it on itself, edited
# What becomes of a packet of it.
PASS: Final = 0  # forwarded as it comes
HOLD: Final = 1  # kept whole, edited, then forwarded (only small status packets)
DROP: Final = 2  # the response is hidden
# Actions that read the packet: only these packets are kept whole.
_NEEDS_PAYLOAD: Final = frozenset(
    {A_ERR, A_RESULT_OK, A_COLUMN_COUNT, A_DEFINITIONS_EOF, A_ROWS_END, A_PREPARE_OK, A_STATUS}
)

_GRAMMAR_CHANGING_CAPABILITIES = (
    CLIENT_COMPRESS | CLIENT_OPTIONAL_RESULTSET_METADATA | MARIADB_CLIENT_CACHE_METADATA
)
_PREPARE_OK_BODY = struct.Struct("<xIHH")  # header, statement id, columns, parameters
# An EOF's status flags: after the header and the warning count; the flag is in the high byte.
EOF_STATUS_AT: Final = 3
EOF_STATUS_END: Final = 5
_STATE_CHANGED_HIGH: Final = SERVER_SESSION_STATE_CHANGED >> 8
_NOT_DECIDED = -1


class ResponseTracker:
    """Follows the server's responses to the commands a client sends; see the module docstring."""

    __slots__ = (
        "_action",
        "_body_left",
        "_capabilities",
        "_capture",
        "_chunk",
        "_count",
        "_deprecate_eof",
        "_disposition",
        "_editing",
        "_expected",
        "_first_byte",
        "_first_length",
        "_header",
        "_header_start",
        "_held_header",
        "_hold_start",
        "_in_packet",
        "_more_physical",
        "_out",
        "_phase",
        "_plan",
        "_run",
        "_status_flags",
        "_tags",
        "_terminator_limit",
        "_unknown",
        "captured",
        "notes",
        "quit_received",
    )

    def __init__(self, capabilities: int, *, status_flags: int = 0, editing: bool = False) -> None:
        refused = capabilities & _GRAMMAR_CHANGING_CAPABILITIES
        if refused:
            raise LocalProtocolError(f"capabilities {refused:#x} change the response grammar: not supported")
        self._capabilities = capabilities
        self._deprecate_eof = bool(capabilities & CLIENT_DEPRECATE_EOF)
        # A 0xFE packet shorter than this is a terminator (EOF, or OK ending rows), not a row.
        self._terminator_limit = MAX_PACKET_PAYLOAD if self._deprecate_eof else EOF_PACKET_LIMIT
        self._status_flags = status_flags
        self._unknown = False
        self.quit_received = False
        # Responses owed, oldest first; the head is the one being received.
        self._expected: deque[str] = deque()
        self._phase = IDLE
        self._count = 0  # definitions left in a DEFINITIONS phase
        self._plan: deque[tuple[int, int]] = deque()  # phases after the current one
        # Framing state.
        self._header = bytearray()  # a header split across chunks
        self._body_left = 0  # bytes of the current physical packet still to come
        self._more_physical = False  # the current physical packet is full: the packet goes on
        self._in_packet = False
        self._first_byte = _NOT_DECIDED
        self._first_length = 0
        self._action = UNEXPECTED
        self._capture: bytearray | None = None
        # Editing (transaction mode; see "Editing" in the module docstring).
        self._editing = editing
        self._tags: deque[int] = deque()  # one per response in _expected
        self.notes: list[tuple[int, int, bytes]] = []  # (tag, action, payload) of status packets
        self._disposition = PASS
        self._out: list[bytes] = []
        self._run = -1  # where pass-through bytes not yet in _out start, in the current chunk
        self._header_start = -1  # the current packet's header in the current chunk, or -1
        self._held_header = b""  # the header of a packet held whole, or one not yet decided
        self._hold_start = -1  # where the held packet starts in the current chunk, or -1
        self._chunk = b""  # the chunk being edited
        self.captured = bytearray()  # a CAPTURED (or CAPTURED_ANSWER) response, whole, for the proxy to read

    # --- what the proxy asks -----------------------------------------------------------------

    @property
    def at_safe_point(self) -> bool:
        """Every command has its complete response and the server stream is between packets."""
        return not (self._unknown or self._expected or self._in_packet or self._header)

    @property
    def awaiting_response(self) -> bool:
        return self._unknown or bool(self._expected)

    @property
    def unknown(self) -> bool:
        """A command the tracker cannot follow was sent: the connection is not reusable."""
        return self._unknown

    @property
    def status_flags(self) -> int:
        return self._status_flags

    @property
    def in_transaction(self) -> bool:
        return bool(self._status_flags & SERVER_STATUS_IN_TRANS)

    # --- client → server ---------------------------------------------------------------------

    def send(self, packet: Packet, tag: int = VISIBLE) -> None:
        """A client packet on its way to the server; ``tag`` (editing only) says what becomes of
        its response: VISIBLE, HIDDEN (negative) or a statement id for the PREPARE_OK."""
        if self._unknown:
            return
        payload = packet.payload
        # A command opens an exchange with sequence id 0. Ids wrap at 256, so a long LOCAL
        # INFILE file has packets with id 0 too: while the client owes its file, every packet
        # it sends is file data.
        if self._phase == INFILE_DATA or packet.sequence_id != 0 or not payload:
            self._infile_data(payload)
            return
        command = command_byte(payload)
        response = _COMMAND_RESPONSES.get(command)
        if response is None:
            self._unknown = True
            return
        if command == COM_QUIT:
            self.quit_received = True
        if response == NO_RESPONSE:
            return
        self._expected.append(response)
        self._tags.append(tag)
        if len(self._expected) == 1:
            self._start_response()

    def _infile_data(self, payload: bytes) -> None:
        if self._phase != INFILE_DATA:
            raise ProtocolViolation("client sent data outside a LOCAL INFILE transfer")
        if not payload:
            self._phase = INFILE_RESULT

    # --- server → client ---------------------------------------------------------------------

    def receive_data(self, data: bytes) -> bytes:
        """Server bytes on their way to the client; the bytes to send the client (``data``
        itself unless editing)."""
        if self._unknown:
            return data
        editing = self._editing
        if editing:
            self._out.clear()
            # Bytes of a packet already passing go on at once; a header held back waits.
            self._run = 0 if not self._held_header and self._disposition == PASS else -1
            self._header_start = -1
            self._hold_start = -1
            self._chunk = data
        position, size = 0, len(data)
        while position < size:
            if self._body_left == 0:
                if (
                    self._phase == ROWS
                    and not self._header
                    and not self._more_physical
                    and (not editing or self._tags[0] >= 0)
                ):
                    position = self._skip_rows(data, position)
                    if position == size:
                        break
                if not self._header and size - position >= HEADER_SIZE:
                    length = payload_length_at(data, position)
                    self._header_start = position
                    position += HEADER_SIZE
                else:
                    missing = HEADER_SIZE - len(self._header)
                    if editing:
                        self._flush_run(data, position)  # the header's bytes wait for its packet
                        self._header_start = -1
                    self._header += data[position : position + missing]
                    position += missing
                    if len(self._header) < HEADER_SIZE:
                        break
                    length = payload_length_at(bytes(self._header), 0)
                    if editing:
                        self._held_header = bytes(self._header)
                    self._header.clear()
                self._start_physical(length, data, position)
                continue
            if self._first_byte == _NOT_DECIDED:
                self._decide(data[position], data, position)
            take = min(self._body_left, size - position)
            if self._capture is not None:
                self._capture += data[position : position + take]
            if editing and self._disposition == DROP and CAPTURED <= self._tags[0] <= CAPTURED_ANSWER:
                self.captured += data[position : position + take]
            position += take
            self._body_left -= take
            if self._body_left == 0:
                self._end_physical()
                if editing and self._run < 0 and self._disposition == PASS:
                    self._run = position
        if not editing:
            return data
        start = self._header_start
        if self._in_packet and self._first_byte == _NOT_DECIDED and start >= 0:
            # A header whose packet's first byte is still to come waits for its disposition.
            self._held_header = data[start : start + HEADER_SIZE]
            self._flush_run(data, start)
        elif self._in_packet and self._disposition == HOLD:
            self._flush_run(data, self._hold_start)  # a held packet goes on once it is whole
        else:
            self._flush_run(data, size - len(self._header))  # (a partial header waits too)
        self._chunk = b""
        out = self._out
        if len(out) == 1 and out[0] is data:
            return data
        return b"".join(out)

    def _flush_run(self, data: bytes, end: int) -> None:
        """Pass-through bytes from the run's start up to ``end`` go out."""
        run = self._run
        if run >= 0:
            if run == 0 and end == len(data):
                self._out.append(data)  # the whole chunk: no copy
            elif end > run:
                self._out.append(data[run:end])
            self._run = -1

    def _skip_rows(self, data: bytes, position: int) -> int:
        """Step over the whole rows at ``position``; return where the first other packet starts.

        The fast path for result sets, one packet per row: a row that is all here, fits one
        physical packet and is neither ERR nor a terminator is what ``_skip`` would get
        through the general path, which takes everything else (and learns nothing from rows).
        """
        size = len(data)
        terminator_limit = self._terminator_limit
        while size - position > HEADER_SIZE:
            length = payload_length_at(data, position)
            end = position + HEADER_SIZE + length
            if length == 0 or length == MAX_PACKET_PAYLOAD or end > size:
                break
            first_byte = data[position + HEADER_SIZE]
            if first_byte == ERR or (first_byte == EOF and length < terminator_limit):
                break
            position = end
        return position

    def _start_physical(self, length: int, data: bytes = b"", position: int = 0) -> None:
        continues_packet = self._more_physical
        self._more_physical = length == MAX_PACKET_PAYLOAD
        self._body_left = length
        if not continues_packet:
            if not self._expected:
                raise ProtocolViolation("server sent a packet while no response was awaited")
            if self._phase == INFILE_DATA:
                raise ProtocolViolation("server sent a packet before the client's LOCAL INFILE data ended")
            self._in_packet = True
            self._first_length = length
            self._first_byte = _NOT_DECIDED
            if length == 0:
                self._decide(_NOT_DECIDED, data, position)
        elif self._editing:
            self._place_header(data, position)  # a packet's next physical part goes where its first went
        if length == 0:
            self._end_physical()

    def _decide(self, first_byte: int, data: bytes = b"", position: int = 0) -> None:
        """Look up what the packet starting with ``first_byte`` means in the current phase."""
        self._first_byte = first_byte
        kind = self._kind(first_byte, self._first_length)
        action = _TRANSITIONS[self._phase * _KINDS + kind]
        if action == UNEXPECTED:
            raise ProtocolViolation(
                f"unexpected {_KIND_NAMES[kind]} packet in phase {_PHASE_NAMES[self._phase]!r} "
                f"of a {self._expected[0]}"
            )
        self._action = action
        if action in _NEEDS_PAYLOAD:
            if self._first_length > MAX_TRACKED_PAYLOAD or self._first_length == MAX_PACKET_PAYLOAD:
                raise ProtocolViolation(
                    f"{_KIND_NAMES[kind]} packet of {self._first_length} bytes is implausibly large"
                )
            self._capture = bytearray()
        if self._editing:
            if self._tags[0] < 0:
                self._disposition = DROP
            elif action in _NEEDS_PAYLOAD:
                self._disposition = HOLD
            else:
                self._disposition = PASS
            self._place_header(data, position)

    def _place_header(self, data: bytes, body_start: int) -> None:
        """The current physical packet's header, now that its disposition is known: part of
        the run (PASS), kept for re-framing (HOLD) or dropped (DROP). It is in ``data`` just
        before ``body_start``, or, when it came in an earlier chunk, in ``_held_header``."""
        start = self._header_start
        in_chunk = start >= 0 and start + HEADER_SIZE == body_start
        disposition = self._disposition
        if disposition == PASS:
            if self._run < 0:
                if in_chunk:
                    self._run = start
                else:
                    self._out.append(self._held_header)
                    self._run = body_start
            self._held_header = b""
            return
        if disposition == HOLD:
            # Kept in the run while it may pass unchanged; cut out of it if edited (or whole
            # only in a later chunk: then sent, edited or not, with its header kept here).
            if in_chunk:
                self._held_header = data[start:body_start]
                self._hold_start = start
                if self._run < 0:
                    self._run = start
            return
        if in_chunk:
            self._flush_run(data, start)
        if CAPTURED <= self._tags[0] <= CAPTURED_ANSWER:
            self.captured += data[start:body_start] if in_chunk else self._held_header
        self._run = -1
        self._held_header = b""

    def _kind(self, first_byte: int, length: int) -> int:
        if length == 0:
            return K_EMPTY
        if first_byte == ERR:
            return K_ERR
        if first_byte == EOF and length < self._terminator_limit:
            return K_TERMINATOR
        if first_byte == OK:
            return K_OK
        if first_byte == LOCAL_INFILE:
            return K_LOCAL_INFILE
        return K_OTHER

    def _end_physical(self) -> None:
        if self._more_physical:
            return
        action, payload = self._action, self._capture
        self._action, self._capture = UNEXPECTED, None
        self._in_packet = False
        whole = bytes(payload) if payload is not None else b""
        if not self._editing:
            self._act(action, whole)
            return
        tag, disposition = self._tags[0], self._disposition
        self._act(action, whole)
        self._disposition = PASS
        if payload is not None:
            self.notes.append((tag, action, whole))
        if disposition == HOLD:
            edited = edited_status(tag, action, whole, self._capabilities)
            if edited is not whole or self._hold_start < 0:
                # Edited, or begun in an earlier chunk: framed again, in place of the original.
                if self._hold_start >= 0:
                    self._flush_run(self._chunk, self._hold_start)
                self._run = -1
                sequence_id = self._held_header[3] if len(self._held_header) == HEADER_SIZE else 0
                self._out.append(frame(edited, sequence_id)[0])
            self._hold_start = -1
        self._held_header = b""

    def _act(self, action: int, payload: bytes) -> None:
        """What a whole packet does, decided at its first byte (see ``_TRANSITIONS``)."""
        if action == A_SKIP:
            return
        if action == A_DEFINITION:
            self._on_definition()
        elif action == A_COLUMN_COUNT:
            self._on_column_count(payload)
        elif action == A_DEFINITIONS_EOF:
            self._on_definitions_eof(payload)
        elif action == A_ROWS_END:
            self._end_result(self._terminator_status(payload))
        elif action == A_RESULT_OK:
            self._end_result(ok_fields(payload, self._capabilities)[2])
        elif action == A_ERR:
            self._on_err(payload)
        elif action == A_STATUS:
            self._on_status(payload)
        elif action == A_PREPARE_OK:
            self._on_prepare_ok(payload)
        elif action == A_LOCAL_INFILE:
            self._on_local_infile()
        else:  # A_SINGLE_PACKET (UNEXPECTED never gets this far: _decide refuses it)
            self._finish_response()

    # --- grammar -----------------------------------------------------------------------------

    def _start_response(self) -> None:
        self._phase = _INITIAL_PHASES[self._expected[0]]
        self._plan.clear()

    def _finish_response(self) -> None:
        self._expected.popleft()
        self._tags.popleft()
        if self._expected:
            self._start_response()
        else:
            self._phase = IDLE
            self._plan.clear()

    def _advance(self) -> None:
        """Move on to the next planned phase, or end the response when none is left."""
        if not self._plan:
            self._finish_response()
            return
        self._phase, self._count = self._plan.popleft()
        if self._phase == DEFINITIONS and self._count == 0:
            self._advance()

    def _end_result(self, status_flags: int) -> None:
        self._status_flags = status_flags
        if status_flags & SERVER_MORE_RESULTS_EXISTS and self._expected[0] in (TEXT_RESULT, BINARY_RESULT):
            self._phase = RESULT_START
            self._plan.clear()
        else:
            self._finish_response()

    def _terminator_status(self, payload: bytes) -> int:
        if self._deprecate_eof:
            return ok_fields(payload, self._capabilities)[2]
        return EofPacket.decode(payload).status_flags

    def _on_err(self, payload: bytes) -> None:
        error = ErrPacket.decode(payload)
        if error.code == PROGRESS_REPORT_CODE and self._capabilities & MARIADB_CLIENT_PROGRESS:
            return
        self._finish_response()

    def _on_local_infile(self) -> None:
        if self._expected[0] != TEXT_RESULT:
            raise ProtocolViolation("LOCAL INFILE request in answer to a prepared statement")
        self._phase = INFILE_DATA

    def _on_column_count(self, payload: bytes) -> None:
        count, offset = decode_lenenc_int(payload, 0)
        if count is None or count == 0 or offset != len(payload):
            raise ProtocolViolation("malformed column count")
        self._plan.clear()
        self._plan.append((DEFINITIONS, count))
        if not self._deprecate_eof:
            self._plan.append((DEFINITIONS_EOF, 0))
        self._plan.append((ROWS, 0))
        self._advance()

    def _on_definition(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._advance()

    def _on_definitions_eof(self, payload: bytes) -> None:
        self._status_flags = EofPacket.decode(payload).status_flags
        if self._expected[0] == BINARY_RESULT and self._status_flags & SERVER_STATUS_CURSOR_EXISTS:
            self._finish_response()  # rows come later, through COM_STMT_FETCH
        else:
            self._advance()

    def _on_prepare_ok(self, payload: bytes) -> None:
        if len(payload) < _PREPARE_OK_BODY.size:
            raise ProtocolViolation("truncated prepare OK")
        _, columns, parameters = _PREPARE_OK_BODY.unpack_from(payload)
        self._plan.clear()
        for count in (parameters, columns):
            if count:
                self._plan.append((DEFINITIONS, count))
                if not self._deprecate_eof:
                    self._plan.append((DEFINITIONS_EOF, 0))
        self._advance()

    def _on_status(self, payload: bytes) -> None:
        if payload[0] == OK:
            self._status_flags = ok_fields(payload, self._capabilities)[2]
        else:
            self._status_flags = self._terminator_status(payload)
        self._finish_response()


def edited_status(tag: int, action: int, payload: bytes, capabilities: int) -> bytes:
    """A status packet as the client is to see it: session-state changes (which only the
    proxy asked for) taken out of OK packets, their flag out of every status, and a client
    prepare's statement id in its PREPARE_OK."""
    if not payload:
        return payload
    first = payload[0]
    if first == OK and action in (A_RESULT_OK, A_STATUS):
        if not ok_fields(payload, capabilities)[2] & SERVER_SESSION_STATE_CHANGED:
            return payload
        ok = OkPacket.decode(payload, capabilities)
        if ok.status_flags & SERVER_SESSION_STATE_CHANGED:
            flags = ok.status_flags & ~SERVER_SESSION_STATE_CHANGED
            stripped = OkPacket(ok.affected_rows, ok.last_insert_id, flags, ok.warnings, ok.info)
            return stripped.encode(capabilities & ~CLIENT_SESSION_TRACK)
        return payload
    if first == EOF and len(payload) >= EOF_STATUS_END and payload[EOF_STATUS_AT + 1] & _STATE_CHANGED_HIGH:
        edited = bytearray(payload)
        edited[EOF_STATUS_AT + 1] &= ~_STATE_CHANGED_HIGH & 0xFF
        return bytes(edited)
    if action == A_PREPARE_OK and tag > 0:
        return payload[:1] + UINT32.pack(tag) + payload[5:]
    return payload


def _transition_table(transitions: dict[tuple[int, int], int]) -> bytes:
    """``transitions`` as bytes indexed by ``phase * _KINDS + kind``; UNEXPECTED elsewhere."""
    table = bytearray(len(_PHASE_NAMES) * _KINDS)
    for (phase, kind), action in transitions.items():
        table[phase * _KINDS + kind] = action
    return bytes(table)


_DEFINITION_KINDS = (K_OK, K_LOCAL_INFILE, K_OTHER)
_TRANSITIONS: Final = _transition_table(
    {
        (RESULT_START, K_ERR): A_ERR,
        (RESULT_START, K_OK): A_RESULT_OK,
        (RESULT_START, K_LOCAL_INFILE): A_LOCAL_INFILE,
        (RESULT_START, K_OTHER): A_COLUMN_COUNT,
        (DEFINITIONS, K_ERR): A_ERR,
        **{(DEFINITIONS, kind): A_DEFINITION for kind in _DEFINITION_KINDS},
        (DEFINITIONS_EOF, K_ERR): A_ERR,
        (DEFINITIONS_EOF, K_TERMINATOR): A_DEFINITIONS_EOF,
        (ROWS, K_ERR): A_ERR,
        (ROWS, K_TERMINATOR): A_ROWS_END,
        **{(ROWS, kind): A_SKIP for kind in _DEFINITION_KINDS},
        (INFILE_RESULT, K_ERR): A_ERR,
        (INFILE_RESULT, K_OK): A_RESULT_OK,
        (PREPARE_OK, K_ERR): A_ERR,
        (PREPARE_OK, K_OK): A_PREPARE_OK,
        (UNTIL_EOF, K_ERR): A_ERR,
        (UNTIL_EOF, K_TERMINATOR): A_STATUS,
        **{(UNTIL_EOF, kind): A_SKIP for kind in _DEFINITION_KINDS},
        (SINGLE_STATUS, K_ERR): A_ERR,
        (SINGLE_STATUS, K_OK): A_STATUS,
        (SINGLE_STATUS, K_TERMINATOR): A_STATUS,
        **{(SINGLE_PACKET, kind): A_SINGLE_PACKET for kind in range(_KINDS)},
    }
)
