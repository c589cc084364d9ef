"""Worker snapshots as `sozu metrics get` shows them."""

from __future__ import annotations

from sozu.command.metrics import MetricsAggregator, MetricsRegistry
from sozu.supervisor.metrics_poll import metric_key, report_sections, report_values


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


def test_report_sections_split_by_cluster_and_backend_labels() -> None:
    registry = MetricsRegistry()
    registry.counter("sozu_tcp_bytes_in_total", listener="l").inc(5)
    registry.counter("sozu_cluster_connections_total", cluster="c").inc(3)
    registry.histogram("sozu_backend_connect_seconds", (1.0,), cluster="c").observe(0.5)
    registry.counter("sozu_backend_connect_errors_total", cluster="c", backend="b").inc(2)
    registry.gauge("sozu_backend_up", cluster="c", backend="b").set(1)
    report = report_sections(registry.snapshot())
    assert set(report.main) == {'sozu_tcp_bytes_in_total{listener="l"}'}
    assert report.clusters["c"]["sozu_cluster_connections_total"].value == 3
    assert report.clusters["c"]["sozu_backend_connect_seconds"].count == 1
    assert report.backends["c/b"]["sozu_backend_connect_errors_total"].value == 2
    assert report.backends["c/b"]["sozu_backend_up"].kind == "gauge"
    only = report_sections(registry.snapshot(), ("sozu_backend_up",))
    assert not only.main
    assert not only.clusters
    assert set(only.backends["c/b"]) == {"sozu_backend_up"}
