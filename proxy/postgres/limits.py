"""A client limit in PostgreSQL's words: the SQLSTATE PostgreSQL itself uses for the case."""

from __future__ import annotations

from typing import Final

from protocols.postgres.messages import (
    SQLSTATE_INVALID_AUTHORIZATION,
    SQLSTATE_PROTOCOL_VIOLATION,
    SQLSTATE_TOO_MANY_CONNECTIONS,
    ErrorResponse,
)
from proxy.core import limits

SQLSTATE_IDLE_SESSION_TIMEOUT: Final = "57P05"  # PostgreSQL's idle_session_timeout

SQLSTATES: Final = {
    limits.LOGIN_TIMEOUT: SQLSTATE_PROTOCOL_VIOLATION,
    limits.STALL_TIMEOUT: SQLSTATE_PROTOCOL_VIOLATION,
    limits.IDLE_TIMEOUT: SQLSTATE_IDLE_SESSION_TIMEOUT,
    limits.TOO_MANY_CLIENTS: SQLSTATE_TOO_MANY_CONNECTIONS,  # "sorry, too many clients already"
    limits.OPEN_FILES: SQLSTATE_TOO_MANY_CONNECTIONS,
    limits.MESSAGE_TOO_LARGE: SQLSTATE_PROTOCOL_VIOLATION,  # "invalid message length"
    limits.CALLER_NOT_ALLOWED: SQLSTATE_INVALID_AUTHORIZATION,
}


def sqlstate(limit: str) -> str:
    return SQLSTATES[limit]


def limit_error(limit: str, message: str) -> bytes:
    """The FATAL ErrorResponse a client over ``limit`` gets before the connection closes."""
    return ErrorResponse.build("FATAL", SQLSTATES[limit], message).encode()
