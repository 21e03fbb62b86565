"""Client-side TLS negotiation for a PostgreSQL listener, sans-IO: what a client's first bytes
ask for and what the proxy answers.

Theory of operation: a client asks for TLS either with an SSLRequest (answered ``S`` when
the listener offers TLS, ``N`` when it does not; a second one inside TLS is a violation) or,
as PostgreSQL 17's ``sslnegotiation=direct``, by opening with a TLS ClientHello at once (its
first byte is a TLS handshake record, 0x16, which no startup packet length starts with),
which must name ALPN "postgresql". The I/O layer carries out the handshake and reports it
with ``encrypted``; ``startup`` then says whether the startup packet may be served (a
listener that requires TLS refuses a plaintext one with 28000, as PostgreSQL's
``hostssl``-only setups do).
"""

from __future__ import annotations

from protocols.errors import ProtocolViolation
from protocols.postgres.messages import SQLSTATE_INVALID_AUTHORIZATION, SSL_ACCEPTED, SSL_REFUSED
from protocols.postgres.server_auth import LoginRefused

TLS_HANDSHAKE_RECORD = 0x16  # the first byte of a TLS ClientHello
ALPN_POSTGRESQL = "postgresql"  # the protocol name PostgreSQL 17 registered for direct TLS


def is_direct_tls(first_byte: int) -> bool:
    """Whether a connection that opens with ``first_byte`` is a direct TLS handshake.

    A startup packet opens with its length, big-endian: 0x16 there would mean a packet of
    more than 369 MB, far past any limit, so the two cannot be confused."""
    return first_byte == TLS_HANDSHAKE_RECORD


class TlsNegotiation:
    """One client connection's TLS state: ``offered`` (the listener has a certificate) and
    ``required`` (plaintext startups are refused)."""

    def __init__(self, *, offered: bool, required: bool) -> None:
        if required and not offered:
            raise ValueError("TLS cannot be required where it is not offered")
        self.offered = offered
        self.required = required
        self.encrypted = False
        self.direct = False

    def __repr__(self) -> str:
        return (
            f"TlsNegotiation(offered={self.offered}, required={self.required}, "
            f"encrypted={self.encrypted}, direct={self.direct})"
        )

    def answer_ssl_request(self) -> bytes:
        """``S`` (then the I/O layer starts TLS) or ``N``; inside TLS a violation."""
        if self.encrypted:
            raise ProtocolViolation("SSLRequest on a connection already encrypted")
        return SSL_ACCEPTED if self.offered else SSL_REFUSED

    def direct_tls(self) -> None:
        """The client opened with a ClientHello: accepted where TLS is offered."""
        if self.encrypted:
            raise ProtocolViolation("a TLS handshake inside TLS")
        if not self.offered:
            raise ProtocolViolation("direct TLS connection, but this listener offers no TLS")
        self.direct = True

    def handshake_done(self, alpn: str | None) -> None:
        """The TLS handshake finished with ``alpn`` selected (None: the client sent none)."""
        if self.direct and alpn != ALPN_POSTGRESQL:
            # PostgreSQL 17 insists, so that a TLS connection meant for another protocol
            # (HTTPS, say) cannot be replayed against the database.
            raise ProtocolViolation('direct TLS connection without ALPN "postgresql"')
        if alpn is not None and alpn != ALPN_POSTGRESQL:
            raise ProtocolViolation(f"TLS ALPN {alpn!r} is not postgresql")
        self.encrypted = True

    def startup(self) -> None:
        """A startup packet arrived; refused (LoginRefused, 28000) if TLS is required and missing."""
        if self.required and not self.encrypted:
            raise LoginRefused(
                SQLSTATE_INVALID_AUTHORIZATION,
                "this rotaproxy listener requires TLS: connect with sslmode=require or stronger",
            )
