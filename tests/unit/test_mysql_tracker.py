"""ResponseTracker fed what a session-mode relay forwards: client commands and raw server bytes."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError, ProtocolViolation
from protocols.mysql.constants import (
    CLIENT_COMPRESS,
    CLIENT_DEPRECATE_EOF,
    CLIENT_LOCAL_FILES,
    CLIENT_MULTI_RESULTS,
    CLIENT_MULTI_STATEMENTS,
    CLIENT_OPTIONAL_RESULTSET_METADATA,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PROTOCOL_41,
    CLIENT_PS_MULTI_RESULTS,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SESSION_TRACK,
    CLIENT_TRANSACTIONS,
    COM_BINLOG_DUMP,
    COM_BINLOG_DUMP_GTID,
    COM_CHANGE_USER,
    COM_DEBUG,
    COM_INIT_DB,
    COM_PING,
    COM_PROCESS_KILL,
    COM_REFRESH,
    COM_REGISTER_SLAVE,
    COM_RESET_CONNECTION,
    COM_STMT_RESET,
    MARIADB_CLIENT_CACHE_METADATA,
    MARIADB_CLIENT_PROGRESS,
    SERVER_MORE_RESULTS_EXISTS,
    SERVER_STATUS_AUTOCOMMIT,
    SERVER_STATUS_CURSOR_EXISTS,
    SERVER_STATUS_IN_TRANS,
    SERVER_STATUS_LAST_ROW_SENT,
)
from protocols.mysql.messages import EofPacket, ErrPacket, OkPacket
from protocols.mysql.packets import Packet, encode_lenenc_str, frame
from protocols.mysql.tracker import ResponseTracker

BASE = (
    CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_TRANSACTIONS
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_LOCAL_FILES
    | CLIENT_SESSION_TRACK
)
CLASSIC = BASE
DEPRECATE_EOF = BASE | CLIENT_DEPRECATE_EOF
BOTH = pytest.mark.parametrize("capabilities", [CLASSIC, DEPRECATE_EOF], ids=["classic-EOF", "DEPRECATE_EOF"])

AUTOCOMMIT = SERVER_STATUS_AUTOCOMMIT
IN_TRANS = SERVER_STATUS_AUTOCOMMIT | SERVER_STATUS_IN_TRANS
MORE = SERVER_MORE_RESULTS_EXISTS

# --- client commands ------------------------------------------------------------------------
QUERY = b"\x03SELECT a, b FROM t"
BEGIN = b"\x03BEGIN"
COMMIT = b"\x03COMMIT"
LOAD_DATA = b"\x03LOAD DATA LOCAL INFILE 'f.csv' INTO TABLE t"
PREPARE = b"\x16SELECT ? AS p, 'x' AS c"
EXECUTE = b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00"  # statement 1, no cursor, 1 iteration
EXECUTE_WITH_CURSOR = b"\x17\x01\x00\x00\x00\x01\x01\x00\x00\x00"  # CURSOR_TYPE_READ_ONLY
FETCH = b"\x1c\x01\x00\x00\x00\x05\x00\x00\x00"  # statement 1, 5 rows
CLOSE_STATEMENT = b"\x19\x01\x00\x00\x00"
SEND_LONG_DATA = b"\x18\x01\x00\x00\x00\x00\x00blob"
FIELD_LIST = b"\x04t\x00"
STATISTICS = b"\x09"
SET_OPTION = b"\x1b\x00\x00"  # MYSQL_OPTION_MULTI_STATEMENTS_ON
QUIT = b"\x01"
PING = b"\x0e"


# --- server packets -------------------------------------------------------------------------
def column(name: bytes) -> bytes:
    """A column definition as MariaDB sends it: catalog 'def', names, charset, length, type, flags."""
    return (
        b"\x03def"
        + b"\x00\x00\x00"
        + encode_lenenc_str(name) * 2
        + b"\x0c\x2d\x00\x04\x00\x00\x00\xfd\x01\x00\x27\x00\x00"
    )


def text_row(*values: bytes) -> bytes:
    return b"".join(encode_lenenc_str(value) for value in values)


def ok(status: int = AUTOCOMMIT) -> bytes:
    return OkPacket(status_flags=status).encode()


def eof(status: int = AUTOCOMMIT) -> bytes:
    return EofPacket(0, status).encode()


def end_of_rows(capabilities: int, status: int = AUTOCOMMIT) -> bytes:
    if capabilities & CLIENT_DEPRECATE_EOF:
        return OkPacket(status_flags=status).encode(capabilities, eof_header=True)
    return eof(status)


def metadata_end(capabilities: int, status: int = AUTOCOMMIT) -> list[bytes]:
    return [] if capabilities & CLIENT_DEPRECATE_EOF else [eof(status)]


def result_set(capabilities: int, rows: list[bytes], status: int = AUTOCOMMIT) -> list[bytes]:
    return [
        b"\x02",  # column count
        column(b"a"),
        column(b"b"),
        *metadata_end(capabilities),
        *rows,
        end_of_rows(capabilities, status),
    ]


ERR = ErrPacket(1146, "Table 'app.t' doesn't exist", "42S02").encode()
PROGRESS_REPORT = b"\xff\xff\xff\x01\x01\x00\x10\x00\x05stage"


def wire(*payloads: bytes, sequence_id: int = 1) -> bytes:
    """Frame consecutive server packets of one response."""
    parts = []
    for payload in payloads:
        packet, sequence_id = frame(payload, sequence_id)
        parts.append(packet)
    return b"".join(parts)


def command_packet(payload: bytes) -> Packet:
    """A client packet that opens an exchange (sequence id 0)."""
    return Packet(0, 0, payload)


def infile_packet(payload: bytes, sequence_id: int = 2) -> Packet:
    """A client packet later in the exchange: LOCAL INFILE data after the server's request."""
    return Packet(sequence_id, sequence_id, payload)


