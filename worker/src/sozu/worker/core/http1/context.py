"""What an HTTP/1.1 session core reads besides its own bytes, sans-io.

`ListenerContext` is one listener as its sessions see it: configuration (timeouts as plain
floats), router, answers, scheme, public address, strict SNI, HSTS, counters. `SharedContext`
is what every HTTP/HTTPS listener of a worker shares: the cluster lookup, sticky tables, request
ids, per-IP slots, access log sink, response-time histograms, the drain. Clock and randomness
come in as callables (the id generator carries its own), so a simulation can drive them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Literal

from sozu.command.addresses import to_sockaddr
from sozu.command.metrics import Histogram
from sozu.command.types import Cluster, HstsConfig, HttpListenerConfig, HttpsListenerConfig
from sozu.worker.core.balancing.backend import Backend
from sozu.worker.core.http.answers import AnswerSet
from sozu.worker.core.http.policy import hsts_value
from sozu.worker.core.http.request_id import UlidGenerator
from sozu.worker.core.http.router import Router
from sozu.worker.core.http1.counters import HttpCounters
from sozu.worker.core.per_ip import PerIpLimits

if TYPE_CHECKING:
    # Only its pure methods are called (choose, usable, opened, closed, connection_*).
    from sozu.worker.core.clusters import TcpCluster

# Upstream's buffer holds the whole head; a bigger head is refused (431).
DEFAULT_MAX_HEAD: Final = 16384
# Upstream's `buffer_size`: how much a session queues for one side before it stops reading
# the other.
DEFAULT_BUFFER_LIMIT: Final = 16393
DEFAULT_DRAIN_TIMEOUT: Final = 30.0
# Idle backend connections a worker's sessions may keep between requests (beyond: pooled).
DEFAULT_MAX_KEPT_BACKS: Final = 256

ClusterLookup = Callable[[str], "tuple[Cluster, TcpCluster] | None"]


class SharedContext:
    """What the HTTP/HTTPS sessions of one worker share."""

    __slots__ = (
        "access_log",
        "backend_response_seconds",
        "backend_to_sticky",
        "cluster_lookup",
        "drain_deadline",
        "drain_timeout",
        "draining",
        "histogram",
        "ids",
        "kept_backs",
        "kept_reused",
        "max_kept_backs",
        "per_ip",
        "pid",
        "response_seconds",
        "sticky_to_backend",
        "tag",
        "time_ns",
    )

    def __init__(
        self,
        cluster_lookup: ClusterLookup,
        *,
        ids: UlidGenerator,
        time_ns: Callable[[], int],
        per_ip: PerIpLimits | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        pid: int = 0,
        tag: str = "WRK",
    ) -> None:
        self.cluster_lookup = cluster_lookup
        self.ids = ids
        # Wall clock (Unix ns), for access log lines only.
        self.time_ns = time_ns
        self.per_ip = per_ip if per_ip is not None else PerIpLimits()
        # cluster id -> sticky value -> backend id, and (cluster id, backend id) -> value
        self.sticky_to_backend: dict[str, dict[str, str]] = {}
        self.backend_to_sticky: dict[tuple[str, str], str] = {}
        self.access_log: Callable[[str], None] | None = None
        self.histogram: Callable[[str, str], Histogram] | None = None
        self.response_seconds: dict[str, Histogram] = {}
        self.backend_response_seconds: dict[str, Histogram] = {}
        self.pid = pid
        self.tag = tag
        self.drain_timeout = drain_timeout
        self.draining = False
        self.drain_deadline = math.inf
        # Idle backend connections sessions keep between their requests (Http1Session.kept),
        # at most `max_kept_backs` in the worker (beyond, they go to the pool), and the
        # requests sent on one again.
        self.kept_backs = 0
        self.max_kept_backs = DEFAULT_MAX_KEPT_BACKS
        self.kept_reused = 0

    def start_drain(self, now: float) -> None:
        """The worker drains from `now`: sessions started later drain from their start, and
        every session's idle wait ends at the same deadline."""
        if not self.draining:
            self.draining = True
            self.drain_deadline = now + self.drain_timeout

    def check_invariants(self) -> None:
        assert self.drain_timeout >= 0
        assert self.draining == (self.drain_deadline != math.inf)
        assert 0 <= self.kept_backs <= self.max_kept_backs
        assert self.kept_reused >= 0
        for (cluster_id, backend_id), value in self.backend_to_sticky.items():
            assert cluster_id in self.sticky_to_backend, cluster_id
            assert value in self.sticky_to_backend[cluster_id], (cluster_id, backend_id)
        for cluster_id, histogram in self.response_seconds.items():
            assert cluster_id in self.backend_response_seconds, cluster_id
            assert sum(histogram.counts) == sum(self.backend_response_seconds[cluster_id].counts), (
                cluster_id
            )


