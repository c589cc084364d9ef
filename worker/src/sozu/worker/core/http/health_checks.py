"""Active HTTP health checks, sans-io: schedule and rise/fall verdicts (see docs/http.md).

`HealthChecks` holds one `ClusterChecks` per cluster with a `health_check`. The shell feeds it
the wanted configuration with `configure(...)`, launches what `due(now)` returns, reports each
probe's outcome (the response status, or None for a connect error, a timeout or a malformed
answer) with `record(...)`, applies `healthy(cluster_id, backend_id)` to the selectors and
emits the returned events. Time is injected.

Each backend is probed every `interval` seconds (one probe in flight at most); backends start
healthy, turn unhealthy after `unhealthy_threshold` consecutive failures and healthy again
after `healthy_threshold` consecutive successes. A cluster whose backends are all unhealthy
latches NO_AVAILABLE_BACKENDS until one recovers (CLUSTER_RECOVERED). Results of probes that
were launched under a since-changed check, or for a backend that left or moved, are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from sozu.command.types import HealthCheckConfig
from sozu.worker.core.balancing import HealthState

EventKind = Literal[
    "HEALTH_CHECK_HEALTHY", "HEALTH_CHECK_UNHEALTHY", "NO_AVAILABLE_BACKENDS", "CLUSTER_RECOVERED"
]

# A status line longer than this is a malformed answer, not one still arriving.
MAX_STATUS_LINE = 1024


def probe_request(uri: str, host: str) -> bytes:
    """The request sent to a backend; `host` is its address text (`ip:port`, `[ipv6]:port`)."""
    return (
        f"GET {uri} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        "User-Agent: sozu-health-check\r\n\r\n"
    ).encode()


def parse_status_line(data: bytes) -> int | None:
    """The status code of the response starting `data`, None while the line is incomplete.

    Raises ValueError for anything that is not an `HTTP/1.x NNN` status line.
    """
    end = data.find(b"\n")
    if end < 0:
        if len(data) > MAX_STATUS_LINE:
            raise ValueError("status line too long")
        # A prefix that can no longer become a status line is rejected early.
        if b"HTTP/1."[: len(data)] != data[:7]:
            raise ValueError(f"not an HTTP/1 status line: {data[:32]!r}")
        return None
    line = data[:end].rstrip(b"\r")
    if len(line) > MAX_STATUS_LINE:
        raise ValueError("status line too long")
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if (
        version not in (b"HTTP/1.0", b"HTTP/1.1")
        or len(code) != 3
        or not code.isdigit()
        or rest[3:4] not in (b"", b" ")
    ):
        raise ValueError(f"not an HTTP/1 status line: {line[:32]!r}")
    status = int(code)
    if status < 100:
        raise ValueError(f"status {status} out of range")
    return status


def status_ok(status: int | None, expected_status: int) -> bool:
    """Whether a probe outcome is a success: the expected status, or any 2xx when it is 0."""
    if status is None:
        return False
    if expected_status == 0:
        return 200 <= status <= 299
    return status == expected_status


class CheckTarget(msgspec.Struct, frozen=True):
    """A backend to probe: its id, its address text (the Host header) and socket address."""

    backend_id: str
    host: str
    address: tuple[str, int]


class HttpProbe(msgspec.Struct, frozen=True):
    """One probe to run. `token` identifies it when its result comes back."""

    cluster_id: str
    backend_id: str
    address: tuple[str, int]
    request: bytes
    timeout: float
    token: int


class HealthCheckEvent(msgspec.Struct, frozen=True):
    kind: EventKind
    cluster_id: str
    backend_id: str | None = None


class CheckCounters(msgspec.Struct):
    """Per-cluster counters (`health_check.{success,failure,up,down}`)."""

    success: int = 0
    failure: int = 0
    up: int = 0
    down: int = 0


def _request_fields(config: HealthCheckConfig) -> tuple[str, int, int]:
    """The parts of a check that change what a probe's result means."""
    return config.uri, config.timeout, config.expected_status


class _BackendCheck:
    __slots__ = ("in_flight", "last_start", "state", "target")

    def __init__(self, target: CheckTarget, rise: int, fall: int) -> None:
        self.target = target
        self.state = HealthState(rise, fall)
        self.last_start: float | None = None  # None: never probed, due now
        self.in_flight: int | None = None  # token of the probe whose result is awaited


