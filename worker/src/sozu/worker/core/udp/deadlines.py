"""The idle-deadline index of the UDP core: an exact minimum at O(1) per established datagram.

A binary heap of `(deadline, flow_id)` entries with lazy repair. Each live flow owns one *live*
entry whose deadline is `flow.heap_key`, a lower bound of `flow.idle_deadline`; any entry that
does not match its flow's `heap_key` (or whose flow is gone) is stale and discarded when it
surfaces. Pushing a deadline later (the common touch) changes nothing in the heap; only when the
touched flow owns the top entry, or its deadline moves earlier, does the minimum need repair.
`settle()` makes the top entry exact, so the minimum idle deadline is `heap[0][0]`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping

from sozu.worker.core.udp.flow import Flow

# Rebuild once stale entries outnumber live ones by this margin (amortised O(1) per close).
_COMPACT_SLACK = 64


class DeadlineHeap:
    __slots__ = ("_flows", "_heap")

    def __init__(self, flows: Mapping[int, Flow]) -> None:
        self._flows = flows
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def heap(self) -> list[tuple[float, int]]:
        """The heap list itself (never replaced: `rebuild` works in place)."""
        return self._heap

    def entries(self) -> Iterator[tuple[float, int]]:
        return iter(self._heap)

    def add(self, flow: Flow) -> bool:
        """Index a new flow; return True when it may have become the minimum."""
        flow.heap_key = flow.idle_deadline
        heapq.heappush(self._heap, (flow.idle_deadline, flow.id))
        return self._heap[0][1] == flow.id

    def touch(self, flow: Flow, deadline: float) -> bool:
        """Record `flow.idle_deadline = deadline` (already set); True if the minimum may move."""
        heap = self._heap
        if deadline < flow.heap_key:
            flow.heap_key = deadline
            heapq.heappush(heap, (deadline, flow.id))
            if len(heap) > 2 * len(self._flows) + _COMPACT_SLACK:
                self.rebuild()
            return True
        return heap[0][1] == flow.id

    def settle(self, not_before: float | None = -math.inf) -> float | None:
        """Repair the top until it is exact; return the minimum idle deadline or None.

        `not_before`: the deadline armed when a fast path refreshed the flow holding the
        minimum (never None: a flow is live, so a deadline is armed). The new minimum is
        never earlier (a fast path refuses a deadline moving earlier), so a shell timer armed
        for it fires early once, reads the new one from `poll_timeout()` and waits again."""
        assert not_before is not None, "a fast path found no armed deadline"
        heap = self._heap
        flows = self._flows
        while heap:
            deadline, fid = heap[0]
            flow = flows.get(fid)
            if flow is None or flow.heap_key != deadline:
                heapq.heappop(heap)
            elif flow.idle_deadline != deadline:
                flow.heap_key = flow.idle_deadline
                heapq.heapreplace(heap, (flow.idle_deadline, fid))
            else:
                assert deadline >= not_before, "a fast path moved the minimum earlier"
                return deadline
        assert not_before == -math.inf, "a fast path's flow is missing from the heap"
        return None

    def pop_expired(self, now: float) -> Flow | None:
        """Unindex and return the flow with the earliest deadline if it is `<= now`."""
        deadline = self.settle()
        if deadline is None or deadline > now:
            return None
        fid = heapq.heappop(self._heap)[1]
        return self._flows[fid]

    def forget(self) -> None:
        """A flow left the table: its entry is now stale; compact once stale ones dominate."""
        if len(self._heap) > 2 * len(self._flows) + _COMPACT_SLACK:
            self.rebuild()

    def clear(self) -> None:
        self._heap.clear()  # in place, as `rebuild`

    def rebuild(self) -> None:
        heap = []
        for flow in self._flows.values():
            flow.heap_key = flow.idle_deadline
            heap.append((flow.idle_deadline, flow.id))
        heapq.heapify(heap)
        self._heap[:] = heap  # in place: the manager's fast path holds this list

    def violations(self) -> list[str]:
        """Consistency problems, for `FlowManager.check_invariants` (empty when sound)."""
        problems = []
        live = {}
        for deadline, fid in self._heap:
            flow = self._flows.get(fid)
            if flow is not None and flow.heap_key == deadline:
                live[fid] = deadline
        for fid, flow in self._flows.items():
            if fid not in live:
                problems.append(f"flow {fid} has no live deadline entry")
            elif flow.heap_key > flow.idle_deadline:
                problems.append(f"flow {fid} heap_key {flow.heap_key} > {flow.idle_deadline}")
        return problems
