"""ResponseTracker in editing mode (transaction pooling): commands sent with a tag, raw server
bytes in, exactly the bytes the client is to get out.

Server answers are built as a server encodes them for a transaction-mode upstream connection
(CLIENT_SESSION_TRACK on, CLIENT_DEPRECATE_EOF never), framed with their sequence ids.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.mysql.constants import (
    MAX_PACKET_PAYLOAD,
    SERVER_MORE_RESULTS_EXISTS,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_AUTOCOMMIT,
    SERVER_STATUS_IN_TRANS,
)
from protocols.mysql.messages import EofPacket, ErrPacket, OkPacket
from protocols.mysql.packets import Packet, encode_lenenc_str, frame
from protocols.mysql.session_track import (
    SESSION_TRACK_SCHEMA,
    SESSION_TRACK_STATE_CHANGE,
    SESSION_TRACK_SYSTEM_VARIABLES,
)
from protocols.mysql.tracker import (
    A_COLUMN_COUNT,
    A_DEFINITIONS_EOF,
    A_ERR,
    A_PREPARE_OK,
    A_RESULT_OK,
    A_ROWS_END,
    A_STATUS,
    HIDDEN,
    VISIBLE,
    ResponseTracker,
)
from tests.unit.test_mysql_pooling import CLIENT_SIDE, UPSTREAM

AUTOCOMMIT = SERVER_STATUS_AUTOCOMMIT
IN_TRANS = SERVER_STATUS_AUTOCOMMIT | SERVER_STATUS_IN_TRANS
MORE = SERVER_MORE_RESULTS_EXISTS
CHANGED = SERVER_SESSION_STATE_CHANGED

# --- client commands ------------------------------------------------------------------------
QUERY = b"\x03SELECT a, b FROM t"
UPDATE = b"\x03UPDATE t SET a = 1"
SET_TIME_ZONE = b"\x03SET @@session.time_zone = '+05:00'"
MULTI = b"\x03UPDATE t SET a = 2; SELECT a, b FROM t"
PREPARE = b"\x16SELECT a FROM t WHERE id = ?"
FIELD_LIST = b"\x04t\x00"
PING = b"\x0e"
INIT_DB = b"\x02app"


def command(payload: bytes) -> Packet:
    return Packet(0, 0, payload)


# --- server packets -------------------------------------------------------------------------
def column(name: bytes) -> bytes:
    """A column (or parameter) definition as MySQL sends it."""
    return (
        b"\x03def"
        + encode_lenenc_str(b"app")
        + encode_lenenc_str(b"t") * 2
        + encode_lenenc_str(name) * 2
        + b"\x0c\x2d\x00\x04\x00\x00\x00\xfd\x01\x00\x00\x00\x00"
    )


def text_row(*values: bytes) -> bytes:
    return b"".join(encode_lenenc_str(value) for value in values)


def ok(
    status: int = AUTOCOMMIT,
    *,
    affected_rows: int = 0,
    last_insert_id: int = 0,
    warnings: int = 0,
    info: bytes = b"",
    session_state: bytes = b"",
) -> bytes:
    """An OK as the upstream sends it (session state needs SERVER_SESSION_STATE_CHANGED)."""
    packet = OkPacket(affected_rows, last_insert_id, status, warnings, info, session_state)
    return packet.encode(UPSTREAM)


def eof(status: int = AUTOCOMMIT, warnings: int = 0) -> bytes:
    return EofPacket(warnings, status).encode()


def system_variable(name: bytes, value: bytes) -> bytes:
    """One session-state change: a system variable's new value."""
    body = encode_lenenc_str(name) + encode_lenenc_str(value)
    return bytes([SESSION_TRACK_SYSTEM_VARIABLES]) + encode_lenenc_str(body)


def schema(name: bytes) -> bytes:
    return bytes([SESSION_TRACK_SCHEMA]) + encode_lenenc_str(encode_lenenc_str(name))


STATE_CHANGED = bytes([SESSION_TRACK_STATE_CHANGE]) + encode_lenenc_str(b"1")


def prepare_ok(statement_id: int, columns: int, parameters: int, warnings: int = 0) -> bytes:
    return b"\x00" + struct.pack("<IHHxH", statement_id, columns, parameters, warnings)


ERROR = ErrPacket(1146, "Table 'app.t' doesn't exist", "42S02").encode()


