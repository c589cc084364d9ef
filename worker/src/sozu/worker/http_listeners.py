"""A worker's HTTP and HTTPS listeners: routers, TLS contexts, shared pool, metrics.

Each active listener is an `HttpListenerProxy` with the router of its frontends (rebuilt from
the state when a frontend of its address changes) and, for HTTPS, its `ListenerTls` (reloaded
from the state when a certificate of its address changes: new handshakes see it at once, open
connections keep theirs). Clusters are the worker's `TcpCluster`s, looked up per request.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import trio

from sozu.command.metrics import Histogram, MetricsRegistry
from sozu.command.state import ConfigState
from sozu.command.types import Cluster, HttpListenerConfig, HttpsListenerConfig
from sozu.worker.connection_limit import ConnectionLimit
from sozu.worker.http.health_prober import HttpHealthChecks
from sozu.worker.http.listener import HttpCounters, HttpListenerProxy, HttpShared
from sozu.worker.http.router import Router
from sozu.worker.http.tls_contexts import ListenerTls
from sozu.worker.log_targets import LineSink, open_line_sink
from sozu.worker.per_ip import PerIpLimits
from sozu.worker.tcp.backends import TcpCluster

log = logging.getLogger("sozu.worker")


# Prometheus name -> HttpCounters attribute, for every listener.
_LISTENER_COUNTERS = (
    ("sozu_http_connections_total", "accepted"),
    ("sozu_http_requests_total", "requests"),
    ("sozu_http_bytes_in_total", "bytes_in"),
    ("sozu_http_bytes_out_total", "bytes_out"),
    ("sozu_http_frontend_parse_errors_total", "parse_errors"),
    ("sozu_http_backend_parse_errors_total", "backend_parse_errors"),
    ("sozu_http_retries_total", "retries"),
    ("sozu_http_backend_connect_errors_total", "backend_errors"),
    ("sozu_http_websocket_upgrades_total", "websockets"),
    ("sozu_http_sni_authority_mismatch_total", "sni_mismatches"),
    ("sozu_https_handshakes_total", "tls_handshakes"),
    ("sozu_http_rejected_per_ip_total", "rejected_per_ip"),
    ("sozu_http_backend_stale_connections_total", "stale_connections"),
    ("sozu_https_alpn_rejected_http11_disabled_total", "alpn_rejected"),
    ("sozu_http_pipelined_unanswered_total", "pipelined_unanswered"),
)
_LISTENER_GAUGES = (
    ("sozu_http_active_connections", "active"),
    ("sozu_http_websocket_active", "websockets_active"),
)


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class HttpListeners:
    """The HTTP and HTTPS listeners a worker serves."""

    def __init__(
        self,
        state: ConfigState,
        registry: MetricsRegistry,
        limit: Callable[[], ConnectionLimit],
        clusters: dict[str, TcpCluster],
        on_event: Callable[[str, str, str | None], None],
        per_ip: PerIpLimits | None = None,
    ) -> None:
        self.state = state
        self.per_ip = per_ip if per_ip is not None else PerIpLimits()
        self.registry = registry
        self._limit = limit
        self._clusters = clusters
        self._served: dict[str, HttpListenerProxy] = {}
        # Counters outlive a deactivation so that totals never go back.
        self._counters: dict[str, HttpCounters] = {}
        self.shared: HttpShared | None = None
        self._tasks: trio.Nursery | None = None
        self._handlers: trio.Nursery | None = None
        self.health = HttpHealthChecks(state, clusters, on_event)
        self._access_sink: LineSink | None = None
        self._access_tag = "WRK"

    def start(self, tasks: trio.Nursery, handlers: trio.Nursery) -> None:
        self._tasks, self._handlers = tasks, handlers
        self.health.start(tasks)

    def configure_access_logs(self, target: str | None, worker_id: int) -> None:
        self._access_sink = None if target is None else open_line_sink(target)
        self._access_tag = f"WRK-{worker_id:02d}"
        if self.shared is not None:
            self.shared.access_log = self._access_sink
            self.shared.tag = self._access_tag

    def _shared(self) -> HttpShared:
        if self.shared is None:
            self.shared = HttpShared(self._limit(), self._cluster_lookup, self.per_ip)

            def histogram(name: str, cluster_id: str) -> Histogram:
                return self.registry.histogram(name, cluster=cluster_id)

            self.shared.histogram = histogram
            self.shared.access_log = self._access_sink
            self.shared.tag = self._access_tag
            self.refresh_clusters()
        return self.shared

    def _cluster_lookup(self, cluster_id: str) -> tuple[Cluster, TcpCluster] | None:
        config = self.state.clusters.get(cluster_id)
        cluster = self._clusters.get(cluster_id)
        if config is None or cluster is None:
            return None
        return config, cluster

    def fronted_clusters(self) -> set[str]:
        """Clusters that HTTP or HTTPS frontends point at."""
        state = self.state
        return {
            front.cluster_id
            for fronts in (state.http_fronts, state.https_fronts)
            for front in fronts.values()
            if front.cluster_id is not None
        }

    def _router(self, address: str, https: bool) -> Router:
        fronts = self.state.https_fronts if https else self.state.http_fronts
        return Router.build(f for f in fronts.values() if f.address == address)

    # -- listeners

    async def start_listener(
        self, address: str, config: HttpListenerConfig, sock: socket.socket
    ) -> None:
        assert self._tasks is not None
        https = isinstance(config, HttpsListenerConfig)
        tls = None
        if isinstance(config, HttpsListenerConfig):
            tls = ListenerTls.from_state(config, self.state)
            for warning in tls.warnings:
                log.warning("HTTPS listener %s: %s", address, warning)
        listener = HttpListenerProxy(
            sock, config, self._shared(), self._router(address, https), tls
        )
        counters = self._counters.setdefault(address, listener.counters)
        listener.counters = counters
        self._served[address] = listener
        assert self._handlers is not None
        await self._tasks.start(listener.serve, self._handlers)
        log.info("serving %s listener %s", "HTTPS" if https else "HTTP", address)

    async def stop_listener(self, address: str) -> bool:
        served = self._served.pop(address, None)
        if served is None:
            return False
        await served.close()
        return True

    def served_listener(self, address: str) -> HttpListenerProxy | None:
        return self._served.get(address)

    def served_sockets(self) -> list[tuple[str, bool, socket.socket]]:
        """(address, https, socket) of every served listener."""
        return [
            (address, served.tls is not None, served.sock)
            for address, served in self._served.items()
        ]

    def stop_accepting(self) -> None:
        if self.shared is not None:
            self.shared.drain()
        for served in self._served.values():
            served.stop_accepting()

    # -- configuration changes

    def refresh_routes(self, address: str) -> None:
        served = self._served.get(address)
        if served is not None:
            served.router = self._router(address, served.tls is not None)

    def refresh_listener(self, address: str) -> None:
        served = self._served.get(address)
        if served is None:
            return
        config = self.state.https_listeners.get(address) or self.state.http_listeners.get(address)
        if config is not None:
            served.configure(config)

    def refresh_certificates(self, address: str) -> None:
        served = self._served.get(address)
        if served is not None and served.tls is not None:
            served.tls.load_state(self.state)

    def refresh_clusters(self) -> None:
        """Health checks, sticky ids from the state; idle connections to removed backends
        closed."""
        self.health.refresh()
        shared = self.shared
        if shared is None:
            return
        shared.sticky_to_backend.clear()
        shared.backend_to_sticky.clear()
        addresses = set()
        for cluster_id, backends in self.state.backends.items():
            by_value = shared.sticky_to_backend.setdefault(cluster_id, {})
            for backend in backends:
                value = backend.sticky_id or backend.backend_id
                by_value.setdefault(value, backend.backend_id)
                shared.backend_to_sticky[(cluster_id, backend.backend_id)] = value
                host, _, port = backend.address.rpartition(":")
                addresses.add((host.strip("[]"), int(port)))
        for address in shared.pool.addresses():
            if address not in addresses:
                shared.pool.forget(address)

    # -- metrics

    def fold_metrics(self) -> None:
        registry = self.registry
        for address, c in self._counters.items():
            for name, attribute in _LISTENER_COUNTERS:
                registry.counter(name, listener=address).value = getattr(c, attribute)
            for name, attribute in _LISTENER_GAUGES:
                registry.gauge(name, listener=address).value = getattr(c, attribute)
            by_class: dict[str, int] = {}
            for status, count in c.statuses.items():
                key = _status_class(status)
                by_class[key] = by_class.get(key, 0) + count
            for key, count in by_class.items():
                registry.counter(
                    "sozu_http_status_total", listener=address, status=key
                ).value = count
            for status, count in c.answers.items():
                registry.counter(
                    "sozu_http_generated_answers_total", listener=address, status=str(status)
                ).value = count
            for cluster_id, count in c.cluster_requests.items():
                registry.counter(
                    "sozu_http_cluster_requests_total", listener=address, cluster=cluster_id
                ).value = count
        for address, served in self._served.items():
            tls = served.tls
            if tls is None:
                continue
            for reason, count in tls.handshake_failures.items():
                if count:
                    registry.counter(
                        "sozu_https_handshake_failures_total", listener=address, reason=reason
                    ).value = count
            registry.counter(
                "sozu_https_default_cert_used_total", listener=address
            ).value = tls.default_cert_used
        for cluster_id, backends in self.health.statuses().items():
            for backend_id, healthy in backends.items():
                registry.gauge(
                    "sozu_http_health_check_healthy", cluster=cluster_id, backend=backend_id
                ).value = int(healthy)
        for cluster_id, counts in self.health.counters().items():
            for outcome, count in counts.items():
                registry.counter(
                    "sozu_http_health_checks_total", cluster=cluster_id, outcome=outcome
                ).value = count
        if self.shared is not None:
            registry.counter("sozu_http_backend_pool_reused_total").value = self.shared.pool.reused
            registry.gauge("sozu_http_backend_pool_idle").value = len(self.shared.pool)

    def clear_metrics(self) -> None:
        for counters in self._counters.values():
            counters.clear()

    def close(self) -> None:
        self.health.close()
        for served in self._served.values():
            served.sock.close()
        self._served.clear()
        if self.shared is not None:
            self.shared.pool.close()
