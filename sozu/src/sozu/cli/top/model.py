"""What `sozu top` shows, computed from what the daemon answered: pure (no terminal, no socket,
no clock: each sample carries the time it was taken).

A `Sample` is one poll (metrics totals over every worker, the status, the listeners and the
certificates); `History` keeps the last minute of them and derives the overview figures and
every pane's rows from the last two.
"""

from __future__ import annotations

import collections
import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sozu.command.responses import (
    CertificateSummary,
    ListenersList,
    MetricsReport,
    MetricValue,
    StatusReport,
)

Section = Mapping[str, MetricValue]
_KEY = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
SPARK = "▁▂▃▄▅▆▇█"
HISTORY = 61  # a minute of samples at the default refresh, and the one before


@dataclass(frozen=True)
class Sample:
    """One poll of the daemon, taken at `at` (seconds, monotonic)."""

    at: float
    metrics: MetricsReport
    status: StatusReport | None = None
    listeners: ListenersList | None = None
    certificates: tuple[CertificateSummary, ...] = ()


def split_key(key: str) -> tuple[str, dict[str, str]]:
    """`name{a="x",b="y"}` -> ("name", {"a": "x", "b": "y"})."""
    name, brace, rest = key.partition("{")
    if not brace:
        return key, {}
    return name, dict(_KEY.findall(rest))


def total(section: Section, name: str, **labels: str) -> float:
    """The sum of every series of `name` (optionally only those with these labels)."""
    found = 0.0
    for key, value in section.items():
        if not key.startswith(name):
            continue
        series, series_labels = split_key(key)
        if series == name and all(series_labels.get(k) == v for k, v in labels.items()):
            found += value.value
    return found


def by_label(section: Section, name: str, label: str) -> dict[str, float]:
    """`name` summed per value of `label`."""
    found: dict[str, float] = collections.defaultdict(float)
    for key, value in section.items():
        if key.startswith(name):
            series, labels = split_key(key)
            if series == name and label in labels:
                found[labels[label]] += value.value
    return dict(found)


def _buckets(sections: Iterable[Section], name: str) -> dict[float, int]:
    """Cumulative bucket counts of `name`, summed over every series of the sections."""
    merged: dict[float, int] = collections.defaultdict(int)
    for section in sections:
        for key, value in section.items():
            if value.kind == "histogram" and split_key(key)[0] == name:
                for bound, count in value.buckets:
                    merged[bound] += count
    return dict(merged)


def quantile(before: dict[float, int], after: dict[float, int], q: float) -> float | None:
    """The upper bound of the bucket holding quantile `q` of what was observed between two
    cumulative bucket sets (None: nothing observed)."""
    bounds = sorted(after)
    if not bounds:
        return None
    deltas = [after[b] - before.get(b, 0) for b in bounds]
    count = deltas[-1]
    if count <= 0:
        return None
    wanted = q * count
    for bound, cumulative in zip(bounds, deltas, strict=True):
        if cumulative >= wanted:
            return bound
    return bounds[-1]


def sparkline(values: Iterable[float | None], width: int) -> str:
    """The last `width` values as block characters, scaled to their maximum."""
    points = [v or 0.0 for v in values][-width:]
    top = max(points, default=0.0)
    if top <= 0:
        return SPARK[0] * len(points)
    return "".join(
        SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in points
    )


@dataclass(frozen=True)
class Overview:
    requests_per_s: float
    error_rate: float  # 4xx and 5xx over all responses, in [0, 1]
    answers_per_s: float  # answers sozu wrote itself
    p50: float | None
    p99: float | None
    active_connections: float
    datagrams_per_s: float
    live_flows: float
    workers: int
    hashes_match: bool


