"""The MySQL transaction-pooling core as playbooks: a script of events in, the exact commands out.

Each step is ``(event, expected commands)``; ``play`` feeds the events to one
``PooledMySqlClient`` in order and compares what comes out of each, command for command.
Client packets and server answers are real bytes: commands framed with sequence id 0,
answers framed from 1, OK packets encoded with the upstream connection's capabilities
(CLIENT_SESSION_TRACK on) and session-state blocks laid out as the server writes them.
"""

from __future__ import annotations

import struct

import pytest

from protocols.endings import EndReason
from protocols.mysql.constants import (
    CLIENT_CONNECT_ATTRS,
    CLIENT_CONNECT_WITH_DB,
    CLIENT_LOCAL_FILES,
    CLIENT_LONG_FLAG,
    CLIENT_LONG_PASSWORD,
    CLIENT_MULTI_RESULTS,
    CLIENT_MULTI_STATEMENTS,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_PS_MULTI_RESULTS,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SESSION_TRACK,
    CLIENT_TRANSACTIONS,
    COM_CHANGE_USER,
    COM_INIT_DB,
    COM_PING,
    COM_QUERY,
    COM_QUIT,
    COM_SET_OPTION,
    COM_STMT_CLOSE,
    COM_STMT_EXECUTE,
    COM_STMT_PREPARE,
    LATIN1_SWEDISH_CI,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_AUTOCOMMIT,
    SERVER_STATUS_IN_TRANS,
    UTF8MB4_GENERAL_CI,
)
from protocols.mysql.messages import EofPacket, ErrPacket, OkPacket
from protocols.mysql.packets import Packet, PacketReader, encode_lenenc_str, frame
from protocols.mysql.pooling import Command, MySqlServerState, PooledMySqlClient
from protocols.mysql.session_track import (
    SESSION_TRACK_SCHEMA,
    SESSION_TRACK_STATE_CHANGE,
    SESSION_TRACK_SYSTEM_VARIABLES,
    SESSION_TRACK_TRANSACTION_CHARACTERISTICS,
)
from protocols.pooling import (
    MAY_DETACH,
    MAY_DETACH_PINNED,
    NEED_CONNECTION,
    Ended,
    Pinned,
    Release,
    SendToClient,
    SendToServer,
)
from tests.unit.playbook import Attached, Detached, FromClient, FromServer, feed_common, play

# What a transaction-mode upstream connection negotiates (proxy.mysql.server: its base
# capabilities, the default variant, CLIENT_SESSION_TRACK).
UPSTREAM = (
    CLIENT_LONG_PASSWORD
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_CONNECT_ATTRS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_SESSION_TRACK
)
MARIADB_UPSTREAM = UPSTREAM & ~CLIENT_LONG_PASSWORD  # MariaDB clears it ("CLIENT_MYSQL")
CLIENT_SIDE = UPSTREAM & ~CLIENT_SESSION_TRACK  # clients never get session tracking

AUTOCOMMIT = SERVER_STATUS_AUTOCOMMIT
IN_TRANS = SERVER_STATUS_AUTOCOMMIT | SERVER_STATUS_IN_TRANS
CHANGED = SERVER_SESSION_STATE_CHANGED
LOGIN_COLLATION = UTF8MB4_GENERAL_CI

# --- client packets ---------------------------------------------------------------------------


def packet(payload: bytes, sequence_id: int = 0) -> bytes:
    return frame(payload, sequence_id)[0]


def query(sql: str) -> bytes:
    return packet(bytes([COM_QUERY]) + sql.encode())


def init_db(schema: str) -> bytes:
    return packet(bytes([COM_INIT_DB]) + schema.encode())


SELECT_SQL = "SELECT a FROM t WHERE id = ?"
PREPARE = packet(bytes([COM_STMT_PREPARE]) + SELECT_SQL.encode())
LONGLONG = b"\x08\x00"  # MYSQL_TYPE_LONGLONG, signed


def execute(statement_id: int, value: int, *, types: bytes | None = LONGLONG, flags: int = 0) -> bytes:
    """COM_STMT_EXECUTE of a one-parameter statement: ``types`` given means new-params-bound=1."""
    bound = b"\x01" + types if types is not None else b"\x00"
    body = struct.pack("<BIBI", COM_STMT_EXECUTE, statement_id, flags, 1) + b"\x00" + bound
    return packet(body + struct.pack("<q", value))


def close_statement(statement_id: int) -> bytes:
    return packet(struct.pack("<BI", COM_STMT_CLOSE, statement_id))


QUIT = packet(bytes([COM_QUIT]))
PING = packet(bytes([COM_PING]))

# --- server answers ---------------------------------------------------------------------------


def ok(
    status: int = AUTOCOMMIT,
    *,
    affected_rows: int = 0,
    last_insert_id: int = 0,
    warnings: int = 0,
    info: bytes = b"",
    state: bytes = b"",
) -> bytes:
    """An OK payload as the upstream encodes it; a session-state block sets its flag."""
    if state:
        status |= CHANGED
    return OkPacket(affected_rows, last_insert_id, status, warnings, info, state).encode(UPSTREAM)


def seen_ok(
    status: int = AUTOCOMMIT, *, affected_rows: int = 0, last_insert_id: int = 0, warnings: int = 0
) -> bytes:
    """An OK payload as the client is to get it: no session state, no state-changed flag."""
    return OkPacket(affected_rows, last_insert_id, status, warnings).encode(CLIENT_SIDE)


def eof(status: int = AUTOCOMMIT, warnings: int = 0) -> bytes:
    return EofPacket(warnings, status).encode()


def answer(*payloads: bytes) -> bytes:
    """One response's packets, framed from sequence id 1."""
    parts, sequence_id = [], 1
    for payload in payloads:
        framed, sequence_id = frame(payload, sequence_id)
        parts.append(framed)
    return b"".join(parts)


def variable(name: str, value: str) -> bytes:
    """A session-state change: a system variable's new value (type, then a lenenc body of
    lenenc name and lenenc value)."""
    body = encode_lenenc_str(name.encode()) + encode_lenenc_str(value.encode())
    return bytes([SESSION_TRACK_SYSTEM_VARIABLES]) + encode_lenenc_str(body)


def schema_change(name: str) -> bytes:
    return bytes([SESSION_TRACK_SCHEMA]) + encode_lenenc_str(encode_lenenc_str(name.encode()))


def characteristics(text: str) -> bytes:
    return bytes([SESSION_TRACK_TRANSACTION_CHARACTERISTICS]) + encode_lenenc_str(
        encode_lenenc_str(text.encode())
    )


STATE_CHANGED = bytes([SESSION_TRACK_STATE_CHANGE]) + encode_lenenc_str(b"1")


