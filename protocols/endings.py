"""Why a client's session (or its relay) ended: one list, shared by the sans-IO pooling core,
which decides some of these endings, and the I/O relays, which meet the rest."""

from __future__ import annotations

import enum


class EndReason(enum.Enum):
    """Why a relay (or a transaction-mode session) ended; the value is what logs show."""

    CLIENT_CLOSED = "client closed"
    CLIENT_TERMINATED = "client terminated"  # PostgreSQL's Terminate message
    CLIENT_QUIT = "client quit"  # MySQL's COM_QUIT
    SERVER_CLOSED = "server closed"
    CLIENT_VIOLATION = "client protocol violation"
    MESSAGE_TOO_LARGE = "client message too large"  # over max_client_message_size (the client is told)
    SERVER_VIOLATION = "server protocol violation"
    GOODBYE = "goodbye"  # shutdown or reload: the session ends at a safe idle point, the client is told
    # Transaction mode, after the client was told why (FATAL):
    NO_SERVER_CONNECTION = "no server connection"  # none could be had (or set up) for a request
    IDLE_IN_TRANSACTION = "idle in transaction"  # idle_transaction_timeout passed

    def __str__(self) -> str:
        return self.value
