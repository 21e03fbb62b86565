"""The states a pooled server connection moves through, as a transition table, and the one
function that makes every move and keeps the counts that metrics, /pools and the pool read."""

from __future__ import annotations

from typing import Final

from proxy.core.server import ConnectionState, ServerConnection

# Theory of operation
# -------------------
# A connection the connector has just opened has no state (None) until the pool places it:
# with the borrower that asked for it (BUSY), on the idle list (IDLE), or, wanted by nobody,
# closed. A borrower gives its connection (BUSY) back with ``release``: to the idle list, into
# a reset (RESETTING) that ends the same ways, or, with nothing to reset, straight to the next
# borrower in the queue (BUSY to BUSY: one owner to the next). In transaction mode a client
# that goes idle may keep its connection (KEPT) until it uses it again or the pool takes it
# back (both BUSY: the client owns it again, and a taken-back one is released at once). Any
# connection may close; a closed one stays closed.
#
# ``StateCounts.move`` makes every move. A transition the table does not list is a bug in
# the pool: it raises rather than let the counts drift from the connections they count.

IDLE: Final = ConnectionState.IDLE
BUSY: Final = ConnectionState.BUSY
KEPT: Final = ConnectionState.KEPT
RESETTING: Final = ConnectionState.RESETTING
CLOSED: Final = ConnectionState.CLOSED

# From each state (None: just opened), the states a connection may move to.
TRANSITIONS: Final[dict[ConnectionState | None, frozenset[ConnectionState]]] = {
    None: frozenset({BUSY, IDLE, CLOSED}),
    IDLE: frozenset({BUSY, CLOSED}),
    BUSY: frozenset({BUSY, IDLE, KEPT, RESETTING, CLOSED}),
    KEPT: frozenset({BUSY, CLOSED}),
    RESETTING: frozenset({BUSY, IDLE, CLOSED}),
    CLOSED: frozenset(),
}


class IllegalTransition(Exception):
    """The pool tried a transition the table does not list: a bug in the pool, never the peer's doing."""

    def __init__(self, connection: ServerConnection, to: ConnectionState) -> None:
        was = connection.state
        legal = ", ".join(sorted(state.name for state in TRANSITIONS[was])) or "none"
        super().__init__(
            f"{connection!r}: no move from {was.name if was else 'just opened'} to {to.name} "
            f"(legal from there: {legal})"
        )
        self.connection = connection
        self.to = to


class StateCounts:
    """How many of a pool's connections are in each state, kept true by ``move``."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        # The closed are counted too: a connection's last move is counted like any other.
        self.counts: dict[ConnectionState, int] = dict.fromkeys(ConnectionState, 0)

    def move(self, connection: ServerConnection, to: ConnectionState) -> None:
        """Move ``connection`` to ``to``; ``IllegalTransition`` if the table lists no such move."""
        was = connection.state
        if to not in TRANSITIONS[was]:
            raise IllegalTransition(connection, to)
        counts = self.counts
        if was is not None:
            counts[was] -= 1
        connection.state = to
        counts[to] += 1
