"""A cluster of the routing state as the balancers see it: policy and backend descriptors."""

from __future__ import annotations

from sozu.command.addresses import to_sockaddr
from sozu.command.state import ConfigState
from sozu.command.types import Cluster
from sozu.worker.core.balancing import Backend, LoadBalancingPolicy


def policy_of(cluster: Cluster, *, udp: bool) -> LoadBalancingPolicy:
    """The cluster's policy; unset means HRW for a UDP cluster, ROUND_ROBIN otherwise."""
    return LoadBalancingPolicy(cluster.load_balancing or ("HRW" if udp else "ROUND_ROBIN"))


def backends_of(state: ConfigState, cluster_id: str) -> list[Backend]:
    return [
        Backend(b.backend_id, to_sockaddr(b.address), b.weight, bool(b.backup))
        for b in state.backends.get(cluster_id, ())
    ]
