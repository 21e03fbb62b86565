"""MySQL upstream authentication: scrambles against PyMySQL's, and whole exchanges as byte scripts."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from pymysql import _auth as pymysql_auth

from protocols.errors import ProtocolViolation
from protocols.events import NEED_DATA
from protocols.mysql.auth import (
    AuthenticationFailed,
    UpstreamAuthenticator,
    UpstreamAuthError,
    caching_sha2_scramble,
    native_password_scramble,
    rsa_encrypt_password,
    xor_password_with_nonce,
)
from protocols.mysql.constants import (
    CACHING_SHA2_PASSWORD,
    ER_ACCESS_DENIED_ERROR,
    MYSQL_CLEAR_PASSWORD,
    MYSQL_NATIVE_PASSWORD,
)
from protocols.mysql.messages import ErrPacket
from protocols.mysql.packets import Packet, PacketReader, frame

NONCE = b"abcdefghijklmnopqrst"  # 20 bytes, as MySQL and MariaDB send
MARIADB_NONCE = b"@xZ:Qh:(W`\\+a*Hnob|i"
PASSWORD = "s3cr\u00e9t-pw"  # non-ASCII on purpose: the wire form is UTF-8
OK_PAYLOAD = b"\x00\x00\x00\x02\x00\x00\x00"
FAST_AUTH_SUCCESS = b"\x01\x03"
PERFORM_FULL_AUTHENTICATION = b"\x01\x04"
ACCESS_DENIED = b"\xff\x15\x04#28000Access denied for user 'app'@'localhost' (using password: YES)"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def decrypt(key: rsa.RSAPrivateKey, ciphertext: bytes) -> bytes:
    return key.decrypt(
        ciphertext,
        padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )


class Server:
    """The server side of a login, as wire bytes: sends packets, reads the client's answers."""

    def __init__(self) -> None:
        self.sequence_id = 2  # greeting 0, handshake response 1
        self.reader = PacketReader()

    def send(self, payload: bytes) -> bytes:
        wire, self.sequence_id = frame(payload, self.sequence_id)
        return wire

    def receive(self, wire: bytes) -> bytes:
        self.reader.receive_data(wire)
        packet = self.reader.next_event()
        assert isinstance(packet, Packet)
        assert packet.sequence_id == self.sequence_id, "client answered with the wrong sequence id"
        self.sequence_id = (packet.last_sequence_id + 1) % 256
        return packet.payload


class Client:
    """The proxy's side: reads server packets, answers through the authenticator."""

    def __init__(self, authenticator: UpstreamAuthenticator) -> None:
        self.authenticator = authenticator
        self.reader = PacketReader()

    def receive(self, wire: bytes) -> bytes | None:
        self.reader.receive_data(wire)
        packet = self.reader.next_event()
        assert packet is not NEED_DATA and isinstance(packet, Packet)
        answer = self.authenticator.respond(packet.payload)
        if answer is None:
            return None
        return frame(answer, (packet.last_sequence_id + 1) % 256)[0]


# --- scrambles against PyMySQL's reference implementation ------------------------------------


@given(st.text(min_size=1, max_size=40), st.binary(min_size=20, max_size=20))
@settings(max_examples=100)
def test_native_password_scramble_equals_pymysql(password: str, nonce: bytes) -> None:
    expected = pymysql_auth.scramble_native_password(password.encode(), nonce)
    assert native_password_scramble(password, nonce) == expected


@given(st.text(min_size=1, max_size=40), st.binary(min_size=20, max_size=20))
@settings(max_examples=100)
def test_caching_sha2_scramble_equals_pymysql(password: str, nonce: bytes) -> None:
    expected = pymysql_auth.scramble_caching_sha2(password.encode(), nonce)
    assert caching_sha2_scramble(password, nonce) == expected


