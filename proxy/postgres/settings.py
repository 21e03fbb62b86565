"""Client startup settings carried onto server connections with ``set_config``.

The server then validates and normalises them exactly as at login (``utf8`` → ``UTF8``).
"""

from __future__ import annotations

from collections.abc import Mapping

from protocols.postgres import sql
from protocols.postgres.messages import SQLSTATE_FEATURE_NOT_SUPPORTED, SQLSTATE_PROTOCOL_VIOLATION

# Startup parameters that are not session settings.
_NOT_SETTINGS = frozenset({"user", "database", "options", "replication"})


class ClientError(Exception):
    """End the session with a FATAL ErrorResponse carrying this SQLSTATE and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_options(options: str) -> dict[str, str]:
    """The ``options`` startup parameter: ``-c name=value`` / ``--name=value``, backslash escapes.

    PostgreSQL splits it at white space, a backslash escaping the next character, and takes
    quotes literally. A quote that does not close within its word was almost surely meant
    as quoting (``-c search_path='a b'``), which would set something other than meant: it is
    refused, as are a ``-c`` with nothing after it and a trailing lone backslash.
    """
    words: list[str] = []
    current: list[str] = []
    quotes: list[str] = []  # unescaped quote characters in the current word
    escaped = False
    for char in options:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if current:
                _check_quotes(quotes, "".join(current))
                words.append("".join(current))
                current, quotes = [], []
        else:
            if char in "'\"":
                quotes.append(char)
            current.append(char)
    if escaped:
        raise ClientError(SQLSTATE_PROTOCOL_VIOLATION, "invalid startup options: a lone backslash at the end")
    if current:
        _check_quotes(quotes, "".join(current))
        words.append("".join(current))
    settings: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c":
            if index + 1 == len(words):
                raise ClientError(
                    SQLSTATE_PROTOCOL_VIOLATION, "invalid startup options: -c without name=value"
                )
            setting = words[index + 1]
            index += 2
        elif (word.startswith("-c") and len(word) > 2) or (word.startswith("--") and "=" in word):
            setting, index = word[2:], index + 1
        else:
            raise ClientError(
                SQLSTATE_FEATURE_NOT_SUPPORTED,
                f"unsupported startup option {word!r}: only -c name=value settings pass through rotaproxy",
            )
        name, sep, value = setting.partition("=")
        if not sep or not name:
            raise ClientError(SQLSTATE_PROTOCOL_VIOLATION, f"invalid startup option {setting!r}")
        settings[name.replace("-", "_")] = value
    return settings


def _check_quotes(quotes: list[str], word: str) -> None:
    if quotes.count("'") % 2 or quotes.count('"') % 2:
        raise ClientError(
            SQLSTATE_PROTOCOL_VIOLATION,
            f"invalid startup options: unbalanced quote in {word!r} (options take no quoting: "
            "escape a space or a quote with a backslash)",
        )


def session_settings(parameters: Mapping[str, str]) -> dict[str, str]:
    settings = {k: v for k, v in parameters.items() if k not in _NOT_SETTINGS and not k.startswith("_pq_.")}
    settings.update(parse_options(parameters.get("options", "")))
    return settings


def set_config_query(settings: Mapping[str, str]) -> str:
    calls = ", ".join(
        f"pg_catalog.set_config({sql.literal(name)}, {sql.literal(value)}, false)"
        for name, value in settings.items()
    )
    return f"SELECT {calls}"