def tracker_after(capabilities: int, *commands: bytes) -> ResponseTracker:
    tracker = ResponseTracker(capabilities)
    for payload in commands:
        tracker.send(command_packet(payload))
    return tracker


def safe_points_byte_by_byte(tracker: ResponseTracker, stream: bytes) -> list[int]:
    """Feed one byte at a time; the stream offsets after which the tracker was at a safe point."""
    points = []
    for offset in range(len(stream)):
        tracker.receive_data(stream[offset : offset + 1])
        if tracker.at_safe_point:
            points.append(offset + 1)
    return points


# --- simple answers -----------------------------------------------------------------------------


@BOTH
def test_ok_answer_to_a_query_reaches_a_safe_point(capabilities: int) -> None:
    tracker = ResponseTracker(capabilities)
    assert tracker.at_safe_point
    assert not tracker.awaiting_response
    tracker.send(command_packet(b"\x03UPDATE t SET a = 1"))
    assert not tracker.at_safe_point
    assert tracker.awaiting_response
    tracker.receive_data(wire(OkPacket(3, 0, AUTOCOMMIT, 0, b"Rows matched: 3").encode()))
    assert tracker.at_safe_point
    assert not tracker.awaiting_response
    assert tracker.status_flags == AUTOCOMMIT


@BOTH
def test_err_answer_ends_the_response(capabilities: int) -> None:
    tracker = tracker_after(capabilities, QUERY)
    tracker.receive_data(wire(ERR))
    assert tracker.at_safe_point


def test_transaction_status_follows_the_last_ok_and_not_errors() -> None:
    tracker = tracker_after(CLASSIC, BEGIN)
    tracker.receive_data(wire(ok(IN_TRANS)))
    assert tracker.in_transaction
    tracker.send(command_packet(QUERY))
    tracker.receive_data(wire(ERR))
    assert tracker.in_transaction
    assert tracker.at_safe_point
    tracker.send(command_packet(COMMIT))
    tracker.receive_data(wire(ok(AUTOCOMMIT)))
    assert not tracker.in_transaction


def test_initial_status_flags_can_come_from_the_login_ok() -> None:
    tracker = ResponseTracker(CLASSIC, status_flags=IN_TRANS)
    assert tracker.in_transaction


@pytest.mark.parametrize(
    "command",
    [COM_PING, COM_INIT_DB, COM_RESET_CONNECTION, COM_STMT_RESET, COM_PROCESS_KILL, COM_REFRESH, COM_DEBUG],
)
@pytest.mark.parametrize("answer", [ok(), ERR], ids=["OK", "ERR"])
def test_status_commands_expect_one_ok_or_err(command: int, answer: bytes) -> None:
    tracker = tracker_after(DEPRECATE_EOF, bytes((command,)) + b"\x00\x00\x00\x00")
    tracker.receive_data(wire(answer))
    assert tracker.at_safe_point


@BOTH
def test_set_option_may_answer_eof(capabilities: int) -> None:
    tracker = tracker_after(capabilities, SET_OPTION)
    tracker.receive_data(wire(end_of_rows(capabilities, AUTOCOMMIT)))
    assert tracker.at_safe_point
    assert tracker.status_flags == AUTOCOMMIT


def test_status_command_answered_with_rows_is_a_protocol_violation() -> None:
    tracker = tracker_after(CLASSIC, PING)
    with pytest.raises(ProtocolViolation):
        tracker.receive_data(wire(b"\x01"))


def test_statistics_is_one_string_packet() -> None:
    tracker = tracker_after(CLASSIC, STATISTICS)
    tracker.receive_data(wire(b"Uptime: 2312  Threads: 2  Questions: 50  Slow queries: 0"))
    assert tracker.at_safe_point


@pytest.mark.parametrize("command", [CLOSE_STATEMENT, SEND_LONG_DATA, QUIT])
def test_commands_without_a_response_leave_the_connection_at_a_safe_point(command: bytes) -> None:
    tracker = tracker_after(CLASSIC, command)
    assert tracker.at_safe_point
    assert not tracker.awaiting_response


