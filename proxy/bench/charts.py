"""PNG charts (matplotlib, no screen needed): throughput and latency over time with events
marked, for the demo and the bench."""

from __future__ import annotations

import math
from pathlib import Path

from proxy.bench.timeline import Timeline


def timeline_chart(timeline: Timeline, path: Path, title: str) -> Path:
    """Throughput (top) and p50/p99 latency (bottom) per series over time; events as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for index, series in enumerate(timeline.series):
        points = timeline.points(series)
        at = [point.at for point in points]
        color = f"C{index}"
        throughput.plot(at, [point.tps for point in points], color=color, label=series)
        latency.plot(at, [point.p99_ms for point in points], color=color, label=f"{series} p99")
        latency.plot(
            at, [point.p50_ms for point in points], color=color, linestyle=":", label=f"{series} p50"
        )
        errors = [point.at for point in points if point.errors]
        if errors:
            throughput.scatter(errors, [0] * len(errors), marker="x", color="red", label=f"{series} errors")
    for axis in (throughput, latency):
        for moment, _ in timeline.events:
            axis.axvline(moment, color="grey", linestyle="--", linewidth=0.8)
        axis.grid(alpha=0.3)
    top = throughput.get_ylim()[1]
    for moment, label in timeline.events:
        throughput.text(moment, top, f" {label}", rotation=90, va="top", ha="left", fontsize=7, color="grey")
    throughput.set_ylabel("transactions / s")
    throughput.legend(loc="lower left", fontsize=8)
    latency.set_ylabel("latency (ms)")
    latency.set_xlabel("seconds")
    finite = [p.p99_ms for s in timeline.series for p in timeline.points(s) if not math.isnan(p.p99_ms)]
    if finite and max(finite) > 20 * (sorted(finite)[len(finite) // 2] or 1):
        latency.set_yscale("log")  # one slow second must not flatten the rest
    latency.legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def bar_chart(path: Path, title: str, groups: list[str], values: dict[str, list[float]], unit: str) -> Path:
    """Grouped bars: one group per scenario, one bar per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(values)) / 2), 4.5))
    width = 0.8 / max(1, len(values))
    for index, (target, numbers) in enumerate(values.items()):
        positions = [group + index * width for group in range(len(groups))]
        axis.bar(positions, numbers, width, label=target, color=f"C{index}")
    axis.set_xticks([group + width * (len(values) - 1) / 2 for group in range(len(groups))])
    axis.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    axis.set_ylabel(unit)
    axis.set_title(title)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
