"""A rotation's view of a database: log in with one version of the secret (rotaproxy's own
connectors), test it, set a password; each engine's SQL is in its own module."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Generic, Protocol, TypeVar

from proxy.config import Address, CredentialsConfig, Engine, PoolConfig
from proxy.core.errors import UpstreamLoginError
from proxy.credentials.base import Credentials
from proxy.rotation.errors import RotationError
from proxy.rotation.secret import SecretValue
from proxy.rotation.settings import RotationSettings


class AdminConnection(Protocol):
    async def fetch_rows(self, sql: str) -> list[tuple[str | None, ...]]: ...

    def close(self) -> None: ...


ConnectionT = TypeVar("ConnectionT", bound=AdminConnection)


class Database(ABC, Generic[ConnectionT]):
    """Logs in with a secret's credentials (rotaproxy's own connectors) and sets passwords.

    Connections stay inside: every operation logs in, does its work and closes.
    """

    engine: Engine

    def __init__(self, settings: RotationSettings) -> None:
        self.settings = settings

    def pool_config(self, secret: SecretValue) -> PoolConfig:
        host = self.settings.upstream_host or secret.host
        if host is None:
            raise RotationError(f"{secret.where} has no 'host' (and no upstream host was given)")
        return PoolConfig(
            name=secret.secret_id,
            engine=self.engine,
            listen=Address("127.0.0.1", 0),  # not used: nothing listens during a rotation
            credentials=CredentialsConfig(source="secretsmanager", secret_id=secret.secret_id),
            upstream=Address(host, secret.port),
            database=secret.dbname,
            connect_timeout=self.settings.connect_timeout,
            tls=self.settings.tls,
            tls_ca_file=self.settings.tls_ca_file,
        )

    @abstractmethod
    async def _connect(self, config: PoolConfig, credentials: Credentials) -> ConnectionT:
        """Log in; raise PoolError (UpstreamLoginError when the server refuses)."""

    @abstractmethod
    async def _set_own_password(self, connection: ConnectionT, pending: SecretValue) -> None: ...

    @abstractmethod
    async def _set_password_as_master(self, connection: ConnectionT, pending: SecretValue) -> None: ...

    @contextlib.asynccontextmanager
    async def session(self, secret: SecretValue) -> AsyncIterator[ConnectionT]:
        connection = await self._connect(self.pool_config(secret), secret.credentials())
        try:
            yield connection
        finally:
            connection.close()

    async def can_log_in(self, secret: SecretValue) -> bool:
        """True if ``secret`` logs in, False if the server refuses it; other failures raise."""
        try:
            async with self.session(secret):
                return True
        except UpstreamLoginError as exc:
            if exc.is_auth_failure:
                return False
            raise

    async def select_one(self, secret: SecretValue) -> None:
        async with self.session(secret) as connection:
            rows = await connection.fetch_rows("SELECT 1")
        if rows != [("1",)]:
            raise RotationError(f"SELECT 1 as {secret.username!r} answered {rows!r}")

    async def set_own_password(self, login: SecretValue, pending: SecretValue) -> None:
        """Logged in as the user (with ``login``), give it ``pending``'s password.

        Raises UpstreamLoginError when ``login`` is refused, so the caller may try another.
        """
        async with self.session(login) as connection:
            await self._set_own_password(connection, pending)

    async def set_password_as_master(self, master: SecretValue, pending: SecretValue) -> None:
        """Logged in as the master user, make ``pending``'s user (base or clone) log in with its password."""
        async with self.session(master) as connection:
            await self._set_password_as_master(connection, pending)
