"""`disable_cluster_metrics` (carried by the ServerConfig): a worker's snapshots leave out
every per-cluster and per-backend series; listener and process-wide series stay."""

from __future__ import annotations

import pytest
import trio
from support.worker_harness import Client, read_head, sample, worker

from sozu.command.metrics import HistogramSample, MetricsSnapshot, Sample


async def answer_ok(stream: trio.SocketStream) -> None:
    buf = bytearray()
    while await read_head(stream, buf) is not None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def echo(stream: trio.SocketStream) -> None:
    async for chunk in stream:
        await stream.send_all(chunk)


def labelled(snapshot: MetricsSnapshot) -> set[str]:
    """Names of the series carrying a cluster or backend label."""
    series: list[Sample | HistogramSample] = [
        *snapshot.counters,
        *snapshot.gauges,
        *snapshot.histograms,
    ]
    return {
        found.name
        for found in series
        if any(name in ("cluster", "backend") for name, _ in found.labels)
    }


@pytest.mark.parametrize("disabled", [False, True])
async def test_cluster_and_backend_series_follow_disable_cluster_metrics(disabled: bool) -> None:
    with trio.fail_after(10):
        async with worker(disable_cluster_metrics=disabled) as w:
            http_port = await w.http_listener()
            await w.cluster("web", [await w.backend(answer_ok)])
            await w.http_frontend(http_port, "web.test", "web")
            await w.cluster("db", [await w.backend(echo)])
            tcp_port = await w.tcp_listener("db")
            client = await Client.open(http_port)
            response = await client.get("web.test")
            assert response is not None
            assert response[0] == 200
            await client.aclose()
            stream = await trio.open_tcp_stream("127.0.0.1", tcp_port)
            await stream.send_all(b"ping")
            assert await stream.receive_some(10) == b"ping"
            await stream.aclose()
            await trio.sleep(0.05)
            snapshot = w.proxies.snapshot()
    listener = f"127.0.0.1:{http_port}"
    assert sample(snapshot, "sozu_http_requests_total", listener=listener) == 1
    assert sample(snapshot, "sozu_tcp_connections_total", listener=f"127.0.0.1:{tcp_port}") == 1
    assert sample(snapshot, "sozu_worker_active_connections") is not None
    if disabled:
        assert labelled(snapshot) == set()
    else:
        assert {
            "sozu_cluster_connections_total",
            "sozu_backend_connections_total",
            "sozu_backend_up",
            "sozu_http_cluster_requests_total",
            "sozu_http_cluster_status_total",
            "sozu_http_response_time_seconds",
        } <= labelled(snapshot)
        assert (
            sample(
                snapshot,
                "sozu_http_cluster_status_total",
                listener=listener,
                cluster="web",
                status="2xx",
            )
            == 1
        )