def test_quit_is_remembered() -> None:
    tracker = tracker_after(CLASSIC, QUIT)
    assert tracker.quit_received


@pytest.mark.parametrize(
    "command",
    [
        bytes((COM_CHANGE_USER,)) + b"app\x00\x00",
        bytes((COM_BINLOG_DUMP,)) + bytes(10),
        bytes((COM_BINLOG_DUMP_GTID,)) + bytes(10),
        bytes((COM_REGISTER_SLAVE,)) + bytes(10),
        b"\xfa\x01\x00\x00\x00",  # MariaDB COM_STMT_BULK_EXECUTE
        b"\x99",
    ],
)
def test_commands_the_tracker_cannot_follow_make_it_give_up_for_good(command: bytes) -> None:
    tracker = tracker_after(CLASSIC, command)
    assert tracker.unknown
    tracker.receive_data(wire(ok()))
    tracker.send(command_packet(PING))
    tracker.receive_data(wire(ok()))
    assert not tracker.at_safe_point
    assert tracker.awaiting_response


def test_server_packet_when_nothing_is_awaited_is_a_protocol_violation() -> None:
    tracker = ResponseTracker(CLASSIC)
    with pytest.raises(ProtocolViolation, match="no response was awaited"):
        tracker.receive_data(wire(ok()))


def test_server_packet_after_a_complete_response_is_a_protocol_violation() -> None:
    tracker = tracker_after(CLASSIC, PING)
    with pytest.raises(ProtocolViolation, match="no response was awaited"):
        tracker.receive_data(wire(ok(), ok()))


# --- result sets ---------------------------------------------------------------------------------


@BOTH
def test_text_result_set_reaches_a_safe_point_only_after_its_last_packet(capabilities: int) -> None:
    stream = wire(*result_set(capabilities, [text_row(b"1", b"x"), b"\xfb\x00"], IN_TRANS))
    tracker = tracker_after(capabilities, QUERY)
    assert safe_points_byte_by_byte(tracker, stream) == [len(stream)]
    assert tracker.in_transaction


@BOTH
def test_empty_result_set(capabilities: int) -> None:
    tracker = tracker_after(capabilities, QUERY)
    tracker.receive_data(wire(*result_set(capabilities, [])))
    assert tracker.at_safe_point


@BOTH
def test_err_in_the_middle_of_rows_ends_the_response(capabilities: int) -> None:
    tracker = tracker_after(capabilities, QUERY)
    packets = result_set(capabilities, [text_row(b"1", b"x")])
    tracker.receive_data(wire(*packets[:-1], ErrPacket(1317, "Query execution was interrupted").encode()))
    assert tracker.at_safe_point


@BOTH
def test_multi_results_continue_while_more_results_exists(capabilities: int) -> None:
    stream = wire(
        *result_set(capabilities, [text_row(b"1", b"x")], AUTOCOMMIT | MORE),
        ok(AUTOCOMMIT | MORE),  # e.g. an UPDATE between two SELECTs
        *result_set(capabilities, [text_row(b"2", b"y")], AUTOCOMMIT | MORE),
        ok(AUTOCOMMIT),  # a CALL's final status
    )
    tracker = tracker_after(capabilities, b"\x03CALL p()")
    assert safe_points_byte_by_byte(tracker, stream) == [len(stream)]


@BOTH
def test_err_ends_a_multi_result_whatever_came_before(capabilities: int) -> None:
    tracker = tracker_after(capabilities, b"\x03SELECT 1; SELECT * FROM missing; SELECT 3")
    tracker.receive_data(wire(*result_set(capabilities, [text_row(b"1", b"x")], AUTOCOMMIT | MORE), ERR))
    assert tracker.at_safe_point


@BOTH
def test_a_text_row_starting_with_0xfe_is_not_mistaken_for_eof(capabilities: int) -> None:
    # A first column of 16 MiB has an 8-byte length: the row starts with 0xFE, like an EOF,
    # but its first physical packet is a full 0xFFFFFF bytes.
    big_value = bytes(1 << 24)
    row = encode_lenenc_str(big_value) + encode_lenenc_str(b"x")
    assert row[0] == 0xFE
    stream = wire(*result_set(capabilities, [row, text_row(b"2", b"y")]))
    tracker = tracker_after(capabilities, QUERY)
    tracker.receive_data(stream[: -len(wire(end_of_rows(capabilities), sequence_id=0))])
    assert not tracker.at_safe_point
    tracker.receive_data(stream[-len(wire(end_of_rows(capabilities), sequence_id=0)) :])
    assert tracker.at_safe_point


@BOTH
def test_rows_of_20_mb_in_64_kib_chunks_are_not_retained(capabilities: int) -> None:
    row = encode_lenenc_str(bytes(20 << 20))
    stream = wire(b"\x01", column(b"blob"), *metadata_end(capabilities), row, row, end_of_rows(capabilities))
    tracker = tracker_after(capabilities, QUERY)
    chunk = 64 << 10
    tracemalloc.start()
    try:
        for offset in range(0, len(stream), chunk):
            tracker.receive_data(stream[offset : offset + chunk])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tracker.at_safe_point
    assert peak < 4 * chunk  # the chunk slices themselves, and nothing of the rows


