"""The two kinds of protocol error every codec raises: the peer's fault, or ours."""


class ProtocolViolation(Exception):
    """The remote peer broke the protocol (malformed, truncated or oversized input).

    The caller answers with a protocol-level error where it can and closes the connection.
    """


class LocalProtocolError(Exception):
    """We were asked to do something the protocol does not allow (a bug on our side)."""
