"""Which MySQL statements pin a transaction-mode client, read what the proxy brings, or are
refused: the text with literals and comments taken out, as the server would read it."""

from __future__ import annotations

import pytest

from protocols.mysql.session_state import (
    ERROR_COUNT,
    INSPECT_LIMIT,
    REASON_FOUND_ROWS,
    REASON_GLOBAL_READ_LOCK,
    REASON_HANDLER,
    REASON_LAST_INSERT_ID,
    REASON_LOCK_TABLES,
    REASON_NAMED_LOCK,
    REASON_PREPARE,
    REASON_SEQUENCE,
    REASON_TEMPORARY_TABLE,
    REASON_TOO_LARGE,
    REASON_USER_VARIABLE,
    REASON_XA,
    ROW_COUNT,
    WARNING_COUNT,
    counter_alone,
    ends_transaction,
    inspect,
)


@pytest.mark.parametrize(
    ("sql", "pins"),
    [
        ("SET @x = 1", [REASON_USER_VARIABLE]),
        ("SELECT @x := 5", [REASON_USER_VARIABLE]),
        ("SELECT a INTO @a FROM t", [REASON_USER_VARIABLE]),
        ("SET @`odd name` = 2", [REASON_USER_VARIABLE]),
        ("SELECT @x", []),  # reading one nobody set here is NULL on any connection
        ("SELECT @@time_zone", []),
        ("SELECT '@x := 1', \"SET @y = 2\" -- SET @z = 3", []),  # literals and comments
        ("SELECT 1 /*! , @v := 1 */", [REASON_USER_VARIABLE]),  # an executable comment runs
        ("LOCK TABLES t WRITE", [REASON_LOCK_TABLES]),
        ("lock table t read", [REASON_LOCK_TABLES]),
        ("UNLOCK TABLES", []),
        ("FLUSH TABLES WITH READ LOCK", [REASON_GLOBAL_READ_LOCK]),
        ("SELECT GET_LOCK('job', 10)", [REASON_NAMED_LOCK]),
        ("CREATE TEMPORARY TABLE s (x INT)", [REASON_TEMPORARY_TABLE]),
        ("CREATE OR REPLACE TEMPORARY TABLE s (x INT)", [REASON_TEMPORARY_TABLE]),
        ("PREPARE s FROM 'SELECT 1'", [REASON_PREPARE]),
        ("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1", [REASON_FOUND_ROWS]),
        ("SELECT FOUND_ROWS()", [REASON_FOUND_ROWS]),
        ("XA START 'x'", [REASON_XA]),
        ("HANDLER t OPEN", [REASON_HANDLER]),
        ("SELECT LASTVAL(s)", [REASON_SEQUENCE]),
        ("UPDATE t SET id = LAST_INSERT_ID(id + 1)", [REASON_LAST_INSERT_ID]),
        ("SELECT LAST_INSERT_ID()", []),  # the client's own is brought instead
        ("SELECT a FROM xa_log", []),
    ],
)
def test_what_pins(sql: str, pins: list[str]) -> None:
    assert inspect(sql.encode()).pins == pins


def test_a_statement_too_large_to_look_at_pins() -> None:
    assert inspect(b"SELECT '" + b"x" * INSPECT_LIMIT + b"'").pins == [REASON_TOO_LARGE]


@pytest.mark.parametrize(
    ("sql", "reads_insert_id", "reads_diagnostics", "unlocks", "tracking"),
    [
        ("SELECT LAST_INSERT_ID()", True, False, False, False),
        ("SELECT @@identity", True, False, False, False),
        ("SHOW WARNINGS", False, True, False, False),
        ("show count(*) errors", False, True, False, False),
        ("SELECT @@session.warning_count", False, True, False, False),
        ("GET DIAGNOSTICS @n = NUMBER", False, True, False, False),
        ("UNLOCK TABLES", False, False, True, False),
        ("SET session_track_schema = OFF", False, False, False, True),
        ("SELECT 'SHOW WARNINGS'", False, False, False, False),
    ],
)
def test_what_is_read_or_refused(
    sql: str, reads_insert_id: bool, reads_diagnostics: bool, unlocks: bool, tracking: bool
) -> None:
    found = inspect(sql.encode())
    assert (found.reads_insert_id, found.reads_diagnostics, found.unlocks, found.tracking) == (
        reads_insert_id,
        reads_diagnostics,
        unlocks,
        tracking,
    )


@pytest.mark.parametrize(
    ("sql", "reads", "alone"),
    [
        ("SELECT ROW_COUNT()", True, ROW_COUNT),
        ("select row_count ( ) ;", True, ROW_COUNT),
        ("SELECT ROW_COUNT() AS n", True, ROW_COUNT),
        ("SELECT ROW_COUNT() `changed rows`", True, ROW_COUNT),
        ("SELECT ROW_COUNT() 'n'", True, ROW_COUNT),
        ("SELECT ROW_COUNT() > 0", True, 0),
        ("SELECT ROW_COUNT(), 1", True, 0),
        ("SELECT ROW_COUNT(); SELECT 1", True, 0),
        ("SELECT /* c */ ROW_COUNT()", True, 0),
        ("SELECT 'ROW_COUNT()'", False, 0),
        ("SELECT row_count FROM stats", False, 0),
        ("SELECT @@warning_count", False, WARNING_COUNT),
        ("select @@session.warning_count AS w;", False, WARNING_COUNT),
        ("SHOW COUNT(*) WARNINGS", False, WARNING_COUNT),
        ("SELECT @@error_count", False, ERROR_COUNT),
        ("show count ( * ) errors", False, ERROR_COUNT),
        ("SELECT @@warning_count + @@error_count", False, 0),
    ],
)
def test_what_reads_row_count_and_which_counter_reads_are_answered_with_the_clients_own(
    sql: str, reads: bool, alone: int
) -> None:
    assert inspect(sql.encode()).reads_row_count is reads
    assert counter_alone(sql.encode()) == alone


def test_quoting_follows_no_backslash_escapes() -> None:
    # With NO_BACKSLASH_ESCAPES, 'a\' ends the literal, and what follows is code.
    sql = b"SELECT 'a\\', @v := 1 -- '"
    assert inspect(sql, backslash_escapes=False).pins == [REASON_USER_VARIABLE]
    assert inspect(sql, backslash_escapes=True).pins == []


@pytest.mark.parametrize(
    ("sql", "ends"),
    [("COMMIT", True), ("rollback work", True), ("ROLLBACK TO SAVEPOINT a", False), ("SELECT 1", False)],
)
def test_what_ends_a_transaction(sql: str, ends: bool) -> None:
    assert ends_transaction(b"\x03" + sql.encode()) is ends
