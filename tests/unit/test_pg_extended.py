"""Extended-query messages: byte-exact encodings, strict decodings, statement renaming.

Expected bytes are written out by hand from the protocol documentation ("Message Formats"),
so a test fails if an encoder and its decoder drift together.
"""

from __future__ import annotations

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
    StatementNamer,
    Sync,
    decode_frontend,
    parse_query,
    statement_field,
    with_name,
    with_statement_name,
)
from protocols.postgres.messages import RawMessage


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
    assert (
        with_statement_name(message, "rp_1").encode() == b"P\x00\x00\x00\x16rp_1\x00SELECT '\xe9'\x00\x00\x00"
    )


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


# --- renaming --------------------------------------------------------------------------------


def test_with_statement_name_renames_parse_and_bind_statements_but_not_portals() -> None:
    parse = with_statement_name(Parse("s1", "SELECT $1", (23,)), "rp_2735c99f38dbc542")
    assert parse.encode() == (
        b"P\x00\x00\x00\x28rp_2735c99f38dbc542\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"
    )
    bind = with_statement_name(Bind("p1", "s1", (), (b"42",), ()), "rp_x")
    assert bind == Bind("p1", "rp_x", (), (b"42",), ())


def test_with_statement_name_renames_describe_and_close_of_a_statement_only() -> None:
    assert with_statement_name(Describe(TARGET_STATEMENT, "s1"), "rp_x") == Describe(b"S", "rp_x")
    assert with_statement_name(Close(TARGET_STATEMENT, "s1"), "rp_x") == Close(b"S", "rp_x")
    portal_describe = Describe(TARGET_PORTAL, "p1")
    portal_close = Close(TARGET_PORTAL, "p1")
    assert with_statement_name(portal_describe, "rp_x") is portal_describe
    assert with_statement_name(portal_close, "rp_x") is portal_close


def test_server_name_is_rp_and_16_hex_digits_of_sha256_of_query_and_types() -> None:
    # sha256(b"SELECT $1\x0023"), sha256(b"SELECT 1\x00"), sha256(b"SELECT $1, $2\x0023,25")
    assert StatementNamer.server_name("SELECT $1", (23,)) == "rp_2735c99f38dbc542"
    assert StatementNamer.server_name("SELECT 1", ()) == "rp_85f1ac9983155ca0"
    assert StatementNamer.server_name("SELECT $1, $2", (23, 25)) == "rp_2f16420d93a0cf33"


def test_server_name_differs_by_query_text_and_by_parameter_types() -> None:
    names = {
        StatementNamer.server_name("SELECT $1", (23,)),
        StatementNamer.server_name("SELECT $1", (25,)),
        StatementNamer.server_name("SELECT $1", ()),
        StatementNamer.server_name("select $1", (23,)),
        StatementNamer.server_name("SELECT $1", (2, 3)),
    }
    assert len(names) == 5


def test_two_clients_preparing_the_same_sql_share_one_server_name() -> None:
    alice, bob = StatementNamer(), StatementNamer()
    assert alice.prepare("a1", "SELECT $1", (23,)) == bob.prepare("stmt_7", "SELECT $1", (23,))
    assert alice.lookup("a1") == bob.lookup("stmt_7") == "rp_2735c99f38dbc542"
    assert alice.lookup("stmt_7") is None
    assert "a1" in alice and "stmt_7" not in alice


def test_namer_forgets_closed_statements_and_replaces_reused_names() -> None:
    namer = StatementNamer()
    namer.prepare("s", "SELECT 1", ())
    namer.prepare("t", "SELECT 2", ())
    assert len(namer) == 2
    namer.forget("s")
    namer.forget("never-prepared")
    assert namer.lookup("s") is None
    namer.prepare("t", "SELECT $1", (23,))
    assert namer.lookup("t") == "rp_2735c99f38dbc542"
    namer.clear()
    assert len(namer) == 0


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
def test_property_renaming_changes_only_the_statement_name(message: FrontendMessage, name: str) -> None:
    if not isinstance(message, Parse | Bind | Describe | Close):
        return
    renamed = with_statement_name(message, name)
    if isinstance(message, Parse):
        assert renamed == Parse(name, message.query, message.parameter_types)
    elif isinstance(message, Bind):
        assert renamed == Bind(
            message.portal, name, message.parameter_formats, message.parameters, message.result_formats
        )
    elif message.kind == TARGET_STATEMENT:
        assert renamed == type(message)(message.kind, name)
    else:
        assert renamed is message


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
    spliced = with_name(wire, start, end, "rp_0123456789abcdef")
    message = decode(wire)
    assert isinstance(message, Parse | Bind | Describe | Close)
    if isinstance(message, Parse | Bind) or message.kind == b"S":
        assert spliced == with_statement_name(message, "rp_0123456789abcdef").encode()
    else:  # a portal's name: the same splice renames it, the rest unchanged
        assert decode(spliced) == type(message)(message.kind, "rp_0123456789abcdef")


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
