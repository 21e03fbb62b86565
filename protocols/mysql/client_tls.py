"""Client-side TLS negotiation for a MySQL listener, sans-IO.

Theory of operation: the greeting offers CLIENT_SSL when the listener has a certificate. A
client that wants TLS answers with the 32-byte SSLRequest (sequence id 1) and starts the TLS
handshake at once; its real handshake response follows inside TLS with sequence id 2. A
listener that requires TLS refuses a plaintext handshake response with MySQL's own
ER_SECURE_TRANSPORT_REQUIRED; one that offers none refuses an SSLRequest as before.
"""

from __future__ import annotations

from protocols.errors import ProtocolViolation
from protocols.mysql.constants import CLIENT_SSL, ER_HANDSHAKE_ERROR
from protocols.mysql.messages import ErrPacket, SslRequest, is_ssl_request
from protocols.mysql.server_auth import ER_SECURE_TRANSPORT_REQUIRED, LoginRefused


class MySqlTlsNegotiation:
    """One client connection's TLS state: ``offered`` (the listener has a certificate) and
    ``required`` (plaintext logins are refused)."""

    def __init__(self, *, offered: bool, required: bool) -> None:
        if required and not offered:
            raise ValueError("TLS cannot be required where it is not offered")
        self.offered = offered
        self.required = required
        self.requested = False  # the client sent an SSLRequest: the TLS handshake is next
        self.encrypted = False

    def __repr__(self) -> str:
        return (
            f"MySqlTlsNegotiation(offered={self.offered}, required={self.required}, "
            f"encrypted={self.encrypted})"
        )

    def greeting_capabilities(self, capabilities: int) -> int:
        """The greeting's capability flags: CLIENT_SSL exactly when TLS is offered."""
        return capabilities | CLIENT_SSL if self.offered else capabilities & ~CLIENT_SSL

    @property
    def response_sequence_id(self) -> int:
        """The sequence id the handshake response must carry (2 after an SSLRequest)."""
        return 2 if self.encrypted else 1

    def first_packet(self, payload: bytes) -> bool:
        """The client's first packet: True when it is an SSLRequest (start TLS now)."""
        if not is_ssl_request(payload):
            return False
        if self.encrypted or self.requested:
            raise ProtocolViolation("SSLRequest on a connection already encrypted")
        if not self.offered:
            raise LoginRefused(
                ErrPacket(
                    ER_HANDSHAKE_ERROR,
                    "this rotaproxy listener does not offer TLS: connect with ssl-mode=DISABLED",
                    "08S01",
                )
            )
        SslRequest.decode(payload)  # (well-formed, or a violation)
        self.requested = True
        return True

    def handshake_done(self) -> None:
        if not self.requested:
            raise ProtocolViolation("TLS handshake without an SSLRequest")
        self.encrypted = True

    def login(self) -> None:
        """The handshake response arrived; refused when TLS is required and missing."""
        if self.required and not self.encrypted:
            raise LoginRefused(
                ErrPacket(
                    ER_SECURE_TRANSPORT_REQUIRED,
                    "Connections using insecure transport are prohibited: this rotaproxy listener "
                    "requires TLS (ssl-mode=REQUIRED or stronger)",
                    "HY000",
                )
            )
