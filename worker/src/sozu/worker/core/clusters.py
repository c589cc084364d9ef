"""A cluster as a worker's session cores see it: backend choice, back-off, loads (sans-io).

`TcpCluster` wraps a `BackendSelector` with the per-backend retry policies of upstream and
the active connection counts that LEAST_LOADED and POWER_OF_TWO read. Time is passed in and
randomness comes from the random source the shell gives it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sozu.command.metrics import Histogram
from sozu.worker.core.balancing import Backend, BackendSelector, LoadBalancingPolicy, RandomSource
from sozu.worker.core.retry import RetryPolicy

BackendEvent = Callable[[str, str, str], None]  # (kind, cluster_id, backend_id)


class TcpCluster:
    """Selection, back-off and load bookkeeping of one cluster in one worker."""

    def __init__(
        self,
        cluster_id: str,
        policy: LoadBalancingPolicy,
        backends: Iterable[Backend],
        *,
        rng: RandomSource,
        send_proxy: bool = False,
        on_event: BackendEvent | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.send_proxy = send_proxy
        self._rng = rng
        self.selector = BackendSelector(policy, backends, rng=self._rng)
        # Active connections per backend id (what LEAST_LOADED reads, and a gauge).
        self.loads: dict[str, int] = {}
        # Plain counters, folded into the metrics at snapshot time.
        self.connections_total = 0
        self.active = 0
        self.connections: dict[str, int] = {}
        self.connect_errors: dict[str, int] = {}
        self.bytes_in: dict[str, int] = {}
        self.bytes_out: dict[str, int] = {}
        # Backend connect times in seconds, when the worker's metrics want them.
        self.connect_seconds: Histogram | None = None
        self._retries: dict[str, RetryPolicy] = {}
        self._backing_off: set[str] = set()
        self._on_event = on_event

    def update(
        self, policy: LoadBalancingPolicy, backends: Iterable[Backend], *, send_proxy: bool
    ) -> None:
        """New configuration: membership changes keep the back-off of surviving backends."""
        self.send_proxy = send_proxy
        self.selector.set_policy(policy)
        self.selector.set_backends(backends)
        known = {b.id for b in self.selector.backends()}
        for gone in set(self._retries) - known:
            del self._retries[gone]
            self._backing_off.discard(gone)

    def _refresh(self, now: float) -> None:
        for backend_id in list(self._backing_off):
            if self._retries[backend_id].can_open(now):
                self._backing_off.discard(backend_id)
                self.selector.set_retry_ok(backend_id, True)

    def choose(self, now: float) -> Backend | None:
        if self._backing_off:
            self._refresh(now)
        return self.selector.select(loads=self.loads)

    def usable(self, backend_id: str, now: float) -> Backend | None:
        """The backend if it is configured and not backing off (a sticky request's choice)."""
        if self._backing_off:
            self._refresh(now)
        if backend_id in self._backing_off:
            return None
        return self.selector.backend(backend_id)

    def connection_failed(self, backend_id: str, now: float) -> None:
        self.connect_errors[backend_id] = self.connect_errors.get(backend_id, 0) + 1
        policy = self._retries.get(backend_id)
        if policy is None:
            policy = self._retries[backend_id] = RetryPolicy(self._rng)
        if policy.fail(now) and self._on_event is not None:
            self._on_event("BACKEND_DOWN", self.cluster_id, backend_id)
        if not policy.can_open(now) and self.selector.backend(backend_id) is not None:
            self._backing_off.add(backend_id)
            self.selector.set_retry_ok(backend_id, False)
        assert self.check_invariants()

    def is_down(self, backend_id: str) -> bool:
        """True once the back-off of this backend is exhausted (until a connect succeeds)."""
        policy = self._retries.get(backend_id)
        return policy is not None and policy.is_down

    def clear_counters(self) -> None:
        """`sozu metrics clear`: counters back to zero (gauges and loads stay)."""
        self.connections_total = 0
        for counts in (self.connections, self.connect_errors, self.bytes_in, self.bytes_out):
            counts.clear()

    def connection_succeeded(self, backend_id: str) -> None:
        policy = self._retries.pop(backend_id, None)
        if backend_id in self._backing_off:
            # A connect that started before the back-off succeeded: the backend is usable.
            self._backing_off.discard(backend_id)
            self.selector.set_retry_ok(backend_id, True)
        if policy is not None and policy.succeed() and self._on_event is not None:
            self._on_event("BACKEND_UP", self.cluster_id, backend_id)
        assert self.check_invariants()

    def check_invariants(self) -> bool:
        """Every backend backing off has its retry policy, and is configured."""
        assert self._backing_off <= set(self._retries), (self._backing_off, set(self._retries))
        for backend_id in self._backing_off:
            assert self.selector.backend(backend_id) is not None, backend_id
        return True

    def opened(self, backend_id: str) -> None:
        self.connections_total += 1
        self.active += 1
        self.connections[backend_id] = self.connections.get(backend_id, 0) + 1
        self.loads[backend_id] = self.loads.get(backend_id, 0) + 1

    def transferred(self, backend_id: str, bytes_in: int, bytes_out: int) -> None:
        """Bytes of one finished session: `bytes_in` from the client, `bytes_out` to it."""
        self.bytes_in[backend_id] = self.bytes_in.get(backend_id, 0) + bytes_in
        self.bytes_out[backend_id] = self.bytes_out.get(backend_id, 0) + bytes_out

    def closed(self, backend_id: str) -> None:
        self.active -= 1
        remaining = self.loads.get(backend_id, 0) - 1
        assert remaining >= 0, f"load of {backend_id} below zero"
        if remaining:
            self.loads[backend_id] = remaining
        else:
            self.loads.pop(backend_id, None)
