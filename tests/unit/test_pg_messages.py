"""Byte-exact encodings and decodings of the typed PostgreSQL v3 messages.

Expected bytes are written out by hand from the protocol documentation ("Message Formats"),
so a test fails if an encoder and its decoder drift together.
"""

from __future__ import annotations

import re

import pytest

from protocols.errors import LocalProtocolError, ProtocolViolation
from protocols.postgres.messages import (
    AUTH_CLEARTEXT_PASSWORD,
    AUTH_MD5_PASSWORD,
    AUTH_OK,
    AUTH_OK_MESSAGE,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    PROTOCOL_3_0,
    SSL_REQUEST_MESSAGE,
    TERMINATE_MESSAGE,
    AuthenticationRequest,
    BackendKeyData,
    CancelRequest,
    ErrorResponse,
    GSSENCRequest,
    NegotiateProtocolVersion,
    ParameterStatus,
    RawMessage,
    ReadyForQuery,
    SSLRequest,
    StartupMessage,
    cstring,
    decode_backend,
    decode_startup,
    frame,
    password_message,
    query_message,
    read_cstring,
    sasl_initial_response,
)


def raw(wire: bytes) -> RawMessage:
    """Split one hand-written typed message into its type and payload, checking its length."""
    declared = int.from_bytes(wire[1:5], "big")
    assert declared == len(wire) - 1, "the hand-written test message has a wrong length"
    return RawMessage(wire[:1], wire[5:])


def startup_packet(body: bytes) -> bytes:
    """An untyped startup packet: int32 length (counting itself) followed by body."""
    return (len(body) + 4).to_bytes(4, "big") + body


# --- helpers shared by every encoder ------------------------------------------------------


def test_frame_counts_the_length_field_but_not_the_type_byte() -> None:
    assert frame(b"X") == b"X\x00\x00\x00\x04"
    assert frame(b"Q", b"abc") == b"Q\x00\x00\x00\x07abc"


def test_cstring_encodes_utf8_and_appends_nul() -> None:
    assert cstring("") == b"\x00"
    assert cstring("café") == b"caf\xc3\xa9\x00"


def test_cstring_refuses_an_embedded_nul_as_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        cstring("a\x00b")


def test_read_cstring_returns_the_string_and_the_offset_after_its_nul() -> None:
    assert read_cstring(b"user\x00alice\x00", 0) == ("user", 5)
    assert read_cstring(b"user\x00alice\x00", 5) == ("alice", 11)
    assert read_cstring(b"\x00", 0) == ("", 1)


def test_read_cstring_rejects_a_missing_nul() -> None:
    with pytest.raises(ProtocolViolation, match="NUL-terminated"):
        read_cstring(b"user", 0)


def test_read_cstring_rejects_invalid_utf8() -> None:
    with pytest.raises(ProtocolViolation, match="UTF-8"):
        read_cstring(b"caf\xe9\x00", 0)


# --- startup-phase messages: exact encodings ----------------------------------------------


def test_ssl_request_is_length_8_and_code_1234_5679() -> None:
    assert SSLRequest().encode() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert SSL_REQUEST_MESSAGE == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


def test_gssenc_request_is_length_8_and_code_1234_5680() -> None:
    assert GSSENCRequest().encode() == b"\x00\x00\x00\x08\x04\xd2\x16\x30"


def test_cancel_request_carries_process_id_and_secret_key() -> None:
    assert CancelRequest(1234, 0xDEADBEEF).encode() == (
        b"\x00\x00\x00\x10"  # length 16
        b"\x04\xd2\x16\x2e"  # code 1234.5678
        b"\x00\x00\x04\xd2"  # process id 1234
        b"\xde\xad\xbe\xef"  # secret key
    )


def test_startup_message_encodes_protocol_3_0_and_nul_separated_parameters() -> None:
    message = StartupMessage({"user": "alice", "database": "app"})
    assert message.encode() == (
        b"\x00\x00\x00\x21"  # length 33
        b"\x00\x03\x00\x00"  # protocol 3.0
        b"user\x00alice\x00database\x00app\x00"
        b"\x00"
    )


def test_startup_message_without_parameters_is_just_the_terminator() -> None:
    assert StartupMessage({}).encode() == b"\x00\x00\x00\x09\x00\x03\x00\x00\x00"


def test_startup_message_reports_major_and_minor_version() -> None:
    message = StartupMessage({}, protocol=(3 << 16) | 2)
    assert (message.major, message.minor) == (3, 2)
    assert StartupMessage({}).protocol == PROTOCOL_3_0 == 0x00030000


