"""Which server response belongs to which client request, so a pooler may send requests of
its own on the client's behalf, hide their answers, and learn how the requests it must
account for turned out.

Theory of operation: every request sent to the server is queued in order as an entry: PASS
(forward the answer), SWALLOW (the proxy's own request, e.g. a Parse the connection lacked:
drop its answer, but an error reaches the client, since it stands in for the error of the
client's request it was made for) or HIDE (drop all of its answer, errors too). Server
messages are matched to the head entry by the grammar of the extended protocol: Parse →
ParseComplete, Bind → BindComplete, Close → CloseComplete, Describe(statement) →
ParameterDescription + RowDescription/NoData, Describe(portal) → RowDescription/NoData,
Execute → … CommandComplete/EmptyQueryResponse/PortalSuspended, Sync and Query (and
FunctionCall) → … ReadyForQuery. Asynchronous messages (NoticeResponse, ParameterStatus,
NotificationResponse) pass.

After an ErrorResponse to an extended-protocol request the server skips every message up to
the next Sync, Query and FunctionCall included: their entries are dropped, and while no Sync
is queued yet the plan is *skipping*, so what is sent meanwhile is dropped as it is queued.
An entry may carry a ``token``, the caller's record of what the request does: when the
request is answered, failed or skipped, ``(token, ok)`` is appended to ``outcomes``, in wire
order. ``ok`` is True for a ParseComplete or CloseComplete, or, for an entry given ``tags``,
when a CommandComplete with one of those tags was part of its answer.

Server-side statement names in errors are given back in the client's words: ``renames``
maps a server-side name to the client's (``rename_statements``).

The fast path: most groups of requests (everything up to a Sync or Query) are *plain*:
every answer passes and nothing is accounted for. A plain group needs no per-request entry,
since a PASS Sync or Query entry at the head already passes everything up to its
ReadyForQuery. Plain requests wait in ``_open`` and are dropped when their group's Sync
arrives; they become entries when something that needs matching follows them in the same
group (a Query too: the server skips it if one of them fails), or when the server starts
answering before the group is complete. While the head entry is a plain Sync or Query,
``receive_data`` forwards server bytes as they come and walks only the message headers
(looking inside ReadyForQuery, ParameterStatus and, when statements were renamed,
ErrorResponse); otherwise it reads whole messages and matches each one.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Final

from protocols.errors import ProtocolViolation
from protocols.events import NeedData
from protocols.postgres.extended import rename_statements
from protocols.postgres.framing import (
    END_OF_CHUNK,
    MARK,
    STOP_AT_HEADER,
    STOP_WHEN_WHOLE,
    FrameReader,
    HeaderWalk,
    stop_table,
)
from protocols.postgres.messages import (
    COMMAND_COMPLETE,
    ERROR_RESPONSE,
    HEADER,
    NOTICE_RESPONSE,
    PARAMETER_STATUS,
    READY_FOR_QUERY,
    STATUS_IDLE,
)
from protocols.postgres.tracker import (
    PARAMETER_STATUS_BYTE,
    READY_FOR_QUERY_BYTE,
    TRACKED_BODY_LIMIT,
    observe_backend_state,
)

NOTIFICATION_RESPONSE = b"A"
PARSE_COMPLETE: Final = b"1"
_ASYNC = frozenset({NOTICE_RESPONSE, PARAMETER_STATUS, NOTIFICATION_RESPONSE})
_ERROR_BYTE: Final = ERROR_RESPONSE[0]
COPY_IN_RESPONSE: Final = b"G"
_COPY_IN_BYTE: Final = COPY_IN_RESPONSE[0]
# What the header walk reads: ReadyForQuery and ParameterStatus whole, an ErrorResponse
# from its header (renamed when it is whole in the chunk, else read whole by the matcher).
_PLAN_STOPS: Final = stop_table(
    {
        READY_FOR_QUERY: STOP_WHEN_WHOLE,
        PARAMETER_STATUS: STOP_WHEN_WHOLE,
        COPY_IN_RESPONSE: STOP_WHEN_WHOLE,
        ERROR_RESPONSE: STOP_AT_HEADER,
        PARSE_COMPLETE: MARK,  # (a plain group's first Parse: see ``send_parse``)
    }
)


# How a request with a token turned out (``ResponsePlan.outcomes``).
DONE: Final = 1  # answered: ParseComplete, CloseComplete, or one of its ``tags``
FAILED: Final = 0  # answered otherwise: an error, or none of its tags
SKIPPED: Final = -1  # the server skipped it after an error before it

# A request's answer when it is a single fixed message: matched at the head with no reading.
_COMPLETE_MESSAGES: Final = {
    b"1": b"1\x00\x00\x00\x04",
    b"2": b"2\x00\x00\x00\x04",
    b"3": b"3\x00\x00\x00\x04",
}


class Request(enum.Enum):
    PARSE = "parse"
    BIND = "bind"
    CLOSE = "close"
    DESCRIBE_STATEMENT = "describe statement"
    DESCRIBE_PORTAL = "describe portal"
    EXECUTE = "execute"
    SYNC = "sync"
    QUERY = "query"  # and FunctionCall: answered up to a ReadyForQuery, skipped after an error


class Handling(enum.Enum):
    PASS = "pass"
    SWALLOW = "swallow"
    HIDE = "hide"


# The requests that end a group: what is sent after them is not skipped for an error before.
_GROUP_ENDS: Final = (Request.SYNC, Request.QUERY)

# The message that ends each request's answer (an ErrorResponse ends the extended ones).
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


class _Entry:
    __slots__ = ("copy_ends", "handling", "ok", "parse_token", "plain_ends", "request", "tags", "token")

    def __init__(
        self,
        request: Request,
        handling: Handling,
        copy_ends: int,
        plain_ends: int = 0,
        token: object = None,
        tags: frozenset[bytes] | None = None,
        parse_token: object = None,
    ) -> None:
        self.request = request
        self.handling = handling
        self.token = token  # the caller's, reported in ``outcomes``
        self.tags = tags  # CommandComplete tags that make it ok (else: its last message does)
        self.ok = False
        # CopyDone/CopyFail messages sent before it, and (a Sync) before the last plain request
        # of its group, which may be the COPY that made the server ignore it (see _copy_in).
        self.copy_ends = copy_ends
        self.plain_ends = plain_ends
        # (a plain Sync) the token of its group's first request, a Parse (see ``send_parse``)
        self.parse_token = parse_token


class ResponsePlan:
    """The queue of requests awaiting answers on one server connection, and its server stream.

    ``parameters`` (the connection's reported settings) is updated in place from
    ParameterStatus; ``status`` is the transaction status of the last ReadyForQuery.
    """

    def __init__(self, parameters: dict[str, str] | None = None) -> None:
        self._entries: deque[_Entry] = deque()
        self._open: list[Request] = []  # plain requests of the group being sent (see above)
        self._open_parse: object = None  # the token of the first of them, a Parse (``send_parse``)
        self._skipping = False  # the server skips to the next Sync, and none is queued
        self._copy_ends = 0  # CopyDone and CopyFail messages sent
        self._open_ends = 0  # ``_copy_ends`` when the last plain request was sent
        self.outcomes: list[tuple[object, int]] = []  # (token, DONE/FAILED/SKIPPED), in wire order
        self.renames: dict[bytes, bytes] = {}  # server-side statement name → the client's
        self.parameters: dict[str, str] = {} if parameters is None else parameters
        self.parameters_changed = False  # a ParameterStatus arrived since ``follow``
        self.ready_count = 0  # ReadyForQuery messages seen (requests answered)
        self.idle_count = 0  # of them, with status idle (transactions ended)
        self.status = STATUS_IDLE
        self._reader = FrameReader()
        self._header_walk = HeaderWalk(_PLAN_STOPS, TRACKED_BODY_LIMIT, "server")

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
        """Every request answered, the server not skipping, no server message half-received."""
        return (
            not (self._entries or self._open or self._skipping or len(self._reader))
            and self._header_walk.at_boundary
        )

    @property
    def mid_message(self) -> bool:
        """Whether the client has been sent part of a server message (so nothing may be added)."""
        return self._header_walk.mid_body

    # --- client side -------------------------------------------------------------------------
    def send(
        self,
        request: Request,
        handling: Handling = Handling.PASS,
        token: object = None,
        tags: frozenset[bytes] | None = None,
    ) -> None:
        """A request sent to the server, queued for its answer."""
        if self._skipping:
            if request is not Request.SYNC:  # the server skips it: it gets no answer
                if token is not None:
                    self.outcomes.append((token, SKIPPED))
                return
            self._skipping = False
        copy_ends = self._copy_ends
        if handling is Handling.PASS and token is None:
            if request is Request.SYNC:  # (enum hashing is slow)
                self._open.clear()  # the PASS Sync entry passes their answers too
                entry = _Entry(request, handling, copy_ends, self._open_ends, parse_token=self._open_parse)
                self._open_parse = None
                self._entries.append(entry)
                return
            if request is Request.QUERY:
                if self._open:  # skipped if one of them fails: match them one by one
                    self._open_to_entries()
                self._entries.append(_Entry(request, handling, copy_ends))
                return
            self._open.append(request)
            self._open_ends = copy_ends
            return
        self._open_to_entries()
        self._entries.append(_Entry(request, handling, copy_ends, self._open_ends, token, tags))

    def send_parse(self, token: object) -> None:
        """A PASS Parse whose outcome is wanted. As the first request of its group it leaves
        the group plain (walked by its headers): its outcome comes with the group's answer,
        DONE at the first ParseComplete, FAILED at an ErrorResponse before any."""
        entries = self._entries
        if self._open or self._skipping or (entries and entries[-1].request not in _GROUP_ENDS):
            self.send(Request.PARSE, token=token)
            return
        self._open_parse = token
        self._open.append(Request.PARSE)
        self._open_ends = self._copy_ends

    @property
    def unsynced(self) -> bool:
        """Whether what is sent now may be skipped: extended-protocol requests before it are
        not synced yet, or the server is skipping already."""
        if self._open or self._skipping:
            return True
        entries = self._entries
        return bool(entries) and entries[-1].request not in _GROUP_ENDS

    def copy_end_sent(self) -> None:
        """The client sent CopyDone or CopyFail: whatever COPY it ends, Syncs sent after it count."""
        self._copy_ends += 1

    def _open_to_entries(self) -> None:
        copy_ends = self._copy_ends
        open_requests = self._open
        if self._open_parse is not None:  # its entry reports it
            self._entries.append(_Entry(Request.PARSE, Handling.PASS, copy_ends, token=self._open_parse))
            self._open_parse = None
            open_requests = open_requests[1:]
        self._entries.extend(_Entry(request, Handling.PASS, copy_ends) for request in open_requests)
        self._open.clear()

    # --- server side -------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> bytes:
        """Server bytes in; the bytes the client gets for them out."""
        out: list[bytes] = []
        while data:
            entries = self._entries
            if (
                entries
                and entries[0].token is not None
                and self._header_walk.at_boundary
                and not len(self._reader)
            ):
                data = self._complete_at_head(data, out)
                if not data:
                    break
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

    def _complete_at_head(self, data: bytes, out: list[bytes]) -> bytes:
        """Match a ParseComplete, BindComplete or CloseComplete to the head entry without
        reading it (the answer of most requests the proxy accounts for)."""
        entries = self._entries
        while entries:
            head = entries[0]
            if head.token is None:
                return data
            complete = _COMPLETE_MESSAGES.get(data[:1])
            if complete is None or not data.startswith(complete) or data[:1] not in _LAST[head.request]:
                return data
            entries.popleft()
            head.ok = True
            self._done(head)
            if head.handling is Handling.PASS:
                out.append(complete)
            data = data[5:]
        return data

    @property
    def _walking(self) -> bool:
        """Whether the header walk applies: inside a passed message, or a plain group at the head."""
        return not self._header_walk.at_boundary or (not len(self._reader) and self._group_passes())

    def _group_passes(self) -> bool:
        """Whether the head entry is a plain Sync or Query: all up to its ReadyForQuery passes."""
        if not self._entries:
            return False
        head = self._entries[0]
        request = head.request
        return (
            head.handling is Handling.PASS
            and head.token is None
            and (request is Request.SYNC or request is Request.QUERY)
        )

    def _walk(self, data: bytes, out: list[bytes]) -> bytes:
        """Pass whole groups' answers by their headers; return what the walk leaves to match."""
        walk = self._header_walk
        walk.receive_data(data)
        emitted = 0  # of walk.data, what is in ``out`` already
        while True:
            kind = walk.next_stop()
            if walk.marked:  # a ParseComplete went by: the group's first Parse is done
                self._group_parse(DONE)
            if kind == END_OF_CHUNK:
                break
            if kind == _COPY_IN_BYTE:
                self._copy_in()
                if not self._group_passes():
                    end = walk.end
                    out.append(walk.data[emitted:end])
                    return walk.data[end:]
                continue
            if kind == _ERROR_BYTE:
                self._group_parse(FAILED)  # (if no ParseComplete came before it)
                if self.renames:
                    start, end = walk.start, walk.end
                    if end > len(walk.data):  # not whole: the matcher reads it whole
                        out.append(walk.data[emitted:start])
                        self._reader.receive_data(walk.data[start:])
                        walk.receive_data(b"")  # (forget the body the walk meant to skip)
                        return b""
                    error = walk.data[start:end]
                    renamed = rename_statements(error, self.renames)
                    if renamed is not error:
                        out.append(walk.data[emitted:start])
                        out.append(renamed)
                        emitted = end
                continue
            self._observe(kind, walk.body())
            if kind == READY_FOR_QUERY_BYTE:
                self._entries.popleft()
                if not self._group_passes():
                    end = walk.end
                    out.append(walk.data[emitted:end])
                    return walk.data[end:]
        # Up to where the walk stopped (past the chunk when a body runs on); the rest is carried.
        out.append(walk.data[emitted : walk.end])
        return b""

    def _group_parse(self, outcome: int) -> None:
        """The outcome of the head group's first Parse (``send_parse``), unless reported."""
        entries = self._entries
        if entries and (token := entries[0].parse_token) is not None:
            head = entries[0]
            head.parse_token = None
            self.outcomes.append((token, outcome))

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
        gets for it (maybe nothing). ``receive_data`` does this for every message it does not
        pass by its header."""
        kind = message[:1]
        if kind in _ASYNC:
            return message
        if not self._entries:
            if not self._open:
                raise ProtocolViolation(f"server message {kind!r} answers no request")
            self._open_to_entries()  # answers arrive before the group's Sync: match them one by one
        entry = self._entries[0]
        handling = entry.handling
        if entry.parse_token is not None and kind in (PARSE_COMPLETE, ERROR_RESPONSE):
            self._group_parse(DONE if kind == PARSE_COMPLETE else FAILED)
        if kind == ERROR_RESPONSE:
            out = b"" if handling is Handling.HIDE else message
            if out and self.renames:
                out = rename_statements(out, self.renames)
            request = entry.request
            if request is not Request.SYNC and request is not Request.QUERY:
                self._done(self._entries.popleft())
                self._skip_to_sync()
            return out
        out = message if handling is Handling.PASS else b""
        if kind == COPY_IN_RESPONSE:
            self._copy_in()
        elif kind == COMMAND_COMPLETE and entry.tags is not None and message[HEADER.size : -1] in entry.tags:
            entry.ok = True
        if kind in _LAST[entry.request]:
            self._entries.popleft()
            if entry.tags is None:
                entry.ok = True
            self._done(entry)
        return out

    def _copy_in(self) -> None:
        """COPY FROM STDIN began: the server ignores the Syncs (and Flushes) it reads until
        the CopyDone or CopyFail that ends it, so those Syncs get no ReadyForQuery."""
        entries = self._entries
        if not entries:
            return
        self._group_parse(DONE)  # (a CopyInResponse answers an Execute: any Parse before it is done)
        head = entries[0]
        if head.request is Request.SYNC:  # a plain group: the COPY is a request of its own before it
            ends, first = head.plain_ends, 0
        else:
            ends, first = head.copy_ends, 1
        kept: deque[_Entry] = deque()
        for index, entry in enumerate(entries):
            if index >= first and entry.request is Request.SYNC and entry.copy_ends == ends:
                if index == 0:  # what carries the rest of the COPY's answer now
                    kept.append(_Entry(Request.EXECUTE, Handling.PASS, ends))
                continue
            kept.append(entry)
        self._entries = kept

    def _done(self, entry: _Entry, outcome: int | None = None) -> None:
        if entry.token is not None:
            self.outcomes.append(
                (entry.token, (DONE if entry.ok else FAILED) if outcome is None else outcome)
            )

    def _skip_to_sync(self) -> None:
        """The server skips up to the next Sync: what was sent before it gets no answer."""
        entries = self._entries
        while entries and entries[0].request is not Request.SYNC:
            self._done(entries.popleft(), SKIPPED)
        if not entries:
            if self._open_parse is not None:
                self.outcomes.append((self._open_parse, SKIPPED))
                self._open_parse = None
            self._open.clear()
            self._skipping = True
