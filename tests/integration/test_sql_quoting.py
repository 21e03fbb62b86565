"""The quoting modules against the servers themselves: whatever text ``protocols.postgres.sql``
and ``protocols.mysql.sql`` quote, PostgreSQL and MariaDB read back unchanged, in each mode
that changes what a backslash means."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.mysql import sql as mysql_sql
from protocols.mysql.constants import SERVER_STATUS_NO_BACKSLASH_ESCAPES
from protocols.postgres import sql as pg_sql
from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.tls import TlsFiles
from tests.conftest import MySqlUsers, Users

EXAMPLES = settings(max_examples=50, deadline=None)
# What quoting is about: quotes, backslashes, LIKE wildcards.
QUOTING = st.sampled_from("'\"`\\%_")
# Any character but NUL (and lone surrogates, which are not text).
ANY = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
# MariaDB stores names as utf8mb3: nothing beyond U+FFFF.
BMP = st.characters(max_codepoint=0xFFFF, exclude_characters="\x00", exclude_categories=["Cs"])


def text_with_quoting(characters: st.SearchStrategy[str], *, min_pieces: int = 0) -> st.SearchStrategy[str]:
    """Runs of ``characters`` with QUOTING between them: drawn from one alphabet, hypothesis
    would put a backslash in one example of fifty."""
    pieces = st.one_of(QUOTING, st.text(characters, min_size=1, max_size=4))
    return st.lists(pieces, min_size=min_pieces, max_size=12).map("".join)


TEXT = text_with_quoting(ANY)
# Names each server keeps as written. PostgreSQL truncates past 63 bytes (NAMEDATALEN).
PG_NAMES = text_with_quoting(ANY, min_pieces=1).filter(lambda name: len(name.encode()) <= 63)
# MariaDB takes at most 255 bytes and strips a leading space or control character from a
# column alias (warning 1466).
MYSQL_NAMES = text_with_quoting(BMP, min_pieces=1).filter(
    lambda name: name[0] > " " and name[0] != "\x7f" and len(name.encode()) <= 255
)


@pytest.fixture(scope="module", params=["on", "off"], ids=lambda p: f"standard_conforming_strings={p}")
def pg_session(
    request: pytest.FixtureRequest, pg: ThrowawayPostgres, users: Users, tls: TlsFiles
) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(
        host="localhost",
        port=pg.port,
        user="app",
        password=users.app,
        dbname="appdb",
        sslmode="verify-full",
        sslrootcert=str(tls.ca_file),
        autocommit=True,
    ) as conn:
        conn.execute(f"SET standard_conforming_strings = {request.param}".encode())
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == (request.param,)
        yield conn


@pytest.fixture(scope="module", params=[True, False], ids=["backslash-escapes", "NO_BACKSLASH_ESCAPES"])
def mysql_session(
    request: pytest.FixtureRequest, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers
) -> Iterator[tuple[pymysql.connections.Connection[Any], bool]]:
    backslash_escapes: bool = request.param
    conn = pymysql.connect(
        host="127.0.0.1",
        port=mariadb.port,
        user="app",
        password=mysql_users.app,
        database="appdb",
        charset="utf8mb4",
        ssl_disabled=True,
        autocommit=True,
    )
    sql_mode = (
        "REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')"
        if backslash_escapes
        else "CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')"
    )
    with conn:
        with conn.cursor() as cursor:
            cursor.execute(f"SET SESSION sql_mode = {sql_mode}")
        # The flag the proxy's own SQL decides by (rotation reads it from the server status).
        assert bool(conn.server_status & SERVER_STATUS_NO_BACKSLASH_ESCAPES) is not backslash_escapes
        yield conn, backslash_escapes


@EXAMPLES
@given(value=TEXT, name=PG_NAMES)
def test_postgres_reads_back_the_text_of_every_literal_and_identifier(
    pg_session: psycopg.Connection[tuple[Any, ...]], value: str, name: str
) -> None:
    query = f"SELECT {pg_sql.literal(value)} AS {pg_sql.identifier(name)}"
    cursor = pg_session.execute(query.encode())
    assert cursor.fetchone() == (value,)
    assert cursor.description is not None
    assert cursor.description[0].name == name


@EXAMPLES
@given(value=TEXT, name=MYSQL_NAMES)
def test_mariadb_reads_back_the_text_of_every_literal_and_identifier(
    mysql_session: tuple[pymysql.connections.Connection[Any], bool], value: str, name: str
) -> None:
    conn, backslash_escapes = mysql_session
    literal = mysql_sql.literal(value, backslash_escapes=backslash_escapes)
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {literal} AS {mysql_sql.identifier(name)}")
        assert cursor.fetchone() == (value,)
        assert cursor.description[0][0] == name
        cursor.execute("SHOW WARNINGS")  # e.g. a name cut short or changed
        assert cursor.fetchall() == ()
