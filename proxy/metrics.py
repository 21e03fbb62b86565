"""Prometheus metrics: what relays report (plain ints) and the collector that exports them.

Nothing here runs per message. Relays bump plain ``int`` attributes of ``PoolMetrics`` (or
set a flag on their ``ClientMeter``); the pool's and the credential sources' own counters
are read as they are. ``ProxyCollector`` turns all of it into ``rotaproxy_*`` metric
families when Prometheus scrapes, so metrics, ``/pools`` and the pool's decisions read the
same numbers, and a proxy that is never scraped pays nothing for them.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from proxy.app import Proxy
    from proxy.pool import Pool

# Why a client was turned away (label ``reason`` of rotaproxy_client_connections_rejected_total).
REJECTED_BORROW_TIMEOUT = "borrow_timeout"  # no server connection within borrow_timeout
REJECTED_UPSTREAM = "upstream_error"  # credentials, upstream login or reachability
REJECTED_CLIENT = "client_error"  # the client's startup was refused (bad setting, replication)
REJECTED_UNKNOWN_DATABASE = "unknown_database"  # listener level: no pool by that name

# A borrow served from the idle list takes microseconds; one that opens a connection takes a
# TCP + TLS + SCRAM round trip (milliseconds); one that queues can take up to borrow_timeout.
BORROW_WAIT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# From the switch to a new credential version until the last old connection closed: as long
# as the longest session that was open at the switch.
ROTATION_DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Histogram:
    """A lock-free histogram for one event loop: ``observe`` is a bisect and two additions.

    prometheus_client's Histogram takes a lock per observation; this one is read (and made
    cumulative) only when scraped.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), float(running)))
        return buckets


class ClientMeter:
    """One client session's live state, as the collector counts it at scrape time.

    Relays set ``in_transaction`` on every ReadyForQuery (or MySQL response end) and
    transaction mode sets ``pinned`` when the client is pinned to its server connection.
    Used as a context manager: the session is counted from ``with`` to the end of the block.
    """

    __slots__ = ("_metrics", "in_transaction", "pinned")

    def __init__(self, metrics: PoolMetrics) -> None:
        self._metrics = metrics
        self.in_transaction = False
        self.pinned = False

    def __enter__(self) -> ClientMeter:
        self._metrics.sessions.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._metrics.sessions.discard(self)


class PoolMetrics:
    """What the relays of one pool report: plain ints, bumped on the hot path, read when scraped.

    The API for relays (all O(1), no locks, no prometheus_client call):

    - ``queries += n`` — requests answered (PostgreSQL: ReadyForQuery; MySQL: commands)
    - ``transactions += 1`` — the server came back to idle (a COMMIT/ROLLBACK, or an
      autocommit statement), i.e. ReadyForQuery ``I``
    - ``bytes_in += len(data)`` / ``bytes_out += len(data)`` — client side: received from
      the client / sent to the client
    - ``meter.in_transaction = status != idle`` and ``meter.pinned = True`` on the session's
      ``ClientMeter`` (``with metrics.client() as meter``), for the gauges
    - ``reject(reason)`` once per client turned away, ``clients_accepted += 1`` once per
      client let in
    """

    __slots__ = (
        "borrow_wait",
        "bytes_in",
        "bytes_out",
        "clients_accepted",
        "clients_rejected",
        "queries",
        "rotation_duration",
        "sessions",
        "transactions",
    )

    def __init__(self) -> None:
        self.sessions: set[ClientMeter] = set()
        self.clients_accepted = 0
        self.clients_rejected: dict[str, int] = {}
        self.queries = 0
        self.transactions = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.borrow_wait = Histogram(BORROW_WAIT_BUCKETS)
        self.rotation_duration = Histogram(ROTATION_DURATION_BUCKETS)

    def client(self) -> ClientMeter:
        """A meter for one client session; count it with ``with pool.metrics.client() as meter``."""
        return ClientMeter(self)

    def reject(self, reason: str) -> None:
        self.clients_rejected[reason] = self.clients_rejected.get(reason, 0) + 1

    @property
    def clients(self) -> int:
        return len(self.sessions)

    @property
    def clients_in_transaction(self) -> int:
        return sum(1 for meter in self.sessions if meter.in_transaction)

    @property
    def clients_pinned(self) -> int:
        return sum(1 for meter in self.sessions if meter.pinned)


