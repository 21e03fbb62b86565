"""Client-side upstream authentication: mysql_native_password, caching_sha2_password
(fast path, full authentication over TLS or with the server's RSA key) and, over TLS only,
mysql_clear_password.

The scramble functions are small and pure; ``UpstreamAuthenticator`` drives one login,
fed each server packet after the handshake response. The password never leaves it except
inside the auth responses it builds, and never appears in a repr or an exception message.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from protocols.errors import ProtocolViolation
from protocols.mysql.constants import (
    AUTH_MORE_DATA,
    AUTH_SWITCH,
    CACHING_SHA2_FAST_AUTH_SUCCESS,
    CACHING_SHA2_PASSWORD,
    CACHING_SHA2_PERFORM_FULL_AUTHENTICATION,
    CACHING_SHA2_REQUEST_PUBLIC_KEY,
    ERR,
    MYSQL_CLEAR_PASSWORD,
    MYSQL_NATIVE_PASSWORD,
    NONCE_LENGTH,
    OK,
)
from protocols.mysql.messages import AuthSwitchRequest, ErrPacket

SUPPORTED_PLUGINS = frozenset({MYSQL_NATIVE_PASSWORD, CACHING_SHA2_PASSWORD, MYSQL_CLEAR_PASSWORD})
_FAST_AUTH_SUCCESS = bytes((CACHING_SHA2_FAST_AUTH_SUCCESS,))
_PERFORM_FULL_AUTHENTICATION = bytes((CACHING_SHA2_PERFORM_FULL_AUTHENTICATION,))
_REQUEST_PUBLIC_KEY = bytes((CACHING_SHA2_REQUEST_PUBLIC_KEY,))
# MySQL 8.0.5+ encrypts with OAEP over SHA-1 (earlier servers used PKCS#1 v1.5).
_OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


class AuthenticationFailed(Exception):
    """We cannot (or will not) complete the server's authentication exchange."""


class UpstreamAuthError(Exception):
    """The server refused the login; ``error`` is its ERR packet, to relay or log."""

    def __init__(self, error: ErrPacket) -> None:
        super().__init__(f"server refused authentication: {error.code} ({error.sql_state}) {error.message}")
        self.error = error


def _password_bytes(password: str) -> bytes:
    try:
        encoded: bytes | None = password.encode()
    except UnicodeEncodeError:
        encoded = None
    if encoded is None:
        # Raised outside the handler: the UnicodeEncodeError, which holds the password, must
        # not ride along as this exception's context.
        raise AuthenticationFailed("the password is not encodable as UTF-8")
    return encoded


