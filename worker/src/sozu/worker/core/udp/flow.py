"""Per-flow state of the UDP core (docs/udp.md, Flows) and its read-only view.

Phases: AWAITING_BACKEND -> ESTABLISHED -> CLOSING, plus AWAITING_BACKEND -> CLOSING; no other
edge. CLOSING is transient: the close path marks it and unlinks the flow in the same call, so a
stored flow is never CLOSING.
"""

from __future__ import annotations

import enum

import msgspec

from sozu.worker.core.balancing.backend import Address
from sozu.worker.core.udp.config import ClusterConfig
from sozu.worker.core.udp.flow_key import FlowKey
from sozu.worker.core.udp.outputs import CloseReason

TIMER_GEN_MASK = 0xFFFF_FFFF


class FlowPhase(enum.StrEnum):
    AWAITING_BACKEND = "awaiting_backend"
    ESTABLISHED = "established"
    CLOSING = "closing"


LEGAL_EDGES = frozenset(
    {
        (FlowPhase.AWAITING_BACKEND, FlowPhase.ESTABLISHED),
        (FlowPhase.AWAITING_BACKEND, FlowPhase.CLOSING),
        (FlowPhase.ESTABLISHED, FlowPhase.CLOSING),
    }
)


def teardown_reason(config: ClusterConfig, requests: int, responses: int) -> CloseReason | None:
    """The cap a flow has exhausted, responses first (both tripping together -> responses)."""
    if config.responses and responses >= config.responses:
        return CloseReason.RESPONSES_REACHED
    if config.requests and requests >= config.requests:
        return CloseReason.REQUESTS_REACHED
    return None


class Flow(msgspec.Struct, kw_only=True, gc=False):
    """Mutable flow record, owned by the FlowManager; ids are monotonic, never reused.

    `heap_key` is the deadline of the flow's live entry in the deadline heap, a lower bound of
    `idle_deadline` (see `deadlines`). `proxy_header` holds the PROXY v2 header while one is
    still due on the next forward (`first_upstream_pending` in upstream terms).
    """

    id: int
    key: FlowKey
    client: Address
    config: ClusterConfig
    created_at: float
    idle_deadline: float
    heap_key: float
    phase: FlowPhase = FlowPhase.AWAITING_BACKEND
    backend_id: str | None = None
    backend_addr: Address | None = None
    requests_seen: int = 0
    responses_seen: int = 0
    timer_gen: int = 0
    pending_payload: bytes | None = None
    proxy_header: bytes | None = None

    def set_phase(self, phase: FlowPhase) -> None:
        assert (self.phase, phase) in LEGAL_EDGES, f"illegal edge {self.phase} -> {phase}"
        self.phase = phase

    def teardown_reason(self) -> CloseReason | None:
        return teardown_reason(self.config, self.requests_seen, self.responses_seen)

    def view(self) -> FlowView:
        return FlowView(
            id=self.id,
            key=self.key,
            client=self.client,
            config=self.config,
            created_at=self.created_at,
            phase=self.phase,
            backend_id=self.backend_id,
            backend_addr=self.backend_addr,
            requests_seen=self.requests_seen,
            responses_seen=self.responses_seen,
            idle_deadline=self.idle_deadline,
            timer_gen=self.timer_gen,
            pending_payload=self.pending_payload,
            proxy_header_pending=self.proxy_header is not None,
        )


class FlowView(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one flow for tests, logs and status queries."""

    id: int
    key: FlowKey
    client: Address
    config: ClusterConfig
    created_at: float
    phase: FlowPhase
    backend_id: str | None
    backend_addr: Address | None
    requests_seen: int
    responses_seen: int
    idle_deadline: float
    timer_gen: int
    pending_payload: bytes | None
    proxy_header_pending: bool