@dataclass
class History:
    """The last samples, and each overview figure over them (for the sparklines)."""

    samples: collections.deque[Sample] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY)
    )
    series: dict[str, collections.deque[float | None]] = field(default_factory=dict)

    def add(self, sample: Sample) -> None:
        assert not self.samples or sample.at > self.samples[-1].at, "samples go forward"
        self.samples.append(sample)
        figures = self.overview()
        if figures is None:
            return
        for name in (
            "requests_per_s",
            "error_rate",
            "p99",
            "active_connections",
            "datagrams_per_s",
            "live_flows",
        ):
            self.series.setdefault(name, collections.deque(maxlen=HISTORY - 1)).append(
                getattr(figures, name)
            )

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def _pair(self) -> tuple[Sample, Sample, float] | None:
        if len(self.samples) < 2:
            return None
        before, after = self.samples[-2], self.samples[-1]
        return before, after, after.at - before.at

    def overview(self) -> Overview | None:
        pair = self._pair()
        if pair is None:
            return None
        before, after, elapsed = pair
        main0, main1 = before.metrics.main, after.metrics.main

        def rate(name: str, **labels: str) -> float:
            return max(0.0, total(main1, name, **labels) - total(main0, name, **labels)) / elapsed

        statuses = sum(rate("sozu_http_status_total", status=c) for c in ("2xx", "3xx", "1xx"))
        errors = rate("sozu_http_status_total", status="4xx") + rate(
            "sozu_http_status_total", status="5xx"
        )
        responses = statuses + errors + rate("sozu_http_status_total", status="other")
        name = "sozu_http_response_time_seconds"
        histogram0 = _buckets(before.metrics.clusters.values(), name)
        histogram1 = _buckets(after.metrics.clusters.values(), name)
        status = after.status
        return Overview(
            requests_per_s=rate("sozu_http_requests_total"),
            error_rate=errors / responses if responses else 0.0,
            answers_per_s=rate("sozu_http_generated_answers_total"),
            p50=quantile(histogram0, histogram1, 0.5),
            p99=quantile(histogram0, histogram1, 0.99),
            active_connections=total(main1, "sozu_worker_active_connections"),
            datagrams_per_s=rate("sozu_udp_datagrams_in_total")
            + rate("sozu_udp_datagrams_out_total"),
            live_flows=total(main1, "sozu_udp_active_flows"),
            workers=len(status.workers) if status is not None else 0,
            hashes_match=status is not None
            and all(w.state_hash == status.supervisor.state_hash for w in status.workers),
        )

    # -- pane rows: tuples of cells, the first a name; numbers stay numbers (for sorting)

    def cluster_rows(self) -> list[tuple[str | float | None, ...]]:
        """cluster, req/s, p99 (s), 2xx/s, 4xx/s, 5xx/s, active connections, backend connect
        errors/s, backends up/total."""
        pair = self._pair()
        if pair is None:
            return []
        before, after, elapsed = pair
        rows: list[tuple[str | float | None, ...]] = []
        backends = after.metrics.backends
        # A UDP cluster has series per backend only.
        ids = set(after.metrics.clusters) | {key.partition("/")[0] for key in backends}
        for cluster_id in sorted(ids):
            now = after.metrics.clusters.get(cluster_id, {})
            then = before.metrics.clusters.get(cluster_id, {})

            def rate(name: str, now: Section = now, then: Section = then) -> float:
                return max(0.0, total(now, name) - total(then, name)) / elapsed

            name = "sozu_http_response_time_seconds"
            p99 = quantile(_buckets([then], name), _buckets([now], name), 0.99)
            own = [v for k, v in backends.items() if k.partition("/")[0] == cluster_id]
            up = sum(1 for v in own if _available(v))
            errors = 0.0
            for key, values in backends.items():
                if key.partition("/")[0] == cluster_id:
                    previous = before.metrics.backends.get(key, {})
                    name = "sozu_backend_connect_errors_total"
                    errors += max(0.0, total(values, name) - total(previous, name)) / elapsed
            statuses = {
                status: max(
                    0.0,
                    total(now, "sozu_http_cluster_status_total", status=status)
                    - total(then, "sozu_http_cluster_status_total", status=status),
                )
                / elapsed
                for status in ("2xx", "4xx", "5xx")
            }
            rows.append(
                (
                    cluster_id,
                    rate("sozu_http_cluster_requests_total"),
                    p99,
                    statuses["2xx"],
                    statuses["4xx"],
                    statuses["5xx"],
                    total(now, "sozu_cluster_active_connections"),
                    errors,
                    f"{up}/{len(own)}",
                )
            )
        return rows

    def backend_rows(self) -> list[tuple[str | float | None, ...]]:
        """cluster/backend, up, healthy, active, conns/s, connect errors/s."""
        pair = self._pair()
        if pair is None:
            return []
        before, after, elapsed = pair
        rows: list[tuple[str | float | None, ...]] = []
        for key in sorted(after.metrics.backends):
            now = after.metrics.backends[key]
            then = before.metrics.backends.get(key, {})
            healthy = _healthy(now)
            up = _connectable(now)
            rows.append(
                (
                    key,
                    "-" if up is None else ("up" if up else "down"),
                    "-" if healthy is None else ("yes" if healthy else "no"),
                    total(now, "sozu_backend_active_connections"),
                    max(
                        0.0,
                        total(now, "sozu_backend_connections_total")
                        - total(then, "sozu_backend_connections_total"),
                    )
                    / elapsed,
                    max(
                        0.0,
                        total(now, "sozu_backend_connect_errors_total")
                        - total(then, "sozu_backend_connect_errors_total"),
                    )
                    / elapsed,
                )
            )
        return rows

    def listener_rows(self) -> list[tuple[str | float | None, ...]]:
        """address, protocol, active, connections or flows open."""
        latest = self.latest
        if latest is None or latest.listeners is None:
            return []
        main = latest.metrics.main
        gauges = {
            "HTTP": by_label(main, "sozu_http_active_connections", "listener"),
            "HTTPS": by_label(main, "sozu_http_active_connections", "listener"),
            "TCP": by_label(main, "sozu_tcp_active_connections", "listener"),
            "UDP": by_label(main, "sozu_udp_active_flows", "listener"),
        }
        lists = latest.listeners
        rows: list[tuple[str | float | None, ...]] = []
        for protocol, listeners in (
            ("HTTP", lists.http),
            ("HTTPS", lists.https),
            ("TCP", lists.tcp),
            ("UDP", lists.udp),
        ):
            for address, config in sorted(listeners.items()):
                open_now = gauges[protocol].get(address, 0.0)
                rows.append((address, protocol, "yes" if config.active else "no", open_now))
        return rows

    def udp_rows(self) -> list[tuple[str | float | None, ...]]:
        """listener, datagrams in/s, out/s, live flows, created, evicted, shed, drops."""
        pair = self._pair()
        if pair is None:
            return []
        before, after, elapsed = pair
        main0, main1 = before.metrics.main, after.metrics.main
        rows: list[tuple[str | float | None, ...]] = []
        listeners = set(by_label(main1, "sozu_udp_datagrams_in_total", "listener"))
        listeners |= set(by_label(main1, "sozu_udp_active_flows", "listener"))
        for listener in sorted(listeners):

            def count(name: str, listener: str = listener) -> float:
                return total(main1, name, listener=listener)

            def rate(name: str, listener: str = listener) -> float:
                then = total(main0, name, listener=listener)
                return max(0.0, count(name) - then) / elapsed

            drops = by_label(
                {k: v for k, v in main1.items() if f'listener="{listener}"' in k},
                "sozu_udp_datagrams_dropped_total",
                "reason",
            )
            rows.append(
                (
                    listener,
                    rate("sozu_udp_datagrams_in_total"),
                    rate("sozu_udp_datagrams_out_total"),
                    count("sozu_udp_active_flows"),
                    count("sozu_udp_flows_created_total"),
                    count("sozu_udp_flows_evicted_total"),
                    count("sozu_udp_flows_shed_total"),
                    " ".join(f"{r}={int(n)}" for r, n in sorted(drops.items()) if n) or "-",
                )
            )
        return rows

    def certificate_rows(self, now_epoch: float) -> list[tuple[str | float | None, ...]]:
        """names, address, expires (UTC date), days left."""
        latest = self.latest
        if latest is None:
            return []
        rows: list[tuple[str | float | None, ...]] = []
        for summary in latest.certificates:
            if summary.expired_at is None:
                expires, days = "-", None
            else:
                moment = datetime.datetime.fromtimestamp(summary.expired_at, datetime.UTC)
                expires = moment.strftime("%Y-%m-%d")
                days = float(int((summary.expired_at - now_epoch) // 86400))
            rows.append(
                (
                    ", ".join(summary.names) or summary.fingerprint[:16],
                    summary.address,
                    expires,
                    days,
                )
            )
        return rows

    def worker_rows(self) -> list[tuple[str | float | None, ...]]:
        """id, slot, pid, state, restarts, build, hash (ok or differs)."""
        latest = self.latest
        if latest is None or latest.status is None:
            return []
        wanted = latest.status.supervisor.state_hash
        return [
            (
                str(w.id),
                float(w.slot),
                float(w.pid),
                w.state,
                float(w.restarts),
                w.build_id[:12],
                "ok" if w.state_hash == wanted else "differs",
            )
            for w in latest.status.workers
        ]


def _connectable(series: Section) -> bool | None:
    """`sozu_backend_up` of a backend (None for a UDP backend, which has no such series)."""
    values = [v.value for k, v in series.items() if split_key(k)[0] == "sozu_backend_up"]
    return None if not values else all(value >= 1 for value in values)


def _healthy(series: Section) -> bool | None:
    """The backend's active health check, if it has one."""
    names = ("sozu_http_health_check_healthy", "sozu_udp_backend_healthy")
    values = [v.value for k, v in series.items() if split_key(k)[0] in names]
    return None if not values else all(value >= 1 for value in values)


def _available(series: Section) -> bool:
    """Counted as up in a cluster's `up` column: connectable and not failing its check."""
    return _connectable(series) is not False and _healthy(series) is not False


def sort_rows(
    rows: list[tuple[str | float | None, ...]], column: int, descending: bool
) -> list[tuple[str | float | None, ...]]:
    """Rows by one column: numbers by value, text by text, blanks last."""

    def key(row: tuple[str | float | None, ...]) -> tuple[int, float, str]:
        cell = row[column] if column < len(row) else None
        if cell is None:
            return (1, 0.0, "")
        if isinstance(cell, float | int):
            return (0, float(cell), "")
        return (0, 0.0, str(cell))

    present = [r for r in rows if key(r)[0] == 0]
    blank = [r for r in rows if key(r)[0] == 1]
    return sorted(present, key=key, reverse=descending) + blank


def filter_rows(
    rows: list[tuple[str | float | None, ...]], text: str
) -> list[tuple[str | float | None, ...]]:
    """Rows one of whose text cells contains `text` (case-insensitive)."""
    if not text:
        return rows
    wanted = text.lower()
    return [r for r in rows if any(isinstance(c, str) and wanted in c.lower() for c in r)]
