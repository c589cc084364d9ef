"""The flow core's metric counters, plain integers the shell snapshots (docs/metrics.md, UDP)."""

from __future__ import annotations

import msgspec

from sozu.worker.core.udp.outputs import DropReason


def _zero_drops() -> dict[DropReason, int]:
    return dict.fromkeys(DropReason, 0)


class UdpCounters(msgspec.Struct, gc=False):
    """Monotonic counters; `active_flows` is derived so the gauge can never underflow."""

    datagrams_in: int = 0  # client -> backend forwards
    bytes_in: int = 0  # payload bytes, PROXY header excluded
    datagrams_out: int = 0  # backend -> client returns
    bytes_out: int = 0
    flows_created: int = 0
    flows_evicted: int = 0
    flows_shed: int = 0  # cap sheds only (not drain sheds)
    dropped: int = 0  # every core drop, once
    dropped_by_reason: dict[DropReason, int] = msgspec.field(default_factory=_zero_drops)
    buffered_overwritten: int = 0  # datagrams replaced in a flow's one-slot buffer

    @property
    def active_flows(self) -> int:
        return self.flows_created - self.flows_evicted

    def snapshot(self) -> tuple[int, ...]:
        return (
            self.datagrams_in,
            self.bytes_in,
            self.datagrams_out,
            self.bytes_out,
            self.flows_created,
            self.flows_evicted,
            self.flows_shed,
            self.dropped,
            self.buffered_overwritten,
            *self.dropped_by_reason.values(),
        )
