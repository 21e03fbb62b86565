"""PostgreSQL extended-query messages (Parse, Bind, Describe, Close, Execute, Sync, Flush,
Query), decoded and re-encoded byte for byte, so transaction pooling can rename prepared
statements on their way upstream and change nothing else.

Text fields are decoded as UTF-8 with ``surrogateescape``: a client whose client_encoding
is not UTF-8 (LATIN1, SQL_ASCII, ...) still round-trips exactly, because the proxy must not
reject or alter bytes the server itself would accept.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Self

from protocols.errors import LocalProtocolError, ProtocolViolation
from protocols.postgres.messages import (
    BIND,
    CLOSE,
    DESCRIBE,
    EXECUTE,
    FLUSH,
    INT32,
    PARSE,
    QUERY,
    SYNC,
    RawMessage,
    frame,
)

# --- backend message types of the extended protocol ------------------------------------------
# (COMMAND_COMPLETE lives in messages.py with the other simple-query backend types.)
PARSE_COMPLETE = b"1"
BIND_COMPLETE = b"2"
CLOSE_COMPLETE = b"3"
NO_DATA = b"n"
PARAMETER_DESCRIPTION = b"t"
ROW_DESCRIPTION = b"T"
PORTAL_SUSPENDED = b"s"
EMPTY_QUERY_RESPONSE = b"I"

# --- what a Describe or Close names ---------------------------------------------------------
TARGET_STATEMENT = b"S"
TARGET_PORTAL = b"P"
TARGET_KINDS = frozenset({TARGET_STATEMENT, TARGET_PORTAL})

# --- parameter and result format codes ------------------------------------------------------
FORMAT_TEXT = 0
FORMAT_BINARY = 1

NULL_PARAMETER_LENGTH = -1
# Every count in these messages is an Int16 the server reads unsigned.
MAX_COUNT = 0xFFFF

COUNT = struct.Struct("!H")
FORMAT_CODE = struct.Struct("!h")
OID = struct.Struct("!I")  # type OIDs are unsigned 32-bit on the wire

_TEXT_ENCODING = "utf-8"
_TEXT_ERRORS = "surrogateescape"


# --- field helpers ---------------------------------------------------------------------------


def _text(text: str) -> bytes:
    """A NUL-terminated protocol string, the inverse of ``_read_text``."""
    try:
        encoded = text.encode(_TEXT_ENCODING, _TEXT_ERRORS)
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"cannot encode protocol string: {exc.reason}") from exc
    if b"\x00" in encoded:
        raise LocalProtocolError("a protocol string cannot contain NUL")
    return encoded + b"\x00"


def _read_text(payload: bytes, offset: int, what: str) -> tuple[str, int]:
    end = payload.find(b"\x00", offset)
    if end < 0:
        raise ProtocolViolation(f"{what} is not NUL-terminated")
    return payload[offset:end].decode(_TEXT_ENCODING, _TEXT_ERRORS), end + 1


def _read_count(payload: bytes, offset: int, what: str) -> tuple[int, int]:
    if offset + COUNT.size > len(payload):
        raise ProtocolViolation(f"truncated {what} count")
    return COUNT.unpack_from(payload, offset)[0], offset + COUNT.size


def _read_array(
    payload: bytes, offset: int, item: struct.Struct, count: int, what: str
) -> tuple[tuple[int, ...], int]:
    # The count is at most 65535, and the length is checked before anything is unpacked.
    end = offset + count * item.size
    if end > len(payload):
        raise ProtocolViolation(f"truncated {what}")
    return tuple(value for (value,) in item.iter_unpack(payload[offset:end])), end


def _pack_count(count: int, what: str) -> bytes:
    if count > MAX_COUNT:
        raise LocalProtocolError(f"too many {what} ({count} > {MAX_COUNT})")
    return COUNT.pack(count)


def _pack_array(item: struct.Struct, values: Iterable[int], what: str) -> bytes:
    try:
        return b"".join(item.pack(value) for value in values)
    except struct.error as exc:
        raise LocalProtocolError(f"{what} out of range: {exc}") from exc


def _expect_end(payload: bytes, offset: int, what: str) -> None:
    if offset != len(payload):
        raise ProtocolViolation(f"trailing bytes in {what}")


def _read_target(payload: bytes, what: str) -> tuple[bytes, str]:
    kind = payload[:1]
    if kind not in TARGET_KINDS:
        raise ProtocolViolation(f"{what} names neither a statement nor a portal: {kind!r}")
    name, offset = _read_text(payload, 1, f"{what} name")
    _expect_end(payload, offset, what)
    return kind, name


# --- frontend messages -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parse:
    statement: str
    query: str
    parameter_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        types = self.parameter_types
        return frame(
            PARSE,
            _text(self.statement)
            + _text(self.query)
            + _pack_count(len(types), "parameter types")
            + _pack_array(OID, types, "parameter type OID"),
        )

    @classmethod
    def decode(cls, payload: bytes) -> Parse:
        """Decode a Parse payload (the bytes after type and length)."""
        statement, offset = _read_text(payload, 0, "Parse statement name")
        query, offset = _read_text(payload, offset, "Parse query")
        count, offset = _read_count(payload, offset, "Parse parameter type")
        types, offset = _read_array(payload, offset, OID, count, "Parse parameter types")
        _expect_end(payload, offset, "Parse")
        return cls(statement, query, types)


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    parameter_formats: tuple[int, ...] = ()
    parameters: tuple[bytes | None, ...] = ()  # None is SQL NULL (length -1 on the wire)
    result_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        parts = [
            _text(self.portal),
            _text(self.statement),
            _pack_count(len(self.parameter_formats), "parameter formats"),
            _pack_array(FORMAT_CODE, self.parameter_formats, "parameter format code"),
            _pack_count(len(self.parameters), "parameters"),
        ]
        for value in self.parameters:
            if value is None:
                parts.append(INT32.pack(NULL_PARAMETER_LENGTH))
            else:
                parts.append(INT32.pack(len(value)))
                parts.append(value)
        parts.append(_pack_count(len(self.result_formats), "result formats"))
        parts.append(_pack_array(FORMAT_CODE, self.result_formats, "result format code"))
        return frame(BIND, b"".join(parts))

    @classmethod
    def decode(cls, payload: bytes) -> Bind:
        """Decode a Bind payload (the bytes after type and length)."""
        portal, offset = _read_text(payload, 0, "Bind portal name")
        statement, offset = _read_text(payload, offset, "Bind statement name")
        count, offset = _read_count(payload, offset, "Bind parameter format")
        parameter_formats, offset = _read_array(payload, offset, FORMAT_CODE, count, "Bind parameter formats")
        count, offset = _read_count(payload, offset, "Bind parameter")
        parameters: list[bytes | None] = []
        for _ in range(count):
            if offset + INT32.size > len(payload):
                raise ProtocolViolation("truncated Bind parameter length")
            (length,) = INT32.unpack_from(payload, offset)
            offset += INT32.size
            if length == NULL_PARAMETER_LENGTH:
                parameters.append(None)
                continue
            if length < 0:
                raise ProtocolViolation(f"Bind parameter with negative length {length}")
            if offset + length > len(payload):
                raise ProtocolViolation("truncated Bind parameter value")
            parameters.append(payload[offset : offset + length])
            offset += length
        count, offset = _read_count(payload, offset, "Bind result format")
        result_formats, offset = _read_array(payload, offset, FORMAT_CODE, count, "Bind result formats")
        _expect_end(payload, offset, "Bind")
        return cls(portal, statement, parameter_formats, tuple(parameters), result_formats)


@dataclass(frozen=True, slots=True)
class _Target:
    """A message naming a prepared statement or a portal: Describe and Close."""

    kind: bytes  # TARGET_STATEMENT or TARGET_PORTAL
    name: str

    def encode(self) -> bytes:
        if self.kind not in TARGET_KINDS:
            raise LocalProtocolError(f"{type(self).__name__} of unknown kind {self.kind!r}")
        return frame(self.message_type(), self.kind + _text(self.name))

    def message_type(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        return cls(*_read_target(payload, cls.__name__))


@dataclass(frozen=True, slots=True)
class Describe(_Target):
    def message_type(self) -> bytes:
        return DESCRIBE


@dataclass(frozen=True, slots=True)
class Close(_Target):
    def message_type(self) -> bytes:
        return CLOSE


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int = 0  # 0 (or negative): no limit

    def encode(self) -> bytes:
        try:
            limit = INT32.pack(self.max_rows)
        except struct.error as exc:
            raise LocalProtocolError(f"Execute row limit out of range: {self.max_rows}") from exc
        return frame(EXECUTE, _text(self.portal) + limit)

    @classmethod
    def decode(cls, payload: bytes) -> Execute:
        portal, offset = _read_text(payload, 0, "Execute portal name")
        if offset + INT32.size > len(payload):
            raise ProtocolViolation("truncated Execute row limit")
        (max_rows,) = INT32.unpack_from(payload, offset)
        _expect_end(payload, offset + INT32.size, "Execute")
        return cls(portal, max_rows)


@dataclass(frozen=True, slots=True)
class _Bare:
    """A message that is its type alone: Sync and Flush."""

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _expect_end(payload, 0, cls.__name__)
        return cls()


@dataclass(frozen=True, slots=True)
class Sync(_Bare):
    def encode(self) -> bytes:
        return SYNC_MESSAGE


@dataclass(frozen=True, slots=True)
class Flush(_Bare):
    def encode(self) -> bytes:
        return FLUSH_MESSAGE


@dataclass(frozen=True, slots=True)
class Query:
    sql: str

    def encode(self) -> bytes:
        return frame(QUERY, _text(self.sql))

    @classmethod
    def decode(cls, payload: bytes) -> Query:
        sql, offset = _read_text(payload, 0, "Query text")
        _expect_end(payload, offset, "Query")
        return cls(sql)


FrontendMessage = Parse | Bind | Describe | Close | Execute | Sync | Flush | Query | RawMessage

_DECODERS: dict[bytes, Callable[[bytes], FrontendMessage]] = {
    PARSE: Parse.decode,
    BIND: Bind.decode,
    DESCRIBE: Describe.decode,
    CLOSE: Close.decode,
    EXECUTE: Execute.decode,
    SYNC: Sync.decode,
    FLUSH: Flush.decode,
    QUERY: Query.decode,
}


def decode_frontend(message: RawMessage) -> FrontendMessage:
    """Type the client messages transaction pooling acts on; any other type stays raw."""
    decoder = _DECODERS.get(message.type)
    return message if decoder is None else decoder(message.payload)


# --- fixed messages (built once) -------------------------------------------------------------
SYNC_MESSAGE: Final = frame(SYNC)
FLUSH_MESSAGE: Final = frame(FLUSH)
PARSE_COMPLETE_MESSAGE = frame(PARSE_COMPLETE)
BIND_COMPLETE_MESSAGE = frame(BIND_COMPLETE)
CLOSE_COMPLETE_MESSAGE = frame(CLOSE_COMPLETE)
NO_DATA_MESSAGE = frame(NO_DATA)
PORTAL_SUSPENDED_MESSAGE = frame(PORTAL_SUSPENDED)
EMPTY_QUERY_RESPONSE_MESSAGE = frame(EMPTY_QUERY_RESPONSE)


# --- prepared-statement renaming -------------------------------------------------------------

_HEADER_SIZE = 5  # type byte + int32 length


def statement_field(message: bytes) -> tuple[str, int, int]:
    """The name in a whole Parse, Bind (its statement), Describe or Close message.

    Returns the name and the (start, end) offsets of its bytes, without the NUL; an empty name
    is the unnamed statement (or portal). Nothing else is decoded: the hot path renames by
    splicing (``with_name``).
    """
    kind = message[:1]
    if kind == PARSE:
        start = _HEADER_SIZE
    elif kind == BIND:
        start = message.find(b"\x00", _HEADER_SIZE) + 1
        if start == 0:
            raise ProtocolViolation("Bind portal name is not NUL-terminated")
    elif kind in (DESCRIBE, CLOSE):
        if message[_HEADER_SIZE : _HEADER_SIZE + 1] not in TARGET_KINDS:
            raise ProtocolViolation(f"{kind!r} names neither a statement nor a portal")
        start = _HEADER_SIZE + 1
    else:
        raise LocalProtocolError(f"message {kind!r} names no statement")
    end = message.find(b"\x00", start)
    if end < 0:
        raise ProtocolViolation(f"{kind!r} name is not NUL-terminated")
    return (message[start:end].decode(_TEXT_ENCODING, _TEXT_ERRORS) if end > start else ""), start, end


def parse_query(message: bytes, name_end: int) -> str:
    """The query text of a whole Parse message whose name ends at ``name_end``."""
    text, _ = _read_text(message, name_end + 1, "Parse query")
    return text


def with_name(message: bytes, start: int, end: int, name: str) -> bytes:
    """The same whole message with the name at ``start:end`` replaced by ``name``."""
    return frame(message[:1], message[_HEADER_SIZE:start] + _text(name)[:-1] + message[end:])


# The proxy's own server-side statement names: ``SERVER_STATEMENT_PREFIX`` and a number.
# Upper case: an unquoted SQL name (PREPARE, DEALLOCATE) is folded to lower case, so no
# client creates one by accident.
SERVER_STATEMENT_PREFIX = "RP_"
_SERVER_STATEMENT_NAME = re.compile(rb"(?<![0-9A-Za-z_$])RP_[0-9]+(?![0-9A-Za-z_$])")


def rename_statements(message: bytes, renames: dict[bytes, bytes]) -> bytes:
    """``message`` (a whole ErrorResponse) with the proxy's server-side statement names that
    ``renames`` knows given in the client's words; ``message`` itself when it names none."""
    if b"RP_" not in message:
        return message
    payload = message[_HEADER_SIZE:]
    renamed = _SERVER_STATEMENT_NAME.sub(lambda name: renames.get(name.group(), name.group()), payload)
    return message if renamed == payload else frame(message[:1], renamed)