def test_startup_message_with_nul_in_a_parameter_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        StartupMessage({"user": "al\x00ice"}).encode()


def test_cancel_request_repr_hides_the_secret_key() -> None:
    text = repr(CancelRequest(1234, 987654321))
    assert "1234" in text
    assert "987654321" not in text
    assert "secret" not in text


# --- decode_startup -----------------------------------------------------------------------


def test_decode_startup_reads_a_startup_message() -> None:
    packet = b"\x00\x00\x00\x21\x00\x03\x00\x00user\x00alice\x00database\x00app\x00\x00"
    event = decode_startup(packet)
    assert event == StartupMessage({"user": "alice", "database": "app"}, PROTOCOL_3_0)
    assert isinstance(event, StartupMessage)
    assert list(event.parameters) == ["user", "database"]


def test_decode_startup_accepts_an_empty_parameter_value() -> None:
    packet = b"\x00\x00\x00\x12\x00\x03\x00\x00options\x00\x00\x00"
    assert decode_startup(packet) == StartupMessage({"options": ""})


def test_decode_startup_keeps_a_newer_3_x_minor_version_for_negotiation() -> None:
    packet = b"\x00\x00\x00\x09\x00\x03\x00\x02\x00"
    event = decode_startup(packet)
    assert isinstance(event, StartupMessage)
    assert (event.major, event.minor) == (3, 2)


def test_decode_startup_reads_utf8_parameters() -> None:
    packet = startup_packet(b"\x00\x03\x00\x00application_name\x00caf\xc3\xa9\x00\x00")
    assert decode_startup(packet) == StartupMessage({"application_name": "café"})


def test_decode_startup_reads_ssl_request() -> None:
    assert decode_startup(b"\x00\x00\x00\x08\x04\xd2\x16\x2f") == SSLRequest()


def test_decode_startup_reads_gssenc_request() -> None:
    assert decode_startup(b"\x00\x00\x00\x08\x04\xd2\x16\x30") == GSSENCRequest()


def test_decode_startup_reads_cancel_request() -> None:
    packet = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\xde\xad\xbe\xef"
    assert decode_startup(packet) == CancelRequest(1234, 0xDEADBEEF)


@pytest.mark.parametrize(
    "message",
    [
        StartupMessage({"user": "alice", "database": "app", "application_name": "psql"}),
        StartupMessage({}),
        SSLRequest(),
        GSSENCRequest(),
        CancelRequest(-1, 0),
        CancelRequest(2**31 - 1, 2**32 - 1),
    ],
)
def test_decode_startup_inverts_encode(
    message: StartupMessage | SSLRequest | GSSENCRequest | CancelRequest,
) -> None:
    assert decode_startup(message.encode()) == message


@pytest.mark.parametrize(
    "packet",
    [b"", b"\x00\x00\x00\x08", b"\x00\x00\x00\x08\x04\xd2\x16"],
    ids=["empty", "length-only", "seven-bytes"],
)
def test_decode_startup_rejects_a_packet_shorter_than_8_bytes(packet: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="shorter than 8"):
        decode_startup(packet)


@pytest.mark.parametrize(
    "packet",
    [
        b"\x00\x00\x00\x09\x04\xd2\x16\x2f",  # claims 9, holds 8
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f\x00",  # claims 8, holds 9
        b"\x00\x00\x00\x20\x00\x03\x00\x00user\x00alice\x00\x00",  # claims 32, holds 20
    ],
    ids=["declared-longer", "declared-shorter", "startup-declared-longer"],
)
def test_decode_startup_rejects_a_length_that_disagrees_with_the_packet(packet: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="does not match"):
        decode_startup(packet)


@pytest.mark.parametrize(
    ("packet", "name"),
    [
        (b"\x00\x00\x00\x0c\x04\xd2\x16\x2f\x00\x00\x00\x00", "SSLRequest"),
        (b"\x00\x00\x00\x0c\x04\xd2\x16\x30\x00\x00\x00\x00", "GSSENCRequest"),
        (b"\x00\x00\x00\x0c\x04\xd2\x16\x2e\x00\x00\x04\xd2", "CancelRequest"),
        (
            b"\x00\x00\x00\x14\x04\xd2\x16\x2e\x00\x00\x04\xd2\xde\xad\xbe\xef\x00\x00\x00\x00",
            "CancelRequest",
        ),
    ],
)
def test_decode_startup_rejects_a_special_request_of_the_wrong_length(packet: bytes, name: str) -> None:
    with pytest.raises(ProtocolViolation, match=f"{name} has the wrong length"):
        decode_startup(packet)


