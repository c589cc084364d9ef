"""Worker snapshots as `sozu metrics get` shows them."""

from __future__ import annotations

from sozu.command.metrics import MetricsAggregator, MetricsRegistry
from sozu.supervisor.metrics_poll import metric_key, report_values


def test_series_keys_use_prometheus_spelling() -> None:
    assert metric_key("sozu_up", ()) == "sozu_up"
    labels = (("backend", "b1"), ("cluster", "c"))
    assert metric_key("x_total", labels) == 'x_total{backend="b1",cluster="c"}'


def test_report_values_of_aggregated_snapshots() -> None:
    one, two = MetricsRegistry(), MetricsRegistry()
    one.counter("sozu_tcp_connections_total", listener="a").inc(3)
    two.counter("sozu_tcp_connections_total", listener="a").inc(4)
    one.gauge("sozu_tcp_active_connections", listener="a").set(2)
    one.histogram("d", (1.0, 2.0)).observe(0.5)
    two.histogram("d", (1.0, 2.0)).observe(1.5)
    aggregator = MetricsAggregator()
    aggregator.update(1, one.snapshot())
    aggregator.update(2, two.snapshot())
    aggregator.retire(2)
    values = report_values(aggregator.totals())
    assert values['sozu_tcp_connections_total{listener="a"}'].value == 7
    assert values['sozu_tcp_connections_total{listener="a"}'].kind == "counter"
    assert values['sozu_tcp_active_connections{listener="a"}'].kind == "gauge"
    histogram = values["d"]
    assert histogram.buckets == ((1.0, 1), (2.0, 2))
    assert histogram.count == 2
    assert histogram.sum == 2.0
    assert set(report_values(aggregator.totals(), ("d",))) == {"d"}
