"""MySQL / MariaDB messages the proxy reads or writes, as frozen dataclasses.

Each has ``encode() -> bytes`` giving the packet PAYLOAD (frame it with ``packets.frame``)
and a ``decode(payload)`` classmethod that raises ProtocolViolation on malformed input.
Everything else (rows, column definitions, commands) is relayed as raw bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Self

from protocols.errors import LocalProtocolError, ProtocolViolation
from protocols.mysql.constants import (
    AUTH_MORE_DATA,
    AUTH_SWITCH,
    CLIENT_CONNECT_ATTRS,
    CLIENT_CONNECT_WITH_DB,
    CLIENT_MYSQL,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SESSION_TRACK,
    CLIENT_SSL,
    CLIENT_TRANSACTIONS,
    CLIENT_ZSTD_COMPRESSION_ALGORITHM,
    COM_CHANGE_USER,
    DEFAULT_SQL_STATE,
    EOF,
    ERR,
    MYSQL_OLD_PASSWORD,
    OK,
    PROTOCOL_VERSION_10,
    SERVER_SESSION_STATE_CHANGED,
    SQL_STATE_MARKER,
    UTF8MB4_GENERAL_CI,
)
from protocols.mysql.packets import (
    UINT16,
    UINT32,
    Buffer,
    decode_lenenc_int,
    decode_lenenc_str,
    encode_lenenc_int,
    encode_lenenc_str,
    read_null_str,
)

_LOWER_32 = 0xFFFFFFFF
_LOWER_16 = 0xFFFF
# Greeting, after the version string: connection id, nonce part 1, filler, capabilities
# (lower 16), character set, status, capabilities (upper 16), auth data length, 6 reserved
# bytes, 4 bytes MariaDB extended capabilities (or reserved).
_GREETING_FIXED = struct.Struct("<I8sxHBHHB6xI")
_NONCE_PART_1 = 8
_NONCE_PART_2_MIN = 12  # then one NUL, so a 20-byte nonce has "21" as its data length
# Handshake response / SSL request: capabilities (lower 32), max packet size, character set,
# 19 reserved bytes, 4 bytes MariaDB extended capabilities (or reserved): 32 bytes.
_RESPONSE_FIXED = struct.Struct("<IIB19xI")
SSL_REQUEST_SIZE = _RESPONSE_FIXED.size
_MAX_SHORT_AUTH_RESPONSE = 255
_LENENC_ONE_BYTE = 0xFB  # a length-encoded int below this is that one byte
_EOF_BODY = struct.Struct("<HH")  # warnings, status flags
EOF_PACKET_SIZE = 1 + _EOF_BODY.size
# Below this many bytes a 0xFE packet is a classic EOF, not a row or an OK.
EOF_PACKET_LIMIT = 9
_SQL_STATE_LENGTH = 5
DEFAULT_MAX_PACKET_SIZE = 1 << 24


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ProtocolViolation(f"{what} is not valid UTF-8") from None


def _null_str(text: str, what: str) -> bytes:
    encoded = text.encode()
    if b"\x00" in encoded:
        raise LocalProtocolError(f"{what} cannot contain NUL")
    return encoded + b"\x00"


def _pack(layout: struct.Struct, *values: int | bytes) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise LocalProtocolError(f"a field does not fit its wire size: {exc}") from None


def _split_capabilities(capabilities: int) -> tuple[int, int]:
    """Lower 32 bits and MariaDB's extended 32, refusing extended bits with CLIENT_MYSQL set."""
    if capabilities < 0 or capabilities >> 64:
        raise LocalProtocolError(f"capabilities {capabilities:#x} are not a 64-bit set")
    extended = capabilities >> 32
    if extended and capabilities & CLIENT_MYSQL:
        raise LocalProtocolError("MariaDB extended capabilities require CLIENT_LONG_PASSWORD to be clear")
    return capabilities & _LOWER_32, extended


