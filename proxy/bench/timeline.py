"""What clients saw, second by second: transactions, latencies and errors per series, and
the events (rotations) that happened meanwhile. The demo's live view and chart and the
bench's rotation-under-load scenario read it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Second:
    transactions: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Point:
    """One second of one series, summarised."""

    at: float  # seconds since the timeline started (the second's start)
    tps: float
    p50_ms: float
    p99_ms: float
    errors: int


def half_range(values: list[float]) -> float:
    """Half of max - min (0 for fewer than two): how much a figure moved between rounds."""
    return (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


class Timeline:
    def __init__(self, series: list[str]) -> None:
        self.started = time.perf_counter()
        self.series = list(series)
        self._seconds: dict[str, list[Second]] = {name: [] for name in series}
        self.events: list[tuple[float, str]] = []
        self.stopped: float | None = None

    def now(self) -> float:
        return self.stopped if self.stopped is not None else time.perf_counter() - self.started

    def stop(self) -> None:
        """The load is over: time stands still (the last, partial second is left out)."""
        self.stopped = self.now()

    def _bucket(self, series: str) -> Second:
        seconds = self._seconds[series]
        index = int(self.now())
        while len(seconds) <= index:
            seconds.append(Second())
        return seconds[index]

    def record(self, series: str, latency_ms: float) -> None:
        bucket = self._bucket(series)
        bucket.transactions += 1
        bucket.latencies_ms.append(latency_ms)

    def error(self, series: str) -> None:
        self._bucket(series).errors += 1

    def mark(self, label: str) -> None:
        self.events.append((self.now(), label))

    def points(self, series: str) -> list[Point]:
        """Every whole second so far."""
        whole = int(self.now())
        return [
            Point(
                float(index),
                float(second.transactions),
                statistics.median(second.latencies_ms) if second.latencies_ms else float("nan"),
                percentile(second.latencies_ms, 0.99),
                second.errors,
            )
            for index, second in enumerate(self._seconds[series][:whole])
        ]

    def recent(self, series: str, window: int = 3) -> Point:
        """The last ``window`` whole seconds together (what a live view shows)."""
        whole = int(self.now())
        seconds = self._seconds[series][max(0, whole - window) : whole]
        latencies = [value for second in seconds for value in second.latencies_ms]
        return Point(
            float(max(0, whole - window)),
            sum(second.transactions for second in seconds) / window,
            statistics.median(latencies) if latencies else float("nan"),
            percentile(latencies, 0.99),
            sum(second.errors for second in seconds),
        )

    def latencies(self, series: str) -> list[float]:
        """Every latency recorded for ``series``, in milliseconds."""
        return [value for second in self._seconds[series] for value in second.latencies_ms]

    def totals(self, series: str) -> tuple[int, int]:
        """(transactions, errors) over the whole run."""
        seconds = self._seconds[series]
        return sum(s.transactions for s in seconds), sum(s.errors for s in seconds)
