"""StartupReader, MessageReader and FrameReader: whole messages out of a byte stream, bounds checked
early; HeaderWalk: the same stream followed by its headers alone."""

from __future__ import annotations

import pytest

from protocols.errors import ProtocolViolation
from protocols.events import NEED_DATA
from protocols.postgres.framing import (
    END_OF_CHUNK,
    MARK,
    STOP_AT_HEADER,
    STOP_WHEN_WHOLE,
    FrameReader,
    HeaderWalk,
    MessageReader,
    StartupReader,
    stop_table,
)
from protocols.postgres.messages import (
    CancelRequest,
    GSSENCRequest,
    RawMessage,
    SSLRequest,
    StartupEvent,
    StartupMessage,
)

SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
GSSENC_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x30"
CANCEL_REQUEST = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\xde\xad\xbe\xef"
STARTUP = b"\x00\x00\x00\x21\x00\x03\x00\x00user\x00alice\x00database\x00app\x00\x00"
TLS_CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00"

AUTH_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
PARAMETER_STATUS = b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00"
BACKEND_KEY_DATA = b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\xde\xad\xbe\xef"
READY_FOR_QUERY = b"Z\x00\x00\x00\x05I"
TERMINATE = b"X\x00\x00\x00\x04"
BACKEND_STREAM = AUTH_OK + PARAMETER_STATUS + BACKEND_KEY_DATA + READY_FOR_QUERY
BACKEND_MESSAGES = [
    RawMessage(b"R", b"\x00\x00\x00\x00"),
    RawMessage(b"S", b"client_encoding\x00UTF8\x00"),
    RawMessage(b"K", b"\x00\x00\x04\xd2\xde\xad\xbe\xef"),
    RawMessage(b"Z", b"I"),
]


def drain_startup(reader: StartupReader) -> list[StartupEvent]:
    events = []
    while (event := reader.next_event()) is not NEED_DATA:
        assert isinstance(event, StartupEvent)
        events.append(event)
    return events


def drain_messages(reader: MessageReader) -> list[RawMessage]:
    messages = []
    while (message := reader.next_event()) is not NEED_DATA:
        assert isinstance(message, RawMessage)
        messages.append(message)
    return messages


# --- StartupReader ------------------------------------------------------------------------


def test_startup_reader_reads_ssl_request_then_startup_from_one_chunk() -> None:
    reader = StartupReader()
    reader.receive_data(SSL_REQUEST + STARTUP)
    assert reader.next_event() == SSLRequest()
    assert reader.next_event() == StartupMessage({"user": "alice", "database": "app"})
    assert reader.next_event() is NEED_DATA
    assert len(reader) == 0


def test_startup_reader_fed_byte_at_a_time_yields_the_same_events() -> None:
    stream = GSSENC_REQUEST + SSL_REQUEST + STARTUP
    reader = StartupReader()
    events: list[StartupEvent] = []
    for index in range(len(stream)):
        reader.receive_data(stream[index : index + 1])
        events += drain_startup(reader)
    assert events == [
        GSSENCRequest(),
        SSLRequest(),
        StartupMessage({"user": "alice", "database": "app"}),
    ]


def test_startup_reader_reads_a_cancel_request() -> None:
    reader = StartupReader()
    reader.receive_data(CANCEL_REQUEST)
    assert reader.next_event() == CancelRequest(1234, 0xDEADBEEF)
    assert reader.next_event() is NEED_DATA


@pytest.mark.parametrize("size", [0, 1, 3, 4, 8, 32])
def test_startup_reader_needs_data_until_the_whole_packet_arrives(size: int) -> None:
    reader = StartupReader()
    reader.receive_data(STARTUP[:size])
    assert reader.next_event() is NEED_DATA
    assert len(reader) == size


def test_startup_reader_hands_over_the_bytes_after_ssl_request() -> None:
    reader = StartupReader()
    reader.receive_data(SSL_REQUEST + TLS_CLIENT_HELLO_START)
    assert reader.next_event() == SSLRequest()
    assert reader.take_buffer() == TLS_CLIENT_HELLO_START
    assert reader.take_buffer() == b""
    assert len(reader) == 0
    assert reader.next_event() is NEED_DATA


