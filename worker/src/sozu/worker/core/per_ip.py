"""Frontend connections per (cluster, client IP), against `max_connections_per_ip`.

Upstream's rule (see docs/http.md, Connections per client IP): each frontend connection
routed to a cluster holds one slot for (cluster, source IP) until it ends, checked after
routing and before a backend is chosen. A cluster's own `max_connections_per_ip` wins, even 0
(unlimited); None inherits the worker's process-wide value (ServerConfig, 0 = unlimited). The
source IP is the PROXY protocol source when there is one. An HTTP refusal is a 429 whose
`Retry-After` is the cluster's `retry_after`, else the process-wide one (0: no header); a TCP
refusal closes the connection.

Slots are counted whatever the limit, so that a limit set later applies to the connections
already open.
"""

from __future__ import annotations

from sozu.command.types import Cluster

DEFAULT_RETRY_AFTER = 60


class PerIpLimits:
    """The slots held in one worker, and the process-wide defaults."""

    def __init__(self) -> None:
        self.default_limit = 0
        self.default_retry_after = DEFAULT_RETRY_AFTER
        self._held: dict[tuple[str, str], int] = {}

    def configure(self, limit: int, retry_after: int) -> None:
        self.default_limit = limit
        self.default_retry_after = retry_after

    def limit(self, cluster: Cluster) -> int:
        """The cluster's limit; 0 is unlimited."""
        own = cluster.max_connections_per_ip
        return self.default_limit if own is None else own

    def retry_after(self, cluster: Cluster) -> int:
        own = cluster.retry_after
        return self.default_retry_after if own is None else own

    def take(self, cluster: Cluster, ip: str) -> bool:
        """Hold one slot of (cluster, ip); False, holding nothing, when the limit is reached."""
        key = (cluster.cluster_id, ip)
        held = self._held.get(key, 0)
        limit = self.limit(cluster)
        if limit and held >= limit:
            return False
        self._held[key] = held + 1
        return True

    def give(self, cluster_id: str, ip: str) -> None:
        """Release a slot `take` granted."""
        key = (cluster_id, ip)
        remaining = self._held[key] - 1
        if remaining:
            self._held[key] = remaining
        else:
            del self._held[key]

    def held(self, cluster_id: str, ip: str) -> int:
        return self._held.get((cluster_id, ip), 0)

    def __len__(self) -> int:
        return len(self._held)