def test_malformed_column_count_is_a_protocol_violation() -> None:
    # A column count followed by MariaDB's "metadata follows" byte: the grammar the proxy
    # never negotiates (MARIADB_CLIENT_CACHE_METADATA).
    tracker = tracker_after(CLASSIC, QUERY)
    with pytest.raises(ProtocolViolation, match="column count"):
        tracker.receive_data(wire(b"\x02\x01"))


def test_eof_before_every_column_definition_arrived_is_a_protocol_violation() -> None:
    tracker = tracker_after(CLASSIC, QUERY)
    with pytest.raises(ProtocolViolation, match="EOF"):
        tracker.receive_data(wire(b"\x02", column(b"a"), eof()))


def test_an_empty_packet_among_rows_is_a_protocol_violation() -> None:
    tracker = tracker_after(DEPRECATE_EOF, QUERY)
    with pytest.raises(ProtocolViolation, match="empty"):
        tracker.receive_data(wire(b"\x01", column(b"a"), b""))


def test_an_ok_too_large_to_be_one_is_refused_before_it_is_buffered() -> None:
    tracker = tracker_after(CLASSIC, QUERY)
    with pytest.raises(ProtocolViolation, match="implausibly large"):
        tracker.receive_data(b"\xff\xff\xff\x01\x00")  # a 16 MiB "OK": header and first byte only


# --- LOCAL INFILE --------------------------------------------------------------------------------


@BOTH
def test_local_infile_waits_for_the_clients_data_then_the_servers_ok(capabilities: int) -> None:
    tracker = tracker_after(capabilities, LOAD_DATA)
    tracker.receive_data(wire(b"\xfbf.csv"))
    assert tracker.awaiting_response and not tracker.at_safe_point
    tracker.send(infile_packet(b"1,a\n2,b\n"))
    tracker.send(infile_packet(b"3,c\n"))
    assert not tracker.at_safe_point
    tracker.send(infile_packet(b""))  # end of file
    assert not tracker.at_safe_point
    tracker.receive_data(wire(OkPacket(3, 0, AUTOCOMMIT, 0, b"Records: 3").encode(), sequence_id=5))
    assert tracker.at_safe_point


def test_local_infile_refused_by_the_server_ends_with_err() -> None:
    tracker = tracker_after(CLASSIC, LOAD_DATA)
    tracker.receive_data(wire(b"\xfbf.csv"))
    tracker.send(infile_packet(b""))
    tracker.receive_data(wire(ERR, sequence_id=3))
    assert tracker.at_safe_point


def test_local_infile_packets_with_sequence_id_0_are_still_data() -> None:
    # Sequence ids wrap: the 255th data packet has id 0, like a command.
    tracker = tracker_after(CLASSIC, LOAD_DATA)
    tracker.receive_data(wire(b"\xfbf.csv"))
    tracker.send(command_packet(b"\x03looks,like,a,query\n"))
    tracker.send(command_packet(b""))
    tracker.receive_data(wire(ok(), sequence_id=0))
    assert tracker.at_safe_point


def test_server_packet_before_the_infile_data_ends_is_a_protocol_violation() -> None:
    tracker = tracker_after(CLASSIC, LOAD_DATA)
    tracker.receive_data(wire(b"\xfbf.csv"))
    with pytest.raises(ProtocolViolation, match="LOCAL INFILE"):
        tracker.receive_data(wire(ok(), sequence_id=2))


def test_client_data_outside_local_infile_is_a_protocol_violation() -> None:
    tracker = tracker_after(CLASSIC, QUERY)
    with pytest.raises(ProtocolViolation, match="outside a LOCAL INFILE"):
        tracker.send(infile_packet(b"1,a\n"))


def test_an_empty_packet_is_never_a_command() -> None:
    tracker = tracker_after(CLASSIC, QUERY)
    with pytest.raises(ProtocolViolation, match="outside a LOCAL INFILE"):
        tracker.send(command_packet(b""))


def test_local_infile_in_answer_to_execute_is_a_protocol_violation() -> None:
    tracker = tracker_after(CLASSIC, EXECUTE)
    with pytest.raises(ProtocolViolation, match="LOCAL INFILE"):
        tracker.receive_data(wire(b"\xfbf.csv"))


# --- prepared statements ----------------------------------------------------------------------


def prepare_ok(columns: int, parameters: int, statement_id: int = 1) -> bytes:
    return (
        b"\x00"
        + statement_id.to_bytes(4, "little")
        + columns.to_bytes(2, "little")
        + parameters.to_bytes(2, "little")
        + b"\x00\x00\x00"
    )


