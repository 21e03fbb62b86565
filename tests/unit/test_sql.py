"""The one quoting module per engine: exact output, refusals, and a round trip through each
engine's own lexing rules (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError
from protocols.mysql import sql as mysql_sql
from protocols.postgres import sql as pg_sql

TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=40)


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", "'plain'"),
        ("it's", "'it''s'"),
        ("back\\slash", "E'back\\\\slash'"),
        ("both\\'", "E'both\\\\'''"),
        ("", "''"),
    ],
)
def test_postgres_literal_means_the_same_whatever_standard_conforming_strings_says(
    value: str, quoted: str
) -> None:
    assert pg_sql.literal(value) == quoted


def test_postgres_identifier_doubles_quotes() -> None:
    assert pg_sql.identifier('we"ird') == '"we""ird"'


@pytest.mark.parametrize("bad", ["", "nul\x00"])
def test_postgres_identifier_refuses_what_cannot_be_a_name(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        pg_sql.identifier(bad)


def test_literals_refuse_nul() -> None:
    with pytest.raises(LocalProtocolError):
        pg_sql.literal("a\x00b")
    with pytest.raises(LocalProtocolError):
        mysql_sql.literal("a\x00b")


def test_mysql_literal_follows_no_backslash_escapes() -> None:
    assert mysql_sql.literal("a\\'b") == "'a\\\\''b'"
    assert mysql_sql.literal("a\\'b", backslash_escapes=False) == "'a\\''b'"


def test_mysql_identifier_and_account() -> None:
    assert mysql_sql.identifier("we`ird") == "`we``ird`"
    assert mysql_sql.account("app", "%") == "'app'@'%'"
    with pytest.raises(LocalProtocolError):
        mysql_sql.identifier("")


def _read_literal(body: str, backslash_escapes: bool) -> str:
    """What a server's lexer makes of a literal's body: '' is a quote, and with escapes on a
    backslash takes the next character as it is."""
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "'":
            assert body[i + 1] == "'"
            out.append("'")
            i += 2
        elif backslash_escapes and ch == "\\":
            out.append(body[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _read_pg_literal(text: str) -> str:
    escape = text.startswith("E'")  # only an escape-string literal takes backslash escapes
    return _read_literal(text[2:-1] if escape else text[1:-1], escape)


@given(TEXT)
def test_postgres_literal_round_trips(value: str) -> None:
    assert _read_pg_literal(pg_sql.literal(value)) == value


@given(TEXT, st.booleans())
def test_mysql_literal_round_trips(value: str, backslash_escapes: bool) -> None:
    quoted = mysql_sql.literal(value, backslash_escapes=backslash_escapes)
    assert _read_literal(quoted[1:-1], backslash_escapes) == value
