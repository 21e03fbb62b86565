"""Bounding clients, byte by byte and object by object (issue 17): the startup phase read
once, nothing but frontend messages after it, lengths near 2^31, the message size limit in
every reader a client's bytes go through, malformed ``options``, MySQL handshake responses
whose lengths run past the packet, Unix socket files, peer credentials, and admission."""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

import pytest

from protocols.endings import EndReason
from protocols.errors import MessageTooLarge, ProtocolViolation
from protocols.events import NEED_DATA
from protocols.mysql import constants as c
from protocols.mysql.messages import HandshakeResponse41
from protocols.mysql.packets import PacketReader, encode_lenenc_int
from protocols.pooling import NEED_CONNECTION, CloseWithError
from protocols.postgres.framing import FrameReader, StartupReader
from protocols.postgres.messages import CancelRequest, SSLRequest, StartupMessage, frame
from protocols.postgres.pooling import PooledClient
from protocols.postgres.tracker import FrontendTracker
from proxy.config import ClientLimitsConfig, ClientsConfig, PoolConfig, parse_config
from proxy.core import limits
from proxy.core.limits import ClientLimits
from proxy.core.peer import peer_credentials
from proxy.core.unix_socket import SocketFileInUse, bind_unix_socket, remove_socket_file
from proxy.postgres.settings import ClientError, parse_options

SSL = SSLRequest().encode()
STARTUP = StartupMessage({"user": "u", "database": "d"}).encode()


def query(sql: str) -> bytes:
    return frame(b"Q", sql.encode() + b"\0")


# --- PostgreSQL: the startup phase ------------------------------------------------------------


def test_a_second_ssl_request_is_refused() -> None:
    reader = StartupReader()
    reader.receive_data(SSL + SSL)
    assert reader.next_event() == SSLRequest()
    with pytest.raises(ProtocolViolation, match="a second SSLRequest"):
        reader.next_event()


def test_a_startup_packet_after_the_startup_message_is_refused() -> None:
    reader = StartupReader()
    reader.receive_data(STARTUP)
    assert isinstance(reader.next_event(), StartupMessage)
    assert reader.next_event() is NEED_DATA  # nothing more: nothing wrong
    for again in (STARTUP, SSL, CancelRequest(1, 2).encode()):
        reader.receive_data(again)
        with pytest.raises(ProtocolViolation, match="after the startup phase"):
            reader.next_event()
        reader.take_buffer()


@pytest.mark.parametrize("length", [(1 << 31) - 1, 1 << 31, (1 << 32) - 1, 10_001])
def test_startup_lengths_near_2_31_are_refused_from_four_bytes(length: int) -> None:
    reader = StartupReader()
    reader.receive_data(struct.pack("!I", length))
    with pytest.raises(ProtocolViolation, match=f"invalid startup packet length {length}"):
        reader.next_event()


# --- PostgreSQL: after the startup phase ------------------------------------------------------


def test_a_startup_packet_sent_again_is_no_frontend_message() -> None:
    for again in (SSL, STARTUP):
        reader = FrameReader(frontend=True)
        reader.receive_data(query("SELECT 1") + again)
        assert reader.next_event() == query("SELECT 1")
        with pytest.raises(ProtocolViolation, match="a startup packet after the startup phase"):
            reader.next_event()
        tracker = FrontendTracker()
        with pytest.raises(ProtocolViolation, match="a startup packet after the startup phase"):
            tracker.send(query("SELECT 1") + again)


def test_the_frontend_tracker_refuses_a_type_no_client_sends() -> None:
    with pytest.raises(ProtocolViolation, match="invalid frontend message type 90"):
        FrontendTracker().send(frame(b"Z", b"I"))  # ReadyForQuery comes from servers only


@pytest.mark.parametrize("length", [(1 << 31) - 1, 1 << 31, (1 << 32) - 1])
def test_message_lengths_near_2_31_are_refused_from_the_header(length: int) -> None:
    header = b"Q" + struct.pack("!I", length)
    reader = FrameReader(1 << 20, frontend=True)
    reader.limit_name = "max_client_message_size"
    reader.receive_data(header)
    with pytest.raises(MessageTooLarge, match="exceeds max_client_message_size of 1048576 bytes") as caught:
        reader.next_event()
    assert (caught.value.size, caught.value.limit) == (length, 1 << 20)
    with pytest.raises(MessageTooLarge, match="max_client_message_size"):
        FrontendTracker(1 << 20).send(header)


