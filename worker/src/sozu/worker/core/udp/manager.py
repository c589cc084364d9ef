"""The sans-io UDP flow core: one FlowManager per listener (docs/udp.md, The flow core).

It owns the flow table (key -> id), the flows (id -> Flow), admission and drop decisions, the
`max_flows` cap, the affinity key, the per-flow teardown counters, the idle deadlines and the
one armed deadline, PROXY v2 header building, and a FIFO of outputs. It performs no I/O, reads
no clock (`now`, float seconds, comes with every call) and draws no randomness (the hash seed
comes with the constructor).

Deliberate differences from upstream: flow ids are monotonic and never reused;
`SendToBackend`/`SendToClient` carry the flow id; `CloseFlow` carries its reason; per-datagram
metrics are counters, so each drop is counted once; ArmTimer is emitted at most once per call,
last; the single buffered datagram's flush uses the flow's own snapshot timeouts.
"""

from __future__ import annotations

from collections import deque

from sozu.worker.core.balancing.backend import Address
from sozu.worker.core.balancing.hashing import DEFAULT_HASH_SEED
from sozu.worker.core.udp.config import DEFAULT_MAX_RX_DATAGRAM_SIZE, UNROUTED, ClusterConfig
from sozu.worker.core.udp.counters import UdpCounters
from sozu.worker.core.udp.deadlines import DeadlineHeap
from sozu.worker.core.udp.flow import TIMER_GEN_MASK, Flow, FlowPhase, FlowView
from sozu.worker.core.udp.flow_key import FlowKey, affinity_hash
from sozu.worker.core.udp.inputs import (
    AbortFlow,
    BackendDatagram,
    BackendResolved,
    ClientDatagram,
    CloseAll,
    Drain,
    InputT,
    SetCluster,
    SetMaxFlows,
    SetMaxRxDatagramSize,
    Timeout,
)
from sozu.worker.core.udp.outputs import (
    DROP,
    FLOW_CREATED,
    FLOW_EVICTED,
    FLOW_SHED,
    ArmTimer,
    CloseFlow,
    CloseReason,
    DropReason,
    OpenUpstream,
    OutputT,
    SelectBackend,
    SendToBackend,
    SendToClient,
)
from sozu.worker.core.udp.proxy_protocol import build_header

Payload = bytes | bytearray | memoryview

_AWAITING = FlowPhase.AWAITING_BACKEND
_ESTABLISHED = FlowPhase.ESTABLISHED


class InvariantViolation(AssertionError):
    """The core's state broke one of its invariants (a bug, never a network event)."""