def test_startup_reader_hands_over_a_partial_packet_untouched() -> None:
    reader = StartupReader()
    reader.receive_data(STARTUP[:10])
    assert reader.next_event() is NEED_DATA
    assert reader.take_buffer() == STARTUP[:10]


@pytest.mark.parametrize(
    "header", [b"\x00\x00\x00\x00", b"\x00\x00\x00\x04", b"\x00\x00\x00\x07"], ids=["0", "4", "7"]
)
def test_startup_reader_rejects_a_length_below_8_from_the_length_alone(header: bytes) -> None:
    reader = StartupReader()
    reader.receive_data(header)
    with pytest.raises(ProtocolViolation, match="invalid startup packet length"):
        reader.next_event()


@pytest.mark.parametrize(
    "header",
    [b"\x00\x00\x27\x11", b"\x00\x01\x00\x00", b"\xff\xff\xff\xff"],
    ids=["10001", "65536", "4GiB"],
)
def test_startup_reader_rejects_a_length_above_10000_before_the_body(header: bytes) -> None:
    reader = StartupReader()
    reader.receive_data(header)
    with pytest.raises(ProtocolViolation, match="invalid startup packet length"):
        reader.next_event()


def test_startup_reader_accepts_a_packet_of_exactly_10000_bytes() -> None:
    value = "x" * 9966
    packet = (
        b"\x00\x00\x27\x10\x00\x03\x00\x00user\x00a\x00application_name\x00" + value.encode() + b"\x00\x00"
    )
    assert len(packet) == 10_000
    reader = StartupReader()
    reader.receive_data(packet)
    assert reader.next_event() == StartupMessage({"user": "a", "application_name": value})


def test_startup_reader_passes_on_a_decoding_error() -> None:
    reader = StartupReader()
    reader.receive_data(b"\x00\x00\x00\x09\x00\x02\x00\x00\x00")
    with pytest.raises(ProtocolViolation, match=r"protocol 2\.0"):
        reader.next_event()


# --- MessageReader ------------------------------------------------------------------------


def test_message_reader_reads_several_messages_from_one_chunk() -> None:
    reader = MessageReader()
    reader.receive_data(BACKEND_STREAM)
    assert drain_messages(reader) == BACKEND_MESSAGES
    assert len(reader) == 0


def test_message_reader_fed_byte_at_a_time_yields_the_same_messages() -> None:
    reader = MessageReader()
    messages: list[RawMessage] = []
    for index in range(len(BACKEND_STREAM)):
        reader.receive_data(BACKEND_STREAM[index : index + 1])
        messages += drain_messages(reader)
    assert messages == BACKEND_MESSAGES


def test_message_reader_gives_each_message_as_soon_as_its_last_byte_arrives() -> None:
    reader = MessageReader()
    reader.receive_data(READY_FOR_QUERY[:-1])
    assert reader.next_event() is NEED_DATA
    reader.receive_data(READY_FOR_QUERY[-1:])
    assert reader.next_event() == RawMessage(b"Z", b"I")


def test_message_reader_reads_a_message_with_an_empty_body() -> None:
    reader = MessageReader()
    reader.receive_data(TERMINATE)
    assert reader.next_event() == RawMessage(b"X", b"")
    assert reader.next_event() is NEED_DATA


@pytest.mark.parametrize("size", [0, 1, 4, 5, 8, len(PARAMETER_STATUS) - 1])
def test_message_reader_needs_data_on_a_partial_message(size: int) -> None:
    reader = MessageReader()
    reader.receive_data(PARAMETER_STATUS[:size])
    assert reader.next_event() is NEED_DATA
    assert len(reader) == size


def test_message_reader_hands_over_the_unconsumed_bytes() -> None:
    reader = MessageReader()
    reader.receive_data(AUTH_OK + PARAMETER_STATUS[:7])
    assert reader.next_event() == RawMessage(b"R", b"\x00\x00\x00\x00")
    assert reader.next_event() is NEED_DATA
    assert reader.take_buffer() == PARAMETER_STATUS[:7]
    assert len(reader) == 0
    assert reader.next_event() is NEED_DATA


