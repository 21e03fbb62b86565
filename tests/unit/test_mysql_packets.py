"""MySQL packet framing and basic types: length-encoded ints/strings, NUL strings, PacketReader, frame."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError, ProtocolViolation
from protocols.events import NEED_DATA
from protocols.mysql.constants import MAX_PACKET_PAYLOAD
from protocols.mysql.packets import (
    Packet,
    PacketReader,
    decode_lenenc_int,
    decode_lenenc_str,
    encode_lenenc_int,
    encode_lenenc_str,
    frame,
    read_null_str,
)

FULL = MAX_PACKET_PAYLOAD  # 16 MiB - 1: a physical packet this long continues in the next one
COM_PING_PACKET = b"\x01\x00\x00\x00\x0e"
OK_PACKET = b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"


def read_all(reader: PacketReader) -> list[Packet]:
    packets = []
    while (packet := reader.next_event()) is not NEED_DATA:
        assert isinstance(packet, Packet)
        packets.append(packet)
    return packets


# --- length-encoded integers and strings ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (250, b"\xfa"),
        (251, b"\xfc\xfb\x00"),
        (0xFFFF, b"\xfc\xff\xff"),
        (0x10000, b"\xfd\x00\x00\x01"),
        (0xFFFFFF, b"\xfd\xff\xff\xff"),
        (0x1000000, b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00"),
        (2**64 - 1, b"\xfe" + b"\xff" * 8),
    ],
)
def test_lenenc_int_uses_the_shortest_form_at_each_boundary(value: int, encoded: bytes) -> None:
    assert encode_lenenc_int(value) == encoded
    assert decode_lenenc_int(b"xx" + encoded + b"yy", 2) == (value, 2 + len(encoded))


def test_lenenc_int_null_marker_decodes_as_none() -> None:
    assert decode_lenenc_int(b"\xfb", 0) == (None, 1)


def test_lenenc_int_0xff_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        decode_lenenc_int(b"\xff", 0)


@pytest.mark.parametrize(
    "truncated", [b"", b"\xfc\x01", b"\xfd\x01\x02", b"\xfe\x01\x02\x03\x04\x05\x06\x07"]
)
def test_truncated_lenenc_int_is_a_protocol_violation(truncated: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_lenenc_int(truncated, 0)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_lenenc_int_out_of_range_is_our_error(value: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_lenenc_int(value)


@given(st.integers(min_value=0, max_value=2**64 - 1))
@settings(max_examples=200)
def test_lenenc_int_round_trips(value: int) -> None:
    encoded = encode_lenenc_int(value)
    assert decode_lenenc_int(encoded, 0) == (value, len(encoded))


def test_lenenc_str_round_trips_short_and_long_strings() -> None:
    for data in (b"", b"def", bytes(300), bytes(70_000)):
        encoded = encode_lenenc_str(data)
        assert decode_lenenc_str(encoded, 0) == (data, len(encoded))
    assert encode_lenenc_str(b"def") == b"\x03def"


def test_lenenc_str_longer_than_the_buffer_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation, match="runs past"):
        decode_lenenc_str(b"\x05abc", 0)
    # A huge declared length is refused from the length alone.
    with pytest.raises(ProtocolViolation):
        decode_lenenc_str(b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f", 0)


def test_lenenc_str_null_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation, match="NULL"):
        decode_lenenc_str(b"\xfb", 0)


def test_read_null_str_returns_the_string_and_the_offset_after_the_nul() -> None:
    assert read_null_str(b"\x0a8.0.36\x00rest", 1) == (b"8.0.36", 8)
    assert read_null_str(b"\x00", 0) == (b"", 1)


def test_unterminated_null_str_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation, match="NUL"):
        read_null_str(b"mysql_native_password", 0)


# --- frame ----------------------------------------------------------------------------------


def test_frame_writes_length_and_sequence_id_and_returns_the_next_id() -> None:
    assert frame(b"\x0e", 0) == (COM_PING_PACKET, 1)
    assert frame(b"", 7) == (b"\x00\x00\x00\x07", 8)
    assert frame(b"abc", 255) == (b"\x03\x00\x00\xffabc", 0)


def test_frame_splits_a_payload_of_exactly_0xffffff_bytes_with_a_trailing_empty_packet() -> None:
    wire, next_id = frame(bytes(FULL), 3)
    assert next_id == 5
    assert wire[:4] == b"\xff\xff\xff\x03"
    assert wire[4 + FULL :] == b"\x00\x00\x00\x04"
    assert len(wire) == FULL + 8


def test_frame_splits_a_payload_one_byte_over_0xffffff() -> None:
    wire, next_id = frame(bytes(FULL) + b"z", 255)
    assert next_id == 1
    assert wire[:4] == b"\xff\xff\xff\xff"
    assert wire[4 + FULL :] == b"\x01\x00\x00\x00z"


def test_frame_splits_twice_0xffffff_into_two_full_packets_and_an_empty_one() -> None:
    wire, next_id = frame(bytes(2 * FULL), 0)
    assert next_id == 3
    assert wire[:4] == b"\xff\xff\xff\x00"
    assert wire[4 + FULL : 8 + FULL] == b"\xff\xff\xff\x01"
    assert wire[8 + 2 * FULL :] == b"\x00\x00\x00\x02"
    assert len(wire) == 2 * FULL + 12


def test_frame_refuses_a_sequence_id_that_is_not_a_byte() -> None:
    with pytest.raises(LocalProtocolError):
        frame(b"x", 256)


# --- PacketReader ----------------------------------------------------------------------------


def test_reader_reads_two_packets_from_one_chunk() -> None:
    reader = PacketReader()
    reader.receive_data(COM_PING_PACKET + OK_PACKET)
    assert read_all(reader) == [
        Packet(0, 0, b"\x0e"),
        Packet(1, 1, b"\x00\x00\x00\x02\x00\x00\x00"),
    ]
    assert len(reader) == 0


def test_reader_fed_byte_by_byte_yields_the_same_packets() -> None:
    stream = COM_PING_PACKET + b"\x00\x00\x00\x05" + OK_PACKET
    reader = PacketReader()
    packets: list[Packet] = []
    for index in range(len(stream)):
        reader.receive_data(stream[index : index + 1])
        packets += read_all(reader)
    assert packets == [
        Packet(0, 0, b"\x0e"),
        Packet(5, 5, b""),
        Packet(1, 1, b"\x00\x00\x00\x02\x00\x00\x00"),
    ]


@pytest.mark.parametrize("size", [FULL - 1, FULL, FULL + 1, 2 * FULL])
def test_reader_joins_continuation_packets_of_what_frame_splits(size: int) -> None:
    payload = bytes(size)
    wire, next_id = frame(payload, 254)
    reader = PacketReader()
    reader.receive_data(wire)
    (packet,) = read_all(reader)
    assert packet.sequence_id == 254
    assert (packet.last_sequence_id + 1) % 256 == next_id
    assert packet.payload == payload
    assert len(reader) == 0


def test_reader_waits_for_the_packet_that_ends_a_continuation() -> None:
    wire, _ = frame(bytes(FULL), 0)
    reader = PacketReader()
    reader.receive_data(wire[:-4])
    assert reader.next_event() is NEED_DATA
    reader.receive_data(wire[-4:])
    assert reader.next_event() == Packet(0, 1, bytes(FULL))


def test_continuation_with_the_wrong_sequence_id_is_a_protocol_violation() -> None:
    reader = PacketReader()
    reader.receive_data(b"\xff\xff\xff\x03" + bytes(FULL) + b"\x01\x00\x00\x05z")
    with pytest.raises(ProtocolViolation, match="sequence id 5, expected 4"):
        reader.next_event()


def test_oversized_declared_length_is_refused_from_the_header_alone() -> None:
    reader = PacketReader(max_payload_size=1000)
    reader.receive_data(b"\xe9\x03\x00\x00")  # declares 1001 bytes, none of them sent
    with pytest.raises(ProtocolViolation, match="exceeds the limit of 1000"):
        reader.next_event()


def test_oversized_joined_length_is_refused_at_the_continuation_header() -> None:
    reader = PacketReader(max_payload_size=FULL + 10)
    reader.receive_data(b"\xff\xff\xff\x00" + bytes(FULL) + b"\x0b\x00\x00\x01")
    with pytest.raises(ProtocolViolation, match="exceeds the limit"):
        reader.next_event()


def test_a_payload_at_the_limit_is_accepted() -> None:
    reader = PacketReader(max_payload_size=3)
    reader.receive_data(b"\x03\x00\x00\x00abc")
    assert reader.next_event() == Packet(0, 0, b"abc")


def test_take_bytes_and_take_buffer_hand_over_raw_bytes() -> None:
    reader = PacketReader()
    reader.receive_data(b"\x16\x03\x01")
    assert reader.take_bytes(4) is NEED_DATA
    assert reader.take_bytes(1) == b"\x16"
    reader.receive_data(COM_PING_PACKET)
    assert len(reader) == 7
    assert reader.take_buffer() == b"\x03\x01" + COM_PING_PACKET
    assert len(reader) == 0
    assert reader.next_event() is NEED_DATA


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=64))
@settings(max_examples=200)
def test_random_bytes_give_packets_need_data_or_protocol_violation(data: bytes, limit: int) -> None:
    reader = PacketReader(max_payload_size=limit)
    reader.receive_data(data)
    with contextlib.suppress(ProtocolViolation):
        read_all(reader)
