"""Trackers that follow a relayed PostgreSQL stream by its message headers alone.

Theory of operation: the relay forwards every chunk as it arrives and shows the same chunk
to a tracker: ``FrontendTracker.send`` what goes to the server, ``BackendTracker.receive_data``
what the server answered. A tracker walks the message headers (type byte + length) with a
``HeaderWalk``, skipping bodies without copying them, and keeps only what the proxy decides with:

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

from typing import Final

from protocols.errors import ProtocolViolation
from protocols.postgres.framing import (
    END_OF_CHUNK,
    MARK,
    REFUSE,
    STEP_OVER,
    STOP_AT_HEADER,
    STOP_WHEN_WHOLE,
    HeaderWalk,
    stop_table,
)
from protocols.postgres.messages import (
    BIND,
    CLOSE,
    COPY_DATA,
    COPY_DONE,
    COPY_FAIL,
    DEFAULT_MAX_MESSAGE_SIZE,
    DESCRIBE,
    EXECUTE,
    FLUSH,
    FUNCTION_CALL,
    PARAMETER_STATUS,
    PARSE,
    PASSWORD,
    QUERY,
    READY_FOR_QUERY,
    STATUS_IDLE,
    SYNC,
    TERMINATE,
    TRANSACTION_STATUSES,
    read_cstring,
)

READY_FOR_QUERY_BYTE: Final = READY_FOR_QUERY[0]
PARAMETER_STATUS_BYTE: Final = PARAMETER_STATUS[0]
# Bodies the backend tracker must see whole; a ParameterStatus is a name and a short value.
TRACKED_BODY_LIMIT: Final = 64 * 1024
# The server messages a tracker reads: every other one is stepped over by its header.
BACKEND_STOPS: Final = stop_table({READY_FOR_QUERY: STOP_WHEN_WHOLE, PARAMETER_STATUS: STOP_WHEN_WHOLE})

_SYNC_BYTE: Final = SYNC[0]
_TERMINATE_BYTE: Final = TERMINATE[0]
# The client messages the frontend walk stops at: Query, Sync and FunctionCall (each owes one
# ReadyForQuery) and Terminate. The extended-protocol messages only open a batch: the walk
# steps over them, marking that one went by.
# Any other type is no frontend message: refused (a StartupMessage or SSLRequest sent again
# after the startup phase begins with a zero byte).
_FRONTEND_STOPS: Final = stop_table(
    {
        **dict.fromkeys((QUERY, SYNC, FUNCTION_CALL, TERMINATE), STOP_AT_HEADER),
        **dict.fromkeys((PARSE, BIND, EXECUTE, DESCRIBE, CLOSE), MARK),
        **dict.fromkeys((FLUSH, PASSWORD, COPY_DATA, COPY_DONE, COPY_FAIL), STEP_OVER),
    },
    elsewhere=REFUSE,
)


class FrontendTracker:
    """Follows client → server messages; see the module docstring."""

    __slots__ = ("_torn", "_walk", "sync_points", "terminated", "unsynced")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.sync_points = 0
        self.unsynced = False
        self.terminated = False
        self._walk = HeaderWalk(_FRONTEND_STOPS, 0, "client", max_message_size)
        # Set when the start of a Terminate header was already forwarded with the chunk
        # before: the server then holds a torn message and the connection cannot be reused.
        self._torn = False

    @property
    def at_boundary(self) -> bool:
        return self._walk.at_boundary and not self._torn

    @property
    def mid_message(self) -> bool:
        """Part of a message went by and the rest has not (a header, or a body, cut short)."""
        return not self._walk.at_boundary

    def send(self, data: bytes) -> int:
        """Client bytes on their way to the server: how many of them to forward (all, unless
        they hold a Terminate: up to it, for the proxy keeps the server connection)."""
        if self.terminated:
            return 0
        walk = self._walk
        walk.receive_data(data)
        while (kind := walk.next_stop()) != END_OF_CHUNK:
            if walk.marked:  # extended-protocol messages went by before this one
                self.unsynced = True
            if kind == _TERMINATE_BYTE:
                self.terminated = True
                self._torn = walk.start < walk.carried
                return max(walk.start - walk.carried, 0)
            self.sync_points += 1  # a Query, Sync or FunctionCall
            if kind == _SYNC_BYTE:
                self.unsynced = False
        if walk.marked:
            self.unsynced = True
        return len(data)


class BackendTracker:
    """Follows server → client messages; see the module docstring."""

    __slots__ = ("_walk", "parameters", "ready_count", "transaction_status")

    def __init__(self, parameters: dict[str, str] | None = None) -> None:
        self.ready_count = 0
        self.transaction_status = STATUS_IDLE
        self.parameters: dict[str, str] = dict(parameters or {})
        self._walk = HeaderWalk(BACKEND_STOPS, TRACKED_BODY_LIMIT, "server")

    @property
    def at_boundary(self) -> bool:
        return self._walk.at_boundary

    def receive_data(self, data: bytes) -> None:
        """Server bytes on their way to the client."""
        walk = self._walk
        walk.receive_data(data)
        while (kind := walk.next_stop()) != END_OF_CHUNK:
            status = observe_backend_state(kind, walk.body(), self.parameters)
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