def prepare_response(capabilities: int, columns: int, parameters: int) -> list[bytes]:
    packets = [prepare_ok(columns, parameters)]
    if parameters:
        packets += [column(b"?")] * parameters + metadata_end(capabilities)
    if columns:
        packets += [column(b"c")] * columns + metadata_end(capabilities)
    return packets


@BOTH
@pytest.mark.parametrize(("columns", "parameters"), [(2, 1), (0, 3), (2, 0), (0, 0)])
def test_prepare_response_ends_after_parameter_and_column_definitions(
    capabilities: int, columns: int, parameters: int
) -> None:
    stream = wire(*prepare_response(capabilities, columns, parameters))
    tracker = tracker_after(capabilities, PREPARE)
    assert safe_points_byte_by_byte(tracker, stream) == [len(stream)]


def test_prepare_error_ends_the_response() -> None:
    tracker = tracker_after(CLASSIC, PREPARE)
    tracker.receive_data(wire(ERR))
    assert tracker.at_safe_point


@BOTH
def test_execute_binary_result_set(capabilities: int) -> None:
    binary_row = b"\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00\x01x"  # 0x00 header, NULL bitmap, values
    stream = wire(*result_set(capabilities, [binary_row, binary_row]))
    tracker = tracker_after(capabilities, EXECUTE)
    assert safe_points_byte_by_byte(tracker, stream) == [len(stream)]


@BOTH
def test_execute_answered_with_ok(capabilities: int) -> None:
    tracker = tracker_after(capabilities, EXECUTE)
    tracker.receive_data(wire(OkPacket(1, 42, AUTOCOMMIT, 0).encode()))
    assert tracker.at_safe_point


@BOTH
def test_execute_with_a_cursor_ends_after_the_column_definitions_and_fetch_brings_the_rows(
    capabilities: int,
) -> None:
    cursor_open = AUTOCOMMIT | SERVER_STATUS_CURSOR_EXISTS
    tracker = tracker_after(capabilities, EXECUTE_WITH_CURSOR)
    tracker.receive_data(wire(b"\x01", column(b"a"), end_of_rows(capabilities, cursor_open)))
    assert tracker.at_safe_point
    tracker.send(command_packet(FETCH))
    tracker.receive_data(wire(b"\x00\x00\x01\x00\x00\x00", end_of_rows(capabilities, cursor_open)))
    assert tracker.at_safe_point
    tracker.send(command_packet(FETCH))
    tracker.receive_data(
        wire(b"\x00\x00\x02\x00\x00\x00", end_of_rows(capabilities, AUTOCOMMIT | SERVER_STATUS_LAST_ROW_SENT))
    )
    assert tracker.at_safe_point
    assert tracker.status_flags & SERVER_STATUS_LAST_ROW_SENT


def test_fetch_answered_with_err() -> None:
    tracker = tracker_after(CLASSIC, FETCH)
    tracker.receive_data(wire(ErrPacket(1243, "Unknown prepared statement handler").encode()))
    assert tracker.at_safe_point


@BOTH
def test_prepare_execute_close_pipelined(capabilities: int) -> None:
    tracker = tracker_after(capabilities, PREPARE, EXECUTE, CLOSE_STATEMENT, PING)
    stream = (
        wire(*prepare_response(capabilities, 2, 1))
        + wire(*result_set(capabilities, [b"\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00\x01x"]))
        + wire(ok())
    )
    points = safe_points_byte_by_byte(tracker, stream)
    assert points == [len(stream)]


# --- COM_FIELD_LIST ------------------------------------------------------------------------


@BOTH
def test_field_list_ends_at_eof(capabilities: int) -> None:
    stream = wire(column(b"a") + b"\xfb", column(b"b") + b"\xfb", end_of_rows(capabilities))
    tracker = tracker_after(capabilities, FIELD_LIST)
    assert safe_points_byte_by_byte(tracker, stream) == [len(stream)]


def test_field_list_of_a_missing_table_ends_with_err() -> None:
    tracker = tracker_after(CLASSIC, FIELD_LIST)
    tracker.receive_data(wire(ERR))
    assert tracker.at_safe_point


# --- MariaDB specifics ------------------------------------------------------------------------


def test_mariadb_progress_reports_do_not_end_a_response() -> None:
    tracker = tracker_after(CLASSIC | MARIADB_CLIENT_PROGRESS, b"\x03ALTER TABLE t ADD c INT")
    tracker.receive_data(wire(PROGRESS_REPORT, PROGRESS_REPORT))
    assert not tracker.at_safe_point
    tracker.receive_data(wire(ok(), sequence_id=3))
    assert tracker.at_safe_point


def test_without_progress_negotiated_an_err_0xffff_ends_the_response() -> None:
    tracker = tracker_after(CLASSIC, b"\x03ALTER TABLE t ADD c INT")
    tracker.receive_data(wire(PROGRESS_REPORT))
    assert tracker.at_safe_point


