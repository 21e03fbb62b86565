"""PostgreSQL v3 messages: named constants, frozen dataclasses, and their exact encodings.

Only the messages the proxy itself must read or write are typed here; everything else is
relayed as raw bytes. Each typed message has ``encode() -> bytes`` and a decoder in
``decode_backend`` / the startup reader, so every byte layout lives in one place.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from protocols.errors import LocalProtocolError, ProtocolViolation

# --- startup-phase request codes (the untyped first message) -------------------------------
PROTOCOL_3_0 = 3 << 16
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104

# --- backend message types ------------------------------------------------------------------
AUTHENTICATION = b"R"
PARAMETER_STATUS = b"S"
BACKEND_KEY_DATA = b"K"
READY_FOR_QUERY = b"Z"
ERROR_RESPONSE = b"E"
NOTICE_RESPONSE = b"N"
NEGOTIATE_PROTOCOL_VERSION = b"v"
COMMAND_COMPLETE = b"C"

# --- frontend message types -----------------------------------------------------------------
QUERY = b"Q"
TERMINATE = b"X"
PASSWORD = b"p"  # also SASLInitialResponse and SASLResponse
SYNC = b"S"
FUNCTION_CALL = b"F"
PARSE = b"P"
BIND = b"B"
EXECUTE = b"E"
DESCRIBE = b"D"
CLOSE = b"C"
FLUSH = b"H"
COPY_DONE = b"c"
COPY_FAIL = b"f"
COPY_DATA = b"d"
# Every message type a client may send after the startup packet (as bytes: ``kind in`` an int).
FRONTEND_MESSAGE_TYPES = QUERY + TERMINATE + PASSWORD + SYNC + FUNCTION_CALL + PARSE + BIND + EXECUTE
FRONTEND_MESSAGE_TYPES += DESCRIBE + CLOSE + FLUSH + COPY_DATA + COPY_DONE + COPY_FAIL

# --- authentication request codes (payload of an 'R' message) -------------------------------
AUTH_OK = 0
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# --- transaction status in ReadyForQuery ----------------------------------------------------
STATUS_IDLE = b"I"
STATUS_IN_TRANSACTION = b"T"
STATUS_FAILED_TRANSACTION = b"E"
TRANSACTION_STATUSES = frozenset({STATUS_IDLE, STATUS_IN_TRANSACTION, STATUS_FAILED_TRANSACTION})

# --- SQLSTATEs the proxy produces or reacts to ----------------------------------------------
SQLSTATE_INVALID_PASSWORD = "28P01"
SQLSTATE_INVALID_AUTHORIZATION = "28000"
SQLSTATE_INVALID_CATALOG_NAME = "3D000"
SQLSTATE_PROTOCOL_VIOLATION = "08P01"
SQLSTATE_CANNOT_CONNECT = "08001"
SQLSTATE_CONNECTION_FAILURE = "08006"
SQLSTATE_TOO_MANY_CONNECTIONS = "53300"
SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT = "25P03"
SQLSTATE_FEATURE_NOT_SUPPORTED = "0A000"
SQLSTATE_ADMIN_SHUTDOWN = "57P01"
SQLSTATE_INTERNAL_ERROR = "XX000"

# Error and notice field codes (the byte before each NUL-terminated value).
FIELD_SEVERITY = "S"
FIELD_SEVERITY_NONLOCALIZED = "V"
FIELD_CODE = "C"
FIELD_MESSAGE = "M"
FIELD_DETAIL = "D"
FIELD_HINT = "H"

# PostgreSQL itself rejects startup packets over 10000 bytes; we follow it.
MAX_STARTUP_SIZE = 10_000
# Large enough for any DataRow or COPY chunk a real server sends (PostgreSQL's own limit
# for a single field is 1 GiB); the bound keeps a hostile length from allocating memory.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 30

INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")
HEADER = struct.Struct("!cI")  # type byte + length (length includes itself)
STARTUP_HEADER = struct.Struct("!II")  # length + code
CANCEL_BODY = struct.Struct("!IIiI")  # length, code, process id, secret key (sent as int32s)
KEY_DATA = struct.Struct("!iI")


def frame(message_type: bytes, payload: bytes = b"") -> bytes:
    """One typed message: type byte, int32 length (counting itself), payload."""
    return HEADER.pack(message_type, len(payload) + 4) + payload


def cstring(text: str) -> bytes:
    encoded = text.encode()
    if b"\x00" in encoded:
        raise LocalProtocolError("a protocol string cannot contain NUL")
    return encoded + b"\x00"


def read_cstring(payload: bytes, offset: int) -> tuple[str, int]:
    """Decode the NUL-terminated string at offset; return it and the offset after the NUL."""
    end = payload.find(b"\x00", offset)
    if end < 0:
        raise ProtocolViolation("string is not NUL-terminated")
    try:
        return payload[offset:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("string is not valid UTF-8") from exc


# --- startup-phase messages (frontend → backend, untyped) -----------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    parameters: dict[str, str]
    protocol: int = PROTOCOL_3_0

    @property
    def major(self) -> int:
        return self.protocol >> 16

    @property
    def minor(self) -> int:
        return self.protocol & 0xFFFF

    def encode(self) -> bytes:
        body = UINT32.pack(self.protocol)
        body += b"".join(cstring(k) + cstring(v) for k, v in self.parameters.items()) + b"\x00"
        return UINT32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest:
    def encode(self) -> bytes:
        return STARTUP_HEADER.pack(8, SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return STARTUP_HEADER.pack(8, GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: int = field(repr=False)

    def encode(self) -> bytes:
        return CANCEL_BODY.pack(16, CANCEL_REQUEST_CODE, self.process_id, self.secret_key)


StartupEvent = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup(packet: bytes) -> StartupEvent:
    """Decode one complete untyped startup-phase packet (length prefix included)."""
    if len(packet) < 8:
        raise ProtocolViolation("startup packet shorter than 8 bytes")
    length, code = STARTUP_HEADER.unpack_from(packet)
    if length != len(packet):
        raise ProtocolViolation("startup packet length does not match its contents")
    if code == SSL_REQUEST_CODE:
        if length != 8:
            raise ProtocolViolation("SSLRequest has the wrong length")
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        if length != 8:
            raise ProtocolViolation("GSSENCRequest has the wrong length")
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if length != 16:
            raise ProtocolViolation("CancelRequest has the wrong length")
        _, _, process_id, secret_key = CANCEL_BODY.unpack(packet)
        return CancelRequest(process_id, secret_key)
    if code >> 16 != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 to 3.0"
        )
    parameters: dict[str, str] = {}
    offset = 8
    while True:
        if offset >= length:
            raise ProtocolViolation("startup packet parameters are not terminated")
        if packet[offset] == 0:
            if offset != length - 1:
                raise ProtocolViolation("trailing bytes after startup parameters")
            break
        name, offset = read_cstring(packet, offset)
        value, offset = read_cstring(packet, offset)
        parameters[name] = value
    return StartupMessage(parameters, code)


# --- typed backend messages -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticationRequest:
    """An 'R' message: code says which step; data carries the salt or SASL payload."""

    code: int
    data: bytes = b""

    def encode(self) -> bytes:
        return frame(AUTHENTICATION, INT32.pack(self.code) + self.data)

    def sasl_mechanisms(self) -> list[str]:
        mechanisms = []
        offset = 0
        while offset < len(self.data) and self.data[offset] != 0:
            name, offset = read_cstring(self.data, offset)
            mechanisms.append(name)
        return mechanisms


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str

    def encode(self) -> bytes:
        return frame(PARAMETER_STATUS, cstring(self.name) + cstring(self.value))


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    process_id: int
    secret_key: int = field(repr=False)

    def encode(self) -> bytes:
        return frame(BACKEND_KEY_DATA, KEY_DATA.pack(self.process_id, self.secret_key))


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: bytes = STATUS_IDLE

    def encode(self) -> bytes:
        return frame(READY_FOR_QUERY, self.status)


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """ErrorResponse or (with notice=True) NoticeResponse; fields keyed by their code letter."""

    fields: dict[str, str]
    notice: bool = False

    @classmethod
    def build(cls, severity: str, code: str, message: str, detail: str | None = None) -> ErrorResponse:
        fields = {
            FIELD_SEVERITY: severity,
            FIELD_SEVERITY_NONLOCALIZED: severity,
            FIELD_CODE: code,
            FIELD_MESSAGE: message,
        }
        if detail:
            fields[FIELD_DETAIL] = detail
        return cls(fields)

    @property
    def severity(self) -> str:
        return self.fields.get(FIELD_SEVERITY_NONLOCALIZED) or self.fields.get(FIELD_SEVERITY, "")

    @property
    def code(self) -> str:
        return self.fields.get(FIELD_CODE, "")

    @property
    def message(self) -> str:
        return self.fields.get(FIELD_MESSAGE, "")

    def encode(self) -> bytes:
        # Each field is a single code byte (not a string) followed by its NUL-terminated value.
        body = b"".join(k.encode() + cstring(v) for k, v in self.fields.items()) + b"\x00"
        return frame(NOTICE_RESPONSE if self.notice else ERROR_RESPONSE, body)


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    newest_minor: int
    unrecognized_options: tuple[str, ...] = ()

    def encode(self) -> bytes:
        body = INT32.pack(self.newest_minor) + INT32.pack(len(self.unrecognized_options))
        body += b"".join(cstring(option) for option in self.unrecognized_options)
        return frame(NEGOTIATE_PROTOCOL_VERSION, body)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """Any message the proxy relays without interpreting it."""

    type: bytes
    payload: bytes

    def encode(self) -> bytes:
        return frame(self.type, self.payload)


BackendMessage = (
    AuthenticationRequest
    | ParameterStatus
    | BackendKeyData
    | ReadyForQuery
    | ErrorResponse
    | NegotiateProtocolVersion
    | RawMessage
)


def _decode_fields(payload: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    offset = 0
    while True:
        if offset >= len(payload):
            raise ProtocolViolation("error fields are not terminated")
        code = payload[offset]
        if code == 0:
            if offset != len(payload) - 1:
                raise ProtocolViolation("trailing bytes after error fields")
            return fields
        value, offset = read_cstring(payload, offset + 1)
        fields[chr(code)] = value


def decode_backend(message: RawMessage) -> BackendMessage:
    """Type the backend messages the proxy acts on; others stay raw."""
    kind, payload = message.type, message.payload
    try:
        if kind == AUTHENTICATION:
            if len(payload) < 4:
                raise ProtocolViolation("authentication request shorter than 4 bytes")
            return AuthenticationRequest(INT32.unpack_from(payload)[0], payload[4:])
        if kind == PARAMETER_STATUS:
            name, offset = read_cstring(payload, 0)
            value, offset = read_cstring(payload, offset)
            if offset != len(payload):
                raise ProtocolViolation("trailing bytes in ParameterStatus")
            return ParameterStatus(name, value)
        if kind == BACKEND_KEY_DATA:
            if len(payload) != KEY_DATA.size:
                raise ProtocolViolation("BackendKeyData has the wrong length")
            return BackendKeyData(*KEY_DATA.unpack(payload))
        if kind == READY_FOR_QUERY:
            if len(payload) != 1 or payload not in TRANSACTION_STATUSES:
                raise ProtocolViolation("ReadyForQuery with an invalid status")
            return ReadyForQuery(payload)
        if kind in (ERROR_RESPONSE, NOTICE_RESPONSE):
            return ErrorResponse(_decode_fields(payload), notice=kind == NOTICE_RESPONSE)
        if kind == NEGOTIATE_PROTOCOL_VERSION:
            newest, count = struct.unpack_from("!ii", payload)
            if count < 0:
                raise ProtocolViolation("NegotiateProtocolVersion with a negative option count")
            options = []
            offset = 8
            for _ in range(count):
                option, offset = read_cstring(payload, offset)
                options.append(option)
            if offset != len(payload):
                raise ProtocolViolation("trailing bytes in NegotiateProtocolVersion")
            return NegotiateProtocolVersion(newest, tuple(options))
    except struct.error as exc:
        raise ProtocolViolation(f"truncated {kind!r} message") from exc
    return message


# --- frontend messages the proxy writes upstream --------------------------------------------


def password_message(payload: bytes) -> bytes:
    return frame(PASSWORD, payload)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(PASSWORD, cstring(mechanism) + INT32.pack(len(data)) + data)


def query_message(sql: str) -> bytes:
    return frame(QUERY, cstring(sql))


TERMINATE_MESSAGE = frame(TERMINATE)
SSL_REQUEST_MESSAGE = SSLRequest().encode()
AUTH_OK_MESSAGE = AuthenticationRequest(AUTH_OK).encode()
SSL_REFUSED = b"N"
SSL_ACCEPTED = b"S"
