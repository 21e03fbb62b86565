"""A small raw PostgreSQL v3 client for tests: sends scripted frontend messages over a real
asyncio socket and collects the exact backend messages, so a proxy's answers can be
compared with the server's own, message by message.

The encoding and decoding are the project's sans-IO codecs (``protocols.postgres``);
this module only adds the socket, the login and the normalisation a comparison needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocols.events import NeedData
from protocols.postgres.auth import UpstreamAuthenticator
from protocols.postgres.extended import (
    PARAMETER_DESCRIPTION,
    ROW_DESCRIPTION,
    Bind,
    Close,
    Describe,
    Execute,
    Flush,
    Parse,
    Query,
    Sync,
)
from protocols.postgres.framing import MessageReader
from protocols.postgres.messages import (
    AUTHENTICATION,
    BACKEND_KEY_DATA,
    ERROR_RESPONSE,
    NOTICE_RESPONSE,
    PARAMETER_STATUS,
    READY_FOR_QUERY,
    TERMINATE_MESSAGE,
    AuthenticationRequest,
    ErrorResponse,
    ParameterStatus,
    RawMessage,
    StartupMessage,
    decode_backend,
    frame,
)


@dataclass(frozen=True, slots=True)
class CopyData:
    data: bytes

    def encode(self) -> bytes:
        return frame(b"d", self.data)


@dataclass(frozen=True, slots=True)
class CopyDone:
    def encode(self) -> bytes:
        return frame(b"c")


@dataclass(frozen=True, slots=True)
class CopyFail:
    reason: str

    def encode(self) -> bytes:
        return frame(b"f", self.reason.encode() + b"\x00")


Message = Parse | Bind | Describe | Execute | Close | Flush | Sync | Query | CopyData | CopyDone | CopyFail
# Answered by exactly one ReadyForQuery each, whatever happens before it.
GROUP_ENDS = (Sync, Query)


class WireTimeout(AssertionError):
    """The server (or proxy) stopped answering before every request was answered."""


@dataclass(frozen=True, slots=True)
class Received:
    """One backend message as the client got it: its type letter and a readable body."""

    type: str
    body: object

    def __repr__(self) -> str:
        return f"{self.type}:{self.body!r}"


class WireClient:
    """One logged-in connection; ``run`` sends messages and returns every answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._messages = MessageReader()
        self.parameters: dict[str, str] = {}
        self.status = b"I"

    @classmethod
    async def connect(
        cls, port: int, database: str, user: str, password: str | None = None, within: float = 10.0
    ) -> WireClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), within)
        client = cls(reader, writer)
        try:
            await asyncio.wait_for(client._login(database, user, password), within)
        except BaseException:
            client.abort()
            raise
        return client

    async def _login(self, database: str, user: str, password: str | None) -> None:
        self._writer.write(StartupMessage({"user": user, "database": database}).encode())
        authenticator = UpstreamAuthenticator(user, password or "")
        while True:
            message = await self._next()
            if message.type == AUTHENTICATION:
                request = decode_backend(message)
                assert isinstance(request, AuthenticationRequest)
                answer = authenticator.respond(request)
                if answer is not None:
                    self._writer.write(answer)
            elif message.type == PARAMETER_STATUS:
                status = decode_backend(message)
                assert isinstance(status, ParameterStatus)
                self.parameters[status.name] = status.value
            elif message.type == ERROR_RESPONSE:
                raise ConnectionError(f"login failed: {describe_error(message.payload)}")
            elif message.type == READY_FOR_QUERY:
                return
            elif message.type != BACKEND_KEY_DATA:
                raise ConnectionError(f"unexpected {message.type!r} during login")

    async def _next(self) -> RawMessage:
        while isinstance(message := self._messages.next_event(), NeedData):
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError("the connection closed")
            self._messages.receive_data(data)
        return message

    def send(self, messages: Iterable[Message]) -> int:
        """Send ``messages`` in one write; return how many ReadyForQuery they are owed."""
        batch = list(messages)
        self._writer.write(b"".join(message.encode() for message in batch))
        return sum(isinstance(message, GROUP_ENDS) for message in batch)

    async def receive(self, ready: int, within: float) -> list[RawMessage]:
        """Every message up to and including the ``ready``-th ReadyForQuery."""
        out: list[RawMessage] = []

        async def collect() -> None:
            seen = 0
            while seen < ready:
                message = await self._next()
                out.append(message)
                if message.type == READY_FOR_QUERY:
                    seen += 1
                    self.status = message.payload

        try:
            await asyncio.wait_for(collect(), within)
        except TimeoutError:
            raise WireTimeout(
                f"no answer within {within}s; owed {ready} ReadyForQuery, got {readable(out)}"
            ) from None
        return out

    async def run(self, messages: Sequence[Message], within: float = 5.0) -> list[RawMessage]:
        return await self.receive(self.send(messages), within)

    async def query(self, sql: str, within: float = 10.0) -> list[RawMessage]:
        """A simple Query that must succeed."""
        answer = await self.run([Query(sql)], within)
        errors = [describe_error(m.payload) for m in answer if m.type == ERROR_RESPONSE]
        assert not errors, f"{sql!r} failed: {errors}"
        return answer

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.write(TERMINATE_MESSAGE)
            self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    def abort(self) -> None:
        self._writer.transport.abort()


