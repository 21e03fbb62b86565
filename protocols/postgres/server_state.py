"""What one PostgreSQL server connection holds, as transaction pooling sees it: its
server-side prepared statements, its reported settings and its transaction status.

The I/O connection (``proxy.postgres.server.PgServerConnection``) owns one and keeps it
true while it talks to the server itself (login, reset); the pooling core
(``protocols.postgres.pooling``) reads and updates it while a client is attached.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from protocols.postgres.messages import STATUS_IDLE

# Server-side statements kept per connection; the least recently used is closed beyond this.
PREPARED_PER_CONNECTION: Final = 500

# A connection's server-side statements, least recently used first.
Prepared = OrderedDict[str, None]


class ServerState:
    """The protocol state of one server connection that outlives the client using it."""

    __slots__ = ("parameters", "prepared", "to_close", "transaction_status")

    def __init__(self) -> None:
        self.parameters: dict[str, str] = {}  # from ParameterStatus
        self.prepared: Prepared = OrderedDict()  # server-side statements, LRU order
        # Statements it holds that no client needs: closed upstream with the next work on it.
        self.to_close: list[str] = []
        self.transaction_status: bytes = STATUS_IDLE  # of the last ReadyForQuery

    def differences(self, settings: dict[str, str]) -> dict[str, str]:
        """The ``settings`` this connection does not have right now."""
        parameters = self.parameters
        return {name: value for name, value in settings.items() if parameters.get(name) != value}

    def statements_dropped(self) -> None:
        """The server dropped every prepared statement (DISCARD ALL)."""
        self.prepared.clear()
        self.to_close.clear()
