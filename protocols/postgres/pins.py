"""Transaction mode's pins: a statement whose effect outlives the transaction (session SET,
LISTEN, temporary tables, session advisory locks, SQL PREPARE, DECLARE WITH HOLD, LOAD)
*pins* its client to its server connection until it leaves, like RDS Proxy; the connection
is reset before reuse. ``protocols.postgres.session_state`` says which statements pin;
here are what the pooling core adds and the kinds pins are counted by.
"""

from __future__ import annotations

from protocols.postgres.session_state import (
    REASON_ADVISORY_LOCK,
    REASON_DECLARE_WITH_HOLD,
    REASON_LISTEN,
    REASON_LOAD,
    REASON_PREPARE,
    REASON_SET,
    REASON_SET_CONFIG,
    REASON_SET_SESSION_CHARACTERISTICS,
    REASON_TEMPORARY_OBJECT,
    REASON_TEMPORARY_TABLE,
)

# A longer statement pins without being classified (see PooledClient._check_pins).
INSPECT_LIMIT = 128 * 1024
PIN_NAMED_STATEMENT = "named prepared statement"
PIN_TOO_LARGE = "statement too large to inspect"
PIN_KINDS = (
    REASON_SET_SESSION_CHARACTERISTICS,
    REASON_SET,
    REASON_SET_CONFIG,
    REASON_LISTEN,
    REASON_TEMPORARY_TABLE,
    REASON_TEMPORARY_OBJECT,
    REASON_ADVISORY_LOCK,
    REASON_PREPARE,
    REASON_DECLARE_WITH_HOLD,
    REASON_LOAD,
    PIN_NAMED_STATEMENT,
    PIN_TOO_LARGE,
)


def pin_kind(reason: str) -> str:
    """The kind a pin is counted by ("SET", not "SET my_setting"): client-chosen names stay out."""
    return next((kind for kind in PIN_KINDS if reason == kind or reason.startswith(kind + " ")), reason)