class FlowManager:
    """UDP flow core of one listener. Feed inputs, then drain `poll_output()`."""

    def __init__(
        self,
        cluster: ClusterConfig = UNROUTED,
        *,
        max_flows: int,
        max_rx_datagram_size: int = DEFAULT_MAX_RX_DATAGRAM_SIZE,
        hash_seed: int = DEFAULT_HASH_SEED,
    ) -> None:
        if max_flows < 0 or max_rx_datagram_size < 0:
            raise ValueError("max_flows and max_rx_datagram_size must be >= 0")
        self._cluster = cluster
        self._max_flows = max_flows
        self._highest_max_flows = max_flows
        self._max_rx = max_rx_datagram_size
        self._hash_seed = hash_seed
        self._draining = False
        self._flows: dict[int, Flow] = {}
        self._table: dict[FlowKey, int] = {}
        self._next_id = 0
        self._deadlines = DeadlineHeap(self._flows)
        self._heap = self._deadlines.heap  # read by the fast paths (who holds the minimum)
        self._armed: float | None = None
        self._timer_dirty = False
        self._out: deque[OutputT] = deque()
        self.counters = UdpCounters()
        self._last_now = float("-inf")
        self._counter_snapshot = self.counters.snapshot()

    # -- read-only

    def flow_count(self) -> int:
        return len(self._flows)

    def max_flows(self) -> int:
        return self._max_flows

    def highest_max_flows(self) -> int:
        return self._highest_max_flows

    def max_rx_datagram_size(self) -> int:
        return self._max_rx

    def is_draining(self) -> bool:
        return self._draining

    def affinity_with_port(self) -> bool:
        return self._cluster.affinity_with_port

    def cluster_config(self) -> ClusterConfig:
        return self._cluster

    def flow(self, flow_id: int) -> FlowView | None:
        flow = self._flows.get(flow_id)
        return None if flow is None else flow.view()

    def flow_ids(self) -> list[int]:
        return list(self._flows)

    def lookup(self, key: FlowKey) -> int | None:
        return self._table.get(key)

    def client_flow(self, src: Address) -> int | None:
        """The live flow a datagram from `src` would reach (the current affinity mode's key)."""
        return self._table.get(self._key_of(src))

    def poll_output(self) -> OutputT | None:
        return self._out.popleft() if self._out else None

    def take_outputs(self) -> list[OutputT]:
        out = list(self._out)
        self._out.clear()
        return out

    def poll_timeout(self) -> float | None:
        return self._armed

    # -- inputs

    def handle_input(self, now: float, inp: InputT) -> None:
        match inp:
            case ClientDatagram(src, payload):
                self.handle_client_datagram(now, src, payload)
            case BackendDatagram(flow, payload):
                self.handle_backend_datagram(now, flow, payload)
            case BackendResolved(flow, backend, addr):
                self.handle_backend_resolved(now, flow, backend, addr)
            case SetCluster(config):
                self.set_cluster(now, config)
            case SetMaxFlows(n):
                self.set_max_flows(now, n)
            case SetMaxRxDatagramSize(n):
                self.set_max_rx_datagram_size(now, n)
            case Drain():
                self.drain(now)
            case Timeout():
                self.handle_timeout(now)
            case AbortFlow(flow, reason):
                self.abort_flow(now, flow, reason)
            case CloseAll():
                self.close_all(now)
            case _:
                raise TypeError(f"not a UDP core input: {inp!r}")

    def handle_client_datagram(self, now: float, src: Address, payload: Payload) -> None:
        """A datagram from `src` on the listener: admit, reuse, buffer, forward or drop.

        `src` must be a normalised `(ip, port)` pair; `payload` may be a view of the shell's
        receive buffer: the core copies it only when it buffers or forwards it.
        """
        if __debug__:
            count_before = len(self._flows)
        n = len(payload)
        if n > self._max_rx:
            self._drop(DropReason.TRUNCATED)
        elif not self._cluster.cluster:
            self._drop(DropReason.NO_BACKEND)
        else:
            key = self._extract_key(src, payload)
            if key is None:
                self._drop(DropReason.INVALID)
            else:
                fid = self._table.get(key)
                if fid is not None:
                    flow = self._flows[fid]
                    assert flow.key == key
                    phase = flow.phase
                    if phase is _ESTABLISHED:
                        self._forward(now, flow, payload)
                    elif phase is _AWAITING:
                        # One-slot buffer: the newest datagram wins, the previous one is lost.
                        flow.pending_payload = bytes(payload)
                        self.counters.buffered_overwritten += 1
                        self._touch(flow, now + flow.config.front_timeout)
                    else:  # pragma: no cover - a CLOSING flow is never stored
                        self._drop(DropReason.SHED)
                elif self._draining:
                    assert key not in self._table
                    self._drop(DropReason.SHED)
                    assert len(self._flows) == count_before
                elif not self._has_room():
                    self.counters.flows_shed += 1
                    self._out.append(FLOW_SHED)
                    self._drop(DropReason.SHED)
                    assert len(self._flows) == count_before
                else:
                    self._admit(now, key, src, payload)
                    if __debug__:
                        assert len(self._flows) == count_before + 1
                        assert self._flows[self._table[key]].key == key
        if self._timer_dirty:
            self._reschedule()
        if __debug__:
            assert len(self._flows) - count_before in (-1, 0, 1)  # one admission or one close
            self._after_call(now)

    def handle_backend_datagram(self, now: float, flow_id: int, payload: Payload) -> None:
        """A reply read from `flow_id`'s upstream socket: return it to the flow's client."""
        if len(payload) > self._max_rx:
            self._drop(DropReason.TRUNCATED)
        else:
            flow = self._flows.get(flow_id)
            if flow is None or flow.phase is not _ESTABLISHED:
                self._drop(DropReason.UNKNOWN_FLOW)
            else:
                self._return(now, flow, payload)
        if self._timer_dirty:
            self._reschedule()
        if __debug__:
            self._after_call(now)

    # -- the established-flow fast path

    def forward_established(self, now: float, src: Address, payload: Payload) -> int:
        """Fast path of `handle_client_datagram`: the flow's id, after counting and refreshing
        exactly as the full path; the shell sends `payload` itself (the full path's outputs,
        `SendToBackend` and an `ArmTimer` when the flow held the minimum, are not built:
        `poll_timeout()` gives the armed deadline). -1 with nothing changed whenever the full
        path would do more (see LIFECYCLE.md): then call `handle_client_datagram`."""
        fid = self._table.get(src if self._cluster.affinity_with_port else (src[0], 0))
        if fid is None or not payload or len(payload) > self._max_rx or not self._cluster.cluster:
            return -1
        flow = self._flows[fid]
        cfg = flow.config
        deadline = now + cfg.front_timeout
        if (
            flow.phase is not _ESTABLISHED
            or flow.proxy_header is not None
            or (cfg.requests and flow.requests_seen + 1 >= cfg.requests)
            or deadline < flow.heap_key
            or self._timer_dirty
        ):
            return -1
        flow.requests_seen += 1
        flow.idle_deadline = deadline
        flow.timer_gen = (flow.timer_gen + 1) & TIMER_GEN_MASK
        c = self.counters
        c.datagrams_in += 1
        c.bytes_in += len(payload)
        if self._heap[0][1] == fid:  # the minimum moves later, never earlier (checked above)
            self._armed = self._deadlines.settle(self._armed)
        if __debug__:
            self._after_call(now)
        return fid

    def return_established(self, now: float, flow_id: int, payload: Payload) -> Address | None:
        """Fast path of `handle_backend_datagram`: the client to send `payload` to (see
        `forward_established`); None with nothing changed when the full path would do more."""
        flow = self._flows.get(flow_id)
        if flow is None or len(payload) > self._max_rx:
            return None
        cfg = flow.config
        deadline = now + cfg.back_timeout
        if (
            flow.phase is not _ESTABLISHED
            or (cfg.responses and flow.responses_seen + 1 >= cfg.responses)
            or deadline < flow.heap_key
            or self._timer_dirty
        ):
            return None
        flow.responses_seen += 1
        flow.idle_deadline = deadline
        flow.timer_gen = (flow.timer_gen + 1) & TIMER_GEN_MASK
        c = self.counters
        c.datagrams_out += 1
        c.bytes_out += len(payload)
        if self._heap[0][1] == flow_id:  # the minimum moves later, never earlier (checked above)
            self._armed = self._deadlines.settle(self._armed)
        if __debug__:
            self._after_call(now)
        return flow.client

    def handle_backend_resolved(
        self, now: float, flow_id: int, backend_id: str, addr: Address
    ) -> None:
        """The answer to SelectBackend: open the upstream and flush the buffered datagram.

        Unknown id -> Drop(UNKNOWN_FLOW); a flow no longer awaiting (late or duplicate answer)
        is ignored without output.
        """
        flow = self._flows.get(flow_id)
        if flow is None:
            self._drop(DropReason.UNKNOWN_FLOW)
        elif flow.phase is _AWAITING:
            flow.backend_id = backend_id
            flow.backend_addr = addr
            flow.set_phase(_ESTABLISHED)
            if flow.config.send_proxy_protocol:
                flow.proxy_header = build_header(flow.client, addr)
            self._out.append(OpenUpstream(flow.id, backend_id, addr))
            pending = flow.pending_payload
            flow.pending_payload = None
            assert pending is not None, "an awaiting flow always holds its admission datagram"
            self._forward(now, flow, pending)
            assert flow.phase is not _AWAITING
        if self._timer_dirty:
            self._reschedule()
        if __debug__:
            self._after_call(now)

    def set_cluster(self, now: float, config: ClusterConfig) -> None:
        """Routing and knobs for new flows; live flows keep their admission snapshot."""
        self._cluster = config
        if __debug__:
            self._after_call(now)

    def set_max_flows(self, now: float, max_flows: int) -> None:
        """New cap; a cap below the live count evicts nothing, it only sheds new flows."""
        if max_flows < 0:
            raise ValueError(f"max_flows must be >= 0, got {max_flows}")
        self._max_flows = max_flows
        self._highest_max_flows = max(self._highest_max_flows, max_flows)
        if __debug__:
            self._after_call(now)

    def set_max_rx_datagram_size(self, now: float, size: int) -> None:
        if size < 0:
            raise ValueError(f"max_rx_datagram_size must be >= 0, got {size}")
        self._max_rx = size
        if __debug__:
            self._after_call(now)

    def drain(self, now: float) -> None:
        """One-way latch: refuse new flows; live flows run to their normal teardown."""
        self._draining = True
        if __debug__:
            self._after_call(now)

    def handle_timeout(self, now: float) -> None:
        """The armed timer fired: close every flow whose idle deadline is `<= now`, re-arm.

        The firing consumed the shell's timer, so ArmTimer is emitted whenever a flow remains,
        even if the minimum did not change (an early firing must not strand a flow).
        """
        self._armed = None
        while (flow := self._deadlines.pop_expired(now)) is not None:
            assert flow.idle_deadline <= now
            self._close(flow, CloseReason.IDLE)
        self._reschedule()
        if __debug__:
            self._after_call(now)
            armed = self._armed
            if armed is not None and armed <= now:
                raise InvariantViolation(f"armed {armed} <= now {now} after a firing")
            for flow in self._flows.values():
                if flow.idle_deadline <= now:
                    raise InvariantViolation(f"flow {flow.id} expired but survived a tick")

    def abort_flow(
        self, now: float, flow_id: int, reason: CloseReason = CloseReason.ABORTED
    ) -> None:
        """Close one flow (LB or upstream-open failure); unknown ids are a no-op."""
        flow = self._flows.get(flow_id)
        if flow is not None:
            self._close(flow, reason)
        if self._timer_dirty:
            self._reschedule()
        if __debug__:
            self._after_call(now)

    def close_all(self, now: float) -> None:
        """Close every flow (reason DRAIN). Does not latch draining; idempotent."""
        for flow in list(self._flows.values()):
            self._close(flow, CloseReason.DRAIN)
        self._deadlines.clear()
        self._timer_dirty = False
        # No disarm output: a pending shell timer fires into nothing.
        self._armed = None
        if __debug__:
            self._after_call(now)
            if self._flows or self._table or self._armed is not None:
                raise InvariantViolation("close_all left state behind")

    # -- seams: small methods a variant (or a deliberately broken test core) can override

    def _extract_key(self, src: Address, payload: Payload) -> FlowKey | None:
        """The flow key of a datagram, or None to reject it (INVALID). Rejects empty payloads."""
        if not payload:
            return None
        return self._key_of(src)

    def _key_of(self, src: Address) -> FlowKey:
        return src if self._cluster.affinity_with_port else (src[0], 0)

    def _has_room(self) -> bool:
        return len(self._flows) < self._max_flows

    def _touch(self, flow: Flow, deadline: float) -> None:
        flow.idle_deadline = deadline
        if __debug__:
            old_gen = flow.timer_gen
        flow.timer_gen = (flow.timer_gen + 1) & TIMER_GEN_MASK
        assert flow.timer_gen != old_gen
        if self._deadlines.touch(flow, deadline):
            self._timer_dirty = True

    def _unmap(self, flow: Flow) -> None:
        # The stored admission key is exactly the entry to remove, whatever the affinity mode
        # is now; the guard makes sure a newer flow's mapping is never removed.
        if self._table.get(flow.key) == flow.id:
            del self._table[flow.key]

    # -- internals

    def _drop(self, reason: DropReason) -> None:
        c = self.counters
        c.dropped += 1
        c.dropped_by_reason[reason] += 1
        self._out.append(DROP[reason])

    def _admit(self, now: float, key: FlowKey, src: Address, payload: Payload) -> None:
        assert not self._draining, "admission while draining"
        assert len(self._flows) < self._max_flows, "admission at or above the cap"
        assert key not in self._table, "admission of a tracked key"
        cfg = self._cluster
        fid = self._next_id
        self._next_id = fid + 1
        deadline = now + cfg.front_timeout
        flow = Flow(
            id=fid,
            key=key,
            client=src,
            config=cfg,
            created_at=now,
            idle_deadline=deadline,
            heap_key=deadline,
            pending_payload=bytes(payload),
        )
        self._flows[fid] = flow
        self._table[key] = fid
        if self._deadlines.add(flow):
            self._timer_dirty = True
        self.counters.flows_created += 1
        self._out.append(FLOW_CREATED)
        self._out.append(
            SelectBackend(
                fid, cfg.cluster, affinity_hash(self._hash_seed, src, cfg.affinity_with_port)
            )
        )

    def _forward(self, now: float, flow: Flow, payload: Payload) -> None:
        """Established client -> backend: count, refresh, copy, PROXY header if due, send."""
        assert flow.phase is _ESTABLISHED
        assert flow.backend_addr is not None
        cfg = flow.config
        flow.requests_seen += 1
        self._touch(flow, now + cfg.front_timeout)
        header = flow.proxy_header
        if header is None:
            data = bytes(payload)
        else:
            if not cfg.proxy_protocol_every_datagram:
                flow.proxy_header = None
            data = header + payload
        c = self.counters
        c.datagrams_in += 1
        c.bytes_in += len(payload)
        self._out.append(SendToBackend(flow.id, flow.backend_addr, data))
        if (cfg.requests and flow.requests_seen >= cfg.requests) or (
            cfg.responses and flow.responses_seen >= cfg.responses
        ):
            self._close_exhausted(flow)

    def _return(self, now: float, flow: Flow, payload: Payload) -> None:
        """Established backend -> client through the listener socket."""
        assert flow.phase is _ESTABLISHED
        assert flow.pending_payload is None
        cfg = flow.config
        flow.responses_seen += 1
        self._touch(flow, now + cfg.back_timeout)
        data = bytes(payload)
        c = self.counters
        c.datagrams_out += 1
        c.bytes_out += len(data)
        self._out.append(SendToClient(flow.id, flow.client, data))
        if cfg.responses and flow.responses_seen >= cfg.responses:
            self._close_exhausted(flow)
        else:
            assert not (cfg.requests and flow.requests_seen >= cfg.requests), "outlived requests"

    def _close_exhausted(self, flow: Flow) -> None:
        reason = flow.teardown_reason()
        assert reason is not None
        self._close(flow, reason)

    def _close(self, flow: Flow, reason: CloseReason) -> None:
        assert self._flows.get(flow.id) is flow, "closing a flow that is not stored"
        flow.set_phase(FlowPhase.CLOSING)
        del self._flows[flow.id]
        self._deadlines.forget()
        self._unmap(flow)
        self.counters.flows_evicted += 1
        self._out.append(FLOW_EVICTED)
        self._out.append(CloseFlow(flow.id, reason))
        self._timer_dirty = True
        assert flow.id not in self._flows
        assert self._table.get(flow.key) != flow.id

    def _reschedule(self) -> None:
        self._timer_dirty = False
        deadline = self._deadlines.settle()
        assert (deadline is None) == (not self._flows)
        if deadline != self._armed:
            self._armed = deadline
            if deadline is not None:
                self._out.append(ArmTimer(deadline))

    # -- invariants (listed in docs/udp.md, Invariants)

    def _after_call(self, now: float) -> None:
        if now < self._last_now:
            raise InvariantViolation(f"time went backwards: {now} < {self._last_now}")
        self._last_now = now
        self.check_invariants()

    def check_invariants(self) -> None:
        """Raise InvariantViolation on any broken invariant; works under `python -O` too."""

        def fail(what: str) -> None:
            raise InvariantViolation(what)

        flows, table = self._flows, self._table
        c = self.counters
        # 1 / gauge balance
        if c.flows_created - c.flows_evicted != len(flows):
            fail(f"created {c.flows_created} - evicted {c.flows_evicted} != {len(flows)} flows")
        # 2, 3: table values are live ids, injective, and each flow is mapped by its own key
        if len(set(table.values())) != len(table):
            fail("flow table is not injective")
        for key, fid in table.items():
            flow = flows.get(fid)
            if flow is None:
                fail(f"table key {key} maps to dead flow {fid}")
            elif flow.key != key:
                fail(f"table key {key} maps to flow {fid} keyed {flow.key}")
        if len(table) != len(flows):
            fail(f"{len(flows)} flows but {len(table)} table entries")
        for fid, flow in flows.items():
            if flow.id != fid or fid >= self._next_id:
                fail(f"flow id {flow.id} stored under {fid}")
            # 4, 5: phases and backend address
            if flow.phase is _AWAITING:
                if flow.backend_addr is not None or flow.pending_payload is None:
                    fail(f"awaiting flow {fid} has a backend or no buffered datagram")
            elif flow.phase is _ESTABLISHED:
                if flow.backend_addr is None or flow.pending_payload is not None:
                    fail(f"established flow {fid} lacks a backend or still buffers")
            else:
                fail(f"stored flow {fid} is {flow.phase}")
            # 6: a stored flow never has an exhausted cap (it would have been closed)
            if flow.teardown_reason() is not None:
                fail(f"flow {fid} outlived {flow.teardown_reason()}")
            if flow.requests_seen < 0 or flow.responses_seen < 0:
                fail(f"flow {fid} has negative counters")
        # 7
        if len(flows) > self._highest_max_flows:
            fail(f"{len(flows)} flows above the highest cap {self._highest_max_flows}")
        # 8: armed deadline <=> flows, equal to the minimum idle deadline
        if flows:
            lowest = min(f.idle_deadline for f in flows.values())
            if self._armed != lowest:
                fail(f"armed deadline {self._armed} != minimum idle deadline {lowest}")
        elif self._armed is not None:
            fail(f"deadline {self._armed} armed without flows")
        for problem in self._deadlines.violations():
            fail(problem)
        # 13: counters are monotonic
        snap = c.snapshot()
        if any(a < b for a, b in zip(snap, self._counter_snapshot, strict=True)):
            fail(f"a counter went backwards: {self._counter_snapshot} -> {snap}")
        self._counter_snapshot = snap
