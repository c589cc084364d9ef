"""StatsD export of the aggregated metrics (`[metrics] address`), as upstream Sōzu emits them.

Once a second the supervisor sends, over UDP to `address`, what changed in the totals over
all workers: a counter as its increase since the last send (`<prefix>.<name>:<n>|c`), a gauge
as its value when it changed (`|g`). Names are upstream's where sozu has the same metric
(`http.requests`, `bytes_in`, `http.status.2xx`, `http.503.errors`, `client.connections`,
`connections_per_backend`, `configuration.clusters` ...), else the Prometheus name without
`sozu_` and `_total`, underscores turned into dots at the protocol (`udp.datagrams_in`).
Cluster and backend labels become DogStatsD tags `cluster_id` and `backend_id` with
`tagged_metrics`, else parts of the name (`<prefix>.cluster.<id>.backend.<id>.<name>`);
`detail` sends series down to `backend`, `cluster` (the default: no per-backend series) or
`process`/`frontend` (neither per-cluster nor per-backend series). Other labels (listener,
reason ...) are tags with `tagged_metrics`, else summed away. Histograms (durations) stay in
Prometheus only. Lines are packed into datagrams of at most 1,432 bytes; a send that fails is
dropped (statsd is lossy).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from typing import Final

import trio

from sozu.command.metrics import Labels, MetricsSnapshot

log = logging.getLogger("sozu.supervisor")

INTERVAL: Final = 1.0
MAX_DATAGRAM: Final = 1432
DETAILS: Final = ("process", "frontend", "cluster", "backend")

# sozu name -> upstream's, where sozu has the same metric.
UPSTREAM_NAMES: Final = {
    "sozu_http_requests_total": "http.requests",
    "sozu_http_cluster_requests_total": "http.requests",
    "sozu_http_bytes_in_total": "bytes_in",
    "sozu_http_bytes_out_total": "bytes_out",
    "sozu_tcp_bytes_in_total": "bytes_in",
    "sozu_tcp_bytes_out_total": "bytes_out",
    "sozu_backend_bytes_in_total": "back_bytes_in",
    "sozu_backend_bytes_out_total": "back_bytes_out",
    "sozu_tcp_connections_total": "tcp.requests",
    "sozu_http_frontend_parse_errors_total": "http.frontend_parse_errors",
    "sozu_http_backend_parse_errors_total": "http.backend_parse_errors",
    "sozu_worker_active_connections": "client.connections",
    "sozu_backend_active_connections": "connections_per_backend",
    "sozu_http_websocket_active": "websocket.active_requests",
    "sozu_configuration_clusters": "configuration.clusters",
    "sozu_configuration_backends": "configuration.backends",
    "sozu_configuration_frontends": "configuration.frontends",
}
# Labels that are upstream's tags (or name parts), by sozu label.
_KEPT: Final = {"cluster": "cluster_id", "backend": "backend_id"}
_TAG: Final = ":|#,@ \n"  # characters a tag value cannot hold


def statsd_name(name: str, labels: dict[str, str]) -> str:
    """The statsd name of a sozu series (`status` folded in where upstream does)."""
    if name == "sozu_http_status_total" and "status" in labels:
        return f"http.status.{labels.pop('status')}"
    if name == "sozu_http_generated_answers_total" and "status" in labels:
        return f"http.{labels.pop('status')}.errors"
    upstream = UPSTREAM_NAMES.get(name)
    if upstream is not None:
        return upstream
    bare = name.removeprefix("sozu_").removesuffix("_total")
    protocol, _, rest = bare.partition("_")
    return f"{protocol}.{rest}" if rest else protocol


def _clean(value: str, separators: str = ".:|#,@ \n") -> str:
    """A name part (or, keeping dots, a tag value) without statsd's separators."""
    return "".join("_" if c in separators else c for c in value)


class StatsdExporter:
    """Turns successive totals into statsd lines (`lines`) and sends them (`run`)."""

    def __init__(
        self,
        totals: Callable[[], MetricsSnapshot],
        address: tuple[str, int],
        *,
        prefix: str = "sozu",
        tagged: bool = False,
        detail: str = "cluster",
    ) -> None:
        assert detail in DETAILS, detail
        self.totals = totals
        self.address = address
        self.prefix = prefix
        self.tagged = tagged
        self.detail = detail
        self._sent_counters: dict[str, float] = {}
        self._sent_gauges: dict[str, float] = {}
        self.datagrams = 0
        self.send_errors = 0

    def _key(self, name: str, labels: Labels) -> str | None:
        """`<prefix>.[cluster.<id>.[backend.<id>.]]<name>[|#tags]` for one series; None for a
        series finer than `detail` (its coarser series is sent: summing would count twice)."""
        rest = dict(labels)
        if ("backend" in rest and self.detail != "backend") or (
            "cluster" in rest and self.detail not in ("cluster", "backend")
        ):
            return None
        metric = statsd_name(name, rest)
        kept: list[tuple[str, str]] = []
        for label, tag in _KEPT.items():
            value = rest.pop(label, None)
            if value is not None:
                kept.append((tag, value))
        if not self.tagged:
            parts = [self.prefix]
            for tag, value in kept:
                parts += [tag.removesuffix("_id"), _clean(value)]
            return ".".join([*parts, metric])
        tags = kept + sorted(rest.items())
        suffix = "|#" + ",".join(f"{_clean(k)}:{_clean(v, _TAG)}" for k, v in tags) if tags else ""
        return f"{self.prefix}.{metric}{suffix}"

    def lines(self) -> list[str]:
        """The lines to send now: counter increases and changed gauges since the last call."""
        snapshot = self.totals()
        counters: dict[str, float] = {}
        for sample in snapshot.counters:
            key = self._key(sample.name, sample.labels)
            if key is not None:
                counters[key] = counters.get(key, 0.0) + sample.value
        gauges: dict[str, float] = {}
        for sample in snapshot.gauges:
            key = self._key(sample.name, sample.labels)
            if key is not None:
                gauges[key] = gauges.get(key, 0.0) + sample.value
        out: list[str] = []
        for key, value in counters.items():
            increase = value - self._sent_counters.get(key, 0.0)
            if increase > 0:  # a counter restarted from zero (`metrics clear`) sends nothing
                out.append(_line(key, _number(increase), "c"))
            self._sent_counters[key] = value
        for key, value in gauges.items():
            if self._sent_gauges.get(key) != value:
                out.append(_line(key, _number(value), "g"))
                self._sent_gauges[key] = value
        return out

    def datagrams_of(self, lines: list[str]) -> Iterator[bytes]:
        """The lines packed into datagrams of at most MAX_DATAGRAM bytes (one line each at
        least)."""
        batch: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode()
            if batch and size + 1 + len(data) > MAX_DATAGRAM:
                yield b"\n".join(batch)
                batch, size = [], 0
            size += len(data) + (1 if batch else 0)
            batch.append(data)
        if batch:
            yield b"\n".join(batch)

    async def run(self) -> None:
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
            while True:
                await trio.sleep(INTERVAL)
                try:
                    lines = self.lines()
                except Exception:
                    log.exception("statsd: reading the metrics failed")
                    continue
                for datagram in self.datagrams_of(lines):
                    try:
                        await sock.sendto(datagram, self.address)
                        self.datagrams += 1
                    except OSError:
                        self.send_errors += 1


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.6g}"


def _line(key: str, value: str, kind: str) -> str:
    name, bar, tags = key.partition("|")
    return f"{name}:{value}|{kind}" + (f"|{tags}" if bar else "")
