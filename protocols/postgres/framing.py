"""Message framing: split a PostgreSQL byte stream into whole messages, with size bounds.

Theory of operation: a connection starts with one untyped startup packet (int32 length,
int32 code), possibly preceded by SSLRequest/GSSENCRequest packets, and continues with
typed messages (type byte, int32 length). ``StartupReader`` handles the first phase,
``MessageReader`` (typed messages as type and payload) or ``FrameReader`` (as the bytes
they came in) the second. They check the declared length against a bound *before*
buffering the body, so a hostile length never allocates memory.

A relay that forwards every chunk as it comes does not buffer messages at all: it follows
them with ``HeaderWalk``, which reads only the headers and steps over the bodies.
"""

from __future__ import annotations

from typing import Final

from protocols.buffer import ReceiveBuffer
from protocols.errors import MessageTooLarge, ProtocolViolation
from protocols.events import NEED_DATA, NeedData
from protocols.postgres.messages import (
    DEFAULT_MAX_MESSAGE_SIZE,
    FRONTEND_MESSAGE_TYPES,
    MAX_STARTUP_SIZE,
    UINT32,
    CancelRequest,
    RawMessage,
    StartupEvent,
    StartupMessage,
    decode_startup,
)

_HEADER_SIZE: Final = 5  # type byte + int32 length (messages.HEADER)


