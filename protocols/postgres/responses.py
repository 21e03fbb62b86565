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

The fast path: most groups of requests (everything up to a Sync or Query) are *plain*:
every answer passes and no Parse is tracked. A plain group needs no per-request entry, since
a PASS Sync or Query entry at the head already passes everything up to its ReadyForQuery.
Plain requests wait in ``_open`` and are dropped when their group's Sync or Query arrives;
they become entries only when something that needs matching follows them in the same group,
or when the server starts answering before the group is complete. While the head entry is a
PASS Sync or Query, ``receive_data`` forwards server bytes as they come and walks only the message
headers (looking inside ReadyForQuery and ParameterStatus); otherwise it reads whole messages
and matches each one.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from protocols.errors import ProtocolViolation
from protocols.events import NeedData
from protocols.postgres.framing import END_OF_CHUNK, FrameReader, HeaderWalk
from protocols.postgres.messages import (
    ERROR_RESPONSE,
    HEADER,
    NOTICE_RESPONSE,
    PARAMETER_STATUS,
    READY_FOR_QUERY,
    STATUS_IDLE,
)
from protocols.postgres.tracker import (
    BACKEND_STOPS,
    PARAMETER_STATUS_BYTE,
    READY_FOR_QUERY_BYTE,
    TRACKED_BODY_LIMIT,
    observe_backend_state,
)

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


