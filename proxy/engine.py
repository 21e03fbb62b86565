"""What an engine (PostgreSQL, MySQL) plugs into the engine-agnostic core."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.config import PoolConfig
from proxy.endpoint import Endpoint, Reader
from proxy.pool import Connector

if TYPE_CHECKING:
    from proxy.listener import ClientSession, Listener


@dataclass(frozen=True, slots=True)
class Engine:
    name: str
    connector: Callable[[PoolConfig], Connector]  # opens logged-in server connections for a pool
    client_reader: Callable[[], Reader]  # the sans-IO reader for what a new client sends first
    client_session: Callable[[Endpoint, Listener], ClientSession]  # serves one accepted client
