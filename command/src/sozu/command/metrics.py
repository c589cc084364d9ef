"""Metrics across processes: plain counters in workers, snapshots, totals in the supervisor.

A worker keeps its counters, gauges and fixed-bucket histograms in a `MetricsRegistry` of
plain Python objects (an increment is an attribute update, no lock, no label lookup) and
sends a `MetricsSnapshot` when asked. The supervisor's `MetricsAggregator` keeps the latest
snapshot of every live worker and folds a worker that exits into retired totals, so counters
and histograms never go backwards across crashes and upgrades; gauges of a dead worker go.
Gauges add up across workers, except the verdicts of `MIN_GAUGES` (their minimum).
Every worker uses the same histogram buckets, so bucket counts add up.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Final

import msgspec

Labels = tuple[tuple[str, str], ...]

# Seconds: from 100 µs to 60 s, for durations of requests, connections and flows.
DURATION_BUCKETS: Final = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
)  # fmt: skip

# Gauges that are a verdict per worker, not an amount: the total is the minimum over workers
# (a backend is reported down as soon as one worker has given up on it).
MIN_GAUGES: Final = frozenset({"sozu_backend_up", "sozu_udp_backend_healthy"})


class Sample(msgspec.Struct, array_like=True, frozen=True):
    name: str
    labels: Labels
    value: float


class HistogramSample(msgspec.Struct, array_like=True, frozen=True):
    """Per-bucket counts (not cumulative), one more than `bounds` for +Inf."""

    name: str
    labels: Labels
    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float


class MetricsSnapshot(msgspec.Struct, array_like=True, frozen=True):
    counters: tuple[Sample, ...] = ()
    gauges: tuple[Sample, ...] = ()
    histograms: tuple[HistogramSample, ...] = ()


class Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0  # whole counts, or seconds (`*_seconds_total`)

    def inc(self, amount: float = 1) -> None:
        assert amount >= 0, "counters only go up"
        self.value += amount


class Gauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def add(self, amount: float) -> None:
        self.value += amount


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        assert list(bounds) == sorted(bounds), "bucket bounds must be increasing"
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


class MetricsRegistry:
    """A worker's metrics. Look a metric up once, then keep the object on the hot path."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, Labels], Counter] = {}
        self._gauges: dict[tuple[str, Labels], Gauge] = {}
        self._histograms: dict[tuple[str, Labels], Histogram] = {}

    def counter(self, name: str, **labels: str) -> Counter:
        key = (name, _labels(labels))
        metric = self._counters.get(key)
        if metric is None:
            metric = self._counters[key] = Counter()
        return metric

    def gauge(self, name: str, **labels: str) -> Gauge:
        key = (name, _labels(labels))
        metric = self._gauges.get(key)
        if metric is None:
            metric = self._gauges[key] = Gauge()
        return metric

    def histogram(
        self, name: str, bounds: tuple[float, ...] = DURATION_BUCKETS, **labels: str
    ) -> Histogram:
        key = (name, _labels(labels))
        metric = self._histograms.get(key)
        if metric is None:
            metric = self._histograms[key] = Histogram(bounds)
        assert metric.bounds == bounds, f"{name} observed with two bucket layouts"
        return metric

    def forget(self, name: str, **labels: str) -> None:
        """Drop the metrics of an object that is gone (a removed backend, listener, ...)."""
        key = (name, _labels(labels))
        self._counters.pop(key, None)
        self._gauges.pop(key, None)
        self._histograms.pop(key, None)

    def clear(self) -> None:
        """Back to zero (`sozu metrics clear`)."""
        for counter in self._counters.values():
            counter.value = 0
        for histogram in self._histograms.values():
            histogram.counts = [0] * len(histogram.counts)
            histogram.sum = 0.0

    def snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(
            counters=tuple(Sample(n, lb, c.value) for (n, lb), c in self._counters.items()),
            gauges=tuple(Sample(n, lb, g.value) for (n, lb), g in self._gauges.items()),
            histograms=tuple(
                HistogramSample(n, lb, h.bounds, tuple(h.counts), h.sum)
                for (n, lb), h in self._histograms.items()
            ),
        )


