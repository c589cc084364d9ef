"""Health of a UDP cluster's backends, sans-io: which probes are due, and verdicts (docs/udp.md).

The shell asks `due(now)` for the probes to launch, runs them, and reports each result with
`record(...)`; it gets back the events to emit and applies `healthy(backend_id)` to the
cluster's selector. Time is injected.

Two upstream quirks are fixed here:
- the TCP companion probe and the UDP probe each have their own rise/fall state, and a backend
  is healthy only while every probe kind that runs says so (upstream feeds both kinds into one
  state, so alternating results reset the streaks forever and never flip it);
- turning checks off (or a backend leaving the cluster) resets health: nothing stays marked
  unhealthy without a probe to ever clear it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from sozu.worker.core.balancing import Backend, HealthState
from sozu.worker.core.udp.config import UdpHealthSettings

ProbeKind = Literal["tcp", "udp"]
EventKind = Literal[
    "HEALTH_CHECK_HEALTHY", "HEALTH_CHECK_UNHEALTHY", "NO_AVAILABLE_BACKENDS", "CLUSTER_RECOVERED"
]


class Probe(msgspec.Struct, frozen=True):
    """One probe to run: a TCP connect to `address`, or a UDP payload sent to it."""

    backend_id: str
    kind: ProbeKind
    address: tuple[str, int]


class HealthEvent(msgspec.Struct, frozen=True):
    kind: EventKind
    cluster_id: str
    backend_id: str | None = None


class _BackendHealth:
    __slots__ = ("backend", "states")

    def __init__(self, backend: Backend, kinds: Iterable[ProbeKind], rise: int, fall: int) -> None:
        self.backend = backend
        self.states = {kind: HealthState(rise, fall) for kind in kinds}

    @property
    def healthy(self) -> bool:
        return all(state.healthy for state in self.states.values())


class ClusterHealth:
    """Probe schedule and health verdicts of one UDP cluster."""

    def __init__(
        self, cluster_id: str, settings: UdpHealthSettings | None, backends: Iterable[Backend]
    ) -> None:
        self.cluster_id = cluster_id
        self._settings: UdpHealthSettings | None = None
        self._backends: dict[str, _BackendHealth] = {}
        self._in_flight: set[tuple[str, ProbeKind]] = set()
        self._last_round: float | None = None
        self._all_down = False
        self.configure(settings, backends)

    @property
    def enabled(self) -> bool:
        return self._settings is not None and self._settings.enabled

    def _kinds(self) -> tuple[ProbeKind, ...]:
        settings = self._settings
        if settings is None or not settings.enabled:
            return ()
        return ("tcp", "udp") if settings.runs_udp_probe else ("tcp",)

    def configure(
        self, settings: UdpHealthSettings | None, backends: Iterable[Backend]
    ) -> list[HealthEvent]:
        """New settings or membership. Checks turned off, or a changed probe set, start over
        from healthy; backends that stay under the same probes keep their streaks."""
        old_kinds = self._kinds()
        self._settings = settings
        kinds = self._kinds()
        rise = settings.rise if settings is not None else 1
        fall = settings.fall if settings is not None else 1
        updated: dict[str, _BackendHealth] = {}
        for backend in backends:
            previous = self._backends.get(backend.id)
            if previous is not None and kinds == old_kinds and previous.backend == backend:
                updated[backend.id] = previous
            else:
                updated[backend.id] = _BackendHealth(backend, kinds, rise, fall)
        self._backends = updated
        self._in_flight = {key for key in self._in_flight if key[0] in updated}
        if not kinds:
            self._last_round = None
        return self._cluster_transition()

    def healthy(self, backend_id: str) -> bool:
        entry = self._backends.get(backend_id)
        return entry is None or entry.healthy

    def available(self) -> int:
        return sum(entry.healthy for entry in self._backends.values())

    def next_deadline(self) -> float | None:
        """When the next round of probes is due (None: checks are off)."""
        if not self._kinds() or not self._backends:
            return None
        assert self._settings is not None
        if self._last_round is None:
            return float("-inf")  # never probed: due now
        return self._last_round + self._settings.probe_interval

    def due(self, now: float) -> list[Probe]:
        """The probes to launch now; each stays in flight until its result is recorded."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        settings = self._settings
        assert settings is not None
        probes = []
        for backend_id, entry in self._backends.items():
            host, port = entry.backend.address
            for kind in entry.states:
                if (backend_id, kind) in self._in_flight:
                    continue
                target_port = settings.tcp_probe_port(port) if kind == "tcp" else port
                probes.append(Probe(backend_id, kind, (host, target_port)))
                self._in_flight.add((backend_id, kind))
        if probes:
            self._last_round = now
        return probes

    def record(self, probe: Probe, success: bool) -> list[HealthEvent]:
        """A probe's result; returns the backend and cluster transitions it caused."""
        self._in_flight.discard((probe.backend_id, probe.kind))
        entry = self._backends.get(probe.backend_id)
        if entry is None or probe.kind not in entry.states:
            return []  # the backend left, or the probe kind was turned off, meanwhile
        was_healthy = entry.healthy
        entry.states[probe.kind].record(success)
        events = []
        if entry.healthy != was_healthy:
            kind: EventKind = "HEALTH_CHECK_HEALTHY" if entry.healthy else "HEALTH_CHECK_UNHEALTHY"
            events.append(HealthEvent(kind, self.cluster_id, probe.backend_id))
        events.extend(self._cluster_transition())
        return events

    def _cluster_transition(self) -> list[HealthEvent]:
        all_down = bool(self._backends) and self.available() == 0
        if all_down == self._all_down:
            return []
        self._all_down = all_down
        kind: EventKind = "NO_AVAILABLE_BACKENDS" if all_down else "CLUSTER_RECOVERED"
        return [HealthEvent(kind, self.cluster_id)]