class ClusterChecks:
    """Probe schedule and health verdicts of one cluster's backends."""

    def __init__(
        self, cluster_id: str, config: HealthCheckConfig, targets: Iterable[CheckTarget]
    ) -> None:
        self.cluster_id = cluster_id
        self.config = config
        self.counters = CheckCounters()
        self._backends: dict[str, _BackendCheck] = {}
        self._all_down = False
        self.configure(config, targets)

    @property
    def all_down(self) -> bool:
        """Latched: every backend is unhealthy (and there is at least one)."""
        return self._all_down

    def configure(
        self, config: HealthCheckConfig, targets: Iterable[CheckTarget]
    ) -> list[HealthCheckEvent]:
        """New check settings or membership; returns the cluster transition it caused.

        Backends keep their verdict across a settings change; their streaks restart when the
        thresholds change, and a change of uri, timeout or expected status drops the results
        still in flight and probes again at once. A new backend, or one whose address changed,
        starts healthy and is probed at once.
        """
        old = self.config
        self.config = config
        rise, fall = config.healthy_threshold, config.unhealthy_threshold
        thresholds_changed = (old.healthy_threshold, old.unhealthy_threshold) != (rise, fall)
        request_changed = _request_fields(old) != _request_fields(config)
        updated: dict[str, _BackendCheck] = {}
        for target in targets:
            if target.backend_id in updated:
                raise ValueError(f"duplicate backend id {target.backend_id!r}")
            entry = self._backends.get(target.backend_id)
            if entry is None or entry.target != target:
                entry = _BackendCheck(target, rise, fall)
            else:
                if thresholds_changed:
                    healthy = entry.state.healthy
                    entry.state = HealthState(rise, fall)
                    entry.state.healthy = healthy
                if request_changed:
                    entry.in_flight = None
                    entry.last_start = None
            updated[target.backend_id] = entry
        self._backends = updated
        return self._cluster_transition()

    def healthy(self, backend_id: str) -> bool:
        """The verdict on a backend; one this cluster does not check counts as healthy."""
        entry = self._backends.get(backend_id)
        return entry is None or entry.state.healthy

    def statuses(self) -> dict[str, bool]:
        return {bid: entry.state.healthy for bid, entry in self._backends.items()}

    def available(self) -> int:
        return sum(entry.state.healthy for entry in self._backends.values())

    def in_flight(self) -> int:
        return sum(entry.in_flight is not None for entry in self._backends.values())

    def next_deadline(self) -> float | None:
        """When the next probe is due (None: nothing to schedule until a result comes in)."""
        interval = self.config.interval
        deadlines = [
            float("-inf") if entry.last_start is None else entry.last_start + interval
            for entry in self._backends.values()
            if entry.in_flight is None
        ]
        return min(deadlines, default=None)

    def due(self, now: float, tokens: Iterable[int]) -> list[HttpProbe]:
        """The probes to launch now, numbered from `tokens`; each stays in flight until its
        result is recorded (or made stale by a reconfiguration)."""
        config = self.config
        interval = config.interval
        token_source = iter(tokens)
        probes = []
        for backend_id, entry in self._backends.items():
            if entry.in_flight is not None:
                continue
            if entry.last_start is not None and now < entry.last_start + interval:
                continue
            token = next(token_source)
            target = entry.target
            probes.append(
                HttpProbe(
                    self.cluster_id,
                    backend_id,
                    target.address,
                    probe_request(config.uri, target.host),
                    float(config.timeout),
                    token,
                )
            )
            entry.in_flight = token
            entry.last_start = now
        return probes

    def record(self, probe: HttpProbe, status: int | None) -> list[HealthCheckEvent]:
        """A probe's outcome; returns the backend and cluster transitions it caused."""
        entry = self._backends.get(probe.backend_id)
        if entry is None or entry.in_flight != probe.token:
            return []  # stale: the backend or the check changed while the probe ran
        entry.in_flight = None
        success = status_ok(status, self.config.expected_status)
        if success:
            self.counters.success += 1
        else:
            self.counters.failure += 1
        events = []
        if entry.state.record(success):
            if entry.state.healthy:
                self.counters.up += 1
                kind: EventKind = "HEALTH_CHECK_HEALTHY"
            else:
                self.counters.down += 1
                kind = "HEALTH_CHECK_UNHEALTHY"
            events.append(HealthCheckEvent(kind, self.cluster_id, probe.backend_id))
        events.extend(self._cluster_transition())
        return events

    def reset(self) -> list[HealthCheckEvent]:
        """Checks stop: every backend counts as healthy again; a latched-down cluster
        recovers."""
        self._backends = {}
        return self._cluster_transition()

    def _cluster_transition(self) -> list[HealthCheckEvent]:
        all_down = bool(self._backends) and self.available() == 0
        if all_down == self._all_down:
            return []
        self._all_down = all_down
        kind: EventKind = "NO_AVAILABLE_BACKENDS" if all_down else "CLUSTER_RECOVERED"
        return [HealthCheckEvent(kind, self.cluster_id)]

    def check_invariants(self, next_token: int) -> None:
        config = self.config
        assert config.interval > 0
        assert config.timeout > 0
        assert self._all_down == (bool(self._backends) and self.available() == 0)
        counters = self.counters
        assert min(counters.success, counters.failure, counters.up, counters.down) >= 0
        assert counters.up + counters.down <= counters.success + counters.failure
        tokens = [e.in_flight for e in self._backends.values() if e.in_flight is not None]
        assert len(tokens) == len(set(tokens)), "one token in flight twice"
        for backend_id, entry in self._backends.items():
            assert entry.target.backend_id == backend_id
            state = entry.state
            assert state.rise == config.healthy_threshold
            assert state.fall == config.unhealthy_threshold
            assert state.success_streak == 0 or state.failure_streak == 0
            if entry.in_flight is not None:
                assert entry.in_flight < next_token
                assert entry.last_start is not None