def test_message_reader_rejects_an_oversized_length_from_the_header_alone() -> None:
    reader = MessageReader(max_message_size=1024)
    reader.receive_data(b"D\x00\x00\x04\x01")  # declares 1025
    with pytest.raises(ProtocolViolation, match="exceeds the limit of 1024 bytes"):
        reader.next_event()


def test_message_reader_waits_for_a_body_of_exactly_the_limit() -> None:
    reader = MessageReader(max_message_size=1024)
    reader.receive_data(b"D\x00\x00\x04\x00")  # declares 1024
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\x00" * 1020)
    assert reader.next_event() == RawMessage(b"D", b"\x00" * 1020)


@pytest.mark.parametrize("header", [b"D\x40\x00\x00\x01", b"D\xff\xff\xff\xff"], ids=["1GiB+1", "4GiB"])
def test_message_reader_default_limit_is_one_gibibyte(header: bytes) -> None:
    reader = MessageReader()
    reader.receive_data(header)
    with pytest.raises(ProtocolViolation, match="exceeds the limit"):
        reader.next_event()


def test_message_reader_default_limit_allows_one_gibibyte() -> None:
    reader = MessageReader()
    reader.receive_data(b"D\x40\x00\x00\x00")
    assert reader.next_event() is NEED_DATA


@pytest.mark.parametrize("header", [b"Z\x00\x00\x00\x00", b"Z\x00\x00\x00\x03"], ids=["0", "3"])
def test_message_reader_rejects_a_length_below_4(header: bytes) -> None:
    reader = MessageReader()
    reader.receive_data(header)
    with pytest.raises(ProtocolViolation, match=r"declares length \d \(< 4\)"):
        reader.next_event()


def test_message_reader_reads_messages_before_a_bad_one() -> None:
    reader = MessageReader()
    reader.receive_data(READY_FOR_QUERY + b"Z\x00\x00\x00\x02")
    assert reader.next_event() == RawMessage(b"Z", b"I")
    with pytest.raises(ProtocolViolation):
        reader.next_event()


# --- take_bytes: raw bytes outside the message framing -------------------------------------


def test_take_bytes_reads_the_one_byte_ssl_answer_and_leaves_what_follows() -> None:
    reader = MessageReader()
    assert reader.take_bytes(1) is NEED_DATA
    reader.receive_data(b"N" + AUTH_OK)
    assert reader.take_bytes(1) == b"N"
    assert reader.next_event() == RawMessage(b"R", b"\x00\x00\x00\x00")


def test_take_bytes_needs_data_until_all_requested_bytes_arrive() -> None:
    reader = StartupReader()
    reader.receive_data(b"\x16\x03")
    assert reader.take_bytes(3) is NEED_DATA
    assert len(reader) == 2
    reader.receive_data(b"\x01\x02")
    assert reader.take_bytes(3) == b"\x16\x03\x01"
    assert reader.take_buffer() == b"\x02"


# --- FrameReader: the same framing, each message as the bytes it came in ---------------------


def test_frame_reader_hands_out_each_message_as_it_came() -> None:
    reader = FrameReader()
    reader.receive_data(BACKEND_STREAM + PARAMETER_STATUS[:7])
    assert reader.next_event() == AUTH_OK
    assert reader.next_event() == PARAMETER_STATUS
    assert reader.next_event() == BACKEND_KEY_DATA
    assert reader.next_event() == READY_FOR_QUERY
    assert reader.next_event() is NEED_DATA
    assert reader.peek_type() == b"S"
    assert reader.take_buffer() == PARAMETER_STATUS[:7]


