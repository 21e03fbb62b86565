"""Message framing: split a PostgreSQL byte stream into whole messages, with size bounds.

Theory of operation: a connection starts with one untyped startup packet (int32 length,
int32 code), possibly preceded by SSLRequest/GSSENCRequest packets, and continues with
typed messages (type byte, int32 length). ``StartupReader`` handles the first phase,
``MessageReader`` the second. Both check the declared length against a bound *before*
buffering the body, so a hostile length never allocates memory.
"""

from __future__ import annotations

from protocols.buffer import ReceiveBuffer
from protocols.errors import ProtocolViolation
from protocols.events import NEED_DATA, NeedData
from protocols.postgres.messages import (
    DEFAULT_MAX_MESSAGE_SIZE,
    HEADER,
    MAX_STARTUP_SIZE,
    UINT32,
    RawMessage,
    StartupEvent,
    decode_startup,
)


class StartupReader(ReceiveBuffer):
    """Reads the untyped startup-phase packets a client sends first."""

    def next_event(self) -> StartupEvent | NeedData:
        if len(self._data) < 4:
            return NEED_DATA
        (length,) = UINT32.unpack_from(self._data)
        if length < 8 or length > MAX_STARTUP_SIZE:
            raise ProtocolViolation(f"invalid startup packet length {length}")
        if len(self._data) < length:
            return NEED_DATA
        packet = bytes(self._data[:length])
        del self._data[:length]
        return decode_startup(packet)


class MessageReader(ReceiveBuffer):
    """Reads typed messages (after startup) in either direction."""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__()
        self.max_message_size = max_message_size

    def peek_type(self) -> bytes | None:
        """The type byte of the next message, if any byte has arrived."""
        return bytes(self._data[:1]) or None

    def next_message(self) -> RawMessage | NeedData:
        message = self.next_frame()
        if isinstance(message, NeedData):
            return message
        return RawMessage(message[:1], message[HEADER.size :])

    def next_frame(self) -> bytes | NeedData:
        """The next whole message as it came (type byte, length, payload)."""
        if len(self._data) < HEADER.size:
            return NEED_DATA
        kind, length = HEADER.unpack_from(self._data)
        if length < 4:
            raise ProtocolViolation(f"message {kind!r} declares length {length} (< 4)")
        if length > self.max_message_size:
            raise ProtocolViolation(
                f"message {kind!r} of {length} bytes exceeds the limit of {self.max_message_size} bytes"
            )
        total = length + 1
        if len(self._data) < total:
            return NEED_DATA
        message = bytes(self._data[:total])
        del self._data[:total]
        return message
