"""Packet framing and the protocol's basic types (length-encoded ints and strings).

Theory of operation: every MySQL packet is a 4-byte header (3-byte little-endian payload
length, 1-byte sequence id) and a payload. A payload of 0xFFFFFF bytes or more is split
into physical packets of exactly 0xFFFFFF bytes, the last one shorter (possibly empty), with
consecutive sequence ids. ``PacketReader`` joins them into one logical ``Packet`` and checks
the joined size against its bound from the headers alone, before buffering any body;
``frame`` does the reverse.
"""

from __future__ import annotations

import struct
from typing import Final

from protocols.buffer import ReceiveBuffer
from protocols.errors import LocalProtocolError, MessageTooLarge, ProtocolViolation
from protocols.events import NEED_DATA, NeedData
from protocols.mysql.constants import MAX_PACKET_PAYLOAD

# The header read as one little-endian uint32: low 24 bits length, high 8 bits sequence id.
HEADER = struct.Struct("<I")
HEADER_SIZE = HEADER.size


def payload_length_at(data: bytes, position: int) -> int:
    """The payload length in the header at ``position`` (its low 3 bytes), by byte indexing:
    no struct call, for code that walks every packet of a stream."""
    return data[position] | data[position + 1] << 8 | data[position + 2] << 16


UINT16 = struct.Struct("<H")
UINT32 = struct.Struct("<I")
UINT64 = struct.Struct("<Q")

SEQUENCE_MODULUS = 256
# Generous enough for any row or LOAD DATA chunk a client or server sends (the servers' own
# max_allowed_packet tops out at 1 GiB); the bound keeps a hostile length from allocating.
DEFAULT_MAX_PAYLOAD_SIZE = 1 << 30

# Length-encoded integers: one byte below 251, else a marker byte and 2, 3 or 8 bytes.
LENENC_NULL = 0xFB
LENENC_2 = 0xFC
LENENC_3 = 0xFD
LENENC_8 = 0xFE
LENENC_INVALID = 0xFF  # never a length: it is the first byte of an ERR packet
_LENENC_1_LIMIT = 251
_LENENC_2_LIMIT = 1 << 16
_LENENC_3_LIMIT = 1 << 24
_LENENC_8_LIMIT = 1 << 64

Buffer = bytes | bytearray


def encode_lenenc_int(value: int) -> bytes:
    if value < 0 or value >= _LENENC_8_LIMIT:
        raise LocalProtocolError(f"{value} does not fit a length-encoded integer")
    if value < _LENENC_1_LIMIT:
        return bytes((value,))
    if value < _LENENC_2_LIMIT:
        return bytes((LENENC_2,)) + UINT16.pack(value)
    if value < _LENENC_3_LIMIT:
        return bytes((LENENC_3,)) + value.to_bytes(3, "little")
    return bytes((LENENC_8,)) + UINT64.pack(value)


def decode_lenenc_int(buf: Buffer, offset: int) -> tuple[int | None, int]:
    """The length-encoded int at ``offset`` (None for the NULL marker) and the offset after it."""
    if offset >= len(buf):
        raise ProtocolViolation("length-encoded integer missing at the end of the packet")
    first = buf[offset]
    if first < _LENENC_1_LIMIT:
        return first, offset + 1
    if first == LENENC_NULL:
        return None, offset + 1
    if first == LENENC_INVALID:
        raise ProtocolViolation("0xFF is not a valid length-encoded integer")
    size = 2 if first == LENENC_2 else 3 if first == LENENC_3 else 8
    end = offset + 1 + size
    if end > len(buf):
        raise ProtocolViolation("truncated length-encoded integer")
    return int.from_bytes(buf[offset + 1 : end], "little"), end


def encode_lenenc_str(data: bytes) -> bytes:
    return encode_lenenc_int(len(data)) + data


def decode_lenenc_str(buf: Buffer, offset: int) -> tuple[bytes, int]:
    length, offset = decode_lenenc_int(buf, offset)
    if length is None:
        raise ProtocolViolation("NULL where a length-encoded string was expected")
    end = offset + length
    if end > len(buf):
        raise ProtocolViolation(f"length-encoded string of {length} bytes runs past the packet")
    return bytes(buf[offset:end]), end


def read_null_str(buf: Buffer, offset: int) -> tuple[bytes, int]:
    """The NUL-terminated string at ``offset`` (without the NUL) and the offset after the NUL."""
    end = buf.find(b"\x00", offset)
    if end < 0:
        raise ProtocolViolation("string is not NUL-terminated")
    return bytes(buf[offset:end]), end + 1


