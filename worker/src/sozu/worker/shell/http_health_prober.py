"""Runs the HTTP health checks of a worker's clusters (trio shell around `HealthChecks`).

A probe opens a fresh TCP connection to the backend, sends the check request and reads the
response's status line; the whole exchange is bounded by the check's timeout. Probes of
different backends run concurrently, at most `max_concurrent` at a time. Verdicts go to the
clusters' selectors (`set_healthy`), transitions to a callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from sozu.command.addresses import AddressError, to_sockaddr
from sozu.command.state import ConfigState
from sozu.command.types import HealthCheckConfig
from sozu.worker.core.clusters import TcpCluster
from sozu.worker.core.http.health_checks import (
    CheckTarget,
    HealthCheckEvent,
    HealthChecks,
    HttpProbe,
    parse_status_line,
)
from sozu.worker.shell.connect import connect_backend

DEFAULT_MAX_CONCURRENT = 32

EventCallback = Callable[[str, str, str | None], None]  # (kind, cluster_id, backend_id)


async def http_probe(address: tuple[str, int], request: bytes, limit: float) -> int | None:
    """Send `request` and return the status of the answer within `limit` seconds.

    None on a connect error, a timeout, a connection closed before the status line, or an
    answer that is not an HTTP/1 status line.
    """
    with trio.move_on_after(limit):
        try:
            sock = await connect_backend(address, limit)
        except OSError:
            return None
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        try:
            await stream.send_all(request)
            data = b""
            while True:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return None
                data += chunk
                status = parse_status_line(data)
                if status is not None:
                    return status
        except (OSError, trio.BrokenResourceError, ValueError):
            return None
        finally:
            stream.socket.close()
    return None


class HttpHealthChecks:
    """Keeps every cluster with a `health_check` probed, and its selector told the verdicts."""

    def __init__(
        self,
        state: ConfigState,
        clusters: dict[str, TcpCluster],
        on_event: EventCallback,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    ) -> None:
        self._state = state
        self._clusters = clusters
        self._on_event = on_event
        self.checks = HealthChecks()
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._scope = trio.CancelScope()
        self._wake = trio.Event()
        # Clusters whose selectors may carry verdicts of ours (to reset when checks stop).
        self._touched: set[str] = set()
        self._closed = False
        self.refresh()

    def start(self, nursery: trio.Nursery) -> None:
        if not self._closed:
            nursery.start_soon(self._run)

    def knows(self, cluster_id: str) -> bool:
        """This cluster is checked, or its selector may carry verdicts of ours."""
        return cluster_id in self._touched or self.checks.cluster(cluster_id) is not None

    def refresh(self) -> None:
        """Converge on the state: clusters, backends and checks added, changed or removed."""
        if self._closed:
            return
        wanted: dict[str, tuple[HealthCheckConfig, list[CheckTarget]]] = {}
        for cluster_id, cluster in self._state.clusters.items():
            check = cluster.health_check
            if check is None:
                continue
            targets: dict[str, CheckTarget] = {}
            for backend in self._state.backends.get(cluster_id, ()):
                # The state keys backends by (id, address) but verdicts go by id, as in the
                # selector: the first address of an id is the one checked.
                if backend.backend_id in targets:
                    continue
                try:
                    address = to_sockaddr(backend.address)
                except AddressError:
                    continue
                targets[backend.backend_id] = CheckTarget(
                    backend.backend_id, backend.address, address
                )
            wanted[cluster_id] = (check, list(targets.values()))
        events = self.checks.configure(wanted)
        for cluster_id in list(self._touched | set(self.checks.clusters())):
            self._apply(cluster_id)
        self._emit(events)
        self._wake.set()

    def statuses(self) -> dict[str, dict[str, bool]]:
        """Cluster id -> backend id -> healthy, for the clusters with a health check."""
        return self.checks.statuses()

    def counters(self) -> dict[str, dict[str, int]]:
        """Cluster id -> `success`, `failure`, `up`, `down` counts of its checks."""
        result = {}
        for cluster_id in self.checks.clusters():
            checks = self.checks.cluster(cluster_id)
            assert checks is not None
            c = checks.counters
            result[cluster_id] = {
                "success": c.success,
                "failure": c.failure,
                "up": c.up,
                "down": c.down,
            }
        return result

    def close(self) -> None:
        """Stop probing; every backend that was judged counts as healthy again."""
        if self._closed:
            return
        self._closed = True
        self._scope.cancel()
        self.checks.configure({})
        for cluster_id in list(self._touched):
            self._apply(cluster_id)

    def _apply(self, cluster_id: str) -> None:
        """Bring the selector of `cluster_id` (if the worker has it yet) in line with the
        verdicts; a cluster without checks gets every backend healthy."""
        cluster = self._clusters.get(cluster_id)
        checked = self.checks.cluster(cluster_id) is not None
        if cluster is not None:
            selector = cluster.selector
            for backend in selector.backends():
                selector.set_healthy(backend.id, self.checks.healthy(cluster_id, backend.id))
        if checked:
            self._touched.add(cluster_id)
        else:
            self._touched.discard(cluster_id)

    def _emit(self, events: list[HealthCheckEvent]) -> None:
        for event in events:
            self._on_event(event.kind, event.cluster_id, event.backend_id)

    async def _run(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                while True:
                    for probe in self.checks.due(trio.current_time()):
                        nursery.start_soon(self._probe, probe)
                    deadline = self.checks.next_deadline()
                    self._wake = trio.Event()
                    with trio.move_on_at(deadline if deadline is not None else math.inf):
                        await self._wake.wait()

    async def _probe(self, probe: HttpProbe) -> None:
        async with self._limiter:
            status = await http_probe(probe.address, probe.request, probe.timeout)
        events = self.checks.record(probe, status)
        self._apply(probe.cluster_id)
        self._emit(events)
        self._wake.set()
