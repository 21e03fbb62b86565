"""What bounds a client: the names of the limits (as the config keys and the metrics' ``reason``
label spell them), what a session is waiting for from its client, and the process-wide count
of client connections against ``max_client_connections`` and the open files limit.

The engines turn a limit into their protocol's error (``proxy/postgres/limits.py``,
``proxy/mysql/limits.py``); the listener enforces them (``proxy/client_watch.py``).
"""

from __future__ import annotations

from typing import Final

from proxy.config import ClientLimitsConfig

# --- the limits (label values of the refused/closed counters, and words in the errors) --------
LOGIN_TIMEOUT: Final = "client_login_timeout"
IDLE_TIMEOUT: Final = "client_idle_timeout"
STALL_TIMEOUT: Final = "client_stall_timeout"
TOO_MANY_CLIENTS: Final = "max_client_connections"  # the process's, or the pool's
OPEN_FILES: Final = "open_files"  # too few file descriptors left (RLIMIT_NOFILE)
MESSAGE_TOO_LARGE: Final = "max_client_message_size"
CALLER_NOT_ALLOWED: Final = "caller_not_allowed"  # [pool.clients] allow_uids / allow_gids

# --- what a session waits for from its client, for the timeouts ---------------------------------
LOGGING_IN: Final = 0  # its login (startup packet, handshake response): client_login_timeout
IDLE: Final = 1  # its next request, owed nothing, no transaction open: client_idle_timeout
INCOMPLETE: Final = 2  # the rest of a message it began: client_stall_timeout
BUSY: Final = 3  # nothing: the proxy or the server is working for it (no client timeout)

# File descriptors kept back from clients: the listeners, the admin API, logs, the AWS client,
# cancel and KILL side connections; each pool's server connections are added to it.
RESERVED_FILES: Final = 64


class ClientLimits:
    """The process-wide client count: every listener's accepted connections against the
    smaller of ``max_client_connections`` and what the open files limit leaves for clients."""

    def __init__(self, config: ClientLimitsConfig, open_files: int, server_connections: int = 0) -> None:
        self.open = 0  # client connections open now, on every listener
        self.open_files = open_files
        self.config = config
        self.max_clients = 0
        self.limited_by = TOO_MANY_CLIENTS
        self.update(config, server_connections)

    def update(self, config: ClientLimitsConfig, server_connections: int) -> None:
        """A (re)loaded configuration: ``server_connections`` is every pool's maximum, summed."""
        self.config = config
        # Each server connection may need a side connection too (cancel, KILL).
        by_files = max(self.open_files - RESERVED_FILES - 2 * server_connections, 0)
        self.max_clients = min(config.max_client_connections, by_files)
        self.limited_by = OPEN_FILES if by_files < config.max_client_connections else TOO_MANY_CLIENTS

    def refusal(self) -> tuple[str, str] | None:
        """Why one more client may not connect now (limit, message), or None."""
        if self.open < self.max_clients:
            return None
        if self.limited_by == OPEN_FILES:
            return OPEN_FILES, (
                f"sorry, too many clients already: {self.open} client connections are all the open "
                f"files limit ({self.open_files}, RLIMIT_NOFILE) leaves room for"
            )
        return TOO_MANY_CLIENTS, (
            f"sorry, too many clients already: max_client_connections ({self.max_clients}) reached"
        )
