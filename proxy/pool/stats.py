"""What a pool shows of itself: its connections by state and generation (for /metrics) and
the report ``Pool.stats`` gives /pools, read from the numbers the pool decides with."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from proxy.core.counters import PoolMetrics
from proxy.core.server import ConnectionState, ServerConnection
from proxy.pool.generations import Generations
from proxy.pool.states import CLOSED


class Reported(Protocol):
    """What the report reads of a pool."""

    name: str
    paused: bool
    metrics: PoolMetrics
    generations: Generations
    connecting: int
    opened_total: int
    failed_total: int
    borrow_timeouts_total: int
    pins_total: dict[str, int]
    last_error: str | None
    last_open_at: float | None

    @property
    def counts(self) -> dict[ConnectionState, int]: ...

    @property
    def waiting(self) -> int: ...

    @property
    def old_generation_count(self) -> int: ...

    def connections_by_state_and_generation(self) -> dict[tuple[str, int], int]: ...


def by_state_and_generation(
    connections: Iterable[ServerConnection], connecting: int, generation: int
) -> dict[tuple[str, int], int]:
    """How many connections there are of each (state, generation); logins in flight are
    ``connecting`` in the current ``generation``."""
    counts: dict[tuple[str, int], int] = {}
    for connection in connections:
        state = connection.state.value if connection.state else "opening"
        key = (state, connection.generation)
        counts[key] = counts.get(key, 0) + 1
    if connecting:
        counts[("connecting", generation)] = connecting
    return counts


def report(pool: Reported) -> dict[str, Any]:
    """The pool as /pools shows it."""
    by_state: dict[str, int] = {}
    by_generation: dict[str, int] = {}
    for (state, generation), count in pool.connections_by_state_and_generation().items():
        by_state[state] = by_state.get(state, 0) + count
        by_generation[str(generation)] = by_generation.get(str(generation), 0) + count
    metrics, generations = pool.metrics, pool.generations
    clients = metrics.clients
    return {
        "name": pool.name,
        "paused": pool.paused,
        "clients": {
            "connected": clients,
            "active": max(clients - pool.waiting, 0),
            "waiting": pool.waiting,
            "in_transaction": metrics.clients_in_transaction,
            "pinned": metrics.clients_pinned,
        },
        "server_connections": {"by_state": by_state, "by_generation": by_generation},
        "connecting": pool.connecting,
        **{state.value: count for state, count in pool.counts.items() if state is not CLOSED},
        "waiting": pool.waiting,
        "generation": generations.current,
        "opened_total": pool.opened_total,
        "failed_total": pool.failed_total,
        "auth_failures_total": generations.auth_failures_total,
        "last_open_at": pool.last_open_at,
        "borrow_timeouts_total": pool.borrow_timeouts_total,
        "pins_total": dict(pool.pins_total),
        "last_error": pool.last_error,
        "credential_version": generations.credentials.version_id if generations.credentials else None,
        "old_generation_connections": pool.old_generation_count,
        "rotations_total": generations.rotations_total,
        "rotation_failures_total": generations.rotation_failures_total,
        "rotation_error": generations.rotation_error,
        "last_rotation": generations.last_rotation,
        "reconnects_total": generations.reconnects_total,
        "last_reconnect_at": generations.last_reconnect_at,
    }
