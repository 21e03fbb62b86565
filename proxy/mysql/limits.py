"""A client limit in MySQL's words: the error code a MySQL server itself uses for the case."""

from __future__ import annotations

from typing import Final

from protocols.mysql import constants as c
from protocols.mysql.messages import ErrPacket
from protocols.mysql.packets import frame
from proxy.core import limits

ER_NET_READ_INTERRUPTED: Final = 1159  # "Got timeout reading communication packets"
ER_CLIENT_INTERACTION_TIMEOUT: Final = 4031  # MySQL 8's wait_timeout disconnect

ERRORS: Final = {
    limits.LOGIN_TIMEOUT: (c.ER_HANDSHAKE_ERROR, "08S01"),  # "Bad handshake"
    limits.STALL_TIMEOUT: (ER_NET_READ_INTERRUPTED, "08S01"),
    limits.IDLE_TIMEOUT: (ER_CLIENT_INTERACTION_TIMEOUT, "HY000"),
    limits.TOO_MANY_CLIENTS: (c.ER_CON_COUNT_ERROR, "08004"),  # "Too many connections"
    limits.OPEN_FILES: (c.ER_CON_COUNT_ERROR, "08004"),
    limits.MESSAGE_TOO_LARGE: (c.ER_NET_PACKET_TOO_LARGE, "08S01"),
    limits.CALLER_NOT_ALLOWED: (c.ER_ACCESS_DENIED_ERROR, "28000"),
}


def limit_packet(limit: str, message: str) -> ErrPacket:
    code, sql_state = ERRORS[limit]
    return ErrPacket(code, message, sql_state)


def limit_error(limit: str, message: str, sequence_id: int = 0) -> bytes:
    """The ERR a client over ``limit`` gets, framed (sequence 0: instead of the greeting, as a
    server refusing a connection sends it)."""
    data, _ = frame(limit_packet(limit, message).encode(), sequence_id)
    return data
