"""The Prometheus endpoint over a real loopback socket, parsed with prometheus_client's parser."""

from __future__ import annotations

import socket
import struct

import trio
from prometheus_client.parser import text_string_to_metric_families

from sozu.command.metrics import MetricsAggregator, MetricsRegistry
from sozu.supervisor.boundaries import ErrorCounts
from sozu.supervisor.prometheus_endpoint import (
    MAX_SCRAPES,
    SnapshotCollector,
    make_registry,
    serve_prometheus,
)


def aggregator() -> MetricsAggregator:
    aggregated = MetricsAggregator()
    for worker_id, accepted in ((1, 3), (2, 4)):
        registry = MetricsRegistry()
        registry.counter("sozu_tcp_connections_total", listener="127.0.0.1:1").inc(accepted)
        registry.gauge("sozu_tcp_active_connections", listener="127.0.0.1:1").set(worker_id)
        registry.histogram("sozu_tcp_connection_duration_seconds").observe(0.2)
        aggregated.update(worker_id, registry.snapshot())
    return aggregated


async def fetch(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request)
    data = bytearray()
    async for chunk in stream:
        data += chunk
    await stream.aclose()
    return bytes(data)


async def test_scrape_sums_workers_and_parses() -> None:
    aggregated = aggregator()
    collector = SnapshotCollector(
        aggregated.totals, {"version": "0.1.0"}, lambda: {"sozu_configuration_clusters": 2}
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_prometheus, sock, make_registry(collector))
            response = await fetch(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            connections = families["sozu_tcp_connections"]
            assert connections.type == "counter"
            assert [s.value for s in connections.samples if s.name.endswith("_total")] == [7]
            assert families["sozu_tcp_active_connections"].samples[0].value == 3
            histogram = families["sozu_tcp_connection_duration_seconds"]
            count = next(s for s in histogram.samples if s.name.endswith("_count"))
            assert count.value == 2
            inf = next(s for s in histogram.samples if s.labels.get("le") == "+Inf")
            assert inf.value == 2
            assert families["sozu_configuration_clusters"].samples[0].value == 2
            assert families["sozu_build_info"].samples[0].labels["version"] == "0.1.0"

            missing = await fetch(port, b"GET /nope HTTP/1.1\r\n\r\n")
            assert missing.startswith(b"HTTP/1.1 404")
            post = await fetch(port, b"POST /metrics HTTP/1.1\r\n\r\n")
            assert post.startswith(b"HTTP/1.1 405")
            garbage = await fetch(port, b"\x00\x01garbage\r\n\r\n")
            assert garbage.startswith(b"HTTP/1.1 400")
            nursery.cancel_scope.cancel()
    sock.close()


def _listening() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, sock.getsockname()[1]


def _reset(client: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0)."""
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


async def test_a_client_that_resets_mid_request_ends_only_its_own_scrape() -> None:
    """A partial GET followed by a reset used to stop the whole daemon."""
    sock, port = _listening()
    errors = ErrorCounts()
    registry = make_registry(SnapshotCollector(aggregator().totals, {}))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_prometheus, sock, registry, errors)
            for _ in range(5):
                client = socket.create_connection(("127.0.0.1", port))
                client.sendall(b"GET /met")
                await trio.sleep(0.05)
                _reset(client)
            with trio.fail_after(5):
                while sum(errors.counts.values()) < 5:  # noqa: ASYNC110 - counted elsewhere
                    await trio.sleep(0.02)
            assert set(errors.counts) == {("prometheus", "BrokenResourceError")}
            response = await fetch(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 200 OK")
            nursery.cancel_scope.cancel()
    sock.close()


async def test_concurrent_scrapes_are_bounded() -> None:
    sock, port = _listening()
    errors = ErrorCounts()
    registry = make_registry(SnapshotCollector(aggregator().totals, {}))
    silent = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_prometheus, sock, registry, errors)
            for _ in range(MAX_SCRAPES):
                silent.append(socket.create_connection(("127.0.0.1", port)))
            await trio.sleep(0.2)
            refused = await fetch(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert refused.startswith(b"HTTP/1.1 503")
            assert errors.counts[("prometheus", "too_many_scrapes")] == 1
            for client in silent:
                client.close()
            await trio.sleep(0.2)
            served = await fetch(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert served.startswith(b"HTTP/1.1 200 OK")
            nursery.cancel_scope.cancel()
    sock.close()
