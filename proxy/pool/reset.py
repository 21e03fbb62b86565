"""Resetting released connections: each reset runs in a task this module owns, bounded by
``RESET_TIMEOUT``, so no one gets a connection with its last borrower's session on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from proxy.core.server import ServerConnection

RESET_TIMEOUT: Final = 5.0

# Told when a reset ends: the connection, and why it failed (None: it is as good as new).
ResetDone = Callable[[ServerConnection, Exception | None], None]


class Resets:
    """The resets under way in one pool."""

    __slots__ = ("_done", "_tasks")

    def __init__(self, done: ResetDone) -> None:
        self._done = done
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, connection: ServerConnection) -> None:
        task = asyncio.create_task(self._reset(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reset(self, connection: ServerConnection) -> None:
        try:
            await asyncio.wait_for(connection.reset(), RESET_TIMEOUT)
        except Exception as exc:
            self._done(connection, exc)
            return
        self._done(connection, None)

    async def stop(self) -> None:
        """Cancel the resets under way (the pool is closing) and wait for them to end."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