@pytest.mark.parametrize(
    ("protocol", "version"),
    [
        (b"\x00\x02\x00\x00", "2.0"),
        (b"\x00\x04\x00\x00", "4.0"),
        (b"\x00\x01\x00\x05", "1.5"),
        (b"\x04\xd2\x16\x31", "1234.5681"),  # next to the special codes, but not one of them
    ],
)
def test_decode_startup_rejects_an_unknown_protocol_version_naming_it(protocol: bytes, version: str) -> None:
    packet = startup_packet(protocol + b"user\x00alice\x00\x00")
    with pytest.raises(ProtocolViolation, match=rf"protocol {re.escape(version)}:"):
        decode_startup(packet)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"", "not terminated"),
        (b"user\x00alice\x00", "not terminated"),
        (b"user\x00alice", "NUL-terminated"),
        (b"user\x00", "NUL-terminated"),
        (b"user", "NUL-terminated"),
        (b"user\x00\x00", "not terminated"),  # value "" but no list terminator
        (b"user\x00alice\x00\x00junk", "trailing bytes"),
        (b"\x00\x00", "trailing bytes"),
        (b"us\xffer\x00alice\x00\x00", "UTF-8"),
        (b"user\x00al\xc3ice\x00\x00", "UTF-8"),
    ],
    ids=[
        "no-parameters-no-terminator",
        "no-list-terminator",
        "value-unterminated",
        "name-without-value",
        "name-unterminated",
        "empty-value-without-terminator",
        "junk-after-terminator",
        "second-terminator",
        "name-not-utf8",
        "value-not-utf8",
    ],
)
def test_decode_startup_rejects_malformed_parameters(body: bytes, complaint: str) -> None:
    packet = startup_packet(b"\x00\x03\x00\x00" + body)
    with pytest.raises(ProtocolViolation, match=complaint):
        decode_startup(packet)


# --- typed backend messages: exact encodings ----------------------------------------------


@pytest.mark.parametrize(
    ("status", "wire"),
    [
        (b"I", b"Z\x00\x00\x00\x05I"),
        (b"T", b"Z\x00\x00\x00\x05T"),
        (b"E", b"Z\x00\x00\x00\x05E"),
    ],
)
def test_ready_for_query_is_z_length_5_and_the_status_byte(status: bytes, wire: bytes) -> None:
    assert ReadyForQuery(status).encode() == wire


def test_ready_for_query_defaults_to_idle() -> None:
    assert ReadyForQuery().encode() == b"Z\x00\x00\x00\x05I"


def test_authentication_ok_is_r_length_8_code_0() -> None:
    assert AuthenticationRequest(AUTH_OK).encode() == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert AUTH_OK_MESSAGE == b"R\x00\x00\x00\x08\x00\x00\x00\x00"


def test_authentication_cleartext_password_is_code_3() -> None:
    wire = b"R\x00\x00\x00\x08\x00\x00\x00\x03"
    assert AuthenticationRequest(AUTH_CLEARTEXT_PASSWORD).encode() == wire


def test_authentication_md5_password_is_code_5_followed_by_the_salt() -> None:
    wire = b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04"
    assert AuthenticationRequest(AUTH_MD5_PASSWORD, b"\x01\x02\x03\x04").encode() == wire


def test_authentication_sasl_is_code_10_followed_by_a_mechanism_list() -> None:
    wire = b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"
    assert AuthenticationRequest(AUTH_SASL, b"SCRAM-SHA-256\x00\x00").encode() == wire


def test_authentication_sasl_continue_and_final_carry_raw_sasl_data() -> None:
    assert AuthenticationRequest(AUTH_SASL_CONTINUE, b"r=abc").encode() == (
        b"R\x00\x00\x00\x0d\x00\x00\x00\x0br=abc"
    )
    assert AuthenticationRequest(AUTH_SASL_FINAL, b"v=xyz").encode() == (
        b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=xyz"
    )