def column(name: bytes) -> bytes:
    return (
        b"\x03def"
        + encode_lenenc_str(b"app")
        + encode_lenenc_str(b"t") * 2
        + encode_lenenc_str(name) * 2
        + b"\x0c\x2d\x00\x04\x00\x00\x00\xfd\x01\x00\x00\x00\x00"
    )


def text_result(value: bytes, *, warnings: int = 0, status: int = AUTOCOMMIT) -> bytes:
    """A one-column, one-row text result set."""
    return answer(b"\x01", column(b"a"), eof(status), encode_lenenc_str(value), eof(status, warnings))


def prepare_ok(statement_id: int, columns: int = 1, parameters: int = 1) -> bytes:
    return b"\x00" + struct.pack("<IHHxH", statement_id, columns, parameters, 0)


def prepared_answer(statement_id: int) -> bytes:
    """PREPARE_OK for SELECT_SQL (one parameter, one column) with its definitions."""
    return answer(prepare_ok(statement_id), column(b"?"), eof(), column(b"a"), eof())


def binary_result(value: bytes) -> bytes:
    row = b"\x00\x00" + encode_lenenc_str(value)  # header, NULL bitmap, the value
    return answer(b"\x01", column(b"a"), eof(), row, eof())


def error(code: int, message: str, sql_state: str = "HY000") -> bytes:
    """An ERR answering a command (sequence id 1)."""
    return packet(ErrPacket(code, message, sql_state).encode(), 1)


# What a client whose SET was reported in session state gets: a bare OK, and it may go.
SET_SEEN: list[Command] = [SendToClient(answer(seen_ok())), MAY_DETACH]
NO_TABLE = ErrPacket(1146, "Table 'app.t' doesn't exist", "42S02").encode()
TRACKING_REFUSED = error(
    1235, "session_track_* variables are rotaproxy's own in transaction mode: not changed", "42000"
)


def unknown_statement(statement_id: int) -> bytes:
    message = f"Unknown prepared statement handler ({statement_id}) given to mysqld_stmt_execute"
    return error(1243, message)


# --- the playbook -----------------------------------------------------------------------------


Event = FromClient | FromServer | Attached | Detached
feed = feed_common


def client(
    *, serial: int = 1, collation_id: int = LOGIN_COLLATION, schema: str | None = "app"
) -> PooledMySqlClient:
    return PooledMySqlClient(serial, collation_id, schema, LOGIN_COLLATION, "txn")


def server_state(schema: str | None = "app", capabilities: int = UPSTREAM) -> MySqlServerState:
    return MySqlServerState(capabilities, LOGIN_COLLATION, schema, AUTOCOMMIT)


def upstream(commands: list[Command]) -> list[bytes]:
    """The payloads of the packets the core sent the server, in order."""
    reader = PacketReader()
    for command in commands:
        if isinstance(command, SendToServer):
            reader.receive_data(command.data)
    payloads = []
    while isinstance(event := reader.next_event(), Packet):
        payloads.append(event.payload)
    return payloads


def to_client(commands: list[Command]) -> bytes:
    return b"".join(command.data for command in commands if isinstance(command, SendToClient))


def ran(
    core: PooledMySqlClient, state: MySqlServerState, sql: str, reply: bytes, expected: list[Command]
) -> None:
    """The client, holding no connection, runs ``sql`` on ``state``, and the server answers
    ``reply``: the core says ``expected`` to that answer."""
    play(
        core,
        [
            (FromClient(query(sql)), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query(sql))]),
            (FromServer(reply), expected),
        ],
    )


def prepared_on(core: PooledMySqlClient, state: MySqlServerState, server_id: int) -> None:
    """The client prepares SELECT_SQL on ``state`` (told id 1), binds LONGLONG and runs it once
    there, then lets the connection go."""
    play(
        core,
        [
            (FromClient(PREPARE), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(PREPARE)]),
            (
                FromServer(prepared_answer(server_id)),
                [SendToClient(answer(prepare_ok(1), column(b"?"), eof(), column(b"a"), eof())), MAY_DETACH],
            ),
            (FromClient(execute(1, 5)), [SendToServer(execute(server_id, 5))]),
            (FromServer(binary_result(b"five")), [SendToClient(binary_result(b"five")), MAY_DETACH]),
            (Detached(), []),
        ],
    )


# --- (a) a plain query ------------------------------------------------------------------------


def test_a_query_attaches_is_forwarded_and_may_detach_after_its_ok() -> None:
    core, state = client(), server_state()
    update = query("UPDATE t SET a = 1")
    done = answer(ok(affected_rows=1, info=b"Rows matched: 1  Changed: 1  Warnings: 0"))
    play(
        core,
        [
            (FromClient(update), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(update)]),
            (FromServer(done), [SendToClient(done), MAY_DETACH]),
            (Detached(), []),
        ],
    )
    assert core.connection is None and core.queries == 1 and core.transactions == 1


def test_commands_sent_before_the_connection_comes_ask_for_it_once_and_go_together() -> None:
    core, state = client(), server_state()
    first, second = query("SELECT 1"), query("SELECT 2")
    play(
        core,
        [
            (FromClient(first), [NEED_CONNECTION]),
            (FromClient(second[:5]), []),
            (FromClient(second[5:]), []),
            (Attached(state), [SendToServer(first + second)]),
            (FromServer(text_result(b"1")), [SendToClient(text_result(b"1"))]),  # one still owed
            (FromServer(text_result(b"2")), [SendToClient(text_result(b"2")), MAY_DETACH]),
        ],
    )


def test_a_result_set_split_anywhere_reaches_the_client_whole_and_then_may_detach() -> None:
    reply = text_result(b"hello")
    for cut in range(1, len(reply)):
        core, state = client(), server_state()
        ran_commands: list[Command] = []
        play(core, [(FromClient(query("SELECT a FROM t")), [NEED_CONNECTION])])
        core.attached(state)
        ran_commands += core.receive_server(reply[:cut])
        ran_commands += core.receive_server(reply[cut:])
        assert to_client(ran_commands) == reply, f"cut at {cut}"
        assert ran_commands[-1] == MAY_DETACH


# --- (b) transactions -------------------------------------------------------------------------


def test_a_transaction_keeps_the_connection_until_commit_clears_in_trans() -> None:
    core, state = client(), server_state()
    insert = query("INSERT INTO t (a) VALUES (1)")
    play(
        core,
        [
            (FromClient(query("BEGIN")), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query("BEGIN"))]),
            (FromServer(answer(ok(IN_TRANS))), [SendToClient(answer(ok(IN_TRANS)))]),
            (FromClient(insert), [SendToServer(insert)]),
            (
                FromServer(answer(ok(IN_TRANS, affected_rows=1, last_insert_id=1))),
                [SendToClient(answer(ok(IN_TRANS, affected_rows=1, last_insert_id=1)))],
            ),
            (FromClient(query("COMMIT")), [SendToServer(query("COMMIT"))]),
        ],
    )
    assert core.in_transaction and not core.at_idle_point
    play(core, [(FromServer(answer(ok())), [SendToClient(answer(ok())), MAY_DETACH])])
    assert not core.in_transaction and core.at_idle_point and core.transactions == 1


