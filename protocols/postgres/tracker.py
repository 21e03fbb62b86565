"""Trackers that follow a relayed PostgreSQL stream by its message headers alone.

Theory of operation: the relay forwards every chunk as it arrives and feeds the same chunk
to a tracker. A tracker walks the message headers (type byte + length), skipping bodies
without copying them, and keeps only what the proxy decides with:

* ``FrontendTracker`` (client → server) counts the requests that each owe exactly one
  ReadyForQuery (Query, Sync, FunctionCall), notices extended-protocol messages not yet
  closed by a Sync, and stops at Terminate so the proxy can keep the server connection.
* ``BackendTracker`` (server → client) counts ReadyForQuery messages, remembers the last
  transaction status and follows ParameterStatus updates.

The server connection is at a safe point, one that can be reset and handed to someone
else, only when every owed ReadyForQuery has arrived and the client stream sits between
messages with no open extended-protocol batch (see ``at_safe_point``).
"""

from __future__ import annotations

from protocols.errors import ProtocolViolation
from protocols.postgres.messages import (
    HEADER,
    PARAMETER_STATUS,
    READY_FOR_QUERY,
    STATUS_IDLE,
    TRANSACTION_STATUSES,
    UINT32,
    read_cstring,
)

READY_FOR_QUERY_BYTE = READY_FOR_QUERY[0]
PARAMETER_STATUS_BYTE = PARAMETER_STATUS[0]
# Bodies the backend tracker must see whole; a ParameterStatus is a name and a short value.
TRACKED_BODY_LIMIT = 64 * 1024

_FRONTEND_SYNC_POINTS = frozenset(b"QSF")  # Query, Sync, FunctionCall
_FRONTEND_EXTENDED = frozenset(b"PBEDC")  # Parse, Bind, Execute, Describe, Close
_FRONTEND_SYNC = ord("S")
_FRONTEND_TERMINATE = ord("X")


class FrontendTracker:
    """Follows client → server messages; see the module docstring."""

    __slots__ = ("_partial", "_skip", "_torn", "sync_points", "terminated", "unsynced")

    def __init__(self) -> None:
        self.sync_points = 0
        self.unsynced = False
        self.terminated = False
        self._skip = 0
        self._partial = b""
        # Set when the start of a Terminate header was already forwarded with the chunk
        # before: the server then holds a torn message and the connection cannot be reused.
        self._torn = False

    @property
    def at_boundary(self) -> bool:
        return self._skip == 0 and not self._partial and not self._torn

    def feed(self, data: bytes) -> int:
        """Follow ``data``; return how many of its bytes to forward (all, unless Terminate)."""
        if self.terminated:
            return 0
        offset = len(self._partial)
        if offset:
            data = self._partial + data
            self._partial = b""
        pos = self._skip
        size = len(data)
        while pos < size:
            if size - pos < HEADER.size:
                self._partial = data[pos:]
                self._skip = 0
                return len(data) - offset
            kind = data[pos]
            (length,) = UINT32.unpack_from(data, pos + 1)
            if length < 4:
                raise ProtocolViolation(f"client message declares length {length} (< 4)")
            if kind == _FRONTEND_TERMINATE:
                self.terminated = True
                self._skip = 0
                self._torn = pos < offset
                return max(pos - offset, 0)
            if kind in _FRONTEND_SYNC_POINTS:
                self.sync_points += 1
                if kind == _FRONTEND_SYNC:
                    self.unsynced = False
            elif kind in _FRONTEND_EXTENDED:
                self.unsynced = True
            pos += 1 + length
        self._skip = pos - size
        return len(data) - offset


class BackendTracker:
    """Follows server → client messages; see the module docstring."""

    __slots__ = ("_partial", "_skip", "parameters", "ready_count", "transaction_status")

    def __init__(self, parameters: dict[str, str] | None = None) -> None:
        self.ready_count = 0
        self.transaction_status = STATUS_IDLE
        self.parameters: dict[str, str] = dict(parameters or {})
        self._skip = 0
        self._partial = b""

    @property
    def at_boundary(self) -> bool:
        return self._skip == 0 and not self._partial

    def feed(self, data: bytes) -> None:
        if self._partial:
            data = self._partial + data
            self._partial = b""
        pos = self._skip
        size = len(data)
        while pos < size:
            if size - pos < HEADER.size:
                self._partial = data[pos:]
                self._skip = 0
                return
            kind = data[pos]
            (length,) = UINT32.unpack_from(data, pos + 1)
            if length < 4:
                raise ProtocolViolation(f"server message declares length {length} (< 4)")
            end = pos + 1 + length
            if kind in (READY_FOR_QUERY_BYTE, PARAMETER_STATUS_BYTE):
                if end > size:
                    if length > TRACKED_BODY_LIMIT:
                        raise ProtocolViolation(f"server message {chr(kind)!r} is too long")
                    self._partial = data[pos:]
                    self._skip = 0
                    return
                self._observe(kind, data[pos + HEADER.size : end])
            pos = end
        self._skip = pos - size

    def _observe(self, kind: int, body: bytes) -> None:
        status = observe_backend_state(kind, body, self.parameters)
        if status is not None:
            self.ready_count += 1
            self.transaction_status = status


def observe_backend_state(kind: int, body: bytes, parameters: dict[str, str]) -> bytes | None:
    """The body of a ReadyForQuery (returns its transaction status, checked) or of a
    ParameterStatus (records the setting in ``parameters``, returns None)."""
    if kind == READY_FOR_QUERY_BYTE:
        if body not in TRANSACTION_STATUSES:
            raise ProtocolViolation("ReadyForQuery with an invalid status")
        return body
    name, offset = read_cstring(body, 0)
    parameters[name] = read_cstring(body, offset)[0]
    return None


def at_safe_point(frontend: FrontendTracker, backend: BackendTracker) -> bool:
    """True when the server owes the client nothing and no client message is half-sent."""
    return (
        frontend.at_boundary
        and backend.at_boundary
        and not frontend.unsynced
        and frontend.sync_points == backend.ready_count
    )
