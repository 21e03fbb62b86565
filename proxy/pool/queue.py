"""The pool's wait queue, first come first served: borrowers waiting in ``borrow``, and the
cheaper places ``queue_for_release`` gives out, whose timeouts share one timer per pool."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Callable, Hashable

from proxy.core.errors import BorrowTimeout, PoolError
from proxy.core.server import ServerConnection
from proxy.pool.states import BUSY, StateCounts

# What a waiter is told: a connection borrowed for it, or None (a slot freed up: open one).
Waiter = asyncio.Future[ServerConnection | None]
Entry = tuple[Hashable, Waiter]  # the variant the waiter asked for, and its future
Handed = Callable[[Waiter], None]


class WaitQueue:
    """Who waits for a connection of which variant, in arrival order."""

    __slots__ = (
        "_pass_on",
        "_places",
        "_served",
        "_states",
        "_timed_out",
        "_timer",
        "borrow_timeout",
        "places_waiting",
        "waiters",
    )

    def __init__(
        self,
        borrow_timeout: float,
        states: StateCounts,
        *,
        pass_on: Callable[[ServerConnection | None], None],
        timed_out: Callable[[], BorrowTimeout],
        served: Callable[[float], None],
    ) -> None:
        """``pass_on`` takes what a waiter that gave up had already been handed; ``timed_out``
        counts a place that waited borrow_timeout in vain and says why; ``served`` is told how
        long a place waited for the connection it got."""
        self.borrow_timeout = borrow_timeout
        self._states = states
        self._pass_on = pass_on
        self._timed_out = timed_out
        self._served = served
        self.waiters: deque[Entry] = deque()
        # The places queue_for_release gave out, oldest first, with their deadlines.
        self._places: deque[tuple[float, Entry]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.places_waiting = 0  # given out, and their holders not told yet

    async def wait(self, variant: Hashable) -> ServerConnection | None:
        """Wait in line: a connection borrowed for us, or None (a slot freed up: open one)."""
        waiter: Waiter = asyncio.get_running_loop().create_future()
        entry = (variant, waiter)
        self.waiters.append(entry)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Handed something in the same tick we were cancelled: pass it on.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_on(waiter.result())
            raise
        finally:
            # Whoever hands a waiter its result takes it off the queue first: only a cancelled
            # one is still queued. (A failed deque.remove formats the entry's repr: slow.)
            if waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self.waiters.remove(entry)

    def place(self, handed: Handed, variant: Hashable) -> Waiter:
        """A place in line without a task; ``handed`` gets its future once it is done (see
        ``Pool.queue_for_release``)."""
        loop = asyncio.get_running_loop()
        waiter: Waiter = loop.create_future()
        entry = (variant, waiter)
        self.waiters.append(entry)
        self.places_waiting += 1
        now = loop.time()
        # One timer for the whole queue: every place has the same timeout, so the oldest
        # place still waiting is always the next to time out.
        places = self._places
        while places and places[0][1][1].done():
            places.popleft()  # served: most places leave from the front
        places.append((now + self.borrow_timeout, entry))
        if self._timer is None:
            self._timer = loop.call_at(now + self.borrow_timeout, self._expire_places)
        waiter.add_done_callback(functools.partial(self._left, entry, now, handed))
        return waiter

    def _left(self, entry: Entry, placed_at: float, handed: Handed, waiter: Waiter) -> None:
        self.places_waiting -= 1
        if waiter.cancelled():
            with contextlib.suppress(ValueError):
                self.waiters.remove(entry)
        elif waiter.exception() is None and waiter.result() is not None:
            self._served(asyncio.get_running_loop().time() - placed_at)
        handed(waiter)

    def _expire_places(self) -> None:
        """borrow_timeout passed for the oldest places in line: they fail."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        places = self._places
        while places:
            deadline, entry = places[0]
            waiter = entry[1]
            if not waiter.done():
                if deadline > now:
                    self._timer = loop.call_at(deadline, self._expire_places)
                    return
                with contextlib.suppress(ValueError):
                    self.waiters.remove(entry)
                waiter.set_exception(self._timed_out())
            places.popleft()

    def hand(self, connection: ServerConnection) -> bool:
        """Give ``connection`` to the first waiter of its variant; False if nobody waits for one."""
        for entry in self.waiters:
            variant, waiter = entry
            if variant == connection.variant and not waiter.done():
                self.waiters.remove(entry)
                self._states.move(connection, BUSY)
                waiter.set_result(connection)
                return True
        return False

    def anyone_waiting(self) -> bool:
        return any(not waiter.done() for _, waiter in self.waiters)

    def wake_one(self) -> None:
        """A slot freed up: let the first waiter try to open a connection itself."""
        while self.waiters:
            _, waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        """Let every waiter try again (the pool resumed)."""
        while self.waiters:
            _, waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def close(self, error: Callable[[], PoolError]) -> None:
        """The pool is closing: every waiter fails, each with an ``error()`` of its own."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(error())
        self.waiters.clear()
