"""Who a MySQL client is: client-side TLS (CLIENT_SSL) and client authentication
(caching_sha2_password or mysql_native_password against the client secret, or a TLS client
certificate), carried out on a client session's endpoint for the sans-IO cores in
``protocols/mysql/client_tls.py`` and ``protocols/mysql/server_auth.py``.

``MySqlClientSecurity`` is what ``MySqlClientSession`` calls: ``greeting_capabilities`` and
``plugin`` for its greeting, ``handshake_response`` with the client's first packet (it runs
the TLS handshake after an SSLRequest and reads the real response), and ``authenticate``
with that response, before any pool is chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from protocols.mysql import constants as c
from protocols.mysql.client_tls import MySqlTlsNegotiation
from protocols.mysql.messages import ErrPacket, HandshakeResponse41
from protocols.mysql.packets import Packet, PacketReader
from protocols.mysql.server_auth import LoginRefused, MySqlLogin, access_denied
from proxy.clients.access import CLIENT_AUTH_FAILED, CLIENT_AUTH_UNAVAILABLE, TLS_REQUIRED, ClientAccess
from proxy.clients.tls import accept_tls, certificate_names
from proxy.core.endpoint import Endpoint
from proxy.credentials.base import CredentialsError

log = logging.getLogger("proxy.clients")


class LoginError(Exception):
    """Refuse the login with ``packet`` (ERR)."""

    def __init__(self, packet: ErrPacket) -> None:
        super().__init__(packet.message)
        self.packet = packet


class MySqlClientSecurity:
    def __init__(
        self,
        endpoint: Endpoint,
        reader: PacketReader,
        access: ClientAccess,
        peer: str,
        refused: Callable[[str], None],
    ) -> None:
        self.endpoint = endpoint
        self.refused = refused  # counts a refusal by reason (the listener's metrics)
        self.reader = reader
        self.access = access
        self.peer = peer
        self.host = peer.rsplit(":", 1)[0] if ":" in peer else peer
        self.negotiation = MySqlTlsNegotiation(offered=access.tls_offered, required=access.tls_required)

    def __repr__(self) -> str:
        return f"MySqlClientSecurity(peer={self.peer}, {self.negotiation!r})"

    def greeting_capabilities(self, capabilities: int) -> int:
        return self.negotiation.greeting_capabilities(capabilities)

    @property
    def plugin(self) -> str:
        """The plugin the greeting names: the configured one for password logins."""
        if self.access.auth == "password":
            return self.access.config.mysql_auth_plugin
        return c.MYSQL_NATIVE_PASSWORD

    async def handshake_response(self, first: Packet) -> Packet:
        """The packet holding the client's handshake response: ``first``, or after an
        SSLRequest the one that follows the TLS handshake (sequence id 2)."""
        try:
            wants_tls = self.negotiation.first_packet(first.payload)
        except LoginRefused as exc:
            self.refused(TLS_REQUIRED)
            raise LoginError(exc.error) from None
        if wants_tls:
            # The ClientHello may already have arrived behind the SSLRequest.
            await accept_tls(self.endpoint, self.access.tls_context(), self.reader.take_buffer())
            self.negotiation.handshake_done()
            first = await self.endpoint.receive(self.reader.next_event)
            if first.sequence_id != self.negotiation.response_sequence_id:
                raise LoginError(
                    ErrPacket(c.ER_NET_PACKETS_OUT_OF_ORDER, "Got packets out of order", "08S01")
                )
        try:
            self.negotiation.login()
        except LoginRefused as exc:
            self.refused(TLS_REQUIRED)
            log.info("client %s refused: TLS is required", self.peer)
            raise LoginError(exc.error) from None
        return first

    async def authenticate(
        self,
        response: HandshakeResponse41,
        nonce: bytes,
        send: Callable[[bytes], None],
        receive: Callable[[], Awaitable[bytes]],
    ) -> None:
        """Prove the response's user by the listener's method; LoginError (1045) otherwise.
        ``send`` frames a payload with the next sequence id; ``receive`` gives the next
        client packet's payload."""
        auth = self.access.auth
        if auth == "cert":
            self._check_certificate(response)
        elif auth == "password":
            await self._password(response, nonce, send, receive)

    def _check_certificate(self, response: HandshakeResponse41) -> None:
        user = response.username
        names = certificate_names(self.endpoint)
        if user not in names:
            why = f"certificate names {list(names)}" if names else "no client certificate"
            self.refused(CLIENT_AUTH_FAILED)
            log.info("client %s refused: %s, not user %r", self.peer, why, user)
            raise LoginError(access_denied(user, self.host, using_password=False).error)
        log.debug("client %s authenticated as %r by certificate", self.peer, user)

    async def _password(
        self,
        response: HandshakeResponse41,
        nonce: bytes,
        send: Callable[[bytes], None],
        receive: Callable[[], Awaitable[bytes]],
    ) -> None:
        user = response.username
        try:
            directory = await self.access.directory()
        except CredentialsError as exc:
            log.warning("client %s refused: %s", self.peer, exc)
            self.refused(CLIENT_AUTH_UNAVAILABLE)
            raise LoginError(ErrPacket(c.ER_UNKNOWN_ERROR, f"cannot check passwords now: {exc}")) from None
        entry = directory.get(user)
        login = MySqlLogin(
            user,
            self.host,
            entry.mysql if entry is not None else None,
            nonce,
            plugin=self.plugin,
            secure=self.negotiation.encrypted,
        )
        plugin = response.auth_plugin_name if response.capabilities & c.CLIENT_PLUGIN_AUTH else None
        try:
            answer = login.start(plugin, response.auth_response)
            while True:
                if answer is not None:
                    send(answer)
                if login.done:
                    break
                answer = login.receive(await receive())
        except LoginRefused as exc:
            self.refused(CLIENT_AUTH_FAILED)
            known = "" if entry is not None else " (no such user in the client secret)"
            log.info("client %s: %s login failed for user %r%s", self.peer, login.plugin, user, known)
            raise LoginError(exc.error) from None
        log.debug(
            "client %s authenticated as %r (%s, client secret version %s)",
            self.peer,
            user,
            login.plugin,
            directory.version_id,
        )