_F = TypeVar("_F", GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily)


class _Families:
    """Metric families keyed by name, created on first use, in a stable order."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def _family(self, kind: type[_F], name: str, documentation: str, labels: list[str]) -> _F:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = kind(name, documentation, labels=labels)
        assert isinstance(family, kind)
        return family

    def gauge(self, name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
        return self._family(GaugeMetricFamily, name, documentation, labels)

    def counter(self, name: str, documentation: str, labels: list[str]) -> CounterMetricFamily:
        return self._family(CounterMetricFamily, name, documentation, labels)

    def histogram(self, name: str, documentation: str, labels: list[str]) -> HistogramMetricFamily:
        return self._family(HistogramMetricFamily, name, documentation, labels)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


POOL_LABELS = ["pool", "engine"]
LISTENER_LABELS = ["listener", "engine"]


class ProxyCollector(Collector):
    """Reads one ``Proxy``'s pools, listeners and credential sources at scrape time."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the pools; registering must not scrape

    def collect(self) -> Iterable[Metric]:
        families = _Families()
        for pool in self.proxy.pools.values():
            _collect_pool(families, pool)
        for listener in self.proxy.listeners:
            labels = [str(listener.address), listener.engine]
            families.gauge(
                "rotaproxy_listener_connections",
                "Client connections open on the listener (before and after a pool is chosen)",
                LISTENER_LABELS,
            ).add_metric(labels, listener.client_count)
            families.counter(
                "rotaproxy_listener_connections_accepted",
                "TCP connections the listener accepted",
                LISTENER_LABELS,
            ).add_metric(labels, listener.accepted_total)
            rejected = families.counter(
                "rotaproxy_listener_connections_rejected",
                "Clients refused before a pool was chosen, by reason",
                [*LISTENER_LABELS, "reason"],
            )
            for reason, count in sorted(listener.rejected_total.items()):
                rejected.add_metric([*labels, reason], count)
        return families