class _HistogramTotal(msgspec.Struct):
    bounds: tuple[float, ...]
    counts: list[int]
    sum: float


class MetricsAggregator:
    """The supervisor's view: live worker snapshots plus the totals of retired workers."""

    def __init__(self) -> None:
        self._live: dict[int, MetricsSnapshot] = {}
        self._retired_counters: dict[tuple[str, Labels], float] = {}
        self._retired_histograms: dict[tuple[str, Labels], _HistogramTotal] = {}

    def update(self, worker_id: int, snapshot: MetricsSnapshot) -> None:
        self._live[worker_id] = snapshot

    def retire(self, worker_id: int) -> None:
        """A worker exited: keep its counters and histograms in the totals."""
        snapshot = self._live.pop(worker_id, None)
        if snapshot is None:
            return
        for sample in snapshot.counters:
            key = (sample.name, sample.labels)
            self._retired_counters[key] = self._retired_counters.get(key, 0) + sample.value
        for histogram in snapshot.histograms:
            _add_histogram(self._retired_histograms, histogram)

    def live_workers(self) -> list[int]:
        return sorted(self._live)

    def retired(self) -> MetricsSnapshot:
        """The totals of exited workers only (what a supervisor upgrade carries over)."""
        return MetricsSnapshot(
            counters=_samples(self._retired_counters.items()),
            histograms=tuple(
                HistogramSample(name, labels, total.bounds, tuple(total.counts), total.sum)
                for (name, labels), total in sorted(self._retired_histograms.items())
            ),
        )

    def restore_retired(self, snapshot: MetricsSnapshot) -> None:
        """Start from the totals of exited workers a previous supervisor kept."""
        for sample in snapshot.counters:
            key = (sample.name, sample.labels)
            self._retired_counters[key] = self._retired_counters.get(key, 0) + sample.value
        for histogram in snapshot.histograms:
            _add_histogram(self._retired_histograms, histogram)

    def totals(self) -> MetricsSnapshot:
        """Counters and histograms summed over live and retired workers, gauges over live
        (summed, except `MIN_GAUGES`: their minimum)."""
        counters = dict(self._retired_counters)
        gauges: dict[tuple[str, Labels], float] = {}
        histograms = {
            key: _HistogramTotal(total.bounds, list(total.counts), total.sum)
            for key, total in self._retired_histograms.items()
        }
        for snapshot in self._live.values():
            for sample in snapshot.counters:
                key = (sample.name, sample.labels)
                counters[key] = counters.get(key, 0) + sample.value
            for sample in snapshot.gauges:
                key = (sample.name, sample.labels)
                if sample.name in MIN_GAUGES and key in gauges:
                    gauges[key] = min(gauges[key], sample.value)
                else:
                    gauges[key] = gauges.get(key, 0) + sample.value
            for histogram in snapshot.histograms:
                _add_histogram(histograms, histogram)
        return MetricsSnapshot(
            counters=_samples(counters.items()),
            gauges=_samples(gauges.items()),
            histograms=tuple(
                HistogramSample(name, labels, total.bounds, tuple(total.counts), total.sum)
                for (name, labels), total in sorted(histograms.items())
            ),
        )


def _samples(items: Iterable[tuple[tuple[str, Labels], float]]) -> tuple[Sample, ...]:
    return tuple(Sample(name, labels, value) for (name, labels), value in sorted(items))


def _add_histogram(
    totals: dict[tuple[str, Labels], _HistogramTotal], histogram: HistogramSample
) -> None:
    key = (histogram.name, histogram.labels)
    total = totals.get(key)
    if total is None:
        totals[key] = _HistogramTotal(histogram.bounds, list(histogram.counts), histogram.sum)
        return
    if total.bounds != histogram.bounds:
        raise ValueError(f"histogram {histogram.name} has two bucket layouts")
    for index, count in enumerate(histogram.counts):
        total.counts[index] += count
    total.sum += histogram.sum
