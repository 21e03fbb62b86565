"""The two kinds of protocol error every codec raises: the peer's fault, or ours."""


class ProtocolViolation(Exception):
    """The remote peer broke the protocol (malformed, truncated or oversized input).

    The caller answers with a protocol-level error where it can and closes the connection.
    """


class LocalProtocolError(Exception):
    """We were asked to do something the protocol does not allow (a bug on our side)."""


class MessageTooLarge(ProtocolViolation):
    """The peer announced a message longer than the reader's bound (read from the header, so
    nothing was allocated for it). ``sequence_id`` (MySQL) is the one the answer carries."""

    def __init__(self, message: str, size: int, limit: int, sequence_id: int = 0) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
        self.sequence_id = sequence_id
