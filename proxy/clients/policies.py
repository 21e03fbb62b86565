"""The running proxy's client policies: one ``ClientAccess`` per distinct ``[pool.clients]``
and engine (so a listener a reload leaves alone keeps its object), the client secrets they
read (one source per secret id, polled at the shortest interval asked for), and what SIGHUP
does to them: re-read every client secret and reload every client certificate."""

from __future__ import annotations

import ssl
from collections.abc import Collection

from proxy.clients.access import TRUST, ClientAccess
from proxy.clients.directory import ClientSecretSource
from proxy.clients.tls import ClientTls
from proxy.config import ClientsConfig
from proxy.credentials.secrets_manager import SecretsManagerClients

PolicyKey = tuple[ClientsConfig, str]  # (the policy, the engine: ALPN differs)


class ClientPolicyError(Exception):
    """A policy cannot be put in place (its TLS files do not load); says which file and why."""


class ClientPolicies:
    def __init__(self, aws_clients: SecretsManagerClients) -> None:
        self._aws_clients = aws_clients
        self._accesses: dict[PolicyKey, ClientAccess] = {}
        self.secrets: dict[str, ClientSecretSource] = {}

    def access(self, config: ClientsConfig, engine: str) -> ClientAccess:
        """The access object for ``config`` (built on first use; ClientPolicyError if its TLS
        files do not load). Call ``start`` once the set of policies is final."""
        if config == TRUST.config:
            return TRUST
        key = (config, engine)
        access = self._accesses.get(key)
        if access is None:
            tls = None
            if config.tls_cert_file is not None and config.tls != "disable":
                try:
                    tls = ClientTls(config, engine)
                except (OSError, ssl.SSLError) as exc:
                    raise ClientPolicyError(
                        f"cannot load the client TLS certificate {config.tls_cert_file} "
                        f"(key {config.tls_key_file}, CA {config.tls_ca_file}): {exc}"
                    ) from None
            secret = None
            if config.auth == "password":
                assert config.secret_id is not None
                secret = self.secrets.get(config.secret_id)
                if secret is None:
                    secret = ClientSecretSource(config.secret_id, config.poll_interval, self._aws_clients)
                    self.secrets[config.secret_id] = secret
            access = self._accesses[key] = ClientAccess(config, tls, secret)
        return access

    def start(self) -> None:
        """Poll every client secret in use, at the shortest interval its policies ask for."""
        for secret_id, source in self.secrets.items():
            intervals = [
                config.poll_interval for config, _ in self._accesses if config.secret_id == secret_id
            ]
            if intervals:
                source.poll_interval = min(intervals)
            source.start_polling()

    async def retain(self, used: Collection[ClientAccess]) -> None:
        """Forget the policies no listener uses any more; close the secrets they alone read."""
        kept = {id(access) for access in used}
        self._accesses = {key: access for key, access in self._accesses.items() if id(access) in kept}
        needed = {access.secret.secret_id for access in self._accesses.values() if access.secret is not None}
        for secret_id in [secret_id for secret_id in self.secrets if secret_id not in needed]:
            await self.secrets.pop(secret_id).close()

    def refresh(self) -> None:
        """SIGHUP: re-read every client secret now, reload every client certificate."""
        for source in self.secrets.values():
            source.poll_soon()
        for access in self._accesses.values():
            if access.tls is not None:
                access.tls.reload()

    async def close(self) -> None:
        for source in self.secrets.values():
            await source.close()
        self.secrets.clear()
