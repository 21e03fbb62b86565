"""The server side of client authentication and client TLS negotiation, byte by byte:
SCRAM-SHA-256 against scramp's client, caching_sha2_password and mysql_native_password
against PyMySQL's scramble functions (an independent reference) and the project's own
client side, and the TLS negotiation states of both engines."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest
import scramp
from pymysql import _auth as pymysql_auth

from protocols.errors import ProtocolViolation
from protocols.mysql import constants as c
from protocols.mysql.auth import caching_sha2_scramble, native_password_scramble
from protocols.mysql.client_tls import MySqlTlsNegotiation
from protocols.mysql.messages import AuthSwitchRequest, SslRequest
from protocols.mysql.server_auth import (
    ER_SECURE_TRANSPORT_REQUIRED,
    FAST_AUTH_SUCCESS,
    PERFORM_FULL_AUTHENTICATION,
    MySqlLogin,
    MySqlVerifier,
    caching_sha2_matches,
    native_password_matches,
)
from protocols.mysql.server_auth import (
    LoginRefused as MySqlLoginRefused,
)
from protocols.postgres.client_tls import TlsNegotiation, is_direct_tls
from protocols.postgres.messages import RawMessage, sasl_initial_response
from protocols.postgres.server_auth import LoginRefused, ScramLogin, ScramVerifier

PASSWORD = "pw-correct-horse-battery"
NONCE = bytes(range(1, 21))


def payload(message: bytes) -> RawMessage:
    """A frontend message as the reader hands it over."""
    (length,) = struct.unpack_from("!i", message, 1)
    return RawMessage(message[:1], message[5 : 1 + length])


def backend(message: bytes) -> tuple[int, bytes]:
    """An AuthenticationRequest: (code, data)."""
    assert message[:1] == b"R"
    (length, code) = struct.unpack_from("!ii", message, 1)
    assert len(message) == 1 + length
    return code, message[9:]


# --- PostgreSQL SCRAM-SHA-256 -----------------------------------------------------------------


def libpq_client_final(password: str, client_first_bare: str, server_first: str, gs2: str) -> str:
    """The client's final message computed as RFC 5802 says (libpq's form: empty user name,
    which scramp's client will not write)."""
    attributes = dict(part.split("=", 1) for part in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(attributes["s"]), int(attributes["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c={base64.b64encode(gs2.encode()).decode()},r={attributes['r']}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}"


def scram_login(password: str, user: str = "alice", gs2: str = "n,,") -> tuple[ScramLogin, bytes]:
    """Run the exchange as libpq does (an empty SCRAM user name: the startup packet named the
    user); the server's last answer, or LoginRefused."""
    login = ScramLogin(user, ScramVerifier.from_password(PASSWORD))
    assert login.start() == b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"  # no MD5, no -PLUS
    bare = "n=,r=fyko+d2lbbFgONRv9qkxdawL"
    server_first = login.receive(payload(sasl_initial_response("SCRAM-SHA-256", (gs2 + bare).encode())))
    code, data = backend(server_first)
    assert code == 11  # SASLContinue
    assert data.startswith(b"r=fyko+d2lbbFgONRv9qkxdawL") and b",i=4096" in data
    final = libpq_client_final(password, bare, data.decode(), gs2)
    return login, login.receive(RawMessage(b"p", final.encode()))


def test_scram_with_scramps_client_proves_both_sides() -> None:
    login = ScramLogin("alice", ScramVerifier.from_password(PASSWORD))
    login.start()
    client = scramp.ScramClient(["SCRAM-SHA-256"], "any-name-is-ignored", PASSWORD)
    first = login.receive(payload(sasl_initial_response("SCRAM-SHA-256", client.get_client_first().encode())))
    client.set_server_first(backend(first)[1].decode())
    final = login.receive(RawMessage(b"p", client.get_client_final().encode()))
    client.set_server_final(backend(final)[1].decode())  # raises unless the server signature is right
    assert login.done


def test_scram_accepts_the_password_and_proves_the_server() -> None:
    login, answer = scram_login(PASSWORD)

    assert login.done
    assert backend(answer)[0] == 12  # SASLFinal: AuthenticationOk is the session's to send


def test_scram_accepts_the_y_flag_of_a_client_that_could_bind_channels() -> None:
    login, _ = scram_login(PASSWORD, gs2="y,,")
    assert login.done


def test_scram_refuses_a_wrong_password_with_28p01_naming_the_user_only() -> None:
    with pytest.raises(LoginRefused) as refused:
        scram_login("wrong-password")

    assert refused.value.code == "28P01"
    assert str(refused.value) == 'password authentication failed for user "alice"'


def test_an_unknown_user_runs_the_exchange_and_is_refused_alike() -> None:
    login = ScramLogin("mallory", None)
    login.start()
    client = scramp.ScramClient(["SCRAM-SHA-256"], "x", PASSWORD)
    first = login.receive(payload(sasl_initial_response("SCRAM-SHA-256", client.get_client_first().encode())))
    client.set_server_first(backend(first)[1].decode())  # a salt and iteration count, as for anyone

    with pytest.raises(LoginRefused) as refused:
        login.receive(RawMessage(b"p", client.get_client_final().encode()))
    assert str(refused.value) == 'password authentication failed for user "mallory"'


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(
            sasl_initial_response("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"), id="plus"
        ),
        pytest.param(sasl_initial_response("SCRAM-SHA-256", b"n,a=admin,n=,r=abc"), id="authzid"),
        pytest.param(sasl_initial_response("SCRAM-SHA-256", b"garbage"), id="garbage"),
    ],
)
def test_scram_refuses_what_it_never_offered(first: bytes) -> None:
    login = ScramLogin("alice", ScramVerifier.from_password(PASSWORD))
    login.start()
    with pytest.raises(LoginRefused):
        login.receive(payload(first))


def test_scram_framing_violations() -> None:
    login = ScramLogin("alice", ScramVerifier.from_password(PASSWORD))
    login.start()
    with pytest.raises(ProtocolViolation):
        login.receive(RawMessage(b"Q", b"SELECT 1\x00"))
    with pytest.raises(ProtocolViolation):
        login.receive(RawMessage(b"p", b"SCRAM-SHA-256\x00\x00\x00\x00\x09n,,"))  # length lies


def test_a_verifier_round_trips_in_postgres_format_and_checks_a_cleartext_password() -> None:
    verifier = ScramVerifier.from_password(PASSWORD, salt=b"0123456789abcdef")
    text = verifier.encode()

    assert text.startswith("SCRAM-SHA-256$4096:" + base64.b64encode(b"0123456789abcdef").decode() + "$")
    assert ScramVerifier.parse(text) == verifier
    assert verifier.matches_password(PASSWORD.encode()) and not verifier.matches_password(b"nope")
    with pytest.raises(ValueError, match="malformed") as bad:
        ScramVerifier.parse("SCRAM-SHA-256$4096:c2FsdA==$bm90:a2V5")
    assert "c2FsdA" not in str(bad.value)  # errors never repeat the value
    assert PASSWORD not in repr(verifier) and base64.b64encode(verifier.stored_key).decode() not in repr(
        verifier
    )


# --- PostgreSQL TLS negotiation ----------------------------------------------------------------


def test_ssl_request_is_answered_s_where_tls_is_offered_and_n_elsewhere() -> None:
    offered = TlsNegotiation(offered=True, required=False)
    assert offered.answer_ssl_request() == b"S"
    offered.handshake_done(None)  # libpq over SSLRequest sends ALPN since 17; older ones none
    assert offered.encrypted
    with pytest.raises(ProtocolViolation):
        offered.answer_ssl_request()  # a second SSLRequest inside TLS

    plain = TlsNegotiation(offered=False, required=False)
    assert plain.answer_ssl_request() == b"N"
    plain.startup()  # a plaintext startup is fine where TLS is not required


def test_direct_tls_is_recognised_by_its_first_byte_and_needs_alpn_postgresql() -> None:
    assert is_direct_tls(0x16) and not is_direct_tls(0x00)  # a startup packet opens with a length

    negotiation = TlsNegotiation(offered=True, required=True)
    negotiation.direct_tls()
    with pytest.raises(ProtocolViolation, match="ALPN"):
        negotiation.handshake_done(None)
    negotiation.handshake_done("postgresql")
    negotiation.startup()

    with pytest.raises(ProtocolViolation):
        TlsNegotiation(offered=False, required=False).direct_tls()


def test_a_plaintext_startup_is_refused_where_tls_is_required() -> None:
    negotiation = TlsNegotiation(offered=True, required=True)
    with pytest.raises(LoginRefused) as refused:
        negotiation.startup()
    assert refused.value.code == "28000" and "requires TLS" in str(refused.value)


# --- MySQL password plugins ----------------------------------------------------------------------


def test_native_password_checks_scrambles_from_two_implementations() -> None:
    stage2 = MySqlVerifier.from_password(PASSWORD).native_stage2
    assert stage2 is not None

    assert native_password_matches(
        stage2, NONCE, pymysql_auth.scramble_native_password(PASSWORD.encode(), NONCE)
    )
    assert native_password_matches(stage2, NONCE, native_password_scramble(PASSWORD, NONCE))
    assert not native_password_matches(stage2, NONCE, native_password_scramble("other", NONCE))
    assert not native_password_matches(stage2, NONCE, b"short")


def test_caching_sha2_fast_path_checks_scrambles_from_two_implementations() -> None:
    stage2 = MySqlVerifier.from_password(PASSWORD).sha2_stage2
    assert stage2 is not None

    assert caching_sha2_matches(stage2, NONCE, pymysql_auth.scramble_caching_sha2(PASSWORD.encode(), NONCE))
    assert caching_sha2_matches(stage2, NONCE, caching_sha2_scramble(PASSWORD, NONCE))
    assert not caching_sha2_matches(stage2, NONCE, caching_sha2_scramble("other", NONCE))


def mysql_login(
    verifier: MySqlVerifier | None, *, plugin: str = c.CACHING_SHA2_PASSWORD, secure: bool = False
) -> MySqlLogin:
    return MySqlLogin("alice", "10.0.0.7", verifier, NONCE, plugin=plugin, secure=secure)


def test_caching_sha2_fast_path_answers_0x01_0x03_then_ok() -> None:
    login = mysql_login(MySqlVerifier.from_password(PASSWORD))

    assert login.start(c.CACHING_SHA2_PASSWORD, caching_sha2_scramble(PASSWORD, NONCE)) == b"\x01\x03"
    assert FAST_AUTH_SUCCESS == b"\x01\x03" and login.done


def test_native_password_answers_nothing_before_ok() -> None:
    login = mysql_login(MySqlVerifier.from_password(PASSWORD), plugin=c.MYSQL_NATIVE_PASSWORD)

    assert login.start(c.MYSQL_NATIVE_PASSWORD, native_password_scramble(PASSWORD, NONCE)) is None
    assert login.done


def test_a_client_without_plugin_auth_speaks_native_password() -> None:
    login = mysql_login(MySqlVerifier.from_password(PASSWORD))
    assert login.start(None, native_password_scramble(PASSWORD, NONCE)) is None and login.done


@pytest.mark.parametrize("plugin", [c.CACHING_SHA2_PASSWORD, c.MYSQL_NATIVE_PASSWORD])
def test_a_wrong_password_gets_1045_naming_the_user_and_host_only(plugin: str) -> None:
    login = mysql_login(MySqlVerifier.from_password(PASSWORD))
    scramble = (caching_sha2_scramble if plugin == c.CACHING_SHA2_PASSWORD else native_password_scramble)(
        "wrong-password", NONCE
    )
    with pytest.raises(MySqlLoginRefused) as refused:
        login.start(plugin, scramble)

    error = refused.value.error
    assert (error.code, error.sql_state) == (1045, "28000")
    assert error.message == "Access denied for user 'alice'@'10.0.0.7' (using password: YES)"
    assert error.encode() == b"\xff\x15\x04#28000" + error.message.encode()


def test_an_unknown_user_and_an_empty_password_are_refused_alike() -> None:
    with pytest.raises(MySqlLoginRefused) as unknown:
        mysql_login(None).start(c.CACHING_SHA2_PASSWORD, caching_sha2_scramble(PASSWORD, NONCE))
    with pytest.raises(MySqlLoginRefused) as empty:
        mysql_login(MySqlVerifier.from_password(PASSWORD)).start(c.CACHING_SHA2_PASSWORD, b"")
    assert unknown.value.error.code == empty.value.error.code == 1045
    assert "(using password: NO)" in empty.value.error.message


def test_another_plugin_is_switched_to_ours_with_the_same_nonce() -> None:
    login = mysql_login(MySqlVerifier.from_password(PASSWORD), plugin=c.MYSQL_NATIVE_PASSWORD)

    switch = login.start("client_ed25519", b"\x00" * 64)
    assert switch == AuthSwitchRequest(c.MYSQL_NATIVE_PASSWORD, NONCE).encode()
    assert switch == b"\xfemysql_native_password\x00" + NONCE + b"\x00"
    assert login.receive(native_password_scramble(PASSWORD, NONCE)) is None and login.done


def test_a_user_known_by_verifier_gets_full_authentication_over_tls_only() -> None:
    verifier = MySqlVerifier(scram=ScramVerifier.from_password(PASSWORD))

    login = mysql_login(verifier, secure=True)
    assert login.start(c.CACHING_SHA2_PASSWORD, caching_sha2_scramble(PASSWORD, NONCE)) == b"\x01\x04"
    assert PERFORM_FULL_AUTHENTICATION == b"\x01\x04"
    assert login.receive(PASSWORD.encode() + b"\x00") is None and login.done

    wrong = mysql_login(verifier, secure=True)
    wrong.start(c.CACHING_SHA2_PASSWORD, caching_sha2_scramble(PASSWORD, NONCE))
    with pytest.raises(MySqlLoginRefused):
        wrong.receive(b"wrong-password\x00")

    plaintext = mysql_login(verifier, secure=False)
    with pytest.raises(MySqlLoginRefused) as refused:
        plaintext.start(c.CACHING_SHA2_PASSWORD, caching_sha2_scramble(PASSWORD, NONCE))
    assert refused.value.error.code == ER_SECURE_TRANSPORT_REQUIRED
    assert "over TLS only" in refused.value.error.message


def test_native_password_for_a_verifier_only_user_switches_to_caching_sha2() -> None:
    login = mysql_login(MySqlVerifier(scram=ScramVerifier.from_password(PASSWORD)), secure=True)

    switch = login.start(c.MYSQL_NATIVE_PASSWORD, native_password_scramble(PASSWORD, NONCE))
    assert switch == AuthSwitchRequest(c.CACHING_SHA2_PASSWORD, NONCE).encode()
    assert login.receive(caching_sha2_scramble(PASSWORD, NONCE)) == PERFORM_FULL_AUTHENTICATION
    assert login.receive(PASSWORD.encode() + b"\x00") is None and login.done


def test_a_request_for_the_rsa_key_is_refused_clearly() -> None:
    login = mysql_login(MySqlVerifier(scram=ScramVerifier.from_password(PASSWORD)), secure=True)
    login.start(c.CACHING_SHA2_PASSWORD, caching_sha2_scramble(PASSWORD, NONCE))
    with pytest.raises(MySqlLoginRefused) as refused:
        login.receive(b"\x02")
    assert "RSA" in refused.value.error.message


def test_verifiers_and_logins_never_show_secrets_in_reprs() -> None:
    verifier = MySqlVerifier.from_password(PASSWORD)
    login = mysql_login(verifier)
    assert verifier.sha2_stage2 is not None and verifier.native_stage2 is not None
    for text in (
        repr(verifier),
        repr(login),
        repr(ScramLogin("alice", ScramVerifier.from_password(PASSWORD))),
    ):
        assert (
            PASSWORD not in text
            and str(verifier.sha2_stage2) not in text
            and str(verifier.native_stage2) not in text
        )


# --- MySQL TLS negotiation ------------------------------------------------------------------------


def test_client_ssl_is_offered_exactly_where_tls_is() -> None:
    capabilities = c.CLIENT_PROTOCOL_41 | c.CLIENT_SSL
    assert (
        MySqlTlsNegotiation(offered=True, required=False).greeting_capabilities(c.CLIENT_PROTOCOL_41)
        == capabilities
    )
    assert (
        MySqlTlsNegotiation(offered=False, required=False).greeting_capabilities(capabilities)
        == c.CLIENT_PROTOCOL_41
    )


def test_an_ssl_request_starts_tls_and_the_response_follows_with_sequence_2() -> None:
    negotiation = MySqlTlsNegotiation(offered=True, required=True)
    request = SslRequest(c.CLIENT_PROTOCOL_41 | c.CLIENT_PLUGIN_AUTH).encode()

    assert negotiation.response_sequence_id == 1
    assert negotiation.first_packet(request)
    negotiation.handshake_done()
    assert negotiation.encrypted and negotiation.response_sequence_id == 2
    negotiation.login()
    with pytest.raises(ProtocolViolation):
        negotiation.first_packet(request)  # (only ever first)


def test_a_plaintext_login_is_refused_where_tls_is_required_and_tls_where_none_is_offered() -> None:
    required = MySqlTlsNegotiation(offered=True, required=True)
    assert not required.first_packet(b"\x00" * 40)  # a handshake response, not an SSLRequest
    with pytest.raises(MySqlLoginRefused) as refused:
        required.login()
    assert refused.value.error.code == 3159

    with pytest.raises(MySqlLoginRefused) as no_tls:
        MySqlTlsNegotiation(offered=False, required=False).first_packet(
            SslRequest(c.CLIENT_PROTOCOL_41).encode()
        )
    assert (
        no_tls.value.error.code == c.ER_HANDSHAKE_ERROR and "ssl-mode=DISABLED" in no_tls.value.error.message
    )