# --- what a comparison ignores ---------------------------------------------------------------

_PID = re.compile(r"\b(process|PID|pid) \d+")
_FIELD = struct.Struct("!IhIhih")  # RowDescription: table OID, attnum, type OID, typlen, typmod, format


def describe_error(payload: bytes) -> str:
    fields = ErrorResponse(_fields(payload)).fields
    return f"{fields.get('C')} {fields.get('M')}"


def _fields(payload: bytes) -> dict[str, str]:
    decoded = decode_backend(RawMessage(ERROR_RESPONSE, payload))
    assert isinstance(decoded, ErrorResponse)
    return decoded.fields


def _row_description(payload: bytes) -> list[tuple[object, ...]]:
    (count,) = struct.unpack_from("!H", payload)
    offset = 2
    columns: list[tuple[object, ...]] = []
    for _ in range(count):
        end = payload.index(b"\x00", offset)
        name = payload[offset:end].decode()
        _table_oid, attnum, type_oid, typlen, typmod, fmt = _FIELD.unpack_from(payload, end + 1)
        # The table's OID changes every time the scratch table is created again; the
        # column number and the (built-in) type OIDs do not.
        columns.append((name, attnum, type_oid, typlen, typmod, fmt))
        offset = end + 1 + _FIELD.size
    return columns


def normalise(message: RawMessage) -> Received:
    """A backend message as a comparison sees it.

    Kept exactly: every field of errors and notices (the same server version gives the same
    position, file, line and routine), data rows, command tags, parameter descriptions,
    transaction status. Normalised: the table OID in RowDescription (the scratch table is
    created afresh for each run) and a process id in a message text. Statement names are
    *not* normalised: whatever the proxy calls a statement upstream, the client must only
    ever read its own names.
    """
    kind = message.type.decode()
    payload = message.payload
    if message.type in (ERROR_RESPONSE, NOTICE_RESPONSE):
        fields = {code: _PID.sub(r"\1 <pid>", value) for code, value in _fields(payload).items()}
        return Received(kind, tuple(sorted(fields.items())))
    if message.type == ROW_DESCRIPTION:
        return Received(kind, tuple(_row_description(payload)))
    if message.type == PARAMETER_DESCRIPTION:
        (count,) = struct.unpack_from("!H", payload)
        return Received(kind, struct.unpack_from(f"!{count}I", payload, 2))
    if message.type == BACKEND_KEY_DATA:
        return Received(kind, "<key>")
    return Received(kind, payload)


def readable(messages: Iterable[RawMessage]) -> list[Received]:
    return [normalise(message) for message in messages]


__all__ = [
    "GROUP_ENDS",
    "Bind",
    "Close",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "Describe",
    "Execute",
    "Flush",
    "Message",
    "Parse",
    "Query",
    "Received",
    "Sync",
    "WireClient",
    "WireTimeout",
    "describe_error",
    "normalise",
    "readable",
]