def test_sasl_mechanisms_lists_every_offered_mechanism_in_order() -> None:
    request = AuthenticationRequest(AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00")
    assert request.sasl_mechanisms() == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert AuthenticationRequest(AUTH_SASL, b"\x00").sasl_mechanisms() == []


def test_sasl_mechanisms_rejects_an_unterminated_name() -> None:
    with pytest.raises(ProtocolViolation):
        AuthenticationRequest(AUTH_SASL, b"SCRAM-SHA-256").sasl_mechanisms()


def test_parameter_status_is_two_cstrings() -> None:
    wire = b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00"
    assert ParameterStatus("client_encoding", "UTF8").encode() == wire


def test_parameter_status_encodes_values_as_utf8() -> None:
    wire = b"S\x00\x00\x00\x1bapplication_name\x00caf\xc3\xa9\x00"
    assert ParameterStatus("application_name", "café").encode() == wire


def test_backend_key_data_is_process_id_and_secret_key() -> None:
    wire = b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\xde\xad\xbe\xef"
    assert BackendKeyData(1234, 0xDEADBEEF).encode() == wire


def test_backend_key_data_repr_hides_the_secret_key() -> None:
    text = repr(BackendKeyData(1234, 987654321))
    assert "1234" in text
    assert "987654321" not in text


def test_backend_key_data_and_cancel_request_carry_the_same_key_bytes() -> None:
    key = BackendKeyData(1234, 0xDEADBEEF).encode()[5:]
    cancel = CancelRequest(1234, 0xDEADBEEF).encode()
    assert cancel[8:] == key


def test_error_response_build_writes_severity_twice_then_code_and_message() -> None:
    error = ErrorResponse.build("FATAL", "28P01", "bad password")
    assert error.encode() == (
        b"E\x00\x00\x00\x28"  # length 40
        b"SFATAL\x00"
        b"VFATAL\x00"
        b"C28P01\x00"
        b"Mbad password\x00"
        b"\x00"
    )


def test_error_response_build_appends_the_detail_when_given() -> None:
    error = ErrorResponse.build("ERROR", "08P01", "oops", detail="why")
    assert error.encode() == (
        b"E\x00\x00\x00\x25"  # length 37
        b"SERROR\x00VERROR\x00C08P01\x00Moops\x00Dwhy\x00\x00"
    )


def test_notice_response_has_the_same_layout_with_type_n() -> None:
    notice = ErrorResponse({"S": "NOTICE", "M": "hi"}, notice=True)
    assert notice.encode() == b"N\x00\x00\x00\x11SNOTICE\x00Mhi\x00\x00"


def test_error_response_properties_read_the_fields() -> None:
    error = ErrorResponse({"S": "FEHLER", "V": "ERROR", "C": "42P01", "M": "no table"})
    assert (error.severity, error.code, error.message) == ("ERROR", "42P01", "no table")


def test_error_response_severity_falls_back_to_the_localized_field() -> None:
    assert ErrorResponse({"S": "FATAL"}).severity == "FATAL"
    empty = ErrorResponse({})
    assert (empty.severity, empty.code, empty.message) == ("", "", "")
    assert empty.encode() == b"E\x00\x00\x00\x05\x00"


def test_negotiate_protocol_version_lists_the_unrecognized_options() -> None:
    message = NegotiateProtocolVersion(0, ("_pq_.compression", "_pq_.x"))
    assert message.encode() == (
        b"v\x00\x00\x00\x24"  # length 36
        b"\x00\x00\x00\x00"  # newest minor version supported
        b"\x00\x00\x00\x02"  # two options
        b"_pq_.compression\x00_pq_.x\x00"
    )


def test_negotiate_protocol_version_without_options() -> None:
    wire = b"v\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"
    assert NegotiateProtocolVersion(0).encode() == wire


def test_raw_message_reencodes_its_type_and_payload() -> None:
    assert RawMessage(b"C", b"SELECT 1\x00").encode() == b"C\x00\x00\x00\x0dSELECT 1\x00"


# --- frontend messages the proxy writes ---------------------------------------------------


def test_password_message_frames_the_payload_as_p() -> None:
    assert password_message(b"secret\x00") == b"p\x00\x00\x00\x0bsecret\x00"


def test_sasl_initial_response_names_the_mechanism_and_prefixes_the_data_length() -> None:
    assert sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc") == (
        b"p\x00\x00\x00\x21"  # length 33
        b"SCRAM-SHA-256\x00"
        b"\x00\x00\x00\x0b"  # 11 bytes of client-first-message follow
        b"n,,n=,r=abc"
    )


def test_query_message_is_q_and_a_cstring() -> None:
    assert query_message("SELECT 1") == b"Q\x00\x00\x00\x0dSELECT 1\x00"


def test_terminate_message_is_x_with_an_empty_body() -> None:
    assert TERMINATE_MESSAGE == b"X\x00\x00\x00\x04"


