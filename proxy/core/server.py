"""A server connection as the pool sees it: the base every engine's connection extends, its
states, and the ``Connector`` protocol an engine plugs in to open one."""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Hashable
from typing import Protocol

from proxy.credentials.base import Credentials


class ConnectionState(enum.Enum):
    """Where a pooled connection is; which may follow which is the pool's transition table
    (``proxy.pool.states``), and only the pool moves a connection."""

    IDLE = "idle"
    BUSY = "busy"
    KEPT = "kept"  # attached to an idle transaction-mode client; the pool takes it back at need
    RESETTING = "resetting"
    CLOSED = "closed"

    # Members are singletons: hash by identity (Enum's own hash runs Python code, and the
    # pool counts states on every borrow and release).
    __hash__ = object.__hash__


class ServerConnection(ABC):
    """A logged-in upstream connection as the pool sees it."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.variant: Hashable = None  # set by the pool to what the borrower asked for
        self.created_at = time.monotonic()
        self.idle_since = self.created_at
        self.state: ConnectionState | None = None  # None until the pool places it
        self.on_lost: Callable[[ServerConnection], None] | None = None

    @property
    def needs_reset(self) -> bool:
        """False when nothing session-scoped can have happened since the last reset."""
        return True

    @abstractmethod
    async def reset(self) -> None:
        """Bring the session back to its just-logged-in state; raise if that fails."""

    @abstractmethod
    async def check_alive(self) -> None:
        """A cheap round trip; raise if the connection is no longer usable."""

    @abstractmethod
    def close(self) -> None:
        """Close now (politely where the protocol allows)."""

    @property
    @abstractmethod
    def is_closed(self) -> bool: ...

    def connection_lost(self) -> None:
        """Engines call this when the transport goes away by itself."""
        if self.on_lost is not None:
            self.on_lost(self)


class Connector(Protocol):
    """Opens a logged-in server connection: ``await connector(credentials, generation, variant)``."""

    default_variant: Hashable  # what the pool opens when it fills itself to its minimum

    def __call__(
        self, credentials: Credentials, generation: int, variant: Hashable, /
    ) -> Awaitable[ServerConnection]: ...
