"""The transaction-pooling core as playbooks: a script of events in, the exact commands out.

Each step is ``(event, expected commands)``; ``play`` feeds the events to one
``PooledClient`` in order and compares what comes out of each, command for command.

Server-side statement names (``RP_<n>``) come from a process-wide counter: a test reads the
name the core chose from the Parse it sent (``parsed_names``), never guesses the number.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.endings import EndReason
from protocols.pooling import (
    ARM_IDLE_TIMER,
    DISARM_IDLE_TIMER,
    MAY_DETACH,
    MAY_DETACH_PINNED,
    NEED_CONNECTION,
    CloseWithError,
    Ended,
    MayDetach,
    NeedConnection,
    Pinned,
    Release,
    SendToClient,
    SendToServer,
)
from protocols.postgres.extended import (
    BIND_COMPLETE_MESSAGE,
    CLOSE_COMPLETE_MESSAGE,
    FLUSH_MESSAGE,
    PARSE_COMPLETE_MESSAGE,
    TARGET_PORTAL,
    TARGET_STATEMENT,
    Bind,
    Close,
    Describe,
    Execute,
    FrontendMessage,
    Parse,
    Query,
    Sync,
    decode_frontend,
)
from protocols.postgres.framing import MessageReader
from protocols.postgres.messages import (
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT,
    SQLSTATE_TOO_MANY_CONNECTIONS,
    TERMINATE_MESSAGE,
    ErrorResponse,
    ParameterStatus,
    RawMessage,
    ReadyForQuery,
    frame,
)
from protocols.postgres.pins import INSPECT_LIMIT, PIN_TOO_LARGE
from protocols.postgres.pooling import BringSettings, Command, PooledClient
from protocols.postgres.server_state import PREPARED_PER_CONNECTION, ServerState
from tests.unit import playbook
from tests.unit.playbook import Attached, Detached, FromClient, FromServer, feed_common

# --- messages ----------------------------------------------------------------------------------

SYNC = Sync().encode()
FLUSH = FLUSH_MESSAGE
PARSE_COMPLETE = PARSE_COMPLETE_MESSAGE
BIND_COMPLETE = BIND_COMPLETE_MESSAGE
CLOSE_COMPLETE = CLOSE_COMPLETE_MESSAGE
ROW_DESCRIPTION = frame(
    b"T", struct.pack("!h", 1) + b"?column?\0" + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0)
)
PARAMETER_DESCRIPTION = frame(b"t", struct.pack("!hI", 1, 23))
NO_PARAMETERS = frame(b"t", struct.pack("!h", 0))
ROW = frame(b"D", struct.pack("!hi", 1, 1) + b"1")
SELECT_DONE = frame(b"C", b"SELECT 1\0")
IDLE = ReadyForQuery(b"I").encode()
IN_TRANSACTION = ReadyForQuery(b"T").encode()
FAILED_TRANSACTION = ReadyForQuery(b"E").encode()
ERROR = ErrorResponse.build("ERROR", "42P01", 'relation "nosuchtable" does not exist').encode()
SELECT_ANSWER = ROW_DESCRIPTION + ROW + SELECT_DONE + IDLE
BAD = "SELECT * FROM nosuchtable"  # what the server answers with ERROR
STALE = "SELECT * FROM t"  # t is dropped after the statement is prepared: DROPPED
DROPPED = ErrorResponse.build("ERROR", "42P01", 'relation "t" does not exist').encode()
EXECUTE = Execute("").encode()
DESCRIBE_PORTAL = Describe(TARGET_PORTAL, "").encode()


def query(sql: str) -> bytes:
    return Query(sql).encode()


def parse(name: str, sql: str = "SELECT 1", types: tuple[int, ...] = ()) -> bytes:
    return Parse(name, sql, types).encode()


def bind(statement: str, *parameters: bytes) -> bytes:
    return Bind("", statement, (), parameters, ()).encode()


def describe(statement: str) -> bytes:
    return Describe(TARGET_STATEMENT, statement).encode()


def close(statement: str) -> bytes:
    return Close(TARGET_STATEMENT, statement).encode()


def done(tag: str) -> bytes:
    return frame(b"C", tag.encode() + b"\0")


def bind_execute(statement: str) -> bytes:
    return bind(statement) + EXECUTE + SYNC


def describe_statement(statement: str) -> bytes:
    return describe(statement) + SYNC


def deallocate(name: str) -> bytes:
    """A DEALLOCATE of a server-side name, as the core writes it."""
    return query(f'DEALLOCATE "{name}"')


def stand_in_and_deallocate(name: str) -> bytes:
    """What the server gets for a DEALLOCATE of a statement its connection lacks."""
    return query(f'PREPARE "{name}" AS SELECT') + deallocate(name)


def error(code: str, message: str) -> bytes:
    return ErrorResponse.build("ERROR", code, message).encode()


def missing(statement: str) -> bytes:
    return error("26000", f'prepared statement "{statement}" does not exist')


# --- the playbook ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SettingsBrought:
    connection: ServerState


@dataclass(frozen=True)
class Lost:
    pass


@dataclass(frozen=True)
class TimerFired:
    timeout: str


Event = FromClient | FromServer | Attached | SettingsBrought | Detached | Lost | TimerFired


def feed(core: PooledClient, event: Event) -> list[Command]:
    if isinstance(event, SettingsBrought):
        return core.settings_brought(event.connection)
    if isinstance(event, Lost):
        return [core.connection_lost()]
    if isinstance(event, TimerFired):
        return [core.idle_timer_fired(event.timeout)]
    return feed_common(core, event)


def play(core: PooledClient, script: list[tuple[Event, list[Command]]]) -> None:
    playbook.play(core, script, feed)


def client(parameters: dict[str, str] | None = None) -> PooledClient:
    return PooledClient(parameters or {}, "txn")


def connection(**parameters: str) -> ServerState:
    state = ServerState()
    state.parameters.update(parameters)
    return state


def upstream(commands: list[Command]) -> list[FrontendMessage]:
    """The client messages in what the core sent the server, decoded, in order."""
    reader = MessageReader()
    for command in commands:
        if isinstance(command, SendToServer):
            reader.receive_data(command.data)
    messages: list[FrontendMessage] = []
    while isinstance(message := reader.next_event(), RawMessage):
        messages.append(decode_frontend(message))
    return messages


def parsed_names(commands: list[Command]) -> list[str]:
    """The names of the named statements the core sent Parses of, in order."""
    return [
        message.statement
        for message in upstream(commands)
        if isinstance(message, Parse) and message.statement
    ]


def prepared(core: PooledClient, conn: ServerState, name: str = "s1", sql: str = "SELECT 1") -> str:
    """The client prepares ``name`` on ``conn`` (it holds no connection), then gives the
    connection back: return the server-side name the core chose."""
    play(core, [(FromClient(parse(name, sql) + SYNC), [NEED_CONNECTION])])
    commands = core.attached(conn)
    (server_name,) = parsed_names(commands)
    assert server_name.startswith("RP_")
    assert commands == [SendToServer(parse(server_name, sql) + SYNC)]
    play(
        core,
        [
            (FromServer(PARSE_COMPLETE + IDLE), [SendToClient(PARSE_COMPLETE + IDLE), MAY_DETACH]),
            (Detached(), []),
        ],
    )
    return server_name


def spread(core: PooledClient, first: ServerState, second: ServerState) -> str:
    """The client prepares s1 (SELECT 1) on ``first`` and runs it on ``second`` (injected
    there), then gives the connection back: both hold a copy. Return its server-side name."""
    name = prepared(core, first)
    play(
        core,
        [
            (FromClient(bind("s1") + EXECUTE + SYNC), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(parse(name) + bind(name) + EXECUTE + SYNC)]),
            (
                FromServer(PARSE_COMPLETE + BIND_COMPLETE + SELECT_DONE + IDLE),
                [SendToClient(BIND_COMPLETE + SELECT_DONE + IDLE), MAY_DETACH],
            ),
            (Detached(), []),
        ],
    )
    assert list(first.prepared) == list(second.prepared) == [name]
    return name


def attach(core: PooledClient, conn: ServerState, data: bytes) -> list[Command]:
    """The client, holding no connection, sends ``data``; ``conn`` is attached: what comes out."""
    play(core, [(FromClient(data), [NEED_CONNECTION])])
    return core.attached(conn)


# --- a plain group -----------------------------------------------------------------------------


def test_a_plain_query_attaches_is_forwarded_and_may_detach_at_ready_for_query() -> None:
    core, conn = client(), connection()
    select = query("SELECT 1")
    play(
        core,
        [
            (FromClient(select), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(select)]),
            (FromServer(SELECT_ANSWER[:7]), [SendToClient(SELECT_ANSWER[:7])]),  # passed as it comes
            (FromServer(SELECT_ANSWER[7:]), [SendToClient(SELECT_ANSWER[7:]), MAY_DETACH]),
            (Detached(), []),
        ],
    )
    assert core.connection is None and conn.transaction_status == b"I"


def test_an_extended_group_passes_in_one_write() -> None:
    core, conn = client(), connection()
    group = parse("") + bind("") + DESCRIBE_PORTAL + EXECUTE + SYNC
    answer = PARSE_COMPLETE + BIND_COMPLETE + SELECT_ANSWER
    play(
        core,
        [
            (FromClient(group), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(group)]),
            (FromServer(answer), [SendToClient(answer), MAY_DETACH]),
        ],
    )
    assert not conn.prepared  # the unnamed statement is not among the connection's


def test_a_transaction_holds_the_connection_and_arms_the_idle_timer() -> None:
    core, conn = client(), connection()
    begun, committed = done("BEGIN") + IN_TRANSACTION, done("COMMIT") + IDLE
    play(
        core,
        [
            (FromClient(query("BEGIN")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(query("BEGIN"))]),
            (FromServer(begun), [SendToClient(begun), ARM_IDLE_TIMER]),
            (FromClient(query("COMMIT")), [DISARM_IDLE_TIMER, SendToServer(query("COMMIT"))]),
            (FromServer(committed), [SendToClient(committed), MAY_DETACH]),
        ],
    )


def test_the_idle_timer_ends_the_client_with_25p03() -> None:
    core, conn = client(), connection()
    play(
        core,
        [(FromClient(query("BEGIN")), [NEED_CONNECTION]), (Attached(conn), [SendToServer(query("BEGIN"))])],
    )
    play(
        core,
        [
            (
                FromServer(done("BEGIN") + IN_TRANSACTION),
                [SendToClient(done("BEGIN") + IN_TRANSACTION), ARM_IDLE_TIMER],
            )
        ],
    )
    message = 'pool "txn": terminating connection: idle in a transaction for 5s'
    error = ErrorResponse.build("FATAL", SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT, message).encode()
    play(core, [(TimerFired("5s"), [CloseWithError(error, EndReason.IDLE_IN_TRANSACTION, message)])])
    core.detached()
    assert core.release_terms() == Release(reusable=True, cancel_first=False, needs_reset=True)
    assert core.receive_client(query("SELECT 1")) == []  # ended: nothing more is forwarded


# --- named statements --------------------------------------------------------------------------


def test_each_client_statement_gets_a_server_side_name_of_its_own() -> None:
    alice, bob, conn = client(), client(), connection()
    alice_s1 = prepared(alice, conn)
    bob_s1 = prepared(bob, conn)  # the same name and text: still not shared
    assert alice_s1 != bob_s1 and list(conn.prepared) == [alice_s1, bob_s1]
    play(
        bob,
        [
            (FromClient(describe("s1") + SYNC), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(describe(bob_s1) + SYNC)]),  # held here: no Parse first
        ],
    )


def test_a_bind_and_describe_in_the_batch_of_their_parse_are_renamed() -> None:
    core, conn = client(), connection()
    commands = attach(core, conn, parse("s1") + describe("s1") + bind("s1") + EXECUTE + SYNC)
    (name,) = parsed_names(commands)
    assert commands == [SendToServer(parse(name) + describe(name) + bind(name) + EXECUTE + SYNC)]
    answer = (
        PARSE_COMPLETE + frame(b"t", b"\0\0") + ROW_DESCRIPTION + BIND_COMPLETE + ROW + SELECT_DONE + IDLE
    )
    play(core, [(FromServer(answer), [SendToClient(answer), MAY_DETACH])])
    assert list(conn.prepared) == [name]


USES = [
    (bind_execute, BIND_COMPLETE + ROW + SELECT_DONE + IDLE),
    (describe_statement, PARAMETER_DESCRIPTION + ROW_DESCRIPTION + IDLE),
]


@pytest.mark.parametrize(("use", "answer"), USES, ids=["bind", "describe"])
def test_a_statement_the_connection_lacks_is_parsed_first_and_its_answer_hidden(
    use: Callable[[str], bytes], answer: bytes
) -> None:
    core, first, second = client(), connection(), connection()
    name = prepared(core, first)
    play(
        core,
        [
            # The next transaction runs on a connection that never saw the statement.
            (FromClient(use("s1")), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(parse(name) + use(name))]),  # in the same write
            (FromServer(PARSE_COMPLETE + answer), [SendToClient(answer), MAY_DETACH]),
            # Still attached: it holds the statement now.
            (FromClient(use("s1")), [SendToServer(use(name))]),
        ],
    )
    assert list(first.prepared) == list(second.prepared) == [name]


def test_a_failed_parse_of_a_statement_the_connection_lacks_reaches_the_client() -> None:
    core, first, second, third = client(), connection(), connection(), connection()
    name = prepared(core, first, sql=STALE)
    play(
        core,
        [
            (FromClient(bind_execute("s1")), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(parse(name, STALE) + bind_execute(name))]),
            # The client hears why its Bind did not run; the server skipped it.
            (FromServer(DROPPED + IDLE), [SendToClient(DROPPED + IDLE), MAY_DETACH]),
            (Detached(), []),
        ],
    )
    assert not second.prepared and list(first.prepared) == [name]
    # Still the client's statement: parsed again where it is needed.
    commands = attach(core, third, bind_execute("s1"))
    assert commands == [SendToServer(parse(name, STALE) + bind_execute(name))]


def test_a_second_use_behind_an_unanswered_parse_of_ours_waits_for_its_answer() -> None:
    core, first, second = client(), connection(), connection()
    name = prepared(core, first)
    play(
        core,
        [
            (FromClient(bind_execute("s1") * 2), [NEED_CONNECTION]),
            # Had the Parse failed, the second Bind would need one of its own.
            (Attached(second), [SendToServer(parse(name) + bind_execute(name) + FLUSH)]),
            (
                FromServer(PARSE_COMPLETE + BIND_COMPLETE + SELECT_DONE + IDLE),
                [SendToClient(BIND_COMPLETE + SELECT_DONE + IDLE), SendToServer(bind_execute(name))],
            ),
            (
                FromServer(BIND_COMPLETE + SELECT_DONE + IDLE),
                [SendToClient(BIND_COMPLETE + SELECT_DONE + IDLE), MAY_DETACH],
            ),
        ],
    )


@pytest.mark.parametrize("held", [True, False], ids=["connection-holds-it", "connection-lacks-it"])
def test_a_duplicate_parse_is_refused_by_the_server_in_the_client_s_words(held: bool) -> None:
    core, first, second = client(), connection(), connection()
    name = prepared(core, first)
    conn = first if held else second
    # Parsed first where it is lacking, so the server finds the name taken, as it would.
    injected = b"" if held else parse(name)
    duplicate = error("42P05", f'prepared statement "{name}" already exists')
    refused = error("42P05", 'prepared statement "s1" already exists')
    answer = (b"" if held else PARSE_COMPLETE) + duplicate + IDLE
    play(
        core,
        [
            (FromClient(parse("s1", "SELECT 2") + SYNC), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(injected + parse(name, "SELECT 2") + SYNC)]),
            (FromServer(answer), [SendToClient(refused + IDLE), MAY_DETACH]),
            # Still the first definition.
            (FromClient(bind_execute("s1")), [SendToServer(bind_execute(name))]),
        ],
    )
    assert list(conn.prepared) == [name]


def test_a_statement_closed_and_prepared_again_in_one_batch_gets_a_new_name() -> None:
    core, conn = client(), connection()
    old = prepared(core, conn)
    play(
        core,
        [
            (FromClient(close("s1") + parse("s1", "SELECT 2") + SYNC), [NEED_CONNECTION]),
            # The Parse waits for the Close's answer: its name is taken until then.
            (Attached(conn), [SendToServer(close(old) + FLUSH)]),
        ],
    )
    commands = core.receive_server(CLOSE_COMPLETE)
    (new,) = parsed_names(commands)
    assert new != old
    assert commands == [SendToClient(CLOSE_COMPLETE), SendToServer(parse(new, "SELECT 2") + SYNC)]
    play(core, [(FromServer(PARSE_COMPLETE + IDLE), [SendToClient(PARSE_COMPLETE + IDLE), MAY_DETACH])])
    assert list(conn.prepared) == [new]


# --- the unnamed statement ---------------------------------------------------------------------

UNNAMED_MISSING = error("26000", "unnamed prepared statement does not exist")


def unnamed_prepared(core: PooledClient, conn: ServerState) -> None:
    """The client prepares the unnamed statement (SELECT 1) on ``conn``, then gives it back."""
    play(
        core,
        [
            (FromClient(parse("") + SYNC), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(parse("") + SYNC)]),  # not renamed
            (FromServer(PARSE_COMPLETE + IDLE), [SendToClient(PARSE_COMPLETE + IDLE), MAY_DETACH]),
            (Detached(), []),
        ],
    )


@pytest.mark.parametrize(("use", "answer"), USES, ids=["bind", "describe"])
def test_the_unnamed_statement_is_parsed_again_on_the_next_connection(
    use: Callable[[str], bytes], answer: bytes
) -> None:
    core, first, second = client(), connection(), connection()
    unnamed_prepared(core, first)
    play(
        core,
        [
            (FromClient(use("")), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(parse("") + use(""))]),
            (FromServer(PARSE_COMPLETE + answer), [SendToClient(answer), MAY_DETACH]),
            # Still attached: made here now.
            (FromClient(use("")), [SendToServer(use(""))]),
        ],
    )
    assert not first.prepared and not second.prepared  # the unnamed statement is not counted


def test_without_an_unnamed_statement_the_connection_s_is_closed_first() -> None:
    # So the server says it does not exist, and never runs the one another client left.
    core, conn = client(), connection()
    play(
        core,
        [
            (FromClient(bind_execute("")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(close("") + bind_execute(""))]),
            (
                FromServer(CLOSE_COMPLETE + UNNAMED_MISSING + IDLE),
                [SendToClient(UNNAMED_MISSING + IDLE), MAY_DETACH],
            ),
        ],
    )


@pytest.mark.parametrize(
    "ending",
    [query("SELECT 1"), close("") + SYNC],
    ids=["query", "close"],
)
def test_a_query_or_a_close_ends_the_unnamed_statement(ending: bytes) -> None:
    core, first, second = client(), connection(), connection()
    unnamed_prepared(core, first)
    answer = SELECT_ANSWER if ending[:1] == b"Q" else CLOSE_COMPLETE + IDLE
    play(
        core,
        [
            (FromClient(ending), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(ending)]),
            (FromServer(answer), [SendToClient(answer), MAY_DETACH]),
            (Detached(), []),
            (FromClient(bind_execute("")), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(close("") + bind_execute(""))]),
        ],
    )


def test_a_failed_parse_of_the_unnamed_statement_ends_the_one_before() -> None:
    # The server drops the unnamed statement before it parses the next one.
    core, first, second = client(), connection(), connection()
    unnamed_prepared(core, first)
    play(
        core,
        [
            (FromClient(parse("", BAD) + SYNC), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(parse("", BAD) + SYNC)]),
            (FromServer(ERROR + IDLE), [SendToClient(ERROR + IDLE), MAY_DETACH]),
            (Detached(), []),
            (FromClient(bind_execute("")), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(close("") + bind_execute(""))]),
        ],
    )


# --- what ends a named statement -----------------------------------------------------------------


def test_a_close_goes_upstream_renamed_and_its_complete_forgets_the_statement() -> None:
    core, first, second = client(), connection(), connection()
    name = spread(core, first, second)
    play(
        core,
        [
            (FromClient(close("s1") + SYNC), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(close(name) + SYNC)]),
            (FromServer(CLOSE_COMPLETE + IDLE), [SendToClient(CLOSE_COMPLETE + IDLE), MAY_DETACH]),
        ],
    )
    assert core.statements.by_name == {}
    assert not second.prepared and not first.prepared
    assert first.to_close == [name]  # closed with the next work sent on it
    # The client's name means nothing now: the server says so in the client's words.
    play(core, [(FromClient(bind_execute("s1")), [SendToServer(bind_execute("s1"))])])


def test_copies_owed_a_close_go_with_the_next_work_and_never_alone_before_a_terminate() -> None:
    """A client keeping its connection between transactions, when another client's copy on it
    became garbage: a Terminate leaves the connection at rest (reusable, the close still due);
    work takes the close along, first."""
    core, conn = client(), connection()
    play(
        core,
        [
            (FromClient(query("SELECT 1")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(query("SELECT 1"))]),
            (FromServer(SELECT_ANSWER), [SendToClient(SELECT_ANSWER), MAY_DETACH]),
        ],
    )
    conn.to_close.append("RP_other")  # (the driver kept the connection for the client)
    play(core, [(FromClient(TERMINATE_MESSAGE), [Ended(EndReason.CLIENT_TERMINATED)])])
    core.detached()
    assert core.release_terms() == Release(reusable=True, cancel_first=False, needs_reset=False)
    assert conn.to_close == ["RP_other"]
    # The next client's first work on that connection carries it.
    core = client()
    play(
        core,
        [
            (FromClient(query("SELECT 1")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(close("RP_other") + query("SELECT 1"))]),
            (
                FromServer(CLOSE_COMPLETE + SELECT_ANSWER),
                [SendToClient(SELECT_ANSWER), MAY_DETACH],
            ),
        ],
    )
    assert not conn.to_close


@pytest.mark.parametrize("sql", ["DEALLOCATE s1", "deallocate prepare S1;", 'DEALLOCATE "s1"'])
def test_deallocate_of_a_statement_the_connection_holds_names_it_as_the_server_knows_it(sql: str) -> None:
    core, first, second = client(), connection(), connection()
    name = spread(core, first, second)
    answer = done("DEALLOCATE") + IDLE
    play(
        core,
        [
            (FromClient(query(sql)), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(deallocate(name))]),
            (FromServer(answer), [SendToClient(answer), MAY_DETACH]),
        ],
    )
    assert core.statements.by_name == {}
    assert not second.prepared and first.to_close == [name]


@pytest.mark.parametrize(
    "request_", [query("DEALLOCATE other"), close("other") + SYNC], ids=["deallocate", "close"]
)
def test_a_name_the_client_never_prepared_goes_as_it_came(request_: bytes) -> None:
    # An SQL-level PREPARE's (the client is pinned), or nobody's: the server answers.
    core, conn = client(), connection()
    play(core, [(FromClient(request_), [NEED_CONNECTION]), (Attached(conn), [SendToServer(request_)])])


def test_deallocate_of_a_statement_the_connection_lacks_prepares_a_hidden_stand_in_first() -> None:
    core, first, second = client(), connection(), connection()
    name = prepared(core, first)
    answer = done("DEALLOCATE") + IDLE
    play(
        core,
        [
            (FromClient(query("DEALLOCATE s1")), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(stand_in_and_deallocate(name))]),
            (FromServer(done("PREPARE") + IDLE + answer), [SendToClient(answer), MAY_DETACH]),
        ],
    )
    assert core.statements.by_name == {}
    assert not second.prepared and not first.prepared and first.to_close == [name]


def test_deallocate_in_a_failed_transaction_fails_as_it_would_and_forgets_nothing() -> None:
    core, first, second = client(), connection(), connection()
    name = prepared(core, first)
    aborted = error(
        "25P02", "current transaction is aborted, commands ignored until end of transaction block"
    )
    begun = done("BEGIN") + IN_TRANSACTION
    play(
        core,
        [
            (FromClient(query("BEGIN")), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(query("BEGIN"))]),
            (FromServer(begun), [SendToClient(begun), ARM_IDLE_TIMER]),
            (FromClient(query(BAD)), [DISARM_IDLE_TIMER, SendToServer(query(BAD))]),
            (
                FromServer(ERROR + FAILED_TRANSACTION),
                [SendToClient(ERROR + FAILED_TRANSACTION), ARM_IDLE_TIMER],
            ),
            (
                FromClient(query("DEALLOCATE s1")),
                [
                    DISARM_IDLE_TIMER,
                    SendToServer(stand_in_and_deallocate(name)),
                ],
            ),
            # The stand-in's error is hidden: the client hears one error, for its DEALLOCATE.
            (
                FromServer((aborted + FAILED_TRANSACTION) * 2),
                [SendToClient(aborted + FAILED_TRANSACTION), ARM_IDLE_TIMER],
            ),
        ],
    )
    assert list(core.statements.by_name) == ["s1"]
    assert list(first.prepared) == [name] and not first.to_close and not second.prepared


@pytest.mark.parametrize("sql", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_deallocate_all_and_discard_all_forget_every_statement_once_they_ran(sql: str) -> None:
    core, first, second = client(), connection(), connection()
    name = spread(core, first, second)
    second.prepared["RP_theirs"] = None  # another client's: dropped too
    second.to_close.append("RP_unused")  # one nobody needs: gone already
    play(
        core,
        [
            (FromClient(query(sql)), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(close("RP_unused") + query(sql))]),
        ],
    )
    assert list(core.statements.by_name) == ["s1"]  # not before the server says it ran
    answer = done(sql) + IDLE
    play(core, [(FromServer(CLOSE_COMPLETE + answer), [SendToClient(answer), MAY_DETACH])])
    assert core.statements.by_name == {}
    assert not second.prepared and not second.to_close
    assert first.to_close == [name]


@pytest.mark.parametrize("statement", ["d", ""], ids=["named", "unnamed"])
def test_discard_all_run_by_the_extended_protocol_forgets_every_statement_by_its_tag(statement: str) -> None:
    core, first, second = client(), connection(), connection()
    name = spread(core, first, second)
    commands = attach(core, second, parse(statement, "DISCARD ALL") + SYNC)
    discard = statement and parsed_names(commands)[0]
    assert commands == [SendToServer(parse(discard, "DISCARD ALL") + SYNC)]
    refused = 'bind message supplies 1 parameters, but prepared statement "{}" requires 0'
    play(
        core,
        [
            (FromServer(PARSE_COMPLETE + IDLE), [SendToClient(PARSE_COMPLETE + IDLE), MAY_DETACH]),
            # Skipped after an earlier error: it did not run, nothing is forgotten.
            (
                FromClient(bind("s1", b"1") + bind_execute(statement)),
                [SendToServer(bind(name, b"1") + bind_execute(discard))],
            ),
            (
                FromServer(error("08P01", refused.format(name)) + IDLE),
                [SendToClient(error("08P01", refused.format("s1")) + IDLE), MAY_DETACH],
            ),
        ],
    )
    assert name in second.prepared and not first.to_close
    answer = BIND_COMPLETE + done("DISCARD ALL") + IDLE
    play(
        core,
        [
            (FromClient(bind_execute(statement)), [SendToServer(bind_execute(discard))]),
            (FromServer(answer), [SendToClient(answer), MAY_DETACH]),
        ],
    )
    assert core.statements.by_name == {}
    assert not second.prepared and first.to_close == [name]


@pytest.mark.parametrize(
    ("ending", "sent", "holds"),
    [
        pytest.param(close("s1"), close, True, id="close"),
        pytest.param(query("DEALLOCATE s1"), deallocate, True, id="deallocate"),
        pytest.param(query("DEALLOCATE s1"), stand_in_and_deallocate, False, id="deallocate-lacking"),
        pytest.param(query("DEALLOCATE ALL"), lambda _: query("DEALLOCATE ALL"), True, id="deallocate-all"),
        pytest.param(query("DISCARD ALL"), lambda _: query("DISCARD ALL"), True, id="discard-all"),
    ],
)
def test_an_ending_the_server_skips_after_an_earlier_error_forgets_nothing(
    ending: bytes, sent: Callable[[str], bytes], holds: bool
) -> None:
    core, first, second, third = client(), connection(), connection(), connection()
    name = spread(core, first, second)
    conn = second if holds else third
    play(
        core,
        [
            (FromClient(parse("", BAD) + ending + SYNC), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(parse("", BAD) + sent(name) + SYNC)]),
            (FromServer(ERROR + IDLE), [SendToClient(ERROR + IDLE), MAY_DETACH]),
        ],
    )
    assert list(core.statements.by_name) == ["s1"]
    assert list(first.prepared) == [name] and not first.to_close
    assert list(conn.prepared) == ([name] if holds else [])
    # And it runs as before.
    injected = b"" if holds else parse(name)
    play(core, [(FromClient(bind_execute("s1")), [SendToServer(injected + bind_execute(name))])])


# --- closing what nobody needs -------------------------------------------------------------------


def test_the_copies_of_a_client_that_left_are_closed_first_in_the_next_client_s_write() -> None:
    leaver, next_client, first, second = client(), client(), connection(), connection()
    s1 = spread(leaver, first, second)
    s2 = prepared(leaver, first, "s2", "SELECT 2")
    leaver.forget_statements()
    assert first.to_close == [s1, s2] and second.to_close == [s1]
    assert not first.prepared and not second.prepared
    play(
        next_client,
        [
            (FromClient(query("SELECT 1")), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(close(s1) + close(s2) + query("SELECT 1"))]),
            (FromServer(CLOSE_COMPLETE * 2 + SELECT_ANSWER), [SendToClient(SELECT_ANSWER), MAY_DETACH]),
        ],
    )
    assert not first.to_close and second.to_close == [s1]


def test_a_close_of_ours_the_server_skips_is_sent_again_with_the_next_write() -> None:
    leaver, core, conn = client(), client(), connection()
    gone = prepared(leaver, conn)
    play(
        core,
        [
            (FromClient(parse("", BAD) + FLUSH), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(parse("", BAD) + FLUSH)]),
            (FromServer(ERROR), [SendToClient(ERROR)]),  # the server skips to the next Sync
        ],
    )
    leaver.forget_statements()  # (the leaver's copy is on the connection core holds)
    play(
        core,
        [
            (FromClient(SYNC), [SendToServer(close(gone) + SYNC)]),  # skipped: still to close
            (FromServer(IDLE), [SendToClient(IDLE), MAY_DETACH]),
            (FromClient(query("SELECT 1")), [SendToServer(close(gone) + query("SELECT 1"))]),
            (FromServer(CLOSE_COMPLETE + SELECT_ANSWER), [SendToClient(SELECT_ANSWER), MAY_DETACH]),
        ],
    )
    assert not conn.to_close and not conn.prepared


def test_the_least_recently_used_statement_is_closed_beyond_the_limit() -> None:
    core, conn = client(), connection()
    mine = prepared(core, conn)
    others = [f"RP_other{index}" for index in range(PREPARED_PER_CONNECTION - 1)]
    conn.prepared.update(dict.fromkeys(others))  # other clients', used after mine
    assert len(conn.prepared) == PREPARED_PER_CONNECTION
    play(
        core,
        [
            # Using it makes it the most recently used: the next Parse closes another.
            (FromClient(bind_execute("s1")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(bind_execute(mine))]),
            (
                FromServer(BIND_COMPLETE + SELECT_DONE + IDLE),
                [SendToClient(BIND_COMPLETE + SELECT_DONE + IDLE), MAY_DETACH],
            ),
        ],
    )
    commands = core.receive_client(parse("s2", "SELECT 2") + SYNC)
    (s2,) = parsed_names(commands)
    assert commands == [SendToServer(close(others[0]) + parse(s2, "SELECT 2") + SYNC)]
    play(
        core,
        [
            (
                FromServer(CLOSE_COMPLETE + PARSE_COMPLETE + IDLE),
                [SendToClient(PARSE_COMPLETE + IDLE), MAY_DETACH],
            )
        ],
    )
    assert len(conn.prepared) == PREPARED_PER_CONNECTION
    assert others[0] not in conn.prepared and list(conn.prepared)[-2:] == [mine, s2]


def test_a_statement_of_the_client_s_closed_for_room_is_parsed_again_where_it_is_used() -> None:
    core, conn = client(), connection()
    mine = prepared(core, conn)
    others = [f"RP_other{index}" for index in range(PREPARED_PER_CONNECTION - 1)]
    conn.prepared.update(dict.fromkeys(others))
    commands = attach(core, conn, parse("s2", "SELECT 2") + bind_execute("s1"))
    (s2, again) = parsed_names(commands)
    assert again == mine
    assert commands == [
        SendToServer(
            close(mine) + parse(s2, "SELECT 2")  # room for s2: mine was the least recently used
            + close(others[0]) + parse(mine) + bind_execute(mine)  # room for mine again
        )
    ]  # fmt: skip
    answer = PARSE_COMPLETE + BIND_COMPLETE + SELECT_DONE + IDLE
    play(
        core,
        [
            (
                FromServer(CLOSE_COMPLETE + PARSE_COMPLETE + CLOSE_COMPLETE + answer),
                [SendToClient(answer), MAY_DETACH],
            )
        ],
    )
    assert len(conn.prepared) == PREPARED_PER_CONNECTION and list(conn.prepared)[-2:] == [s2, mine]


# --- errors inside a pipeline ------------------------------------------------------------------

PIPELINE_ANSWERS = {
    # What the server sends up to the error; then only the Sync's ReadyForQuery.
    "parse": ERROR,
    "bind": PARSE_COMPLETE + ERROR,
    "describe": PARSE_COMPLETE + BIND_COMPLETE + ERROR,
    "execute": PARSE_COMPLETE + BIND_COMPLETE + ROW_DESCRIPTION + ERROR,
}


@pytest.mark.parametrize("failing", list(PIPELINE_ANSWERS))
def test_an_error_anywhere_in_a_pipeline_skips_the_rest_up_to_the_sync(failing: str) -> None:
    core, conn = client(), connection()

    def pipeline(name: str) -> bytes:
        # A Query after unsynced messages is skipped too when one of them fails.
        return (
            parse(name, "SELECT $1", (23,)) + bind(name, b"1") + DESCRIBE_PORTAL + EXECUTE
            + query("SELECT 2") + SYNC
        )  # fmt: skip

    commands = attach(core, conn, pipeline("s1"))
    (name,) = parsed_names(commands)
    assert commands == [SendToServer(pipeline(name))]
    play(
        core,
        [
            (FromServer(PIPELINE_ANSWERS[failing]), [SendToClient(PIPELINE_ANSWERS[failing])]),
            (FromServer(IDLE), [SendToClient(IDLE), MAY_DETACH]),  # idle only now
        ],
    )
    kept = failing != "parse"
    assert list(core.statements.by_name) == (["s1"] if kept else [])
    assert list(conn.prepared) == ([name] if kept else [])


def test_after_an_unsynced_error_a_query_is_skipped_and_only_the_sync_is_answered() -> None:
    core, conn = client(), connection()
    commands = attach(core, conn, parse("s1", BAD) + FLUSH)
    (name,) = parsed_names(commands)
    assert commands == [SendToServer(parse(name, BAD) + FLUSH)]
    play(core, [(FromServer(ERROR), [SendToClient(ERROR)])])
    assert not core.at_idle_point and core.statements.by_name == {} and not conn.prepared
    play(
        core,
        [
            (FromClient(query("SELECT 1")), [SendToServer(query("SELECT 1"))]),
            (FromClient(SYNC), [SendToServer(SYNC)]),
            (FromServer(IDLE), [SendToClient(IDLE), MAY_DETACH]),  # the Query got no answer
        ],
    )
    assert core.at_idle_point


def test_an_error_skips_the_pipeline_and_forgets_what_was_not_prepared() -> None:
    core, conn = client(), connection()

    def pipeline(a: str, b: str) -> bytes:
        return parse(a, BAD) + bind(a) + EXECUTE + parse(b) + bind(b) + EXECUTE + SYNC

    commands = attach(core, conn, pipeline("a", "b"))
    (a, b) = parsed_names(commands)
    assert commands == [SendToServer(pipeline(a, b))]
    # The server fails the first Parse and skips every message up to Sync.
    play(core, [(FromServer(ERROR + IDLE), [SendToClient(ERROR + IDLE), MAY_DETACH])])
    assert core.statements.by_name == {} and not conn.prepared
    # Neither exists upstream: the next Parse of "b" prepares it, under a name never used.
    commands = core.receive_client(parse("b") + SYNC)
    (again,) = parsed_names(commands)
    assert again not in (a, b) and commands == [SendToServer(parse(again) + SYNC)]


def test_an_error_in_a_transaction_skips_to_sync_and_keeps_the_connection() -> None:
    core, conn = client(), connection()
    pipeline = query("BEGIN") + parse("", BAD) + bind("") + EXECUTE + SYNC
    begun = done("BEGIN") + IN_TRANSACTION
    play(
        core,
        [
            (FromClient(pipeline), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(pipeline)]),
            (FromServer(begun), [SendToClient(begun)]),  # the Sync is still owed: no timer
            (
                FromServer(ERROR + FAILED_TRANSACTION),
                [SendToClient(ERROR + FAILED_TRANSACTION), ARM_IDLE_TIMER],
            ),
        ],
    )


# --- waiting for the answers a message depends on ----------------------------------------------


def test_a_bind_behind_an_unanswered_close_waits_for_its_answer() -> None:
    core, first, second = client(), connection(), connection()
    name = prepared(core, first)
    play(
        core,
        [
            (FromClient(close("s1") + bind_execute("s1")), [NEED_CONNECTION]),
            # Whether the Bind needs a Parse first depends on the Close: the server is asked
            # for its answers so far.
            (Attached(second), [SendToServer(close(name) + FLUSH)]),
            # Closed: the Bind names nothing of ours, and goes as the client sent it.
            (FromServer(CLOSE_COMPLETE), [SendToClient(CLOSE_COMPLETE), SendToServer(bind_execute("s1"))]),
            (FromServer(missing("s1") + IDLE), [SendToClient(missing("s1") + IDLE), MAY_DETACH]),
        ],
    )
    assert core.statements.by_name == {} and first.to_close == [name]


def test_a_bind_behind_a_close_the_server_skips_is_sent_with_a_parse_first() -> None:
    core, first, second = client(), connection(), connection()
    name = prepared(core, first)
    play(
        core,
        [
            (FromClient(parse("", BAD) + close("s1") + bind_execute("s1")), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(parse("", BAD) + close(name) + FLUSH)]),
            # The Close was skipped: the statement lives on, and the server skips these too.
            (FromServer(ERROR), [SendToClient(ERROR), SendToServer(parse(name) + bind_execute(name))]),
            (FromServer(IDLE), [SendToClient(IDLE), MAY_DETACH]),
        ],
    )
    assert list(core.statements.by_name) == ["s1"]
    assert list(first.prepared) == [name] and not second.prepared and not first.to_close


@pytest.mark.parametrize("sql", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_a_bind_behind_a_deallocate_all_in_flight_waits_for_its_answer(sql: str) -> None:
    core, conn = client(), connection()
    name = prepared(core, conn)
    answer = done(sql) + IDLE
    play(
        core,
        [
            (FromClient(query(sql) + bind_execute("s1")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(query(sql) + FLUSH)]),
            (FromServer(answer), [SendToClient(answer), SendToServer(bind_execute("s1"))]),
        ],
    )
    assert core.statements.by_name == {} and name not in conn.prepared


# --- server-side names in errors, in the client's words ------------------------------------------


def wrong_count(statement: str) -> bytes:
    return error(
        "08P01", f'bind message supplies 0 parameters, but prepared statement "{statement}" requires 1'
    )


RENAMED_ERRORS = [
    # A statement the server lost (the books said it held it), and a Bind that does not fit.
    pytest.param(describe_statement, missing, id="does-not-exist"),
    pytest.param(bind_execute, wrong_count, id="parameter-count"),
]


@pytest.mark.parametrize(("use", "refusal"), RENAMED_ERRORS)
@pytest.mark.parametrize("matching", [False, True], ids=["header-walk", "matching"])
def test_an_error_naming_our_statement_names_the_client_s_however_it_is_cut(
    use: Callable[[str], bytes], refusal: Callable[[str], bytes], matching: bool
) -> None:
    # Alone, the request is a plain group (its answers walked by their headers); behind a
    # Parse of a named statement, its answers are matched one by one.
    prefix = parse("s2", "SELECT 2") if matching else b""
    cut, last = 0, 0
    while cut <= last:  # every cut inside the error (its length follows the name's)
        core, conn = client(), connection()
        name = prepared(core, conn, sql="SELECT $1")
        commands = attach(core, conn, prefix + use("s1"))
        before = parse(parsed_names(commands)[0], "SELECT 2") if matching else b""
        assert commands == [SendToServer(before + use(name))]
        head = PARSE_COMPLETE if matching else b""
        stream = head + refusal(name) + IDLE
        last = len(refusal(name))
        at = len(head) + cut
        out = [*core.receive_server(stream[:at]), *core.receive_server(stream[at:])]
        received = b"".join(command.data for command in out if isinstance(command, SendToClient))
        assert received == head + refusal("s1") + IDLE, cut
        assert out[-1] == MAY_DETACH and core.at_idle_point
        cut += 1


@pytest.mark.parametrize("ending", [bind_execute, deallocate], ids=["bind", "deallocate"])
def test_a_name_of_the_proxy_s_form_that_is_no_statement_of_the_client_s_goes_under_a_fresh_one(
    ending: Callable[[str], bytes],
) -> None:
    # Else a client could run another client's statement by its server-side name.
    owner, core, conn = client(), client(), connection()
    theirs = prepared(owner, conn)
    commands = attach(core, conn, ending(theirs))
    (message, *_) = upstream(commands)
    if isinstance(message, Bind):
        alias = message.statement
    else:
        assert isinstance(message, Query)
        alias = message.sql.split('"')[1]
    assert alias.startswith("RP_") and alias != theirs
    assert commands == [SendToServer(ending(alias))]
    play(core, [(FromServer(missing(alias) + IDLE), [SendToClient(missing(theirs) + IDLE), MAY_DETACH])])


# --- pins --------------------------------------------------------------------------------------

PINNING = [
    ("SET search_path TO x", "SET search_path", "SET"),
    (
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET SESSION CHARACTERISTICS",
        "SET SESSION CHARACTERISTICS",
    ),
    ("SELECT set_config('a.b', '1', false)", "set_config a.b", "set_config"),
    ("LISTEN ch", "LISTEN", "LISTEN"),
    ("CREATE TEMP TABLE t (a int)", "temporary table", "temporary table"),
    (
        "CREATE FUNCTION pg_temp.f() RETURNS int AS 'SELECT 1' LANGUAGE sql",
        "temporary object",
        "temporary object",
    ),
    ("SELECT pg_advisory_lock(1)", "session advisory lock", "session advisory lock"),
    ("PREPARE p AS SELECT 1", "PREPARE", "PREPARE"),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DECLARE WITH HOLD", "DECLARE WITH HOLD"),
    ("LOAD 'auto_explain'", "LOAD", "LOAD"),
    ("SELECT '" + "x" * INSPECT_LIMIT + "'", PIN_TOO_LARGE, PIN_TOO_LARGE),
]


@pytest.mark.parametrize(("sql", "reason", "kind"), PINNING, ids=[kind for _, _, kind in PINNING])
@pytest.mark.parametrize("extended", [False, True], ids=["query", "parse"])
def test_each_pin_is_said_once_and_keeps_the_connection(
    sql: str, reason: str, kind: str, extended: bool
) -> None:
    core, conn = client(), connection()
    request = parse("", sql) + bind("") + EXECUTE + SYNC if extended else query(sql)
    answer = (PARSE_COMPLETE + BIND_COMPLETE if extended else b"") + done("X") + IDLE
    play(
        core,
        [
            (FromClient(request), [NEED_CONNECTION]),
            (Attached(conn), [Pinned(reason, kind), SendToServer(request)]),
            (FromServer(answer), [SendToClient(answer), MAY_DETACH_PINNED]),
            (FromClient(request), [SendToServer(request)]),  # pinned already: said once
        ],
    )
    assert core.pinned == reason
    core.receive_server(answer)
    core.detached()
    assert core.release_terms() == Release(reusable=True, cancel_first=False, needs_reset=True)


def test_an_unpinned_client_leaves_a_clean_connection() -> None:
    core, conn = client(), connection()
    play(
        core,
        [
            (FromClient(query("SET LOCAL x.y = 1")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(query("SET LOCAL x.y = 1"))]),
        ],
    )
    core.receive_server(done("SET") + IDLE)
    core.detached()
    assert core.release_terms() == Release(reusable=True, cancel_first=False, needs_reset=False)


# --- endings -----------------------------------------------------------------------------------


def test_a_client_that_ends_mid_query_leaves_its_connection_to_be_cancelled() -> None:
    core, conn = client(), connection()
    play(
        core,
        [
            (FromClient(query("SELECT pg_sleep(10)")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(query("SELECT pg_sleep(10)"))]),
            (FromClient(TERMINATE_MESSAGE), [Ended(EndReason.CLIENT_TERMINATED)]),
            (FromClient(query("SELECT 1")), []),
        ],
    )
    core.detached()
    assert core.release_terms() == Release(reusable=False, cancel_first=True, needs_reset=False)


def test_terminate_without_a_connection_needs_none() -> None:
    play(client(), [(FromClient(TERMINATE_MESSAGE), [Ended(EndReason.CLIENT_TERMINATED)])])


def test_a_broken_client_message_ends_the_client() -> None:
    core, conn = client(), connection()
    broken = frame(b"P", b"no terminator")
    play(
        core,
        [
            (FromClient(query("SELECT 1")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(query("SELECT 1"))]),
        ],
    )
    (ended,) = core.receive_client(broken)
    assert isinstance(ended, CloseWithError) and ended.reason is EndReason.CLIENT_VIOLATION
    assert "NUL" in ended.detail
    assert b"C08P01\x00" in ended.error  # the client is told, as PostgreSQL tells it


def test_a_lost_connection_is_reported_unless_mid_message() -> None:
    core, conn = client(), connection()
    error = ErrorResponse.build(
        "FATAL", SQLSTATE_CONNECTION_FAILURE, 'pool "txn": the server connection was lost'
    )
    play(
        core,
        [
            (FromClient(query("SELECT 1")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(query("SELECT 1"))]),
            (Lost(), [CloseWithError(error.encode(), EndReason.SERVER_CLOSED)]),
        ],
    )
    core, conn = client(), connection()
    play(
        core,
        [
            (FromClient(query("SELECT 1")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(query("SELECT 1"))]),
        ],
    )
    core.receive_server(ROW_DESCRIPTION[:8])  # part of a message went to the client
    play(core, [(Lost(), [Ended(EndReason.SERVER_CLOSED)])])


def test_no_connection_ends_the_client_with_the_pool_s_reason() -> None:
    core = client()
    message = 'pool "txn": no server connection within 1s'
    error = ErrorResponse.build("FATAL", SQLSTATE_TOO_MANY_CONNECTIONS, message).encode()
    assert core.receive_client(query("SELECT 1")) == [NEED_CONNECTION]
    assert core.no_connection(SQLSTATE_TOO_MANY_CONNECTIONS, message) == CloseWithError(
        error, EndReason.NO_SERVER_CONNECTION, message
    )


def test_a_server_breaking_the_protocol_ends_the_client() -> None:
    core, conn = client(), connection()
    play(
        core,
        [
            (FromClient(query("SELECT 1")), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(query("SELECT 1"))]),
        ],
    )
    (ended,) = core.receive_server(IDLE + IDLE)
    assert isinstance(ended, Ended) and ended.reason is EndReason.SERVER_VIOLATION


# --- settings ----------------------------------------------------------------------------------


def test_settings_that_differ_on_attach_are_brought_first() -> None:
    core = client({"application_name": "app", "TimeZone": "UTC", "user": "alice"})
    conn = connection(application_name="other", TimeZone="UTC")
    play(
        core,
        [
            (FromClient(query("SELECT 1")), [NEED_CONNECTION]),
            (Attached(conn), [BringSettings({"application_name": "app"})]),  # not "user": not a setting
            (SettingsBrought(conn), [SendToServer(query("SELECT 1"))]),
        ],
    )
    assert core.connection is conn


def test_a_setting_the_server_reports_travels_with_the_client() -> None:
    core, first = client({"TimeZone": "UTC"}), connection(TimeZone="UTC")
    changed = ParameterStatus("TimeZone", "Europe/Paris").encode()
    play(
        core,
        [
            (FromClient(query("SELECT 1")), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(query("SELECT 1"))]),
        ],
    )
    play(
        core,
        [
            (FromServer(changed + SELECT_ANSWER), [SendToClient(changed + SELECT_ANSWER), MAY_DETACH]),
            (Detached(), []),
        ],
    )
    play(
        core,
        [
            (FromClient(query("SELECT 1")), [NEED_CONNECTION]),
            (Attached(connection(TimeZone="UTC")), [BringSettings({"TimeZone": "Europe/Paris"})]),
        ],
    )


# --- chunking ----------------------------------------------------------------------------------

# A pinning statement first: the pin is then said at the same point however the bytes come.
CLIENT_STREAM = (
    query("SET search_path TO x")
    + query("SELECT 1")
    + parse("s1") + bind("s1") + EXECUTE + SYNC
    + close("s1") + SYNC
    + query("DEALLOCATE ALL")
)  # fmt: skip
SERVER_STREAM = (
    done("SET") + IDLE
    + SELECT_ANSWER
    + PARSE_COMPLETE + BIND_COMPLETE + ROW + SELECT_DONE + IDLE
    + CLOSE_COMPLETE + IDLE
    + done("DEALLOCATE ALL") + IDLE
)  # fmt: skip


def drive(client_chunks: list[bytes], server_chunks: list[bytes]) -> list[Command]:
    """A fake driver: attaches one connection when asked, detaches when allowed; the server
    answers once the client sent everything (a pipeline). Returns every command in order."""
    core, conn = client(), connection()
    log: list[Command] = []

    def run(commands: list[Command]) -> None:
        for command in commands:
            log.append(command)
            if isinstance(command, NeedConnection):
                run(core.attached(conn))
            elif isinstance(command, MayDetach) and command.clean:
                core.detached()

    for chunk in client_chunks:
        run(core.receive_client(chunk))
    for chunk in server_chunks:
        run(core.receive_server(chunk))
    assert core.statements.by_name == {} and not conn.prepared and not conn.to_close
    return log


def normalised(commands: list[Command]) -> list[Command]:
    """Join consecutive sends, and drop a detach right before the next attach (what a partial
    client message costs: the driver keeps or re-borrows the connection)."""
    out: list[Command] = []
    for command in commands:
        last = out[-1] if out else None
        if isinstance(command, SendToServer) and isinstance(last, SendToServer):
            out[-1] = SendToServer(last.data + command.data)
        elif isinstance(command, SendToClient) and isinstance(last, SendToClient):
            out[-1] = SendToClient(last.data + command.data)
        elif isinstance(command, NeedConnection) and last == MAY_DETACH:
            out.pop()  # attached again, as asked before the detach
        else:
            out.append(command)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[start:end] for start, end in itertools.pairwise(points) if end > start]


def whole(commands: list[Command]) -> list[Command]:
    """What the streams give, in whole, with the server-side name the core chose."""
    (name,) = parsed_names(commands)
    upstream_bytes = (
        query("SET search_path TO x")
        + query("SELECT 1")
        + parse(name) + bind(name) + EXECUTE + SYNC
        + close(name) + SYNC
        + query("DEALLOCATE ALL")
    )  # fmt: skip
    return [
        NEED_CONNECTION,
        Pinned("SET search_path", "SET"),
        SendToServer(upstream_bytes),
        SendToClient(SERVER_STREAM),  # every answer the client's own
        MAY_DETACH_PINNED,
    ]


def test_the_whole_streams_give_the_expected_commands() -> None:
    commands = normalised(drive([CLIENT_STREAM], [SERVER_STREAM]))
    assert commands == whole(commands)


@given(
    client_cuts=st.lists(st.integers(min_value=0), max_size=10),
    server_cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_any_chunking_of_either_side_gives_the_same_commands(
    client_cuts: list[int], server_cuts: list[int]
) -> None:
    commands = normalised(drive(split(CLIENT_STREAM, client_cuts), split(SERVER_STREAM, server_cuts)))
    assert commands == whole(commands)


@pytest.mark.parametrize("side", ["client", "server"])
def test_every_single_split_point_gives_the_same_commands(side: str) -> None:
    stream = CLIENT_STREAM if side == "client" else SERVER_STREAM
    for cut in range(1, len(stream)):
        chunks = [stream[:cut], stream[cut:]]
        commands = drive(chunks, [SERVER_STREAM]) if side == "client" else drive([CLIENT_STREAM], chunks)
        commands = normalised(commands)
        assert commands == whole(commands), cut


# --- regressions -------------------------------------------------------------------------------


def test_a_close_behind_a_walked_group_is_matched_after_its_ready_for_query() -> None:
    for cut in range(len(SELECT_ANSWER + CLOSE_COMPLETE + IDLE) + 1):
        core, conn = client(), connection()
        name = prepared(core, conn)
        # A plain query, then the Close behind it, then its Sync.
        commands = attach(core, conn, query("SELECT 1") + close("s1") + SYNC)
        assert commands == [SendToServer(query("SELECT 1") + close(name) + SYNC)]
        stream = SELECT_ANSWER + CLOSE_COMPLETE + IDLE
        out = [*core.receive_server(stream[:cut]), *core.receive_server(stream[cut:])]
        assert b"".join(command.data for command in out if isinstance(command, SendToClient)) == stream, cut
        assert out[-1] == MAY_DETACH and core.statements.by_name == {}


# --- what PostgreSQL does and the core does not yet ----------------------------------------------


def test_deallocate_run_by_the_extended_protocol_deallocates_the_client_s_statement() -> None:
    # How psycopg 3, asyncpg and JDBC send conn.execute("DEALLOCATE s1"): the unnamed
    # statement, first thing after an attach.
    core, first, second = client(), connection(), connection()
    name = spread(core, first, second)
    dealloc = parse("", f'DEALLOCATE "{name}"') + bind("") + DESCRIBE_PORTAL + EXECUTE + SYNC
    answer = PARSE_COMPLETE + BIND_COMPLETE + frame(b"n") + done("DEALLOCATE") + IDLE
    play(
        core,
        [
            (
                FromClient(parse("", "DEALLOCATE s1") + bind("") + DESCRIBE_PORTAL + EXECUTE + SYNC),
                [NEED_CONNECTION],
            ),
            (Attached(second), [SendToServer(dealloc)]),  # nothing between the Parse and its Bind
            (FromServer(answer), [SendToClient(answer), MAY_DETACH]),
        ],
    )
    assert core.statements.by_name == {}
    assert not second.prepared and first.to_close == [name]


@pytest.mark.parametrize("sql", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_a_statement_prepared_right_behind_a_deallocate_all_waits_for_it(sql: str) -> None:
    # Whether the Parse lands before or after the statements are dropped is the server's
    # answer to say: the Parse waits for it (Flush), then goes on the same connection.
    core, conn = client(), connection()
    assert attach(core, conn, query(sql) + parse("s2") + SYNC) == [SendToServer(query(sql) + FLUSH)]
    commands = core.receive_server(done(sql) + IDLE)
    (name,) = parsed_names(commands)
    assert commands == [SendToClient(done(sql) + IDLE), SendToServer(parse(name) + SYNC)]
    play(
        core,
        [
            (FromServer(PARSE_COMPLETE + IDLE), [SendToClient(PARSE_COMPLETE + IDLE), MAY_DETACH]),
            (FromClient(bind_execute("s2")), [SendToServer(bind_execute(name))]),  # no Parse again
        ],
    )


def test_a_query_the_server_skips_does_not_end_the_unnamed_statement() -> None:
    core, first, second = client(), connection(), connection()
    unnamed_prepared(core, first)
    refused = error("08P01", 'bind message supplies 1 parameters, but prepared statement "" requires 0')
    play(
        core,
        [
            (FromClient(bind("", b"1") + EXECUTE + query("SELECT 2") + SYNC), [NEED_CONNECTION]),
            (
                Attached(first),
                [SendToServer(parse("") + bind("", b"1") + EXECUTE + query("SELECT 2") + SYNC)],
            ),
            # The Bind fails: the server skips the Query up to the Sync. SELECT 1 lives on.
            (FromServer(PARSE_COMPLETE + refused + IDLE), [SendToClient(refused + IDLE), MAY_DETACH]),
            (Detached(), []),
            (FromClient(bind_execute("")), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(parse("") + bind_execute(""))]),
        ],
    )
