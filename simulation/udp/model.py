"""Reference model of the UDP flow core, written from docs/udp.md as plainly as possible.

The simulator feeds every input to both the core and this model and requires identical output
sequences. The model shares no state-keeping code with the core: flows are found by scanning,
the minimum deadline is recomputed from scratch, expiry is a sort. Order contracts it pins
down: a tick closes flows by (deadline, id); close-all closes by id; ArmTimer is emitted at most
once per call, last, when the minimum deadline changed to a non-None value (a tick clears the
armed value first, so it always re-arms while flows remain).
"""

from __future__ import annotations

from dataclasses import dataclass

from sozu.worker.core.balancing.backend import Address
from sozu.worker.core.udp.config import ClusterConfig
from sozu.worker.core.udp.counters import UdpCounters
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
    ArmTimer,
    CloseFlow,
    CloseReason,
    Drop,
    DropReason,
    Metric,
    MetricEvent,
    OpenUpstream,
    OutputT,
    SelectBackend,
    SendToBackend,
    SendToClient,
)
from sozu.worker.core.udp.proxy_protocol import build_header


@dataclass
class ModelFlow:
    id: int
    key: FlowKey
    client: Address
    config: ClusterConfig
    deadline: float
    pending: bytes | None
    established: bool = False
    backend_id: str | None = None
    backend_addr: Address | None = None
    requests: int = 0
    responses: int = 0
    header_due: bool = False


