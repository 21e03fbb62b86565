"""The pool's periodic upkeep (PgBouncer's janitor): once a second, move to a new credential
version, take back what idle clients kept too long, close what idled or lived too long, and
open connections up to the pool's minimum."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Hashable
from typing import Final, Protocol

from proxy.config import PoolConfig
from proxy.core.server import Connector, ServerConnection
from proxy.pool.generations import Generations
from proxy.pool.keep import KeptConnections

log = logging.getLogger("proxy.pool")

JANITOR_INTERVAL: Final = 1.0


class Upkept(Protocol):
    """What the janitor needs of its pool."""

    name: str
    config: PoolConfig
    connector: Connector
    closing: bool
    paused: bool
    retired: bool  # by a reload: it keeps no idle connections and opens none
    idle: deque[ServerConnection]
    kept: KeptConnections
    generations: Generations

    @property
    def size(self) -> int: ...

    def must_retire(self, connection: ServerConnection) -> bool: ...

    def discard(self, connection: ServerConnection) -> None: ...

    async def open_connection(self, variant: Hashable, *, for_borrower: bool) -> ServerConnection: ...


class Janitor:
    """Owns the upkeep task of one pool: ``start`` it with the pool, ``stop`` it when it closes."""

    def __init__(self, pool: Upkept) -> None:
        self._pool = pool
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pool-{self._pool.name}-janitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while True:
            self._pool.generations.check_for_new_version()
            self.expire()
            await self._fill_to_minimum()
            await asyncio.sleep(JANITOR_INTERVAL)

    def expire(self) -> None:
        """Take back and close what has had its time."""
        pool, config = self._pool, self._pool.config
        now = time.monotonic()
        pool.kept.take_back_overdue(now, pool.must_retire)
        for connection in list(pool.idle):
            idle_too_long = now - connection.idle_since >= config.idle_timeout
            if (
                pool.retired
                or pool.must_retire(connection)
                or (idle_too_long and pool.size > config.min_server_connections)
            ):
                pool.discard(connection)

    async def _fill_to_minimum(self) -> None:
        pool = self._pool
        while (
            pool.size < pool.config.min_server_connections
            and not pool.closing
            and not pool.paused
            and not pool.retired
        ):
            try:
                await pool.open_connection(pool.connector.default_variant, for_borrower=False)
            except Exception as exc:
                log.warning('pool "%s": could not open a server connection: %s', pool.name, exc)
                return
