"""Transaction mode, proved against PostgreSQL itself: hypothesis writes client scripts of
extended- and simple-protocol messages; each runs once directly against the server and
once through a transaction-mode pool of 1-3 connections while other clients run their own
transactions on the same pool; the client must receive exactly the messages PostgreSQL
sent it directly (``tests.pgwire.normalise`` says what is not compared).

Each script starts from the same scratch table, created afresh through the same target (so
DDL through the pool is DDL the pool has seen), and ends with the harness's own
``Sync`` + ``ROLLBACK; SELECT 'end of script'``, whose answer says that everything was
answered: a Query after an unsynced error is skipped by the server, so a script's
ReadyForQuery count cannot be known beforehand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.local.postgres import ThrowawayPostgres
from proxy.local.proxy_process import ProxyProcess
from tests.conftest import ProxyLauncher, Users, new_secret, pool_toml, rds_secret, transaction_pool_settings
from tests.pgwire import (
    GROUP_ENDS,
    Bind,
    Close,
    CopyData,
    CopyDone,
    CopyFail,
    Describe,
    Execute,
    Flush,
    Message,
    Parse,
    Query,
    Received,
    Sync,
    WireClient,
    readable,
)

SCRATCH = "diff_scratch"
RESET = (
    f"DROP TABLE IF EXISTS {SCRATCH}; CREATE TABLE {SCRATCH} (a int, b text);"
    f" INSERT INTO {SCRATCH} VALUES (1, 'one'), (2, 'two')"
)
# CopyDone ends a COPY FROM STDIN the script left open (outside one the server ignores it).
END_OF_SCRIPT = (CopyDone(), Sync(), Query("ROLLBACK; SELECT 'end of script'"))
SCRIPT_TIMEOUT = 10.0  # a hang is a failure, never a stuck suite
INT4, TEXT = 23, 25
PAUSE = 0.005  # between groups when not pipelined: the client detaches, others get the connection
EXAMPLES = settings.default.max_examples if settings.get_current_profile_name() == "long" else 30

# --- what scripts are made of ----------------------------------------------------------------

PARSE_SQL = [
    "SELECT 1",
    "SELECT $1::int",
    "SELECT 10 / $1::int",  # 0 → division by zero at Execute
    f"SELECT * FROM {SCRATCH} ORDER BY a",  # its result type changes with the DDL below
    f"INSERT INTO {SCRATCH} (a, b) VALUES ($1::int, 'new')",
    "SELECT generate_series(1, 3)",  # with max_rows 1: PortalSuspended
    "SELEC 1",  # syntax error at Parse
    "SELECT * FROM no_such_table",  # error at Parse (analysis)
    f"ALTER TABLE {SCRATCH} ADD COLUMN c int",  # fails at Execute when c exists
    f"ALTER TABLE {SCRATCH} DROP COLUMN IF EXISTS c",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    f"COPY {SCRATCH} TO STDOUT",
    "",  # the empty query: EmptyQueryResponse
]
QUERY_SQL = [
    "SELECT 1",
    "SELECT 1; SELECT 2",
    "SELECT 1 / 0",
    "SELEC 1",
    f"SELECT * FROM {SCRATCH} ORDER BY a",
    f"INSERT INTO {SCRATCH} VALUES (3, 'three')",
    f"ALTER TABLE {SCRATCH} ADD COLUMN c int",
    f"ALTER TABLE {SCRATCH} DROP COLUMN IF EXISTS c",
    "DEALLOCATE ALL",
    "DEALLOCATE s1",
    "DISCARD ALL",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    f"COPY {SCRATCH} TO STDOUT",
    "",
]
STATEMENTS = ["", "s1", "s2"]
PORTALS = ["", "p1"]
VALUES = [b"0", b"2", b"x", None]  # b"x" is not an int: an error at Bind

parse = st.builds(
    Parse,
    statement=st.sampled_from(STATEMENTS),
    query=st.sampled_from(PARSE_SQL),
    parameter_types=st.sampled_from([(), (), (INT4,), (TEXT,)]),
)
bind = st.builds(
    Bind,
    portal=st.sampled_from(PORTALS),
    statement=st.sampled_from(STATEMENTS),
    parameter_formats=st.just(()),
    # 0-2 values: a count that does not match the statement is an error at Bind.
    parameters=st.lists(st.sampled_from(VALUES), max_size=2).map(tuple),
    result_formats=st.just(()),
)
target = st.sampled_from([b"S", b"P"])
describe = st.builds(Describe, kind=target, name=st.sampled_from(STATEMENTS + PORTALS[1:]))
close = st.builds(Close, kind=target, name=st.sampled_from(STATEMENTS + PORTALS[1:]))
execute = st.builds(Execute, portal=st.sampled_from(PORTALS), max_rows=st.sampled_from([0, 0, 1]))
message = st.one_of(
    parse,
    bind,
    execute,
    describe,
    close,
    st.just(Flush()),
    st.just(Sync()),
    st.builds(Query, sql=st.sampled_from(QUERY_SQL)),
)
COPY_FROM = f"COPY {SCRATCH} FROM STDIN"
COPY_ROWS = [CopyData(b"7\tseven\n"), CopyData(b"8\teight\n"), CopyData(b"not a row\n")]


@st.composite
def copy_in(draw: st.DrawFn) -> tuple[Message, ...]:
    """A COPY FROM STDIN and its data, by Query or by Parse/Bind/Execute, maybe with a Sync
    before the data (the server ignores it: libpq sends one) and after; nothing else may
    come while it runs (PostgreSQL ends the session)."""
    rows = draw(st.lists(st.sampled_from(COPY_ROWS), max_size=3))
    end: Message = draw(st.sampled_from([CopyDone(), CopyDone(), CopyFail("gave up")]))
    if draw(st.booleans()):
        return (Query(COPY_FROM), *rows, end)
    start = (Parse("", COPY_FROM), Bind("", "", (), (), ()), Execute("", 0))
    early_sync: tuple[Message, ...] = (Sync(),) if draw(st.booleans()) else ()
    # The unnamed statement is the COPY now: make it something else, so a later Bind of it
    # does not start a COPY in the middle of other messages.
    return (*start, *early_sync, *rows, end, Sync(), Parse("", "SELECT 1"))


piece = st.one_of(message.map(lambda one: (one,)), copy_in())


@dataclass(frozen=True)
class Case:
    """One client script and how it is run through the pool."""

    script: tuple[Message, ...]
    pool_size: int = 1
    others: int = 1  # other clients running transactions on the same pool meanwhile
    pipelined: bool = False  # all at once, or group by group with a pause between
    note: str = field(default="", compare=False)
    pool: str = ""  # a pool of its own (regression cases: one stuck pool must not fail the next)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    script = [item for part in draw(st.lists(piece, min_size=1, max_size=10)) for item in part]
    if not isinstance(script[-1], GROUP_ENDS):
        script.append(draw(st.sampled_from([Sync(), Query("SELECT 1")])))
    return Case(
        tuple(script),
        pool_size=draw(st.integers(1, 3)),
        others=draw(st.integers(1, 2)),
        pipelined=draw(st.booleans()),
    )


# --- running a script -------------------------------------------------------------------------


def groups(script: tuple[Message, ...]) -> list[list[Message]]:
    """The script cut after each Sync and Query: where a client may be detached."""
    out: list[list[Message]] = [[]]
    for item in script:
        out[-1].append(item)
        if isinstance(item, GROUP_ENDS):
            out.append([])
    return [group for group in out if group]


async def run_script(client: WireClient, case: Case) -> list[Received]:
    """Send the script (and the end-of-script probe); every message received until the probe's
    answer, normalised."""
    received: list[Any] = []

    async def read() -> None:
        while True:
            answer = await client.receive(1, SCRIPT_TIMEOUT)
            received.extend(answer)
            if any(m.type == b"D" and b"end of script" in m.payload for m in answer):
                return

    reading = asyncio.create_task(read())
    try:
        for group in [*groups(case.script), list(END_OF_SCRIPT)]:
            client.send(group)
            if not case.pipelined:
                await asyncio.sleep(PAUSE)
        await asyncio.wait_for(asyncio.shield(reading), SCRIPT_TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"no end of script within {SCRIPT_TIMEOUT}s; got {readable(received)}") from None
    finally:
        reading.cancel()
        with contextlib.suppress(BaseException):
            await reading
    return readable(received)


OTHER_PREPARE = [Parse("o1", "SELECT $1::int + 1", (INT4,)), Sync()]
OTHER_ROUND = [
    [Query("BEGIN")],
    [Bind("", "o1", (), (b"41",), ()), Execute("", 0), Sync()],
    [Query("SELECT count(*) FROM pg_class WHERE relname = 'pg_class'")],
    [Query("COMMIT")],
]


async def other_round(client: WireClient) -> list[list[Received]]:
    return [readable(await client.run(group, SCRIPT_TIMEOUT)) for group in OTHER_ROUND]


class Targets:
    """Where a script runs: directly, or through a pool of 1-3 connections."""

    def __init__(self, proxy: ProxyProcess, pg: ThrowawayPostgres, users: Users) -> None:
        self.proxy = proxy
        self.pg = pg
        self.users = users  # passwords: never in hypothesis's report (see __repr__)
        self.other_expected: list[list[Received]] | None = None

    def __repr__(self) -> str:
        return "Targets(...)"

    async def direct(self) -> WireClient:
        return await WireClient.connect(self.pg.port, "appdb", "app", self.users.app)

    async def pooled(self, case: Case) -> WireClient:
        return await WireClient.connect(self.proxy.port, case.pool or f"diff{case.pool_size}", "x")


@pytest.fixture(scope="session")
async def targets(launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any) -> Targets:
    secret = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    common = transaction_pool_settings(pg)
    proxy = launcher.start(
        "".join(pool_toml(f"diff{size}", secret, max_server_connections=size, **common) for size in (1, 2, 3))
        + "".join(
            pool_toml(f"known{index}", secret, max_server_connections=case.pool_size, **common)
            for index, case in enumerate(KNOWN.values())
        )
    )
    found = Targets(proxy, pg, users)
    reference = await found.direct()
    try:
        await reference.run(OTHER_PREPARE)
        found.other_expected = await other_round(reference)  # what another client must get
    finally:
        await reference.close()
    return found


class Others:
    """``case.others`` clients looping over their own transactions on the case's pool, each
    checking every answer against what it gets directly."""

    def __init__(self, targets: Targets, case: Case) -> None:
        self.targets = targets
        self.case = case
        self.problems: list[str] = []
        self.rounds = [0] * case.others
        self.stop = asyncio.Event()

    async def loop(self, index: int, client: WireClient) -> None:
        try:
            prepared = readable(await client.run(OTHER_PREPARE, SCRIPT_TIMEOUT))
            if [m.type for m in prepared] != ["1", "Z"]:
                self.problems.append(f"other client's Parse: {prepared}")
            for _ in range(500):  # bounded: a script is far shorter
                if self.stop.is_set():
                    return
                got = await other_round(client)
                if got != self.targets.other_expected:
                    self.problems.append(f"other client got {got}, directly {self.targets.other_expected}")
                    return
                self.rounds[index] += 1
        except Exception as exc:  # reported, not raised: the subject's result comes first
            self.problems.append(f"other client: {type(exc).__name__}: {exc}")

    async def each_runs_one_more_round(self) -> None:
        """While the subject is still connected: its connection must be back in the pool."""
        before = list(self.rounds)
        deadline = asyncio.get_running_loop().time() + SCRIPT_TIMEOUT
        while any(now <= then for now, then in zip(self.rounds, before, strict=True)):
            if self.problems:
                return
            if asyncio.get_running_loop().time() > deadline:
                self.problems.append(
                    f"other clients got no server connection for {SCRIPT_TIMEOUT}s after the script"
                    " was answered: the subject's connection was never given back"
                )
                return
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def others_running(targets: Targets, case: Case) -> AsyncIterator[Others]:
    others = Others(targets, case)
    clients = [await targets.pooled(case) for _ in range(case.others)]
    tasks = [asyncio.create_task(others.loop(index, client)) for index, client in enumerate(clients)]
    try:
        yield others
    finally:
        others.stop.set()
        await asyncio.wait(tasks, timeout=SCRIPT_TIMEOUT)
        for task in tasks:
            task.cancel()
        for client in clients:
            client.abort()


async def run_on(
    client_factory: Callable[[], Awaitable[WireClient]],
    case: Case,
    before_leaving: Callable[[], Awaitable[None]] | None = None,
) -> list[Received]:
    setup = await client_factory()
    try:
        await setup.query(RESET)
    finally:
        await setup.close()
    client = await client_factory()
    try:
        received = await run_script(client, case)
        if before_leaving is not None:
            await before_leaving()
        return received
    finally:
        await client.close()


async def check(targets: Targets, case: Case) -> None:
    direct = await run_on(targets.direct, case)
    async with others_running(targets, case) as others:
        pooled = await run_on(
            lambda: targets.pooled(case), case, before_leaving=others.each_runs_one_more_round
        )
    assert pooled == direct, difference(case, direct, pooled)
    assert others.problems == [], f"{case}: {others.problems}"


def signature(received: Received | None) -> str:
    """A message's kind, and an error's SQLSTATE and text: what a difference is named by."""
    if received is None:
        return "nothing"
    if received.type in ("E", "N") and isinstance(received.body, tuple):
        fields = dict(received.body)
        return f"{received.type} {fields.get('C')} {fields.get('M')}"
    return received.type


def difference(case: Case, direct: list[Received], pooled: list[Received]) -> str:
    index = next(
        (i for i, (a, b) in enumerate(zip(direct, pooled, strict=False)) if a != b),
        min(len(direct), len(pooled)),
    )
    at = (direct[index] if index < len(direct) else None, pooled[index] if index < len(pooled) else None)
    return (
        f"{case} answered differently at message {index}:"
        f" directly {signature(at[0])!r}, through the pool {signature(at[1])!r}"
        f"\ndirectly:      {direct}\nthrough pool: {pooled}"
    )


# --- the property, and the scripts it found ---------------------------------------------------


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases())
async def test_every_script_is_answered_through_the_pool_as_postgres_answers_it(
    targets: Targets, case: Case
) -> None:
    await check(targets, case)


def _run(statement: str, *parameters: bytes | None) -> list[Message]:
    return [Bind("", statement, (), parameters, ()), Execute("", 0), Sync()]


SELECT_STAR = f"SELECT * FROM {SCRATCH} ORDER BY a"

# Minimal scripts hypothesis found (shrunk by hand where it stopped early), kept as
# regression tests; each note says what PostgreSQL answers.
KNOWN: dict[str, Case] = {
    "parse-of-an-existing-name-fails": Case(
        (Parse("s1", "SELECT 1"), Parse("s1", "SELECT 1"), Sync()),
        note='42P05 prepared statement "s1" already exists, at the second Parse',
    ),
    "query-after-an-error-is-skipped-until-sync": Case(
        (Parse("", "SELEC 1"), Query("SELECT 1"), Sync()),
        note="ErrorResponse, then one ReadyForQuery (the Sync's): the Query is skipped, never hang",
    ),
    "deallocate-after-an-error-is-skipped-until-sync": Case(
        (Bind("", "", (), (), ()), Query("DEALLOCATE ALL")),
        note="26000 unnamed prepared statement does not exist; DEALLOCATE ALL is skipped (no answer)",
    ),
    "deallocate-pipelined-behind-a-sync": Case(
        (Sync(), Query("DEALLOCATE ALL")),
        pipelined=True,
        note="ReadyForQuery, CommandComplete DEALLOCATE ALL, ReadyForQuery; the connection stays",
    ),
    "deallocate-pipelined-inside-a-transaction-reports-its-status": Case(
        (Query("BEGIN"), Query("DEALLOCATE ALL"), Query("COMMIT")),
        pipelined=True,
        note="DEALLOCATE ALL's ReadyForQuery says T (in a transaction), not the status when it was read",
    ),
    "discard-all-in-the-extended-protocol-drops-named-statements": Case(
        (Parse("s1", "SELECT 1"), Sync(), Parse("", "DISCARD ALL"), *_run(""), *_run("s1")),
        note="26000 prepared statement \"s1\" does not exist (the client's name, not the proxy's)",
    ),
    "a-statement-prepared-after-ddl-sees-the-new-columns": Case(
        (
            Parse("s1", SELECT_STAR),
            *_run("s1"),
            Query(f"ALTER TABLE {SCRATCH} ADD COLUMN c int"),
            Parse("s2", SELECT_STAR),
            *_run("s2"),
        ),
        note="s2 is prepared afresh: rows of three columns, no 0A000 cached plan must not change result type",
    ),
    "deallocate-all-then-prepare-again-after-ddl": Case(
        (
            Parse("s1", SELECT_STAR),
            *_run("s1"),
            Query(f"ALTER TABLE {SCRATCH} ADD COLUMN c int"),
            Query("DEALLOCATE ALL"),
            Parse("s1", SELECT_STAR),
            *_run("s1"),
        ),
        note="what psycopg does after DDL: the new s1 is planned afresh, three columns",
    ),
}


@pytest.mark.parametrize("index", range(len(KNOWN)), ids=list(KNOWN))
async def test_scripts_hypothesis_found(targets: Targets, index: int) -> None:
    await check(targets, replace(list(KNOWN.values())[index], pool=f"known{index}"))
