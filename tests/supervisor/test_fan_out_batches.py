"""How a change is cut into writes to a worker: runs of at most FAN_OUT_BATCH requests, in
order, each activation alone (its sockets go first)."""

from __future__ import annotations

from sozu.command import requests as rq
from sozu.supervisor.mutations import FAN_OUT_BATCH, _batches


def test_runs_keep_the_order_and_isolate_activations() -> None:
    removes = [rq.RemoveCluster(cluster_id=f"c{i}") for i in range(FAN_OUT_BATCH * 2 + 5)]
    activate = rq.ActivateListener(address="127.0.0.1:80", proxy="HTTP")
    requests: list[rq.Request] = [*removes[:3], activate, activate, *removes[3:]]
    batches = list(_batches(requests))
    assert [request for batch in batches for request in batch] == requests
    assert all(0 < len(batch) <= FAN_OUT_BATCH for batch in batches)
    assert [batch for batch in batches if activate in batch] == [[activate], [activate]]
    assert [len(b) for b in batches] == [3, 1, 1, FAN_OUT_BATCH, FAN_OUT_BATCH, 2]
    assert list(_batches([])) == []