@pytest.mark.parametrize(
    "capability", [MARIADB_CLIENT_CACHE_METADATA, CLIENT_COMPRESS, CLIENT_OPTIONAL_RESULTSET_METADATA]
)
def test_capabilities_that_change_the_grammar_are_refused(capability: int) -> None:
    with pytest.raises(LocalProtocolError, match="grammar"):
        ResponseTracker(CLASSIC | capability)


# --- real MariaDB 10.11 streams -----------------------------------------------------------------

# Captured from the MariaDB 10.11.19 on this machine; capabilities as negotiated there.
MARIADB_CLASSIC = 0x00BFA284
MARIADB_DEPRECATE_EOF = 0x01BFA284
MARIADB_STREAMS = {
    "multi-statement query, classic EOF": (
        MARIADB_CLASSIC,
        [b"\x03select 1; select 'a' as x; do 1"],
        b"\x01\x00\x00\x01\x01"
        b"\x17\x00\x00\x02\x03def\x00\x00\x00\x011\x00\x0c?\x00\x01\x00\x00\x00\x03\x81\x00\x00\x00\x00"
        b"\x05\x00\x00\x03\xfe\x00\x00\n\x00"
        b"\x02\x00\x00\x04\x011"
        b"\x05\x00\x00\x05\xfe\x00\x00\n\x00"  # EOF: SERVER_MORE_RESULTS_EXISTS | AUTOCOMMIT
        b"\x01\x00\x00\x06\x01"
        b"\x17\x00\x00\x07\x03def\x00\x00\x00\x01x\x00\x0c-\x00\x04\x00\x00\x00\xfd\x01\x00'\x00\x00"
        b"\x05\x00\x00\x08\xfe\x00\x00\n\x00"
        b"\x02\x00\x00\t\x01a"
        b"\x05\x00\x00\n\xfe\x00\x00\n\x00"
        b"\x07\x00\x00\x0b\x00\x00\x00\x02\x00\x00\x00",
        AUTOCOMMIT,
    ),
    "multi-statement query, DEPRECATE_EOF": (
        MARIADB_DEPRECATE_EOF,
        [b"\x03select 1; select 'a' as x; do 1"],
        b"\x01\x00\x00\x01\x01"
        b"\x17\x00\x00\x02\x03def\x00\x00\x00\x011\x00\x0c?\x00\x01\x00\x00\x00\x03\x81\x00\x00\x00\x00"
        b"\x02\x00\x00\x03\x011"
        b"\x07\x00\x00\x04\xfe\x00\x00\n\x00\x00\x00"  # OK with 0xFE header ends the rows
        b"\x01\x00\x00\x05\x01"
        b"\x17\x00\x00\x06\x03def\x00\x00\x00\x01x\x00\x0c-\x00\x04\x00\x00\x00\xfd\x01\x00'\x00\x00"
        b"\x02\x00\x00\x07\x01a"
        b"\x07\x00\x00\x08\xfe\x00\x00\n\x00\x00\x00"
        b"\x07\x00\x00\t\x00\x00\x00\x02\x00\x00\x00",
        AUTOCOMMIT,
    ),
    "prepare, classic EOF": (
        MARIADB_CLASSIC,
        [b"\x16select ? as p, 'x' as c"],
        b"\x0c\x00\x00\x01\x00\x03\x00\x00\x00\x02\x00\x01\x00\x00\x00\x00"  # 2 columns, 1 parameter
        b"\x17\x00\x00\x02\x03def\x00\x00\x00\x01p\x00\x0c?\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00"
        b"\x05\x00\x00\x03\xfe\x00\x00\x02\x00"
        b"\x17\x00\x00\x04\x03def\x00\x00\x00\x01p\x00\x0c?\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00"
        b"\x17\x00\x00\x05\x03def\x00\x00\x00\x01c\x00\x0c-\x00\x04\x00\x00\x00\xfd\x01\x00'\x00\x00"
        b"\x05\x00\x00\x06\xfe\x00\x00\x02\x00",
        AUTOCOMMIT,
    ),
    "prepare, DEPRECATE_EOF": (
        MARIADB_DEPRECATE_EOF,
        [b"\x16select ? as p, 'x' as c"],
        b"\x0c\x00\x00\x01\x00\x01\x00\x00\x00\x02\x00\x01\x00\x00\x00\x00"
        b"\x17\x00\x00\x02\x03def\x00\x00\x00\x01p\x00\x0c?\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00"
        b"\x17\x00\x00\x03\x03def\x00\x00\x00\x01p\x00\x0c?\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00"
        b"\x17\x00\x00\x04\x03def\x00\x00\x00\x01c\x00\x0c-\x00\x04\x00\x00\x00\xfd\x01\x00'\x00\x00",
        0,  # no status in a prepare response
    ),
    "execute, classic EOF": (
        MARIADB_CLASSIC,
        [b"\x17\x03\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x08\x00\x07\x00\x00\x00\x00\x00\x00\x00"],
        b"\x01\x00\x00\x01\x02"
        b"\x17\x00\x00\x02\x03def\x00\x00\x00\x01p\x00\x0c?\x00\x15\x00\x00\x00\x08\x81\x00\x00\x00\x00"
        b"\x17\x00\x00\x03\x03def\x00\x00\x00\x01c\x00\x0c-\x00\x04\x00\x00\x00\xfd\x01\x00'\x00\x00"
        b"\x05\x00\x00\x04\xfe\x00\x00\x02\x00"
        b"\x0c\x00\x00\x05\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00\x01x"  # binary row
        b"\x05\x00\x00\x06\xfe\x00\x00\x02\x00",
        AUTOCOMMIT,
    ),
    "execute with cursor, then fetches, classic EOF": (
        MARIADB_CLASSIC,
        [EXECUTE_WITH_CURSOR, FETCH, FETCH],
        b"\x01\x00\x00\x01\x01"
        b"\x18\x00\x00\x02\x03def\x00\x00\x00\x011\x011\x0c?\x00\x02\x00\x00\x00\x03\x01\x00\x00\x00\x00"
        b"\x05\x00\x00\x03\xfe\x00\x00b\x00"  # EOF: CURSOR_EXISTS | NO_INDEX_USED | AUTOCOMMIT
        b"\x06\x00\x00\x01\x00\x00\x01\x00\x00\x00"
        b"\x05\x00\x00\x02\xfe\x00\x00B\x00"
        b"\x06\x00\x00\x01\x00\x00\x02\x00\x00\x00"
        b"\x05\x00\x00\x02\xfe\x00\x00\x82\x00",  # LAST_ROW_SENT
        AUTOCOMMIT | SERVER_STATUS_LAST_ROW_SENT,
    ),
    "execute with cursor, then fetches, DEPRECATE_EOF": (
        MARIADB_DEPRECATE_EOF,
        [EXECUTE_WITH_CURSOR, FETCH, FETCH],
        b"\x01\x00\x00\x01\x01"
        b"\x18\x00\x00\x02\x03def\x00\x00\x00\x011\x011\x0c?\x00\x02\x00\x00\x00\x03\x01\x00\x00\x00\x00"
        b"\x07\x00\x00\x03\xfe\x00\x00b\x00\x00\x00"
        b"\x06\x00\x00\x01\x00\x00\x01\x00\x00\x00"
        b"\x07\x00\x00\x02\xfe\x00\x00B\x00\x00\x00"
        b"\x06\x00\x00\x01\x00\x00\x02\x00\x00\x00"
        b"\x07\x00\x00\x02\xfe\x00\x00\x82\x00\x00\x00",
        AUTOCOMMIT | SERVER_STATUS_LAST_ROW_SENT,
    ),
    "field list, DEPRECATE_EOF": (
        MARIADB_DEPRECATE_EOF,
        [b"\x04t\x00"],
        b",\x00\x00\x01\x03def\x11rotaproxy_capture\x01t\x01t\x01a\x01a\x0c?\x00\x0b\x00\x00\x00\x03\x00\x00\x00"
        b"\x00\x00\xfb"
        b",\x00\x00\x02\x03def\x11rotaproxy_capture\x01t\x01t\x01b\x01b\x0c-\x00(\x00\x00\x00\xfd\x00\x00\x00"
        b"\x00\x00\xfb"
        b"\x07\x00\x00\x03\xfe\x00\x00\x02\x00\x00\x00",
        AUTOCOMMIT,
    ),
    "set option, classic EOF": (
        MARIADB_CLASSIC,
        [SET_OPTION],
        b"\x05\x00\x00\x01\xfe\x00\x00\x02\x00",
        AUTOCOMMIT,
    ),
    "pipelined begin, ping, failing query, commit": (
        MARIADB_CLASSIC,
        [BEGIN, PING, b"\x03select * from nosuchtable", COMMIT],
        b"\x07\x00\x00\x01\x00\x00\x00\x03\x00\x00\x00"
        b"\x07\x00\x00\x01\x00\x00\x00\x03\x00\x00\x00"
        b"<\x00\x00\x01\xffz\x04#42S02Table 'rotaproxy_capture.nosuchtable' doesn't exist"
        b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00",
        AUTOCOMMIT,
    ),
}


