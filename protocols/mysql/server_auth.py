"""Server-side client authentication for MySQL/MariaDB clients, sans-IO:
caching_sha2_password (fast path, and full authentication over TLS only) and
mysql_native_password.

``MySqlLogin`` checks one client. ``start(plugin, auth_response)`` is given what the
handshake response carried; ``receive(payload)`` each later client packet. Both return the
payload to send next (an AuthSwitchRequest or AuthMoreData) or None; once ``done`` the client
is proved and the caller sends OK. Failures raise ``LoginRefused`` carrying the ERR packet:
1045 naming the user (never the password), whatever was wrong, so an answer does not tell
who exists.

How each plugin is checked (the server keeps no password, only hashes of it):
- mysql_native_password: the client sends SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw))); knowing
  SHA1(SHA1(pw)), XOR recovers a candidate SHA1(pw) whose SHA1 must match.
- caching_sha2_password, fast path: the same with SHA-256 and the nonce last; success is
  AuthMoreData 0x03, then OK. A user known only by a SCRAM verifier (the secret holds no
  password) has no fast-path hash: the server asks for full authentication (0x04) and the
  client sends its password in the clear, which is accepted only over TLS (no RSA key
  exchange is offered: a client asking for the key is refused with a clear error).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from protocols.errors import ProtocolViolation
from protocols.mysql.constants import (
    CACHING_SHA2_FAST_AUTH_SUCCESS,
    CACHING_SHA2_PASSWORD,
    CACHING_SHA2_PERFORM_FULL_AUTHENTICATION,
    CACHING_SHA2_REQUEST_PUBLIC_KEY,
    ER_ACCESS_DENIED_ERROR,
    MYSQL_NATIVE_PASSWORD,
    NONCE_LENGTH,
)
from protocols.mysql.messages import AuthMoreData, AuthSwitchRequest, ErrPacket
from protocols.postgres.server_auth import ScramVerifier

SQLSTATE_ACCESS_DENIED = "28000"
ER_SECURE_TRANSPORT_REQUIRED = 3159  # MySQL's refusal under require_secure_transport
SERVER_PLUGINS = (CACHING_SHA2_PASSWORD, MYSQL_NATIVE_PASSWORD)
FAST_AUTH_SUCCESS = AuthMoreData(bytes((CACHING_SHA2_FAST_AUTH_SUCCESS,))).encode()
PERFORM_FULL_AUTHENTICATION = AuthMoreData(bytes((CACHING_SHA2_PERFORM_FULL_AUTHENTICATION,))).encode()

# Stages of one login.
_STARTED = 0
_SWITCHED = 1  # an AuthSwitchRequest was sent: the client's auth data for it is next
_FULL = 2  # caching_sha2 full authentication asked for: the cleartext password is next
_DONE = 3


class LoginRefused(Exception):
    """The client did not prove who it is; ``error`` is the ERR packet to answer with."""

    def __init__(self, error: ErrPacket) -> None:
        super().__init__(error.message)
        self.error = error


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def native_password_matches(stage2: bytes, nonce: bytes, response: bytes) -> bool:
    """mysql_native_password: ``response`` proves knowledge of the password whose
    SHA1(SHA1(password)) is ``stage2``."""
    if len(response) != 20 or len(stage2) != 20:
        return False
    stage1 = _xor(response, hashlib.sha1(nonce[:NONCE_LENGTH] + stage2).digest())
    return hmac.compare_digest(hashlib.sha1(stage1).digest(), stage2)


def caching_sha2_matches(stage2: bytes, nonce: bytes, response: bytes) -> bool:
    """caching_sha2_password's fast path: ``response`` proves knowledge of the password whose
    SHA256(SHA256(password)) is ``stage2``."""
    if len(response) != 32 or len(stage2) != 32:
        return False
    stage1 = _xor(response, hashlib.sha256(stage2 + nonce[:NONCE_LENGTH]).digest())
    return hmac.compare_digest(hashlib.sha256(stage1).digest(), stage2)


@dataclass(frozen=True, slots=True)
class MySqlVerifier:
    """What the proxy keeps of one client's password: the two plugins' double hashes (from a
    password) or, for a secret that holds only a SCRAM verifier, that verifier."""

    native_stage2: bytes | None = field(default=None, repr=False)
    sha2_stage2: bytes | None = field(default=None, repr=False)
    scram: ScramVerifier | None = field(default=None, repr=False)

    @classmethod
    def from_password(cls, password: str) -> MySqlVerifier:
        encoded = password.encode()
        return cls(
            native_stage2=hashlib.sha1(hashlib.sha1(encoded).digest()).digest(),
            sha2_stage2=hashlib.sha256(hashlib.sha256(encoded).digest()).digest(),
        )

    def matches_cleartext(self, password: bytes) -> bool:
        if self.sha2_stage2 is not None:
            digest = hashlib.sha256(hashlib.sha256(password).digest()).digest()
            return hmac.compare_digest(digest, self.sha2_stage2)
        return self.scram is not None and self.scram.matches_password(password)


def access_denied(user: str, host: str, *, using_password: bool) -> LoginRefused:
    """ER_ACCESS_DENIED_ERROR in the server's own words."""
    answer = "YES" if using_password else "NO"
    message = f"Access denied for user '{user}'@'{host}' (using password: {answer})"
    return LoginRefused(ErrPacket(ER_ACCESS_DENIED_ERROR, message, SQLSTATE_ACCESS_DENIED))