def test_a_one_shot_set_transaction_keeps_the_connection_until_its_transaction_ends() -> None:
    core, state = client(), server_state()
    one_shot = "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"
    pending = answer(ok(state=characteristics("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;")))
    play(
        core,
        [
            (FromClient(query(one_shot)), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query(one_shot))]),
            (FromServer(pending), [SendToClient(answer(seen_ok()))]),  # it waits for its transaction
            (FromClient(query("UPDATE t SET a = 1")), [SendToServer(query("UPDATE t SET a = 1"))]),
            (
                FromServer(answer(ok(state=characteristics("")))),
                [SendToClient(answer(seen_ok())), MAY_DETACH],
            ),
        ],
    )


# --- (c) the session travels --------------------------------------------------------------------


def test_a_variable_the_server_reports_becomes_the_client_s_and_the_connection_s() -> None:
    core, state = client(), server_state()
    set_zone = query("SET time_zone = '+05:00'")
    reported = answer(ok(state=variable("time_zone", "+05:00") + STATE_CHANGED))
    play(
        core,
        [
            (FromClient(set_zone), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(set_zone)]),
            (FromServer(reported), [SendToClient(answer(seen_ok())), MAY_DETACH]),
        ],
    )
    assert core.variables == {"time_zone": "+05:00"}
    assert state.variables == {"time_zone": "+05:00"}


def test_the_client_s_variables_are_brought_onto_a_connection_another_client_changed() -> None:
    core, first, second = client(), server_state(), server_state()
    ran(core, first, "SET time_zone = '+05:00'", answer(ok(state=variable("time_zone", "+05:00"))), SET_SEEN)
    core.detached()
    second.variables["sql_mode"] = "ANSI_QUOTES"  # another client's
    select = query("SELECT NOW()")
    play(
        core,
        [
            (FromClient(select), [NEED_CONNECTION]),
            (
                Attached(second),
                [
                    SendToServer(
                        query("SET @@session.sql_mode = DEFAULT")
                        + query("SET @@session.time_zone = '+05:00'")
                        + select
                    ),
                ],
            ),
            # The hidden answers, as the server reports the values it set: nothing for the client.
            (
                FromServer(
                    answer(ok(state=variable("sql_mode", "STRICT_TRANS_TABLES")))
                    + answer(ok(state=variable("time_zone", "+05:00")))
                ),
                [],
            ),
            (
                FromServer(text_result(b"2024-01-01 05:00:00")),
                [SendToClient(text_result(b"2024-01-01 05:00:00")), MAY_DETACH],
            ),
        ],
    )
    assert second.variables == {"time_zone": "+05:00"}
    assert core.variables == {"time_zone": "+05:00"}


def test_hidden_answers_in_the_chunk_of_the_client_s_answer_are_cut_out() -> None:
    core, first, second = client(), server_state(), server_state()
    ran(core, first, "SET time_zone = '+05:00'", answer(ok(state=variable("time_zone", "+05:00"))), SET_SEEN)
    core.detached()
    play(core, [(FromClient(query("SELECT NOW()")), [NEED_CONNECTION])])
    core.attached(second)
    hidden = answer(ok(state=variable("time_zone", "+05:00")))
    reply = text_result(b"2024-01-01 05:00:00")
    assert core.receive_server(hidden + reply) == [SendToClient(reply), MAY_DETACH]


def test_a_client_without_variables_gets_default_for_what_another_client_changed() -> None:
    core, state = client(), server_state()
    state.variables.update({"time_zone": "+05:00", "sql_mode": "ANSI_QUOTES"})
    select = query("SELECT 1")
    play(
        core,
        [
            (FromClient(select), [NEED_CONNECTION]),
            (
                Attached(state),
                [
                    SendToServer(
                        query("SET @@session.sql_mode = DEFAULT, @@session.time_zone = DEFAULT") + select
                    ),
                ],
            ),
            (
                FromServer(
                    answer(
                        ok(
                            state=variable("sql_mode", "STRICT_TRANS_TABLES")
                            + variable("time_zone", "SYSTEM")
                        )
                    )
                    + text_result(b"1")
                ),
                [SendToClient(text_result(b"1")), MAY_DETACH],
            ),
        ],
    )
    assert state.variables == {}


def test_character_set_variables_go_back_to_the_login_collation_not_default() -> None:
    core, state = client(), server_state()
    state.variables.update(
        {
            "character_set_client": "latin1",
            "character_set_connection": "latin1",
            "character_set_results": "latin1",
            "collation_connection": "latin1_swedish_ci",
            "time_zone": "+01:00",
        }
    )
    select = query("SELECT 1")
    restore = (
        "SET @@session.character_set_client = 45, @@session.character_set_connection = 45, "
        "@@session.character_set_results = 45, @@session.time_zone = DEFAULT, "
        "@@session.collation_connection = 45"
    )
    play(
        core,
        [
            (FromClient(select), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query(restore) + select)]),
        ],
    )


def test_a_client_that_logged_in_with_another_collation_has_it_set_on_each_connection() -> None:
    core, state = client(collation_id=LATIN1_SWEDISH_CI), server_state()
    select = query("SELECT 1")
    restore = (
        "SET @@session.character_set_client = 8, @@session.character_set_connection = 8, "
        "@@session.character_set_results = 8, @@session.collation_connection = 8"
    )
    play(
        core,
        [
            (FromClient(select), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query(restore) + select)]),
        ],
    )


def test_the_client_s_schema_is_selected_hidden_where_the_connection_is_elsewhere() -> None:
    core, state = client(schema="app"), server_state(schema="other")
    select = query("SELECT 1")
    play(
        core,
        [
            (FromClient(select), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(init_db("app") + select)]),
            (
                FromServer(answer(ok(state=schema_change("app") + STATE_CHANGED)) + text_result(b"1")),
                [SendToClient(text_result(b"1")), MAY_DETACH],
            ),
        ],
    )
    assert state.schema == "app"


def test_a_schema_the_client_changed_to_travels_with_it() -> None:
    core, first, second = client(), server_state(), server_state()
    ran(core, first, "USE other", answer(ok(state=schema_change("other"))), SET_SEEN)
    core.detached()
    assert core.schema == "other" and first.schema == "other"
    select = query("SELECT 1")
    play(
        core,
        [
            (FromClient(select), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(init_db("other") + select)]),
        ],
    )


