"""The established-flow fast path (`forward_established`, `return_established`) against the
full path: the simulation gives the same digest with and without it, and hypothesis drives two
cores with one operation stream (one through the fast path first, one through the full path
only) and finds no difference in outputs, counters or flows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from simulation.udp import run_seed
from simulation.udp.runner import Simulation
from sozu.worker.core.udp.config import ClusterConfig
from sozu.worker.core.udp.manager import FlowManager
from sozu.worker.core.udp.outputs import (
    ArmTimer,
    OutputT,
    SelectBackend,
    SendToBackend,
    SendToClient,
)

BK = ("127.0.0.1", 53)
POOL = [(f"10.0.0.{i}", 9000 + i % 2) for i in range(6)]


def test_simulation_digest_is_the_same_with_the_fast_path() -> None:
    taken = 0
    for seed in range(48):
        full = run_seed(seed, 800)
        simulation = Simulation(seed, 800, fast_path=True)
        fast = simulation.run()
        assert full.passed, full.failure
        assert fast == full, (seed, fast.failure)
        taken += simulation.fast_taken
    assert taken > 200  # the sweep exercised the fast path, not only the full one


def test_a_fast_path_sweep_replays_its_seed() -> None:
    first = Simulation(0xFA57, 1500, fast_path=True)
    result = first.run()
    assert result.passed, result.failure
    assert first.fast_taken > 0
    assert Simulation(0xFA57, 1500, fast_path=True).run() == result


def _cluster(flags: int) -> ClusterConfig:
    return ClusterConfig(
        cluster="" if flags % 11 == 0 else "c",
        affinity_with_port=bool(flags & 1),
        responses=(flags >> 1) % 3,
        requests=(flags >> 3) % 4,
        front_timeout=float(1 + (flags >> 5) % 30),
        back_timeout=float(1 + (flags >> 7) % 30),
        send_proxy_protocol=bool(flags & 0x200),
        proxy_protocol_every_datagram=bool(flags & 0x400),
    )


class _Pair:
    """Two cores fed the same inputs; `fast` tries the fast path first."""

    def __init__(self, cluster: ClusterConfig, cap: int) -> None:
        self.full = FlowManager(cluster, max_flows=cap, max_rx_datagram_size=64)
        self.fast = FlowManager(cluster, max_flows=cap, max_rx_datagram_size=64)
        self.taken = 0
        self.last: list[OutputT] = []

    def client(self, now: float, src: tuple[str, int], payload: bytes) -> None:
        self.full.handle_client_datagram(now, src, payload)
        armed = self.fast.poll_timeout()
        flow = self.fast.forward_established(now, src, payload)
        if flow < 0:
            self.fast.handle_client_datagram(now, src, payload)
            self.compare()
            return
        self.taken += 1
        view = self.fast.flow(flow)
        assert view is not None
        assert view.backend_addr is not None
        self.compare([SendToBackend(flow, view.backend_addr, payload), *self._rearmed(armed)])

    def backend(self, now: float, flow: int, payload: bytes) -> None:
        self.full.handle_backend_datagram(now, flow, payload)
        armed = self.fast.poll_timeout()
        client = self.fast.return_established(now, flow, payload)
        if client is None:
            self.fast.handle_backend_datagram(now, flow, payload)
            self.compare()
            return
        self.taken += 1
        self.compare([SendToClient(flow, client, payload), *self._rearmed(armed)])

    def _rearmed(self, armed: float | None) -> list[OutputT]:
        """The ArmTimer the full path records when the fast path moved the armed deadline
        (the flow held the minimum); the fast path itself builds no record."""
        moved = self.fast.poll_timeout()
        if moved == armed:
            return []
        assert moved is not None
        assert armed is not None
        assert moved > armed  # only ever later
        return [ArmTimer(moved)]

    def both(self, call: str, *args: object) -> None:
        getattr(self.full, call)(*args)
        getattr(self.fast, call)(*args)
        self.compare()

    def compare(self, synthesised: list[OutputT] | None = None) -> list[OutputT]:
        full = self.full.take_outputs()
        fast = self.fast.take_outputs() if synthesised is None else synthesised
        assert self.fast.poll_output() is None
        assert fast == full
        assert self.fast.counters == self.full.counters
        assert self.fast.poll_timeout() == self.full.poll_timeout()
        flows = self.full.flow_ids()
        assert self.fast.flow_ids() == flows
        for flow in flows:
            assert self.fast.flow(flow) == self.full.flow(flow)
        self.fast.check_invariants()
        self.last = full
        return full


operations = st.lists(
    st.tuples(st.integers(0, 9), st.integers(0, 2**16), st.integers(0, 70)),
    min_size=1,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**11), st.integers(1, 6), operations)
def test_fast_path_equals_full_path(flags: int, cap: int, ops: list[tuple[int, int, int]]) -> None:
    pair = _Pair(_cluster(flags), cap)
    pending: list[int] = []
    now = 0.0
    for op, arg, size in ops:
        payload = bytes([arg & 0xFF]) * size
        if op <= 3:  # client datagrams are the common case
            pair.client(now, POOL[arg % len(POOL)], payload)
        elif op == 4:
            if pending:
                pair.both("handle_backend_resolved", now, pending.pop(0), "b0", BK)
        elif op <= 6:
            flows = pair.full.flow_ids()
            flow = flows[arg % len(flows)] if flows and arg % 5 else arg % 8
            pair.backend(now, flow, payload)
        elif op == 7:
            now += (arg % 4000) / 100.0
            pair.both("handle_timeout", now)
        elif op == 8:
            pair.both("set_cluster", now, _cluster(arg))
        else:
            now += (arg % 300) / 100.0
        pending.extend(o.flow for o in pair.last if isinstance(o, SelectBackend))
        pair.last = []
    pair.both("handle_timeout", now + 1000.0)
    assert pair.full.flow_count() == 0


def test_fast_path_is_taken_for_an_established_flow_and_refused_otherwise() -> None:
    """Positive and negative space on one flow: refused before it is established, while a
    PROXY header is due, when the datagram reaches a cap or would move the armed timer."""
    core = FlowManager(
        ClusterConfig(cluster="c", front_timeout=10.0, back_timeout=10.0, requests=3),
        max_flows=4,
    )
    src = ("10.0.0.1", 1000)
    assert core.forward_established(0.0, src, b"x") == -1  # no flow yet
    core.handle_client_datagram(0.0, src, b"x")
    (select,) = [o for o in core.take_outputs() if isinstance(o, SelectBackend)]
    assert core.forward_established(0.0, src, b"y") == -1  # awaiting its backend
    core.handle_backend_resolved(0.0, select.flow, "b0", BK)
    core.take_outputs()
    # The only flow owns the armed deadline: refreshing it moves the timer later, without a
    # record (poll_timeout gives it); a deadline moving earlier is refused.
    assert core.poll_timeout() == 10.0
    assert core.forward_established(0.2, src, b"y") == select.flow
    assert core.poll_timeout() == 10.2
    assert core.poll_output() is None
    other = ("10.0.0.2", 1000)
    core.handle_client_datagram(0.5, other, b"x")
    (select2,) = [o for o in core.take_outputs() if isinstance(o, SelectBackend)]
    core.handle_backend_resolved(0.5, select2.flow, "b0", BK)
    core.take_outputs()
    assert core.forward_established(2.0, other, b"z") == select2.flow  # not the minimum
    assert core.poll_output() is None
    assert core.counters.datagrams_in == 4
    assert core.forward_established(2.0, other, b"") == -1  # empty: INVALID in the full path
    assert core.forward_established(2.0, other, b"z" * 70_000) == -1  # oversize
    assert core.forward_established(3.0, other, b"z") == -1  # the third request closes it
    assert core.return_established(3.0, 99, b"r") is None  # unknown flow
    assert core.return_established(3.0, select2.flow, b"r") == other
    core.check_invariants()


def test_a_fast_path_never_moves_the_armed_deadline_earlier() -> None:
    """A reply moved the only flow's deadline to back_timeout; a client datagram would move it
    back to the shorter front_timeout, earlier than the armed one: refused (the full path
    re-arms with a record)."""
    core = FlowManager(
        ClusterConfig(cluster="c", front_timeout=5.0, back_timeout=10.0), max_flows=4
    )
    src = ("10.0.0.1", 1000)
    core.handle_client_datagram(0.0, src, b"x")
    (select,) = [o for o in core.take_outputs() if isinstance(o, SelectBackend)]
    core.handle_backend_resolved(0.0, select.flow, "b0", BK)
    core.take_outputs()
    assert core.poll_timeout() == 5.0
    assert core.return_established(0.2, select.flow, b"r") == src
    assert core.poll_timeout() == 10.2
    assert core.forward_established(0.3, src, b"y") == -1  # 5.3 is earlier than 10.2
    assert core.poll_timeout() == 10.2
    core.handle_client_datagram(0.3, src, b"y")
    assert ArmTimer(5.3) in core.take_outputs()
    core.check_invariants()