class MySqlLogin:
    """The server's side of one client's password login.

    ``plugin`` is what the proxy's greeting asked for (caching_sha2_password or
    mysql_native_password) and the plugin a client naming another one is switched to;
    ``secure`` says whether the connection is TLS (full authentication needs it).
    """

    def __init__(
        self,
        user: str,
        host: str,
        verifier: MySqlVerifier | None,
        nonce: bytes,
        *,
        plugin: str,
        secure: bool,
    ) -> None:
        if plugin not in SERVER_PLUGINS:
            raise ValueError(f"unsupported server plugin {plugin!r}")
        self.user = user
        self.host = host
        self._verifier = verifier
        self._nonce = nonce
        self.plugin = plugin
        self.secure = secure
        self._stage = _STARTED
        self._used_password = False
        self.done = False

    def __repr__(self) -> str:
        return f"MySqlLogin(user={self.user!r}, plugin={self.plugin!r}, done={self.done})"

    def start(self, plugin: str | None, auth_response: bytes) -> bytes | None:
        """The handshake response's plugin (None: a client without CLIENT_PLUGIN_AUTH, which
        speaks mysql_native_password) and auth data."""
        if self._stage != _STARTED:
            raise ProtocolViolation("login started twice")
        chosen = MYSQL_NATIVE_PASSWORD if plugin is None else plugin
        if chosen not in SERVER_PLUGINS:
            # A plugin we do not run (ed25519, clear password, ...): ask for ours instead.
            self._stage = _SWITCHED
            return AuthSwitchRequest(self.plugin, self._nonce[:NONCE_LENGTH]).encode()
        return self._check(chosen, auth_response)

    def receive(self, payload: bytes) -> bytes | None:
        """A client packet after the handshake response."""
        if self._stage == _SWITCHED:
            return self._check(self.plugin, payload)
        if self._stage == _FULL:
            return self._full_authentication(payload)
        raise ProtocolViolation("client packet outside the authentication exchange")

    def _refused(self) -> LoginRefused:
        self._stage = _DONE
        return access_denied(self.user, self.host, using_password=self._used_password)

    def _check(self, plugin: str, response: bytes) -> bytes | None:
        self.plugin = plugin
        self._used_password = bool(response)
        verifier = self._verifier
        if verifier is None or not response:
            raise self._refused()
        if plugin == MYSQL_NATIVE_PASSWORD:
            if verifier.native_stage2 is None:
                if self._stage == _SWITCHED:
                    raise self._refused()
                # Only a SCRAM verifier is known: caching_sha2's full authentication can check it.
                self._stage = _SWITCHED
                self.plugin = CACHING_SHA2_PASSWORD
                return AuthSwitchRequest(CACHING_SHA2_PASSWORD, self._nonce[:NONCE_LENGTH]).encode()
            if not native_password_matches(verifier.native_stage2, self._nonce, response):
                raise self._refused()
            self._stage = _DONE
            self.done = True
            return None
        if verifier.sha2_stage2 is not None:
            if not caching_sha2_matches(verifier.sha2_stage2, self._nonce, response):
                raise self._refused()
            self._stage = _DONE
            self.done = True
            return FAST_AUTH_SUCCESS
        if not self.secure:
            self._stage = _DONE
            raise LoginRefused(
                ErrPacket(
                    ER_SECURE_TRANSPORT_REQUIRED,
                    f"user '{self.user}' needs caching_sha2_password full authentication, which "
                    "rotaproxy accepts over TLS only (no RSA key exchange): connect with TLS",
                    "HY000",
                )
            )
        self._stage = _FULL
        return PERFORM_FULL_AUTHENTICATION

    def _full_authentication(self, payload: bytes) -> bytes | None:
        if payload == bytes((CACHING_SHA2_REQUEST_PUBLIC_KEY,)):
            self._stage = _DONE
            raise LoginRefused(
                ErrPacket(
                    ER_SECURE_TRANSPORT_REQUIRED,
                    "rotaproxy does not offer an RSA public key: connect with TLS",
                    "HY000",
                )
            )
        password = payload[:-1] if payload.endswith(b"\x00") else payload
        verifier = self._verifier
        if not self.secure or verifier is None or not verifier.matches_cleartext(password):
            raise self._refused()
        self._stage = _DONE
        self.done = True
        return None