def test_a_client_whose_schema_was_dropped_is_not_sent_an_empty_init_db() -> None:
    # DROP DATABASE of the current schema leaves the session in none: the server reports the
    # schema as empty. COM_INIT_DB with an empty name fails (1046), and a failed hidden
    # command ends the client: there is no schema to bring.
    core, first, second = client(), server_state(), server_state()
    ran(
        core,
        first,
        "DROP DATABASE app",
        answer(ok(affected_rows=1, state=schema_change(""))),
        [SendToClient(answer(seen_ok(affected_rows=1))), MAY_DETACH],
    )
    core.detached()
    select = query("SELECT 1")
    play(core, [(FromClient(select), [NEED_CONNECTION])])
    assert init_db("")[4:] not in upstream(core.attached(second))


# --- (d) pins ---------------------------------------------------------------------------------


def test_a_user_variable_pins_once_and_the_connection_stays() -> None:
    core, state = client(), server_state()
    set_x, get_x = query("SET @x = 1"), query("SELECT @x")
    play(
        core,
        [
            (FromClient(set_x), [NEED_CONNECTION]),
            (Attached(state), [Pinned("user variable", "user variable"), SendToServer(set_x)]),
            (
                FromServer(answer(ok(state=STATE_CHANGED))),
                [SendToClient(answer(seen_ok())), MAY_DETACH_PINNED],
            ),
            (FromClient(get_x), [SendToServer(get_x)]),  # pinned already: said once
            (FromServer(text_result(b"1")), [SendToClient(text_result(b"1")), MAY_DETACH_PINNED]),
        ],
    )
    assert core.pinned == "user variable"


def test_unlock_tables_ends_the_lock_tables_pin() -> None:
    core, state = client(), server_state()
    lock, unlock = query("LOCK TABLES t WRITE"), query("UNLOCK TABLES")
    play(
        core,
        [
            (FromClient(lock), [NEED_CONNECTION]),
            (Attached(state), [Pinned("LOCK TABLES", "LOCK TABLES"), SendToServer(lock)]),
            (FromServer(answer(ok())), [SendToClient(answer(ok())), MAY_DETACH_PINNED]),
            (FromClient(unlock), [SendToServer(unlock)]),
            (FromServer(answer(ok())), [SendToClient(answer(ok())), MAY_DETACH]),  # clean again
            (FromClient(lock), [Pinned("LOCK TABLES", "LOCK TABLES"), SendToServer(lock)]),  # and again
        ],
    )


def test_changing_session_tracking_is_refused_here_and_nothing_goes_to_the_server() -> None:
    core, state = client(), server_state()
    play(
        core,
        [
            (FromClient(query("BEGIN")), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query("BEGIN"))]),
            (FromServer(answer(ok(IN_TRANS))), [SendToClient(answer(ok(IN_TRANS)))]),
            (FromClient(query("SET session_track_schema = OFF")), [SendToClient(TRACKING_REFUSED)]),
        ],
    )
    assert state.tracker.at_safe_point


@pytest.mark.parametrize(
    ("request_", "reply"),
    [
        (query("SET SESSION session_track_system_variables = ''"), TRACKING_REFUSED),
        (execute(9, 1), unknown_statement(9)),
    ],
    ids=["tracking refused", "unknown statement"],
)
def test_an_answer_given_here_waits_for_what_the_server_still_owes(request_: bytes, reply: bytes) -> None:
    core, state = client(), server_state()
    slow = query("SELECT SLEEP(1)")
    play(core, [(FromClient(slow), [NEED_CONNECTION]), (Attached(state), [SendToServer(slow)])])
    early = core.receive_client(request_)
    assert not [command for command in early if isinstance(command, SendToClient)]
    later = core.receive_server(text_result(b"0"))
    assert to_client(early + later) == text_result(b"0") + reply  # in the order the client asked


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (query("SET session_track_schema = OFF"), [SendToClient(TRACKING_REFUSED)]),
        (execute(9, 1), [SendToClient(unknown_statement(9))]),
    ],
    ids=["tracking refused", "unknown statement"],
)
def test_an_answer_given_here_on_an_idle_connection_lets_the_connection_go(
    request_: bytes, expected: list[Command]
) -> None:
    # The connection the client holds owes nothing and holds no transaction: kept attached
    # after its last answer, or attached for this very command.
    core, state = client(), server_state()
    ran(core, state, "SELECT 1", text_result(b"1"), [SendToClient(text_result(b"1")), MAY_DETACH])
    assert core.receive_client(request_) == [*expected, MAY_DETACH]
    core, state = client(), server_state()
    play(core, [(FromClient(request_), [NEED_CONNECTION]), (Attached(state), [*expected, MAY_DETACH])])


def test_a_close_on_an_idle_connection_lets_the_connection_go() -> None:
    core, first = client(), server_state()
    prepared_on(core, first, 42)
    play(
        core,
        [
            (FromClient(query("SELECT 1")), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(query("SELECT 1"))]),
            (FromServer(text_result(b"1")), [SendToClient(text_result(b"1")), MAY_DETACH]),
            (FromClient(close_statement(1)), [SendToServer(close_statement(42)), MAY_DETACH]),
        ],
    )


# --- (e) LAST_INSERT_ID -------------------------------------------------------------------------


def test_last_insert_id_is_brought_before_a_statement_that_reads_it() -> None:
    core, first, second = client(), server_state(), server_state()
    ran(
        core,
        first,
        "INSERT INTO t (a) VALUES (1)",
        answer(ok(affected_rows=1, last_insert_id=7)),
        [SendToClient(answer(ok(affected_rows=1, last_insert_id=7))), MAY_DETACH],
    )
    core.detached()
    assert core.last_insert_id == 7 and first.last_insert_id == 7
    second.last_insert_id = 3  # another client's insert
    read = query("SELECT LAST_INSERT_ID()")
    play(
        core,
        [
            (FromClient(read), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(query("DO LAST_INSERT_ID(7)") + read)]),
            (
                FromServer(answer(ok(last_insert_id=7)) + text_result(b"7")),
                [SendToClient(text_result(b"7")), MAY_DETACH],
            ),
            (Detached(), []),
            # Where the connection has the client's value, nothing is brought.
            (FromClient(read), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(read)]),
        ],
    )
    assert second.last_insert_id == 7


