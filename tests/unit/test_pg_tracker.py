"""FrontendTracker, BackendTracker and at_safe_point, fed the bytes a relay would forward."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import ProtocolViolation
from protocols.events import NEED_DATA
from protocols.postgres.framing import FrameReader, MessageReader, StartupReader
from protocols.postgres.messages import RawMessage, decode_backend, decode_startup
from protocols.postgres.tracker import BackendTracker, FrontendTracker, at_safe_point

# --- client → server ----------------------------------------------------------------------
QUERY = b"Q\x00\x00\x00\x0dSELECT 1\x00"
PARSE = b"P\x00\x00\x00\x10\x00SELECT 1\x00\x00\x00"  # unnamed, no parameter types
BIND = b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"  # unnamed portal and statement
DESCRIBE = b"D\x00\x00\x00\x06P\x00"  # the unnamed portal
EXECUTE = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"  # unnamed portal, no row limit
CLOSE = b"C\x00\x00\x00\x06S\x00"  # the unnamed statement
SYNC = b"S\x00\x00\x00\x04"
FLUSH = b"H\x00\x00\x00\x04"
FUNCTION_CALL = b"F\x00\x00\x00\x0e\x00\x00\x04\xd2\x00\x00\x00\x00\x00\x00"  # oid 1234, no args
COPY_DATA = b"d\x00\x00\x00\x08abcd"
COPY_DONE = b"c\x00\x00\x00\x04"
TERMINATE = b"X\x00\x00\x00\x04"
EXTENDED_BATCH = PARSE + BIND + DESCRIBE + EXECUTE

# --- server → client ----------------------------------------------------------------------
AUTH_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
READY_IDLE = b"Z\x00\x00\x00\x05I"
READY_IN_TRANSACTION = b"Z\x00\x00\x00\x05T"
READY_FAILED = b"Z\x00\x00\x00\x05E"
TIME_ZONE_OSLO = b"S\x00\x00\x00\x19TimeZone\x00Europe/Oslo\x00"
TIME_ZONE_UTC = b"S\x00\x00\x00\x11TimeZone\x00UTC\x00"
APPLICATION_NAME = b"S\x00\x00\x00\x1bapplication_name\x00caf\xc3\xa9\x00"
BACKEND_KEY_DATA = b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\xde\xad\xbe\xef"
PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
ROW_DESCRIPTION = (
    b"T\x00\x00\x00\x21\x00\x01?column?\x00"
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
)
DATA_ROW = b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x011"
COMMAND_COMPLETE = b"C\x00\x00\x00\x0dSELECT 1\x00"
ERROR = b"E\x00\x00\x00\x13SERROR\x00C42P01\x00\x00"
QUERY_RESULT = ROW_DESCRIPTION + DATA_ROW + COMMAND_COMPLETE

FRONTEND_MESSAGES = [
    QUERY,
    PARSE,
    BIND,
    DESCRIBE,
    EXECUTE,
    CLOSE,
    SYNC,
    FLUSH,
    FUNCTION_CALL,
    COPY_DATA,
    COPY_DONE,
    TERMINATE,
]
BACKEND_MESSAGES = [
    AUTH_OK,
    READY_IDLE,
    READY_IN_TRANSACTION,
    READY_FAILED,
    TIME_ZONE_OSLO,
    TIME_ZONE_UTC,
    APPLICATION_NAME,
    BACKEND_KEY_DATA,
    PARSE_COMPLETE,
    BIND_COMPLETE,
    ROW_DESCRIPTION,
    DATA_ROW,
    COMMAND_COMPLETE,
    ERROR,
]


@pytest.mark.parametrize("wire", FRONTEND_MESSAGES + BACKEND_MESSAGES)
def test_hand_written_messages_declare_their_own_length(wire: bytes) -> None:
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 1


def frontend_state(tracker: FrontendTracker) -> tuple[int, bool, bool, bool]:
    return tracker.sync_points, tracker.unsynced, tracker.terminated, tracker.at_boundary


def backend_state(tracker: BackendTracker) -> tuple[int, bytes, dict[str, str], bool]:
    return (tracker.ready_count, tracker.transaction_status, tracker.parameters, tracker.at_boundary)


# --- FrontendTracker ----------------------------------------------------------------------


def test_new_frontend_tracker_sits_at_a_boundary_owing_nothing() -> None:
    assert frontend_state(FrontendTracker()) == (0, False, False, True)


@pytest.mark.parametrize(
    ("stream", "sync_points"),
    [
        (QUERY, 1),
        (SYNC, 1),
        (FUNCTION_CALL, 1),
        (QUERY + QUERY + QUERY, 3),
        (EXTENDED_BATCH + SYNC, 1),
        (EXTENDED_BATCH + SYNC + EXTENDED_BATCH + SYNC, 2),
        (PARSE + SYNC + SYNC, 2),
        (FLUSH, 0),
        (EXTENDED_BATCH, 0),
        (COPY_DATA + COPY_DONE, 0),
    ],
    ids=[
        "query",
        "sync",
        "function-call",
        "three-queries",
        "batch",
        "two-batches",
        "two-syncs",
        "flush",
        "batch-without-sync",
        "copy-data",
    ],
)
def test_frontend_counts_each_message_that_owes_a_ready_for_query(stream: bytes, sync_points: int) -> None:
    tracker = FrontendTracker()
    assert tracker.send(stream) == len(stream)
    assert tracker.sync_points == sync_points


@pytest.mark.parametrize("message", [PARSE, BIND, DESCRIBE, EXECUTE, CLOSE])
def test_each_extended_protocol_message_opens_a_batch(message: bytes) -> None:
    tracker = FrontendTracker()
    tracker.send(message)
    assert tracker.unsynced
    assert tracker.sync_points == 0


def test_sync_closes_the_extended_batch_and_flush_does_not() -> None:
    tracker = FrontendTracker()
    tracker.send(EXTENDED_BATCH + FLUSH)
    assert tracker.unsynced
    tracker.send(SYNC)
    assert not tracker.unsynced
    assert tracker.sync_points == 1


def test_query_inside_an_open_batch_leaves_it_open() -> None:
    tracker = FrontendTracker()
    tracker.send(PARSE + QUERY)
    assert (tracker.sync_points, tracker.unsynced) == (1, True)


@pytest.mark.parametrize("cut", [1, 4, 5, 8, len(QUERY) - 1])
def test_frontend_mid_message_is_not_at_a_boundary(cut: int) -> None:
    tracker = FrontendTracker()
    assert tracker.send(QUERY[:cut]) == cut
    assert not tracker.at_boundary
    assert tracker.send(QUERY[cut:]) == len(QUERY) - cut
    assert tracker.at_boundary
    assert tracker.sync_points == 1


def test_frontend_skips_a_huge_body_without_needing_it_whole() -> None:
    tracker = FrontendTracker()
    header = b"d\x00\x10\x00\x04"  # CopyData with a 1 MiB body
    assert tracker.send(header) == 5
    assert not tracker.at_boundary
    assert tracker.send(bytes(0x10_0000 - 1)) == 0x10_0000 - 1
    assert not tracker.at_boundary
    assert tracker.send(b"\x00" + QUERY) == 1 + len(QUERY)
    assert tracker.at_boundary
    assert tracker.sync_points == 1


def test_terminate_stops_forwarding_at_its_first_byte() -> None:
    tracker = FrontendTracker()
    stream = QUERY + TERMINATE + QUERY
    assert tracker.send(stream) == len(QUERY)
    assert tracker.terminated
    assert tracker.at_boundary
    assert tracker.sync_points == 1


def test_terminate_at_the_start_of_a_chunk_forwards_nothing() -> None:
    tracker = FrontendTracker()
    tracker.send(QUERY)
    assert tracker.send(TERMINATE) == 0
    assert tracker.terminated
    assert tracker.at_boundary


def test_terminate_right_after_the_end_of_a_split_message_keeps_the_boundary() -> None:
    tracker = FrontendTracker()
    tracker.send(QUERY[:7])
    assert tracker.send(QUERY[7:] + TERMINATE) == len(QUERY) - 7
    assert tracker.terminated
    assert tracker.at_boundary


def test_nothing_is_forwarded_or_counted_after_terminate() -> None:
    tracker = FrontendTracker()
    tracker.send(TERMINATE)
    assert tracker.send(QUERY + SYNC) == 0
    assert tracker.sync_points == 0


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_terminate_whose_first_bytes_were_already_forwarded_tears_the_stream(cut: int) -> None:
    tracker = FrontendTracker()
    assert tracker.send(QUERY + TERMINATE[:cut]) == len(QUERY) + cut
    assert not tracker.terminated
    assert tracker.send(TERMINATE[cut:]) == 0
    assert tracker.terminated
    assert not tracker.at_boundary


@pytest.mark.parametrize("length", [b"\x00\x00\x00\x00", b"\x00\x00\x00\x03"], ids=["0", "3"])
def test_frontend_length_below_4_is_a_protocol_violation(length: bytes) -> None:
    tracker = FrontendTracker()
    with pytest.raises(ProtocolViolation, match=r"\(< 4\)"):
        tracker.send(QUERY + b"Q" + length)


def test_frontend_length_below_4_split_across_chunks_is_a_protocol_violation() -> None:
    tracker = FrontendTracker()
    tracker.send(b"Q\x00\x00")
    with pytest.raises(ProtocolViolation):
        tracker.send(b"\x00\x02")


# --- BackendTracker -----------------------------------------------------------------------


def test_new_backend_tracker_is_idle_at_a_boundary() -> None:
    assert backend_state(BackendTracker()) == (0, b"I", {}, True)


def test_backend_counts_ready_for_query_and_ignores_other_messages() -> None:
    tracker = BackendTracker()
    tracker.receive_data(AUTH_OK + BACKEND_KEY_DATA + READY_IDLE + QUERY_RESULT + READY_IDLE)
    assert tracker.ready_count == 2


def test_transaction_status_follows_the_last_ready_for_query() -> None:
    tracker = BackendTracker()
    tracker.receive_data(READY_IN_TRANSACTION)
    assert tracker.transaction_status == b"T"
    tracker.receive_data(ERROR + READY_FAILED)
    assert tracker.transaction_status == b"E"
    tracker.receive_data(COMMAND_COMPLETE + READY_IDLE)
    assert tracker.transaction_status == b"I"
    tracker.receive_data(READY_IN_TRANSACTION + READY_IDLE)
    assert (tracker.ready_count, tracker.transaction_status) == (5, b"I")


def test_parameter_status_updates_the_parameters() -> None:
    tracker = BackendTracker({"TimeZone": "UTC", "client_encoding": "UTF8"})
    tracker.receive_data(TIME_ZONE_OSLO + APPLICATION_NAME)
    assert tracker.parameters == {
        "TimeZone": "Europe/Oslo",
        "client_encoding": "UTF8",
        "application_name": "café",
    }
    tracker.receive_data(TIME_ZONE_UTC)
    assert tracker.parameters["TimeZone"] == "UTC"


def test_backend_tracker_copies_its_initial_parameters() -> None:
    initial = {"TimeZone": "UTC"}
    tracker = BackendTracker(initial)
    tracker.receive_data(TIME_ZONE_OSLO)
    assert initial == {"TimeZone": "UTC"}


@pytest.mark.parametrize("cut", range(1, len(TIME_ZONE_OSLO)))
def test_parameter_status_split_anywhere_is_applied_once_whole(cut: int) -> None:
    tracker = BackendTracker()
    tracker.receive_data(TIME_ZONE_OSLO[:cut])
    assert tracker.parameters == {}
    assert not tracker.at_boundary
    tracker.receive_data(TIME_ZONE_OSLO[cut:])
    assert tracker.parameters == {"TimeZone": "Europe/Oslo"}
    assert tracker.at_boundary


@pytest.mark.parametrize("cut", range(1, len(READY_IN_TRANSACTION)))
def test_ready_for_query_split_anywhere_counts_once_whole(cut: int) -> None:
    tracker = BackendTracker()
    tracker.receive_data(READY_IN_TRANSACTION[:cut])
    assert (tracker.ready_count, tracker.at_boundary) == (0, False)
    tracker.receive_data(READY_IN_TRANSACTION[cut:])
    assert (tracker.ready_count, tracker.transaction_status, tracker.at_boundary) == (1, b"T", True)


def test_backend_skips_a_huge_data_row_without_needing_it_whole() -> None:
    tracker = BackendTracker()
    tracker.receive_data(b"D\x00\x10\x00\x04")  # a 1 MiB DataRow
    tracker.receive_data(bytes(0x10_0000 - 1))
    assert not tracker.at_boundary
    tracker.receive_data(b"\x00" + READY_IDLE)
    assert (tracker.ready_count, tracker.at_boundary) == (1, True)


@pytest.mark.parametrize(
    "stream",
    [b"Z\x00\x00\x00\x05X", b"Z\x00\x00\x00\x05i", b"Z\x00\x00\x00\x04", b"Z\x00\x00\x00\x06II"],
    ids=["unknown-status", "lowercase-status", "no-status", "two-statuses"],
)
def test_ready_for_query_with_an_invalid_status_is_a_protocol_violation(stream: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="invalid status"):
        BackendTracker().receive_data(stream)


@pytest.mark.parametrize(
    "stream",
    [
        b"S\x00\x00\x00\x0cTimeZone",  # name unterminated
        b"S\x00\x00\x00\x0dTimeZone\x00",  # no value
        b"S\x00\x00\x00\x10TimeZone\x00UTC",  # value unterminated
        b"S\x00\x00\x00\x11TimeZone\x00\xffTC\x00",  # value not UTF-8
    ],
    ids=["name-unterminated", "no-value", "value-unterminated", "value-not-utf8"],
)
def test_malformed_parameter_status_is_a_protocol_violation(stream: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        BackendTracker().receive_data(stream)


def test_oversized_parameter_status_is_rejected_from_its_header_alone() -> None:
    tracker = BackendTracker()
    with pytest.raises(ProtocolViolation, match="too long"):
        tracker.receive_data(b"S\x00\x01\x00\x01")  # 65537 bytes declared


@pytest.mark.parametrize("length", [b"\x00\x00\x00\x00", b"\x00\x00\x00\x03"], ids=["0", "3"])
def test_backend_length_below_4_is_a_protocol_violation(length: bytes) -> None:
    with pytest.raises(ProtocolViolation, match=r"\(< 4\)"):
        BackendTracker().receive_data(READY_IDLE + b"D" + length)


# --- at_safe_point ------------------------------------------------------------------------


def test_fresh_connection_is_at_a_safe_point() -> None:
    assert at_safe_point(FrontendTracker(), BackendTracker())


def test_query_in_flight_is_not_a_safe_point_until_its_ready_for_query() -> None:
    frontend, backend = FrontendTracker(), BackendTracker()
    frontend.send(QUERY)
    assert not at_safe_point(frontend, backend)
    backend.receive_data(QUERY_RESULT)
    assert not at_safe_point(frontend, backend)
    backend.receive_data(READY_IDLE)
    assert at_safe_point(frontend, backend)


def test_pipelined_queries_need_every_ready_for_query() -> None:
    frontend, backend = FrontendTracker(), BackendTracker()
    frontend.send(QUERY + QUERY)
    backend.receive_data(QUERY_RESULT + READY_IDLE)
    assert not at_safe_point(frontend, backend)
    backend.receive_data(QUERY_RESULT + READY_IDLE)
    assert at_safe_point(frontend, backend)


def test_extended_batch_without_sync_is_not_a_safe_point() -> None:
    frontend, backend = FrontendTracker(), BackendTracker()
    frontend.send(EXTENDED_BATCH + FLUSH)
    backend.receive_data(PARSE_COMPLETE + BIND_COMPLETE + ROW_DESCRIPTION + DATA_ROW + COMMAND_COMPLETE)
    assert frontend.sync_points == backend.ready_count == 0
    assert not at_safe_point(frontend, backend)
    frontend.send(SYNC)
    assert not at_safe_point(frontend, backend)
    backend.receive_data(READY_IDLE)
    assert at_safe_point(frontend, backend)


def test_half_sent_client_message_is_not_a_safe_point() -> None:
    frontend, backend = FrontendTracker(), BackendTracker()
    frontend.send(QUERY[:3])
    assert frontend.sync_points == backend.ready_count == 0
    assert not at_safe_point(frontend, backend)


def test_half_received_ready_for_query_is_not_a_safe_point() -> None:
    frontend, backend = FrontendTracker(), BackendTracker()
    frontend.send(QUERY)
    backend.receive_data(QUERY_RESULT + READY_IDLE[:3])
    assert not at_safe_point(frontend, backend)
    backend.receive_data(READY_IDLE[3:])
    assert at_safe_point(frontend, backend)


def test_half_received_server_message_after_ready_for_query_is_not_a_safe_point() -> None:
    frontend, backend = FrontendTracker(), BackendTracker()
    frontend.send(QUERY)
    backend.receive_data(QUERY_RESULT + READY_IDLE + DATA_ROW[:7])
    assert backend.ready_count == frontend.sync_points
    assert not at_safe_point(frontend, backend)


def test_safe_point_does_not_depend_on_the_transaction_status() -> None:
    frontend, backend = FrontendTracker(), BackendTracker()
    frontend.send(QUERY)
    backend.receive_data(COMMAND_COMPLETE + READY_IN_TRANSACTION)
    assert at_safe_point(frontend, backend)
    assert backend.transaction_status == b"T"


def test_clean_terminate_leaves_a_safe_point_and_a_torn_one_does_not() -> None:
    backend = BackendTracker()
    clean = FrontendTracker()
    clean.send(TERMINATE)
    assert at_safe_point(clean, backend)
    torn = FrontendTracker()
    torn.send(TERMINATE[:2])
    torn.send(TERMINATE[2:])
    assert torn.terminated
    assert not at_safe_point(torn, backend)


# --- a stream split at every possible point -----------------------------------------------

FRONTEND_STREAM = (
    QUERY + EXTENDED_BATCH + FLUSH + SYNC + FUNCTION_CALL + COPY_DATA + COPY_DONE + CLOSE + PARSE + QUERY
)
BACKEND_STREAM = (
    AUTH_OK
    + TIME_ZONE_OSLO
    + APPLICATION_NAME
    + BACKEND_KEY_DATA
    + READY_IDLE
    + QUERY_RESULT
    + READY_IN_TRANSACTION
    + ERROR
    + READY_FAILED
    + TIME_ZONE_UTC
    + PARSE_COMPLETE
    + BIND_COMPLETE
    + DATA_ROW
    + READY_IN_TRANSACTION
)


def test_frontend_stream_split_at_every_point_ends_in_the_same_state() -> None:
    whole = FrontendTracker()
    assert whole.send(FRONTEND_STREAM) == len(FRONTEND_STREAM)
    assert frontend_state(whole) == (4, True, False, True)
    for cut in range(len(FRONTEND_STREAM) + 1):
        tracker = FrontendTracker()
        forwarded = tracker.send(FRONTEND_STREAM[:cut]) + tracker.send(FRONTEND_STREAM[cut:])
        assert forwarded == len(FRONTEND_STREAM), cut
        assert frontend_state(tracker) == frontend_state(whole), cut


def test_frontend_stream_fed_byte_at_a_time_ends_in_the_same_state() -> None:
    tracker = FrontendTracker()
    forwarded = sum(tracker.send(bytes([byte])) for byte in FRONTEND_STREAM)
    assert forwarded == len(FRONTEND_STREAM)
    assert frontend_state(tracker) == (4, True, False, True)


def test_terminated_stream_split_at_every_point_forwards_up_to_terminate() -> None:
    stream = FRONTEND_STREAM + SYNC + TERMINATE + QUERY
    terminate_at = len(FRONTEND_STREAM + SYNC)
    for cut in range(len(stream) + 1):
        tracker = FrontendTracker()
        forwarded = tracker.send(stream[:cut]) + tracker.send(stream[cut:])
        torn = terminate_at < cut < terminate_at + len(TERMINATE)
        expected_forwarded = cut if torn else terminate_at
        assert forwarded == expected_forwarded, cut
        assert frontend_state(tracker) == (5, False, True, not torn), cut


def test_backend_stream_split_at_every_point_ends_in_the_same_state() -> None:
    whole = BackendTracker()
    whole.receive_data(BACKEND_STREAM)
    assert backend_state(whole) == (
        4,
        b"T",
        {"TimeZone": "UTC", "application_name": "café"},
        True,
    )
    for cut in range(len(BACKEND_STREAM) + 1):
        tracker = BackendTracker()
        tracker.receive_data(BACKEND_STREAM[:cut])
        tracker.receive_data(BACKEND_STREAM[cut:])
        assert backend_state(tracker) == backend_state(whole), cut


def test_backend_stream_fed_byte_at_a_time_ends_in_the_same_state() -> None:
    tracker = BackendTracker()
    for byte in BACKEND_STREAM:
        tracker.receive_data(bytes([byte]))
    assert backend_state(tracker) == (
        4,
        b"T",
        {"TimeZone": "UTC", "application_name": "café"},
        True,
    )


# --- properties ---------------------------------------------------------------------------

# No example database: a run leaves no files behind, like `-p no:cacheprovider`.
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, database=None)


def typed(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


protocol_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)
frontend_message = st.one_of(
    st.sampled_from([QUERY, PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, FLUSH, FUNCTION_CALL, COPY_DONE]),
    st.binary(max_size=40).map(lambda body: typed(b"d", body)),
    protocol_text.map(lambda sql: typed(b"Q", sql.encode() + b"\x00")),
)
ready_for_query = st.sampled_from([READY_IDLE, READY_IN_TRANSACTION, READY_FAILED])
parameter_status = st.tuples(protocol_text, protocol_text)
backend_message = st.one_of(
    ready_for_query,
    parameter_status.map(lambda pair: typed(b"S", pair[0].encode() + b"\x00" + pair[1].encode() + b"\x00")),
    st.binary(max_size=40).map(lambda body: typed(b"D", body)),
    st.sampled_from([AUTH_OK, BACKEND_KEY_DATA, PARSE_COMPLETE, COMMAND_COMPLETE, ERROR]),
)


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
    return [stream[start:end] for start, end in itertools.pairwise(points)]


@PROPERTY_SETTINGS
@given(messages=st.lists(frontend_message, max_size=20), cuts=st.lists(st.integers(0, 10**6)))
def test_any_chunking_of_client_messages_matches_feeding_them_whole(
    messages: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(messages)
    whole = FrontendTracker()
    assert whole.send(stream) == len(stream)
    assert whole.sync_points == sum(message[:1] in (b"Q", b"S", b"F") for message in messages)

    chunked = FrontendTracker()
    forwarded = sum(chunked.send(chunk) for chunk in split(stream, cuts))
    assert forwarded == len(stream)
    assert frontend_state(chunked) == frontend_state(whole)


@PROPERTY_SETTINGS
@given(messages=st.lists(backend_message, max_size=20), cuts=st.lists(st.integers(0, 10**6)))
def test_any_chunking_of_server_messages_matches_feeding_them_whole(
    messages: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(messages)
    whole = BackendTracker()
    whole.receive_data(stream)
    ready = [message for message in messages if message[:1] == b"Z"]
    assert whole.ready_count == len(ready)
    assert whole.transaction_status == (ready[-1][5:] if ready else b"I")
    expected_parameters = {}
    for message in messages:
        if message[:1] == b"S":
            name, value, _ = message[5:].split(b"\x00")
            expected_parameters[name.decode()] = value.decode()
    assert whole.parameters == expected_parameters

    chunked = BackendTracker()
    for chunk in split(stream, cuts):
        chunked.receive_data(chunk)
    assert backend_state(chunked) == backend_state(whole)


@PROPERTY_SETTINGS
@given(messages=st.lists(frontend_message, max_size=10), cuts=st.lists(st.integers(0, 10**6)))
def test_any_chunking_before_terminate_forwards_exactly_up_to_it(
    messages: list[bytes], cuts: list[int]
) -> None:
    before = b"".join(messages)
    stream = before + TERMINATE + QUERY
    tracker = FrontendTracker()
    forwarded = sum(tracker.send(chunk) for chunk in split(stream, cuts))
    assert tracker.terminated
    if tracker.at_boundary:
        assert forwarded == len(before)
    else:
        assert len(before) < forwarded < len(before) + len(TERMINATE)


arbitrary_chunks = st.lists(st.binary(max_size=24), max_size=8)


@pytest.mark.parametrize("reader_class", [MessageReader, FrameReader])
@PROPERTY_SETTINGS
@given(chunks=arbitrary_chunks, max_message_size=st.sampled_from([16, 1 << 30]))
def test_random_bytes_make_message_reader_raise_only_protocol_violation(
    reader_class: type[MessageReader | FrameReader], chunks: list[bytes], max_message_size: int
) -> None:
    reader = reader_class(max_message_size)
    with contextlib.suppress(ProtocolViolation):
        for chunk in chunks:
            reader.receive_data(chunk)
            while reader.next_event() is not NEED_DATA:
                pass


startup_like = st.one_of(
    arbitrary_chunks,
    st.tuples(
        st.sampled_from(
            [
                b"\x00\x03\x00\x00",
                b"\x04\xd2\x16\x2e",
                b"\x04\xd2\x16\x2f",
                b"\x04\xd2\x16\x30",
                b"\x00\x02\x00\x00",
            ]
        ),
        st.binary(max_size=24),
    ).map(lambda pair: [struct.pack("!I", len(pair[0]) + len(pair[1]) + 4) + pair[0] + pair[1]]),
)


@PROPERTY_SETTINGS
@given(chunks=startup_like)
def test_random_bytes_make_startup_reader_raise_only_protocol_violation(
    chunks: list[bytes],
) -> None:
    reader = StartupReader()
    with contextlib.suppress(ProtocolViolation):
        for chunk in chunks:
            reader.receive_data(chunk)
            while reader.next_event() is not NEED_DATA:
                pass


@PROPERTY_SETTINGS
@given(packet=st.one_of(st.binary(max_size=40), startup_like.map(b"".join)))
def test_random_bytes_make_decode_startup_raise_only_protocol_violation(packet: bytes) -> None:
    with contextlib.suppress(ProtocolViolation):
        decode_startup(packet)


@PROPERTY_SETTINGS
@given(
    kind=st.one_of(
        st.sampled_from([b"R", b"S", b"K", b"Z", b"E", b"N", b"v"]), st.binary(min_size=1, max_size=1)
    ),
    payload=st.binary(max_size=40),
)
def test_random_payloads_make_decode_backend_raise_only_protocol_violation(
    kind: bytes, payload: bytes
) -> None:
    with contextlib.suppress(ProtocolViolation):
        decode_backend(RawMessage(kind, payload))


tracker_chunks = st.one_of(
    arbitrary_chunks,
    st.lists(
        st.tuples(st.sampled_from([b"Z", b"S", b"D", b"X", b"Q"]), st.binary(max_size=12)).map(
            lambda pair: typed(*pair)
        ),
        max_size=8,
    ),
)


@PROPERTY_SETTINGS
@given(chunks=tracker_chunks)
def test_random_bytes_make_trackers_raise_only_protocol_violation(chunks: list[bytes]) -> None:
    backend = BackendTracker()
    with contextlib.suppress(ProtocolViolation):
        for chunk in chunks:
            backend.receive_data(chunk)
    frontend = FrontendTracker()
    with contextlib.suppress(ProtocolViolation):
        for chunk in chunks:
            assert 0 <= frontend.send(chunk) <= len(chunk)