@pytest.mark.parametrize("name", MARIADB_STREAMS)
def test_real_mariadb_streams_end_at_a_safe_point(name: str) -> None:
    capabilities, commands, stream, status = MARIADB_STREAMS[name]
    tracker = tracker_after(capabilities, *commands)
    tracker.receive_data(stream)
    assert tracker.at_safe_point
    assert tracker.status_flags == status


def test_real_mariadb_local_infile() -> None:
    tracker = tracker_after(
        MARIADB_CLASSIC, b"\x03load data local infile 'f.csv' into table t fields terminated by ','"
    )
    tracker.receive_data(b"\x06\x00\x00\x01\xfbf.csv")
    for data in (b"1,a\n2,b\n", b"3,c\n", b""):
        tracker.send(infile_packet(data))
    tracker.receive_data(
        b"7\x00\x00\x05\x00\x03\x00\x02\x00\x00\x00/Records: 3  Deleted: 0  Skipped: 0  Warnings: 0"
    )
    assert tracker.at_safe_point


# --- chunking -----------------------------------------------------------------------------------


def session_script(capabilities: int) -> tuple[list[bytes], bytes]:
    """Pipelined commands covering every grammar, and the server's whole answer."""
    commands = [
        BEGIN,
        QUERY,
        b"\x03CALL p()",
        PREPARE,
        EXECUTE,
        CLOSE_STATEMENT,
        FIELD_LIST,
        STATISTICS,
        COMMIT,
    ]
    stream = (
        wire(ok(IN_TRANS))
        + wire(*result_set(capabilities, [text_row(b"1", b"x"), text_row(b"", b"\xfe")], IN_TRANS))
        + wire(*result_set(capabilities, [text_row(b"2", b"y")], IN_TRANS | MORE), ok(IN_TRANS))
        + wire(*prepare_response(capabilities, 2, 1))
        + wire(*result_set(capabilities, [b"\x00\x00\x01\x00\x00\x00"], IN_TRANS))
        + wire(column(b"a") + b"\xfb", end_of_rows(capabilities, IN_TRANS))
        + wire(b"Uptime: 1")
        + wire(ok(AUTOCOMMIT))
    )
    return commands, stream