def test_last_insert_id_is_brought_before_a_prepared_statement_that_reads_it() -> None:
    # LAST_INSERT_ID() in a prepared statement is read when it is executed, not prepared.
    core, state = client(), server_state()
    insert_sql = "INSERT INTO child (parent_id, a) VALUES (LAST_INSERT_ID(), ?)"
    prepare = packet(bytes([COM_STMT_PREPARE]) + insert_sql.encode())
    play(
        core,
        [
            (FromClient(query("INSERT INTO parent (a) VALUES (1)")), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query("INSERT INTO parent (a) VALUES (1)"))]),
            (
                FromServer(answer(ok(affected_rows=1, last_insert_id=7))),
                [SendToClient(answer(ok(affected_rows=1, last_insert_id=7))), MAY_DETACH],
            ),
            (FromClient(prepare), [SendToServer(prepare)]),
            (
                FromServer(answer(prepare_ok(42, 0, 1), column(b"?"), eof())),
                [SendToClient(answer(prepare_ok(1, 0, 1), column(b"?"), eof())), MAY_DETACH],
            ),
            (Detached(), []),
        ],
    )
    state.last_insert_id = 9  # another client inserted on this connection meanwhile
    play(core, [(FromClient(execute(1, 5)), [NEED_CONNECTION])])
    sent = upstream(core.attached(state))
    do = query("DO LAST_INSERT_ID(7)")[4:]
    assert do in sent and sent.index(do) < sent.index(execute(42, 5)[4:])


# --- (f) warnings -----------------------------------------------------------------------------


def warnings_answer(level: bytes, code: int, message: bytes) -> bytes:
    """SHOW WARNINGS as the server answers it: three columns, one row."""
    row = encode_lenenc_str(level) + encode_lenenc_str(str(code).encode()) + encode_lenenc_str(message)
    return answer(b"\x03", column(b"Level"), column(b"Code"), column(b"Message"), eof(), row, eof(warnings=1))


TRUNCATED = warnings_answer(b"Warning", 1265, b"Data truncated for column 'a' at row 1")
SYNTAX = warnings_answer(b"Error", 1064, b"You have an error in your SQL syntax")


@pytest.mark.parametrize(
    ("reply", "shown", "condition"),
    [
        (
            answer(ok(affected_rows=1, warnings=1)),
            TRUNCATED,
            ("Warning", 1265, "Data truncated for column 'a' at row 1", "01000"),
        ),
        (
            error(1064, "You have an error in your SQL syntax", "42000"),
            SYNTAX,
            ("Error", 1064, "You have an error in your SQL syntax", "42000"),  # the ERR's SQLSTATE
        ),
    ],
    ids=["warnings", "error"],
)
def test_a_statements_diagnostics_are_read_before_it_lets_go_and_shown_wherever_it_runs(
    reply: bytes, shown: bytes, condition: tuple[str, int, str, str]
) -> None:
    core, first, second = client(), server_state(), server_state()
    insert = query("INSERT INTO t (a) VALUES ('x')")
    show = query("SHOW WARNINGS")
    play(
        core,
        [
            (FromClient(insert), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(insert)]),
            # Read while they are there (hidden), then the client may let go.
            (FromServer(reply), [SendToClient(reply), SendToServer(show)]),
            (FromServer(shown), [MAY_DETACH]),
        ],
    )
    assert core.diagnostics == [condition]
    assert core.diagnostics_pending  # the connection is reset before another client gets it
    assert core.release_terms() == Release(reusable=True, cancel_first=False, needs_reset=True)
    play(
        core,
        [
            (Detached(), []),
            # Elsewhere, SHOW WARNINGS is answered as the server answered it where they were...
            (FromClient(show), [NEED_CONNECTION]),
            (Attached(second), [SendToClient(shown), MAY_DETACH]),
        ],
    )
    # ... and a statement that reads them finds them raised again there.
    count = query("SELECT @@warning_count AS w, @@error_count AS e")
    commands = core.receive_client(count)
    sent = upstream(commands)
    assert sent[0].startswith(bytes([COM_QUERY]) + b"SIGNAL SQLSTATE '%s'" % condition[3].encode())
    assert b"MYSQL_ERRNO = %d" % condition[1] in sent[0] and sent[1] == count[4:]


# --- (g) prepared statements --------------------------------------------------------------------


def test_a_prepared_statement_is_told_the_client_s_own_id_and_executed_under_the_server_s() -> None:
    core, state = client(), server_state()
    play(
        core,
        [
            (FromClient(PREPARE), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(PREPARE)]),
            (
                FromServer(prepared_answer(0x7F00_0001)),
                [SendToClient(answer(prepare_ok(1), column(b"?"), eof(), column(b"a"), eof())), MAY_DETACH],
            ),
            (FromClient(execute(1, 5)), [SendToServer(execute(0x7F00_0001, 5))]),
            (FromServer(binary_result(b"five")), [SendToClient(binary_result(b"five")), MAY_DETACH]),
        ],
    )


def test_a_prepare_ok_in_a_chunk_of_its_own_carries_the_client_s_id() -> None:
    core, state = client(), server_state()
    play(core, [(FromClient(PREPARE), [NEED_CONNECTION]), (Attached(state), [SendToServer(PREPARE)])])
    reply = prepared_answer(42)
    alone = len(packet(prepare_ok(42), 1))
    assert core.receive_server(reply[:alone]) == [SendToClient(packet(prepare_ok(1), 1))]
    assert core.receive_server(reply[alone:]) == [SendToClient(reply[alone:]), MAY_DETACH]
    play(core, [(FromClient(execute(1, 5)), [SendToServer(execute(42, 5))])])


def test_each_prepare_gets_the_next_client_id() -> None:
    core, state = client(), server_state()
    play(core, [(FromClient(PREPARE), [NEED_CONNECTION]), (Attached(state), [SendToServer(PREPARE)])])
    core.receive_server(prepared_answer(500))
    assert core.receive_client(PREPARE) == [SendToServer(PREPARE)]
    assert core.receive_server(prepared_answer(501)) == [
        SendToClient(answer(prepare_ok(2), column(b"?"), eof(), column(b"a"), eof())),
        MAY_DETACH,
    ]


def test_a_statement_the_connection_lacks_is_prepared_hidden_first_and_its_types_sent_again() -> None:
    core, first, second = client(), server_state(), server_state()
    prepared_on(core, first, 42)
    play(
        core,
        [
            (FromClient(execute(1, 6, types=None)), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(PREPARE)]),  # the execute waits for the server's id
            (FromServer(prepared_answer(77)), [SendToServer(execute(77, 6))]),  # types put back in
            (FromServer(binary_result(b"six")), [SendToClient(binary_result(b"six")), MAY_DETACH]),
            # The copy has the types now: later executes go as they come.
            (FromClient(execute(1, 7, types=None)), [SendToServer(execute(77, 7, types=None))]),
            (FromServer(binary_result(b"seven")), [SendToClient(binary_result(b"seven")), MAY_DETACH]),
            (Detached(), []),
            # Back where the types were bound first: nothing to add.
            (FromClient(execute(1, 8, types=None)), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(execute(42, 8, types=None))]),
        ],
    )