@given(st.text(max_size=60), st.binary(min_size=20, max_size=20))
@settings(max_examples=100)
def test_xor_password_with_nonce_equals_pymysql(password: str, nonce: bytes) -> None:
    expected = pymysql_auth._xor_password(password.encode() + b"\x00", nonce)
    assert xor_password_with_nonce(password, nonce) == expected


def test_scrambles_of_an_empty_password_are_empty() -> None:
    assert native_password_scramble("", NONCE) == b""
    assert caching_sha2_scramble("", NONCE) == b""


def test_scrambles_ignore_the_nul_a_server_appends_to_the_nonce() -> None:
    assert native_password_scramble(PASSWORD, NONCE + b"\x00") == native_password_scramble(PASSWORD, NONCE)
    assert caching_sha2_scramble(PASSWORD, NONCE + b"\x00") == caching_sha2_scramble(PASSWORD, NONCE)


def test_scrambles_agree_with_what_real_clients_sent() -> None:
    # From the real handshake responses in test_mysql_messages (password "secret").
    native = b"V[\x072\xa9\xce\\\x14Hf_\x14\x06\xec\xff\x03\xf4\x06\x9ew"
    sha2 = b"\xc7n(\x98a*L\xf0B\xc7\x7f\xa8\xc4p,Ld\xc0\xc2\xc5W\xc5<MuYZ\xaaj\xba\xe8\t"
    assert native_password_scramble("secret", MARIADB_NONCE) == native
    assert caching_sha2_scramble("secret", NONCE) == sha2


def test_rsa_encrypted_password_decrypts_to_the_password_xor_nonce(rsa_key: rsa.RSAPrivateKey) -> None:
    ciphertext = rsa_encrypt_password(PASSWORD, NONCE, public_pem(rsa_key))
    assert len(ciphertext) == 256
    plaintext = decrypt(rsa_key, ciphertext)
    assert plaintext == xor_password_with_nonce(PASSWORD, NONCE)
    unmasked = bytes(byte ^ NONCE[index % len(NONCE)] for index, byte in enumerate(plaintext))
    assert unmasked == PASSWORD.encode() + b"\x00"


def test_rsa_encryption_refuses_a_key_that_is_not_rsa() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = ec_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(AuthenticationFailed, match="not an RSA key"):
        rsa_encrypt_password(PASSWORD, NONCE, pem)
    with pytest.raises(AuthenticationFailed, match="invalid RSA public key"):
        rsa_encrypt_password(PASSWORD, NONCE, b"-----BEGIN PUBLIC KEY-----\ngarbage\n")


# --- first response -----------------------------------------------------------------------


def test_first_response_answers_the_greeting_plugin() -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=False)
    assert authenticator.first_response(MYSQL_NATIVE_PASSWORD, NONCE) == (
        MYSQL_NATIVE_PASSWORD,
        native_password_scramble(PASSWORD, NONCE),
    )
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=False)
    assert authenticator.first_response(CACHING_SHA2_PASSWORD, NONCE) == (
        CACHING_SHA2_PASSWORD,
        caching_sha2_scramble(PASSWORD, NONCE),
    )


def test_unknown_greeting_plugin_is_answered_with_native_password_data() -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=False)
    plugin, data = authenticator.first_response("client_ed25519", NONCE)
    assert (plugin, data) == (MYSQL_NATIVE_PASSWORD, native_password_scramble(PASSWORD, NONCE))


def test_mysql_clear_password_is_refused_without_secure_transport() -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=False)
    with pytest.raises(AuthenticationFailed, match="refusing to send a cleartext password without TLS"):
        authenticator.first_response(MYSQL_CLEAR_PASSWORD, NONCE)


def test_mysql_clear_password_over_tls_sends_the_nul_terminated_password() -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=True)
    assert authenticator.first_response(MYSQL_CLEAR_PASSWORD, b"") == (
        MYSQL_CLEAR_PASSWORD,
        PASSWORD.encode() + b"\x00",
    )


# --- whole exchanges, scripted from the server side -----------------------------------------


