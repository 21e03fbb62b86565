"""What an engine (PostgreSQL, MySQL) plugs into the proxy, and what its sessions may ask of
the listener that accepted them.

The listener and the running proxy sit above the engines and call them through ``Engine``;
an engine's client session reaches back only through ``SessionHost``, a Protocol declared
here, so no import points up.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.clients.access import ClientAccess
from proxy.config import PoolConfig
from proxy.core.endpoint import Endpoint, Reader
from proxy.core.server import Connector
from proxy.pool.pool import Pool


class SessionHost(Protocol):
    """What a client session may ask of the listener that accepted it."""

    # Who may connect: TLS offered or required, and how clients prove who they are.
    access: ClientAccess

    @property
    def pools(self) -> Sequence[Pool]:
        """The pools clients of this address choose from."""
        ...

    def pool_for(self, database: str) -> Pool | None: ...

    def reject(self, reason: str) -> None:
        """Count a client refused before it reached a pool (e.g. an unknown database)."""

    def session_changed(self) -> None:
        """A session ended or moved to another pool (transaction mode, after a reload)."""

    def register_key(self, key: Hashable, session: Any) -> bool:
        """Claim ``key`` (a cancel key, a connection id) for ``session``; False if taken."""
        ...

    def session_for_key(self, key: Hashable) -> Any: ...

    def forget_key(self, key: Hashable | None) -> None: ...

    def admit(self, pool: Pool, endpoint: Endpoint) -> tuple[str, str] | None:
        """Why the client on ``endpoint`` may not use ``pool`` (a limit of ``proxy.core.limits``
        and the message it is told), or None; a refusal is counted."""
        ...


class ClientSession(Protocol):
    """One accepted client, as the listener and the running proxy see it."""

    peer: str
    pool: Pool | None  # None until the client has chosen one

    async def run(self) -> None: ...

    def close_gracefully(self, why: str) -> None:
        """End the session at its next safe idle point with the protocol's goodbye.

        ``why`` completes "terminating connection: ..." (e.g. "rotaproxy is shutting down").
        A transaction-mode client may instead move to its pool's successor (see Pool.retire).
        """

    def waiting_on_client(self) -> int:
        """What the session waits for from its client now: LOGGING_IN, IDLE, INCOMPLETE or
        BUSY (``proxy.core.limits``), for the listener's timeouts. Not on the hot path."""
        ...

    def end_for_limit(self, limit: str, message: str) -> None:
        """Tell the client it passed ``limit`` (its protocol's error, ``message``) and end."""


@dataclass(frozen=True, slots=True)
class Engine:
    name: str
    connector: Callable[[PoolConfig], Connector]  # opens logged-in server connections for a pool
    client_reader: Callable[[], Reader]  # the sans-IO reader for what a new client sends first
    client_session: Callable[[Endpoint, SessionHost], ClientSession]  # serves one accepted client
    # What a client turned away at accept is sent (limit, message → bytes), before any session.
    limit_error: Callable[[str, str], bytes]