def test_the_hidden_prepare_s_answer_split_still_lets_the_execute_go() -> None:
    core, first, second = client(), server_state(), server_state()
    prepared_on(core, first, 42)
    play(core, [(FromClient(execute(1, 6, types=None)), [NEED_CONNECTION])])
    assert core.attached(second) == [SendToServer(PREPARE)]
    hidden = prepared_answer(77)
    assert core.receive_server(hidden[:3]) == []
    assert core.receive_server(hidden[3:]) == [SendToServer(execute(77, 6))]


def test_a_close_closes_the_copies_on_other_connections_with_the_next_work_there() -> None:
    core, first, second = client(), server_state(), server_state()
    prepared_on(core, first, 42)
    play(
        core,
        [
            (FromClient(execute(1, 6, types=None)), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(PREPARE)]),
            (FromServer(prepared_answer(77)), [SendToServer(execute(77, 6))]),
            (FromServer(binary_result(b"six")), [SendToClient(binary_result(b"six")), MAY_DETACH]),
            (Detached(), []),
            (FromClient(close_statement(1)), []),  # no connection needed
        ],
    )
    assert first.to_close == [42] and second.to_close == [77]
    select = query("SELECT 1")
    play(
        core,
        [
            (FromClient(select), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(close_statement(77) + select)]),
            (FromServer(text_result(b"1")), [SendToClient(text_result(b"1")), MAY_DETACH]),
        ],
    )
    other = client(serial=2)
    play(
        other,
        [
            (FromClient(select), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(close_statement(42) + select)]),
        ],
    )
    assert first.to_close == [] and second.to_close == []


def test_a_statement_id_the_client_does_not_have_is_answered_with_1243_here() -> None:
    core, state = client(), server_state()
    play(
        core,
        [
            (FromClient(query("BEGIN")), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query("BEGIN"))]),
            (FromServer(answer(ok(IN_TRANS))), [SendToClient(answer(ok(IN_TRANS)))]),
            (FromClient(execute(3, 1)), [SendToClient(unknown_statement(3))]),
        ],
    )
    assert state.tracker.at_safe_point


def test_a_hidden_prepare_that_fails_gives_the_waiting_execute_the_server_s_error() -> None:
    core, first, second = client(), server_state(), server_state()
    prepared_on(core, first, 42)
    play(
        core,
        [
            (FromClient(execute(1, 6, types=None)), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(PREPARE)]),
            (FromServer(answer(NO_TABLE)), [SendToClient(packet(NO_TABLE, 1)), MAY_DETACH]),  # sequence 1
            (FromClient(query("SELECT 1")), [SendToServer(query("SELECT 1"))]),
            (FromServer(text_result(b"1")), [SendToClient(text_result(b"1")), MAY_DETACH]),
        ],
    )


def test_a_mariadb_execute_of_the_statement_just_prepared_goes_to_the_server() -> None:
    # MariaDB's "direct execution": COM_STMT_EXECUTE with id 0xFFFFFFFF runs the statement
    # prepared last on the connection, so a client pipelines PREPARE, EXECUTE (and CLOSE).
    core, state = client(), server_state(capabilities=MARIADB_UPSTREAM)
    direct = execute(0xFFFF_FFFF, 5)
    play(core, [(FromClient(PREPARE + direct), [NEED_CONNECTION])])
    commands = core.attached(state)
    commands += core.receive_server(prepared_answer(42))
    assert unknown_statement(0xFFFF_FFFF) not in to_client(commands)
    sent = upstream(commands)
    assert len(sent) == 2 and sent[0] == PREPARE[4:]
    assert sent[1][:1] == bytes([COM_STMT_EXECUTE]) and sent[1][1:5] in (
        b"\xff\xff\xff\xff",
        b"\x2a\x00\x00\x00",
    )


# --- LOCAL INFILE -------------------------------------------------------------------------------


def test_copies_owed_a_close_wait_while_the_client_sends_its_local_infile_file() -> None:
    core, state = client(), server_state(capabilities=UPSTREAM | CLIENT_LOCAL_FILES)
    load = query("LOAD DATA LOCAL INFILE 'f.csv' INTO TABLE t")
    file_data, end = packet(b"1,2\n3,4\n", 2), packet(b"", 3)
    play(
        core,
        [
            (FromClient(load), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(load)]),
            (FromServer(packet(b"\xfbf.csv", 1)), [SendToClient(packet(b"\xfbf.csv", 1))]),
        ],
    )
    state.to_close.append(99)  # a statement of a client that just left, copied here
    play(
        core,
        [
            (FromClient(file_data), [SendToServer(file_data)]),
            (FromClient(end), [SendToServer(end)]),
            (
                FromServer(packet(ok(affected_rows=2), 4)),
                [SendToClient(packet(ok(affected_rows=2), 4)), MAY_DETACH],
            ),
        ],
    )


# --- (h) release terms --------------------------------------------------------------------------


def test_a_client_that_leaves_mid_response_leaves_its_query_to_be_cancelled() -> None:
    core, state = client(), server_state()
    slow = query("SELECT SLEEP(10)")
    play(
        core,
        [
            (FromClient(slow), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(slow)]),
            (FromServer(text_result(b"0")[:12]), [SendToClient(text_result(b"0")[:12])]),
        ],
    )
    assert core.release_terms() == Release(reusable=False, cancel_first=True, needs_reset=True)


def test_a_client_that_leaves_in_a_transaction_leaves_a_connection_to_reset() -> None:
    core, state = client(), server_state()
    ran(core, state, "BEGIN", answer(ok(IN_TRANS)), [SendToClient(answer(ok(IN_TRANS)))])
    assert core.release_terms() == Release(reusable=True, cancel_first=False, needs_reset=True)


def test_a_pinned_client_leaves_a_connection_to_reset() -> None:
    core, state = client(), server_state()
    play(core, [(FromClient(query("SET @x = 1")), [NEED_CONNECTION])])
    core.attached(state)
    assert core.receive_server(answer(ok(state=STATE_CHANGED)))[-1] == MAY_DETACH_PINNED
    assert core.release_terms() == Release(reusable=True, cancel_first=False, needs_reset=True)


def test_a_clean_client_leaves_a_clean_connection() -> None:
    core, state = client(), server_state()
    ran(core, state, "SET time_zone = '+05:00'", answer(ok(state=variable("time_zone", "+05:00"))), SET_SEEN)
    assert core.release_terms() == Release(reusable=True, cancel_first=False, needs_reset=False)
    core.detached()
    assert core.release_terms() == Release(reusable=False, cancel_first=False, needs_reset=False)


# --- (i) without a connection -------------------------------------------------------------------


def test_quit_without_a_connection_ends_the_client() -> None:
    core = client()
    play(core, [(FromClient(QUIT), [Ended(EndReason.CLIENT_QUIT)]), (FromClient(query("SELECT 1")), [])])