class StartupReader(ReceiveBuffer):
    """Reads the untyped startup-phase packets a client sends first: at most one SSLRequest
    and one GSSENCRequest, then one StartupMessage (or a CancelRequest); nothing after it is
    a startup packet (PostgreSQL refuses a second encryption request too)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[type] = set()

    def next_event(self) -> StartupEvent | NeedData:
        if len(self._data) < 4:
            return NEED_DATA
        if StartupMessage in self._seen or CancelRequest in self._seen:
            raise ProtocolViolation("a startup packet after the startup phase")
        (length,) = UINT32.unpack_from(self._data)
        if length < 8 or length > MAX_STARTUP_SIZE:
            raise ProtocolViolation(f"invalid startup packet length {length}")
        if len(self._data) < length:
            return NEED_DATA
        packet = bytes(self._data[:length])
        del self._data[:length]
        event = decode_startup(packet)
        kind = type(event)
        if kind in self._seen:
            raise ProtocolViolation(f"a second {kind.__name__} in one startup")
        self._seen.add(kind)
        return event


class _TypedFraming(ReceiveBuffer):
    """The typed messages after startup, in either direction, bounded by ``max_message_size``."""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, *, frontend: bool = False) -> None:
        super().__init__()
        self.max_message_size = max_message_size
        # What the bound is called in errors (a client's reader: the config key that sets it).
        self.limit_name = "the limit"
        # A client's stream: only frontend message types (a startup packet sent again after the
        # startup phase begins with a zero byte, which is none).
        self._frontend = frontend

    def peek_type(self) -> bytes | None:
        """The type byte of the next message, if any byte has arrived."""
        return bytes(self._data[:1]) or None

    def _whole_size(self) -> int:
        """The size of the first message (type byte to payload end) once it is all here, else 0."""
        data = self._data
        if len(data) < _HEADER_SIZE:
            return 0
        if self._frontend and data[0] not in FRONTEND_MESSAGE_TYPES:
            raise ProtocolViolation(invalid_frontend_type(data[0]))
        (length,) = UINT32.unpack_from(data, 1)
        if length < 4:
            raise ProtocolViolation(f"message {bytes(data[:1])!r} declares length {length} (< 4)")
        if length > self.max_message_size:
            raise MessageTooLarge(
                f"message {bytes(data[:1])!r} of {length} bytes exceeds {self.limit_name} "
                f"of {self.max_message_size} bytes",
                length,
                self.max_message_size,
            )
        size = length + 1
        return size if len(data) >= size else 0

    @property
    def has_message(self) -> bool:
        """A whole message is buffered (raises, as reading it would, on a bad header)."""
        return self._whole_size() > 0


def invalid_frontend_type(kind: int) -> str:
    if kind == 0:
        return "a startup packet after the startup phase (invalid frontend message type 0)"
    return f"invalid frontend message type {kind}"


class MessageReader(_TypedFraming):
    """Reads typed messages, each as its type and payload: for code that reads them."""

    def next_event(self) -> RawMessage | NeedData:
        size = self._whole_size()
        if not size:
            return NEED_DATA
        data = self._data
        message = RawMessage(bytes(data[:1]), bytes(data[_HEADER_SIZE:size]))
        del data[:size]
        return message


class FrameReader(_TypedFraming):
    """Reads typed messages, each as the bytes it came in: for code that relays them."""

    def next_event(self) -> bytes | NeedData:
        size = self._whole_size()
        if not size:
            return NEED_DATA
        data = self._data
        message = bytes(data[:size])
        del data[:size]
        return message


# --- following a relayed stream ------------------------------------------------------------

# What a ``HeaderWalk`` does at a message, by its type byte.
STEP_OVER: Final = 0
STOP_AT_HEADER: Final = 1  # stop as soon as the header is here (the body may follow later)
STOP_WHEN_WHOLE: Final = 2  # stop once every byte of the message is here
MARK: Final = 3  # step over, noting in ``marked`` that such a message went by
REFUSE: Final = 4  # no such message in this direction: a protocol violation
END_OF_CHUNK: Final = -1  # what ``next_stop`` returns when the chunk holds no further stop


def stop_table(stops: dict[bytes, int], elsewhere: int = STEP_OVER) -> bytes:
    """What a walk does at each of the 256 message types: ``stops``, and ``elsewhere`` at the rest."""
    table = bytearray([elsewhere]) * 256
    for kind, stop in stops.items():
        table[kind[0]] = stop
    return bytes(table)


class HeaderWalk:
    """Follows typed messages across the chunks of a stream, reading only their headers.

    ``stops`` (a ``stop_table``) says what to do at a message of each type. Give it
    each chunk with ``receive_data(chunk)``, then call ``next_stop()`` until END_OF_CHUNK:
    it steps over messages, bodies unread, and returns the type of each stop, whose message
    lies at ``data[start:end]`` (``end`` past the chunk when only the header is here);
    ``marked`` says whether a MARK message was stepped over on the way.
    A header split across chunks, or a STOP_WHEN_WHOLE message not yet whole (at most
    ``whole_limit`` bytes), is carried over: the next ``data`` starts with those ``carried``
    bytes, which the caller already had with the chunk before.

    Written for mypyc (a native class, byte indexing, nothing allocated for a message it
    steps over): this runs over every byte the proxy relays.
    """

    __slots__ = (
        "_carry",
        "_max_length",
        "_skip",
        "_stops",
        "_whole_limit",
        "carried",
        "data",
        "end",
        "marked",
        "peer",
        "start",
    )

    def __init__(self, stops: bytes, whole_limit: int, peer: str, max_length: int = 0xFFFFFFFF) -> None:
        self._stops: Final = stops
        self._whole_limit: Final = whole_limit
        self._max_length: Final = max_length  # of any message (a client's max_client_message_size)
        self.peer: Final = peer  # "client" or "server", for error messages
        self._carry = b""
        self._skip = 0  # body bytes of the last message that are still to come
        self.data = b""
        self.carried = 0
        self.start = 0  # of the message at the stop
        self.end = 0  # of the message at the stop; at END_OF_CHUNK, where the walk ended
        self.marked = False

    @property
    def at_boundary(self) -> bool:
        """Between two messages: nothing carried over and no body to skip."""
        return self._skip == 0 and not self._carry

    @property
    def mid_body(self) -> bool:
        """Inside the body of a message whose start was in an earlier chunk."""
        return self._skip > 0

    def receive_data(self, chunk: bytes) -> None:
        """The next chunk of the stream, to walk before the one after it arrives."""
        carry = self._carry
        if carry:
            self.data = carry + chunk
            self.carried = len(carry)
            self._carry = b""
        else:
            self.data = chunk
            self.carried = 0
        self.end = self._skip
        self._skip = 0

    def next_stop(self) -> int:
        """Step to the next stop in the chunk; return its type byte, or END_OF_CHUNK."""
        data = self.data
        size = len(data)
        stops = self._stops
        pos = self.end
        marked = False
        while size - pos >= _HEADER_SIZE:
            kind = data[pos]
            length = data[pos + 1] << 24 | data[pos + 2] << 16 | data[pos + 3] << 8 | data[pos + 4]
            if length < 4:
                raise ProtocolViolation(f"{self.peer} message declares length {length} (< 4)")
            if length > self._max_length:
                raise MessageTooLarge(
                    f"{self.peer} message {chr(kind)!r} of {length} bytes exceeds max_client_message_size "
                    f"of {self._max_length} bytes",
                    length,
                    self._max_length,
                )
            end = pos + 1 + length
            stop = stops[kind]
            if stop:
                if stop == MARK:
                    marked = True
                elif stop == REFUSE:
                    raise ProtocolViolation(invalid_frontend_type(kind))
                elif end <= size or stop == STOP_AT_HEADER:
                    self.start = pos
                    self.end = end
                    self.marked = marked
                    return kind
                else:
                    if length > self._whole_limit:
                        raise ProtocolViolation(f"{self.peer} message {chr(kind)!r} is too long")
                    break  # carried over until it is whole
            pos = end
        if pos < size:
            self._carry = data[pos:]
        else:
            self._skip = pos - size
        self.end = pos
        self.marked = marked
        return END_OF_CHUNK

    def body(self) -> bytes:
        """The payload of the message at the stop (all of it, for a STOP_WHEN_WHOLE type)."""
        return self.data[self.start + _HEADER_SIZE : self.end]