class ReferenceModel:
    def __init__(
        self, cluster: ClusterConfig, *, max_flows: int, max_rx_datagram_size: int, hash_seed: int
    ) -> None:
        self.cluster = cluster
        self.max_flows = max_flows
        self.max_rx = max_rx_datagram_size
        self.hash_seed = hash_seed
        self.draining = False
        self.flows: dict[int, ModelFlow] = {}
        self.next_id = 0
        self.armed: float | None = None
        self.counters = UdpCounters()
        self._out: list[OutputT] = []

    # -- helpers

    def _find(self, key: FlowKey) -> ModelFlow | None:
        for flow in self.flows.values():
            if flow.key == key:
                return flow
        return None

    def _drop(self, reason: DropReason) -> None:
        self.counters.dropped += 1
        self.counters.dropped_by_reason[reason] += 1
        self._out.append(Drop(reason))

    def _close(self, flow: ModelFlow, reason: CloseReason) -> None:
        del self.flows[flow.id]
        self.counters.flows_evicted += 1
        self._out.append(Metric(MetricEvent.FLOW_EVICTED))
        self._out.append(CloseFlow(flow.id, reason))

    def _close_if_exhausted(self, flow: ModelFlow) -> None:
        cfg = flow.config
        if cfg.responses > 0 and flow.responses >= cfg.responses:
            self._close(flow, CloseReason.RESPONSES_REACHED)
        elif cfg.requests > 0 and flow.requests >= cfg.requests:
            self._close(flow, CloseReason.REQUESTS_REACHED)

    def _forward(self, now: float, flow: ModelFlow, payload: bytes) -> None:
        assert flow.backend_addr is not None
        flow.requests += 1
        flow.deadline = now + flow.config.front_timeout
        self.counters.datagrams_in += 1
        self.counters.bytes_in += len(payload)
        data = payload
        if flow.header_due:
            data = build_header(flow.client, flow.backend_addr) + payload
            flow.header_due = flow.config.proxy_protocol_every_datagram
        self._out.append(SendToBackend(flow.id, flow.backend_addr, data))
        self._close_if_exhausted(flow)

    def minimum_deadline(self) -> float | None:
        return min((f.deadline for f in self.flows.values()), default=None)

    def _rearm(self) -> None:
        lowest = self.minimum_deadline()
        if lowest != self.armed:
            self.armed = lowest
            if lowest is not None:
                self._out.append(ArmTimer(lowest))

    # -- inputs

    def apply(self, now: float, inp: InputT) -> list[OutputT]:
        """The outputs the core must produce for `inp` at `now`, in order."""
        self._out = []
        if isinstance(inp, ClientDatagram):
            self._client(now, inp.src, inp.payload)
            self._rearm()
        elif isinstance(inp, BackendDatagram):
            self._backend(now, inp.flow, inp.payload)
            self._rearm()
        elif isinstance(inp, BackendResolved):
            self._resolved(now, inp.flow, inp.backend, inp.addr)
            self._rearm()
        elif isinstance(inp, Timeout):
            self.armed = None
            expired = [f for f in self.flows.values() if f.deadline <= now]
            for flow in sorted(expired, key=lambda f: (f.deadline, f.id)):
                self._close(flow, CloseReason.IDLE)
            self._rearm()
        elif isinstance(inp, AbortFlow):
            victim = self.flows.get(inp.flow)
            if victim is not None:
                self._close(victim, inp.reason)
            self._rearm()
        elif isinstance(inp, CloseAll):
            for fid in sorted(self.flows):
                self._close(self.flows[fid], CloseReason.DRAIN)
            self.armed = None
        elif isinstance(inp, SetCluster):
            self.cluster = inp.config
        elif isinstance(inp, SetMaxFlows):
            self.max_flows = inp.max_flows
        elif isinstance(inp, SetMaxRxDatagramSize):
            self.max_rx = inp.size
        elif isinstance(inp, Drain):
            self.draining = True
        else:  # pragma: no cover
            raise TypeError(inp)
        return self._out

    def _client(self, now: float, src: Address, payload: bytes) -> None:
        cfg = self.cluster
        if len(payload) > self.max_rx:
            self._drop(DropReason.TRUNCATED)
            return
        if cfg.cluster == "":
            self._drop(DropReason.NO_BACKEND)
            return
        if len(payload) == 0:
            self._drop(DropReason.INVALID)
            return
        key = (src[0], src[1] if cfg.affinity_with_port else 0)
        flow = self._find(key)
        if flow is not None:
            if flow.established:
                self._forward(now, flow, payload)
            else:
                flow.pending = payload
                flow.deadline = now + flow.config.front_timeout
                self.counters.buffered_overwritten += 1
            return
        if self.draining:
            self._drop(DropReason.SHED)
            return
        if len(self.flows) >= self.max_flows:
            self.counters.flows_shed += 1
            self._out.append(Metric(MetricEvent.FLOW_SHED))
            self._drop(DropReason.SHED)
            return
        fid = self.next_id
        self.next_id += 1
        self.flows[fid] = ModelFlow(
            id=fid,
            key=key,
            client=src,
            config=cfg,
            deadline=now + cfg.front_timeout,
            pending=payload,
            header_due=cfg.send_proxy_protocol,
        )
        self.counters.flows_created += 1
        self._out.append(Metric(MetricEvent.FLOW_CREATED))
        key_hash = affinity_hash(self.hash_seed, src, cfg.affinity_with_port)
        self._out.append(SelectBackend(fid, cfg.cluster, key_hash))

    def _backend(self, now: float, fid: int, payload: bytes) -> None:
        if len(payload) > self.max_rx:
            self._drop(DropReason.TRUNCATED)
            return
        flow = self.flows.get(fid)
        if flow is None or not flow.established:
            self._drop(DropReason.UNKNOWN_FLOW)
            return
        flow.responses += 1
        flow.deadline = now + flow.config.back_timeout
        self.counters.datagrams_out += 1
        self.counters.bytes_out += len(payload)
        self._out.append(SendToClient(fid, flow.client, payload))
        self._close_if_exhausted(flow)

    def _resolved(self, now: float, fid: int, backend: str, addr: Address) -> None:
        flow = self.flows.get(fid)
        if flow is None:
            self._drop(DropReason.UNKNOWN_FLOW)
            return
        if flow.established:
            return
        flow.established = True
        flow.backend_id = backend
        flow.backend_addr = addr
        self._out.append(OpenUpstream(fid, backend, addr))
        pending = flow.pending
        flow.pending = None
        assert pending is not None
        self._forward(now, flow, pending)