def test_the_frontend_tracker_knows_a_message_cut_short() -> None:
    tracker = FrontendTracker()
    tracker.send(query("SELECT 1"))
    assert not tracker.mid_message
    tracker.send(b"Q\x3f\xff\xff\xff" + b"SE")  # 7 bytes of a Query announcing 1 GiB
    assert tracker.mid_message


def test_transaction_mode_asks_for_a_connection_only_for_a_whole_message() -> None:
    core = PooledClient({}, "pool")
    whole = query("SELECT 1")
    assert core.receive_client(whole[:7]) == []
    assert core.incomplete
    assert core.receive_client(whole[7:]) == [NEED_CONNECTION]
    assert not core.incomplete


def test_transaction_mode_refuses_an_oversized_message_naming_the_limit() -> None:
    core = PooledClient({}, "pool", max_message_size=1024)
    (command,) = core.receive_client(b"Q" + struct.pack("!I", 1 << 30))
    assert isinstance(command, CloseWithError) and command.reason is EndReason.MESSAGE_TOO_LARGE
    assert b"C08P01\x00" in command.error and b"max_client_message_size of 1024 bytes" in command.error


def test_transaction_mode_refuses_a_startup_packet_sent_again() -> None:
    core = PooledClient({}, "pool")
    (command,) = core.receive_client(SSL)
    assert isinstance(command, CloseWithError) and command.reason is EndReason.CLIENT_VIOLATION
    assert b"C08P01\x00" in command.error and b"after the startup phase" in command.error


# --- PostgreSQL: options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ("-c", "-c without name=value"),
        ("-c application_name=a -c", "-c without name=value"),
        ("-c application_name='my app'", "unbalanced quote"),
        ('-c search_path="a', "unbalanced quote"),
        ("-c application_name=x\\", "lone backslash"),
        ("-c =x", "invalid startup option"),
        ("-c nameonly", "invalid startup option"),
    ],
)
def test_malformed_options_are_a_protocol_error(options: str, complaint: str) -> None:
    with pytest.raises(ClientError, match=complaint) as caught:
        parse_options(options)
    assert caught.value.code == "08P01"


@pytest.mark.parametrize(
    ("options", "settings"),
    [
        ("-c application_name=my\\ app", {"application_name": "my app"}),
        ("-c application_name='quoted'", {"application_name": "'quoted'"}),  # literal, as PostgreSQL
        ("-c application_name=O\\'Brien", {"application_name": "O'Brien"}),
        ("--search-path=a -capplication_name=b", {"search_path": "a", "application_name": "b"}),
    ],
)
def test_well_formed_options_pass_as_postgresql_reads_them(options: str, settings: dict[str, str]) -> None:
    assert parse_options(options) == settings


# --- MySQL -------------------------------------------------------------------------------------


def test_a_packet_over_the_limit_is_refused_from_its_header_with_the_answer_s_sequence_id() -> None:
    reader = PacketReader(1024)
    reader.limit_name = "max_client_message_size"
    reader.receive_data(struct.pack("<I", 0xFFFFFF)[:3] + b"\x00")
    with pytest.raises(MessageTooLarge, match="max_client_message_size of 1024 bytes") as caught:
        reader.next_event()
    assert caught.value.sequence_id == 1


def test_a_packet_cut_short_is_incomplete() -> None:
    reader = PacketReader()
    assert not reader.incomplete
    reader.receive_data(b"\x05\x00\x00\x00\x03SE")
    assert reader.incomplete
    reader.receive_data(b"L")
    reader.receive_data(b"EC")
    assert not reader.incomplete  # whole, waiting to be read


FIXED = struct.pack("<IIB23x", c.CLIENT_PROTOCOL_41 | c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA, 1 << 24, 45)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(FIXED + b"u\0" + b"\xfe" + struct.pack("<Q", (1 << 64) - 1), id="auth-2^64"),
        pytest.param(FIXED + b"u\0" + b"\xfe" + struct.pack("<Q", 1 << 31) + b"x", id="auth-2^31"),
        pytest.param(FIXED + b"u\0" + b"\xfc\xff\xff" + b"x" * 10, id="auth-65535"),
        pytest.param(FIXED + b"u\0" + b"\xfd\x01", id="auth-length-truncated"),
    ],
)
def test_handshake_response_lengths_past_the_packet_are_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation, match=r"past the packet|truncated"):
        HandshakeResponse41.decode(payload)


