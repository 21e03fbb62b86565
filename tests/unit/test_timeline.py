"""The demo's and the bench's per-second timeline, and its chart."""

from __future__ import annotations

import math
from pathlib import Path

from proxy.bench.charts import timeline_chart
from proxy.bench.timeline import Timeline, percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))


def at_second(timeline: Timeline, second: float) -> None:
    """Make ``timeline.now()`` read ``second`` (it counts from ``started``)."""
    timeline.stopped = second


def test_each_second_is_summarised_and_the_partial_last_one_left_out() -> None:
    timeline = Timeline(["postgres", "mysql"])
    at_second(timeline, 0.2)
    for latency in (1.0, 2.0, 3.0):
        timeline.record("postgres", latency)
    at_second(timeline, 1.5)
    timeline.record("postgres", 10.0)
    timeline.error("postgres")
    timeline.mark("rotation 1")
    at_second(timeline, 2.9)
    timeline.record("postgres", 4.0)  # second 2 is not over: not a point yet
    points = timeline.points("postgres")
    assert [(p.at, p.tps, p.p50_ms, p.errors) for p in points] == [(0.0, 3.0, 2.0, 0), (1.0, 1.0, 10.0, 1)]
    assert points[0].p99_ms == 3.0
    assert timeline.points("mysql") == []
    assert timeline.events == [(1.5, "rotation 1")]
    recent = timeline.recent("postgres", window=2)
    assert (recent.tps, recent.p50_ms, recent.errors) == (2.0, 2.5, 1)
    assert timeline.totals("postgres") == (5, 1)


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    timeline = Timeline(["postgres"])
    for second in range(5):
        at_second(timeline, second + 0.5)
        for _ in range(10):
            timeline.record("postgres", 2.0 + second)
    timeline.mark("rotation 1")
    at_second(timeline, 5.0)
    path = timeline_chart(timeline, tmp_path / "charts" / "t.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
