"""Which MySQL statements leave state that a transaction pooler cannot move to another server
connection, and which read state the pooler must bring along.

Session variables, the schema and the characteristics of the next transaction are moved
from the server's own reports (``protocols.mysql.session_track``). What the server does not
report is found here, in the statement's text: user variables, table locks, named locks,
temporary tables, SQL ``PREPARE``, ``SQL_CALC_FOUND_ROWS``/``FOUND_ROWS()``, XA, HANDLER,
sequences' session values, ``LAST_INSERT_ID(expr)``. Each *pins* its client to its
connection until it leaves (``UNLOCK TABLES`` ends a LOCK TABLES pin). A statement that
reads ``LAST_INSERT_ID()`` gets the client's own value brought along instead.

Theory of operation: a quick look for trigger words in the upper-cased text answers most
statements; only when one is there does a small lexer take out what can hide text (string
literals, quoted identifiers, comments; the contents of ``/*! ... */`` comments run, so they
stay) and the checks run on what is left. There is no parser: where a check cannot tell, it
pins, since a needless pin costs a server connection and a missed one leaks state.
"""

from __future__ import annotations

import re
from typing import Final

REASON_USER_VARIABLE: Final = "user variable"
REASON_LOCK_TABLES: Final = "LOCK TABLES"
REASON_GLOBAL_READ_LOCK: Final = "FLUSH TABLES WITH READ LOCK"
REASON_NAMED_LOCK: Final = "GET_LOCK"
REASON_TEMPORARY_TABLE: Final = "temporary table"
REASON_PREPARE: Final = "PREPARE"
REASON_FOUND_ROWS: Final = "SQL_CALC_FOUND_ROWS"
REASON_XA: Final = "XA transaction"
REASON_HANDLER: Final = "HANDLER"
REASON_SEQUENCE: Final = "sequence value"
REASON_LAST_INSERT_ID: Final = "LAST_INSERT_ID(expr)"
REASON_TOO_LARGE: Final = "statement too large to inspect"
REASON_CURSOR: Final = "cursor"

# A longer statement pins without being looked at.
INSPECT_LIMIT: Final = 128 * 1024

_TRIGGERS: Final = re.compile(
    rb"@|LOCK|TEMPORARY|PREPARE|FOUND_ROWS|XA|HANDLER|LASTVAL|PREVIOUS|LAST_INSERT_ID|IDENTITY|SESSION_TRACK"
    rb"|WARNING|ERROR|DIAGNOSTICS|ROW_COUNT"
)
_CHECKS: Final = (
    # A user variable pins where it may be assigned (reading one nobody set is NULL anywhere:
    # a connection a pinned client leaves is reset).
    (
        re.compile(
            r"(?<!@)@(?!@)[\w$.]*\s*:="
            r"|\b(?:SET|INTO|LOAD\s+DATA)\b[^;]*(?<!@)@(?!@)"
        ),
        REASON_USER_VARIABLE,
    ),
    (re.compile(r"(?<![\w$])LOCK\s+TABLES?\b"), REASON_LOCK_TABLES),
    (re.compile(r"\bFLUSH\b[^;]*\bWITH\s+READ\s+LOCK\b"), REASON_GLOBAL_READ_LOCK),
    (re.compile(r"\bGET_LOCK\s*\("), REASON_NAMED_LOCK),
    (re.compile(r"\bCREATE\s+(?:OR\s+REPLACE\s+)?TEMPORARY\s+TABLE\b"), REASON_TEMPORARY_TABLE),
    (re.compile(r"(?:^|;)\s*PREPARE\b"), REASON_PREPARE),
    (re.compile(r"\bSQL_CALC_FOUND_ROWS\b|\bFOUND_ROWS\s*\("), REASON_FOUND_ROWS),
    (re.compile(r"(?:^|;)\s*XA\b"), REASON_XA),
    (re.compile(r"(?:^|;)\s*HANDLER\b"), REASON_HANDLER),
    (re.compile(r"\bLASTVAL\s*\(|\bPREVIOUS\s+VALUE\s+FOR\b"), REASON_SEQUENCE),
    (re.compile(r"\bLAST_INSERT_ID\s*\(\s*[^)\s]"), REASON_LAST_INSERT_ID),
)
_UNLOCK: Final = re.compile(r"(?:^|;)\s*UNLOCK\s+TABLES?\b")
_READS_INSERT_ID: Final = re.compile(r"\bLAST_INSERT_ID\b|@@(?:SESSION\.)?(?:IDENTITY|LAST_INSERT_ID)\b")
_TRACKING: Final = re.compile(r"\bSESSION_TRACK_\w+")
_READS_ROW_COUNT: Final = re.compile(r"\bROW_COUNT\s*\(")
# The forms a client reads a counter of its last statement in: alone, perhaps named (the
# proxy can give the value).
ROW_COUNT: Final = 1
WARNING_COUNT: Final = 2
ERROR_COUNT: Final = 3
_ALIAS: Final = rb"(?:\s*(?:AS\s+)?(?:\w+|`[^`]*`|'[^'\\]*'|\"[^\"\\]*\"))?\s*;?\s*$"
_COUNTER_ALONE: Final = re.compile(
    rb"\s*(?:SELECT\s+(?:(ROW_COUNT)\s*\(\s*\)|@@(?:SESSION\.)?(?:(WARNING_COUNT)|(ERROR_COUNT)))"
    + _ALIAS
    + rb"|\s*SHOW\s+COUNT\s*\(\s*\*\s*\)\s+(?:(WARNINGS)|(ERRORS))\s*;?\s*$)",
    re.IGNORECASE,
)
_READS_DIAGNOSTICS: Final = re.compile(
    r"\bSHOW\s+(?:COUNT\s*\(\s*\*\s*\)\s+)?(?:WARNINGS|ERRORS)\b"
    r"|@@(?:SESSION\.)?(?:WARNING_COUNT|ERROR_COUNT)\b|\bGET\s+(?:CURRENT\s+|STACKED\s+)?DIAGNOSTICS\b"
)