def test_caching_sha2_fast_path() -> None:
    server, client = Server(), Client(UpstreamAuthenticator("app", PASSWORD, secure_transport=False))
    client.authenticator.first_response(CACHING_SHA2_PASSWORD, NONCE)
    assert client.receive(server.send(FAST_AUTH_SUCCESS)) is None
    assert not client.authenticator.done
    assert client.receive(server.send(OK_PAYLOAD)) is None
    assert client.authenticator.done


def test_caching_sha2_full_authentication_over_tls_sends_the_password() -> None:
    server, client = Server(), Client(UpstreamAuthenticator("app", PASSWORD, secure_transport=True))
    client.authenticator.first_response(CACHING_SHA2_PASSWORD, NONCE)
    answer = client.receive(server.send(PERFORM_FULL_AUTHENTICATION))
    assert answer == b"\x0b\x00\x00\x03" + PASSWORD.encode() + b"\x00"
    assert server.receive(answer) == PASSWORD.encode() + b"\x00"
    assert client.receive(server.send(OK_PAYLOAD)) is None
    assert client.authenticator.done


def test_caching_sha2_full_authentication_without_tls_uses_the_servers_rsa_key(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    server, client = Server(), Client(UpstreamAuthenticator("app", PASSWORD, secure_transport=False))
    client.authenticator.first_response(CACHING_SHA2_PASSWORD, NONCE)
    answer = client.receive(server.send(PERFORM_FULL_AUTHENTICATION))
    assert answer == b"\x01\x00\x00\x03\x02"  # request the public key
    assert server.receive(answer) == b"\x02"
    answer = client.receive(server.send(b"\x01" + public_pem(rsa_key)))
    assert answer is not None
    assert decrypt(rsa_key, server.receive(answer)) == xor_password_with_nonce(PASSWORD, NONCE)
    assert client.receive(server.send(OK_PAYLOAD)) is None
    assert client.authenticator.done


def test_caching_sha2_full_authentication_with_a_pinned_key_does_not_ask_for_one(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    authenticator = UpstreamAuthenticator(
        "app", PASSWORD, secure_transport=False, server_public_key=public_pem(rsa_key)
    )
    authenticator.first_response(CACHING_SHA2_PASSWORD, NONCE)
    ciphertext = authenticator.respond(PERFORM_FULL_AUTHENTICATION)
    assert ciphertext is not None
    assert decrypt(rsa_key, ciphertext) == xor_password_with_nonce(PASSWORD, NONCE)


def test_switch_from_caching_sha2_to_native_password_uses_the_new_nonce() -> None:
    # What MariaDB answers a client that offered caching_sha2_password.
    server, client = Server(), Client(UpstreamAuthenticator("app", PASSWORD, secure_transport=False))
    client.authenticator.first_response(CACHING_SHA2_PASSWORD, NONCE)
    answer = client.receive(server.send(b"\xfemysql_native_password\x00" + MARIADB_NONCE + b"\x00"))
    assert answer is not None
    assert server.receive(answer) == native_password_scramble(PASSWORD, MARIADB_NONCE)
    assert client.authenticator.plugin == MYSQL_NATIVE_PASSWORD
    assert client.receive(server.send(OK_PAYLOAD)) is None
    assert client.authenticator.done


def test_switch_to_caching_sha2_then_fast_path() -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=False)
    authenticator.first_response(MYSQL_NATIVE_PASSWORD, MARIADB_NONCE)
    answer = authenticator.respond(b"\xfecaching_sha2_password\x00" + NONCE + b"\x00")
    assert answer == caching_sha2_scramble(PASSWORD, NONCE)
    assert authenticator.respond(FAST_AUTH_SUCCESS) is None
    assert authenticator.respond(OK_PAYLOAD) is None
    assert authenticator.done


def test_switch_to_mysql_clear_password_is_refused_without_tls() -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=False)
    authenticator.first_response(MYSQL_NATIVE_PASSWORD, NONCE)
    with pytest.raises(AuthenticationFailed, match="without TLS"):
        authenticator.respond(b"\xfemysql_clear_password\x00\x00")