# --- decode_backend: round trips ----------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"R\x00\x00\x00\x08\x00\x00\x00\x00", AuthenticationRequest(AUTH_OK)),
        (b"R\x00\x00\x00\x08\x00\x00\x00\x02", AuthenticationRequest(2)),  # KerberosV5
        (b"R\x00\x00\x00\x08\x00\x00\x00\x03", AuthenticationRequest(AUTH_CLEARTEXT_PASSWORD)),
        (
            b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
            AuthenticationRequest(AUTH_MD5_PASSWORD, b"\x01\x02\x03\x04"),
        ),
        (b"R\x00\x00\x00\x08\x00\x00\x00\x07", AuthenticationRequest(7)),  # GSS
        (b"R\x00\x00\x00\x0a\x00\x00\x00\x08\xab\xcd", AuthenticationRequest(8, b"\xab\xcd")),
        (b"R\x00\x00\x00\x08\x00\x00\x00\x09", AuthenticationRequest(9)),  # SSPI
        (
            b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
            AuthenticationRequest(AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"),
        ),
        (
            b"R\x00\x00\x00\x15\x00\x00\x00\x0br=ab,s=cd,i=1",
            AuthenticationRequest(AUTH_SASL_CONTINUE, b"r=ab,s=cd,i=1"),
        ),
        (
            b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=xyz",
            AuthenticationRequest(AUTH_SASL_FINAL, b"v=xyz"),
        ),
    ],
    ids=[
        "ok",
        "kerberos",
        "cleartext",
        "md5",
        "gss",
        "gss-continue",
        "sspi",
        "sasl",
        "sasl-continue",
        "sasl-final",
    ],
)
def test_decode_backend_reads_every_authentication_request(
    wire: bytes, message: AuthenticationRequest
) -> None:
    assert decode_backend(raw(wire)) == message
    assert message.encode() == wire


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00", ParameterStatus("client_encoding", "UTF8")),
        (b"S\x00\x00\x00\x06\x00\x00", ParameterStatus("", "")),
        (b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\xde\xad\xbe\xef", BackendKeyData(1234, 0xDEADBEEF)),
        (b"K\x00\x00\x00\x0c\xff\xff\xff\xff\x00\x00\x00\x00", BackendKeyData(-1, 0)),
        (b"Z\x00\x00\x00\x05I", ReadyForQuery(b"I")),
        (b"Z\x00\x00\x00\x05T", ReadyForQuery(b"T")),
        (b"Z\x00\x00\x00\x05E", ReadyForQuery(b"E")),
        (
            b"E\x00\x00\x00\x28SFATAL\x00VFATAL\x00C28P01\x00Mbad password\x00\x00",
            ErrorResponse({"S": "FATAL", "V": "FATAL", "C": "28P01", "M": "bad password"}),
        ),
        (b"E\x00\x00\x00\x05\x00", ErrorResponse({})),
        (
            b"N\x00\x00\x00\x11SNOTICE\x00Mhi\x00\x00",
            ErrorResponse({"S": "NOTICE", "M": "hi"}, notice=True),
        ),
        (b"v\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00", NegotiateProtocolVersion(0)),
        (
            b"v\x00\x00\x00\x24\x00\x00\x00\x01\x00\x00\x00\x02_pq_.compression\x00_pq_.x\x00",
            NegotiateProtocolVersion(1, ("_pq_.compression", "_pq_.x")),
        ),
    ],
    ids=[
        "parameter-status",
        "parameter-status-empty",
        "key-data",
        "key-data-extremes",
        "ready-idle",
        "ready-in-transaction",
        "ready-failed",
        "error",
        "error-no-fields",
        "notice",
        "negotiate",
        "negotiate-options",
    ],
)
def test_decode_backend_round_trips_typed_messages(
    wire: bytes,
    message: ParameterStatus | BackendKeyData | ReadyForQuery | ErrorResponse | NegotiateProtocolVersion,
) -> None:
    assert decode_backend(raw(wire)) == message
    assert message.encode() == wire


def test_decode_backend_keeps_error_field_order() -> None:
    decoded = decode_backend(raw(b"E\x00\x00\x00\x17Mfirst\x00Csecond\x00Sx\x00\x00"))
    assert isinstance(decoded, ErrorResponse)
    assert list(decoded.fields) == ["M", "C", "S"]


