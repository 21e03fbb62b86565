"""Client-side upstream authentication: SCRAM-SHA-256 (via scramp), MD5 and cleartext.

``UpstreamAuthenticator.respond`` is fed each AuthenticationRequest the server sends and
returns the bytes to answer with (or ``None`` when nothing is owed). The password never
leaves this object except inside the wire messages it builds.
"""

from __future__ import annotations

import hashlib

import scramp

from protocols.errors import ProtocolViolation
from protocols.postgres.messages import (
    AUTH_CLEARTEXT_PASSWORD,
    AUTH_MD5_PASSWORD,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    AuthenticationRequest,
    password_message,
    sasl_initial_response,
)

SCRAM_SHA_256 = "SCRAM-SHA-256"


def md5_password(username: str, password: str, salt: bytes) -> bytes:
    """The MD5 method's answer: 'md5' + md5(md5(password + user) + salt), NUL-terminated."""
    inner = hashlib.md5((password + username).encode()).hexdigest()
    outer = hashlib.md5(inner.encode() + salt).hexdigest()
    return b"md5" + outer.encode() + b"\x00"


class AuthenticationFailed(Exception):
    """The server's side of the exchange could not be verified (not a wrong password)."""


class UpstreamAuthenticator:
    """Answers the server's authentication requests for one connection attempt."""

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password
        self._scram: scramp.ScramClient | None = None
        self.method: str | None = None
        self.done = False

    def __repr__(self) -> str:
        return f"UpstreamAuthenticator(username={self._username!r}, method={self.method!r})"

    def respond(self, request: AuthenticationRequest) -> bytes | None:
        code = request.code
        if code == AUTH_OK:
            if self._scram is not None and not self.done:
                # A server that skips SASLFinal never proved it knows the password.
                raise AuthenticationFailed("server ended SCRAM without its final message")
            self.done = True
            return None
        if code in (AUTH_CLEARTEXT_PASSWORD, AUTH_MD5_PASSWORD, AUTH_SASL) and self.method is not None:
            # One method per login: a server switching methods mid-exchange (say, SCRAM
            # then cleartext) would be fishing for the password in a weaker form.
            raise AuthenticationFailed(f"server asked for a second authentication method after {self.method}")
        if code == AUTH_CLEARTEXT_PASSWORD:
            self.method = "password"
            return password_message(self._password.encode() + b"\x00")
        if code == AUTH_MD5_PASSWORD:
            if len(request.data) != 4:
                raise ProtocolViolation("MD5 authentication request without a 4-byte salt")
            self.method = "md5"
            return password_message(md5_password(self._username, self._password, request.data))
        if code == AUTH_SASL:
            mechanisms = request.sasl_mechanisms()
            if SCRAM_SHA_256 not in mechanisms:
                raise AuthenticationFailed(f"server offers SASL mechanisms {mechanisms}, none supported")
            self.method = SCRAM_SHA_256
            self._scram = scramp.ScramClient([SCRAM_SHA_256], self._username, self._password)
            first = self._scram.get_client_first().encode()
            return sasl_initial_response(SCRAM_SHA_256, first)
        if code == AUTH_SASL_CONTINUE:
            scram = self._require_scram()
            try:
                scram.set_server_first(request.data.decode())
                return password_message(scram.get_client_final().encode())
            except (scramp.ScramException, UnicodeDecodeError) as exc:
                raise AuthenticationFailed(f"invalid SCRAM server-first message: {exc}") from None
        if code == AUTH_SASL_FINAL:
            scram = self._require_scram()
            try:
                scram.set_server_final(request.data.decode())
            except (scramp.ScramException, UnicodeDecodeError) as exc:
                raise AuthenticationFailed(f"SCRAM server signature rejected: {exc}") from None
            self.done = True
            return None
        raise AuthenticationFailed(f"unsupported authentication method (code {code})")

    def _require_scram(self) -> scramp.ScramClient:
        if self._scram is None:
            raise ProtocolViolation("SASL continuation before SASL start")
        return self._scram
