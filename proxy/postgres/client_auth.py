"""Who a PostgreSQL client is: client-side TLS (SSLRequest and PostgreSQL 17's direct TLS)
and client authentication (SCRAM-SHA-256 against the client secret, or a TLS client
certificate), carried out on a client session's endpoint for the sans-IO cores in
``protocols/postgres/client_tls.py`` and ``protocols/postgres/server_auth.py``.

``PgClientSecurity`` is what ``PgClientSession`` calls: ``next_event`` while reading the
startup packets, ``ssl_request`` / ``direct_tls`` when a client asks for TLS, ``startup``
when its startup packet arrives, and ``authenticate`` with the user it names, before any
pool is chosen (as PostgreSQL authenticates before it looks at the database).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from protocols.events import NeedData
from protocols.postgres.client_tls import TlsNegotiation, is_direct_tls
from protocols.postgres.framing import MessageReader, StartupReader
from protocols.postgres.messages import (
    SQLSTATE_CANNOT_CONNECT,
    SQLSTATE_INVALID_AUTHORIZATION,
    SSL_ACCEPTED,
    StartupEvent,
)
from protocols.postgres.server_auth import LoginRefused, ScramLogin
from proxy.clients.access import CLIENT_AUTH_FAILED, CLIENT_AUTH_UNAVAILABLE, TLS_REQUIRED, ClientAccess
from proxy.clients.tls import accept_tls, certificate_names, selected_alpn
from proxy.core.endpoint import Endpoint
from proxy.credentials.base import CredentialsError
from proxy.postgres.settings import ClientError

log = logging.getLogger("proxy.clients")

# SASL messages are a few hundred bytes; a stranger gets no more buffer than this.
AUTH_MESSAGE_LIMIT = 8192


class DirectTls:
    """The client opened with a TLS ClientHello (``sslnegotiation=direct``)."""


DIRECT_TLS = DirectTls()


class PgClientSecurity:
    def __init__(
        self,
        endpoint: Endpoint,
        reader: StartupReader,
        access: ClientAccess,
        peer: str,
        refused: Callable[[str], None],
    ) -> None:
        self.endpoint = endpoint
        self.refused = refused  # counts a refusal by reason (the listener's metrics)
        self.reader = reader
        self.access = access
        self.peer = peer
        self.negotiation = TlsNegotiation(offered=access.tls_offered, required=access.tls_required)

    def __repr__(self) -> str:
        return f"PgClientSecurity(peer={self.peer}, {self.negotiation!r})"

    def next_event(self) -> StartupEvent | DirectTls | NeedData:
        """The next startup packet, or DIRECT_TLS when the connection opens with a ClientHello."""
        negotiation = self.negotiation
        if negotiation.offered and not negotiation.encrypted and len(self.reader):
            first = self.reader.take_buffer()
            self.reader.receive_data(first)  # (a peek: startup packets are few and small)
            if is_direct_tls(first[0]):
                return DIRECT_TLS
        return self.reader.next_event()

    async def ssl_request(self) -> None:
        answer = self.negotiation.answer_ssl_request()
        self.endpoint.write(answer)
        if answer == SSL_ACCEPTED:
            await accept_tls(self.endpoint, self.access.tls_context())
            self.negotiation.handshake_done(selected_alpn(self.endpoint))

    async def direct_tls(self) -> None:
        self.negotiation.direct_tls()
        await accept_tls(self.endpoint, self.access.tls_context(), self.reader.take_buffer())
        self.negotiation.handshake_done(selected_alpn(self.endpoint))

    def startup(self) -> None:
        try:
            self.negotiation.startup()
        except LoginRefused as exc:
            self.refused(TLS_REQUIRED)
            raise ClientError(exc.code, str(exc)) from None

    async def authenticate(self, user: str) -> None:
        """Prove ``user`` by the listener's method; ClientError (28P01 / 28000) otherwise."""
        auth = self.access.auth
        if auth == "cert":
            self._check_certificate(user)
        elif auth == "password":
            await self._scram(user)

    def _check_certificate(self, user: str) -> None:
        names = certificate_names(self.endpoint)
        if not names:
            self.refused(CLIENT_AUTH_FAILED)
            log.info("client %s refused: no client certificate (user %r)", self.peer, user)
            raise ClientError(
                SQLSTATE_INVALID_AUTHORIZATION, "connection requires a valid client certificate"
            )
        if user not in names:
            self.refused(CLIENT_AUTH_FAILED)
            log.info("client %s refused: certificate names %s, not user %r", self.peer, list(names), user)
            raise ClientError(
                SQLSTATE_INVALID_AUTHORIZATION, f'certificate authentication failed for user "{user}"'
            )
        log.debug("client %s authenticated as %r by certificate", self.peer, user)

    async def _scram(self, user: str) -> None:
        try:
            directory = await self.access.directory()
        except CredentialsError as exc:
            self.refused(CLIENT_AUTH_UNAVAILABLE)
            log.warning("client %s refused: %s", self.peer, exc)
            raise ClientError(SQLSTATE_CANNOT_CONNECT, f"cannot check passwords now: {exc}") from None
        entry = directory.get(user)
        login = ScramLogin(user, entry.scram if entry is not None else None)
        endpoint, startup_reader = self.endpoint, self.reader
        reader = MessageReader(AUTH_MESSAGE_LIMIT)
        reader.receive_data(startup_reader.take_buffer())
        endpoint.reader = reader
        try:
            endpoint.write(login.start())
            while not login.done:
                message = await endpoint.receive(reader.next_event)
                endpoint.write(login.receive(message))
        except LoginRefused as exc:
            self.refused(CLIENT_AUTH_FAILED)
            known = "" if entry is not None else " (no such user in the client secret)"
            log.info("client %s: password authentication failed for user %r%s", self.peer, user, known)
            raise ClientError(exc.code, str(exc)) from None
        finally:
            startup_reader.receive_data(reader.take_buffer())
            endpoint.reader = startup_reader
        log.debug(
            "client %s authenticated as %r (SCRAM-SHA-256, client secret version %s)",
            self.peer,
            user,
            directory.version_id,
        )