def next_sequence_id(sequence_id: int) -> int:
    return (sequence_id + 1) % SEQUENCE_MODULUS


class Packet:
    """One logical packet: its payload joined from every physical packet that carried it.

    A plain native class, not a dataclass: one is built for every packet a client sends, and
    mypyc leaves a dataclass's ``__init__`` interpreted.
    """

    __slots__ = ("last_sequence_id", "payload", "sequence_id")

    def __init__(self, sequence_id: int, last_sequence_id: int, payload: bytes) -> None:
        self.sequence_id: Final = sequence_id  # of the first physical packet
        # Of the last one: the reply continues from next_sequence_id(this).
        self.last_sequence_id: Final = last_sequence_id
        self.payload: Final = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Packet) and (
            (other.sequence_id, other.last_sequence_id, other.payload)
            == (self.sequence_id, self.last_sequence_id, self.payload)
        )

    def __hash__(self) -> int:
        return hash((self.sequence_id, self.last_sequence_id, self.payload))

    def __repr__(self) -> str:
        return f"Packet({self.sequence_id}, {self.last_sequence_id}, {self.payload!r})"


def frame(payload: bytes, sequence_id: int) -> tuple[bytes, int]:
    """The physical packets carrying ``payload``, and the sequence id that comes next."""
    if not 0 <= sequence_id < SEQUENCE_MODULUS:
        raise LocalProtocolError(f"sequence id {sequence_id} is not a byte")
    size = len(payload)
    if size < MAX_PACKET_PAYLOAD:
        return HEADER.pack(size | sequence_id << 24) + payload, next_sequence_id(sequence_id)
    parts = []
    offset = 0
    # A chunk of exactly MAX_PACKET_PAYLOAD says "more follows", so a payload that is an exact
    # multiple of it ends with an empty packet: hence "<=" rather than "<".
    while offset <= size:
        chunk = payload[offset : offset + MAX_PACKET_PAYLOAD]
        parts.append(HEADER.pack(len(chunk) | sequence_id << 24))
        parts.append(chunk)
        sequence_id = next_sequence_id(sequence_id)
        offset += MAX_PACKET_PAYLOAD
    return b"".join(parts), sequence_id


class PacketReader(ReceiveBuffer):
    """Reads logical packets in either direction, bounded by ``max_payload_size``."""

    def __init__(self, max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE) -> None:
        super().__init__()
        self.max_payload_size = max_payload_size
        self.limit_name = "the limit"  # what the bound is called in errors (a config key, for clients)

    @property
    def incomplete(self) -> bool:
        """Part of a packet is here and the rest is not (checked only off the hot path)."""
        if not self._data:
            return False
        data = self._data
        offset = 0
        while len(data) >= offset + HEADER_SIZE:
            length = HEADER.unpack_from(data, offset)[0] & MAX_PACKET_PAYLOAD
            offset += HEADER_SIZE + length
            if len(data) < offset:
                return True
            if length < MAX_PACKET_PAYLOAD:
                return False  # a whole packet waits to be read
        return True

    def next_event(self) -> Packet | NeedData:
        data = self._data
        offset = 0
        total = 0
        first_sequence_id = sequence_id = -1
        bodies: list[tuple[int, int]] = []
        while True:
            if len(data) < offset + HEADER_SIZE:
                return NEED_DATA
            (header,) = HEADER.unpack_from(data, offset)
            length, packet_sequence_id = header & MAX_PACKET_PAYLOAD, header >> 24
            if first_sequence_id < 0:
                first_sequence_id = packet_sequence_id
            elif packet_sequence_id != next_sequence_id(sequence_id):
                raise ProtocolViolation(
                    f"continuation packet has sequence id {packet_sequence_id}, "
                    f"expected {next_sequence_id(sequence_id)}"
                )
            sequence_id = packet_sequence_id
            total += length
            if total > self.max_payload_size:
                raise MessageTooLarge(
                    f"packet of at least {total} bytes exceeds {self.limit_name} "
                    f"of {self.max_payload_size} bytes",
                    total,
                    self.max_payload_size,
                    next_sequence_id(packet_sequence_id),
                )
            start = offset + HEADER_SIZE
            offset = start + length
            if len(data) < offset:
                return NEED_DATA
            bodies.append((start, offset))
            if length < MAX_PACKET_PAYLOAD:
                break
        if len(bodies) == 1:
            payload = bytes(data[bodies[0][0] : offset])
        else:
            payload = b"".join(data[start:end] for start, end in bodies)
        del data[:offset]
        return Packet(first_sequence_id, sequence_id, payload)
