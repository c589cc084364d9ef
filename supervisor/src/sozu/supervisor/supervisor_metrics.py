"""The supervisor's metrics for statsd and Prometheus: the workers' totals and its own
(configuration, workers by state, restarts, commands answered, errors, fleet, saves)."""

from __future__ import annotations

import collections
import typing

import msgspec
from prometheus_client.core import Metric
from prometheus_client.registry import CollectorRegistry

from sozu.command.metrics import MetricsAggregator, MetricsSnapshot, Sample
from sozu.command.responses import WorkerRunState
from sozu.command.state import ConfigState
from sozu.supervisor.boundaries import ErrorCounts
from sozu.supervisor.fleet_sync import FleetSync, fleet_families
from sozu.supervisor.prometheus_endpoint import SnapshotCollector, make_registry
from sozu.supervisor.state_saver import StateSaver
from sozu.supervisor.workers import WorkerPool


class SupervisorMetrics:
    """The metrics a `Supervisor` exports besides its workers' own."""

    metrics: MetricsAggregator
    state: ConfigState
    pool: WorkerPool
    build_id: str
    command_counts: collections.Counter[tuple[str, str]]
    errors: ErrorCounts
    fleet: FleetSync | None
    saver: StateSaver | None

    def _statsd_totals(self) -> MetricsSnapshot:
        """The workers' totals and the supervisor's own gauges (configuration, workers)."""
        totals = self.metrics.totals()
        own = [
            Sample(f"sozu_configuration_{kind}", (), float(count))
            for kind, count in self.state.counts().items()
        ]
        own.append(Sample("sozu_workers_running", (), float(len(self.pool.running_workers()))))
        return msgspec.structs.replace(totals, gauges=(*totals.gauges, *own))

    def _registry(self) -> CollectorRegistry:
        def gauges() -> dict[str, float]:
            values: dict[str, float] = {
                f"sozu_configuration_{kind}": float(count)
                for kind, count in self.state.counts().items()
            }
            values["sozu_workers_running"] = float(len(self.pool.running_workers()))
            state_hash = self.state.hash()
            values["sozu_worker_state_hash_ok"] = float(
                sum(w.state_hash == state_hash for w in self.pool.live_workers())
            )
            return values

        collector = SnapshotCollector(
            self.metrics.totals,
            {"build_id": self.build_id},
            gauges,
            supervisor_families=self._supervisor_families,
        )
        return make_registry(collector)

    def _supervisor_families(self) -> list[Metric]:
        """Labelled supervisor metrics: workers by state, restarts, commands answered."""
        workers = Metric("sozu_workers", "sozu workers by state", "gauge")
        by_state = collections.Counter(w.state for w in self.pool.live_workers())
        for state in typing.get_args(WorkerRunState):
            workers.add_sample("sozu_workers", {"state": state}, float(by_state[state]))
        restarts = Metric("sozu_worker_restarts", "sozu worker relaunches", "counter")
        restarts.add_sample(
            "sozu_worker_restarts_total", {}, float(sum(s.restarts for s in self.pool.slots))
        )
        commands = Metric("sozu_commands", "sozu commands answered", "counter")
        for (kind, result), count in sorted(self.command_counts.items()):
            commands.add_sample("sozu_commands_total", {"kind": kind, "result": result}, count)
        families = [workers, restarts, commands, *self.errors.families()]
        if self.fleet is not None:
            families += fleet_families(self.fleet)
        if self.saver is not None:
            saves = Metric("sozu_state_saves", "automatic state saves written", "counter")
            saves.add_sample("sozu_state_saves_total", {}, float(self.saver.writes))
            failed = Metric("sozu_state_save_failures", "automatic state saves failed", "counter")
            failed.add_sample("sozu_state_save_failures_total", {}, float(self.saver.failures))
            families += [saves, failed]
        return families
