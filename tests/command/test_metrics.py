"""Worker metrics snapshots and their aggregation in the supervisor."""

from __future__ import annotations

import msgspec
import pytest

from sozu.command.metrics import (
    DURATION_BUCKETS,
    HistogramSample,
    MetricsAggregator,
    MetricsRegistry,
    MetricsSnapshot,
    Sample,
)


def worker(accepted: int, active: float, durations: list[float]) -> MetricsSnapshot:
    registry = MetricsRegistry()
    registry.counter("sozu_tcp_connections_total", listener="127.0.0.1:1").inc(accepted)
    registry.gauge("sozu_tcp_active_connections", listener="127.0.0.1:1").set(active)
    histogram = registry.histogram("sozu_tcp_connection_duration_seconds")
    for value in durations:
        histogram.observe(value)
    return registry.snapshot()


def test_snapshot_round_trips_msgpack() -> None:
    snapshot = worker(3, 2, [0.01, 7.0])
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot), type=MetricsSnapshot)
    assert decoded == snapshot


def test_histogram_buckets_are_per_bucket_with_inf_last() -> None:
    registry = MetricsRegistry()
    histogram = registry.histogram("h")
    for value in (0.0001, 0.0002, 100.0):
        histogram.observe(value)
    (sample,) = registry.snapshot().histograms
    assert sample.counts[0] == 1  # le 0.0001 includes the bound
    assert sample.counts[1] == 1
    assert sample.counts[-1] == 1  # +Inf
    assert len(sample.counts) == len(DURATION_BUCKETS) + 1
    assert sample.sum == pytest.approx(100.0003)


def test_totals_sum_live_workers_and_keep_retired_counters() -> None:
    aggregator = MetricsAggregator()
    aggregator.update(1, worker(3, 2, [0.01]))
    aggregator.update(2, worker(4, 1, [0.02, 0.03]))
    totals = aggregator.totals()
    assert totals.counters == (
        Sample("sozu_tcp_connections_total", (("listener", "127.0.0.1:1"),), 7),
    )
    assert totals.gauges[0].value == 3
    assert sum(totals.histograms[0].counts) == 3

    aggregator.retire(1)
    aggregator.update(3, worker(1, 5, []))  # the replacement starts from zero
    totals = aggregator.totals()
    assert totals.counters[0].value == 8  # 3 retired + 4 + 1: never goes backwards
    assert totals.gauges[0].value == 6  # the dead worker's gauge is gone
    assert sum(totals.histograms[0].counts) == 3
    assert aggregator.live_workers() == [2, 3]


def test_clear_and_forget() -> None:
    registry = MetricsRegistry()
    counter = registry.counter("c", backend="b")
    counter.inc(5)
    registry.clear()
    assert counter.value == 0
    registry.forget("c", backend="b")
    assert registry.snapshot().counters == ()


def test_mismatched_buckets_are_refused() -> None:
    aggregator = MetricsAggregator()
    aggregator.update(
        1, MetricsSnapshot(histograms=(HistogramSample("h", (), (1.0,), (1, 0), 1.0),))
    )
    aggregator.update(
        2, MetricsSnapshot(histograms=(HistogramSample("h", (), (2.0,), (1, 0), 1.0),))
    )
    with pytest.raises(ValueError, match="two bucket layouts"):
        aggregator.totals()


def test_backend_up_is_the_minimum_over_workers() -> None:
    one, two = MetricsRegistry(), MetricsRegistry()
    one.gauge("sozu_backend_up", cluster="c", backend="b").set(1)
    two.gauge("sozu_backend_up", cluster="c", backend="b").set(1)
    one.gauge("sozu_backend_up", cluster="c", backend="d").set(1)
    two.gauge("sozu_backend_up", cluster="c", backend="d").set(0)
    aggregator = MetricsAggregator()
    aggregator.update(1, one.snapshot())
    aggregator.update(2, two.snapshot())
    gauges = {dict(s.labels)["backend"]: s.value for s in aggregator.totals().gauges}
    assert gauges == {"b": 1, "d": 0}