def wire(*payloads: bytes, sequence_id: int = 1) -> bytes:
    """Consecutive packets of one response, framed from ``sequence_id`` on."""
    parts = []
    for payload in payloads:
        packet, sequence_id = frame(payload, sequence_id)
        parts.append(packet)
    return b"".join(parts)


def result_set(*rows: bytes, status: int = AUTOCOMMIT) -> list[bytes]:
    return [b"\x02", column(b"a"), column(b"b"), eof(), *rows, eof(status)]


ROWS = [text_row(b"%d" % n, b"row %d" % n) for n in range(5)]
RESULT_SET = wire(*result_set(*ROWS))
PREPARE_ANSWER = [prepare_ok(42, 1, 1), column(b"?"), eof(), column(b"a"), eof()]


def tracker_for(*commands: tuple[bytes, int]) -> ResponseTracker:
    tracker = ResponseTracker(UPSTREAM, status_flags=AUTOCOMMIT, editing=True)
    for payload, tag in commands:
        tracker.send(command(payload), tag)
    return tracker


def chunked(stream: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``stream`` cut at ``cuts`` (offsets, in any order, repeats allowed: empty chunks too)."""
    start = 0
    for cut in sorted(cuts):
        yield stream[start:cut]
        start = cut
    yield stream[start:]


def fed(tracker: ResponseTracker, chunks: Iterator[bytes] | list[bytes]) -> bytes:
    return b"".join(tracker.receive_data(chunk) for chunk in chunks)


# --- scripts: commands with their tags, the server's stream, what the client gets ----------


@dataclass(frozen=True)
class Script:
    name: str
    commands: tuple[tuple[bytes, int], ...]
    server: bytes
    client: bytes


def _scripts() -> list[Script]:
    with_state = ok(
        CHANGED | AUTOCOMMIT,
        affected_rows=1,
        info=b"Rows matched: 1  Changed: 1  Warnings: 0",
        session_state=system_variable(b"time_zone", b"+05:00") + STATE_CHANGED,
    )
    stripped = OkPacket(1, 0, AUTOCOMMIT, 0, b"Rows matched: 1  Changed: 1  Warnings: 0").encode(CLIENT_SIDE)
    hidden_set = wire(ok(CHANGED | AUTOCOMMIT, session_state=system_variable(b"time_zone", b"+05:00")))
    multi = [ok(MORE | AUTOCOMMIT, affected_rows=1), *result_set(*ROWS)]
    return [
        Script(
            "ok",
            ((UPDATE, VISIBLE),),
            wire(ok(affected_rows=3, info=b"Rows matched: 3")),
            wire(ok(affected_rows=3, info=b"Rows matched: 3")),
        ),
        Script("err", ((QUERY, VISIBLE),), wire(ERROR), wire(ERROR)),
        Script("result set", ((QUERY, VISIBLE),), RESULT_SET, RESULT_SET),
        Script("empty result set", ((QUERY, VISIBLE),), wire(*result_set()), wire(*result_set())),
        Script("multi-results", ((MULTI, VISIBLE),), wire(*multi), wire(*multi)),
        Script(
            "field list",
            ((FIELD_LIST, VISIBLE),),
            wire(column(b"a"), column(b"b"), eof()),
            wire(column(b"a"), column(b"b"), eof()),
        ),
        Script("session state stripped", ((UPDATE, VISIBLE),), wire(with_state), wire(stripped)),
        Script(
            "EOF flag cleared",
            ((QUERY, VISIBLE),),
            wire(*result_set(*ROWS, status=CHANGED | AUTOCOMMIT)),
            RESULT_SET,
        ),
        Script(
            "prepare renumbered",
            ((PREPARE, 7),),
            wire(*PREPARE_ANSWER),
            wire(prepare_ok(7, 1, 1), *PREPARE_ANSWER[1:]),
        ),
        Script("hidden", ((SET_TIME_ZONE, HIDDEN),), hidden_set, b""),
        Script("hidden result set", ((QUERY, HIDDEN),), RESULT_SET, b""),
        Script("hidden prepare", ((PREPARE, -1001),), wire(*PREPARE_ANSWER), b""),
        Script(
            "hidden between visible",
            ((UPDATE, VISIBLE), (SET_TIME_ZONE, -2), (QUERY, -3), (QUERY, VISIBLE), (PING, -5), (PREPARE, 3)),
            wire(with_state) + hidden_set + RESULT_SET + RESULT_SET + wire(ok()) + wire(*PREPARE_ANSWER),
            wire(stripped) + RESULT_SET + wire(prepare_ok(3, 1, 1), *PREPARE_ANSWER[1:]),
        ),
    ]


SCRIPTS = _scripts()
BY_NAME = {script.name: script for script in SCRIPTS}
EACH_SCRIPT = pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
UNEDITED = [
    BY_NAME[name] for name in ("ok", "err", "result set", "empty result set", "multi-results", "field list")
]


# --- pass-through ---------------------------------------------------------------------------


@pytest.mark.parametrize("script", UNEDITED, ids=[script.name for script in UNEDITED])
def test_a_visible_answer_needing_no_edit_is_the_very_bytes_object_it_came_in(script: Script) -> None:
    tracker = tracker_for(*script.commands)
    out = tracker.receive_data(script.server)
    assert out == script.server
    assert out is script.server  # no copy
    assert tracker.at_safe_point


def test_a_ping_s_ok_is_the_very_bytes_object_it_came_in() -> None:
    tracker = tracker_for((PING, VISIBLE))
    answer = wire(ok())
    assert tracker.receive_data(answer) is answer


def test_rows_in_a_chunk_of_their_own_pass_as_the_same_object() -> None:
    tracker = tracker_for((QUERY, VISIBLE))
    head = wire(b"\x02", column(b"a"), column(b"b"), eof())
    rows = wire(*ROWS, sequence_id=5)
    end = wire(eof(), sequence_id=10)
    assert tracker.receive_data(head) == head
    assert tracker.receive_data(rows) is rows  # the fast path: rows are not looked at
    assert tracker.receive_data(end) == end
    assert tracker.at_safe_point


# --- any chunking gives the same bytes ----------------------------------------------------


@EACH_SCRIPT
def test_the_whole_stream_gives_what_the_client_is_to_get(script: Script) -> None:
    tracker = tracker_for(*script.commands)
    assert tracker.receive_data(script.server) == script.client
    assert tracker.at_safe_point


@EACH_SCRIPT
def test_every_split_into_two_chunks_gives_the_same_bytes(script: Script) -> None:
    for cut in range(len(script.server) + 1):
        tracker = tracker_for(*script.commands)
        assert fed(tracker, chunked(script.server, [cut])) == script.client, f"cut at {cut}"
        assert tracker.at_safe_point


@EACH_SCRIPT
def test_one_byte_at_a_time_gives_the_same_bytes(script: Script) -> None:
    tracker = tracker_for(*script.commands)
    stream = script.server
    assert fed(tracker, [stream[i : i + 1] for i in range(len(stream))]) == script.client
    assert tracker.at_safe_point


@given(st.sampled_from(SCRIPTS), st.data())
@settings(max_examples=400, deadline=None)
def test_any_chunking_gives_the_same_bytes(script: Script, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(script.server)), max_size=12))
    tracker = tracker_for(*script.commands)
    assert fed(tracker, chunked(script.server, cuts)) == script.client
    assert tracker.at_safe_point


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_any_chunking_of_several_scripts_pipelined_gives_their_bytes_in_order(data: st.DataObject) -> None:
    scripts = data.draw(st.lists(st.sampled_from(SCRIPTS), min_size=1, max_size=4))
    stream = b"".join(script.server for script in scripts)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=16))
    tracker = tracker_for(*(pair for script in scripts for pair in script.commands))
    assert fed(tracker, chunked(stream, cuts)) == b"".join(script.client for script in scripts)
    assert tracker.at_safe_point


# --- edits ----------------------------------------------------------------------------------


def test_an_ok_loses_its_session_state_and_flag_and_keeps_its_info_and_sequence_id() -> None:
    tracker = tracker_for((UPDATE, VISIBLE))
    block = system_variable(b"time_zone", b"+05:00") + schema(b"app") + STATE_CHANGED
    reported = OkPacket(2, 9, CHANGED | IN_TRANS, 1, b"Rows matched: 2  Changed: 2  Warnings: 1", block)
    answer = frame(reported.encode(UPSTREAM), 1)[0]
    out = tracker.receive_data(answer)
    seen = OkPacket(2, 9, IN_TRANS, 1, b"Rows matched: 2  Changed: 2  Warnings: 1").encode(CLIENT_SIDE)
    assert out == frame(seen, 1)[0]
    assert out[:4] == struct.pack("<I", len(seen) | 1 << 24)  # re-framed: new length, same sequence id
    assert OkPacket.decode(out[4:], CLIENT_SIDE) == OkPacket(
        2, 9, IN_TRANS, 1, b"Rows matched: 2  Changed: 2  Warnings: 1"
    )
    assert tracker.in_transaction  # the status the tracker follows is the server's


def test_an_ok_without_info_loses_the_empty_info_that_came_before_its_state() -> None:
    tracker = tracker_for((SET_TIME_ZONE, VISIBLE))
    answer = wire(ok(CHANGED | AUTOCOMMIT, session_state=system_variable(b"time_zone", b"+05:00")))
    assert tracker.receive_data(answer) == b"\x07\x00\x00\x01" + b"\x00\x00\x00\x02\x00\x00\x00"


def test_the_ok_of_a_later_result_keeps_its_sequence_id_when_edited() -> None:
    tracker = tracker_for((MULTI, VISIBLE))
    first = ok(CHANGED | MORE | AUTOCOMMIT, affected_rows=1, session_state=STATE_CHANGED)
    rows = result_set(*ROWS, status=MORE | AUTOCOMMIT)
    out = tracker.receive_data(wire(*rows, first, ok(CHANGED | AUTOCOMMIT, session_state=STATE_CHANGED)))
    # (a result set first, then two OKs: sequence ids run on through the whole response)
    expected = wire(*rows, OkPacket(1, 0, MORE | AUTOCOMMIT).encode(CLIENT_SIDE), ok())
    assert out == expected


def test_an_eof_loses_the_state_changed_flag_and_nothing_else() -> None:
    tracker = tracker_for((QUERY, VISIBLE))
    last = EofPacket(3, CHANGED | IN_TRANS | MORE).encode()
    more = wire(*result_set(*ROWS[:1]), sequence_id=8)
    out = tracker.receive_data(wire(*result_set(*ROWS[:2])[:-1], last) + more)
    assert out == wire(*result_set(*ROWS[:2])[:-1], EofPacket(3, IN_TRANS | MORE).encode()) + more


def test_a_status_command_s_eof_loses_the_state_changed_flag() -> None:
    tracker = tracker_for((FIELD_LIST, VISIBLE))
    out = tracker.receive_data(wire(column(b"a"), eof(CHANGED | AUTOCOMMIT)))
    assert out == wire(column(b"a"), eof(AUTOCOMMIT))


def test_a_client_prepare_gets_its_own_statement_id_in_place_of_the_server_s() -> None:
    tracker = tracker_for((PREPARE, 7))
    answer = wire(prepare_ok(0x01020304, 1, 1, warnings=2), *PREPARE_ANSWER[1:])
    assert tracker.receive_data(answer) == wire(prepare_ok(7, 1, 1, warnings=2), *PREPARE_ANSWER[1:])


def test_a_prepare_refused_passes_its_err() -> None:
    tracker = tracker_for((PREPARE, 7))
    assert tracker.receive_data(wire(ERROR)) == wire(ERROR)
    assert tracker.at_safe_point


def test_a_prepare_ok_alone_in_a_chunk_still_gets_the_client_s_id() -> None:
    tracker = tracker_for((PREPARE, 7))
    alone = wire(prepare_ok(42, 1, 1))
    assert tracker.receive_data(alone) == wire(prepare_ok(7, 1, 1))
    assert tracker.receive_data(wire(*PREPARE_ANSWER[1:], sequence_id=2)) == wire(
        *PREPARE_ANSWER[1:], sequence_id=2
    )


def test_a_last_eof_alone_in_a_chunk_still_loses_the_state_changed_flag() -> None:
    tracker = tracker_for((QUERY, VISIBLE))
    head = wire(*result_set(*ROWS)[:-1])
    assert tracker.receive_data(head) == head
    assert tracker.receive_data(wire(eof(CHANGED | AUTOCOMMIT), sequence_id=10)) == wire(
        eof(), sequence_id=10
    )


def test_an_edited_ok_whose_rest_is_as_long_as_the_edited_packet_is_sent_edited() -> None:
    # 19 bytes of the OK's body come first; the other 48 bytes are as many as the whole
    # edited packet: the client still gets the edited packet, not the raw rest.
    script = BY_NAME["session state stripped"]
    tracker = tracker_for(*script.commands)
    cut = len(script.server) - len(script.client)
    assert tracker.receive_data(script.server[:cut]) == b""
    assert tracker.receive_data(script.server[cut:]) == script.client


def test_a_column_count_whose_header_was_split_and_whose_chunk_ends_with_it_is_sent_whole() -> None:
    tracker = tracker_for((QUERY, VISIBLE))
    assert tracker.receive_data(RESULT_SET[:1]) == b""
    # 3 bytes of header, the 1-byte count, 1 byte of the next header: as long as the count's packet
    assert tracker.receive_data(RESULT_SET[1:6]) == RESULT_SET[:5]
    assert tracker.receive_data(RESULT_SET[6:]) == RESULT_SET[5:]


# --- hidden responses -----------------------------------------------------------------------


@pytest.mark.parametrize("tag", [HIDDEN, -2, -1001])
@pytest.mark.parametrize(
    ("payload", "answer"),
    [
        (
            SET_TIME_ZONE,
            wire(ok(CHANGED | AUTOCOMMIT, session_state=system_variable(b"time_zone", b"+05:00"))),
        ),
        (QUERY, RESULT_SET),
        (QUERY, wire(ERROR)),
        (INIT_DB, wire(ok(CHANGED | AUTOCOMMIT, session_state=schema(b"app")))),
        (PREPARE, wire(*PREPARE_ANSWER)),
    ],
    ids=["set", "result set", "err", "init db", "prepare"],
)
def test_a_hidden_response_is_dropped_whole(tag: int, payload: bytes, answer: bytes) -> None:
    tracker = tracker_for((payload, tag))
    assert tracker.receive_data(answer) == b""
    assert tracker.at_safe_point


def test_hidden_responses_pipelined_around_visible_ones_leave_only_the_visible() -> None:
    hidden_ok = wire(ok(CHANGED | AUTOCOMMIT, session_state=system_variable(b"sql_mode", b"")))
    tracker = tracker_for((SET_TIME_ZONE, -2), (QUERY, VISIBLE), (QUERY, -3), (UPDATE, VISIBLE), (PING, -4))
    stream = hidden_ok + RESULT_SET + RESULT_SET + wire(ok(affected_rows=1)) + wire(ok())
    assert tracker.receive_data(stream) == RESULT_SET + wire(ok(affected_rows=1))
    assert tracker.at_safe_point


def test_a_hidden_response_split_across_chunks_sends_nothing_of_it() -> None:
    tracker = tracker_for((QUERY, HIDDEN), (QUERY, VISIBLE))
    hidden = RESULT_SET
    for offset in range(0, len(hidden), 5):  # every chunk is all hidden: nothing comes out
        assert tracker.receive_data(hidden[offset : offset + 5]) == b""
    assert tracker.receive_data(RESULT_SET) == RESULT_SET


def test_a_chunk_holding_the_end_of_a_hidden_response_and_the_start_of_a_visible_one() -> None:
    tracker = tracker_for((QUERY, HIDDEN), (QUERY, VISIBLE))
    stream = RESULT_SET + RESULT_SET
    cut = len(RESULT_SET) - 3  # in the hidden response's last packet
    assert tracker.receive_data(stream[:cut]) == b""
    assert tracker.receive_data(stream[cut : cut + 20]) == RESULT_SET[:17]  # 3 bytes were the hidden EOF's
    assert tracker.receive_data(stream[cut + 20 :]) == RESULT_SET[17:]


# --- notes ----------------------------------------------------------------------------------


def test_notes_list_each_status_packet_with_its_tag_in_order() -> None:
    set_ok = ok(CHANGED | AUTOCOMMIT, session_state=system_variable(b"time_zone", b"+05:00"))
    prepared = prepare_ok(42, 1, 1)
    tracker = tracker_for((SET_TIME_ZONE, -3), (QUERY, VISIBLE), (PREPARE, 5), (UPDATE, VISIBLE), (PING, -4))
    stream = wire(set_ok) + RESULT_SET + wire(*PREPARE_ANSWER) + wire(ERROR) + wire(ok(IN_TRANS))
    tracker.receive_data(stream)
    assert tracker.notes == [
        (-3, A_RESULT_OK, set_ok),
        (VISIBLE, A_COLUMN_COUNT, b"\x02"),
        (VISIBLE, A_DEFINITIONS_EOF, eof()),
        (VISIBLE, A_ROWS_END, eof()),
        (5, A_PREPARE_OK, prepared),  # the server's packet, as it came
        (5, A_DEFINITIONS_EOF, eof()),
        (5, A_DEFINITIONS_EOF, eof()),
        (VISIBLE, A_ERR, ERROR),
        (-4, A_STATUS, ok(IN_TRANS)),
    ]


def test_notes_are_the_same_however_the_stream_is_cut() -> None:
    script = BY_NAME["hidden between visible"]
    whole = tracker_for(*script.commands)
    whole.receive_data(script.server)
    for cut in range(len(script.server) + 1):
        tracker = tracker_for(*script.commands)
        fed(tracker, chunked(script.server, [cut]))
        assert tracker.notes == whole.notes, f"cut at {cut}"


# --- headers at chunk edges -----------------------------------------------------------------


@pytest.mark.parametrize("offset", [1, 2, 3], ids=["1 of 4", "2 of 4", "3 of 4"])
@pytest.mark.parametrize(
    "packet", ["column count", "definition", "row", "last EOF"], ids=lambda packet: packet.replace(" ", "-")
)
def test_a_header_split_across_chunks(packet: str, offset: int) -> None:
    payloads = result_set(*ROWS, status=CHANGED | AUTOCOMMIT)
    index = {"column count": 0, "definition": 2, "row": 5, "last EOF": len(payloads) - 1}[packet]
    stream = wire(*payloads)
    header_at = len(wire(*payloads[:index]))
    cut = header_at + offset
    tracker = tracker_for((QUERY, VISIBLE))
    first = tracker.receive_data(stream[:cut])
    second = tracker.receive_data(stream[cut:])
    assert first + second == RESULT_SET
    assert len(first) <= header_at  # nothing of a packet goes before its header is whole


@pytest.mark.parametrize(
    "packet", ["column count", "definition", "row", "last EOF"], ids=lambda packet: packet.replace(" ", "-")
)
@pytest.mark.parametrize("tag", [VISIBLE, HIDDEN])
def test_a_header_at_the_very_end_of_a_chunk_waits_for_its_packet_s_first_byte(packet: str, tag: int) -> None:
    payloads = result_set(*ROWS, status=CHANGED | AUTOCOMMIT)
    index = {"column count": 0, "definition": 2, "row": 5, "last EOF": len(payloads) - 1}[packet]
    stream = wire(*payloads)
    body_at = len(wire(*payloads[:index])) + 4
    tracker = tracker_for((QUERY, tag), (PING, VISIBLE))
    first = tracker.receive_data(stream[:body_at])
    second = tracker.receive_data(stream[body_at:])
    third = tracker.receive_data(wire(ok()))
    assert first + second == (RESULT_SET if tag == VISIBLE else b"")
    assert third == wire(ok())
    assert len(first) <= body_at - 4


def test_a_header_alone_in_a_chunk_then_its_body_alone() -> None:
    answer = wire(ok(CHANGED | AUTOCOMMIT, affected_rows=1, session_state=STATE_CHANGED))
    tracker = tracker_for((UPDATE, VISIBLE))
    assert tracker.receive_data(answer[:4]) == b""
    assert tracker.receive_data(answer[4:]) == wire(ok(affected_rows=1))


# --- rows -----------------------------------------------------------------------------------


def test_many_rows_in_one_chunk_pass_and_the_response_ends() -> None:
    rows = [text_row(b"%d" % n, b"x" * (n % 300)) for n in range(2000)]
    payloads = result_set(*rows)
    stream = wire(*[payload for payload in payloads])
    tracker = tracker_for((QUERY, VISIBLE), (PING, VISIBLE))
    assert tracker.receive_data(stream) == stream
    assert tracker.receive_data(wire(ok())) == wire(ok())
    assert tracker.at_safe_point


@pytest.mark.parametrize("tag", [VISIBLE, HIDDEN])
def test_a_row_of_more_than_one_physical_packet_passes_or_is_dropped_whole(tag: int) -> None:
    big = text_row(b"x" * (MAX_PACKET_PAYLOAD + 100), b"y")
    stream = wire(*result_set(big, ROWS[0]))
    tracker = tracker_for((QUERY, tag), (PING, VISIBLE))
    continuation = len(wire(*result_set()[:4])) + 4 + MAX_PACKET_PAYLOAD  # the second physical header
    cuts = [continuation - 2, continuation + 2, continuation + 4, len(stream) - 20]
    out = fed(tracker, chunked(stream, cuts))
    assert out == (stream if tag == VISIBLE else b"")
    assert tracker.receive_data(wire(ok())) == wire(ok())
