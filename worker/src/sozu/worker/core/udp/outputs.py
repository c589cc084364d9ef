"""What the flow core asks its shell to do, plus the reason enums (docs/udp.md, The flow core).

Outputs are frozen, tagged msgspec Structs; the shell dispatches with `match`. Payload-free
outputs (drops, flow metrics) are prebuilt singletons so drop paths allocate nothing.

Metrics: per-datagram figures (datagrams/bytes in and out, drops by reason) are plain counters
on the core (`FlowManager.counters`), never outputs, so the established-flow path emits a single
record. `Metric` outputs notify flow lifecycle events; `Drop` outputs carry the reason for
logging. Neither is to be counted again by the shell: the counters are authoritative, which
is how each drop is counted exactly once.
"""

from __future__ import annotations

import enum
from typing import TypeAlias

import msgspec

from sozu.worker.core.balancing.backend import Address


class DropReason(enum.StrEnum):
    INVALID = "invalid"  # empty, or rejected by the key extractor
    TRUNCATED = "truncated"  # longer than max_rx_datagram_size
    NO_BACKEND = "no_backend"  # listener unrouted
    SHED = "shed"  # cap, draining, or racing a closing flow
    UNKNOWN_FLOW = "unknown_flow"  # unknown flow id, or flow not established


class CloseReason(enum.StrEnum):
    IDLE = "idle"
    RESPONSES_REACHED = "responses_reached"
    REQUESTS_REACHED = "requests_reached"
    DRAIN = "drain"
    ABORTED = "aborted"


class MetricEvent(enum.StrEnum):
    FLOW_CREATED = "flow_created"
    FLOW_EVICTED = "flow_evicted"
    FLOW_SHED = "flow_shed"


class Output(msgspec.Struct, frozen=True, gc=False, tag=True):
    pass


class SelectBackend(Output, frozen=True):
    """Run the cluster's balancer on `key`; answer with BackendResolved or abort the flow."""

    flow: int
    cluster: str
    key: int


class OpenUpstream(Output, frozen=True):
    """Open a socket connected to `addr` for `flow` (bound to the backend's family)."""

    flow: int
    backend: str
    addr: Address


class SendToBackend(Output, frozen=True):
    """`send()` on the flow's connected socket; any PROXY v2 header is already prepended."""

    flow: int
    dst: Address
    payload: bytes


class SendToClient(Output, frozen=True):
    """`sendto(dst)` through the listener socket; `dst` is the flow's real client."""

    flow: int
    dst: Address
    payload: bytes


class ArmTimer(Output, frozen=True):
    """Replace the listener's single timer with this absolute deadline."""

    deadline: float


class Metric(Output, frozen=True):
    event: MetricEvent


class CloseFlow(Output, frozen=True):
    """Close the flow's upstream socket and forget it."""

    flow: int
    reason: CloseReason


class Drop(Output, frozen=True):
    """A datagram was discarded (already counted in the core's counters)."""

    reason: DropReason


OutputT: TypeAlias = (
    SelectBackend
    | OpenUpstream
    | SendToBackend
    | SendToClient
    | ArmTimer
    | Metric
    | CloseFlow
    | Drop
)

DROP: dict[DropReason, Drop] = {r: Drop(r) for r in DropReason}
FLOW_CREATED = Metric(MetricEvent.FLOW_CREATED)
FLOW_EVICTED = Metric(MetricEvent.FLOW_EVICTED)
FLOW_SHED = Metric(MetricEvent.FLOW_SHED)