def test_quit_with_a_connection_sends_what_came_before_it_then_ends() -> None:
    core, state = client(), server_state()
    ran(core, state, "SELECT 1", text_result(b"1"), [SendToClient(text_result(b"1")), MAY_DETACH])
    assert core.receive_client(query("DO 1") + QUIT) == [
        SendToServer(query("DO 1")),
        Ended(EndReason.CLIENT_QUIT),
    ]


def test_ping_without_a_connection_is_answered_here() -> None:
    core = client()
    assert core.receive_client(PING) == [SendToClient(packet(OkPacket(0, 0, AUTOCOMMIT, 0).encode(), 1))]
    assert core.connection is None


def test_ping_answered_here_reports_autocommit_as_the_client_set_it() -> None:
    core, state = client(), server_state()
    ran(
        core,
        state,
        "SET autocommit = 0",
        answer(ok(0, state=variable("autocommit", "OFF"))),
        [SendToClient(answer(seen_ok(0))), MAY_DETACH],
    )
    core.detached()
    assert core.receive_client(PING) == [SendToClient(packet(OkPacket(0, 0, 0, 0).encode(), 1))]


# --- autocommit off, multi-statements, COM_CHANGE_USER ---------------------------------------


def test_with_autocommit_off_a_read_keeps_the_connection_until_commit() -> None:
    # MariaDB leaves SERVER_STATUS_IN_TRANS clear for a transaction that only read (its read
    # view and FOR UPDATE locks are there all the same): the client keeps its connection.
    core, state = client(), server_state()
    state.variables["autocommit"] = "OFF"
    core.variables["autocommit"] = "OFF"
    select = query("SELECT a FROM t FOR UPDATE")
    play(
        core,
        [
            (FromClient(select), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(select)]),
            (FromServer(text_result(b"1", status=0)), [SendToClient(text_result(b"1", status=0))]),
            (FromClient(query("COMMIT")), [SendToServer(query("COMMIT"))]),
            (FromServer(answer(ok(0))), [SendToClient(answer(ok(0))), MAY_DETACH]),
        ],
    )


def test_a_client_leaving_an_autocommit_off_read_needs_only_a_rollback() -> None:
    core, state = client(), server_state()
    state.variables["autocommit"] = "OFF"
    core.variables["autocommit"] = "OFF"
    ran(
        core,
        state,
        "SELECT a FROM t",
        text_result(b"1", status=0),
        [SendToClient(text_result(b"1", status=0))],
    )
    assert core.release_terms() == Release(reusable=True, cancel_first=False, needs_reset=True)
    assert core.rollback_suffices
    pin = Pinned("user variable", "user variable")
    play(core, [(FromClient(query("SET @x = 1")), [pin, SendToServer(query("SET @x = 1"))])])
    core.receive_server(answer(ok(0)))
    assert not core.rollback_suffices  # a pinned client's session is reset whole


def test_a_rollback_to_a_savepoint_does_not_end_the_transaction() -> None:
    core, state = client(), server_state()
    state.variables["autocommit"] = "OFF"
    core.variables["autocommit"] = "OFF"
    back = query("ROLLBACK TO SAVEPOINT s1")
    play(
        core,
        [
            (FromClient(back), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(back)]),
            (FromServer(answer(ok(0))), [SendToClient(answer(ok(0)))]),
        ],
    )


def test_multi_statements_are_switched_to_the_clients_own_on_each_connection() -> None:
    core = PooledMySqlClient(7, LOGIN_COLLATION, "app", LOGIN_COLLATION, "pool", multi_statements=True)
    state = server_state(capabilities=UPSTREAM & ~CLIENT_MULTI_STATEMENTS)
    select = query("SELECT 1; SELECT 2")
    option_on = packet(bytes([COM_SET_OPTION, 0, 0]))
    play(
        core,
        [
            (FromClient(select), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(option_on + select)]),
            # MariaDB answers COM_SET_OPTION with an EOF: hidden.
            (FromServer(packet(eof(), 1) + text_result(b"1")), [SendToClient(text_result(b"1")), MAY_DETACH]),
        ],
    )
    assert state.multi_statements


def test_change_user_starts_the_clients_session_again_without_the_server() -> None:
    core = client()
    core.variables["time_zone"] = "+05:00"
    change = packet(bytes([COM_CHANGE_USER]) + b"anyone\x00" + b"\x00" + b"other\x00" + b"\x2d\x00")
    commands = core.receive_client(change)
    assert commands == [SendToClient(packet(OkPacket(0, 0, AUTOCOMMIT, 0).encode(), 1))]
    assert core.variables == {} and core.schema == "other"


NO_WARNINGS = answer(b"\x03", column(b"Level"), column(b"Code"), column(b"Message"), eof(), eof())


def test_warnings_are_looked_at_again_until_a_statement_clears_them() -> None:
    # MariaDB shows a statement's warnings until a statement that uses a table, though the
    # statements between report none: the core reads them again after each until they go.
    core, state = client(), server_state()
    warned = answer(ok(affected_rows=1, warnings=1))
    show = query("SHOW WARNINGS")
    play(
        core,
        [
            (FromClient(query("INSERT INTO t VALUES ('x')")), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query("INSERT INTO t VALUES ('x')"))]),
            (FromServer(warned), [SendToClient(warned), SendToServer(show)]),
            (FromServer(TRUNCATED), [MAY_DETACH]),
            (FromClient(query("SELECT 1")), [SendToServer(query("SELECT 1"))]),
            # Still there after SELECT 1 (no table): kept.
            (FromServer(text_result(b"1")), [SendToClient(text_result(b"1")), SendToServer(show)]),
            (FromServer(TRUNCATED), [MAY_DETACH]),
        ],
    )
    assert core.diagnostics and core.diagnostics_pending
    play(
        core,
        [
            (FromClient(query("SELECT a FROM t")), [SendToServer(query("SELECT a FROM t"))]),
            (FromServer(text_result(b"x")), [SendToClient(text_result(b"x")), SendToServer(show)]),
            (FromServer(NO_WARNINGS), [MAY_DETACH]),
        ],
    )
    assert core.diagnostics == [] and not core.diagnostics_pending  # no reset due for them
    assert core.release_terms() == Release(reusable=True, cancel_first=False, needs_reset=False)


# --- ROW_COUNT() -------------------------------------------------------------------------------

READ_ROW_COUNT = "SELECT ROW_COUNT()"


def row_count_result(value: int, status: int = AUTOCOMMIT, *, binary: bool = False) -> bytes:
    """SELECT ROW_COUNT()'s answer: one BIGINT column, one row."""
    definition = (
        b"\x03def\x00\x00\x00"
        + encode_lenenc_str(b"ROW_COUNT()")
        + b"\x00\x0c\x3f\x00\x15\x00\x00\x00\x08\x81\x00\x00\x00\x00"
    )
    row = b"\x00\x00" + struct.pack("<q", value) if binary else encode_lenenc_str(str(value).encode())
    return answer(b"\x01", definition, eof(status), row, eof(status))


