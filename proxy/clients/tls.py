"""Client-side TLS: the listener's server context (certificate and key, the client CA for
certificate authentication), reloaded from its files on SIGHUP, and the upgrade of an
accepted connection in place.

The upgrade takes the bytes already read from the client: a MySQL client sends its TLS
ClientHello right behind the SSLRequest without waiting, and a PostgreSQL client with
``sslnegotiation=direct`` opens with it, so by the time the session knows TLS is wanted the
ClientHello may already sit in its reader. They are handed to the TLS protocol before its
handshake starts (``loop.start_tls`` itself offers no way to pass them).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from proxy.config import ClientsConfig
from proxy.core.endpoint import ConnectionClosed, Endpoint

log = logging.getLogger("proxy.clients")

TLS_HANDSHAKE_TIMEOUT = 10.0
ALPN_POSTGRESQL = "postgresql"


def client_ssl_context(config: ClientsConfig, engine: str) -> ssl.SSLContext:
    """The server context for a listener's clients (raises OSError/ssl.SSLError on bad files)."""
    assert config.tls_cert_file is not None and config.tls_key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    if config.tls_ca_file is not None:
        context.load_verify_locations(cafile=str(config.tls_ca_file))
        # Optional, not required: a client without a certificate completes the handshake and
        # is refused in its protocol's words (28000 / 1045), which drivers show; a certificate
        # that does not chain to the CA fails the handshake either way.
        context.verify_mode = ssl.CERT_OPTIONAL
    if engine == "postgres":
        context.set_alpn_protocols([ALPN_POSTGRESQL])
    return context


class ClientTls:
    """A listener's TLS context, rebuilt from its files by ``reload`` (SIGHUP): new handshakes
    use the new certificate, connections already encrypted keep theirs."""

    def __init__(self, config: ClientsConfig, engine: str) -> None:
        self.config = config
        self.engine = engine
        self.context = client_ssl_context(config, engine)
        self.required = config.tls == "require"

    def __repr__(self) -> str:
        return f"ClientTls(cert={self.config.tls_cert_file}, required={self.required})"

    def reload(self) -> bool:
        """Re-read the certificate, key and CA files; on failure the old context stays."""
        try:
            self.context = client_ssl_context(self.config, self.engine)
        except (OSError, ssl.SSLError) as exc:
            log.error(
                "client TLS files (%s, %s) not reloaded, the previous certificate stays: %s",
                self.config.tls_cert_file,
                self.config.tls_key_file,
                exc,
            )
            return False
        log.info("client TLS certificate reloaded from %s", self.config.tls_cert_file)
        return True


async def accept_tls(endpoint: Endpoint, context: ssl.SSLContext, received: bytes = b"") -> None:
    """Run the server side of a TLS handshake on ``endpoint``'s connection, ``received`` being
    bytes of it already read; afterwards the endpoint reads and writes through TLS. A failed
    handshake closes the connection (ConnectionClosed)."""
    transport = endpoint.transport
    assert transport is not None
    loop = asyncio.get_running_loop()
    transport.pause_reading()
    upgrade = asyncio.ensure_future(
        loop.start_tls(
            transport, endpoint, context, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
        )
    )
    try:
        if received:
            # start_tls puts its TLS protocol on the transport, then starts the handshake in a
            # later callback: give it the bytes in between, before it reads anything.
            for _ in range(10):
                await asyncio.sleep(0)
                if transport.get_protocol() is not endpoint:
                    break
            protocol = transport.get_protocol()
            if protocol is endpoint:
                raise ConnectionError("the TLS protocol did not take over the connection")
            _feed(protocol, received)
        tls_transport = await upgrade
    except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
        if not upgrade.done():
            upgrade.cancel()
        endpoint.abort()
        log.info("client TLS handshake failed: %s", exc)
        raise ConnectionClosed(f"TLS handshake failed: {exc}") from None
    if tls_transport is None:
        raise ConnectionClosed("connection closed during the TLS handshake")
    endpoint.transport = tls_transport


def _feed(protocol: Any, data: bytes) -> None:
    """Hand ``data`` to a protocol as if its transport had read it."""
    if isinstance(protocol, asyncio.BufferedProtocol) or hasattr(protocol, "buffer_updated"):
        view = memoryview(data)
        while view:
            buffer = protocol.get_buffer(len(view))
            count = min(len(buffer), len(view))
            buffer[:count] = view[:count]
            protocol.buffer_updated(count)
            view = view[count:]
    else:
        protocol.data_received(data)


def selected_alpn(endpoint: Endpoint) -> str | None:
    ssl_object = endpoint.transport.get_extra_info("ssl_object") if endpoint.transport else None
    return ssl_object.selected_alpn_protocol() if ssl_object is not None else None


def is_encrypted(endpoint: Endpoint) -> bool:
    return endpoint.transport is not None and endpoint.transport.get_extra_info("ssl_object") is not None


def certificate_names(endpoint: Endpoint) -> tuple[str, ...]:
    """The names a verified client certificate gives its holder: the subject's CN, then its
    DNS and URI subject alternative names. Empty without a (verified) certificate."""
    peercert = endpoint.transport.get_extra_info("peercert") if endpoint.transport else None
    if not peercert:
        return ()
    names: list[str] = []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(value)
    for kind, value in peercert.get("subjectAltName", ()):
        if kind in ("DNS", "URI", "email"):
            names.append(value)
    return tuple(names)
