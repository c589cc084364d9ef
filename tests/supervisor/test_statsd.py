"""The statsd export: upstream's names, increases of counters, changed gauges, tags or name
parts by `detail`, datagrams packed under the size limit."""

from __future__ import annotations

from sozu.command.metrics import MetricsSnapshot, Sample
from sozu.supervisor.statsd import MAX_DATAGRAM, StatsdExporter, statsd_name


class Totals:
    def __init__(self) -> None:
        self.snapshot = MetricsSnapshot()

    def __call__(self) -> MetricsSnapshot:
        return self.snapshot


def _requests(web: float, api: float, gauge: float = 3.0) -> MetricsSnapshot:
    cluster = (("backend", "web-1"), ("cluster", "web"))
    return MetricsSnapshot(
        counters=(
            Sample("sozu_http_requests_total", (("listener", "127.0.0.1:80"),), web + api),
            Sample("sozu_http_cluster_requests_total", cluster, web),
            Sample("sozu_http_cluster_requests_total", (("cluster", "api"),), api),
            Sample(
                "sozu_http_status_total", (("listener", "127.0.0.1:80"), ("status", "2xx")), web
            ),
        ),
        gauges=(Sample("sozu_worker_active_connections", (), gauge),),
    )


def test_names_are_upstreams_where_sozu_has_the_metric() -> None:
    assert statsd_name("sozu_http_requests_total", {}) == "http.requests"
    assert statsd_name("sozu_http_status_total", {"status": "5xx"}) == "http.status.5xx"
    assert statsd_name("sozu_http_generated_answers_total", {"status": "503"}) == "http.503.errors"
    assert statsd_name("sozu_udp_datagrams_in_total", {}) == "udp.datagrams_in"
    assert statsd_name("sozu_workers", {}) == "workers"


def test_counters_send_their_increase_and_gauges_their_changes() -> None:
    totals = Totals()
    exporter = StatsdExporter(totals, ("127.0.0.1", 8125))
    totals.snapshot = _requests(5, 2)
    assert sorted(exporter.lines()) == [
        "sozu.client.connections:3|g",
        "sozu.cluster.api.http.requests:2|c",
        "sozu.http.requests:7|c",
        "sozu.http.status.2xx:5|c",
    ]  # detail "cluster": the per-backend series is left out
    totals.snapshot = _requests(6, 2)
    assert sorted(exporter.lines()) == [
        "sozu.http.requests:1|c",
        "sozu.http.status.2xx:1|c",
    ]
    assert exporter.lines() == []  # nothing changed, nothing sent
    totals.snapshot = _requests(0, 0, gauge=0)  # counters cleared: no negative increase
    assert exporter.lines() == ["sozu.client.connections:0|g"]


def test_tags_and_detail() -> None:
    totals = Totals()
    totals.snapshot = _requests(5, 2)
    tagged = StatsdExporter(
        totals, ("127.0.0.1", 8125), prefix="edge", tagged=True, detail="backend"
    )
    lines = tagged.lines()
    assert "edge.http.requests:5|c|#cluster_id:web,backend_id:web-1" in lines
    assert "edge.http.requests:7|c|#listener:127.0.0.1_80" in lines  # ":" replaced
    process = StatsdExporter(totals, ("127.0.0.1", 8125), detail="process")
    lines = process.lines()
    assert "sozu.http.requests:7|c" in lines  # the process total, not the clusters' added
    assert not any("cluster" in line for line in lines)


def test_lines_are_packed_into_bounded_datagrams() -> None:
    exporter = StatsdExporter(Totals(), ("127.0.0.1", 8125))
    lines = [f"sozu.metric_{index:04d}:1|c" for index in range(500)]
    datagrams = list(exporter.datagrams_of(lines))
    assert all(len(datagram) <= MAX_DATAGRAM for datagram in datagrams)
    assert b"\n".join(datagrams).decode().split("\n") == lines
    assert len(datagrams) > 1
