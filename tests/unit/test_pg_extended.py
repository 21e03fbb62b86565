"""Extended-query messages: byte-exact encodings, strict decodings, statement renaming (in
messages by splicing, in the server's errors back to the client's names).

Expected bytes are written out by hand from the protocol documentation ("Message Formats"),
so a test fails if an encoder and its decoder drift together.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError, ProtocolViolation
from protocols.postgres.extended import (
    BIND_COMPLETE_MESSAGE,
    CLOSE_COMPLETE_MESSAGE,
    EMPTY_QUERY_RESPONSE_MESSAGE,
    FLUSH_MESSAGE,
    NO_DATA_MESSAGE,
    PARSE_COMPLETE_MESSAGE,
    PORTAL_SUSPENDED_MESSAGE,
    SERVER_STATEMENT_PREFIX,
    SYNC_MESSAGE,
    TARGET_PORTAL,
    TARGET_STATEMENT,
    Bind,
    Close,
    Describe,
    Execute,
    Flush,
    FrontendMessage,
    Parse,
    Query,
    Sync,
    decode_frontend,
    parse_query,
    rename_statements,
    statement_field,
    with_name,
)
from protocols.postgres.messages import ErrorResponse, RawMessage, frame


def raw(wire: bytes) -> RawMessage:
    """Split one hand-written typed message into its type and payload, checking its length."""
    declared = int.from_bytes(wire[1:5], "big")
    assert declared == len(wire) - 1, "the hand-written test message has a wrong length"
    return RawMessage(wire[:1], wire[5:])


def decode(wire: bytes) -> FrontendMessage:
    return decode_frontend(raw(wire))


# --- hand-written messages and what they decode to ---------------------------------------------

PARSE_S1 = b"P\x00\x00\x00\x17s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"  # one int4 parameter
PARSE_UNNAMED = b"P\x00\x00\x00\x10\x00SELECT 1\x00\x00\x00"
PARSE_HIGH_OID = b"P\x00\x00\x00\x11\x00x\x00\x00\x02\xff\xff\xff\xff\x00\x00\x00\x00"
BIND_S1 = (
    b"B\x00\x00\x00\x24"
    b"\x00"  # unnamed portal
    b"s1\x00"
    b"\x00\x01\x00\x01"  # one parameter format: binary, for all parameters
    b"\x00\x03"  # three parameters
    b"\x00\x00\x00\x04\x00\x00\x00\x2a"  # int4 42
    b"\xff\xff\xff\xff"  # NULL
    b"\x00\x00\x00\x00"  # empty, not NULL
    b"\x00\x02\x00\x00\x00\x01"  # result formats: text, binary
)
BIND_MINIMAL = b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"
DESCRIBE_STATEMENT = b"D\x00\x00\x00\x08Ss1\x00"
DESCRIBE_PORTAL = b"D\x00\x00\x00\x06P\x00"
CLOSE_STATEMENT = b"C\x00\x00\x00\x08Ss1\x00"
CLOSE_PORTAL = b"C\x00\x00\x00\x08Pp1\x00"
EXECUTE_ALL = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"
EXECUTE_100 = b"E\x00\x00\x00\x0bp1\x00\x00\x00\x00\x64"
SYNC = b"S\x00\x00\x00\x04"
FLUSH = b"H\x00\x00\x00\x04"
QUERY = b"Q\x00\x00\x00\x0dSELECT 1\x00"

EXPECTED: list[tuple[bytes, FrontendMessage]] = [
    (PARSE_S1, Parse("s1", "SELECT $1", (23,))),
    (PARSE_UNNAMED, Parse("", "SELECT 1", ())),
    (PARSE_HIGH_OID, Parse("", "x", (0xFFFFFFFF, 0))),
    (BIND_S1, Bind("", "s1", (1,), (b"\x00\x00\x00\x2a", None, b""), (0, 1))),
    (BIND_MINIMAL, Bind("", "", (), (), ())),
    (DESCRIBE_STATEMENT, Describe(b"S", "s1")),
    (DESCRIBE_PORTAL, Describe(b"P", "")),
    (CLOSE_STATEMENT, Close(b"S", "s1")),
    (CLOSE_PORTAL, Close(b"P", "p1")),
    (EXECUTE_ALL, Execute("", 0)),
    (EXECUTE_100, Execute("p1", 100)),
    (SYNC, Sync()),
    (FLUSH, Flush()),
    (QUERY, Query("SELECT 1")),
]
IDS = [f"{wire[:1].decode()}-{index}" for index, (wire, _) in enumerate(EXPECTED)]


@pytest.mark.parametrize(("wire", "message"), EXPECTED, ids=IDS)
def test_each_message_decodes_to_its_fields(wire: bytes, message: FrontendMessage) -> None:
    assert decode(wire) == message


@pytest.mark.parametrize(("wire", "message"), EXPECTED, ids=IDS)
def test_each_message_encodes_to_the_documented_bytes(wire: bytes, message: FrontendMessage) -> None:
    assert message.encode() == wire


@pytest.mark.parametrize(("wire", "message"), EXPECTED, ids=IDS)
def test_each_type_decodes_its_own_payload(wire: bytes, message: FrontendMessage) -> None:
    assert not isinstance(message, RawMessage)
    assert type(message).decode(wire[5:]) == message


@pytest.mark.parametrize(("wire", "message"), EXPECTED, ids=IDS)
def test_every_truncation_of_a_message_is_a_protocol_violation(wire: bytes, message: FrontendMessage) -> None:
    payload = wire[5:]
    for cut in range(len(payload)):
        with pytest.raises(ProtocolViolation):
            decode_frontend(RawMessage(wire[:1], payload[:cut]))


@pytest.mark.parametrize(("wire", "message"), EXPECTED, ids=IDS)
@pytest.mark.parametrize("extra", [b"\x00", b"x", b"\x00\x00\x00\x00"])
def test_trailing_bytes_are_a_protocol_violation(wire: bytes, message: FrontendMessage, extra: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="trailing bytes"):
        decode_frontend(RawMessage(wire[:1], wire[5:] + extra))


def test_bind_carries_null_as_length_minus_one_and_empty_as_length_zero() -> None:
    null = Bind("", "", (), (None,), ()).encode()
    empty = Bind("", "", (), (b"",), ()).encode()
    assert null == b"B\x00\x00\x00\x10\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff\x00\x00"
    assert empty == b"B\x00\x00\x00\x10\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"


def test_bind_with_a_negative_length_other_than_null_is_a_protocol_violation() -> None:
    payload = b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"
    with pytest.raises(ProtocolViolation, match="negative length -2"):
        Bind.decode(payload)


def test_bind_parameter_longer_than_the_message_is_a_protocol_violation() -> None:
    payload = b"\x00\x00\x00\x00\x00\x01\x7f\xff\xff\xffabc"
    with pytest.raises(ProtocolViolation, match="truncated Bind parameter value"):
        Bind.decode(payload)


def test_parse_declaring_more_types_than_it_holds_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation, match="truncated Parse parameter types"):
        Parse.decode(b"\x00x\x00\xff\xff\x00\x00\x00\x17")


def test_format_codes_are_signed_int16_and_kept_as_sent() -> None:
    # The server rejects codes other than 0 and 1 with a proper error; the proxy relays them.
    wire = Bind("", "", (-1, 2), (b"a", b"b"), (-32768,)).encode()
    assert wire[7:13] == b"\x00\x02\xff\xff\x00\x02"
    assert decode_frontend(RawMessage(wire[:1], wire[5:])) == Bind("", "", (-1, 2), (b"a", b"b"), (-32768,))


@pytest.mark.parametrize("kind", [b"X", b"s", b""])
@pytest.mark.parametrize("message_type", [b"D", b"C"])
def test_describe_or_close_of_an_unknown_kind_is_a_protocol_violation(
    kind: bytes, message_type: bytes
) -> None:
    with pytest.raises(ProtocolViolation, match="neither a statement nor a portal"):
        decode_frontend(RawMessage(message_type, kind + b"s1\x00"))


def test_execute_row_limit_is_a_signed_int32() -> None:
    assert Execute.decode(b"\x00\xff\xff\xff\xff") == Execute("", -1)
    assert Execute("", 2**31 - 1).encode() == b"E\x00\x00\x00\x09\x00\x7f\xff\xff\xff"


@pytest.mark.parametrize(
    "message_type",
    [b"X", b"d", b"c", b"f", b"F", b"p"],
    ids=["Terminate", "CopyData", "CopyDone", "CopyFail", "FunctionCall", "Password"],
)
def test_other_frontend_types_stay_raw(message_type: bytes) -> None:
    message = RawMessage(message_type, b"\x01\x02")
    assert decode_frontend(message) is message


def test_text_in_a_client_encoding_other_than_utf8_round_trips_unchanged() -> None:
    # LATIN1 'é' is 0xE9, not valid UTF-8: the proxy must neither reject nor alter it.
    wire = b"P\x00\x00\x00\x16caf\xe9\x00SELECT '\xe9'\x00\x00\x00"
    message = decode(wire)
    assert isinstance(message, Parse)
    assert message.encode() == wire
    name, start, end = statement_field(wire)
    assert name == "caf\udce9"  # the byte kept as an escape
    assert with_name(wire, start, end, "RP_1") == b"P\x00\x00\x00\x16RP_1\x00SELECT '\xe9'\x00\x00\x00"


def test_backend_fixed_messages() -> None:
    assert PARSE_COMPLETE_MESSAGE == b"1\x00\x00\x00\x04"
    assert BIND_COMPLETE_MESSAGE == b"2\x00\x00\x00\x04"
    assert CLOSE_COMPLETE_MESSAGE == b"3\x00\x00\x00\x04"
    assert NO_DATA_MESSAGE == b"n\x00\x00\x00\x04"
    assert PORTAL_SUSPENDED_MESSAGE == b"s\x00\x00\x00\x04"
    assert EMPTY_QUERY_RESPONSE_MESSAGE == b"I\x00\x00\x00\x04"
    assert SYNC_MESSAGE == SYNC
    assert FLUSH_MESSAGE == FLUSH


# --- what we refuse to encode (local errors) ---------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        Parse("s\x00", "SELECT 1"),
        Parse("", "SELECT 1\x00"),
        Parse("", "x", (-1,)),
        Parse("", "x", (2**32,)),
        Parse("", "x", (0,) * 65536),
        Bind("", "", (2**15,), (), ()),
        Bind("", "", (), (None,) * 65536, ()),
        Bind("p\x00", "", (), (), ()),
        Describe(b"X", "s1"),
        Close(b"", "s1"),
        Execute("", 2**31),
        Query("SELECT '\x00'"),
        Query("\ud800"),  # a lone surrogate that is not an escaped byte
    ],
    ids=lambda message: repr(message)[:40],
)
def test_encoding_a_message_the_protocol_cannot_carry_is_a_local_error(message: FrontendMessage) -> None:
    with pytest.raises(LocalProtocolError):
        message.encode()


# --- properties ------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, database=None)

# Text without NUL that UTF-8 can encode (no lone surrogates).
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
queries = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=80)
oids = st.integers(0, 2**32 - 1)
format_codes = st.one_of(st.sampled_from([0, 1]), st.integers(-(2**15), 2**15 - 1))
parameter_values = st.one_of(st.none(), st.binary(max_size=40))
kinds = st.sampled_from([TARGET_STATEMENT, TARGET_PORTAL])

frontend_messages = st.one_of(
    st.builds(Parse, names, queries, st.lists(oids, max_size=8).map(tuple)),
    st.builds(
        Bind,
        names,
        names,
        st.lists(format_codes, max_size=5).map(tuple),
        st.lists(parameter_values, max_size=8).map(tuple),
        st.lists(format_codes, max_size=5).map(tuple),
    ),
    st.builds(Describe, kinds, names),
    st.builds(Close, kinds, names),
    st.builds(Execute, names, st.integers(-(2**31), 2**31 - 1)),
    st.just(Sync()),
    st.just(Flush()),
    st.builds(Query, queries),
)


@PROPERTY_SETTINGS
@given(message=frontend_messages)
def test_property_every_message_round_trips(message: FrontendMessage) -> None:
    wire = message.encode()
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 1
    decoded = decode_frontend(RawMessage(wire[:1], wire[5:]))
    assert decoded == message
    assert decoded.encode() == wire


@PROPERTY_SETTINGS
@given(
    statement=st.binary(max_size=12).filter(lambda b: b"\x00" not in b),
    query=st.binary(max_size=60).filter(lambda b: b"\x00" not in b),
    types=st.lists(oids, max_size=4),
)
def test_property_parse_reproduces_any_bytes_without_nul(
    statement: bytes, query: bytes, types: list[int]
) -> None:
    payload = statement + b"\x00" + query + b"\x00" + len(types).to_bytes(2, "big")
    payload += b"".join(oid.to_bytes(4, "big") for oid in types)
    message = Parse.decode(payload)
    assert message.parameter_types == tuple(types)
    assert message.encode() == b"P" + (len(payload) + 4).to_bytes(4, "big") + payload


@PROPERTY_SETTINGS
@given(message=frontend_messages, cut=st.integers(0, 10**6))
def test_property_a_truncated_message_never_decodes(message: FrontendMessage, cut: int) -> None:
    wire = message.encode()
    payload = wire[5:]
    if not payload:
        return
    with pytest.raises(ProtocolViolation):
        decode_frontend(RawMessage(wire[:1], payload[: cut % len(payload)]))


@PROPERTY_SETTINGS
@given(message_type=st.sampled_from(list(b"PBDCESHQ")), payload=st.binary(max_size=60))
def test_property_arbitrary_payloads_decode_or_raise_protocol_violation(
    message_type: int, payload: bytes
) -> None:
    kind = bytes([message_type])
    try:
        message = decode_frontend(RawMessage(kind, payload))
    except ProtocolViolation:
        return
    assert message.encode() == kind + (len(payload) + 4).to_bytes(4, "big") + payload


@PROPERTY_SETTINGS
@given(message=frontend_messages, name=names)
def test_property_splicing_a_name_changes_only_the_name(message: FrontendMessage, name: str) -> None:
    if not isinstance(message, Parse | Bind | Describe | Close):
        return
    wire = message.encode()
    _, start, end = statement_field(wire)
    renamed = decode(with_name(wire, start, end, name))
    assert renamed == renamed_message(message, name)


# --- renaming by splicing, as the transaction relay does on its hot path ----------------------


@pytest.mark.parametrize(
    ("wire", "name"),
    [
        (PARSE_S1, "s1"),
        (PARSE_UNNAMED, ""),
        (BIND_S1, "s1"),
        (BIND_MINIMAL, ""),
        (DESCRIBE_STATEMENT, "s1"),
        (DESCRIBE_PORTAL, ""),
        (CLOSE_STATEMENT, "s1"),
        (CLOSE_PORTAL, "p1"),
    ],
)
def test_splicing_a_name_equals_decoding_renaming_and_encoding(wire: bytes, name: str) -> None:
    found, start, end = statement_field(wire)
    assert found == name
    spliced = with_name(wire, start, end, "RP_123")
    message = decode(wire)
    assert isinstance(message, Parse | Bind | Describe | Close)
    assert spliced == renamed_message(message, "RP_123").encode()


def renamed_message(message: Parse | Bind | Describe | Close, name: str) -> Parse | Bind | Describe | Close:
    """What ``with_name`` must make of ``message``: its statement (a Bind's, not its portal's),
    or the statement or portal a Describe or Close names, called ``name``."""
    if isinstance(message, Parse | Bind):
        return replace(message, statement=name)
    return replace(message, name=name)


def test_the_query_of_a_parse_is_read_after_its_name() -> None:
    _, _, end = statement_field(PARSE_S1)
    assert parse_query(PARSE_S1, end) == "SELECT $1"


@pytest.mark.parametrize(
    "wire",
    [b"P\x00\x00\x00\x06s1", b"B\x00\x00\x00\x06p1", b"D\x00\x00\x00\x06Xs\x00", b"C\x00\x00\x00\x05S"],
)
def test_a_name_without_its_nul_or_kind_is_a_protocol_violation(wire: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        statement_field(wire)


# --- server-side names in the server's errors, given back in the client's words --------------


def error(message: str, detail: str | None = None) -> bytes:
    return ErrorResponse.build("ERROR", "26000", message, detail).encode()


def test_the_proxy_s_server_side_names_start_with_an_upper_case_prefix() -> None:
    # An unquoted SQL name folds to lower case: no client PREPAREs one of these by accident.
    assert SERVER_STATEMENT_PREFIX == "RP_"


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        ('prepared statement "RP_7" does not exist', 'prepared statement "s1" does not exist'),
        (
            'bind message supplies 0 parameters, but prepared statement "RP_7" requires 1',
            'bind message supplies 0 parameters, but prepared statement "s1" requires 1',
        ),
        (
            'prepared statement "RP_12" already exists',
            'prepared statement "a much longer name" already exists',
        ),
        ('"RP_7" and "RP_12", "RP_7"', '"s1" and "a much longer name", "s1"'),
    ],
)
def test_an_error_naming_server_side_statements_names_the_client_s(sent: str, received: str) -> None:
    renames = {b"RP_7": b"s1", b"RP_12": b"a much longer name"}
    assert rename_statements(error(sent), renames) == error(received)  # the length follows


def test_every_field_of_an_error_is_renamed() -> None:
    sent = error('prepared statement "RP_7" does not exist', detail='"RP_7" was closed')
    assert rename_statements(sent, {b"RP_7": b"s1"}) == error(
        'prepared statement "s1" does not exist', detail='"s1" was closed'
    )


def test_an_error_naming_no_known_server_side_statement_is_returned_itself() -> None:
    renames = {b"RP_7": b"s1"}
    for message in (
        error('relation "t" does not exist'),
        error('prepared statement "RP_8" does not exist'),  # nobody's the plan knows of
        error('prepared statement "rp_7" does not exist'),  # a client's own, folded to lower case
    ):
        assert rename_statements(message, renames) is message


@pytest.mark.parametrize("text", ['"RP_71"', '"xRP_7"', '"_RP_7"', '"$RP_7"', '"RP_7x"', '"RP_7_"'])
def test_only_a_whole_server_side_name_is_renamed(text: str) -> None:
    # A client may name its own objects in words that contain one (quoted, in upper case).
    message = error(f"relation {text} does not exist")
    assert rename_statements(message, {b"RP_7": b"s1"}) == message


def test_a_client_s_name_is_put_back_byte_for_byte() -> None:
    # Not UTF-8 (a LATIN1 client), or looking like a regular-expression group reference.
    renames = {b"RP_7": b"caf\xe9", b"RP_8": b"\\1\\g<0>"}
    sent = frame(b"E", b'Mprepared statement "RP_7", "RP_8"\x00\x00')
    assert rename_statements(sent, renames) == frame(
        b"E", b'Mprepared statement "caf\xe9", "\\1\\g<0>"\x00\x00'
    )
