"""Which SQL creates session state that a transaction pooler cannot carry to another server
connection (session SET, LISTEN, temporary tables, session advisory locks, PREPARE, WITH HOLD
cursors, LOAD): ``session_state_pins`` names it, so the proxy can pin the client.

Theory of operation: a small lexer that follows PostgreSQL's own scanner (scan.l) for what
can hide text, namely string constants ('..', E'..', $tag$..$tag$), quoted identifiers and
comments (nested /* */), turns the text into words, quoted identifiers, literals and
punctuation. Semicolons outside parentheses split it into statements, and a few checks look
at each statement's tokens. There is no SQL parser: where a check cannot tell, it pins, since
a needless pin costs a server connection and a missed one leaks state into another client.

Assumes standard_conforming_strings = on (the default since PostgreSQL 9.1): a backslash
escapes only in E'' strings. Turning it off needs a SET, which pins the client anyway.
State created inside function bodies and DO blocks (literals) is not seen.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pin:
    """Why a client must keep its server connection; short enough to log."""

    reason: str


# --- pin reasons -----------------------------------------------------------------------------
REASON_SET = "SET"  # followed by the setting's name
REASON_SET_SESSION_CHARACTERISTICS = "SET SESSION CHARACTERISTICS"
REASON_SET_CONFIG = "set_config"  # followed by the setting's name when it is a literal
REASON_LISTEN = "LISTEN"
REASON_TEMPORARY_TABLE = "temporary table"
REASON_TEMPORARY_OBJECT = "temporary object"  # a function, type, ... created in pg_temp
REASON_ADVISORY_LOCK = "session advisory lock"
REASON_PREPARE = "PREPARE"
REASON_DECLARE_WITH_HOLD = "DECLARE WITH HOLD"
REASON_LOAD = "LOAD"

# Names quoted in a reason are cut to this length and stripped of control characters: the
# reason is logged, and the name comes from the client.
MAX_NAME_IN_REASON = 64


# --- tokens ----------------------------------------------------------------------------------


class _Kind(enum.Enum):
    WORD = enum.auto()  # keyword or unquoted identifier, ASCII-lowercased as PostgreSQL does
    IDENTIFIER = enum.auto()  # "quoted identifier", its text with "" undoubled
    STRING = enum.auto()  # any string constant, its value (escapes only roughly undone)
    OTHER = enum.auto()  # number, $n parameter, punctuation (one character each)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str


_WHITESPACE = " \t\n\r\f\v"
_IDENT_START = r"A-Za-z_\u0080-\U0010FFFF"
_IDENT_CONTINUE = _IDENT_START + r"0-9$"

# One match per token: whitespace and line comments are skipped first (possessively, so a
# comment is never given back and re-read as tokens), then the first alternative that matches
# wins. Unterminated strings, identifiers and dollar quotes run to the end of the text (the
# rest is literal); a block comment is followed by ``_block_comment_end``, as comments nest.
_TOKEN = re.compile(
    rf"""
    (?:[{_WHITESPACE}]|--[^\n\r]*+)*+
    (?:
      (?P<block_comment>/\*)
    | [eE]'(?P<escape_string>[^'\\]*(?:(?:\\.|'')[^'\\]*)*)'?
    | '(?P<string>[^']*(?:''[^']*)*)'?
    | "(?P<identifier>[^"]*(?:""[^"]*)*)"?
    | \$(?P<tag>(?:[{_IDENT_START}][{_IDENT_START}0-9]*)?)\$(?P<dollar_quote>.*?)(?:\$(?P=tag)\$|\Z)
    | (?P<word>[{_IDENT_START}][{_IDENT_CONTINUE}]*)
    | (?P<other>[0-9][0-9A-Za-z_.]*|\$[0-9]+|.)
    | (?P<end>\Z)
    )
    """,
    re.VERBOSE | re.DOTALL,
)
_BLOCK_COMMENT_MARK = re.compile(r"/\*|\*/")
_ESCAPE_STRING_ESCAPE = re.compile(r"\\(.)|''", re.DOTALL)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# Text without any of these (in any case) cannot pin: most queries skip the lexer entirely.
_MIGHT_PIN = re.compile(r"set|listen|temp|advisory|prepare|hold|load", re.IGNORECASE | re.ASCII)


def _tokens(sql: str) -> list[_Token]:
    tokens: list[_Token] = []
    append = tokens.append
    position = 0
    while True:
        for match in _TOKEN.finditer(sql, position):
            kind = match.lastgroup
            if kind == "word":
                append(_Token(_Kind.WORD, match.group(kind).translate(_ASCII_LOWER)))
            elif kind == "other":
                append(_Token(_Kind.OTHER, match.group(kind)))
            elif kind == "string":
                append(_Token(_Kind.STRING, match.group(kind).replace("''", "'")))
            elif kind == "identifier":
                append(_Token(_Kind.IDENTIFIER, match.group(kind).replace('""', '"')))
            elif kind == "escape_string":
                append(_Token(_Kind.STRING, _ESCAPE_STRING_ESCAPE.sub(_unescape, match.group(kind))))
            elif kind == "dollar_quote":
                append(_Token(_Kind.STRING, match.group(kind)))
            elif kind == "block_comment":
                position = _block_comment_end(sql, match.end())
                break
        else:
            return tokens


def _unescape(escape: re.Match[str]) -> str:
    # A backslash keeps the next character as is: close enough for setting names and
    # booleans, the only literal values the checks read.
    return escape.group(1) or "'"


def _block_comment_end(sql: str, position: int) -> int:
    """Where the block comment opened just before ``position`` ends (comments nest)."""
    depth = 1
    for mark in _BLOCK_COMMENT_MARK.finditer(sql, position):
        depth += 1 if mark.group() == "/*" else -1
        if depth == 0:
            return mark.end()
    return len(sql)


def _statements(tokens: list[_Token]) -> list[list[_Token]]:
    """Split at semicolons outside parentheses (as psql does); empty statements dropped."""
    statements: list[list[_Token]] = []
    current: list[_Token] = []
    depth = 0
    for token in tokens:
        if token.kind is _Kind.OTHER:
            if token.text == ";" and depth == 0:
                if current:
                    statements.append(current)
                current = []
                continue
            if token.text == "(":
                depth += 1
            elif token.text == ")":
                depth = max(depth - 1, 0)
        current.append(token)
    if current:
        statements.append(current)
    return statements


# --- checks on one statement -----------------------------------------------------------------


def _is_word(tokens: list[_Token], index: int, *words: str) -> bool:
    if not 0 <= index < len(tokens):
        return False
    token = tokens[index]
    return token.kind is _Kind.WORD and token.text in words


def _is_other(tokens: list[_Token], index: int, text: str) -> bool:
    return index < len(tokens) and tokens[index].kind is _Kind.OTHER and tokens[index].text == text


def _is_name(tokens: list[_Token], index: int, name: str) -> bool:
    """A word or quoted identifier spelling ``name`` (a lowercase name needs no quotes)."""
    if index >= len(tokens):
        return False
    token = tokens[index]
    return token.kind in (_Kind.WORD, _Kind.IDENTIFIER) and token.text == name


def _loggable(name: str) -> str:
    name = "".join(char if char.isprintable() else "?" for char in name[: MAX_NAME_IN_REASON + 1])
    return name if len(name) <= MAX_NAME_IN_REASON else name[:MAX_NAME_IN_REASON] + "..."


# SET forms whose "name" is special syntax for a setting: report the setting.
_SET_SYNTAX = {
    ("time", "zone"): "timezone",
    ("names",): "client_encoding",
    ("schema",): "search_path",
    ("xml", "option"): "xmloption",
    ("session", "authorization"): "session_authorization",
}
# SET forms that last only for the current transaction.
_SET_TRANSACTION_SCOPED = frozenset({"local", "transaction", "constraints"})


def _setting_name(tokens: list[_Token], index: int) -> str:
    """The (possibly dotted) setting name starting at ``index``; '' if there is none."""
    for words, setting in _SET_SYNTAX.items():
        if all(_is_word(tokens, index + offset, word) for offset, word in enumerate(words)):
            return setting
    parts: list[str] = []
    while index < len(tokens) and tokens[index].kind in (_Kind.WORD, _Kind.IDENTIFIER):
        # Setting names are case-insensitive, quoted or not.
        parts.append(tokens[index].text.translate(_ASCII_LOWER))
        if not _is_other(tokens, index + 1, "."):
            break
        index += 2
    return ".".join(parts)


def _set_pin(tokens: list[_Token]) -> Pin | None:
    """SET [SESSION] name ... or RESET name / RESET ALL (tokens[0] is SET or RESET)."""
    index = 1
    if tokens[0].text == "set":
        if _is_word(tokens, 1, *_SET_TRANSACTION_SCOPED):
            return None
        if _is_word(tokens, 1, "session") and not _is_word(tokens, 2, "authorization"):
            if _is_word(tokens, 2, "characteristics"):
                return Pin(REASON_SET_SESSION_CHARACTERISTICS)
            index = 2
    name = _setting_name(tokens, index)
    return Pin(f"{REASON_SET} {_loggable(name)}" if name else REASON_SET)


_TEMPORARY = ("temp", "temporary")
_RELATION_KINDS = frozenset({"table", "view", "sequence"})
# Words that may stand between CREATE and the kind of object it creates.
_CREATE_MODIFIERS = frozenset({"or", "replace", "global", "local", "unlogged", "recursive", *_TEMPORARY})


def _drops_on_commit(tokens: list[_Token]) -> bool:
    return any(
        _is_word(tokens, index, "on")
        and _is_word(tokens, index + 1, "commit")
        and _is_word(tokens, index + 2, "drop")
        for index in range(len(tokens))
    )


def _in_pg_temp(tokens: list[_Token]) -> bool:
    return any(
        _is_name(tokens, index, "pg_temp") and _is_other(tokens, index + 1, ".")
        for index in range(len(tokens))
    )


def _create_pin(tokens: list[_Token]) -> Pin | None:
    """CREATE TEMP TABLE|VIEW|SEQUENCE ..., or CREATE ... pg_temp.name (tokens[0] is CREATE)."""
    index = 1
    temporary = False
    while _is_word(tokens, index, *_CREATE_MODIFIERS):
        temporary = temporary or tokens[index].text in _TEMPORARY
        index += 1
    if not temporary and not _in_pg_temp(tokens):
        return None
    if _drops_on_commit(tokens):
        return None
    relation = _is_word(tokens, index, *_RELATION_KINDS) or temporary
    return Pin(REASON_TEMPORARY_TABLE if relation else REASON_TEMPORARY_OBJECT)


def _select_into_temporary(tokens: list[_Token], index: int) -> bool:
    """SELECT ... INTO [LOCAL|GLOBAL] TEMP|TEMPORARY ..., or INTO pg_temp.name, at ``index``."""
    if not _is_word(tokens, index, "into") or _is_word(tokens, index - 1, "insert", "merge"):
        return False
    index += 1
    if _is_word(tokens, index, "local", "global"):
        index += 1
    if _is_word(tokens, index, *_TEMPORARY):
        # INSERT INTO temp ... is ruled out above; SELECT INTO always creates a table.
        return True
    if _is_word(tokens, index, "unlogged", "table"):
        index += 1
    return _is_name(tokens, index, "pg_temp") and _is_other(tokens, index + 1, ".")


def _declare_with_hold(tokens: list[_Token]) -> bool:
    """DECLARE name ... CURSOR WITH HOLD FOR query: look only before the query's FOR."""
    for index in range(1, len(tokens)):
        if _is_word(tokens, index, "for"):
            return False
        if _is_word(tokens, index, "with") and _is_word(tokens, index + 1, "hold"):
            return True
    return False


_SESSION_ADVISORY_LOCKS = frozenset(
    {"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"}
)
_BOOLEAN_TRUE = frozenset({"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"})


def _call_arguments(tokens: list[_Token], open_paren: int) -> list[list[_Token]]:
    """The comma-separated arguments of the call whose '(' is at ``open_paren``."""
    arguments: list[list[_Token]] = [[]]
    depth = 0
    for token in tokens[open_paren + 1 :]:
        if token.kind is _Kind.OTHER:
            if token.text == "(":
                depth += 1
            elif token.text == ")":
                if depth == 0:
                    break
                depth -= 1
            elif token.text == "," and depth == 0:
                arguments.append([])
                continue
        arguments[-1].append(token)
    return arguments


def _is_true(argument: list[_Token]) -> bool:
    """A literal true, possibly cast (true, 't', 'on'::boolean); anything else may be false."""
    if not argument:
        return False
    first = argument[0]
    rest = argument[1:]
    if rest and not (_is_other(rest, 0, ":") and _is_other(rest, 1, ":")):
        return False
    if first.kind is _Kind.WORD:
        return first.text == "true"
    return first.kind is _Kind.STRING and first.text.strip(_WHITESPACE).lower() in _BOOLEAN_TRUE


def _set_config_pin(tokens: list[_Token], open_paren: int) -> Pin | None:
    """set_config(name, value, is_local): session state unless is_local is a literal true."""
    arguments = _call_arguments(tokens, open_paren)
    if len(arguments) == 3 and _is_true(arguments[2]):
        return None
    name = arguments[0]
    if name and name[0].kind is _Kind.STRING:
        return Pin(f"{REASON_SET_CONFIG} {_loggable(name[0].text.translate(_ASCII_LOWER))}")
    return Pin(REASON_SET_CONFIG)


_EXPLAIN_OPTIONS = frozenset({"analyze", "analyse", "verbose"})


def _explained(tokens: list[_Token]) -> list[_Token]:
    """The statement an EXPLAIN runs (EXPLAIN ANALYZE CREATE TEMP TABLE ... AS creates it)."""
    index = 1
    if _is_other(tokens, 1, "("):
        options = _call_arguments(tokens, 1)
        index = 2 + sum(len(option) for option in options) + len(options)  # + commas and ")"
    while _is_word(tokens, index, *_EXPLAIN_OPTIONS):
        index += 1
    return tokens[index:]


def _statement_pins(tokens: list[_Token]) -> list[Pin]:
    if _is_word(tokens, 0, "explain"):
        tokens = _explained(tokens)
        if not tokens:
            return []
    pins: list[Pin] = []
    first = tokens[0].text if tokens[0].kind is _Kind.WORD else ""
    statement_pin: Pin | None = None
    if first in ("set", "reset"):
        statement_pin = _set_pin(tokens)
    elif first == "listen":
        statement_pin = Pin(REASON_LISTEN)
    elif first == "create":
        statement_pin = _create_pin(tokens)
    elif first == "prepare":
        # PREPARE TRANSACTION 'gid' is two-phase commit, not a prepared statement.
        two_phase = _is_word(tokens, 1, "transaction") and len(tokens) > 2 and tokens[2].kind is _Kind.STRING
        statement_pin = None if two_phase else Pin(REASON_PREPARE)
    elif first == "declare":
        statement_pin = Pin(REASON_DECLARE_WITH_HOLD) if _declare_with_hold(tokens) else None
    elif first == "load":
        statement_pin = Pin(REASON_LOAD)
    if statement_pin is not None:
        pins.append(statement_pin)

    selects = first in ("select", "with") or _is_other(tokens, 0, "(")
    for index, token in enumerate(tokens):
        if selects and _select_into_temporary(tokens, index):
            pins.append(Pin(REASON_TEMPORARY_TABLE))
        if token.kind not in (_Kind.WORD, _Kind.IDENTIFIER) or not _is_other(tokens, index + 1, "("):
            continue
        if token.text in _SESSION_ADVISORY_LOCKS:
            pins.append(Pin(REASON_ADVISORY_LOCK))
        elif token.text == "set_config":
            pin = _set_config_pin(tokens, index + 1)
            if pin is not None:
                pins.append(pin)
    return pins


def session_state_pins(sql: str) -> list[Pin]:
    """Every pin the statements in ``sql`` call for, in order; [] for transaction-safe SQL.

    Never raises: malformed text (an unterminated quote or comment) is classified as far as
    it goes and the rest taken as a literal, as PostgreSQL would reject it anyway.
    """
    if _MIGHT_PIN.search(sql) is None:
        return []
    pins: list[Pin] = []
    for statement in _statements(_tokens(sql)):
        pins.extend(_statement_pins(statement))
    return pins


# Applications send the same statements over and over: remember the answer for short ones.
CACHED_TEXT_LIMIT = 4096
CACHED_STATEMENTS = 4096


def statement_pins(sql: str) -> tuple[Pin, ...]:
    """``session_state_pins``, remembered for the last ``CACHED_STATEMENTS`` short texts."""
    if len(sql) > CACHED_TEXT_LIMIT:
        return tuple(session_state_pins(sql))
    return _remembered_pins(sql)


@functools.lru_cache(maxsize=CACHED_STATEMENTS)
def _remembered_pins(sql: str) -> tuple[Pin, ...]:
    return tuple(session_state_pins(sql))
