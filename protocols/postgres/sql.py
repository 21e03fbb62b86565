"""Quoting for the SQL the proxy writes itself (settings, rotation, throwaway servers).

One rule for each: a value that cannot be quoted (a NUL, an empty name) is refused with
``LocalProtocolError``, never passed through.
"""

from __future__ import annotations

from protocols.errors import LocalProtocolError


def identifier(name: str) -> str:
    """A double-quoted identifier (role, database, table)."""
    if not name or "\x00" in name:
        raise LocalProtocolError(f"{name!r} cannot be a PostgreSQL identifier")
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """A string literal that means the same whatever ``standard_conforming_strings`` says:
    a plain literal, or an escape-string literal (``E'...'``) when it holds a backslash."""
    if "\x00" in value:
        raise LocalProtocolError("a PostgreSQL string cannot contain NUL")
    quoted = value.replace("'", "''")
    if "\\" in value:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"
