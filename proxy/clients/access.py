"""A listener's client policy, as its sessions use it: whether TLS is offered or required,
and how a client proves who it is (``trust``, a password from the client secret, or a TLS
client certificate). The running proxy builds one per listener from its pools'
``[pool.clients]`` (equal for every pool on a listener) and replaces it on reload."""

from __future__ import annotations

import ssl

from proxy.clients.directory import ClientDirectory, ClientSecretSource
from proxy.clients.tls import ClientTls
from proxy.config import ClientsConfig

# Why a login was refused, as the listener counts it (rotaproxy_listener_connections_rejected_total).
TLS_REQUIRED = "tls_required"
CLIENT_AUTH_FAILED = "client_auth_failed"  # a wrong password, an unknown user, no or the wrong certificate
CLIENT_AUTH_UNAVAILABLE = "client_auth_unavailable"  # the client secret could not be read


class ClientAccess:
    def __init__(
        self,
        config: ClientsConfig,
        tls: ClientTls | None = None,
        secret: ClientSecretSource | None = None,
    ) -> None:
        if config.auth == "password" and secret is None:
            raise ValueError("password authentication needs the client secret")
        self.config = config
        self.tls = tls
        self.secret = secret

    def __repr__(self) -> str:
        return f"ClientAccess(auth={self.config.auth!r}, tls={self.config.tls!r})"

    @property
    def auth(self) -> str:
        return self.config.auth

    @property
    def tls_offered(self) -> bool:
        return self.tls is not None

    @property
    def tls_required(self) -> bool:
        return self.tls is not None and self.tls.required

    def tls_context(self) -> ssl.SSLContext:
        assert self.tls is not None
        return self.tls.context

    async def directory(self) -> ClientDirectory:
        """The client secret's loaded version (CredentialsError when it cannot be read)."""
        assert self.secret is not None
        return await self.secret.directory()

    def state(self) -> dict[str, object]:
        """For /pools: the policy and the client secret's version (never a value)."""
        return {
            "auth": self.config.auth,
            "tls": self.config.tls,
            "secret": self.secret.state() if self.secret is not None else None,
        }


TRUST = ClientAccess(ClientsConfig())
