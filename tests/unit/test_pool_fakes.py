"""An upstream in memory for the pool's unit tests: a real ``ServerConnection`` and ``Connector``
that record what the pool asks of them and fail when told to, and a credential source whose
version a test moves on. (No tests here: the ``test_pool_*`` modules import these.)"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Hashable

from proxy.config import Address, CredentialsConfig, PoolConfig
from proxy.core.errors import UpstreamLoginError, UpstreamUnavailable
from proxy.core.server import ConnectionState, ServerConnection
from proxy.credentials.base import Credentials, CredentialSource
from proxy.pool.pool import Pool

USER = "app"


class MemoryConnection(ServerConnection):
    """A logged-in connection that is only a record of what the pool did with it."""

    def __init__(self, generation: int, credentials: Credentials) -> None:
        super().__init__(generation)
        self.credentials = credentials
        self.dirty = False  # something session-scoped happened: it needs a reset
        self.resets = 0
        self.checks = 0
        self.closes = 0
        self.reset_fails = False
        self.dead = False  # check_alive fails
        self.reset_gate: asyncio.Event | None = None  # set: resets wait for it
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryConnection({self.credentials.version_id}, gen={self.generation}, {self.state})"

    @property
    def needs_reset(self) -> bool:
        return self.dirty

    async def reset(self) -> None:
        self.resets += 1
        if self.reset_gate is not None:
            await self.reset_gate.wait()
        if self.reset_fails:
            raise ConnectionResetError("reset failed")
        self.dirty = False

    async def check_alive(self) -> None:
        self.checks += 1
        if self.dead:
            raise ConnectionResetError("no answer")

    def close(self) -> None:
        self.closes += 1
        self._closed = True

    @property
    def is_closed(self) -> bool:
        return self._closed

    def hang_up(self) -> None:
        """The server closes the connection by itself (restart, terminate)."""
        self._closed = True
        self.connection_lost()


class Refused(UpstreamLoginError):
    """The upstream refused the password."""

    @property
    def is_auth_failure(self) -> bool:
        return True


class MemoryUpstream:
    """The ``Connector``: logs in whoever has the password it accepts, while it is up."""

    default_variant: Hashable = None

    def __init__(self, password: str = "pw-1") -> None:
        self.password = password
        self.down = False
        self.login_gate: asyncio.Event | None = None  # set: logins wait for it
        self.opened: list[MemoryConnection] = []
        self.logins: list[tuple[str | None, int, Hashable]] = []  # (version, generation, variant)

    async def __call__(
        self, credentials: Credentials, generation: int, variant: Hashable, /
    ) -> MemoryConnection:
        self.logins.append((credentials.version_id, generation, variant))
        if self.login_gate is not None:
            await self.login_gate.wait()
        if self.down:
            raise UpstreamUnavailable("the upstream is down")
        if credentials.password != self.password:
            raise Refused(f"password of version {credentials.version_id} refused")
        connection = MemoryConnection(generation, credentials)
        self.opened.append(connection)
        return connection

    def by_state(self) -> dict[ConnectionState, int]:
        """What the pool's counts must say: every connection opened, counted by its state."""
        found = Counter(connection.state for connection in self.opened if connection.state is not None)
        return {state: found[state] for state in ConnectionState}


class VersionedSource(CredentialSource):
    """Credentials a test moves to a new version (``publish``), as a rotation would."""

    description = "test credentials"

    def __init__(self) -> None:
        super().__init__()
        self.latest = Credentials(USER, "pw-1", version_id="v1")
        self.offered_after_failure: Credentials | None = None

    async def _fetch(self) -> Credentials:
        return self.latest

    def publish(self, version: str, password: str) -> None:
        """A new version becomes current; the pool learns of it at its next read."""
        self.latest = Credentials(USER, password, version_id=version)

    async def after_auth_failure(self, failed: Credentials) -> Credentials | None:
        return self.offered_after_failure


@dataclasses.dataclass
class Scripted:
    """A pool over a ``MemoryUpstream``, and the source of its credentials."""

    pool: Pool
    upstream: MemoryUpstream
    source: VersionedSource

    def counts_are_true(self) -> bool:
        return self.pool.counts == self.upstream.by_state()


def config(**changes: object) -> PoolConfig:
    """A pool config with short timeouts, so that what waits in a test waits briefly."""
    base = PoolConfig(
        name="unit",
        engine="postgres",
        listen=Address("127.0.0.1", 1),
        credentials=CredentialsConfig(source="static", username=USER, password="pw-1"),
        max_server_connections=2,
        borrow_timeout=0.2,
        connect_timeout=0.2,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def scripted_pool(**changes: object) -> AsyncIterator[Scripted]:
    """A pool (not started: no janitor) over an upstream in memory; closed on the way out."""
    upstream, source = MemoryUpstream(), VersionedSource()
    pool = Pool(config(**changes), source, upstream)
    try:
        yield Scripted(pool, upstream, source)
    finally:
        await pool.close()


async def settle() -> None:
    """Let the callbacks and tasks the pool scheduled run (resets, a queue's bookkeeping)."""
    for _ in range(5):
        await asyncio.sleep(0)