def final_state(tracker: ResponseTracker) -> tuple[bool, int, bool]:
    return tracker.at_safe_point, tracker.status_flags, tracker.awaiting_response


@BOTH
def test_server_stream_split_at_every_byte_position_gives_the_same_result(capabilities: int) -> None:
    commands, stream = session_script(capabilities)
    whole = tracker_after(capabilities, *commands)
    whole.receive_data(stream)
    assert final_state(whole) == (True, AUTOCOMMIT, False)
    for split in range(len(stream) + 1):
        tracker = tracker_after(capabilities, *commands)
        tracker.receive_data(stream[:split])
        tracker.receive_data(stream[split:])
        assert final_state(tracker) == final_state(whole), f"split at byte {split}"


@BOTH
def test_the_session_is_at_a_safe_point_only_between_whole_responses(capabilities: int) -> None:
    commands, stream = session_script(capabilities)
    tracker = tracker_after(capabilities, *commands)
    assert safe_points_byte_by_byte(tracker, stream) == [len(stream)]


# --- fuzz ---------------------------------------------------------------------------------------

COMMANDS = [
    QUERY,
    PREPARE,
    EXECUTE,
    EXECUTE_WITH_CURSOR,
    FETCH,
    FIELD_LIST,
    STATISTICS,
    SET_OPTION,
    PING,
    LOAD_DATA,
]


@given(
    st.sampled_from([CLASSIC, DEPRECATE_EOF, CLASSIC | MARIADB_CLIENT_PROGRESS]),
    st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=4),
    st.lists(st.binary(max_size=40), max_size=6),
)
@settings(max_examples=300, deadline=None)
def test_random_server_bytes_give_only_protocol_violations(
    capabilities: int, commands: list[bytes], chunks: list[bytes]
) -> None:
    tracker = tracker_after(capabilities, *commands)
    with contextlib.suppress(ProtocolViolation):
        for chunk in chunks:
            tracker.receive_data(chunk)


def framed_garbage() -> st.SearchStrategy[bytes]:
    """Well-framed packets with random payloads: gets the fuzz past the framing."""
    return st.lists(st.binary(max_size=30), max_size=8).map(lambda payloads: wire(*payloads))


@given(
    st.sampled_from([CLASSIC, DEPRECATE_EOF]),
    st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=4),
    framed_garbage(),
    st.integers(min_value=1, max_value=7),
)
@settings(max_examples=300, deadline=None)
def test_random_framed_packets_give_only_protocol_violations(
    capabilities: int, commands: list[bytes], stream: bytes, chunk: int
) -> None:
    tracker = tracker_after(capabilities, *commands)
    with contextlib.suppress(ProtocolViolation):
        for offset in range(0, len(stream), chunk):
            tracker.receive_data(stream[offset : offset + chunk])


def chunked(stream: bytes, sizes: list[int]) -> Iterator[bytes]:
    offset = 0
    for size in sizes:
        yield stream[offset : offset + size]
        offset += size
    yield stream[offset:]


@given(
    st.sampled_from([CLASSIC, DEPRECATE_EOF]), st.lists(st.integers(min_value=0, max_value=40), max_size=30)
)
@settings(max_examples=100, deadline=None)
def test_any_chunking_of_a_valid_session_ends_at_a_safe_point(capabilities: int, sizes: list[int]) -> None:
    commands, stream = session_script(capabilities)
    tracker = tracker_after(capabilities, *commands)
    for chunk in chunked(stream, sizes):
        tracker.receive_data(chunk)
    assert final_state(tracker) == (True, AUTOCOMMIT, False)
