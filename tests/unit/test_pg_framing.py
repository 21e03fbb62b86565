"""StartupReader and MessageReader: whole messages out of a byte stream, bounds checked early."""

from __future__ import annotations

import pytest

from protocols.errors import ProtocolViolation
from protocols.events import NEED_DATA
from protocols.postgres.framing import MessageReader, StartupReader
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
    while (message := reader.next_message()) is not NEED_DATA:
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
    assert reader.next_message() is NEED_DATA
    reader.receive_data(READY_FOR_QUERY[-1:])
    assert reader.next_message() == RawMessage(b"Z", b"I")


def test_message_reader_reads_a_message_with_an_empty_body() -> None:
    reader = MessageReader()
    reader.receive_data(TERMINATE)
    assert reader.next_message() == RawMessage(b"X", b"")
    assert reader.next_message() is NEED_DATA


@pytest.mark.parametrize("size", [0, 1, 4, 5, 8, len(PARAMETER_STATUS) - 1])
def test_message_reader_needs_data_on_a_partial_message(size: int) -> None:
    reader = MessageReader()
    reader.receive_data(PARAMETER_STATUS[:size])
    assert reader.next_message() is NEED_DATA
    assert len(reader) == size


def test_message_reader_hands_over_the_unconsumed_bytes() -> None:
    reader = MessageReader()
    reader.receive_data(AUTH_OK + PARAMETER_STATUS[:7])
    assert reader.next_message() == RawMessage(b"R", b"\x00\x00\x00\x00")
    assert reader.next_message() is NEED_DATA
    assert reader.take_buffer() == PARAMETER_STATUS[:7]
    assert len(reader) == 0
    assert reader.next_message() is NEED_DATA


def test_message_reader_rejects_an_oversized_length_from_the_header_alone() -> None:
    reader = MessageReader(max_message_size=1024)
    reader.receive_data(b"D\x00\x00\x04\x01")  # declares 1025
    with pytest.raises(ProtocolViolation, match="exceeds the limit of 1024 bytes"):
        reader.next_message()


def test_message_reader_waits_for_a_body_of_exactly_the_limit() -> None:
    reader = MessageReader(max_message_size=1024)
    reader.receive_data(b"D\x00\x00\x04\x00")  # declares 1024
    assert reader.next_message() is NEED_DATA
    reader.receive_data(b"\x00" * 1020)
    assert reader.next_message() == RawMessage(b"D", b"\x00" * 1020)


@pytest.mark.parametrize("header", [b"D\x40\x00\x00\x01", b"D\xff\xff\xff\xff"], ids=["1GiB+1", "4GiB"])
def test_message_reader_default_limit_is_one_gibibyte(header: bytes) -> None:
    reader = MessageReader()
    reader.receive_data(header)
    with pytest.raises(ProtocolViolation, match="exceeds the limit"):
        reader.next_message()


def test_message_reader_default_limit_allows_one_gibibyte() -> None:
    reader = MessageReader()
    reader.receive_data(b"D\x40\x00\x00\x00")
    assert reader.next_message() is NEED_DATA


@pytest.mark.parametrize("header", [b"Z\x00\x00\x00\x00", b"Z\x00\x00\x00\x03"], ids=["0", "3"])
def test_message_reader_rejects_a_length_below_4(header: bytes) -> None:
    reader = MessageReader()
    reader.receive_data(header)
    with pytest.raises(ProtocolViolation, match=r"declares length \d \(< 4\)"):
        reader.next_message()


def test_message_reader_reads_messages_before_a_bad_one() -> None:
    reader = MessageReader()
    reader.receive_data(READY_FOR_QUERY + b"Z\x00\x00\x00\x02")
    assert reader.next_message() == RawMessage(b"Z", b"I")
    with pytest.raises(ProtocolViolation):
        reader.next_message()


# --- take_bytes: raw bytes outside the message framing -------------------------------------


def test_take_bytes_reads_the_one_byte_ssl_answer_and_leaves_what_follows() -> None:
    reader = MessageReader()
    assert reader.take_bytes(1) is NEED_DATA
    reader.receive_data(b"N" + AUTH_OK)
    assert reader.take_bytes(1) == b"N"
    assert reader.next_message() == RawMessage(b"R", b"\x00\x00\x00\x00")


def test_take_bytes_needs_data_until_all_requested_bytes_arrive() -> None:
    reader = StartupReader()
    reader.receive_data(b"\x16\x03")
    assert reader.take_bytes(3) is NEED_DATA
    assert len(reader) == 2
    reader.receive_data(b"\x01\x02")
    assert reader.take_bytes(3) == b"\x16\x03\x01"
    assert reader.take_buffer() == b"\x02"