def _collect_pool(families: _Families, pool: Pool) -> None:
    labels = [pool.name, pool.config.engine]
    metrics = pool.metrics
    gauge, counter = families.gauge, families.counter

    # --- clients ---
    gauge("rotaproxy_client_connections", "Client sessions on the pool", POOL_LABELS).add_metric(
        labels, metrics.clients
    )
    counter(
        "rotaproxy_client_connections_accepted", "Client sessions let in (logged in)", POOL_LABELS
    ).add_metric(labels, metrics.clients_accepted)
    rejected = counter(
        "rotaproxy_client_connections_rejected",
        "Clients turned away after choosing the pool, by reason",
        [*POOL_LABELS, "reason"],
    )
    for reason, count in sorted(metrics.clients_rejected.items()):
        rejected.add_metric([*labels, reason], count)
    gauge(
        "rotaproxy_clients_waiting", "Clients waiting for a server connection (or for resume)", POOL_LABELS
    ).add_metric(labels, pool.waiting)

    # --- server connections ---
    by_state = gauge(
        "rotaproxy_server_connections",
        "Upstream connections by state and generation",
        [*POOL_LABELS, "state", "generation"],
    )
    for (state, generation), count in sorted(pool.connections_by_state_and_generation().items()):
        by_state.add_metric([*labels, state, str(generation)], count)
    gauge("rotaproxy_server_connections_max", "max_server_connections of the pool", POOL_LABELS).add_metric(
        labels, pool.config.max_server_connections
    )
    counter(
        "rotaproxy_server_connections_opened", "Upstream connections opened (logged in)", POOL_LABELS
    ).add_metric(labels, pool.opened_total)
    counter(
        "rotaproxy_server_connections_failed", "Upstream connection attempts that failed", POOL_LABELS
    ).add_metric(labels, pool.failed_total)
    counter(
        "rotaproxy_server_auth_failures", "Upstream logins refused for the credentials", POOL_LABELS
    ).add_metric(labels, pool.auth_failures_total)
    gauge(
        "rotaproxy_server_connections_borrowed", "Upstream connections lent to clients now", POOL_LABELS
    ).add_metric(labels, pool.borrowed)
    gauge(
        "rotaproxy_server_connections_in_transaction",
        "Upstream connections inside a transaction now",
        POOL_LABELS,
    ).add_metric(labels, metrics.clients_in_transaction)
    gauge(
        "rotaproxy_server_connections_pinned",
        "Upstream connections pinned to one client (transaction mode)",
        POOL_LABELS,
    ).add_metric(labels, metrics.clients_pinned)
    pins = counter(
        "rotaproxy_pins", "Clients pinned to their server connection, by kind", [*POOL_LABELS, "reason"]
    )
    for reason, count in sorted(pool.pins_total.items()):
        pins.add_metric([*labels, reason], count)

    # --- borrowing ---
    wait = metrics.borrow_wait
    families.histogram(
        "rotaproxy_borrow_wait_seconds", "Time to get a server connection", POOL_LABELS
    ).add_metric(labels, wait.cumulative(), wait.sum)
    counter("rotaproxy_borrow_timeouts", "Borrows that gave up after borrow_timeout", POOL_LABELS).add_metric(
        labels, pool.borrow_timeouts_total
    )
    gauge("rotaproxy_pool_paused", "1 while the pool is paused (admin API)", POOL_LABELS).add_metric(
        labels, 1 if pool.paused else 0
    )

    # --- traffic ---
    counter("rotaproxy_transactions", "Transactions completed (incl. autocommit)", POOL_LABELS).add_metric(
        labels, metrics.transactions
    )
    counter("rotaproxy_queries", "Queries (requests) answered", POOL_LABELS).add_metric(
        labels, metrics.queries
    )
    traffic = counter("rotaproxy_client_bytes", "Bytes on client connections", [*POOL_LABELS, "direction"])
    traffic.add_metric([*labels, "in"], metrics.bytes_in)
    traffic.add_metric([*labels, "out"], metrics.bytes_out)

    # --- credentials and rotation ---
    source = pool.credentials
    counter(
        "rotaproxy_credential_refreshes",
        "Successful reads of the credentials (fetches and polls)",
        POOL_LABELS,
    ).add_metric(labels, source.refreshes)
    counter("rotaproxy_credential_refresh_errors", "Failed reads of the credentials", POOL_LABELS).add_metric(
        labels, source.errors
    )
    if source.last_refresh_at is not None:
        gauge(
            "rotaproxy_credential_seconds_since_refresh",
            "Seconds since the credentials were last read successfully",
            POOL_LABELS,
        ).add_metric(labels, max(0.0, time.time() - source.last_refresh_at))
    gauge("rotaproxy_generation", "The pool's connection generation", POOL_LABELS).add_metric(
        labels, pool.generation
    )
    counter("rotaproxy_rotations", "Moves to a new credential version", POOL_LABELS).add_metric(
        labels, pool.rotations_total
    )
    counter(
        "rotaproxy_rotation_failures", "New credential versions that did not log in", POOL_LABELS
    ).add_metric(labels, pool.rotation_failures_total)
    drain = metrics.rotation_duration
    families.histogram(
        "rotaproxy_rotation_duration_seconds",
        "From the switch to a new credential version until the last old connection closed",
        POOL_LABELS,
    ).add_metric(labels, drain.cumulative(), drain.sum)


def build_registry(proxy: Proxy) -> CollectorRegistry:
    """A registry of this proxy's own (not the global one), so several proxies can coexist."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(proxy))
    ProcessCollector(registry=registry)  # process_* (CPU, memory, open files) on Linux
    return registry