def test_decode_backend_tells_notice_from_error() -> None:
    error = decode_backend(RawMessage(b"E", b"SERROR\x00\x00"))
    notice = decode_backend(RawMessage(b"N", b"SERROR\x00\x00"))
    assert isinstance(error, ErrorResponse)
    assert isinstance(notice, ErrorResponse)
    assert (error.notice, notice.notice) == (False, True)


@pytest.mark.parametrize(
    "message",
    [
        RawMessage(b"C", b"SELECT 1\x00"),
        RawMessage(b"D", b"\x00\x01\x00\x00\x00\x011"),
        RawMessage(b"1", b""),
        RawMessage(b"I", b""),
    ],
    ids=["command-complete", "data-row", "parse-complete", "empty-query"],
)
def test_decode_backend_leaves_untyped_messages_raw(message: RawMessage) -> None:
    assert decode_backend(message) is message


# --- decode_backend: malformed input ------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\x00\x00\x00"])
def test_authentication_request_shorter_than_its_code_is_rejected(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="shorter than 4"):
        decode_backend(RawMessage(b"R", payload))


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"", "NUL-terminated"),
        (b"client_encoding", "NUL-terminated"),
        (b"client_encoding\x00", "NUL-terminated"),
        (b"client_encoding\x00UTF8", "NUL-terminated"),
        (b"client_encoding\x00UTF8\x00\x00", "trailing bytes"),
        (b"client_encoding\x00UTF8\x00junk", "trailing bytes"),
        (b"client_\xffencoding\x00UTF8\x00", "UTF-8"),
        (b"client_encoding\x00UTF\xc38\x00", "UTF-8"),
    ],
    ids=[
        "empty",
        "name-unterminated",
        "value-missing",
        "value-unterminated",
        "extra-nul",
        "junk",
        "name-not-utf8",
        "value-not-utf8",
    ],
)
def test_malformed_parameter_status_is_rejected(payload: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolViolation, match=complaint):
        decode_backend(RawMessage(b"S", payload))


@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x04\xd2", b"\x00\x00\x04\xd2\xde\xad\xbe", b"\x00" * 9])
def test_backend_key_data_of_the_wrong_length_is_rejected(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="wrong length"):
        decode_backend(RawMessage(b"K", payload))


@pytest.mark.parametrize("payload", [b"", b"X", b"i", b"\x00", b"II", b"I\x00"])
def test_ready_for_query_with_an_invalid_status_is_rejected(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="invalid status"):
        decode_backend(RawMessage(b"Z", payload))


@pytest.mark.parametrize("kind", [b"E", b"N"])
@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"", "not terminated"),
        (b"SERROR\x00", "not terminated"),
        (b"SERROR", "NUL-terminated"),
        (b"S", "NUL-terminated"),
        (b"M\xff\xfe\x00\x00", "UTF-8"),
        (b"SERROR\x00\x00junk", "trailing bytes"),
        (b"SERROR\x00\x00\x00", "trailing bytes"),
    ],
    ids=[
        "empty",
        "no-terminator",
        "value-unterminated",
        "code-only",
        "not-utf8",
        "junk-after-terminator",
        "second-terminator",
    ],
)
def test_malformed_error_or_notice_response_is_rejected(kind: bytes, payload: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolViolation, match=complaint):
        decode_backend(RawMessage(kind, payload))


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"", "truncated"),
        (b"\x00\x00\x00\x00\x00\x00\x00", "truncated"),
        (b"\x00\x00\x00\x00\x00\x00\x00\x01", "NUL-terminated"),
        (b"\x00\x00\x00\x00\x00\x00\x00\x02_pq_.a\x00", "NUL-terminated"),
        (b"\x00\x00\x00\x00\x00\x00\x00\x01_pq_.a", "NUL-terminated"),
        (b"\x00\x00\x00\x00\x00\x00\x00\x01_pq_.\xff\x00", "UTF-8"),
        (b"\x00\x00\x00\x00\x00\x00\x00\x01_pq_.a\x00junk", "trailing bytes"),
        (b"\x00\x00\x00\x00\x00\x00\x00\x00\x00", "trailing bytes"),
        (b"\x00\x00\x00\x00\xff\xff\xff\xff", "negative"),
    ],
    ids=[
        "empty",
        "seven-bytes",
        "option-missing",
        "fewer-options-than-counted",
        "option-unterminated",
        "option-not-utf8",
        "junk-after-options",
        "junk-without-options",
        "negative-count",
    ],
)
def test_malformed_negotiate_protocol_version_is_rejected(payload: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolViolation, match=complaint):
        decode_backend(RawMessage(b"v", payload))