def test_connection_attributes_past_the_packet_are_refused() -> None:
    lower = c.CLIENT_PROTOCOL_41 | c.CLIENT_SECURE_CONNECTION | c.CLIENT_CONNECT_ATTRS
    fixed = struct.pack("<IIB23x", lower, 1 << 24, 45)
    inner = encode_lenenc_int(1 << 40) + b"k"
    for attributes in (encode_lenenc_int(1 << 31) + b"x", encode_lenenc_int(len(inner)) + inner):
        with pytest.raises(ProtocolViolation, match="past the packet"):
            HandshakeResponse41.decode(fixed + b"u\0\0" + attributes)


# --- Unix socket files ---------------------------------------------------------------------------


def test_a_socket_is_bound_with_its_mode_and_group(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / ".s.PGSQL.6432")
    sock, inode = bind_unix_socket(path, 0o660, os.getgid())
    try:
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == os.getgid() and info.st_ino == inode[1]
    finally:
        sock.close()
        remove_socket_file(path, inode)
    assert not os.path.exists(path)


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # its file stays: nobody listens on it
    sock, inode = bind_unix_socket(path, 0o600, None)
    sock.close()
    remove_socket_file(path, inode)


def test_a_live_socket_or_another_file_is_never_removed(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen()
    try:
        with pytest.raises(SocketFileInUse, match="another process listens"):
            bind_unix_socket(path, 0o600, None)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        live.close()
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(SocketFileInUse, match="not a socket"):
        bind_unix_socket(str(regular), 0o600, None)
    assert regular.read_text() == "keep me"


def test_a_socket_file_is_removed_only_while_it_is_ours(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    sock, inode = bind_unix_socket(path, 0o600, None)
    sock.close()
    os.unlink(path)
    other, other_inode = bind_unix_socket(path, 0o600, None)  # someone else's now
    remove_socket_file(path, inode)
    assert os.path.exists(path)
    other.close()
    remove_socket_file(path, other_inode)


def test_peer_credentials_name_the_caller() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX)
    with ours, theirs:
        caller = peer_credentials(ours)
        assert caller is not None
        assert (caller.uid, caller.gid, caller.pid) == (os.getuid(), os.getgid(), os.getpid())
        assert os.getgid() in caller.groups and f"uid {os.getuid()}" in str(caller)
    with socket.socket() as tcp:
        assert peer_credentials(tcp) is None


# --- the process's client limit --------------------------------------------------------------------


def test_the_process_client_limit_is_the_lower_of_the_key_and_the_open_files() -> None:
    generous = ClientLimits(ClientLimitsConfig(max_client_connections=100), open_files=20_000)
    assert generous.max_clients == 100 and generous.refusal() is None
    generous.open = 100
    refusal = generous.refusal()
    assert refusal is not None and refusal[0] == limits.TOO_MANY_CLIENTS
    assert "max_client_connections (100)" in refusal[1]
    scarce = ClientLimits(ClientLimitsConfig(), open_files=1024, server_connections=20)
    assert scarce.max_clients == 1024 - limits.RESERVED_FILES - 40
    scarce.open = scarce.max_clients
    refusal = scarce.refusal()
    assert refusal is not None and refusal[0] == limits.OPEN_FILES and "RLIMIT_NOFILE" in refusal[1]


def test_pool_configs_compare_with_their_client_settings() -> None:
    config = parse_config(
        {
            "pool": [
                {
                    "name": "p",
                    "listen": "unix:/run/rotaproxy/.s.PGSQL.6432",
                    "clients": {"allow_uids": [0, "root"]},
                    "credentials": {"source": "static", "username": "u", "password": "p"},
                }
            ]
        },
        "t.toml",
    )
    pool = config.pools[0]
    assert isinstance(pool, PoolConfig) and pool.clients == ClientsConfig(allow_uids=frozenset({0}))