def test_a_second_switch_is_refused() -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=True)
    authenticator.first_response(MYSQL_NATIVE_PASSWORD, NONCE)
    authenticator.respond(b"\xfecaching_sha2_password\x00" + NONCE + b"\x00")
    with pytest.raises(AuthenticationFailed, match="twice"):
        authenticator.respond(b"\xfemysql_clear_password\x00\x00")


def test_switch_to_an_unsupported_plugin_is_refused() -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=True)
    authenticator.first_response(MYSQL_NATIVE_PASSWORD, NONCE)
    with pytest.raises(AuthenticationFailed, match="'mysql_old_password'"):
        authenticator.respond(b"\xfe")


def test_server_error_raises_upstream_auth_error_carrying_the_err_packet() -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=False)
    authenticator.first_response(MYSQL_NATIVE_PASSWORD, NONCE)
    with pytest.raises(UpstreamAuthError) as raised:
        authenticator.respond(ACCESS_DENIED)
    assert raised.value.error == ErrPacket(
        ER_ACCESS_DENIED_ERROR, "Access denied for user 'app'@'localhost' (using password: YES)", "28000"
    )
    assert not authenticator.done


@pytest.mark.parametrize(
    ("plugin", "payload"),
    [
        (MYSQL_NATIVE_PASSWORD, b"\x01\x03"),  # AuthMoreData outside caching_sha2
        (CACHING_SHA2_PASSWORD, b"\x01\x05"),  # unknown caching_sha2 status
        (CACHING_SHA2_PASSWORD, b"\x02abc"),  # no such packet during authentication
        (CACHING_SHA2_PASSWORD, b""),
    ],
)
def test_unexpected_server_packets_are_protocol_violations(plugin: str, payload: bytes) -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=False)
    authenticator.first_response(plugin, NONCE)
    with pytest.raises(ProtocolViolation):
        authenticator.respond(payload)


def test_a_second_full_authentication_request_is_a_protocol_violation() -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=True)
    authenticator.first_response(CACHING_SHA2_PASSWORD, NONCE)
    authenticator.respond(PERFORM_FULL_AUTHENTICATION)
    with pytest.raises(ProtocolViolation):
        authenticator.respond(PERFORM_FULL_AUTHENTICATION)


def test_packets_after_the_ok_are_protocol_violations() -> None:
    authenticator = UpstreamAuthenticator("app", PASSWORD, secure_transport=False)
    authenticator.first_response(MYSQL_NATIVE_PASSWORD, NONCE)
    authenticator.respond(OK_PAYLOAD)
    with pytest.raises(ProtocolViolation):
        authenticator.respond(OK_PAYLOAD)


def test_the_password_never_appears_in_repr_or_exception_messages(rsa_key: rsa.RSAPrivateKey) -> None:
    secret = "pw-\ud800-never-shown"  # a lone surrogate: not encodable as UTF-8
    messages = []
    authenticator = UpstreamAuthenticator("app", secret, secure_transport=False)
    messages.append(repr(authenticator))
    for plugin in (MYSQL_NATIVE_PASSWORD, CACHING_SHA2_PASSWORD, MYSQL_CLEAR_PASSWORD):
        with pytest.raises(AuthenticationFailed) as failed:
            UpstreamAuthenticator("app", secret, secure_transport=True).first_response(plugin, NONCE)
        messages.append(str(failed.value))
        assert failed.value.__context__ is None  # the UnicodeEncodeError holds the password
    long_password = "x" * 300  # too long for OAEP with a 2048-bit key
    with pytest.raises(AuthenticationFailed) as failed:
        rsa_encrypt_password(long_password, NONCE, public_pem(rsa_key))
    messages.append(str(failed.value))
    with pytest.raises(UpstreamAuthError) as denied:
        authenticator.respond(ACCESS_DENIED)
    messages.append(str(denied.value))
    for message in messages:
        assert "never-shown" not in message
        assert long_password not in message
