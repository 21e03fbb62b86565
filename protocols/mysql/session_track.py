"""Session-state tracking: what an OK packet says changed in the server's session.

With CLIENT_SESSION_TRACK and the server's ``session_track_*`` variables on, an OK packet
whose status has SERVER_SESSION_STATE_CHANGED carries a list of changes, each a type byte
and a length-encoded body: a system variable's new value (name and value, both
length-encoded), the new current schema, "state changed", GTIDs, the characteristics the
next transaction will have (a ``SET TRANSACTION ...`` text, empty when none), and the
transaction state (MySQL's eight characters, e.g. ``T_______``). MariaDB and MySQL share the
types used here.
"""

from __future__ import annotations

from typing import Final

from protocols.errors import ProtocolViolation
from protocols.mysql import sql
from protocols.mysql.packets import decode_lenenc_str

SESSION_TRACK_SYSTEM_VARIABLES: Final = 0
SESSION_TRACK_SCHEMA: Final = 1
SESSION_TRACK_STATE_CHANGE: Final = 2
SESSION_TRACK_GTIDS: Final = 3
SESSION_TRACK_TRANSACTION_CHARACTERISTICS: Final = 4
SESSION_TRACK_TRANSACTION_STATE: Final = 5

# What the proxy turns on for each transaction-mode server connection: every system variable,
# the schema, and the characteristics of the next transaction (a pending one-shot
# ``SET TRANSACTION`` must not be left for another client).
TRACK_EVERYTHING: Final = (
    "SET SESSION session_track_state_change = ON, session_track_schema = ON, "
    "session_track_system_variables = '*', session_track_transaction_info = 'CHARACTERISTICS'"
)
# The variables that configure tracking itself: the proxy's, never a client's.
TRACKING_PREFIX: Final = "session_track_"


class SessionChanges:
    """The changes one OK packet reports."""

    __slots__ = ("characteristics", "schema", "state", "variables")

    def __init__(self) -> None:
        self.variables: dict[str, str] = {}  # name (lower case) -> new value, in order
        self.schema: str | None = None
        self.characteristics: str | None = None  # None: not reported; "": none pending
        self.state = ""  # the transaction state ("T_______", "________"), when reported


def parse_session_state(data: bytes) -> SessionChanges:
    """The changes in an OK packet's session-state block (its bytes, without their length)."""
    changes = SessionChanges()
    offset, size = 0, len(data)
    while offset < size:
        kind = data[offset]
        body, offset = decode_lenenc_str(data, offset + 1)
        if kind == SESSION_TRACK_SYSTEM_VARIABLES:
            name, at = decode_lenenc_str(body, 0)
            value, at = decode_lenenc_str(body, at)
            changes.variables[name.decode("utf-8", "replace").lower()] = value.decode("utf-8", "replace")
        elif kind == SESSION_TRACK_SCHEMA:
            schema, _ = decode_lenenc_str(body, 0)
            changes.schema = schema.decode("utf-8", "replace")
        elif kind == SESSION_TRACK_TRANSACTION_CHARACTERISTICS:
            text, _ = decode_lenenc_str(body, 0) if body else (b"", 0)
            changes.characteristics = text.decode("utf-8", "replace")
        elif kind == SESSION_TRACK_TRANSACTION_STATE:
            text, _ = decode_lenenc_str(body, 0) if body else (b"", 0)
            changes.state = text.decode("ascii", "replace")
        # STATE_CHANGE, GTIDS and unknown kinds: nothing to keep.
    if offset != size:
        raise ProtocolViolation("session-state block overruns its length")
    return changes


def set_variables(values: dict[str, str | None], *, backslash_escapes: bool) -> str:
    """One ``SET SESSION`` statement giving each variable its value (None: DEFAULT).

    A value is written as the server reported it: bare when it is a number, else quoted
    (``'ON'``, ``'+05:00'`` and ``'utf8mb4'`` are what SET accepts for such variables). A
    character set goes before its collation, since setting the one resets the other.
    """
    assignments = []
    for name in sorted(values, key=_collations_last):
        value = values[name]
        if value is None:
            written = "DEFAULT"
        elif _is_number(value):
            written = value
        else:
            written = sql.literal(value, backslash_escapes=backslash_escapes)
        assignments.append(f"@@session.{_variable_name(name)} = {written}")
    return "SET " + ", ".join(assignments)


def _collations_last(name: str) -> tuple[bool, str]:
    return ("collation" in name, name)


def _variable_name(name: str) -> str:
    if not name or not all(ch.isalnum() or ch == "_" for ch in name):
        raise ProtocolViolation(f"server reported an implausible variable name {name!r}")
    return name


def _is_number(value: str) -> bool:
    digits = value[1:] if value[:1] == "-" else value
    whole, _, fraction = digits.partition(".")
    return whole.isdigit() and (fraction == "" or fraction.isdigit()) and whole.isascii()