class Inspection:
    """What one statement's text says (``inspect``)."""

    __slots__ = ("pins", "reads_diagnostics", "reads_insert_id", "reads_row_count", "tracking", "unlocks")

    def __init__(self) -> None:
        self.pins: list[str] = []
        self.reads_insert_id = False
        self.reads_diagnostics = False  # SHOW WARNINGS, @@warning_count ...: the last statement's
        self.reads_row_count = False  # ROW_COUNT(): the last statement's
        self.unlocks = False
        self.tracking = False  # names a session_track_* variable: the proxy's alone


NOTHING: Final = Inspection()


def inspect(sql: bytes, *, backslash_escapes: bool = True) -> Inspection:
    """What ``sql`` (a COM_QUERY's or COM_STMT_PREPARE's text) pins, reads or refuses."""
    if len(sql) > INSPECT_LIMIT:
        found = Inspection()
        found.pins.append(REASON_TOO_LARGE)
        return found
    upper = sql.upper()
    if _TRIGGERS.search(upper) is None:
        return NOTHING
    code = _code(upper.decode("utf-8", "replace"), backslash_escapes)
    found = Inspection()
    for pattern, reason in _CHECKS:
        if pattern.search(code):
            found.pins.append(reason)
    found.unlocks = _UNLOCK.search(code) is not None
    found.reads_insert_id = _READS_INSERT_ID.search(code) is not None
    found.tracking = _TRACKING.search(code) is not None
    found.reads_diagnostics = _READS_DIAGNOSTICS.search(code) is not None
    found.reads_row_count = _READS_ROW_COUNT.search(code) is not None
    if (
        found.pins
        or found.unlocks
        or found.reads_insert_id
        or found.tracking
        or found.reads_diagnostics
        or found.reads_row_count
    ):
        return found
    return NOTHING


def counter_alone(sql: bytes) -> int:
    """Which counter of the last statement ``sql`` reads and nothing more (an alias at most):
    ROW_COUNT (``SELECT ROW_COUNT()``), WARNING_COUNT (``SELECT @@warning_count``, ``SHOW
    COUNT(*) WARNINGS``), ERROR_COUNT; 0 for any other statement. Each answer is one column
    and one row, whose value the proxy can give."""
    found = _COUNTER_ALONE.match(sql)
    if found is None:
        return 0
    if found[1]:
        return ROW_COUNT
    return WARNING_COUNT if found[2] or found[4] else ERROR_COUNT


def _code(text: str, backslash_escapes: bool) -> str:
    """``text`` with string literals, quoted identifiers and comments replaced by a space
    (``/*! ... */`` and MariaDB's ``/*M! ... */`` run: their contents stay)."""
    out: list[str] = []
    i, size = 0, len(text)
    start = 0
    while i < size:
        ch = text[i]
        if ch in "'\"`":
            out.append(text[start:i])
            i = _end_of_quoted(text, i, backslash_escapes and ch != "`")
            out.append(" ")
            start = i
        elif ch == "#" or (ch == "-" and text.startswith("-- ", i)) or text.startswith("--\n", i):
            out.append(text[start:i])
            newline = text.find("\n", i)
            i = size if newline < 0 else newline
            out.append(" ")
            start = i
        elif ch == "/" and text.startswith("/*", i):
            out.append(text[start:i])
            if text.startswith("/*!", i) or text.startswith("/*M!", i):
                i += 3 if text[i + 2] == "!" else 4
                while i < size and text[i].isdigit():  # a version number, then the code
                    i += 1
                start = i
                continue
            end = text.find("*/", i + 2)
            i = size if end < 0 else end + 2
            out.append(" ")
            start = i
        elif ch == "*" and text.startswith("*/", i):
            out.append(text[start:i])  # the end of a /*! comment
            i += 2
            out.append(" ")
            start = i
        else:
            i += 1
    out.append(text[start:])
    return "".join(out)


def _end_of_quoted(text: str, i: int, backslash_escapes: bool) -> int:
    """Where the quoted text starting at ``i`` ends (past its closing quote)."""
    quote = text[i]
    i += 1
    size = len(text)
    while i < size:
        ch = text[i]
        if backslash_escapes and ch == "\\":
            i += 2
        elif ch == quote:
            if i + 1 < size and text[i + 1] == quote:  # doubled: part of the text
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return size


_ENDS_TRANSACTION: Final = re.compile(rb"\s*(?:COMMIT|ROLLBACK)\b(?![^;]*\bTO\b)", re.IGNORECASE)
_QUERY: Final = 3  # COM_QUERY


def ends_transaction(command: bytes) -> bool:
    """Whether a command (its payload) is a COMMIT or ROLLBACK (not ROLLBACK TO a savepoint):
    with autocommit off, the transaction the next statement opens is a new one."""
    return len(command) > 1 and command[0] == _QUERY and _ENDS_TRANSACTION.match(command, 1) is not None
