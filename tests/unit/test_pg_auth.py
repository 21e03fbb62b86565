"""UpstreamAuthenticator against known vectors and a real SCRAM-SHA-256 server (scramp's)."""

from __future__ import annotations

import base64
import hashlib

import pytest
import scramp

from protocols.errors import ProtocolViolation
from protocols.postgres.auth import AuthenticationFailed, UpstreamAuthenticator, md5_password
from protocols.postgres.messages import (
    AUTH_CLEARTEXT_PASSWORD,
    AUTH_MD5_PASSWORD,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    AuthenticationRequest,
)

PASSWORD = "correct horse battery staple"
SCRAM_ONLY = AuthenticationRequest(AUTH_SASL, b"SCRAM-SHA-256\x00\x00")


def password_payload(wire: bytes | None) -> bytes:
    """The body of one 'p' message, after checking its type byte and declared length."""
    assert wire is not None
    assert wire[:1] == b"p"
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 1
    return wire[5:]


def sasl_initial_payload(wire: bytes | None) -> tuple[bytes, bytes]:
    """Split a SASLInitialResponse into (mechanism, client-first-message)."""
    body = password_payload(wire)
    mechanism, _, rest = body.partition(b"\x00")
    assert int.from_bytes(rest[:4], "big") == len(rest) - 4
    return mechanism, rest[4:]


class ScramServer:
    """scramp's server side, driven over the same AuthenticationRequests PostgreSQL sends."""

    def __init__(self, password: str, *, forge_server_key: bool = False) -> None:
        mechanism = scramp.ScramMechanism("SCRAM-SHA-256")
        salt, stored_key, server_key, iterations = mechanism.make_auth_info(password, iteration_count=4096)
        if forge_server_key:
            # A server that can check the client's proof but cannot prove itself.
            server_key = bytes(32)
        auth_info = (salt, stored_key, server_key, iterations)
        self._server = mechanism.make_server(lambda username: auth_info)

    def first(self, initial_response: bytes | None) -> AuthenticationRequest:
        mechanism, client_first = sasl_initial_payload(initial_response)
        assert mechanism == b"SCRAM-SHA-256"
        self._server.set_client_first(client_first.decode())
        return AuthenticationRequest(AUTH_SASL_CONTINUE, self._server.get_server_first().encode())

    def final(self, response: bytes | None) -> AuthenticationRequest:
        self._server.set_client_final(password_payload(response).decode())
        return AuthenticationRequest(AUTH_SASL_FINAL, self._server.get_server_final().encode())


# --- trust and cleartext ------------------------------------------------------------------


def test_authentication_ok_alone_needs_no_answer() -> None:
    client = UpstreamAuthenticator("alice", PASSWORD)
    assert client.respond(AuthenticationRequest(AUTH_OK)) is None
    assert client.done
    assert client.method is None


def test_cleartext_answer_is_the_password_and_a_nul_in_a_p_message() -> None:
    client = UpstreamAuthenticator("alice", "hunter2")
    answer = client.respond(AuthenticationRequest(AUTH_CLEARTEXT_PASSWORD))
    assert answer == b"p\x00\x00\x00\x0chunter2\x00"
    assert client.method == "password"
    assert not client.done
    assert client.respond(AuthenticationRequest(AUTH_OK)) is None
    assert client.done


def test_cleartext_password_is_sent_as_utf8() -> None:
    client = UpstreamAuthenticator("alice", "pässword")
    answer = client.respond(AuthenticationRequest(AUTH_CLEARTEXT_PASSWORD))
    assert answer == b"p\x00\x00\x00\x0ep\xc3\xa4ssword\x00"


# --- MD5 ----------------------------------------------------------------------------------


def test_md5_answer_matches_the_known_vector_for_postgres_password() -> None:
    # md5("password" + "postgres") = 32e12f215ba27cb750c9e093ce4b5127, the value
    # PostgreSQL stores as "md532e12f...", then hashed again with the salt.
    client = UpstreamAuthenticator("postgres", "password")
    answer = client.respond(AuthenticationRequest(AUTH_MD5_PASSWORD, b"\x01\x02\x03\x04"))
    assert answer == b"p\x00\x00\x00\x28md598511ceaec347a656f032c7f2a16ef17\x00"
    assert client.method == "md5"


