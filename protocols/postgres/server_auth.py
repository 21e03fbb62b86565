"""Server-side client authentication for PostgreSQL: SCRAM-SHA-256 (via scramp), as PostgreSQL
runs it, and nothing weaker (no MD5, no cleartext: the proxy never offers them).

``ScramLogin`` answers one client: ``start()`` gives AuthenticationSASL, ``receive(message)``
is fed each password-type ('p') message and returns the bytes to send back; once ``done``,
the login is proved and AuthenticationOk may follow. A wrong password, an unknown user and a
broken exchange all raise ``LoginRefused`` with 28P01 naming the user, never the password:
an unknown user runs the whole exchange against a made-up verifier, so the answer does not
tell who exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass, field

import scramp

from protocols.errors import ProtocolViolation
from protocols.postgres.messages import (
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    PASSWORD,
    SQLSTATE_INVALID_PASSWORD,
    AuthenticationRequest,
    RawMessage,
    cstring,
    read_cstring,
)

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
VERIFIER_PREFIX = "SCRAM-SHA-256$"
_INT32 = struct.Struct("!i")
_MECHANISM = scramp.ScramMechanism(SCRAM_SHA_256)

# Exchange stages.
_START = 0
_FIRST = 1  # AuthenticationSASL sent: the client's SASLInitialResponse is next
_FINAL = 2  # server-first sent: the client's SASLResponse (with its proof) is next
_DONE = 3


class LoginRefused(Exception):
    """The client did not prove who it is: ``code`` (SQLSTATE) and the message for the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def password_failed(user: str) -> LoginRefused:
    """What PostgreSQL says to a wrong password (the same for an unknown user)."""
    return LoginRefused(SQLSTATE_INVALID_PASSWORD, f'password authentication failed for user "{user}"')


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """A SCRAM-SHA-256 verifier, as ``pg_authid.rolpassword`` stores it:
    ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64)."""

    iterations: int
    salt: bytes = field(repr=False)
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Raises ValueError, whose message never repeats ``text``."""
        if not text.startswith(VERIFIER_PREFIX):
            raise ValueError("not a SCRAM-SHA-256 verifier")
        try:
            head, keys = text[len(VERIFIER_PREFIX) :].split("$")
            iterations_text, salt_text = head.split(":")
            stored_text, server_text = keys.split(":")
            iterations = int(iterations_text)
            salt = base64.b64decode(salt_text, validate=True)
            stored_key = base64.b64decode(stored_text, validate=True)
            server_key = base64.b64decode(server_text, validate=True)
        except (ValueError, binascii.Error):
            raise ValueError("malformed SCRAM-SHA-256 verifier") from None
        if iterations < 1 or not salt or len(stored_key) != 32 or len(server_key) != 32:
            raise ValueError("malformed SCRAM-SHA-256 verifier")
        return cls(iterations, salt, stored_key, server_key)

    @classmethod
    def from_password(
        cls, password: str, iterations: int = SCRAM_ITERATIONS, salt: bytes | None = None
    ) -> ScramVerifier:
        salt_out, stored_key, server_key, count = _MECHANISM.make_auth_info(
            password, iteration_count=iterations, salt=salt
        )
        return cls(int(count), bytes(salt_out), bytes(stored_key), bytes(server_key))

    def encode(self) -> str:
        b64 = base64.b64encode
        return (
            f"{VERIFIER_PREFIX}{self.iterations}:{b64(self.salt).decode()}"
            f"${b64(self.stored_key).decode()}:{b64(self.server_key).decode()}"
        )

    def matches_password(self, password: bytes) -> bool:
        """Whether ``password`` (UTF-8, as a client sent it in the clear) is the one verified.

        (What a MySQL client's caching_sha2_password full authentication needs of a user whose
        secret holds only a verifier.)"""
        salted = hashlib.pbkdf2_hmac("sha256", password, self.salt, self.iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key)


def _made_up_verifier(user: str) -> ScramVerifier:
    """For a user nobody configured: a verifier no password matches."""
    return ScramVerifier.from_password(secrets.token_urlsafe(24))


def _attributes(message: str) -> list[tuple[str, str]]:
    """``a=x,b=y`` as pairs, in order (values may contain '=')."""
    pairs = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ValueError("malformed SCRAM attribute")
        pairs.append((part[0], part[2:]))
    return pairs


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("malformed base64 in a SCRAM message") from None


class ScramLogin:
    """The server's side of one SCRAM-SHA-256 login (RFC 5802 / 7677, PostgreSQL framing).

    PostgreSQL clients leave the SCRAM user name empty (the startup packet named the user), so
    the verifier is chosen before the exchange, from ``user``, and the message's name is
    ignored, as PostgreSQL does. (scramp's server insists on a name, so the exchange is read
    here: the check is two HMACs and a hash; the verifier itself is scramp's.)
    """

    def __init__(self, user: str, verifier: ScramVerifier | None) -> None:
        self.user = user
        self.known = verifier is not None
        self._verifier = verifier if verifier is not None else _made_up_verifier(user)
        self._stage = _START
        self._client_first_bare = ""
        self._server_first = ""
        self._gs2_header = ""
        self._nonce = ""
        self.done = False

    def __repr__(self) -> str:
        return f"ScramLogin(user={self.user!r}, stage={self._stage}, done={self.done})"

    def start(self) -> bytes:
        """AuthenticationSASL offering SCRAM-SHA-256 only (no channel binding, so no -PLUS)."""
        if self._stage != _START:
            raise ProtocolViolation("SCRAM login started twice")
        self._stage = _FIRST
        return AuthenticationRequest(AUTH_SASL, cstring(SCRAM_SHA_256) + b"\x00").encode()

    def receive(self, message: RawMessage) -> bytes:
        """The answer to the client's next SASL message; raises LoginRefused."""
        if message.type != PASSWORD:
            raise ProtocolViolation(f"expected a SASL response, got message {message.type!r}")
        if self._stage == _FIRST:
            return self._client_first(message.payload)
        if self._stage == _FINAL:
            return self._client_final(message.payload)
        raise ProtocolViolation("SASL message outside the exchange")

    def _client_first(self, payload: bytes) -> bytes:
        mechanism, offset = read_cstring(payload, 0)
        if mechanism != SCRAM_SHA_256:
            raise password_failed(self.user)  # (-PLUS was never offered)
        if len(payload) < offset + 4:
            raise ProtocolViolation("truncated SASLInitialResponse")
        (length,) = _INT32.unpack_from(payload, offset)
        data = payload[offset + 4 :]
        if length != len(data):
            raise ProtocolViolation("SASLInitialResponse length does not match its data")
        try:
            text = data.decode()
            # gs2-header: "n,," (no channel binding) or "y,," (the client could, but we did
            # not offer it); "p=..." asks for binding we never offered; no authzid.
            flag, authzid, bare = text.split(",", 2)
            if flag not in ("n", "y") or authzid:
                raise ValueError("unsupported GS2 header")
            attributes = _attributes(bare)
            if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
                raise ValueError("malformed client-first message")
            client_nonce = attributes[1][1]
            if not client_nonce:
                raise ValueError("empty client nonce")
        except (ValueError, UnicodeDecodeError):
            raise password_failed(self.user) from None
        self._gs2_header = f"{flag},,"
        self._client_first_bare = bare
        self._nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        verifier = self._verifier
        salt = base64.b64encode(verifier.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={verifier.iterations}"
        self._stage = _FINAL
        return AuthenticationRequest(AUTH_SASL_CONTINUE, self._server_first.encode()).encode()

    def _client_final(self, payload: bytes) -> bytes:
        self._stage = _DONE
        verifier = self._verifier
        try:
            text = payload.decode()
            without_proof, separator, proof_text = text.rpartition(",p=")
            if not separator:
                raise ValueError("client-final message without a proof")
            attributes = dict(_attributes(without_proof))
            binding = _b64decode(attributes.get("c", ""))
            proof = _b64decode(proof_text)
        except (ValueError, UnicodeDecodeError):
            raise password_failed(self.user) from None
        if binding != self._gs2_header.encode() or attributes.get("r") != self._nonce or len(proof) != 32:
            raise password_failed(self.user)
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        client_signature = hmac.digest(verifier.stored_key, auth_message, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if (
            not hmac.compare_digest(hashlib.sha256(client_key).digest(), verifier.stored_key)
            or not self.known
        ):
            raise password_failed(self.user)
        server_signature = hmac.digest(verifier.server_key, auth_message, "sha256")
        self.done = True
        server_final = "v=" + base64.b64encode(server_signature).decode()
        return AuthenticationRequest(AUTH_SASL_FINAL, server_final.encode()).encode()
