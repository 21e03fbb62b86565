"""The receive buffer every sans-IO reader here is built on."""

from __future__ import annotations

from protocols.events import NEED_DATA, NeedData


class ReceiveBuffer:
    """Bytes received and not yet consumed; readers parse messages out of ``_data``."""

    def __init__(self) -> None:
        self._data = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._data += data

    def take_bytes(self, count: int) -> bytes | NeedData:
        """Exactly ``count`` raw bytes outside the framing (e.g. the answer to SSLRequest)."""
        if len(self._data) < count:
            return NEED_DATA
        data = bytes(self._data[:count])
        del self._data[:count]
        return data

    def take_buffer(self) -> bytes:
        """Hand over (and forget) every byte not yet consumed: when switching to relay or TLS."""
        data = bytes(self._data)
        self._data.clear()
        return data

    def __len__(self) -> int:
        return len(self._data)
