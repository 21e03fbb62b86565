"""One side of a proxied connection: an ``asyncio.Protocol`` with two modes.

In *control* mode (startup, authentication, reset) received bytes go into a sans-IO
reader and coroutines await whole messages with ``receive``. In *relay* mode each received
chunk goes straight to a ``forward`` callback with no copy and no task switch; back-pressure
is mirrored: when this side's transport cannot take more writes, the peer stops reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, TypeVar, cast

from protocols.events import NeedData

T = TypeVar("T")

# In control mode a peer has no business sending more than this before we read it.
CONTROL_BUFFER_LIMIT = 1 << 20


class Reader(Protocol):
    def receive_data(self, data: bytes) -> None: ...
    def take_buffer(self) -> bytes: ...
    def __len__(self) -> int: ...


class ConnectionClosed(Exception):
    """The peer closed the connection (or it failed) while we waited for a message."""


class Endpoint(asyncio.Protocol):
    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.transport: asyncio.Transport | None = None
        self.peer: Endpoint | None = None
        self.closed = False
        self.close_reason: BaseException | None = None
        self._forward: Callable[[bytes], None] | None = None
        self._data_waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._on_lost: list[Callable[[Endpoint], None]] = []
        # Every chunk received: the client watch tells a stalled client from a slow one by it.
        self.chunks_received = 0

    # --- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks_received += 1
        forward = self._forward
        if forward is not None:
            forward(data)
            return
        self.reader.receive_data(data)
        if len(self.reader) > CONTROL_BUFFER_LIMIT:
            self._pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport: half-open sessions are not a thing here

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.close_reason = exc
        self._wake()
        callbacks, self._on_lost = self._on_lost, []
        for callback in callbacks:
            callback(self)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer._pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer._resume_reading()

    # --- control mode ----------------------------------------------------------------------
    async def receive(self, parse: Callable[[], T | NeedData]) -> T:
        """Await until ``parse()`` (a reader method) returns something other than NEED_DATA."""
        while True:
            result = parse()
            if not isinstance(result, NeedData):
                if self._paused_reading and len(self.reader) < CONTROL_BUFFER_LIMIT:
                    self._resume_reading()
                return result
            if self.closed:
                raise ConnectionClosed("connection closed") from self.close_reason
            self._resume_reading()
            self._data_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._data_waiter
            finally:
                self._data_waiter = None

    async def wait_closed(self) -> None:
        """Until the peer closes (any data received meanwhile is dropped)."""
        while not self.closed:
            self.reader.take_buffer()
            self._data_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._data_waiter
            finally:
                self._data_waiter = None

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def on_lost(self, callback: Callable[[Endpoint], None]) -> None:
        if self.closed:
            callback(self)
        else:
            self._on_lost.append(callback)

    def remove_on_lost(self, callback: Callable[[Endpoint], None]) -> None:
        if callback in self._on_lost:
            self._on_lost.remove(callback)

    # --- relay mode ------------------------------------------------------------------------
    def start_relay(self, forward: Callable[[bytes], None]) -> None:
        """Send every received byte to ``forward``, starting with what is buffered now."""
        leftover = self.reader.take_buffer()
        self._forward = forward
        if leftover:
            forward(leftover)
        self._resume_reading()

    def stop_relay(self) -> None:
        self._forward = None
        self.peer = None
        self._resume_reading()

    @property
    def relaying(self) -> bool:
        return self._forward is not None

    def pause_reading(self) -> None:
        self._pause_reading()

    def resume_reading(self) -> None:
        self._resume_reading()

    # --- internals -------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause_reading(self) -> None:
        if not self._paused_reading and self.transport is not None and not self.closed:
            self._paused_reading = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused_reading and self.transport is not None and not self.closed:
            self._paused_reading = False
            self.transport.resume_reading()
