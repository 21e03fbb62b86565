"""session_state_pins: which SQL leaves session state behind that transaction pooling cannot
carry to another server connection, and which quoting and comments hide a keyword."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.postgres.session_state import Pin, session_state_pins


def reasons(sql: str) -> list[str]:
    return [pin.reason for pin in session_state_pins(sql)]


# --- what pins ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # session-level SET and RESET
        ("SET search_path = app, public", "SET search_path"),
        ("SET search_path TO app", "SET search_path"),
        ("SET SESSION search_path TO app", "SET search_path"),
        ("SET statement_timeout = '5s'", "SET statement_timeout"),
        ("SET myapp.tenant_id = '42'", "SET myapp.tenant_id"),
        ('SET "MyApp"."Tenant" = 1', "SET myapp.tenant"),
        ("SET TIME ZONE 'UTC'", "SET timezone"),
        ("SET SESSION TIME ZONE 'UTC'", "SET timezone"),
        ("SET NAMES 'UTF8'", "SET client_encoding"),
        ("SET SCHEMA 'app'", "SET search_path"),
        ("SET ROLE reporting", "SET role"),
        ("SET SESSION AUTHORIZATION alice", "SET session_authorization"),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET SESSION CHARACTERISTICS",
        ),
        ("RESET search_path", "SET search_path"),
        ("RESET ALL", "SET all"),
        ("RESET TIME ZONE", "SET timezone"),
        ("RESET SESSION AUTHORIZATION", "SET session_authorization"),
        ("SET", "SET"),
        # set_config(name, value, is_local) unless is_local is a literal true
        ("SELECT set_config('search_path', 'app', false)", "set_config search_path"),
        ("SELECT set_config('search_path', 'app', 'f')", "set_config search_path"),
        ("SELECT set_config('search_path', 'app', 'false')", "set_config search_path"),
        ("SELECT pg_catalog.set_config('Application_Name', 'x', FALSE)", "set_config application_name"),
        ("SELECT set_config('a.b', $1, $2)", "set_config a.b"),
        ("SELECT set_config(E'search\\_path', 'x', false)", "set_config search_path"),
        ("SELECT set_config($1, $2, false)", "set_config"),
        ("SELECT set_config(name, 'x', 'off') FROM settings", "set_config"),
        ("SELECT \"set_config\"('work_mem', '1MB', false)", "set_config work_mem"),
        # LISTEN
        ("LISTEN jobs", "LISTEN"),
        ('LISTEN "Jobs"', "LISTEN"),
        # temporary tables and other objects in pg_temp
        ("CREATE TEMP TABLE t (id int)", "temporary table"),
        ("CREATE TEMPORARY TABLE t (id int)", "temporary table"),
        ("CREATE LOCAL TEMPORARY TABLE t (id int)", "temporary table"),
        ("CREATE GLOBAL TEMP TABLE t (id int)", "temporary table"),
        ("CREATE TEMP TABLE IF NOT EXISTS t (id int) ON COMMIT DELETE ROWS", "temporary table"),
        ("CREATE TEMP TABLE t ON COMMIT PRESERVE ROWS AS SELECT 1", "temporary table"),
        ("CREATE TEMP VIEW v AS SELECT 1", "temporary table"),
        ("CREATE OR REPLACE TEMPORARY VIEW v AS SELECT 1", "temporary table"),
        ("CREATE TEMP SEQUENCE s", "temporary table"),
        ("CREATE TEMP RECURSIVE VIEW v (n) AS VALUES (1)", "temporary table"),
        ("CREATE TABLE pg_temp.t (id int)", "temporary table"),
        ('CREATE TABLE "pg_temp".t (id int)', "temporary table"),
        ("CREATE UNLOGGED TABLE pg_temp.t (id int)", "temporary table"),
        ("CREATE VIEW pg_temp.v AS SELECT 1", "temporary table"),
        ("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "temporary object"),
        ("SELECT * INTO TEMP t FROM source", "temporary table"),
        ("SELECT * INTO TEMPORARY TABLE t FROM source", "temporary table"),
        ("SELECT 1 AS a INTO LOCAL TEMP t", "temporary table"),
        ("SELECT 1 AS a INTO pg_temp.t", "temporary table"),
        ("WITH s AS (SELECT 1 AS a) SELECT * INTO TEMP t FROM s", "temporary table"),
        ("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", "temporary table"),
        ("EXPLAIN (ANALYZE, BUFFERS off) SELECT 1 AS a INTO TEMP t", "temporary table"),
        # session advisory locks (not the _xact_ ones)
        ("SELECT pg_advisory_lock(42)", "session advisory lock"),
        ("SELECT pg_advisory_lock_shared(1, 2)", "session advisory lock"),
        ("SELECT pg_try_advisory_lock(hashtext('job'))", "session advisory lock"),
        ("SELECT pg_try_advisory_lock_shared(7)", "session advisory lock"),
        ("SELECT pg_catalog.pg_advisory_lock(42)", "session advisory lock"),
        ("SELECT id FROM jobs WHERE pg_try_advisory_lock(id) LIMIT 1", "session advisory lock"),
        ("UPDATE jobs SET owner = 1 WHERE pg_try_advisory_lock(id)", "session advisory lock"),
        ("SELECT (SELECT pg_advisory_lock(1))", "session advisory lock"),
        # SQL-level PREPARE, WITH HOLD cursors, LOAD
        ("PREPARE q (int) AS SELECT $1", "PREPARE"),
        ("PREPARE q AS SELECT 1", "PREPARE"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DECLARE WITH HOLD"),
        ("DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM t", "DECLARE WITH HOLD"),
        ("DECLARE c BINARY INSENSITIVE SCROLL CURSOR WITH HOLD FOR SELECT 1", "DECLARE WITH HOLD"),
        ("LOAD 'auto_explain'", "LOAD"),
        ("LOAD '$libdir/plugins/auto_explain'", "LOAD"),
    ],
)
def test_statement_pins(sql: str, expected: str) -> None:
    assert session_state_pins(sql) == [Pin(expected)]


# --- what does not pin -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "",
        "   ",
        ";;",
        "SELECT 1",
        "BEGIN; SELECT 1; COMMIT",
        # transaction-scoped settings
        "SET LOCAL search_path = app",
        "SET LOCAL statement_timeout = '5s'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
        "SET CONSTRAINTS ALL DEFERRED",
        "SELECT set_config('search_path', 'app', true)",
        "SELECT set_config('search_path', 'app', 't')",
        "SELECT set_config('search_path', 'app', 'on')",
        "SELECT set_config('search_path', 'app', true::boolean)",
        "SELECT current_setting('search_path')",
        # SET as part of other statements
        "UPDATE t SET a = 1",
        "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 2",
        "ALTER ROLE app SET search_path = app",
        "ALTER DATABASE app SET work_mem = '64MB'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = app AS 'SELECT 1'",
        "ALTER TABLE t ALTER COLUMN c SET DEFAULT 0",
        # notifications other than LISTEN
        "UNLISTEN jobs",
        "UNLISTEN *",
        "NOTIFY jobs, 'payload'",
        "SELECT pg_notify('jobs', 'x')",
        # tables that are not temporary, or vanish with the transaction
        "CREATE TABLE t (id int)",
        "CREATE UNLOGGED TABLE t (id int)",
        "CREATE TEMP TABLE t (id int) ON COMMIT DROP",
        "create temporary table t on commit drop as select 1",
        "CREATE TABLE pg_temp.t (id int) ON COMMIT DROP",
        "INSERT INTO temp VALUES (1)",
        "INSERT INTO temp (a) SELECT 1",
        "WITH s AS (SELECT 1) INSERT INTO temp SELECT * FROM s",
        "MERGE INTO temp USING s ON true WHEN MATCHED THEN DO NOTHING",
        "SELECT temp FROM t",
        "SELECT * FROM temporary_results",
        # transaction-level advisory locks and unlocks
        "SELECT pg_advisory_xact_lock(42)",
        "SELECT pg_advisory_xact_lock_shared(42)",
        "SELECT pg_try_advisory_xact_lock(42)",
        "SELECT pg_try_advisory_xact_lock_shared(42)",
        "SELECT pg_advisory_unlock(42)",
        "SELECT pg_advisory_unlock_all()",
        "SELECT pg_advisory_lock FROM t",
        # prepared statements and cursors that do not outlive the transaction
        "DEALLOCATE q",
        "DEALLOCATE ALL",
        "EXECUTE q(1)",
        "PREPARE TRANSACTION 'gid-1'",
        "COMMIT PREPARED 'gid-1'",
        "DECLARE c CURSOR FOR SELECT 1",
        "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
        "DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold",
        "DECLARE c CURSOR FOR SELECT 1 AS with, 2 AS hold",
        # words that merely contain a keyword
        "SELECT * FROM settings",
        "SELECT reset_count, listener, loader, prepared FROM stats",
        "SELECT offset_value FROM t OFFSET 10",
        "EXPLAIN SELECT 1",
        "DISCARD ALL",
    ],
)
def test_no_pin(sql: str) -> None:
    assert session_state_pins(sql) == []


# --- what hides a keyword ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'SET x = 1'",
        "SELECT 'it''s; SET x = 1; LISTEN y'",
        "SELECT '', 'LISTEN x'",
        "SELECT E'\\'; SET x = 1; --'",
        "SELECT e'\\\\'' LISTEN x'",
        "SELECT E'a'' ; LISTEN x'",
        "SELECT $$LISTEN x$$",
        "SELECT $$; SET x = 1; $$",
        "SELECT $tag$ $$ LISTEN x $$ $tag$",
        "SELECT $a$ $b$ ; SET x = 1 $b$ $a$",
        "SELECT $_1$ LISTEN x $_1$",
        "SELECT $ä$ LISTEN x $ä$",
        "-- LISTEN x",
        "SELECT 1 -- ; LISTEN x",
        "SELECT 1 --; SET x = 1\r",
        "/* PREPARE */",
        "/* LISTEN x */ SELECT 1",
        "/* /* nested */ ; SET x = 1 */ SELECT 1",
        "/* /* /* deeper */ */ LISTEN x; */ SELECT 1",
        "SELECT 1 /* ; LISTEN x */",
        'SELECT "listen" FROM t',
        'SELECT "x; SET y = 1" FROM t',
        'SELECT "a""; LISTEN x" FROM t',
        "SELECT U&'\\0041; LISTEN x'",
        "SELECT B'1010', X'1F' -- ; LISTEN x",
        "SELECT pg_advisory_xact_lock(1) -- pg_advisory_lock(1)",
        "SELECT 'pg_advisory_lock(1)'",
        "SELECT $$pg_advisory_lock(1)$$",
        'SELECT "pg_advisory_lock" FROM t',
        "SELECT 'set_config(''a'', ''b'', false)'",
        "SELECT f('CREATE TEMP TABLE t (id int)')",
        "COMMENT ON TABLE t IS 'LOAD ''x''; PREPARE q AS SELECT 1'",
        "DO $$ BEGIN RAISE NOTICE 'hi'; END $$",
    ],
)
def test_quoting_and_comments_hide_keywords(sql: str) -> None:
    assert session_state_pins(sql) == []


def test_a_keyword_right_after_a_literal_or_comment_still_counts() -> None:
    assert reasons("SELECT 'x';LISTEN a") == ["LISTEN"]
    assert reasons("SELECT $$x$$;LISTEN a") == ["LISTEN"]
    assert reasons("/* c */LISTEN a") == ["LISTEN"]
    assert reasons("-- c\nLISTEN a") == ["LISTEN"]
    assert reasons("/* a /* b */ c */SET x=1") == ["SET x"]
    assert reasons('SELECT "x";SET y=1') == ["SET y"]


def test_dollar_inside_identifiers_and_parameters_opens_no_quote() -> None:
    # x$y$ is one identifier; $1 is a parameter: neither starts a dollar-quoted string.
    assert reasons("SELECT x$y$ FROM t; SET a = 1; SELECT $y$") == ["SET a"]
    assert reasons("SELECT $1; SET a = $2; SELECT 1 $1$") == ["SET a"]


def test_plain_strings_treat_backslash_as_an_ordinary_character() -> None:
    # standard_conforming_strings = on: 'a\' ends at the second quote.
    assert reasons("SELECT 'a\\'; SET x = 1; --'") == ["SET x"]


# --- several statements, case and whitespace ------------------------------------------------------


def test_every_pin_of_a_multi_statement_text_in_order() -> None:
    sql = """
        BEGIN;
        SET LOCAL lock_timeout = '1s';
        SET search_path = app;
        SELECT 'LISTEN nope';
        LISTEN jobs;
        CREATE TEMP TABLE scratch (id int);
        CREATE TEMP TABLE gone (id int) ON COMMIT DROP;
        SELECT pg_advisory_lock(1), set_config('work_mem', '1MB', false), pg_try_advisory_lock(2);
        PREPARE q AS SELECT 1;
        DECLARE c CURSOR WITH HOLD FOR SELECT 1;
        LOAD 'auto_explain';
        COMMIT;
    """
    assert reasons(sql) == [
        "SET search_path",
        "LISTEN",
        "temporary table",
        "session advisory lock",
        "set_config work_mem",
        "session advisory lock",
        "PREPARE",
        "DECLARE WITH HOLD",
        "LOAD",
    ]


def test_statements_split_only_at_semicolons_outside_parentheses() -> None:
    # A rule's action list keeps its semicolons inside parentheses, as psql does.
    sql = "CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b); LISTEN c"
    assert reasons(sql) == ["LISTEN"]


def test_statement_without_trailing_semicolon_and_empty_statements() -> None:
    assert reasons(";; SET a = 1 ;;; LISTEN b") == ["SET a", "LISTEN"]


@pytest.mark.parametrize(
    "sql",
    [
        "set search_path = app",
        "SeT SeArCh_PaTh = app",
        "SET\tsearch_path\n=\napp",
        "\n\n  SET   search_path\r\n TO\fapp  ;  ",
        "SET/* comment */search_path=app",
        "SET -- comment\n search_path TO app",
        "set session search_path to app",
        'SET "search_path" = app',
    ],
)
def test_keywords_are_case_insensitive_and_whitespace_is_free(sql: str) -> None:
    assert reasons(sql) == ["SET search_path"]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("listen\tx", ["LISTEN"]),
        ("Create\nTemp\nTable t()", ["temporary table"]),
        ("select PG_ADVISORY_LOCK(1)", ["session advisory lock"]),
        ("select pg_advisory_lock (1)", ["session advisory lock"]),
        ("select SET_CONFIG('a', 'b', FALSE)", ["set_config a"]),
        ("prepare Q as select 1", ["PREPARE"]),
        ("declare c cursor with\nhold for select 1", ["DECLARE WITH HOLD"]),
        ("load 'x'", ["LOAD"]),
        ("set local x = 1", []),
        ("SET Local x = 1", []),
        ("set session characteristics as transaction read only", ["SET SESSION CHARACTERISTICS"]),
    ],
)
def test_case_and_whitespace_variants(sql: str, expected: list[str]) -> None:
    assert reasons(sql) == expected


def test_quoted_names_keep_their_case_where_postgresql_does() -> None:
    # A quoted identifier is never a keyword, and "PG_ADVISORY_LOCK" is another function.
    assert reasons('"SET" x = 1') == []
    assert reasons('SELECT "PG_ADVISORY_LOCK"(1)') == []
    assert reasons('SELECT "pg_advisory_lock"(1)') == ["session advisory lock"]


def test_names_in_reasons_are_bounded_and_printable() -> None:
    long_name = "x" * 500
    assert reasons(f"SET {long_name} = 1") == [f"SET {'x' * 64}..."]
    assert reasons('SET "a\nb\x1b[31m" = 1') == ["SET a?b?[31m"]


# --- malformed text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SET a = 1; SELECT 'unterminated; LISTEN x", ["SET a"]),
        ("SET a = 1; SELECT E'unterminated\\'; LISTEN x", ["SET a"]),
        ("SET a = 1; SELECT E'ends with a backslash\\", ["SET a"]),
        ("SET a = 1; SELECT $$unterminated; LISTEN x", ["SET a"]),
        ("SET a = 1; SELECT $t$unterminated $$; LISTEN x", ["SET a"]),
        ('SET a = 1; SELECT "unterminated; LISTEN x', ["SET a"]),
        ("SET a = 1; /* unterminated; LISTEN x", ["SET a"]),
        ("SET a = 1; /* /* nested */ unterminated; LISTEN x", ["SET a"]),
        ("SET a = 1; -- no newline; LISTEN x", ["SET a"]),
        ("SELECT pg_advisory_lock(", ["session advisory lock"]),
        ("SELECT set_config('a', 'b'", ["set_config a"]),
        ("SELECT set_config(", ["set_config"]),
        ("SELECT 1); LISTEN x", ["LISTEN"]),
        ("SELECT ((1; LISTEN x", []),
        ("EXPLAIN (ANALYZE", []),
        ("$", []),
        ("'", []),
        ('"', []),
        ("E'", []),
        ("/*", []),
        ("*/; LISTEN x", ["LISTEN"]),
    ],
)
def test_malformed_text_is_classified_as_far_as_it_goes(sql: str, expected: list[str]) -> None:
    assert reasons(sql) == expected


def test_pins_are_loggable_values() -> None:
    pin = session_state_pins("LISTEN x")[0]
    assert pin == Pin("LISTEN")
    assert hash(pin) == hash(Pin("LISTEN"))
    with pytest.raises(AttributeError):
        pin.reason = "other"  # type: ignore[misc]


def test_a_large_query_without_pins_is_classified_quickly() -> None:
    # A bulk insert with many literals, some containing trigger words, must not crawl.
    rows = ",".join(f"({n}, 'settled', 'temperature {n}')" for n in range(20_000))
    assert session_state_pins(f"INSERT INTO readings VALUES {rows}") == []


# --- properties ------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, database=None)

sqlish_text = st.text(
    alphabet=st.sampled_from(list("SETLISNCRAPDHOLW_tempgvxyq$'\"-/*;(),.:=\\ \n\tEeä0123")),
    max_size=80,
)
pinning_statements = st.sampled_from(
    [
        "SET search_path = app",
        "RESET ALL",
        "LISTEN jobs",
        "CREATE TEMP TABLE t (id int)",
        "SELECT pg_advisory_lock(1)",
        "SELECT set_config('a', 'b', false)",
        "PREPARE q AS SELECT 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "LOAD 'x'",
    ]
)
plain_statements = st.sampled_from(
    [
        "SELECT 1",
        "SET LOCAL a = 1",
        "UNLISTEN *",
        "SELECT 'LISTEN x'",
        "CREATE TEMP TABLE t () ON COMMIT DROP",
    ]
)
statements = st.one_of(pinning_statements, plain_statements)


@PROPERTY_SETTINGS
@given(sql=st.one_of(st.text(max_size=200), sqlish_text))
def test_property_random_text_never_raises(sql: str) -> None:
    for pin in session_state_pins(sql):
        assert isinstance(pin, Pin)
        assert pin.reason.isprintable()


@PROPERTY_SETTINGS
@given(parts=st.lists(statements, max_size=6))
def test_property_pins_of_joined_statements_are_the_pins_of_each_in_order(parts: list[str]) -> None:
    expected = [pin for part in parts for pin in session_state_pins(part)]
    assert session_state_pins(";\n".join(parts)) == expected


@PROPERTY_SETTINGS
@given(body=st.one_of(sqlish_text, st.text(max_size=80)), statement=pinning_statements)
def test_property_nothing_inside_a_literal_or_comment_pins(body: str, statement: str) -> None:
    quoted = "'" + body.replace("'", "''") + "'"
    identifier = '"' + body.replace('"', '""') + '"'
    dollar = f"$q$ {body} $q$" if "$q$" not in body else "$$$$"
    line_comment = "-- " + body.replace("\n", " ").replace("\r", " ")
    block = "/* " + body.replace("*", "+") + " */"
    for hidden in (quoted, identifier, dollar):
        assert session_state_pins(f"SELECT {hidden}") == []
        # ... and a real statement after it still counts
        assert session_state_pins(f"SELECT {hidden}; {statement}") == session_state_pins(statement)
    assert session_state_pins(line_comment) == []
    assert session_state_pins(f"{line_comment}\n{statement}") == session_state_pins(statement)
    assert session_state_pins(block) == []
    assert session_state_pins(f"{block}{statement}") == session_state_pins(statement)
