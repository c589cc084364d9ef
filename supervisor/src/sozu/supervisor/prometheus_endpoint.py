"""The supervisor's Prometheus endpoint: a custom collector over worker snapshots, served by trio.

The collector turns `MetricsAggregator.totals()` into metric families at scrape time, so the
numbers are sums across workers (retired workers included for counters and histograms). The
HTTP side is deliberately tiny: `GET /metrics` on a listening socket the supervisor owns (it
is handed over on a supervisor upgrade), one request per connection.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate

import trio
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from sozu.command.metrics import MetricsSnapshot
from sozu.supervisor.boundaries import ErrorCounts

log = logging.getLogger("sozu.supervisor.prometheus")

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT = 5.0
# A client that does not read its answer is dropped after this long.
SEND_TIMEOUT = 10.0
MAX_SCRAPES = 8


def _family(name: str, kind: str) -> Metric:
    base = name.removesuffix("_total") if kind == "counter" else name
    return Metric(base, f"sozu {base.removeprefix('sozu_').replace('_', ' ')}", kind)


class SnapshotCollector(Collector):
    """Exposes aggregated worker snapshots plus a few supervisor gauges."""

    def __init__(
        self,
        totals: Callable[[], MetricsSnapshot],
        build_info: dict[str, str],
        supervisor_gauges: Callable[[], dict[str, float]] | None = None,
        *,
        supervisor_families: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        self._totals = totals
        self._build_info = build_info
        self._supervisor_gauges = supervisor_gauges
        self._supervisor_families = supervisor_families

    def collect(self) -> Iterator[Metric]:
        snapshot = self._totals()
        families: dict[tuple[str, str], Metric] = {}

        def family(name: str, kind: str) -> Metric:
            key = (name, kind)
            if key not in families:
                families[key] = _family(name, kind)
            return families[key]

        for sample in snapshot.counters:
            name = sample.name if sample.name.endswith("_total") else f"{sample.name}_total"
            family(sample.name, "counter").add_sample(name, dict(sample.labels), sample.value)
        for sample in snapshot.gauges:
            family(sample.name, "gauge").add_sample(sample.name, dict(sample.labels), sample.value)
        for histogram in snapshot.histograms:
            metric = family(histogram.name, "histogram")
            cumulative = list(accumulate(histogram.counts))
            bounds = [*map(_le, histogram.bounds), "+Inf"]
            for bound, count in zip(bounds, cumulative, strict=True):
                labels = {**dict(histogram.labels), "le": bound}
                metric.add_sample(f"{histogram.name}_bucket", labels, count)
            base = dict(histogram.labels)
            metric.add_sample(f"{histogram.name}_count", base, cumulative[-1])
            metric.add_sample(f"{histogram.name}_sum", base, histogram.sum)
        yield from families.values()
        if self._supervisor_gauges is not None:
            for name, value in self._supervisor_gauges().items():
                gauge = _family(name, "gauge")
                gauge.add_sample(name, {}, value)
                yield gauge
        if self._supervisor_families is not None:
            yield from self._supervisor_families()
        info = Metric("sozu_build_info", "sozu build information", "gauge")
        info.add_sample("sozu_build_info", dict(self._build_info), 1.0)
        yield info


def _le(bound: float) -> str:
    return repr(float(bound))


def make_registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


async def serve_prometheus(
    sock: socket.socket,
    registry: CollectorRegistry,
    errors: ErrorCounts | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer `GET /metrics` on a listening socket until cancelled.

    Each scrape runs behind a boundary (a reset, a slow or broken client ends that scrape
    only); at most MAX_SCRAPES run at once, others get a 503 at once.
    """
    errors = errors if errors is not None else ErrorCounts()
    listener = trio.socket.from_stdlib_socket(sock)
    answer = errors.guarded("prometheus", _answer)
    running = 0

    async def scrape(client: trio.socket.SocketType) -> None:
        nonlocal running
        running += 1
        try:
            await answer(trio.SocketStream(client), registry)
        finally:
            running -= 1

    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            try:
                client, _ = await listener.accept()
            except OSError as error:
                # EMFILE and friends: out of resources for a moment.
                errors.record("prometheus", error)
                await trio.sleep(0.1)
                continue
            if running >= MAX_SCRAPES:
                errors.counts[("prometheus", "too_many_scrapes")] += 1
                nursery.start_soon(errors.guarded("prometheus", _refuse), client)
                continue
            nursery.start_soon(scrape, client)


async def _refuse(client: trio.socket.SocketType) -> None:
    async with trio.SocketStream(client) as stream:
        with trio.move_on_after(SEND_TIMEOUT):
            await _respond(stream, 503, b"too many concurrent scrapes\n", "text/plain")
            # A lingering close: the unread request must not turn the close into a reset
            # that destroys the answer.
            await stream.send_eof()
            with trio.move_on_after(1.0):
                while await stream.receive_some(4096):
                    pass


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    async with stream:
        request = bytearray()
        with trio.move_on_after(REQUEST_TIMEOUT):
            while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST_BYTES:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                request += chunk
        line = bytes(request.split(b"\r\n", 1)[0])
        parts = line.split(b" ")
        with trio.move_on_after(SEND_TIMEOUT):
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                await _respond(stream, 400, b"bad request\n", "text/plain")
            elif parts[0] not in (b"GET", b"HEAD"):
                await _respond(stream, 405, b"method not allowed\n", "text/plain")
            elif parts[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
                await _respond(stream, 404, b"not found: try /metrics\n", "text/plain")
            else:
                try:
                    body = generate_latest(registry)
                except Exception:
                    log.exception("collecting metrics failed")
                    await _respond(stream, 500, b"collection failed\n", "text/plain")
                    return
                await _respond(stream, 200, body, CONTENT_TYPE_LATEST, head=parts[0] == b"HEAD")


async def _respond(
    stream: trio.SocketStream, status: int, body: bytes, content_type: str, *, head: bool = False
) -> None:
    reason = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        405: "Method Not Allowed",
        503: "Service Unavailable",
    }
    head_lines = (
        f"HTTP/1.1 {status} {reason.get(status, 'Internal Server Error')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    await stream.send_all(head_lines.encode() + (b"" if head else body))