class HealthChecks:
    """The health checks of every cluster of one worker."""

    def __init__(self) -> None:
        self._clusters: dict[str, ClusterChecks] = {}
        self._next_token = 0

    def clusters(self) -> list[str]:
        return list(self._clusters)

    def cluster(self, cluster_id: str) -> ClusterChecks | None:
        return self._clusters.get(cluster_id)

    def configure(
        self, wanted: Mapping[str, tuple[HealthCheckConfig, Iterable[CheckTarget]]]
    ) -> list[HealthCheckEvent]:
        """Converge on `wanted` (cluster id -> check and backends); clusters left out stop
        being checked and their backends count as healthy again."""
        events: list[HealthCheckEvent] = []
        for cluster_id in [cid for cid in self._clusters if cid not in wanted]:
            events.extend(self._clusters.pop(cluster_id).reset())
        for cluster_id, (config, targets) in wanted.items():
            checks = self._clusters.get(cluster_id)
            if checks is None:
                checks = self._clusters[cluster_id] = ClusterChecks(cluster_id, config, ())
            events.extend(checks.configure(config, targets))
        return events

    def healthy(self, cluster_id: str, backend_id: str) -> bool:
        checks = self._clusters.get(cluster_id)
        return checks is None or checks.healthy(backend_id)

    def statuses(self) -> dict[str, dict[str, bool]]:
        return {cid: checks.statuses() for cid, checks in self._clusters.items()}

    def next_deadline(self) -> float | None:
        deadlines = [
            deadline
            for checks in self._clusters.values()
            if (deadline := checks.next_deadline()) is not None
        ]
        return min(deadlines, default=None)

    def _tokens(self) -> Iterable[int]:
        while True:
            token = self._next_token
            self._next_token += 1
            yield token

    def due(self, now: float) -> list[HttpProbe]:
        probes: list[HttpProbe] = []
        tokens = self._tokens()
        for checks in self._clusters.values():
            probes.extend(checks.due(now, tokens))
        return probes

    def record(self, probe: HttpProbe, status: int | None) -> list[HealthCheckEvent]:
        checks = self._clusters.get(probe.cluster_id)
        if checks is None:
            return []  # the cluster's check was removed while the probe ran
        return checks.record(probe, status)

    def check_invariants(self) -> None:
        for cluster_id, checks in self._clusters.items():
            assert checks.cluster_id == cluster_id
            checks.check_invariants(self._next_token)
