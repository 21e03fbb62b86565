"""The transition table: every move it lists is made and counted, any other raises; and the
pool's counts stay equal to its connections, state by state, through a long script."""

from __future__ import annotations

import random

import pytest

from proxy.core.server import ConnectionState
from proxy.credentials.base import Credentials
from proxy.pool.states import TRANSITIONS, IllegalTransition, StateCounts
from tests.unit.test_pool_fakes import MemoryConnection, scripted_pool, settle

IDLE, BUSY, KEPT, RESETTING, CLOSED = (
    ConnectionState.IDLE,
    ConnectionState.BUSY,
    ConnectionState.KEPT,
    ConnectionState.RESETTING,
    ConnectionState.CLOSED,
)
EVERY_STATE: list[ConnectionState | None] = [None, *ConnectionState]
STEPS = ("borrow", "borrow_now", "release", "keep", "use_again", "pause", "drain", "hang_up")


def _connection_in(state: ConnectionState | None) -> tuple[MemoryConnection, StateCounts]:
    states = StateCounts()
    connection = MemoryConnection(1, Credentials("app", "pw-1"))
    if state is not None:  # set up as the pool would have left it
        connection.state = state
        states.counts[state] = 1
    return connection, states


def test_the_table_lists_exactly_the_moves_the_pool_makes() -> None:
    assert dict(TRANSITIONS) == {
        None: {BUSY, IDLE, CLOSED},  # opened: for its borrower, idle, or wanted by nobody
        IDLE: {BUSY, CLOSED},
        BUSY: {BUSY, IDLE, KEPT, RESETTING, CLOSED},  # BUSY: handed straight to a waiter
        KEPT: {BUSY, CLOSED},
        RESETTING: {BUSY, IDLE, CLOSED},
        CLOSED: set(),
    }


@pytest.mark.parametrize(
    ("was", "to"), [(was, to) for was in EVERY_STATE for to in sorted(TRANSITIONS[was], key=str)]
)
def test_every_listed_transition_is_made_and_counted(
    was: ConnectionState | None, to: ConnectionState
) -> None:
    connection, states = _connection_in(was)
    states.move(connection, to)
    assert connection.state is to
    assert states.counts == {state: int(state is to) for state in ConnectionState}


@pytest.mark.parametrize(
    ("was", "to"),
    [(was, to) for was in EVERY_STATE for to in ConnectionState if to not in TRANSITIONS[was]],
)
def test_a_transition_the_table_does_not_list_raises_and_changes_nothing(
    was: ConnectionState | None, to: ConnectionState
) -> None:
    connection, states = _connection_in(was)
    before = dict(states.counts)
    named = was.name if was else "just opened"
    with pytest.raises(IllegalTransition, match=f"no move from {named} to {to.name}"):
        states.move(connection, to)
    assert connection.state is was and states.counts == before


async def test_releasing_a_connection_twice_is_a_bug_the_pool_refuses() -> None:
    async with scripted_pool() as s:
        connection = await s.pool.borrow()
        s.pool.release(connection, reusable=True)
        with pytest.raises(IllegalTransition, match="no move from IDLE to IDLE"):
            s.pool.release(connection, reusable=True)
        assert s.pool.counts[IDLE] == 1 and s.counts_are_true()


async def test_the_counts_equal_the_connections_in_each_state_through_a_long_script() -> None:
    """Borrow, release (some dirty, some broken), keep, use again, pause, drain and hang up
    in a seeded random order; after every step the counts are the connections, recounted."""
    rng = random.Random(13)
    async with scripted_pool(max_server_connections=4, borrow_timeout=0.5) as s:
        pool = s.pool
        held: list[MemoryConnection] = []  # borrowed by the script, and used
        kept: list[MemoryConnection] = []

        def taken_back(connection: MemoryConnection) -> None:
            kept.remove(connection)
            pool.release(connection, reusable=True)

        for _ in range(400):
            step = rng.choice(STEPS)
            if step == "borrow" and not pool.paused and (pool.size < 4 or pool.idle or kept):
                connection = await pool.borrow()
                assert isinstance(connection, MemoryConnection)
                held.append(connection)
            elif step == "borrow_now" and (connection := pool.borrow_now()) is not None:  # type: ignore[assignment]
                held.append(connection)
            elif step == "release" and held:
                connection = held.pop(rng.randrange(len(held)))
                connection.dirty = rng.random() < 0.3
                pool.release(connection, reusable=rng.random() < 0.9)
            elif step == "keep" and held:
                connection = held.pop(rng.randrange(len(held)))
                if pool.keep(connection, lambda connection=connection: taken_back(connection)):  # type: ignore[misc]
                    kept.append(connection)
                else:
                    pool.release(connection, reusable=True)
            elif step == "use_again" and kept:
                connection = kept.pop(rng.randrange(len(kept)))
                pool.use_again(connection)
                held.append(connection)
            elif step == "pause":
                pool.resume() if pool.paused else pool.pause()
            elif step == "drain" and rng.random() < 0.2:
                pool.reconnect()
            elif step == "hang_up" and pool.idle:
                rng.choice(list(pool.idle)).hang_up()  # type: ignore[attr-defined]
            await settle()  # resets finish
            assert s.counts_are_true()
            assert (pool.counts[BUSY], pool.counts[KEPT]) == (len(held), len(kept))
            assert pool.counts[IDLE] == len(pool.idle)
            assert pool.size == sum(1 for c in s.upstream.opened if c.state is not CLOSED)
        assert len(s.upstream.opened) > 4  # the script did reach drains, breakage and hang-ups
