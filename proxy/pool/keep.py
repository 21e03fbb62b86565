"""The connections idle transaction-mode clients keep attached while nobody else needs them.

The words for it, everywhere: a client *keeps* its connection when a transaction ends, *uses
it again* for its next one, or the pool *takes it back* (the client's ``take_back`` callback,
which must release it) when a borrower, a pause, a drain or the janitor needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Final

from proxy.core.server import ServerConnection
from proxy.pool.states import BUSY, KEPT, StateCounts

# How long an idle transaction-mode client may keep a server connection nobody asked for.
KEEP_LIMIT: Final = 1.0

TakeBack = Callable[[], None]


class KeptConnections:
    """The kept connections of one pool, longest-kept first, each with its client's ``take_back``."""

    __slots__ = ("_kept", "_states")

    def __init__(self, states: StateCounts) -> None:
        self._states = states
        self._kept: dict[ServerConnection, TakeBack] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, connection: ServerConnection) -> bool:
        return connection in self._kept

    def keep(self, connection: ServerConnection, take_back: TakeBack) -> None:
        """The borrower of ``connection`` went idle and keeps it (the pool agreed)."""
        connection.idle_since = time.monotonic()
        self._states.move(connection, KEPT)
        self._kept[connection] = take_back

    def use_again(self, connection: ServerConnection) -> None:
        """The client that kept ``connection`` uses it again (or is about to release it)."""
        if self._kept.pop(connection, None) is not None:
            self._states.move(connection, BUSY)

    def take_back(self, connection: ServerConnection) -> None:
        """Have the client that kept ``connection`` release it (to a waiter, or idle)."""
        take_back = self._kept.pop(connection)
        self._states.move(connection, BUSY)  # the client's again, for the moment it takes to release it
        take_back()

    def take_back_one(self, variant: Hashable) -> bool:
        """Take back the longest-kept connection of ``variant``; False if there is none."""
        kept = next((connection for connection in self._kept if connection.variant == variant), None)
        if kept is None:
            return False
        self.take_back(kept)
        return True

    def take_back_all(self) -> int:
        """Take back every kept connection (a pause, a drain, a reload); how many there were."""
        kept = list(self._kept)
        for connection in kept:
            if connection in self._kept:  # a take_back may have closed others
                self.take_back(connection)
        return len(kept)

    def take_back_overdue(self, now: float, must_retire: Callable[[ServerConnection], bool]) -> None:
        """The janitor's round: take back what was kept ``KEEP_LIMIT`` by ``now``, or is due to retire."""
        for connection in list(self._kept):
            if connection in self._kept and (
                now - connection.idle_since >= KEEP_LIMIT or must_retire(connection)
            ):
                self.take_back(connection)

    def forget(self, connection: ServerConnection) -> None:
        """``connection`` closed: nobody keeps it any more."""
        self._kept.pop(connection, None)