# Requests answered by ReadyForQuery: they end a group.
_GROUP_END = frozenset({Request.SYNC, Request.QUERY})

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
    """The queue of requests awaiting answers on one server connection, and its server stream.

    ``parameters`` (the connection's reported settings) is updated in place from
    ParameterStatus; ``status`` is the transaction status of the last ReadyForQuery.
    """

    def __init__(self, parameters: dict[str, str] | None = None) -> None:
        self._entries: deque[_Entry] = deque()
        self._open: list[Request] = []  # plain requests of the group being sent (see above)
        # Server-side statements whose Parse failed or was skipped: they do not exist.
        self.unprepared: list[str] = []
        self.parameters: dict[str, str] = {} if parameters is None else parameters
        self.parameters_changed = False  # a ParameterStatus arrived since ``follow``
        self.ready_count = 0  # ReadyForQuery messages seen (requests answered)
        self.idle_count = 0  # of them, with status idle (transactions ended)
        self.status = STATUS_IDLE
        self._reader = FrameReader()
        self._header_walk = HeaderWalk(BACKEND_STOPS, TRACKED_BODY_LIMIT, "server")

    def follow(self, parameters: dict[str, str]) -> None:
        """Start on another server connection (this plan must be at rest), following its settings."""
        if not self.at_rest:
            raise ProtocolViolation("internal: moving a response plan that is owed answers")
        self.parameters = parameters
        self.parameters_changed = False

    def __len__(self) -> int:
        """Requests still awaiting their answer."""
        return len(self._entries) + len(self._open)

    @property
    def at_rest(self) -> bool:
        """Every request answered and no server message half-received."""
        return not (self._entries or self._open or len(self._reader)) and self._header_walk.at_boundary

    @property
    def mid_message(self) -> bool:
        """Whether the client has been sent part of a server message (so nothing may be added)."""
        return self._header_walk.mid_body

    # --- client side -------------------------------------------------------------------------
    def send(
        self,
        request: Request,
        handling: Handling = Handling.PASS,
        answer: bytes = b"",
        statement: str | None = None,
    ) -> bytes:
        """A request sent to the server (or answered in its place, SYNTHETIC), queued for its
        answer; return the bytes due to the client now (a synthetic answer at the head)."""
        if handling is Handling.PASS and statement is None:
            if request is Request.SYNC or request is Request.QUERY:  # (enum hashing is slow)
                self._open.clear()  # the PASS Sync/Query entry passes their answers too
                self._entries.append(_Entry(request, handling))
            else:
                self._open.append(request)
            return b""
        self._open_to_entries()
        self._entries.append(_Entry(request, handling, answer, statement))
        return self._release_synthetic()

    def _open_to_entries(self) -> None:
        self._entries.extend(_Entry(request, Handling.PASS) for request in self._open)
        self._open.clear()

    # --- server side -------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> bytes:
        """Server bytes in; the bytes the client gets for them out."""
        out: list[bytes] = []
        while data:
            if self._walking:
                data = self._walk(data, out)
                continue
            self._reader.receive_data(data)
            data = b""
            while not isinstance(message := self._reader.next_event(), NeedData):
                kind = message[0]
                if kind in (READY_FOR_QUERY_BYTE, PARAMETER_STATUS_BYTE):
                    self._observe(kind, message[HEADER.size :])
                out.append(self.match(message))
                if self._group_passes():
                    data = self._reader.take_buffer()
                    break
        return b"".join(out)

    @property
    def _walking(self) -> bool:
        """Whether the header walk applies: inside a passed message, or a PASS group at the head."""
        return not self._header_walk.at_boundary or (not len(self._reader) and self._group_passes())

    def _group_passes(self) -> bool:
        """Whether the head entry is a PASS Sync or Query: all up to its ReadyForQuery passes."""
        if not self._entries:
            return False
        head = self._entries[0]
        request = head.request
        return head.handling is Handling.PASS and (request is Request.SYNC or request is Request.QUERY)

    def _walk(self, data: bytes, out: list[bytes]) -> bytes:
        """Pass whole groups' answers by their headers; return what the walk leaves to match."""
        walk = self._header_walk
        walk.receive_data(data)
        while (kind := walk.next_stop()) != END_OF_CHUNK:
            self._observe(kind, walk.body())
            if kind == READY_FOR_QUERY_BYTE:
                self._entries.popleft()
                if not self._group_passes():
                    end = walk.end
                    out.append(walk.data[:end])
                    if self._entries:  # answers given here that waited for this group are due now
                        out.append(self._release_synthetic())
                    return walk.data[end:]
        # Up to where the walk stopped (past the chunk when a body runs on); the rest is carried.
        out.append(walk.data[: walk.end])
        return b""

    def _observe(self, kind: int, body: bytes) -> None:
        status = observe_backend_state(kind, body, self.parameters)
        if status is None:
            self.parameters_changed = True
            return
        self.status = status
        self.ready_count += 1
        if status == STATUS_IDLE:
            self.idle_count += 1

    def match(self, message: bytes) -> bytes:
        """Match one whole server message to the request it answers; return what the client
        gets for it (maybe nothing, maybe more). ``receive_data`` does this for every message
        it does not pass by its header."""
        kind = message[:1]
        if kind in _ASYNC:
            return message
        if not self._entries:
            if not self._open:
                raise ProtocolViolation(f"server message {kind!r} answers no request")
            self._open_to_entries()  # answers arrive before the group's Sync: match them one by one
        entry = self._entries[0]
        if entry.handling is Handling.SYNTHETIC:  # cannot be at the head: released eagerly
            raise ProtocolViolation("internal: synthetic answer not released")
        # An error always reaches the client: a request made on its behalf failed for it.
        out = b"" if entry.handling is Handling.SWALLOW and kind != ERROR_RESPONSE else message
        if kind == ERROR_RESPONSE and entry.request not in _GROUP_END:
            self._drop(self._entries.popleft())
            self._skip_to_sync()
            return out + self._release_synthetic()
        if kind in _LAST[entry.request]:
            self._entries.popleft()
            return out + self._release_synthetic()
        return out

    def _skip_to_sync(self) -> None:
        if not self._entries:
            self._open.clear()  # plain requests the server skips: nothing to match
            return
        while self._entries and self._entries[0].request not in _GROUP_END:
            self._drop(self._entries.popleft())
        if not self._entries:
            self._open.clear()

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