@pytest.mark.parametrize(
    ("username", "password", "salt"),
    [
        ("alice", PASSWORD, b"\xde\xad\xbe\xef"),
        ("bob", "", b"\x00\x00\x00\x00"),
        ("zoë", "pässword", b"\xff\x00\x7f\x80"),
    ],
)
def test_md5_answer_is_md5_of_the_hex_md5_of_password_and_user_then_salt(
    username: str, password: str, salt: bytes
) -> None:
    inner = hashlib.md5(password.encode() + username.encode()).hexdigest().encode()
    expected = b"md5" + hashlib.md5(inner + salt).hexdigest().encode() + b"\x00"
    client = UpstreamAuthenticator(username, password)
    answer = client.respond(AuthenticationRequest(AUTH_MD5_PASSWORD, salt))
    assert password_payload(answer) == expected
    assert md5_password(username, password, salt) == expected


@pytest.mark.parametrize(
    "salt", [b"", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"], ids=["none", "three", "five"]
)
def test_md5_request_with_a_salt_that_is_not_4_bytes_is_a_protocol_violation(
    salt: bytes,
) -> None:
    client = UpstreamAuthenticator("alice", PASSWORD)
    with pytest.raises(ProtocolViolation, match="4-byte salt"):
        client.respond(AuthenticationRequest(AUTH_MD5_PASSWORD, salt))


# --- SCRAM-SHA-256 ------------------------------------------------------------------------


def test_scram_exchange_completes_against_scramps_server() -> None:
    server = ScramServer(PASSWORD)
    client = UpstreamAuthenticator("alice", PASSWORD)

    initial = client.respond(SCRAM_ONLY)
    assert client.method == "SCRAM-SHA-256"
    mechanism, client_first = sasl_initial_payload(initial)
    assert mechanism == b"SCRAM-SHA-256"
    assert client_first.startswith(b"n,,n=alice,r=")  # no channel binding

    response = client.respond(server.first(initial))
    assert password_payload(response).startswith(b"c=biws,r=")  # base64("n,,")
    assert not client.done

    assert client.respond(server.final(response)) is None
    assert client.done
    assert client.respond(AuthenticationRequest(AUTH_OK)) is None
    assert client.done


def test_scram_proof_from_the_wrong_password_is_refused_by_the_server() -> None:
    server = ScramServer(PASSWORD)
    client = UpstreamAuthenticator("alice", "wrong password")
    response = client.respond(server.first(client.respond(SCRAM_ONLY)))
    with pytest.raises(scramp.ScramException):
        server.final(response)


def test_scram_picks_plain_sha_256_when_plus_is_also_offered() -> None:
    client = UpstreamAuthenticator("alice", PASSWORD)
    offer = AuthenticationRequest(AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00")
    mechanism, client_first = sasl_initial_payload(client.respond(offer))
    assert mechanism == b"SCRAM-SHA-256"
    assert client_first.startswith(b"n,,")


def test_scram_server_signature_from_a_server_without_the_key_is_rejected() -> None:
    server = ScramServer(PASSWORD, forge_server_key=True)
    client = UpstreamAuthenticator("alice", PASSWORD)
    response = client.respond(server.first(client.respond(SCRAM_ONLY)))
    final = server.final(response)  # the server accepted our proof
    with pytest.raises(AuthenticationFailed, match="server signature rejected"):
        client.respond(final)
    assert not client.done


def test_scram_tampered_server_signature_is_rejected() -> None:
    server = ScramServer(PASSWORD)
    client = UpstreamAuthenticator("alice", PASSWORD)
    response = client.respond(server.first(client.respond(SCRAM_ONLY)))
    server.final(response)
    forged = b"v=" + base64.b64encode(bytes(32))
    with pytest.raises(AuthenticationFailed, match="server signature rejected"):
        client.respond(AuthenticationRequest(AUTH_SASL_FINAL, forged))


def test_scram_server_final_carrying_an_error_is_rejected() -> None:
    server = ScramServer(PASSWORD)
    client = UpstreamAuthenticator("alice", PASSWORD)
    client.respond(server.first(client.respond(SCRAM_ONLY)))
    with pytest.raises(AuthenticationFailed):
        client.respond(AuthenticationRequest(AUTH_SASL_FINAL, b"e=invalid-proof"))


def test_authentication_ok_before_sasl_final_is_rejected() -> None:
    server = ScramServer(PASSWORD)
    client = UpstreamAuthenticator("alice", PASSWORD)
    client.respond(server.first(client.respond(SCRAM_ONLY)))
    with pytest.raises(AuthenticationFailed, match="without its final message"):
        client.respond(AuthenticationRequest(AUTH_OK))
    assert not client.done


def test_authentication_ok_right_after_sasl_start_is_rejected() -> None:
    client = UpstreamAuthenticator("alice", PASSWORD)
    client.respond(SCRAM_ONLY)
    with pytest.raises(AuthenticationFailed, match="without its final message"):
        client.respond(AuthenticationRequest(AUTH_OK))


@pytest.mark.parametrize(
    "mechanisms",
    [b"SCRAM-SHA-256-PLUS\x00\x00", b"SCRAM-SHA-1\x00OAUTHBEARER\x00\x00", b"\x00"],
    ids=["plus-only", "others", "none"],
)
def test_sasl_without_plain_scram_sha_256_is_rejected(mechanisms: bytes) -> None:
    client = UpstreamAuthenticator("alice", PASSWORD)
    with pytest.raises(AuthenticationFailed, match="none supported"):
        client.respond(AuthenticationRequest(AUTH_SASL, mechanisms))
    assert client.method is None


def test_scram_server_first_with_a_foreign_nonce_is_rejected() -> None:
    client = UpstreamAuthenticator("alice", PASSWORD)
    client.respond(SCRAM_ONLY)
    server_first = b"r=notourclientnonce,s=" + base64.b64encode(b"salt") + b",i=4096"
    with pytest.raises(AuthenticationFailed, match="server-first"):
        client.respond(AuthenticationRequest(AUTH_SASL_CONTINUE, server_first))


@pytest.mark.parametrize("data", [b"", b"garbage", b"r=\xff\xfe,s=AA==,i=4096"])
def test_scram_malformed_server_first_is_rejected(data: bytes) -> None:
    client = UpstreamAuthenticator("alice", PASSWORD)
    client.respond(SCRAM_ONLY)
    with pytest.raises(AuthenticationFailed, match="server-first"):
        client.respond(AuthenticationRequest(AUTH_SASL_CONTINUE, data))


@pytest.mark.parametrize("code", [AUTH_SASL_CONTINUE, AUTH_SASL_FINAL])
def test_sasl_continuation_before_sasl_start_is_a_protocol_violation(code: int) -> None:
    client = UpstreamAuthenticator("alice", PASSWORD)
    with pytest.raises(ProtocolViolation, match="before SASL start"):
        client.respond(AuthenticationRequest(code, b"r=abc"))


@pytest.mark.parametrize("code", [1, 2, 4, 6, 7, 8, 9, 13, 99, -1], ids=lambda code: f"code-{code}")
def test_unknown_authentication_codes_are_rejected_naming_the_code(code: int) -> None:
    client = UpstreamAuthenticator("alice", PASSWORD)
    with pytest.raises(AuthenticationFailed, match=rf"\(code {code}\)"):
        client.respond(AuthenticationRequest(code))


# --- the password stays inside --------------------------------------------------------------


def test_repr_names_the_user_but_not_the_password() -> None:
    client = UpstreamAuthenticator("alice", PASSWORD)
    assert "alice" in repr(client)
    assert PASSWORD not in repr(client)
    assert PASSWORD not in str(client)


def test_repr_after_a_scram_exchange_still_hides_the_password() -> None:
    server = ScramServer(PASSWORD)
    client = UpstreamAuthenticator("alice", PASSWORD)
    client.respond(server.final(client.respond(server.first(client.respond(SCRAM_ONLY)))))
    assert client.done
    assert PASSWORD not in repr(client)
    assert "SCRAM-SHA-256" in repr(client)


def test_a_second_method_after_scram_started_is_refused() -> None:
    from protocols.postgres.auth import AuthenticationFailed, UpstreamAuthenticator
    from protocols.postgres.messages import AUTH_CLEARTEXT_PASSWORD, AUTH_SASL, AuthenticationRequest

    authenticator = UpstreamAuthenticator("app", "secret-password")
    authenticator.respond(AuthenticationRequest(AUTH_SASL, b"SCRAM-SHA-256\x00\x00"))
    with pytest.raises(AuthenticationFailed, match="second authentication method"):
        authenticator.respond(AuthenticationRequest(AUTH_CLEARTEXT_PASSWORD))