def test_frame_reader_fed_byte_at_a_time_matches_the_message_reader() -> None:
    frames, messages = FrameReader(), MessageReader()
    out: list[bytes] = []
    for index in range(len(BACKEND_STREAM)):
        frames.receive_data(BACKEND_STREAM[index : index + 1])
        while (message := frames.next_event()) is not NEED_DATA:
            assert isinstance(message, bytes)
            out.append(message)
    messages.receive_data(BACKEND_STREAM)
    assert [RawMessage(frame[:1], frame[5:]) for frame in out] == drain_messages(messages)


def test_frame_reader_checks_the_length_like_the_message_reader() -> None:
    reader = FrameReader(max_message_size=1024)
    reader.receive_data(b"D\x00\x00\x04\x01")
    with pytest.raises(ProtocolViolation, match="exceeds the limit of 1024 bytes"):
        reader.next_event()
    reader = FrameReader()
    reader.receive_data(b"Z\x00\x00\x00\x03")
    with pytest.raises(ProtocolViolation, match=r"declares length 3 \(< 4\)"):
        reader.next_event()


# --- HeaderWalk -----------------------------------------------------------------------------


def walk_chunk(walk: HeaderWalk, chunk: bytes) -> list[tuple[str, bytes, bool]]:
    """Each stop in ``chunk``: its type, the message bytes of it that are here, and ``marked``."""
    walk.receive_data(chunk)
    stops = []
    while (kind := walk.next_stop()) != END_OF_CHUNK:
        stops.append((chr(kind), walk.data[walk.start : walk.end], walk.marked))
    return stops


def test_header_walk_steps_over_other_messages_and_stops_at_its_stops() -> None:
    walk = HeaderWalk(stop_table({b"Z": STOP_WHEN_WHOLE, b"K": STOP_AT_HEADER}), 64, "server")
    assert walk_chunk(walk, BACKEND_STREAM) == [("K", BACKEND_KEY_DATA, False), ("Z", READY_FOR_QUERY, False)]
    assert walk.at_boundary and walk.end == len(BACKEND_STREAM)


def test_header_walk_stops_at_a_header_before_its_body_arrives() -> None:
    walk = HeaderWalk(stop_table({b"S": STOP_AT_HEADER}), 64, "server")
    assert walk_chunk(walk, PARAMETER_STATUS[:5]) == [("S", PARAMETER_STATUS[:5], False)]
    assert walk.mid_body and not walk.at_boundary
    assert walk_chunk(walk, PARAMETER_STATUS[5:] + READY_FOR_QUERY) == []
    assert walk.at_boundary


@pytest.mark.parametrize("cut", range(1, len(READY_FOR_QUERY)))
def test_header_walk_carries_a_split_message_until_it_is_whole(cut: int) -> None:
    walk = HeaderWalk(stop_table({b"Z": STOP_WHEN_WHOLE}), 64, "server")
    assert walk_chunk(walk, AUTH_OK + READY_FOR_QUERY[:cut]) == []
    assert not walk.at_boundary and not walk.mid_body
    assert walk.end == len(AUTH_OK)  # the rest is carried, not yet passed
    assert walk_chunk(walk, READY_FOR_QUERY[cut:]) == [("Z", READY_FOR_QUERY, False)]
    assert walk.carried == cut and walk.at_boundary


def test_header_walk_marks_the_messages_it_steps_over_for_that() -> None:
    walk = HeaderWalk(stop_table({b"Q": STOP_AT_HEADER, b"K": MARK}), 0, "client")
    query = b"Q\x00\x00\x00\x05;"
    assert walk_chunk(walk, query + BACKEND_KEY_DATA + AUTH_OK + query + AUTH_OK) == [
        ("Q", query, False),
        ("Q", query, True),
    ]
    assert not walk.marked
    walk_chunk(walk, BACKEND_KEY_DATA)
    assert walk.marked


def test_header_walk_refuses_a_message_to_keep_whole_beyond_its_limit() -> None:
    walk = HeaderWalk(stop_table({b"S": STOP_WHEN_WHOLE}), len(PARAMETER_STATUS) - 6, "server")
    with pytest.raises(ProtocolViolation, match="server message 'S' is too long"):
        walk_chunk(walk, PARAMETER_STATUS[:-1])
