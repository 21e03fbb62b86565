"""What the pool and the relays count as they work: plain ints and lock-free histograms.

Nothing here runs more than an addition per event: relays bump plain ``int`` attributes of
``PoolMetrics`` (or set a flag on their ``ClientMeter``). ``proxy.ops.metrics`` reads these
counters when Prometheus scrapes, so metrics, ``/pools`` and the pool's decisions read the
same numbers, and a proxy that is never scraped pays nothing for them.
"""

from __future__ import annotations

import bisect
import math
from types import TracebackType

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
      client let in, ``close(limit)`` once per client closed for a limit
    """

    __slots__ = (
        "borrow_wait",
        "bytes_in",
        "bytes_out",
        "clients_accepted",
        "clients_closed",
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
        self.clients_closed: dict[str, int] = {}  # logged-in clients closed by a limit, by limit
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

    def close(self, limit: str) -> None:
        """Count a client closed for a limit (client_idle_timeout, max_client_message_size, ...)."""
        self.clients_closed[limit] = self.clients_closed.get(limit, 0) + 1

    @property
    def clients(self) -> int:
        return len(self.sessions)

    @property
    def clients_in_transaction(self) -> int:
        return sum(1 for meter in self.sessions if meter.in_transaction)

    @property
    def clients_pinned(self) -> int:
        return sum(1 for meter in self.sessions if meter.pinned)
