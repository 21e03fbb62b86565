"""Raw-socket clients for the client-limit tests: just enough PostgreSQL and MySQL to log in,
to stop halfway, and to read what the proxy answered."""

from __future__ import annotations

import socket
import struct

from protocols.mysql import constants as c
from protocols.mysql.messages import HandshakeResponse41
from protocols.mysql.packets import frame as mysql_frame
from protocols.postgres.messages import StartupMessage

READY = b"Z\x00\x00\x00\x05"


def pg_connect(address: str | tuple[str, int], timeout: float = 10.0) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def pg_login(address: str | tuple[str, int], database: str, **parameters: str) -> socket.socket:
    """A logged-in PostgreSQL client: its greeting read up to ReadyForQuery."""
    sock = pg_connect(address)
    sock.sendall(StartupMessage({"user": "raw", "database": database, **parameters}).encode())
    greeting = b""
    while READY not in greeting:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed during the login: {greeting!r}")
        greeting += chunk
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def pg_error(data: bytes) -> dict[str, str]:
    """The fields of the first ErrorResponse in ``data`` (empty if there is none)."""
    at = 0
    while at + 5 <= len(data):
        kind = data[at : at + 1]
        (length,) = struct.unpack_from("!I", data, at + 1)
        if kind == b"E":
            fields = {}
            for part in data[at + 5 : at + 1 + length].split(b"\0"):
                if part:
                    fields[chr(part[0])] = part[1:].decode()
            return fields
        at += 1 + length
    return {}


def mysql_error(data: bytes) -> tuple[int, str, str] | None:
    """(code, SQL state, message) of the first ERR packet in ``data``."""
    at = 0
    while at + 4 <= len(data):
        length = int.from_bytes(data[at : at + 3], "little")
        payload = data[at + 4 : at + 4 + length]
        if payload[:1] == b"\xff":
            code = int.from_bytes(payload[1:3], "little")
            return code, payload[4:9].decode(), payload[9:].decode()
        at += 4 + length
    return None


def mysql_read_packet(sock: socket.socket) -> bytes:
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            raise AssertionError("closed")
        header += chunk
    length = int.from_bytes(header[:3], "little")
    payload = b""
    while len(payload) < length:
        payload += sock.recv(length - len(payload))
    return header + payload


def mysql_login(address: str | tuple[str, int], user: str = "raw") -> socket.socket:
    sock = pg_connect(address)
    mysql_read_packet(sock)  # the greeting
    response = HandshakeResponse41(
        capabilities=c.CLIENT_PROTOCOL_41 | c.CLIENT_SECURE_CONNECTION | c.CLIENT_PLUGIN_AUTH,
        max_packet_size=1 << 24,
        character_set=45,
        username=user,
        auth_response=b"",
        auth_plugin_name="mysql_native_password",
    )
    sock.sendall(mysql_frame(response.encode(), 1)[0])
    answer = mysql_read_packet(sock)
    assert answer[4] == 0, answer
    return sock
