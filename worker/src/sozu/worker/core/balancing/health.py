"""Rise/fall health hysteresis, shared by the UDP prober and HTTP checks (docs/udp.md).

A state starts Healthy. A success clears the failure streak and flips Unhealthy -> Healthy at
`rise` consecutive successes; a failure clears the success streak and flips Healthy ->
Unhealthy at `fall` consecutive failures. `HealthBook` feeds both UDP probe kinds (TCP
companion, UDP payload) into one state per backend, as upstream does, so alternating results
reset both streaks and never flip it; the UDP prober's `ClusterHealth`
(`sozu.worker.core.udp.health`) keeps one `HealthState` per probe kind instead.
"""

from __future__ import annotations

DEFAULT_RISE = 2
DEFAULT_FALL = 3


class HealthState:
    __slots__ = ("_failures", "_successes", "fall", "healthy", "rise")

    def __init__(self, rise: int = DEFAULT_RISE, fall: int = DEFAULT_FALL) -> None:
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be >= 1, got rise={rise} fall={fall}")
        self.rise = rise
        self.fall = fall
        self.healthy = True
        self._successes = 0
        self._failures = 0

    @property
    def success_streak(self) -> int:
        return self._successes

    @property
    def failure_streak(self) -> int:
        return self._failures

    def record(self, success: bool) -> bool:
        """Feed one probe result; return True when it flipped the state."""
        if success:
            self._failures = 0
            self._successes += 1
            if not self.healthy and self._successes >= self.rise:
                self.healthy = True
                return True
        else:
            self._successes = 0
            self._failures += 1
            if self.healthy and self._failures >= self.fall:
                self.healthy = False
                return True
        assert self._successes == 0 or self._failures == 0
        return False

    def record_success(self) -> bool:
        return self.record(True)

    def record_failure(self) -> bool:
        return self.record(False)


class HealthBook:
    """The health state of each backend of one cluster, with both probe recorders."""

    __slots__ = ("fall", "rise", "states")

    def __init__(self, rise: int = DEFAULT_RISE, fall: int = DEFAULT_FALL) -> None:
        HealthState(rise, fall)  # validates
        self.rise = rise
        self.fall = fall
        self.states: dict[str, HealthState] = {}

    def _state(self, backend_id: str) -> HealthState:
        state = self.states.get(backend_id)
        if state is None:
            state = self.states[backend_id] = HealthState(self.rise, self.fall)
        return state

    def record_tcp_probe(self, backend_id: str, success: bool) -> bool:
        return self._state(backend_id).record(success)

    def record_udp_probe(self, backend_id: str, success: bool) -> bool:
        # Deliberately the same state as the TCP probe: upstream's behaviour.
        return self._state(backend_id).record(success)

    def is_healthy(self, backend_id: str) -> bool:
        state = self.states.get(backend_id)
        return True if state is None else state.healthy

    def forget(self, backend_id: str) -> None:
        self.states.pop(backend_id, None)
