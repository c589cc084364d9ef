"""Worker metrics in the supervisor: polling snapshots, retiring exited workers, reports."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import msgspec
import trio

from sozu.command import requests as rq
from sozu.command.channel import ConnectionLost
from sozu.command.metrics import Labels, MetricsAggregator, MetricsSnapshot
from sozu.command.responses import AvailableMetrics, MetricsReport, MetricValue
from sozu.supervisor.worker_records import Worker
from sozu.supervisor.workers import WorkerPool

log = logging.getLogger("sozu.supervisor")

POLL_INTERVAL = 1.0


def metric_key(name: str, labels: Labels) -> str:
    """`name{label="value",...}`, the Prometheus spelling of one series."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def _series(
    snapshot: MetricsSnapshot, names: tuple[str, ...]
) -> Iterator[tuple[str, Labels, MetricValue]]:
    """Every series of a snapshot as (name, labels, report value), optionally only those named."""
    for kind, samples in (("counter", snapshot.counters), ("gauge", snapshot.gauges)):
        for sample in samples:
            if not names or sample.name in names:
                yield (
                    sample.name,
                    sample.labels,
                    MetricValue(
                        kind="counter" if kind == "counter" else "gauge", value=sample.value
                    ),
                )
    for histogram in snapshot.histograms:
        if names and histogram.name not in names:
            continue
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
            running += count
            cumulative.append((bound, running))
        value = MetricValue(
            kind="histogram",
            buckets=tuple(cumulative),
            count=sum(histogram.counts),
            sum=histogram.sum,
        )
        yield histogram.name, histogram.labels, value


def report_values(snapshot: MetricsSnapshot, names: tuple[str, ...] = ()) -> dict[str, MetricValue]:
    """One snapshot as `MetricsReport` values, optionally only the metrics named."""
    return {metric_key(name, labels): value for name, labels, value in _series(snapshot, names)}


def backend_key(cluster_id: str, backend_id: str) -> str:
    """The key of a backend in `MetricsReport.backends`."""
    return f"{cluster_id}/{backend_id}"


def report_sections(snapshot: MetricsSnapshot, names: tuple[str, ...] = ()) -> MetricsReport:
    """A snapshot split by labels: series with a `cluster` label go to `clusters[cluster]`,
    with `cluster` and `backend` labels to `backends["cluster/backend"]` (keyed without those
    labels), the others to `main`."""
    main: dict[str, MetricValue] = {}
    clusters: dict[str, dict[str, MetricValue]] = {}
    backends: dict[str, dict[str, MetricValue]] = {}
    for name, labels, value in _series(snapshot, names):
        by_name = dict(labels)
        cluster_id = by_name.pop("cluster", None)
        backend_id = by_name.pop("backend", None) if cluster_id is not None else None
        rest = tuple(sorted(by_name.items()))
        if cluster_id is None:
            main[metric_key(name, labels)] = value
        elif backend_id is None:
            clusters.setdefault(cluster_id, {})[metric_key(name, rest)] = value
        else:
            backends.setdefault(backend_key(cluster_id, backend_id), {})[metric_key(name, rest)] = (
                value
            )
    return MetricsReport(main=main, clusters=clusters, backends=backends)


class MetricsCollector:
    """Polls every running worker about once a second: metrics (aggregated) and state hash."""

    def __init__(self, pool: WorkerPool, aggregator: MetricsAggregator, patience: float) -> None:
        self.pool = pool
        self.aggregator = aggregator
        self.patience = patience
        self._latest: dict[int, MetricsSnapshot] = {}
        # Set while a supervisor upgrade quiesces the worker channels.
        self.paused = False
        pool.on_worker_exit = self.retire
        pool.on_final_metrics = self.final

    def final(self, worker: Worker, snapshot: MetricsSnapshot) -> None:
        """A stopping worker's last snapshot (it counts until its drain ends, when nobody
        polls it any more): kept for when it is retired."""
        if worker.state != "stopped":
            self._latest[worker.id] = snapshot
            self.aggregator.update(worker.id, snapshot)

    def retire(self, worker: Worker) -> None:
        self._latest.pop(worker.id, None)
        self.aggregator.retire(worker.id)

    async def _poll(self, worker: Worker) -> None:
        with trio.move_on_after(self.patience):
            try:
                response = await worker.mux.call(rq.QueryMetrics())
            except (ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError):
                return
            # A worker that exited meanwhile is retired already: do not bring it back.
            snapshot = getattr(response.content, "snapshot", None)
            if isinstance(snapshot, MetricsSnapshot) and worker.state != "stopped":
                self._latest[worker.id] = snapshot
                self.aggregator.update(worker.id, snapshot)

    async def poll_once(self) -> None:
        async with trio.open_nursery() as nursery:
            for worker in self.pool.running_workers():
                nursery.start_soon(self._poll, worker)

    async def refresh_hashes(self) -> None:
        """Ask each running worker for its state hash (for `sozu_worker_state_hash_ok`)."""
        async with trio.open_nursery() as nursery:
            for worker in self.pool.running_workers():
                nursery.start_soon(self.pool.refresh, worker, self.patience)

    async def run(self) -> None:
        while True:
            if not self.paused:
                await self.poll_once()
                await self.refresh_hashes()
            await trio.sleep(POLL_INTERVAL)

    def report(self, request: rq.QueryMetrics) -> MetricsReport:
        names = request.metric_names
        workers: dict[str, dict[str, MetricValue]] = {}
        if request.workers:
            workers = {
                str(worker_id): report_values(snapshot, names)
                for worker_id, snapshot in sorted(self._latest.items())
            }
        sections = report_sections(self.aggregator.totals(), names)
        if request.no_clusters:
            return MetricsReport(main=sections.main, workers=workers)
        if request.cluster_ids or request.backend_ids:
            # Upstream's filters: only the clusters and backends named (a backend by its id
            # or as "cluster/backend"), without the process-wide series.
            clusters = {k: v for k, v in sections.clusters.items() if k in request.cluster_ids}
            backends = {
                key: values
                for key, values in sections.backends.items()
                if key in request.backend_ids
                or key.partition("/")[2] in request.backend_ids
                or key.partition("/")[0] in request.cluster_ids
            }
            return MetricsReport(workers=workers, clusters=clusters, backends=backends)
        return msgspec.structs.replace(sections, workers=workers)

    def available(self) -> AvailableMetrics:
        """The metric names there are: process-wide ones and per-cluster or per-backend ones."""
        proxy: set[str] = set()
        cluster: set[str] = set()
        for name, labels, _ in _series(self.aggregator.totals(), ()):
            (cluster if any(key == "cluster" for key, _ in labels) else proxy).add(name)
        return AvailableMetrics(
            proxy_metrics=tuple(sorted(proxy)), cluster_metrics=tuple(sorted(cluster))
        )
