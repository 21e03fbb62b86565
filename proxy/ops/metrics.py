"""The Prometheus exporter: turns the pools', listeners' and sources' counters into metrics.

Nothing here runs per message: the counters (``proxy.core.counters``, the pool's and the
credential sources' own) are read as they are when Prometheus scrapes, so metrics,
``/pools`` and the pool's decisions read the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from proxy.ops.view import ProxyView
from proxy.pool.pool import Pool

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
    """Reads one proxy's pools, listeners and credential sources at scrape time."""

    def __init__(self, proxy: ProxyView) -> None:
        self.proxy = proxy

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the pools; registering must not scrape

    def collect(self) -> Iterable[Metric]:
        families = _Families()
        for pool in self.proxy.pools.values():
            _collect_pool(families, pool)
        for listener in self.proxy.listeners:
            labels = [listener.label(), listener.engine]
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
            closed = families.counter(
                "rotaproxy_listener_connections_closed",
                "Clients closed by a limit before a pool was chosen (client_login_timeout), by limit",
                [*LISTENER_LABELS, "reason"],
            )
            for reason, count in sorted(listener.closed_total.items()):
                closed.add_metric([*labels, reason], count)
        limits = self.proxy.client_limits
        families.gauge(
            "rotaproxy_process_client_connections", "Client connections open on every listener", []
        ).add_metric([], limits.open)
        families.gauge(
            "rotaproxy_process_client_connections_max",
            "Client connections the process accepts: max_client_connections or what the open files "
            "limit leaves room for, whichever is lower",
            [],
        ).add_metric([], limits.max_clients)
        families.gauge(
            "rotaproxy_process_open_files_limit",
            "The soft RLIMIT_NOFILE, raised to the hard limit at start",
            [],
        ).add_metric([], limits.open_files)
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
    closed = counter(
        "rotaproxy_client_connections_closed",
        "Clients of the pool closed by a limit (client_idle_timeout, client_stall_timeout, "
        "max_client_message_size), by limit",
        [*POOL_LABELS, "reason"],
    )
    for reason, count in sorted(metrics.clients_closed.items()):
        closed.add_metric([*labels, reason], count)
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


def build_registry(proxy: ProxyView) -> CollectorRegistry:
    """A registry of this proxy's own (not the global one), so several proxies can coexist."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(proxy))
    ProcessCollector(registry=registry)  # process_* (CPU, memory, open files) on Linux
    return registry
