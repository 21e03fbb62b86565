"""The client secret as the proxy reads it: a JSON map of user to password or SCRAM verifier.
Values are masked in logs from the moment they are loaded and never appear in an error or a
repr (the redaction promise, extended to the clients' own passwords)."""

from __future__ import annotations

import json
import logging
import secrets

import pytest

from protocols.postgres.server_auth import ScramVerifier
from proxy.clients.directory import ClientDirectory, parse_directory
from proxy.credentials.base import CredentialsError
from proxy.redaction import MASK, RedactingFilter


def test_passwords_and_verifiers_become_what_the_logins_check() -> None:
    password = "pw-" + secrets.token_urlsafe(18)
    verifier = ScramVerifier.from_password("pw-" + secrets.token_urlsafe(18)).encode()

    directory = parse_directory("prod/clients", json.dumps({"alice": password, "bob": verifier}), "v1")

    alice, bob = directory.get("alice"), directory.get("bob")
    assert alice is not None and bob is not None and directory.get("carol") is None
    assert alice.scram.matches_password(password.encode())
    assert alice.mysql.matches_cleartext(password.encode()) and alice.mysql.sha2_stage2 is not None
    assert bob.scram.encode() == verifier and bob.mysql.sha2_stage2 is None  # no password to hash
    assert directory.version_id == "v1"


def test_client_secret_values_are_masked_in_logs_and_absent_from_reprs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "pw-" + secrets.token_urlsafe(18)
    verifier = ScramVerifier.from_password("pw-" + secrets.token_urlsafe(18)).encode()
    directory = parse_directory("prod/clients", json.dumps({"alice": password, "bob": verifier}), "v1")

    record = logging.LogRecord(
        "proxy.clients", logging.INFO, __file__, 1, "echo %s %s", (password, verifier), None
    )
    RedactingFilter().filter(record)
    assert record.getMessage() == f"echo {MASK} {MASK}"
    for text in (repr(directory), repr(directory.get("alice")), repr(directory.get("bob"))):
        assert password not in text and verifier not in text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "the secret has no SecretString (binary secrets are not supported)"),
        ("user=alice password=pw-abcdefgh", "SecretString is not valid JSON"),
        ("[]", "SecretString must be a JSON object mapping user names to passwords"),
        ('{"alice": 42}', "user 'alice': the value must be a non-empty string"),
        ('{"alice": "SCRAM-SHA-256$4096:pw-abcdefgh"}', "user 'alice': malformed SCRAM-SHA-256 verifier"),
    ],
)
def test_a_broken_client_secret_is_named_never_quoted(text: str | None, problem: str) -> None:
    with pytest.raises(CredentialsError) as error:
        parse_directory("prod/clients", text, "v1")

    assert str(error.value) == f"cannot get credentials from client secret 'prod/clients': {problem}"
    assert "pw-abcdefgh" not in str(error.value)


def test_an_empty_directory_knows_nobody() -> None:
    assert ClientDirectory("v0", {}).get("alice") is None