def _join_capabilities(lower: int, extended: int) -> int:
    # MySQL leaves the field as reserved filler: only MariaDB (CLIENT_MYSQL clear) fills it.
    return lower if lower & CLIENT_MYSQL else lower | extended << 32


def command_byte(payload: bytes) -> int:
    """The command of a client packet that opens an exchange (sequence id 0)."""
    if not payload:
        raise ProtocolViolation("empty command packet")
    return payload[0]


# --- connection phase -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeV10:
    """The server greeting. ``auth_plugin_data`` is the whole nonce (usually 20 bytes)."""

    server_version: str
    connection_id: int
    auth_plugin_data: bytes
    capabilities: int
    character_set: int
    status_flags: int
    auth_plugin_name: str
    protocol_version: int = PROTOCOL_VERSION_10

    def encode(self) -> bytes:
        lower, extended = _split_capabilities(self.capabilities)
        nonce = self.auth_plugin_data
        if len(nonce) < _NONCE_PART_1 + _NONCE_PART_2_MIN or len(nonce) >= 255:
            raise LocalProtocolError(f"a greeting nonce of {len(nonce)} bytes cannot be encoded")
        if b"\x00" in nonce:
            # Clients read the second part up to its NUL terminator.
            raise LocalProtocolError("a greeting nonce cannot contain NUL")
        data_length = len(nonce) + 1 if lower & CLIENT_PLUGIN_AUTH else 0
        parts = [
            bytes((self.protocol_version,)),
            _null_str(self.server_version, "server version"),
            _pack(
                _GREETING_FIXED,
                self.connection_id,
                nonce[:_NONCE_PART_1],
                lower & _LOWER_16,
                self.character_set,
                self.status_flags,
                lower >> 16,
                data_length,
                extended,
            ),
        ]
        if lower & CLIENT_SECURE_CONNECTION:
            parts.append(nonce[_NONCE_PART_1:] + b"\x00")
        if lower & CLIENT_PLUGIN_AUTH:
            parts.append(_null_str(self.auth_plugin_name, "plugin name"))
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode a greeting; an ERR packet in its place (a refused connection) is a violation
        here, so callers check for ``ERR`` first and decode it with ``ErrPacket``."""
        if not payload:
            raise ProtocolViolation("empty greeting")
        if payload[0] == ERR:
            raise ProtocolViolation("server sent an error instead of a greeting")
        if payload[0] != PROTOCOL_VERSION_10:
            raise ProtocolViolation(f"unsupported protocol version {payload[0]} (only 10 is)")
        raw_version, offset = read_null_str(payload, 1)
        if len(payload) < offset + _GREETING_FIXED.size:
            raise ProtocolViolation("truncated greeting")
        (
            connection_id,
            nonce,
            lower_16,
            character_set,
            status_flags,
            upper_16,
            data_length,
            extended,
        ) = _GREETING_FIXED.unpack_from(payload, offset)
        offset += _GREETING_FIXED.size
        lower = lower_16 | upper_16 << 16
        if lower & CLIENT_SECURE_CONNECTION:
            part_2_length = max(_NONCE_PART_2_MIN, data_length - _NONCE_PART_1 - 1)
            part_2 = bytes(payload[offset : offset + part_2_length])
            if len(part_2) < part_2_length:
                raise ProtocolViolation("truncated greeting nonce")
            nonce += part_2
            offset += part_2_length + 1  # the NUL after the nonce
            if offset > len(payload) or payload[offset - 1] != 0:
                raise ProtocolViolation("greeting nonce is not NUL-terminated")
        plugin = b""
        if lower & CLIENT_PLUGIN_AUTH:
            # MySQL 5.5.7 to 5.5.9 forgot the NUL after the plugin name at the end of the packet.
            end = payload.find(b"\x00", offset)
            if end < 0:
                end = len(payload)
            plugin = bytes(payload[offset:end])
        return cls(
            server_version=_text(raw_version, "server version"),
            connection_id=connection_id,
            auth_plugin_data=nonce,
            capabilities=_join_capabilities(lower, extended),
            character_set=character_set,
            status_flags=status_flags,
            auth_plugin_name=_text(plugin, "plugin name"),
            protocol_version=payload[0],
        )


@dataclass(frozen=True, slots=True)
class SslRequest:
    """The 32-byte first half of a handshake response that asks to switch to TLS."""

    capabilities: int
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    character_set: int = UTF8MB4_GENERAL_CI

    def encode(self) -> bytes:
        lower, extended = _split_capabilities(self.capabilities | CLIENT_SSL)
        return _pack(_RESPONSE_FIXED, lower, self.max_packet_size, self.character_set, extended)

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        if not is_ssl_request(payload):
            raise ProtocolViolation("not an SSL request")
        lower, max_packet_size, character_set, extended = _RESPONSE_FIXED.unpack_from(payload)
        return cls(_join_capabilities(lower, extended), max_packet_size, character_set)


def is_ssl_request(payload: Buffer) -> bool:
    return len(payload) == SSL_REQUEST_SIZE and bool(UINT32.unpack_from(payload)[0] & CLIENT_SSL)


@dataclass(frozen=True, slots=True)
class HandshakeResponse41:
    """The client's login packet.

    Optional fields follow their capability flag: ``database`` needs CLIENT_CONNECT_WITH_DB,
    ``auth_plugin_name`` CLIENT_PLUGIN_AUTH and ``connect_attributes`` CLIENT_CONNECT_ATTRS.
    Decoding is as lenient as the servers are where real clients differ: a flagged field
    missing at the very end of the packet decodes as None (or no attributes).
    """

    capabilities: int
    max_packet_size: int
    character_set: int
    username: str
    auth_response: bytes = field(repr=False)
    database: str | None = None
    auth_plugin_name: str | None = None
    connect_attributes: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        lower, extended = _split_capabilities(self.capabilities)
        parts = [
            _pack(_RESPONSE_FIXED, lower, self.max_packet_size, self.character_set, extended),
            _null_str(self.username, "user name"),
        ]
        auth = self.auth_response
        if lower & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            parts.append(encode_lenenc_str(auth))
        elif lower & CLIENT_SECURE_CONNECTION:
            if len(auth) > _MAX_SHORT_AUTH_RESPONSE:
                raise LocalProtocolError("auth response over 255 bytes needs PLUGIN_AUTH_LENENC_CLIENT_DATA")
            parts.append(bytes((len(auth),)) + auth)
        else:
            if b"\x00" in auth:
                raise LocalProtocolError("a NUL-terminated auth response cannot contain NUL")
            parts.append(auth + b"\x00")
        if lower & CLIENT_CONNECT_WITH_DB:
            parts.append(_null_str(self.database or "", "database name"))
        elif self.database is not None:
            raise LocalProtocolError("a database needs CLIENT_CONNECT_WITH_DB")
        if lower & CLIENT_PLUGIN_AUTH:
            parts.append(_null_str(self.auth_plugin_name or "", "plugin name"))
        elif self.auth_plugin_name is not None:
            raise LocalProtocolError("a plugin name needs CLIENT_PLUGIN_AUTH")
        if lower & CLIENT_CONNECT_ATTRS:
            attributes = b"".join(
                encode_lenenc_str(key.encode()) + encode_lenenc_str(value.encode())
                for key, value in self.connect_attributes.items()
            )
            parts.append(encode_lenenc_str(attributes))
        elif self.connect_attributes:
            raise LocalProtocolError("connection attributes need CLIENT_CONNECT_ATTRS")
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        if len(payload) < _RESPONSE_FIXED.size:
            raise ProtocolViolation("truncated handshake response")
        lower, max_packet_size, character_set, extended = _RESPONSE_FIXED.unpack_from(payload)
        if not lower & CLIENT_PROTOCOL_41:
            raise ProtocolViolation("pre-4.1 handshake responses are not supported")
        if len(payload) == _RESPONSE_FIXED.size:
            raise ProtocolViolation("handshake response without a user name (an SSL request?)")
        raw_user, offset = read_null_str(payload, _RESPONSE_FIXED.size)
        if lower & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            auth, offset = decode_lenenc_str(payload, offset)
        elif lower & CLIENT_SECURE_CONNECTION:
            if offset >= len(payload):
                raise ProtocolViolation("handshake response ends before the auth response")
            end = offset + 1 + payload[offset]
            if end > len(payload):
                raise ProtocolViolation("auth response runs past the packet")
            auth, offset = bytes(payload[offset + 1 : end]), end
        else:
            auth, offset = read_null_str(payload, offset)
        database = plugin = None
        if lower & CLIENT_CONNECT_WITH_DB and offset < len(payload):
            raw_database, offset = read_null_str(payload, offset)
            database = _text(raw_database, "database name")
        if lower & CLIENT_PLUGIN_AUTH and offset < len(payload):
            raw_plugin, offset = read_null_str(payload, offset)
            plugin = _text(raw_plugin, "plugin name")
        attributes: dict[str, str] = {}
        if lower & CLIENT_CONNECT_ATTRS and offset < len(payload):
            raw_attributes, offset = decode_lenenc_str(payload, offset)
            position = 0
            while position < len(raw_attributes):
                key, position = decode_lenenc_str(raw_attributes, position)
                value, position = decode_lenenc_str(raw_attributes, position)
                # Attributes are informational (program name, versions): never worth refusing
                # a login over their encoding.
                attributes[key.decode(errors="replace")] = value.decode(errors="replace")
        if lower & CLIENT_ZSTD_COMPRESSION_ALGORITHM and offset < len(payload):
            offset += 1  # the compression level; the proxy never agrees to compression
        if offset != len(payload):
            raise ProtocolViolation("trailing bytes after the handshake response")
        return cls(
            capabilities=_join_capabilities(lower, extended),
            max_packet_size=max_packet_size,
            character_set=character_set,
            username=_text(raw_user, "user name"),
            auth_response=auth,
            database=database,
            auth_plugin_name=plugin,
            connect_attributes=attributes,
        )


@dataclass(frozen=True, slots=True)
class ChangeUser:
    """COM_CHANGE_USER, as far as the proxy reads it: who, which schema, which character set
    (the auth response is skipped: clients of the proxy log in without a password)."""

    username: str
    database: str | None
    character_set: int | None

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        if not payload or payload[0] != COM_CHANGE_USER:
            raise ProtocolViolation("not a COM_CHANGE_USER")
        raw_user, offset = read_null_str(payload, 1)
        if offset >= len(payload):
            raise ProtocolViolation("truncated COM_CHANGE_USER")
        offset += 1 + payload[offset]  # a one-byte length, then the auth response
        if offset > len(payload):
            raise ProtocolViolation("COM_CHANGE_USER auth response overruns the packet")
        raw_database, offset = read_null_str(payload, offset) if offset < len(payload) else (b"", offset)
        character_set = (
            UINT16.unpack_from(payload, offset)[0] if offset + UINT16.size <= len(payload) else None
        )
        database = _text(raw_database, "database") or None
        return cls(_text(raw_user, "user name"), database, character_set)


@dataclass(frozen=True, slots=True)
class AuthSwitchRequest:
    """The server asks to restart authentication with another plugin.

    Servers append a NUL to the plugin data (the nonce) of the password plugins; ``decode``
    removes one trailing NUL and ``encode`` appends one, so ``plugin_data`` is the bare nonce.
    The one-byte form (just 0xFE) of pre-4.1 servers decodes as ``mysql_old_password``.
    """

    plugin_name: str
    plugin_data: bytes

    def encode(self) -> bytes:
        return bytes((AUTH_SWITCH,)) + _null_str(self.plugin_name, "plugin name") + self.plugin_data + b"\x00"

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        if not payload or payload[0] != AUTH_SWITCH:
            raise ProtocolViolation("not an auth switch request")
        if len(payload) == 1:
            return cls(MYSQL_OLD_PASSWORD, b"")
        raw_name, offset = read_null_str(payload, 1)
        data = bytes(payload[offset:])
        if data.endswith(b"\x00"):
            data = data[:-1]
        return cls(_text(raw_name, "plugin name"), data)


@dataclass(frozen=True, slots=True)
class AuthMoreData:
    """Plugin-specific data during authentication (0x01 header): a caching_sha2 status byte
    or an RSA public key."""

    data: bytes

    def encode(self) -> bytes:
        return bytes((AUTH_MORE_DATA,)) + self.data

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        if not payload or payload[0] != AUTH_MORE_DATA:
            raise ProtocolViolation("not an AuthMoreData packet")
        return cls(bytes(payload[1:]))


# --- generic responses ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OkPacket:
    """Success. ``info`` is the human-readable message, ``session_state`` the raw session-state
    changes (present with CLIENT_SESSION_TRACK and SERVER_SESSION_STATE_CHANGED).

    Real servers (MariaDB, MySQL) send ``info`` as a length-encoded string even without
    CLIENT_SESSION_TRACK, and libmysqlclient reads it that way; the docs' "string<EOF>" is
    accepted on decoding too when the bytes do not parse as length-encoded.
    """

    affected_rows: int = 0
    last_insert_id: int = 0
    status_flags: int = 0
    warnings: int = 0
    info: bytes = b""
    session_state: bytes = b""

    def encode(self, capabilities: int = CLIENT_PROTOCOL_41, *, eof_header: bool = False) -> bytes:
        """The payload; ``eof_header`` gives the 0xFE form that ends rows under DEPRECATE_EOF."""
        parts = [
            bytes((EOF if eof_header else OK,)),
            encode_lenenc_int(self.affected_rows),
            encode_lenenc_int(self.last_insert_id),
        ]
        if capabilities & CLIENT_PROTOCOL_41:
            parts.append(_pack(_EOF_BODY, self.status_flags, self.warnings))
        elif capabilities & CLIENT_TRANSACTIONS:
            parts.append(_pack(UINT16, self.status_flags))
        state_changed = self.status_flags & SERVER_SESSION_STATE_CHANGED
        if self.session_state and not (capabilities & CLIENT_SESSION_TRACK and state_changed):
            raise LocalProtocolError("session state needs SESSION_TRACK and SERVER_SESSION_STATE_CHANGED")
        if self.info or (state_changed and capabilities & CLIENT_SESSION_TRACK):
            parts.append(encode_lenenc_str(self.info))
        if self.session_state:
            parts.append(encode_lenenc_str(self.session_state))
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: Buffer, capabilities: int = CLIENT_PROTOCOL_41) -> Self:
        """Decode an OK with either header (0x00, or 0xFE when it ends rows under DEPRECATE_EOF)."""
        affected_rows, last_insert_id, status_flags, warnings, offset = ok_fields(payload, capabilities)
        info = session_state = b""
        if offset < len(payload):
            if capabilities & CLIENT_SESSION_TRACK:
                info, offset = decode_lenenc_str(payload, offset)
                if status_flags & SERVER_SESSION_STATE_CHANGED and offset < len(payload):
                    session_state, offset = decode_lenenc_str(payload, offset)
            else:
                try:
                    info, offset = decode_lenenc_str(payload, offset)
                except ProtocolViolation:
                    info, offset = bytes(payload[offset:]), len(payload)
            if offset != len(payload):
                raise ProtocolViolation("trailing bytes in an OK packet")
        return cls(affected_rows, last_insert_id, status_flags, warnings, info, session_state)


def ok_fields(payload: Buffer, capabilities: int = CLIENT_PROTOCOL_41) -> tuple[int, int, int, int, int]:
    """An OK's fixed part, without building an ``OkPacket`` (the pooling path reads every OK):
    affected rows, last insert id, status flags, warnings, and where the info starts."""
    size = len(payload)
    if size < 3 or payload[0] not in (OK, EOF):
        raise ProtocolViolation("not an OK packet")
    if payload[1] < _LENENC_ONE_BYTE and payload[2] < _LENENC_ONE_BYTE:  # (nearly every OK)
        affected_rows, last_insert_id, offset = payload[1], payload[2], 3
    else:
        affected, offset = decode_lenenc_int(payload, 1)
        insert_id, offset = decode_lenenc_int(payload, offset)
        if affected is None or insert_id is None:
            raise ProtocolViolation("NULL row count in an OK packet")
        affected_rows, last_insert_id = affected, insert_id
    status_flags = warnings = 0
    if capabilities & CLIENT_PROTOCOL_41:
        if offset + 4 > size:
            raise ProtocolViolation("truncated OK packet")
        status_flags = payload[offset] | payload[offset + 1] << 8
        warnings = payload[offset + 2] | payload[offset + 3] << 8
        offset += 4
    elif capabilities & CLIENT_TRANSACTIONS:
        if offset + 2 > size:
            raise ProtocolViolation("truncated OK packet")
        status_flags = payload[offset] | payload[offset + 1] << 8
        offset += 2
    return affected_rows, last_insert_id, status_flags, warnings, offset


@dataclass(frozen=True, slots=True)
class EofPacket:
    """The classic end-of-rows / end-of-metadata marker (without CLIENT_DEPRECATE_EOF)."""

    warnings: int = 0
    status_flags: int = 0

    def encode(self) -> bytes:
        return bytes((EOF,)) + _pack(_EOF_BODY, self.warnings, self.status_flags)

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        if len(payload) != EOF_PACKET_SIZE or payload[0] != EOF:
            raise ProtocolViolation("not an EOF packet")
        warnings, status_flags = _EOF_BODY.unpack_from(payload, 1)
        return cls(warnings, status_flags)


def is_eof_packet(payload: Buffer) -> bool:
    """A classic EOF: 0xFE and short (a text row can start with 0xFE, but is then huge)."""
    return len(payload) < EOF_PACKET_LIMIT and bool(payload) and payload[0] == EOF


@dataclass(frozen=True, slots=True)
class ErrPacket:
    code: int
    message: str
    sql_state: str = DEFAULT_SQL_STATE

    def encode(self) -> bytes:
        state = self.sql_state.encode()
        if len(state) != _SQL_STATE_LENGTH or not self.sql_state.isascii():
            raise LocalProtocolError(f"SQL state {self.sql_state!r} is not 5 ASCII characters")
        return bytes((ERR,)) + _pack(UINT16, self.code) + SQL_STATE_MARKER + state + self.message.encode()

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        """Decode an ERR; the '#' + SQL state is optional (absent before the handshake ends)."""
        if len(payload) < 3 or payload[0] != ERR:
            raise ProtocolViolation("not an ERR packet")
        (code,) = UINT16.unpack_from(payload, 1)
        offset = 3
        sql_state = DEFAULT_SQL_STATE
        if payload[offset : offset + 1] == SQL_STATE_MARKER:
            raw_state = bytes(payload[offset + 1 : offset + 1 + _SQL_STATE_LENGTH])
            if len(raw_state) != _SQL_STATE_LENGTH or not raw_state.isascii():
                raise ProtocolViolation("malformed SQL state in an ERR packet")
            sql_state = raw_state.decode()
            offset += 1 + _SQL_STATE_LENGTH
        # The message is for humans, in the connection's character set: never fail over it.
        return cls(code, bytes(payload[offset:]).decode(errors="replace"), sql_state)