def updated_three(core: PooledMySqlClient, state: MySqlServerState) -> None:
    """The client's UPDATE of three rows runs on ``state``, and the client lets it go."""
    done = answer(ok(affected_rows=3))
    ran(core, state, "UPDATE t SET a = a + 1", done, [SendToClient(done), MAY_DETACH])
    core.detached()


def test_row_count_where_another_client_ran_since_is_answered_with_the_clients_own() -> None:
    core, state = client(), server_state()
    updated_three(core, state)
    state.counted_for = 2  # another client's statement ran there since
    play(
        core,
        [
            (FromClient(query(READ_ROW_COUNT)), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query(READ_ROW_COUNT))]),
            # The server says the other client's -1; the client is told its own 3.
            (FromServer(row_count_result(-1)), [SendToClient(row_count_result(3)), MAY_DETACH]),
        ],
    )
    assert core.row_count == -1 and state.counted_for == 1  # (a result set: what it is now)


def test_row_count_on_the_clients_own_connection_is_the_servers() -> None:
    core, state = client(), server_state()
    updated_three(core, state)
    play(
        core,
        [
            (FromClient(query(READ_ROW_COUNT)), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query(READ_ROW_COUNT))]),
            (FromServer(row_count_result(3)), [SendToClient(row_count_result(3)), MAY_DETACH]),
        ],
    )


def test_row_count_after_the_proxys_own_commands_on_the_connection_is_the_clients() -> None:
    # The client's session is brought with a hidden SET: ROW_COUNT() there is the SET's 0.
    core, state = client(), server_state()
    updated_three(core, state)
    core.variables["time_zone"] = "+05:00"
    restore = query("SET @@session.time_zone = '+05:00'")
    play(
        core,
        [
            (FromClient(query(READ_ROW_COUNT)), [NEED_CONNECTION]),
            # The read waits until the hidden SET is answered, and goes alone.
            (Attached(state), [SendToServer(restore)]),
            (
                FromServer(answer(ok(state=variable("time_zone", "+05:00")))),
                [SendToServer(query(READ_ROW_COUNT))],
            ),
            (FromServer(row_count_result(0)), [SendToClient(row_count_result(3)), MAY_DETACH]),
        ],
    )


def test_a_command_after_an_answered_row_count_waits_for_its_answer() -> None:
    core, state = client(), server_state()
    updated_three(core, state)
    state.counted_for = 2
    then = query("SELECT 1")
    play(
        core,
        [
            (FromClient(query(READ_ROW_COUNT) + then), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query(READ_ROW_COUNT))]),
            (FromServer(row_count_result(-1)), [SendToClient(row_count_result(3)), SendToServer(then)]),
            (FromServer(text_result(b"1")), [SendToClient(text_result(b"1")), MAY_DETACH]),
        ],
    )


@pytest.mark.parametrize(
    ("before", "reply", "expected"),
    [
        ("SELECT a FROM t", text_result(b"x"), -1),
        ("DELETE FROM t", answer(ok(affected_rows=5)), 5),
        ("SELEC 1", packet(ErrPacket(1064, "syntax", "42000").encode(), 1), -1),
    ],
)
def test_row_count_is_what_the_clients_last_statement_left(before: str, reply: bytes, expected: int) -> None:
    core, state = client(), server_state()
    core.receive_client(query(before))
    core.attached(state)
    assert SendToClient(reply) in core.receive_server(reply)
    assert core.row_count == expected


def test_row_count_after_a_ping_answered_here_is_zero() -> None:
    core, state = client(), server_state()
    updated_three(core, state)
    core.receive_client(PING)
    play(
        core,
        [
            (FromClient(query(READ_ROW_COUNT)), [NEED_CONNECTION]),
            (Attached(state), [SendToServer(query(READ_ROW_COUNT))]),
            (FromServer(row_count_result(3)), [SendToClient(row_count_result(0)), MAY_DETACH]),
        ],
    )


def test_a_prepared_row_count_where_it_was_prepared_again_is_the_clients_own() -> None:
    # The client prepares SELECT ROW_COUNT() (which leaves 0), runs an UPDATE, and executes it
    # on a connection without a copy: the hidden prepare there leaves 0, the client's is 3.
    core, first, second = client(), server_state(), server_state()
    prepare = packet(bytes([COM_STMT_PREPARE]) + READ_ROW_COUNT.encode())
    definition_answer = answer(prepare_ok(11, 1, 0), column(b"ROW_COUNT()"), eof())
    play(
        core,
        [
            (FromClient(prepare), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(prepare)]),
            (
                FromServer(definition_answer),
                [SendToClient(answer(prepare_ok(1, 1, 0), column(b"ROW_COUNT()"), eof())), MAY_DETACH],
            ),
        ],
    )
    assert core.row_count == 0
    core.detached()
    updated_three(core, first)
    run = packet(struct.pack("<BIBI", COM_STMT_EXECUTE, 1, 0, 1))
    play(
        core,
        [
            (FromClient(run), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(prepare)]),
            (
                FromServer(definition_answer.replace(struct.pack("<I", 11), struct.pack("<I", 12), 1)),
                [SendToServer(packet(struct.pack("<BIBI", COM_STMT_EXECUTE, 12, 0, 1)))],
            ),
            (
                FromServer(row_count_result(0, binary=True)),
                [SendToClient(row_count_result(3, binary=True)), MAY_DETACH],
            ),
        ],
    )


def test_warning_count_read_alone_elsewhere_is_the_clients_whole_count() -> None:
    # SIGNAL raises one condition again; @@warning_count alone is given the client's count.
    core, first, second = client(), server_state(), server_state()
    insert = query("INSERT INTO t (a) VALUES ('x'), ('y'), ('z')")
    warned = answer(ok(affected_rows=3, warnings=3))
    show = query("SHOW WARNINGS")
    count = query("SELECT @@warning_count")
    play(
        core,
        [
            (FromClient(insert), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(insert)]),
            (FromServer(warned), [SendToClient(warned), SendToServer(show)]),
            (FromServer(TRUNCATED), [MAY_DETACH]),
            (Detached(), []),
            (FromClient(count), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(count)]),
            (
                FromServer(counter_result(b"@@warning_count", 0)),
                [SendToClient(counter_result(b"@@warning_count", 3)), MAY_DETACH],
            ),
        ],
    )


def counter_result(name: bytes, value: int) -> bytes:
    definition = (
        b"\x03def\x00\x00\x00"
        + encode_lenenc_str(name)
        + b"\x00\x0c\x3f\x00\x15\x00\x00\x00\x08\xa1\x00\x00\x00\x00"
    )
    return answer(b"\x01", definition, eof(), encode_lenenc_str(str(value).encode()), eof())
