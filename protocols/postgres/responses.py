"""Which server response belongs to which client request, so a pooler may answer some
requests itself and hide the answers to requests it made on the client's behalf.

Theory of operation: every request sent to the server (or answered in its place) is
queued in order as an entry: PASS (the server answers; forward the answer), SWALLOW (the
proxy sent it, e.g. a Parse the connection lacked; drop the answer) or SYNTHETIC (the proxy
answers with fixed bytes, e.g. ParseComplete for a statement the connection already has).
Server messages are matched to the head entry by the grammar of the extended protocol:
Parse → ParseComplete, Bind → BindComplete, Close → CloseComplete, Describe(statement) →
ParameterDescription + RowDescription/NoData, Describe(portal) → RowDescription/NoData,
Execute → … CommandComplete/EmptyQueryResponse/PortalSuspended, Sync and Query →
… ReadyForQuery. After an ErrorResponse the server skips every request up to the next
Sync, so their entries are dropped: skipped PASS and SWALLOW requests get no answer and
SYNTHETIC answers for them are not sent, exactly as if the server had handled them.
Asynchronous messages (NoticeResponse, ParameterStatus, NotificationResponse) pass.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from protocols.errors import ProtocolViolation
from protocols.postgres.messages import ERROR_RESPONSE, NOTICE_RESPONSE, PARAMETER_STATUS, READY_FOR_QUERY

NOTIFICATION_RESPONSE = b"A"
_ASYNC = frozenset({NOTICE_RESPONSE, PARAMETER_STATUS, NOTIFICATION_RESPONSE})


class Request(enum.Enum):
    PARSE = "parse"
    BIND = "bind"
    CLOSE = "close"
    DESCRIBE_STATEMENT = "describe statement"
    DESCRIBE_PORTAL = "describe portal"
    EXECUTE = "execute"
    SYNC = "sync"
    QUERY = "query"


class Handling(enum.Enum):
    PASS = "pass"
    SWALLOW = "swallow"
    SYNTHETIC = "synthetic"


# The message that ends each request's answer (an ErrorResponse ends any of them).
_LAST: dict[Request, frozenset[bytes]] = {
    Request.PARSE: frozenset({b"1"}),
    Request.BIND: frozenset({b"2"}),
    Request.CLOSE: frozenset({b"3"}),
    Request.DESCRIBE_STATEMENT: frozenset({b"T", b"n"}),
    Request.DESCRIBE_PORTAL: frozenset({b"T", b"n"}),
    Request.EXECUTE: frozenset({b"C", b"I", b"s"}),
    Request.SYNC: frozenset({READY_FOR_QUERY}),
    Request.QUERY: frozenset({READY_FOR_QUERY}),
}


@dataclass(slots=True)
class _Entry:
    request: Request
    handling: Handling
    answer: bytes = b""  # SYNTHETIC only
    statement: str | None = None  # PARSE: the server-side name it creates


class ResponsePlan:
    """The queue of requests awaiting answers on one server connection."""

    def __init__(self) -> None:
        self._entries: deque[_Entry] = deque()
        # Server-side statements whose Parse failed or was skipped: they do not exist.
        self.unprepared: list[str] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def rewriting(self) -> bool:
        """True while some answer must be added or removed (the stream needs message-level care)."""
        return any(entry.handling is not Handling.PASS for entry in self._entries)

    def expect(
        self,
        request: Request,
        handling: Handling = Handling.PASS,
        answer: bytes = b"",
        statement: str | None = None,
    ) -> bytes:
        """Queue a request; return bytes due to the client now (a synthetic answer at the head)."""
        self._entries.append(_Entry(request, handling, answer, statement))
        return self._release_synthetic()

    def server_message(self, kind: bytes, message: bytes) -> bytes:
        """One whole server message; return what the client gets for it (maybe nothing, maybe more)."""
        if kind in _ASYNC:
            return message
        if not self._entries:
            raise ProtocolViolation(f"server message {kind!r} answers no request")
        entry = self._entries[0]
        if entry.handling is Handling.SYNTHETIC:  # cannot be at the head: released eagerly
            raise ProtocolViolation("internal: synthetic answer not released")
        # An error always reaches the client: a request made on its behalf failed for it.
        out = b"" if entry.handling is Handling.SWALLOW and kind != ERROR_RESPONSE else message
        if kind == ERROR_RESPONSE and entry.request not in (Request.QUERY, Request.SYNC):
            self._drop(self._entries.popleft())
            self._skip_to_sync()
            return out + self._release_synthetic()
        if kind in _LAST[entry.request]:
            self._entries.popleft()
            return out + self._release_synthetic()
        return out

    def _skip_to_sync(self) -> None:
        while self._entries and self._entries[0].request not in (Request.SYNC, Request.QUERY):
            self._drop(self._entries.popleft())

    def _drop(self, entry: _Entry) -> None:
        if (
            entry.request is Request.PARSE
            and entry.statement is not None
            and entry.handling is not Handling.SYNTHETIC
        ):
            self.unprepared.append(entry.statement)

    def _release_synthetic(self) -> bytes:
        released = []
        while self._entries and self._entries[0].handling is Handling.SYNTHETIC:
            released.append(self._entries.popleft().answer)
        return b"".join(released)
