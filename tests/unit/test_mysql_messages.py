"""MySQL / MariaDB messages: real greetings and client logins, documented byte layouts, round trips."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError, ProtocolViolation
from protocols.mysql.constants import (
    CACHING_SHA2_PASSWORD,
    CLIENT_CONNECT_ATTRS,
    CLIENT_CONNECT_WITH_DB,
    CLIENT_DEPRECATE_EOF,
    CLIENT_LONG_PASSWORD,
    CLIENT_MULTI_RESULTS,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SESSION_TRACK,
    CLIENT_SSL,
    CLIENT_TRANSACTIONS,
    COM_QUERY,
    ER_CON_COUNT_ERROR,
    MARIADB_CLIENT_CACHE_METADATA,
    MARIADB_CLIENT_EXTENDED_METADATA,
    MARIADB_CLIENT_PROGRESS,
    MARIADB_CLIENT_STMT_BULK_OPERATIONS,
    MYSQL_NATIVE_PASSWORD,
    MYSQL_OLD_PASSWORD,
    SERVER_MORE_RESULTS_EXISTS,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_AUTOCOMMIT,
    UTF8MB4_0900_AI_CI,
    UTF8MB4_GENERAL_CI,
)
from protocols.mysql.messages import (
    AuthMoreData,
    AuthSwitchRequest,
    EofPacket,
    ErrPacket,
    HandshakeResponse41,
    HandshakeV10,
    OkPacket,
    SslRequest,
    command_byte,
    is_eof_packet,
    is_ssl_request,
)

# --- server greetings -------------------------------------------------------------------------

# Captured from the MariaDB 10.11 on this machine (payload only, without the 4-byte header).
MARIADB_10_11_GREETING = (
    b"\x0a"  # protocol version 10
    b"5.5.5-10.11.19-MariaDB-0+deb12u1\x00"  # MariaDB's "5.5.5-" prefix for old clients
    b"\x08\x00\x00\x00"  # connection id 8
    b"@xZ:Qh:("  # nonce, first 8 bytes
    b"\x00"  # filler
    b"\xfe\xf7"  # capabilities, low 16 bits: bit 0 (CLIENT_MYSQL) clear means "MariaDB"
    b"\x2d"  # utf8mb4_general_ci
    b"\x02\x00"  # SERVER_STATUS_AUTOCOMMIT
    b"\xff\x81"  # capabilities, high 16 bits
    b"\x15"  # auth plugin data length: 21 (20-byte nonce + NUL)
    b"\x00\x00\x00\x00\x00\x00"  # reserved
    b"\x1d\x00\x00\x00"  # MariaDB extended capabilities
    b"W`\\+a*Hnob|i\x00"  # nonce, last 12 bytes, NUL
    b"mysql_native_password\x00"
)
MARIADB_NONCE = b"@xZ:Qh:(W`\\+a*Hnob|i"

# A MySQL 8.0 greeting written field by field from the protocol documentation (TLS not offered).
MYSQL_8_GREETING = b"".join(
    [
        b"\x0a",
        b"8.0.36\x00",
        b"\x11\x00\x00\x00",  # connection id 17
        b"abcdefgh",
        b"\x00",
        b"\xff\xf7",  # CLIENT_LONG_PASSWORD set: MySQL, the filler below is reserved
        b"\xff",  # utf8mb4_0900_ai_ci
        b"\x02\x00",
        b"\xff\xdf",
        b"\x15",
        bytes(10),  # reserved
        b"ijklmnopqrst\x00",
        b"caching_sha2_password\x00",
    ]
)
MYSQL_8_NONCE = b"abcdefghijklmnopqrst"


def test_mariadb_10_11_greeting_decodes_with_extended_capabilities_from_the_filler() -> None:
    greeting = HandshakeV10.decode(MARIADB_10_11_GREETING)
    assert greeting == HandshakeV10(
        server_version="5.5.5-10.11.19-MariaDB-0+deb12u1",
        connection_id=8,
        auth_plugin_data=MARIADB_NONCE,
        capabilities=0x81FFF7FE
        | MARIADB_CLIENT_PROGRESS
        | MARIADB_CLIENT_STMT_BULK_OPERATIONS
        | MARIADB_CLIENT_EXTENDED_METADATA
        | MARIADB_CLIENT_CACHE_METADATA,
        character_set=UTF8MB4_GENERAL_CI,
        status_flags=SERVER_STATUS_AUTOCOMMIT,
        auth_plugin_name=MYSQL_NATIVE_PASSWORD,
    )
    assert not greeting.capabilities & CLIENT_LONG_PASSWORD
    assert greeting.capabilities & CLIENT_DEPRECATE_EOF


def test_mariadb_greeting_re_encodes_to_the_captured_bytes() -> None:
    assert HandshakeV10.decode(MARIADB_10_11_GREETING).encode() == MARIADB_10_11_GREETING


def test_mysql_8_greeting_decodes_and_re_encodes() -> None:
    greeting = HandshakeV10.decode(MYSQL_8_GREETING)
    assert greeting == HandshakeV10(
        server_version="8.0.36",
        connection_id=17,
        auth_plugin_data=MYSQL_8_NONCE,
        capabilities=0xDFFFF7FF,
        character_set=UTF8MB4_0900_AI_CI,
        status_flags=SERVER_STATUS_AUTOCOMMIT,
        auth_plugin_name=CACHING_SHA2_PASSWORD,
    )
    assert greeting.encode() == MYSQL_8_GREETING


def test_mysql_greeting_filler_is_not_read_as_extended_capabilities() -> None:
    reserved_at = MYSQL_8_GREETING.index(b"\x15") + 7
    noisy = MYSQL_8_GREETING[:reserved_at] + b"\xff\xff\xff\xff" + MYSQL_8_GREETING[reserved_at + 4 :]
    assert HandshakeV10.decode(noisy).capabilities == 0xDFFFF7FF


def test_greeting_without_the_nul_after_the_plugin_name_is_accepted() -> None:
    # MySQL 5.5.7 to 5.5.9 sent it that way.
    assert HandshakeV10.decode(MYSQL_8_GREETING[:-1]).auth_plugin_name == CACHING_SHA2_PASSWORD


def test_truncated_greeting_is_a_protocol_violation() -> None:
    plugin_name_at = MARIADB_10_11_GREETING.index(b"mysql_native")
    for length in range(plugin_name_at):
        with pytest.raises(ProtocolViolation):
            HandshakeV10.decode(MARIADB_10_11_GREETING[:length])


def test_error_instead_of_a_greeting_is_a_protocol_violation_for_the_greeting_decoder() -> None:
    too_many = b"\xff\x10\x04Too many connections"
    with pytest.raises(ProtocolViolation, match="error instead of a greeting"):
        HandshakeV10.decode(too_many)
    assert ErrPacket.decode(too_many) == ErrPacket(ER_CON_COUNT_ERROR, "Too many connections")


def test_greeting_of_protocol_9_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation, match="protocol version 9"):
        HandshakeV10.decode(b"\x09" + MARIADB_10_11_GREETING[1:])


def test_greeting_nonce_without_its_nul_is_a_protocol_violation() -> None:
    broken = MARIADB_10_11_GREETING.replace(b"nob|i\x00", b"nob|iX")
    with pytest.raises(ProtocolViolation, match="NUL-terminated"):
        HandshakeV10.decode(broken)


def test_greeting_encode_refuses_extended_capabilities_next_to_client_mysql() -> None:
    greeting = HandshakeV10(
        "8.0.36", 1, MYSQL_8_NONCE, CLIENT_LONG_PASSWORD | MARIADB_CLIENT_PROGRESS, 45, 2, "x"
    )
    with pytest.raises(LocalProtocolError, match="CLIENT_LONG_PASSWORD"):
        greeting.encode()


def test_greeting_encode_refuses_a_short_nonce() -> None:
    greeting = HandshakeV10("8.0.36", 1, b"short", 0xDFFFF7FF, 45, 2, MYSQL_NATIVE_PASSWORD)
    with pytest.raises(LocalProtocolError, match="nonce"):
        greeting.encode()


# --- client handshake responses --------------------------------------------------------------

# Captured from real clients logging in (user alice, password "secret", database app) to a
# socket that played MARIADB_10_11_GREETING or MYSQL_8_GREETING.
NATIVE_SCRAMBLE = b"V[\x072\xa9\xce\\\x14Hf_\x14\x06\xec\xff\x03\xf4\x06\x9ew"
SHA2_SCRAMBLE = b"\xc7n(\x98a*L\xf0B\xc7\x7f\xa8\xc4p,Ld\xc0\xc2\xc5W\xc5<MuYZ\xaaj\xba\xe8\t"
PYMYSQL_ATTRIBUTES = b"6\x0c_client_name\x07pymysql\x0f_client_version\x051.2.4\x04_pid\x0529806"
AIOMYSQL_ATTRIBUTES = b"7\x0c_client_name\x08aiomysql\x04_pid\x0529806\x0f_client_version\x050.3.2"
CONNECTOR_ATTRIBUTES = (
    b"\x8e\x04_pid\x0529806\t_platform\x06x86_64\x0c_source_host\x02vm"
    b"\x0c_client_name\x16mysql-connector-python\x0f_client_license\x07GPL-2.0"
    b"\x0f_client_version\x0726.10.0\x03_os\tDebian-12"
)


def libmariadb_attributes(pid: bytes) -> bytes:
    return (
        b"\x7f\x03_os\x05Linux\x0c_client_name\nlibmariadb\x04_pid\x05" + pid + b"\x0f_client_version"
        b"\x063.3.20\t_platform\x06x86_64\x0cprogram_name\x05mysql\x0c_server_host\t127.0.0.1"
    )


CLIENT_RESPONSES = {
    "PyMySQL 1.2 to MariaDB": b"".join(
        [
            b"\r\xa2:\x00",  # capabilities 0x003aa20d (CLIENT_LONG_PASSWORD set: MySQL-style client)
            b"\xff\xff\xff\x00",  # max packet size
            b"-",  # utf8mb4_general_ci
            bytes(23),  # filler
            b"alice\x00",
            b"\x14" + NATIVE_SCRAMBLE,  # length-encoded (CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
            b"app\x00",
            b"mysql_native_password\x00",
            PYMYSQL_ATTRIBUTES,
        ]
    ),
    "aiomysql 0.3 to MariaDB": b"".join(
        [
            b"\r\xa2;\x00\xff\xff\xff\x00-",
            bytes(23),
            b"alice\x00\x14" + NATIVE_SCRAMBLE + b"app\x00mysql_native_password\x00",
            AIOMYSQL_ATTRIBUTES,
        ]
    ),
    "mysql-connector-python 26 to MariaDB": b"".join(
        [
            b"\r\xa2;\x00\x00\x00\x00@-",
            bytes(23),
            b"alice\x00\x14" + NATIVE_SCRAMBLE + b"app\x00mysql_native_password\x00",
            CONNECTOR_ATTRIBUTES,
        ]
    ),
    "mariadb CLI (libmariadb 3.3) to MariaDB": b"".join(
        [
            b"\x8c\xa2\xbf\x00",  # CLIENT_MYSQL clear: extended capabilities in the filler
            b"\x00\x00\x00\x10",
            b"!",  # utf8_general_ci
            bytes(19),
            b"\x1d\x00\x00\x00",  # MariaDB extended capabilities
            b"alice\x00\x14" + NATIVE_SCRAMBLE + b"app\x00mysql_native_password\x00",
            libmariadb_attributes(b"29842"),
        ]
    ),
    "PyMySQL 1.2 to MySQL 8": b"".join(
        [
            b"\r\xa2:\x00\xff\xff\xff\x00-",
            bytes(23),
            b"alice\x00 " + SHA2_SCRAMBLE + b"app\x00caching_sha2_password\x00",
            PYMYSQL_ATTRIBUTES,
        ]
    ),
    "mysql-connector-python 26 to MySQL 8": b"".join(
        [
            b"\r\xa2;\x18",  # with CLIENT_QUERY_ATTRIBUTES and CLIENT_MULTI_FACTOR_AUTHENTICATION
            b"\x00\x00\x00@\xff",
            bytes(23),
            b"alice\x00 " + SHA2_SCRAMBLE + b"app\x00caching_sha2_password\x00",
            CONNECTOR_ATTRIBUTES,
        ]
    ),
    "mariadb CLI (libmariadb 3.3) to MySQL 8": b"".join(
        [
            b"\x8d\xa2\xbf\x00\x00\x00\x00\x10!",  # CLIENT_MYSQL set for a MySQL server
            bytes(23),
            b"alice\x00 " + SHA2_SCRAMBLE + b"app\x00caching_sha2_password\x00",
            libmariadb_attributes(b"29851"),
        ]
    ),
}


@pytest.mark.parametrize("client", CLIENT_RESPONSES)
def test_real_client_handshake_responses_decode_and_re_encode_byte_for_byte(client: str) -> None:
    payload = CLIENT_RESPONSES[client]
    response = HandshakeResponse41.decode(payload)
    assert response.username == "alice"
    assert response.database == "app"
    to_mysql_8 = client.endswith("MySQL 8")
    assert response.auth_plugin_name == (CACHING_SHA2_PASSWORD if to_mysql_8 else MYSQL_NATIVE_PASSWORD)
    assert response.auth_response == (SHA2_SCRAMBLE if to_mysql_8 else NATIVE_SCRAMBLE)
    assert response.connect_attributes["_pid"].isdigit()
    assert response.encode() == payload


def test_mariadb_client_response_carries_extended_capabilities() -> None:
    response = HandshakeResponse41.decode(CLIENT_RESPONSES["mariadb CLI (libmariadb 3.3) to MariaDB"])
    assert response.capabilities == 0x00BFA28C | (
        MARIADB_CLIENT_PROGRESS
        | MARIADB_CLIENT_STMT_BULK_OPERATIONS
        | MARIADB_CLIENT_EXTENDED_METADATA
        | MARIADB_CLIENT_CACHE_METADATA
    )
    assert response.connect_attributes["program_name"] == "mysql"
    assert response.max_packet_size == 1 << 28


def test_mysql_client_response_filler_is_not_read_as_extended_capabilities() -> None:
    response = HandshakeResponse41.decode(CLIENT_RESPONSES["mysql-connector-python 26 to MySQL 8"])
    assert response.capabilities == 0x183BA20D


SECURE_41 = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_LONG_PASSWORD | CLIENT_TRANSACTIONS


@pytest.mark.parametrize(
    "response",
    [
        HandshakeResponse41(SECURE_41, 1 << 24, 45, "app", b"\x01" * 20),
        HandshakeResponse41(SECURE_41 | CLIENT_CONNECT_WITH_DB, 1 << 24, 45, "app", b"", database="db"),
        HandshakeResponse41(
            CLIENT_PROTOCOL_41 | CLIENT_PLUGIN_AUTH, 0, 8, "old", b"abc", auth_plugin_name="p"
        ),
        HandshakeResponse41(
            CLIENT_PROTOCOL_41
            | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CLIENT_CONNECT_ATTRS
            | CLIENT_PLUGIN_AUTH,
            1 << 30,
            255,
            "bob",
            bytes(300),
            auth_plugin_name=CACHING_SHA2_PASSWORD,
            connect_attributes={"_client_name": "rotaproxy", "empty": ""},
        ),
        HandshakeResponse41(
            (CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | MARIADB_CLIENT_PROGRESS) & ~CLIENT_LONG_PASSWORD,
            1 << 24,
            45,
            "maria",
            b"x" * 20,
        ),
    ],
)
def test_handshake_response_round_trips(response: HandshakeResponse41) -> None:
    assert HandshakeResponse41.decode(response.encode()) == response


def test_handshake_response_with_a_one_byte_auth_length_follows_the_documented_layout() -> None:
    response = HandshakeResponse41(SECURE_41 | CLIENT_CONNECT_WITH_DB, 1 << 24, 33, "app", b"\xaa\xbb", "db")
    expected = b"".join(
        [
            b"\x09\xa2\x00\x00",  # capabilities
            b"\x00\x00\x00\x01",  # max packet size
            b"\x21",  # utf8_general_ci
            bytes(23),
            b"app\x00",
            b"\x02\xaa\xbb",  # auth response, 1-byte length (CLIENT_SECURE_CONNECTION)
            b"db\x00",
        ]
    )
    assert response.encode() == expected


def test_flagged_fields_missing_at_the_end_of_the_response_decode_as_absent() -> None:
    capabilities = SECURE_41 | CLIENT_CONNECT_WITH_DB | CLIENT_PLUGIN_AUTH | CLIENT_CONNECT_ATTRS
    bare = HandshakeResponse41(SECURE_41, 0, 45, "app", b"pw").encode()
    flagged = capabilities.to_bytes(4, "little") + bare[4:]
    response = HandshakeResponse41.decode(flagged)
    assert (response.database, response.auth_plugin_name, response.connect_attributes) == (None, None, {})


def test_handshake_response_encode_refuses_fields_their_flag_does_not_allow() -> None:
    with pytest.raises(LocalProtocolError, match="CLIENT_CONNECT_WITH_DB"):
        HandshakeResponse41(SECURE_41, 0, 45, "app", b"", database="db").encode()
    with pytest.raises(LocalProtocolError, match="CLIENT_PLUGIN_AUTH"):
        HandshakeResponse41(SECURE_41, 0, 45, "app", b"", auth_plugin_name="p").encode()
    with pytest.raises(LocalProtocolError, match="CLIENT_CONNECT_ATTRS"):
        HandshakeResponse41(SECURE_41, 0, 45, "app", b"", connect_attributes={"a": "b"}).encode()
    with pytest.raises(LocalProtocolError, match="255"):
        HandshakeResponse41(SECURE_41, 0, 45, "app", bytes(256)).encode()
    with pytest.raises(LocalProtocolError, match="NUL"):
        HandshakeResponse41(SECURE_41, 0, 45, "a\x00b", b"").encode()


def test_handshake_response_repr_hides_the_auth_response() -> None:
    response = HandshakeResponse41(SECURE_41, 0, 45, "app", b"cleartext-secret\x00")
    assert "cleartext-secret" not in repr(response)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (CLIENT_RESPONSES["PyMySQL 1.2 to MariaDB"] + b"\x00", "trailing"),
        (b"\x00\x00\x00\x00" + CLIENT_RESPONSES["PyMySQL 1.2 to MariaDB"][4:], "pre-4.1"),
        (SslRequest(SECURE_41).encode(), "user name"),
        (CLIENT_RESPONSES["PyMySQL 1.2 to MariaDB"][:31], "truncated"),
        (CLIENT_RESPONSES["PyMySQL 1.2 to MariaDB"][:35], "NUL"),
        (CLIENT_RESPONSES["PyMySQL 1.2 to MariaDB"][:45], "past the packet"),
        (CLIENT_RESPONSES["PyMySQL 1.2 to MariaDB"][:-1], "past the packet"),  # attributes cut short
        (
            HandshakeResponse41(SECURE_41, 0, 45, "caf\xe9", b"").encode().replace(b"\xc3\xa9", b"\xe9"),
            "UTF-8",
        ),
    ],
)
def test_malformed_handshake_response_is_a_protocol_violation(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        HandshakeResponse41.decode(payload)


# --- SSL request ------------------------------------------------------------------------------


def test_ssl_request_is_the_32_byte_prefix_of_a_response_with_client_ssl() -> None:
    request = SslRequest(SECURE_41 | CLIENT_PLUGIN_AUTH, 1 << 24, UTF8MB4_GENERAL_CI)
    payload = request.encode()
    assert payload == b"\x01\xaa\x08\x00\x00\x00\x00\x01\x2d" + b"\x00" * 23
    assert is_ssl_request(payload)
    assert SslRequest.decode(payload) == SslRequest(SECURE_41 | CLIENT_PLUGIN_AUTH | CLIENT_SSL, 1 << 24, 45)


def test_mariadb_ssl_request_carries_extended_capabilities() -> None:
    capabilities = (CLIENT_PROTOCOL_41 | CLIENT_SSL | MARIADB_CLIENT_PROGRESS) & ~CLIENT_LONG_PASSWORD
    payload = SslRequest(capabilities).encode()
    assert payload[-4:] == b"\x01\x00\x00\x00"
    assert SslRequest.decode(payload).capabilities == capabilities


def test_full_responses_and_requests_without_client_ssl_are_not_ssl_requests() -> None:
    assert not is_ssl_request(CLIENT_RESPONSES["PyMySQL 1.2 to MariaDB"])
    assert not is_ssl_request(b"\x05\xa2\x00\x00" + bytes(28))
    with pytest.raises(ProtocolViolation):
        SslRequest.decode(b"\x05\xa2\x00\x00" + bytes(28))


# --- OK, EOF, ERR -----------------------------------------------------------------------------


def test_ok_packet_from_the_docs_decodes() -> None:
    assert OkPacket.decode(b"\x00\x00\x00\x02\x00\x00\x00") == OkPacket(0, 0, SERVER_STATUS_AUTOCOMMIT, 0)
    assert OkPacket(0, 0, SERVER_STATUS_AUTOCOMMIT, 0).encode() == b"\x00\x00\x00\x02\x00\x00\x00"


def test_ok_packet_info_is_length_encoded_as_real_servers_send_it() -> None:
    # MariaDB 10.11 after LOAD DATA, without CLIENT_SESSION_TRACK.
    payload = b"\x00\x03\x00\x02\x00\x00\x00/Records: 3  Deleted: 0  Skipped: 0  Warnings: 0"
    ok = OkPacket.decode(payload)
    assert ok == OkPacket(
        3, 0, SERVER_STATUS_AUTOCOMMIT, 0, b"Records: 3  Deleted: 0  Skipped: 0  Warnings: 0"
    )
    assert ok.encode() == payload


def test_ok_packet_info_as_documented_string_to_the_end_is_accepted() -> None:
    assert OkPacket.decode(b"\x00\x01\x00\x02\x00\x00\x00Rows matched: 1").info == b"Rows matched: 1"


def test_ok_packet_with_session_state_changes() -> None:
    # MariaDB 10.11 after COM_INIT_DB, with CLIENT_SESSION_TRACK: empty info, schema change.
    payload = b"\x00\x00\x00\x02\x40\x00\x00\x00\x14\x01\x12\x11rotaproxy_capture"
    capabilities = CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK
    ok = OkPacket.decode(payload, capabilities)
    assert ok == OkPacket(
        status_flags=SERVER_STATUS_AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED,
        session_state=b"\x01\x12\x11rotaproxy_capture",
    )
    assert ok.encode(capabilities) == payload


def test_ok_packet_with_session_track_may_omit_the_info() -> None:
    capabilities = CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK
    assert OkPacket.decode(b"\x00\x00\x00\x02\x00\x00\x00", capabilities) == OkPacket(status_flags=2)


def test_ok_packet_with_0xfe_header_ends_rows_under_deprecate_eof() -> None:
    ok = OkPacket(0, 0, SERVER_MORE_RESULTS_EXISTS | SERVER_STATUS_AUTOCOMMIT, 1)
    payload = ok.encode(eof_header=True)
    assert payload == b"\xfe\x00\x00\x0a\x00\x01\x00"
    assert OkPacket.decode(payload) == ok


@pytest.mark.parametrize(
    "ok",
    [
        OkPacket(),
        OkPacket(300, 2**40, 0x4003, 65535, b"info"),
        OkPacket(1, 2, SERVER_SESSION_STATE_CHANGED, 0, b"", b"\x00\x05\x04a\x01b"),
    ],
)
def test_ok_packet_round_trips_with_session_track(ok: OkPacket) -> None:
    capabilities = CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK
    assert OkPacket.decode(ok.encode(capabilities), capabilities) == ok


def test_ok_packet_without_protocol_41_has_status_but_no_warnings() -> None:
    assert OkPacket(1, 0, 2, 0).encode(CLIENT_TRANSACTIONS) == b"\x00\x01\x00\x02\x00"
    assert OkPacket.decode(b"\x00\x01\x00\x02\x00", CLIENT_TRANSACTIONS) == OkPacket(1, 0, 2, 0)


def test_fields_too_large_for_their_wire_size_are_our_error() -> None:
    with pytest.raises(LocalProtocolError, match="wire size"):
        OkPacket(status_flags=1 << 16).encode()
    with pytest.raises(LocalProtocolError, match="wire size"):
        HandshakeV10("8.0.36", 1 << 32, MYSQL_8_NONCE, 0xDFFFF7FF, 255, 2, CACHING_SHA2_PASSWORD).encode()


def test_ok_packet_encode_refuses_session_state_the_flags_do_not_announce() -> None:
    with pytest.raises(LocalProtocolError):
        OkPacket(session_state=b"\x01").encode(CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x00\x02\x00\x00",
        b"\xff\x00\x00\x02\x00\x00\x00",
        b"\x00\xfb\x00\x02\x00\x00\x00",
    ],
)
def test_malformed_ok_packet_is_a_protocol_violation(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        OkPacket.decode(payload)


def test_session_track_ok_with_trailing_bytes_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        OkPacket.decode(b"\x00\x00\x00\x02\x00\x00\x00\x01ab", CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK)


def test_eof_packet_from_the_docs() -> None:
    payload = b"\xfe\x00\x00\x02\x00"
    assert is_eof_packet(payload)
    assert EofPacket.decode(payload) == EofPacket(warnings=0, status_flags=SERVER_STATUS_AUTOCOMMIT)
    assert EofPacket(1, 0x0A).encode() == b"\xfe\x01\x00\x0a\x00"


def test_a_long_packet_starting_with_0xfe_is_not_an_eof() -> None:
    row = b"\xfe" + (1 << 24).to_bytes(8, "little")  # a text row's 8-byte length prefix
    assert not is_eof_packet(row)
    assert not is_eof_packet(b"")
    assert not is_eof_packet(b"\x00\x00\x00\x02\x00")


@pytest.mark.parametrize(
    "payload", [b"\xfe", b"\xfe\x00\x00\x02", b"\xfe\x00\x00\x02\x00\x00", b"\x00\x00\x00\x02\x00"]
)
def test_malformed_eof_packet_is_a_protocol_violation(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        EofPacket.decode(payload)


def test_err_packet_from_the_docs() -> None:
    payload = b"\xff\x48\x04#HY000No tables used"
    assert ErrPacket.decode(payload) == ErrPacket(1096, "No tables used", "HY000")
    assert ErrPacket(1096, "No tables used").encode() == payload


def test_err_packet_from_mariadb_with_its_sql_state() -> None:
    payload = b"\xffz\x04#42S02Table 'rotaproxy_capture.nosuchtable' doesn't exist"
    assert ErrPacket.decode(payload) == ErrPacket(
        1146, "Table 'rotaproxy_capture.nosuchtable' doesn't exist", "42S02"
    )


def test_err_packet_message_in_another_encoding_is_replaced_not_refused() -> None:
    assert ErrPacket.decode(b"\xff\x15\x04#28000Acc\xe8s").message == "Acc\ufffds"


def test_err_packet_encode_refuses_a_malformed_sql_state() -> None:
    with pytest.raises(LocalProtocolError):
        ErrPacket(1045, "x", "2800").encode()


@pytest.mark.parametrize("payload", [b"", b"\xff\x15", b"\x00\x15\x04", b"\xff\x15\x04#280"])
def test_malformed_err_packet_is_a_protocol_violation(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        ErrPacket.decode(payload)


# --- authentication packets -------------------------------------------------------------------


def test_auth_switch_request_drops_the_nul_servers_append_to_the_nonce() -> None:
    payload = b"\xfemysql_native_password\x00" + MARIADB_NONCE + b"\x00"
    request = AuthSwitchRequest.decode(payload)
    assert request == AuthSwitchRequest(MYSQL_NATIVE_PASSWORD, MARIADB_NONCE)
    assert request.encode() == payload


def test_one_byte_auth_switch_request_means_the_old_password_plugin() -> None:
    assert AuthSwitchRequest.decode(b"\xfe") == AuthSwitchRequest(MYSQL_OLD_PASSWORD, b"")


@pytest.mark.parametrize("payload", [b"", b"\x01abc", b"\xfemysql_native_password"])
def test_malformed_auth_switch_request_is_a_protocol_violation(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        AuthSwitchRequest.decode(payload)


def test_auth_more_data_carries_caching_sha2_status_bytes() -> None:
    assert AuthMoreData.decode(b"\x01\x03") == AuthMoreData(b"\x03")
    assert AuthMoreData(b"\x04").encode() == b"\x01\x04"
    with pytest.raises(ProtocolViolation):
        AuthMoreData.decode(b"\x00\x03")


def test_command_byte_is_the_first_byte_of_a_command() -> None:
    assert command_byte(b"\x03SELECT 1") == COM_QUERY
    with pytest.raises(ProtocolViolation):
        command_byte(b"")


# --- fuzz -------------------------------------------------------------------------------------

DECODERS: list[Callable[[bytes], object]] = [
    HandshakeV10.decode,
    HandshakeResponse41.decode,
    SslRequest.decode,
    OkPacket.decode,
    lambda payload: OkPacket.decode(
        payload, CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK | CLIENT_MULTI_RESULTS
    ),
    EofPacket.decode,
    ErrPacket.decode,
    AuthSwitchRequest.decode,
    AuthMoreData.decode,
]


@given(st.sampled_from(DECODERS), st.binary(max_size=120))
@settings(max_examples=400)
def test_random_bytes_decode_or_raise_protocol_violation(
    decode: Callable[[bytes], object], payload: bytes
) -> None:
    with contextlib.suppress(ProtocolViolation):
        decode(payload)


@given(st.binary(min_size=1, max_size=len(MARIADB_10_11_GREETING)), st.integers(min_value=0))
@settings(max_examples=200)
def test_corrupted_greetings_decode_or_raise_protocol_violation(noise: bytes, position: int) -> None:
    at = position % len(MARIADB_10_11_GREETING)
    corrupted = MARIADB_10_11_GREETING[:at] + noise + MARIADB_10_11_GREETING[at + len(noise) :]
    with contextlib.suppress(ProtocolViolation):
        HandshakeV10.decode(corrupted)
