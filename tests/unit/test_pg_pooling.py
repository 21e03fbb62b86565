"""The transaction-pooling core as playbooks: a script of events in, the exact commands out.

Each step is ``(event, expected commands)``; ``play`` feeds the events to one
``PooledClient`` in order and compares what comes out of each, command for command.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.endings import EndReason
from protocols.postgres.extended import (
    BIND_COMPLETE_MESSAGE,
    CLOSE_COMPLETE_MESSAGE,
    PARSE_COMPLETE_MESSAGE,
    TARGET_STATEMENT,
    Bind,
    Close,
    Describe,
    Execute,
    Parse,
    Query,
    StatementNamer,
    Sync,
)
from protocols.postgres.messages import (
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT,
    SQLSTATE_TOO_MANY_CONNECTIONS,
    TERMINATE_MESSAGE,
    ErrorResponse,
    ParameterStatus,
    ReadyForQuery,
    frame,
)
from protocols.postgres.pins import INSPECT_LIMIT, PIN_TOO_LARGE
from protocols.postgres.pooling import (
    ARM_IDLE_TIMER,
    DISARM_IDLE_TIMER,
    MAY_DETACH,
    MAY_DETACH_PINNED,
    NEED_CONNECTION,
    BringSettings,
    CloseWithError,
    Command,
    Ended,
    MayDetach,
    NeedConnection,
    Pinned,
    PooledClient,
    Release,
    SendToClient,
    SendToServer,
)
from protocols.postgres.server_state import PREPARED_PER_CONNECTION, ServerState

# --- messages ----------------------------------------------------------------------------------

SYNC = Sync().encode()
ROW_DESCRIPTION = frame(
    b"T", struct.pack("!h", 1) + b"?column?\0" + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0)
)
ROW = frame(b"D", struct.pack("!hi", 1, 1) + b"1")
SELECT_DONE = frame(b"C", b"SELECT 1\0")
IDLE = ReadyForQuery(b"I").encode()
IN_TRANSACTION = ReadyForQuery(b"T").encode()
FAILED_TRANSACTION = ReadyForQuery(b"E").encode()
ERROR = ErrorResponse.build("ERROR", "42P01", 'relation "nosuchtable" does not exist').encode()
SELECT_ANSWER = ROW_DESCRIPTION + ROW + SELECT_DONE + IDLE


def query(sql: str) -> bytes:
    return Query(sql).encode()


def server_name(sql: str) -> str:
    return StatementNamer.server_name(sql, ())


def parse(name: str, sql: str) -> bytes:
    return Parse(name, sql).encode()


def bind(statement: str) -> bytes:
    return Bind("", statement).encode()


EXECUTE = Execute("").encode()


# --- the playbook ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FromClient:
    data: bytes


@dataclass(frozen=True)
class FromServer:
    data: bytes


@dataclass(frozen=True)
class Attached:
    connection: ServerState


@dataclass(frozen=True)
class SettingsBrought:
    connection: ServerState


@dataclass(frozen=True)
class Detached:
    pass


@dataclass(frozen=True)
class Lost:
    pass


@dataclass(frozen=True)
class TimerFired:
    timeout: str


Event = FromClient | FromServer | Attached | SettingsBrought | Detached | Lost | TimerFired


def feed(core: PooledClient, event: Event) -> list[Command]:
    if isinstance(event, FromClient):
        return core.receive_client(event.data)
    if isinstance(event, FromServer):
        return core.receive_server(event.data)
    if isinstance(event, Attached):
        return core.attached(event.connection)
    if isinstance(event, SettingsBrought):
        return core.settings_brought(event.connection)
    if isinstance(event, Detached):
        core.detached()
        return []
    if isinstance(event, Lost):
        return [core.connection_lost()]
    return [core.idle_timer_fired(event.timeout)]


def play(core: PooledClient, script: list[tuple[Event, list[Command]]]) -> None:
    for step, (event, expected) in enumerate(script):
        assert feed(core, event) == expected, f"step {step}: {event}"


def client(parameters: dict[str, str] | None = None) -> PooledClient:
    return PooledClient(parameters or {}, "txn")


def connection(**parameters: str) -> ServerState:
    state = ServerState()
    state.parameters.update(parameters)
    return state


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
    group = parse("", "SELECT 1") + bind("") + Describe(b"P", "").encode() + EXECUTE + SYNC
    answer = PARSE_COMPLETE_MESSAGE + BIND_COMPLETE_MESSAGE + SELECT_ANSWER
    play(
        core,
        [
            (FromClient(group), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(group)]),
            (FromServer(answer), [SendToClient(answer), MAY_DETACH]),
        ],
    )
    assert not conn.prepared  # the unnamed statement is not tracked


def test_a_transaction_holds_the_connection_and_arms_the_idle_timer() -> None:
    core, conn = client(), connection()
    begin, done = query("BEGIN"), frame(b"C", b"BEGIN\0")
    play(
        core,
        [
            (FromClient(begin), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(begin)]),
            (FromServer(done + IN_TRANSACTION), [SendToClient(done + IN_TRANSACTION), ARM_IDLE_TIMER]),
            (FromClient(query("COMMIT")), [DISARM_IDLE_TIMER, SendToServer(query("COMMIT"))]),
            (
                FromServer(frame(b"C", b"COMMIT\0") + IDLE),
                [SendToClient(frame(b"C", b"COMMIT\0") + IDLE), MAY_DETACH],
            ),
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
                FromServer(frame(b"C", b"BEGIN\0") + IN_TRANSACTION),
                [SendToClient(frame(b"C", b"BEGIN\0") + IN_TRANSACTION), ARM_IDLE_TIMER],
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


def test_a_named_statement_the_connection_lacks_is_prepared_first_and_its_answer_hidden() -> None:
    core, first, second = client(), connection(), connection()
    name = server_name("SELECT 1")
    prepare = parse("s1", "SELECT 1") + SYNC
    play(
        core,
        [
            (FromClient(prepare), [NEED_CONNECTION]),
            (Attached(first), [SendToServer(parse(name, "SELECT 1") + SYNC)]),  # renamed
            (
                FromServer(PARSE_COMPLETE_MESSAGE + IDLE),
                [SendToClient(PARSE_COMPLETE_MESSAGE + IDLE), MAY_DETACH],
            ),
            (Detached(), []),
            # The next transaction runs on a connection that never saw the statement.
            (FromClient(bind("s1") + EXECUTE + SYNC), [NEED_CONNECTION]),
            (Attached(second), [SendToServer(parse(name, "SELECT 1") + bind(name) + EXECUTE + SYNC)]),
            (
                FromServer(PARSE_COMPLETE_MESSAGE + BIND_COMPLETE_MESSAGE + ROW + SELECT_DONE + IDLE),
                [SendToClient(BIND_COMPLETE_MESSAGE + ROW + SELECT_DONE + IDLE), MAY_DETACH],
            ),
        ],
    )
    assert list(first.prepared) == [name] and list(second.prepared) == [name]


def test_a_parse_the_connection_has_gets_a_synthetic_parse_complete() -> None:
    core, conn = client(), connection()
    name = server_name("SELECT 1")
    conn.prepared[name] = None  # another client prepared it here
    play(
        core,
        [
            (FromClient(parse("mine", "SELECT 1") + SYNC), [NEED_CONNECTION]),
            (Attached(conn), [SendToClient(PARSE_COMPLETE_MESSAGE), SendToServer(SYNC)]),
            (FromServer(IDLE), [SendToClient(IDLE), MAY_DETACH]),
            # Still attached (the driver kept it); named as the server knows it.
            (
                FromClient(Describe(TARGET_STATEMENT, "mine").encode() + SYNC),
                [SendToServer(Describe(TARGET_STATEMENT, name).encode() + SYNC)],
            ),
        ],
    )


def test_close_and_deallocate_of_a_client_statement_are_answered_here() -> None:
    core, conn = client(), connection()
    name = server_name("SELECT 1")
    conn.prepared[name] = None
    close = Close(TARGET_STATEMENT, "s1").encode()
    deallocated = frame(b"C", b"DEALLOCATE\0") + IDLE
    play(
        core,
        [
            (FromClient(parse("s1", "SELECT 1") + parse("s2", "SELECT 1") + SYNC), [NEED_CONNECTION]),
            (Attached(conn), [SendToClient(PARSE_COMPLETE_MESSAGE * 2), SendToServer(SYNC)]),
            (FromServer(IDLE), [SendToClient(IDLE), MAY_DETACH]),
            (FromClient(close + SYNC), [SendToClient(CLOSE_COMPLETE_MESSAGE), SendToServer(SYNC)]),
            (FromServer(IDLE), [SendToClient(IDLE), MAY_DETACH]),
            # Nothing goes upstream: the client may detach at once.
            (FromClient(query("DEALLOCATE s2")), [SendToClient(deallocated), MAY_DETACH]),
            # An SQL-level statement the proxy does not know: the server answers.
            (FromClient(query("DEALLOCATE other")), [SendToServer(query("DEALLOCATE other"))]),
        ],
    )
    assert list(conn.prepared) == [name]  # shared: other clients may use it
    assert core.statements.by_name == {}


def test_the_least_recently_used_statement_is_closed_beyond_the_limit() -> None:
    core, conn = client(), connection()
    for index in range(PREPARED_PER_CONNECTION):
        conn.prepared[f"rp_old{index}"] = None
    name = server_name("SELECT 2")
    play(
        core,
        [
            (FromClient(parse("s", "SELECT 2") + SYNC), [NEED_CONNECTION]),
            (
                Attached(conn),
                [SendToServer(Close(TARGET_STATEMENT, "rp_old0").encode() + parse(name, "SELECT 2") + SYNC)],
            ),
            (
                FromServer(CLOSE_COMPLETE_MESSAGE + PARSE_COMPLETE_MESSAGE + IDLE),
                [SendToClient(PARSE_COMPLETE_MESSAGE + IDLE), MAY_DETACH],
            ),
        ],
    )
    assert len(conn.prepared) == PREPARED_PER_CONNECTION and "rp_old0" not in conn.prepared


# --- errors inside a pipeline ------------------------------------------------------------------


def test_an_error_skips_the_pipeline_to_sync_and_forgets_what_was_not_prepared() -> None:
    core, conn = client(), connection()
    bad, good = "SELECT * FROM nosuchtable", "SELECT 1"
    pipeline = parse("a", bad) + bind("a") + EXECUTE + parse("b", good) + bind("b") + EXECUTE + SYNC
    upstream = (
        parse(server_name(bad), bad) + bind(server_name(bad)) + EXECUTE
        + parse(server_name(good), good) + bind(server_name(good)) + EXECUTE + SYNC
    )  # fmt: skip
    play(
        core,
        [
            (FromClient(pipeline), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(upstream)]),
            # The server fails the first Parse and skips every message up to Sync.
            (FromServer(ERROR + IDLE), [SendToClient(ERROR + IDLE), MAY_DETACH]),
            # Neither statement exists upstream: the next Parse of "b" really prepares.
            (FromClient(parse("b", good) + SYNC), [SendToServer(parse(server_name(good), good) + SYNC)]),
        ],
    )
    assert list(conn.prepared) == [server_name(good)]


def test_an_error_in_a_transaction_skips_to_sync_and_keeps_the_connection() -> None:
    core, conn = client(), connection()
    pipeline = query("BEGIN") + parse("", "SELECT * FROM nosuchtable") + bind("") + EXECUTE + SYNC
    begun = frame(b"C", b"BEGIN\0") + IN_TRANSACTION
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
    answer = (
        (PARSE_COMPLETE_MESSAGE + BIND_COMPLETE_MESSAGE if extended else b"") + frame(b"C", b"X\0") + IDLE
    )
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
    core.receive_server(frame(b"C", b"SET\0") + IDLE)
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
    assert isinstance(ended, Ended) and ended.reason is EndReason.CLIENT_VIOLATION and "NUL" in ended.detail


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
    + parse("s1", "SELECT 1") + bind("s1") + EXECUTE + SYNC
    + Close(TARGET_STATEMENT, "s1").encode() + SYNC
    + query("DEALLOCATE ALL")
)  # fmt: skip
SERVER_STREAM = (
    frame(b"C", b"SET\0") + IDLE
    + SELECT_ANSWER
    + PARSE_COMPLETE_MESSAGE + BIND_COMPLETE_MESSAGE + ROW + SELECT_DONE + IDLE
    + IDLE
)  # fmt: skip
CLIENT_GETS = (
    frame(b"C", b"SET\0") + IDLE
    + SELECT_ANSWER
    + PARSE_COMPLETE_MESSAGE + BIND_COMPLETE_MESSAGE + ROW + SELECT_DONE + IDLE
    + CLOSE_COMPLETE_MESSAGE + IDLE
    + frame(b"C", b"DEALLOCATE ALL\0") + IDLE
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


UPSTREAM = (
    query("SET search_path TO x")
    + query("SELECT 1")
    + parse(server_name("SELECT 1"), "SELECT 1") + bind(server_name("SELECT 1")) + EXECUTE + SYNC
    + SYNC
)  # fmt: skip
WHOLE = [
    NEED_CONNECTION,
    Pinned("SET search_path", "SET"),
    SendToServer(UPSTREAM),  # Close and DEALLOCATE of the client's own statement: answered here
    SendToClient(CLIENT_GETS),
    MAY_DETACH_PINNED,
]


def test_the_whole_streams_give_the_expected_commands() -> None:
    assert normalised(drive([CLIENT_STREAM], [SERVER_STREAM])) == WHOLE


@given(
    client_cuts=st.lists(st.integers(min_value=0), max_size=10),
    server_cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_any_chunking_of_either_side_gives_the_same_commands(
    client_cuts: list[int], server_cuts: list[int]
) -> None:
    assert normalised(drive(split(CLIENT_STREAM, client_cuts), split(SERVER_STREAM, server_cuts))) == WHOLE


@pytest.mark.parametrize("side", ["client", "server"])
def test_every_single_split_point_gives_the_same_commands(side: str) -> None:
    stream = CLIENT_STREAM if side == "client" else SERVER_STREAM
    for cut in range(1, len(stream)):
        chunks = [stream[:cut], stream[cut:]]
        commands = drive(chunks, [SERVER_STREAM]) if side == "client" else drive([CLIENT_STREAM], chunks)
        assert normalised(commands) == WHOLE, cut


# --- regressions -------------------------------------------------------------------------------


def test_a_close_answered_here_behind_a_walked_group_is_released_after_its_ready_for_query() -> None:
    core, conn = client(), connection()
    conn.prepared[server_name("SELECT 1")] = None
    play(
        core,
        [
            (FromClient(parse("s1", "SELECT 1") + SYNC), [NEED_CONNECTION]),
            (Attached(conn), [SendToClient(PARSE_COMPLETE_MESSAGE), SendToServer(SYNC)]),
            (FromServer(IDLE), [SendToClient(IDLE), MAY_DETACH]),
            # Still attached: a plain query, then the Close behind it, then its Sync.
            (
                FromClient(query("SELECT 1") + Close(TARGET_STATEMENT, "s1").encode() + SYNC),
                [SendToServer(query("SELECT 1") + SYNC)],
            ),
            # The CloseComplete is due right after the query's ReadyForQuery, before the Sync's.
            (
                FromServer(SELECT_ANSWER + IDLE),
                [SendToClient(SELECT_ANSWER + CLOSE_COMPLETE_MESSAGE + IDLE), MAY_DETACH],
            ),
        ],
    )


def test_discard_all_forgets_every_statement_and_goes_to_the_server() -> None:
    core, conn = client(), connection()
    name = server_name("SELECT 1")
    play(
        core,
        [
            (FromClient(parse("s1", "SELECT 1") + SYNC), [NEED_CONNECTION]),
            (Attached(conn), [SendToServer(parse(name, "SELECT 1") + SYNC)]),
            (
                FromServer(PARSE_COMPLETE_MESSAGE + IDLE),
                [SendToClient(PARSE_COMPLETE_MESSAGE + IDLE), MAY_DETACH],
            ),
            (FromClient(query("DISCARD ALL")), [SendToServer(query("DISCARD ALL"))]),
        ],
    )
    assert not conn.prepared and core.statements.by_name == {}