def _xor(data: bytes, key: bytes) -> bytes:
    """``data`` XOR ``key`` repeated to its length."""
    repeated = (key * (len(data) // len(key) + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")


def native_password_scramble(password: str, nonce: bytes) -> bytes:
    """SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password))); empty for an empty password."""
    if not password:
        return b""
    stage1 = hashlib.sha1(_password_bytes(password)).digest()
    stage2 = hashlib.sha1(stage1).digest()
    return _xor(stage1, hashlib.sha1(nonce[:NONCE_LENGTH] + stage2).digest())


def caching_sha2_scramble(password: str, nonce: bytes) -> bytes:
    """SHA256(password) XOR SHA256(SHA256(SHA256(password)) + nonce); empty for an empty password."""
    if not password:
        return b""
    stage1 = hashlib.sha256(_password_bytes(password)).digest()
    stage2 = hashlib.sha256(stage1).digest()
    return _xor(stage1, hashlib.sha256(stage2 + nonce[:NONCE_LENGTH]).digest())


def xor_password_with_nonce(password: str, nonce: bytes) -> bytes:
    """The NUL-terminated password XOR the nonce: what caching_sha2 encrypts with RSA."""
    if not nonce:
        raise ProtocolViolation("empty nonce from the server")
    return _xor(_password_bytes(password) + b"\x00", nonce[:NONCE_LENGTH])


def rsa_encrypt_password(password: str, nonce: bytes, public_key_pem: bytes) -> bytes:
    """caching_sha2_password's full authentication without TLS (RSA-OAEP, SHA-1)."""
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise AuthenticationFailed("server sent an invalid RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise AuthenticationFailed("server's public key is not an RSA key")
    message = xor_password_with_nonce(password, nonce)
    try:
        return key.encrypt(message, _OAEP_SHA1)
    except ValueError:
        raise AuthenticationFailed("the password is too long for the server's RSA key") from None


class UpstreamAuthenticator:
    """Logs in to the server for one connection attempt.

    ``first_response`` gives the plugin and data for the HandshakeResponse41; then each
    server packet payload goes to ``respond``, which returns the payload to send back (frame
    it with the next sequence id) or None when nothing is owed, sets ``done`` on the server's
    OK, and raises UpstreamAuthError on its ERR.
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        secure_transport: bool,
        server_public_key: bytes | None = None,
    ) -> None:
        self._username = username
        self._password = password
        self._secure_transport = secure_transport
        # A pinned key (PEM) spares asking the server for one over an unencrypted connection,
        # where a man in the middle could hand us his own.
        self._server_public_key = server_public_key
        self._nonce = b""
        self._switched = False
        self._full_authentication = False
        self._awaiting_public_key = False
        self.plugin: str | None = None
        self.done = False

    def __repr__(self) -> str:
        return f"UpstreamAuthenticator(username={self._username!r}, plugin={self.plugin!r}, done={self.done})"

    def first_response(self, plugin_name: str, nonce: bytes) -> tuple[str, bytes]:
        """The plugin to name in the handshake response and its auth data, for the greeting's
        plugin and nonce. An unknown plugin gets mysql_native_password data: the server then
        switches to a plugin both sides know, or refuses."""
        plugin = plugin_name if plugin_name in SUPPORTED_PLUGINS else MYSQL_NATIVE_PASSWORD
        self.plugin = plugin
        self._nonce = nonce
        return plugin, self._auth_data(plugin, nonce)

    def respond(self, payload: bytes) -> bytes | None:
        if self.done:
            raise ProtocolViolation("server packet after authentication completed")
        if not payload:
            raise ProtocolViolation("empty packet during authentication")
        header = payload[0]
        if header == OK:
            self.done = True
            return None
        if header == ERR:
            raise UpstreamAuthError(ErrPacket.decode(payload))
        if header == AUTH_SWITCH:
            return self._switch(AuthSwitchRequest.decode(payload))
        if header == AUTH_MORE_DATA:
            return self._more_data(payload[1:])
        raise ProtocolViolation(f"unexpected packet (header {header:#04x}) during authentication")

    def _switch(self, request: AuthSwitchRequest) -> bytes:
        if self._switched:
            # One switch per login: a server asking again may be fishing for a weaker form.
            raise AuthenticationFailed("server asked to switch authentication plugin twice")
        if request.plugin_name not in SUPPORTED_PLUGINS:
            raise AuthenticationFailed(f"unsupported authentication plugin {request.plugin_name!r}")
        self._switched = True
        self.plugin = request.plugin_name
        self._nonce = request.plugin_data
        return self._auth_data(request.plugin_name, request.plugin_data)

    def _more_data(self, data: bytes) -> bytes | None:
        if self.plugin != CACHING_SHA2_PASSWORD:
            raise ProtocolViolation(f"unexpected AuthMoreData during {self.plugin}")
        if self._awaiting_public_key:
            self._awaiting_public_key = False
            return rsa_encrypt_password(self._password, self._nonce, data)
        if data == _FAST_AUTH_SUCCESS and not self._full_authentication:
            return None  # the server's OK follows
        if data == _PERFORM_FULL_AUTHENTICATION and not self._full_authentication:
            self._full_authentication = True
            if self._secure_transport:
                return _password_bytes(self._password) + b"\x00"
            if self._server_public_key is not None:
                return rsa_encrypt_password(self._password, self._nonce, self._server_public_key)
            self._awaiting_public_key = True
            return _REQUEST_PUBLIC_KEY
        raise ProtocolViolation("unexpected caching_sha2_password data from the server")

    def _auth_data(self, plugin: str, nonce: bytes) -> bytes:
        if plugin == MYSQL_NATIVE_PASSWORD:
            return native_password_scramble(self._password, nonce)
        if plugin == CACHING_SHA2_PASSWORD:
            return caching_sha2_scramble(self._password, nonce)
        if not self._secure_transport:
            raise AuthenticationFailed("refusing to send a cleartext password without TLS")
        return _password_bytes(self._password) + b"\x00"