class ListenerContext:
    """One HTTP or HTTPS listener as its session cores read it on every request."""

    __slots__ = (
        "answers",
        "back_timeout",
        "buffer_limit",
        "config",
        "connect_timeout",
        "counters",
        "elide_x_real_ip",
        "front_timeout",
        "hsts_default",
        "https",
        "max_head",
        "public_ip",
        "public_port",
        "request_timeout",
        "router",
        "scheme",
        "send_x_real_ip",
        "shared",
        "sozu_id_header",
        "sticky_name",
        "strict_sni",
        "warnings",
    )

    def __init__(
        self,
        config: HttpListenerConfig,
        router: Router,
        shared: SharedContext,
        *,
        counters: HttpCounters | None = None,
        max_head: int = DEFAULT_MAX_HEAD,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
    ) -> None:
        assert max_head > 4
        assert buffer_limit >= max_head, "a whole head must fit in the buffer"
        self.router = router
        self.shared = shared
        self.counters = counters if counters is not None else HttpCounters()
        self.max_head = max_head
        self.buffer_limit = buffer_limit
        https = isinstance(config, HttpsListenerConfig)
        self.https = https
        self.scheme: Literal["http", "https"] = "https" if https else "http"
        self.configure(config)

    def configure(self, config: HttpListenerConfig) -> None:
        """New listener settings for the next requests (the scheme never changes)."""
        assert isinstance(config, HttpsListenerConfig) == self.https
        self.config = config
        self.front_timeout = float(config.front_timeout)
        self.back_timeout = float(config.back_timeout)
        self.connect_timeout = float(config.connect_timeout)
        self.request_timeout = float(config.request_timeout)
        self.answers = AnswerSet(config.answers, config.sozu_id_header)
        # For the shell to log: templates that could not be read or parsed.
        self.warnings = list(self.answers.warnings)
        self.sozu_id_header = config.sozu_id_header.encode()
        self.sticky_name = config.sticky_name.encode()
        self.elide_x_real_ip = config.elide_x_real_ip
        self.send_x_real_ip = config.send_x_real_ip
        public = to_sockaddr(config.public_address or config.address)
        self.public_ip, self.public_port = public[0], public[1]
        self.strict_sni = False
        self.hsts_default: bytes | None = None
        if isinstance(config, HttpsListenerConfig):
            self.strict_sni = config.strict_sni_binding
            self.hsts_default = hsts_value(config.hsts)

    # -- what sessions read

    def sticky_id(self, cluster_id: str, backend_id: str) -> str:
        return self.shared.backend_to_sticky.get((cluster_id, backend_id), backend_id)

    def sticky_backend(self, cluster: TcpCluster, value: str, now: float) -> Backend | None:
        backend_id = self.shared.sticky_to_backend.get(cluster.cluster_id, {}).get(value)
        return None if backend_id is None else cluster.usable(backend_id, now)

    def hsts_for(self, frontend_hsts: HstsConfig | None) -> bytes | None:
        """The HSTS value of a frontend (its own policy, else the listener's)."""
        if frontend_hsts is not None:
            return hsts_value(frontend_hsts)
        return self.hsts_default

    def observe(self, cluster_id: str, total: float, backend: float) -> None:
        shared = self.shared
        if shared.histogram is None:
            return
        histogram = shared.response_seconds.get(cluster_id)
        if histogram is None:
            histogram = shared.response_seconds[cluster_id] = shared.histogram(
                "sozu_http_response_time_seconds", cluster_id
            )
        histogram.observe(total)
        histogram = shared.backend_response_seconds.get(cluster_id)
        if histogram is None:
            histogram = shared.backend_response_seconds[cluster_id] = shared.histogram(
                "sozu_http_backend_response_time_seconds", cluster_id
            )
        histogram.observe(backend)

    def check_invariants(self) -> None:
        assert self.scheme == ("https" if self.https else "http")
        assert self.https or (not self.strict_sni and self.hsts_default is None)
        for timeout in (
            self.front_timeout,
            self.back_timeout,
            self.connect_timeout,
            self.request_timeout,
        ):
            assert 0 <= timeout < math.inf, timeout
        assert 0 < self.public_port < 65536
        assert self.sozu_id_header
        assert self.sticky_name
        assert self.buffer_limit >= self.max_head > 4
        self.counters.check_invariants()
        self.shared.check_invariants()
