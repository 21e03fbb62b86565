"""Quoting for the SQL the proxy writes itself (character sets, rotation, throwaway servers).

One rule for each: a value that cannot be quoted (a NUL, an empty name) is refused with
``LocalProtocolError``, never passed through.
"""

from __future__ import annotations

from protocols.errors import LocalProtocolError


def identifier(name: str) -> str:
    """A backtick-quoted identifier (database, table)."""
    if not name or "\x00" in name:
        raise LocalProtocolError(f"{name!r} cannot be a MySQL identifier")
    return "`" + name.replace("`", "``") + "`"


def literal(value: str, *, backslash_escapes: bool = True) -> str:
    """A string literal. With ``NO_BACKSLASH_ESCAPES`` in the session's sql_mode (pass
    ``backslash_escapes=False``) a backslash is an ordinary character and must not be doubled."""
    if "\x00" in value:
        raise LocalProtocolError("a MySQL string cannot contain NUL")
    if backslash_escapes:
        value = value.replace("\\", "\\\\")
    return "'" + value.replace("'", "''") + "'"


def account(user: str, host: str, *, backslash_escapes: bool = True) -> str:
    """``'user'@'host'``, as CREATE USER, ALTER USER and GRANT take an account."""
    quoted_user = literal(user, backslash_escapes=backslash_escapes)
    return quoted_user + "@" + literal(host, backslash_escapes=backslash_escapes)
