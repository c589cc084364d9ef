"""A worker's HTTP and HTTPS listeners: their contexts, routers, TLS settings and metrics.

Each active listener is an `HttpListener` on the worker's readiness loop, with the
`ListenerContext` its session cores read: the router of its frontends (rebuilt from the state
when a frontend of its address changes) and, for HTTPS, its `ListenerTls` (reloaded from the
state when a certificate of its address changes: new handshakes see it at once, open
connections keep theirs). What the listeners share (clusters, sticky ids, request ids, per-IP
slots, the drain) is one `SharedContext`. Clusters are the worker's `TcpCluster`s.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

import trio

from sozu.command.log_targets import open_line_sink
from sozu.command.metrics import Histogram, MetricsRegistry
from sozu.command.state import ConfigState
from sozu.command.types import (
    Cluster,
    HttpListenerConfig,
    HttpsListenerConfig,
    RequestHttpFrontend,
)
from sozu.worker.core.clusters import TcpCluster
from sozu.worker.core.h2.flood import FRAME_NAMES
from sozu.worker.core.http.request_id import UlidGenerator
from sozu.worker.core.http.router import Router
from sozu.worker.core.http1.context import (
    DEFAULT_BUFFER_LIMIT,
    DEFAULT_MAX_HEAD,
    ListenerContext,
    SharedContext,
)
from sozu.worker.core.http1.counters import HttpCounters
from sozu.worker.core.per_ip import PerIpLimits
from sozu.worker.shell.http_health_prober import HttpHealthChecks
from sozu.worker.shell.http_listener import HttpListener, HttpServer
from sozu.worker.shell.tls_contexts import ListenerTls

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
    ("sozu_http_rejected_per_ip_total", "rejected_per_ip"),
    ("sozu_http_backend_stale_connections_total", "stale_connections"),
    ("sozu_http_pipelined_unanswered_total", "pipelined_unanswered"),
    ("sozu_http_proxy_protocol_errors_total", "proxy_protocol_errors"),
    # HTTP/2: negotiated on HTTPS listeners, h2c with prior knowledge on HTTP ones.
    ("sozu_h2_connections_total", "h2_connections"),
    ("sozu_h2_streams_total", "h2_streams"),
    ("sozu_h2_refused_streams_total", "h2_refused_streams"),
    ("sozu_h2_protocol_errors_total", "h2_protocol_errors"),
    ("sozu_h2_rapid_reset_total", "h2_rapid_resets"),
    ("sozu_h2_window_stalls_total", "h2_window_stalls"),
)
# Only for HTTPS listeners (a plain HTTP listener has no TLS to count).
_HTTPS_COUNTERS = (
    ("sozu_http_sni_authority_mismatch_total", "sni_mismatches"),
    ("sozu_https_handshakes_total", "tls_handshakes"),
    ("sozu_https_resumed_handshakes_total", "tls_resumed"),
    ("sozu_https_alpn_rejected_http11_disabled_total", "alpn_rejected"),
    ("sozu_https_h2_without_alpn_total", "h2_without_alpn"),
)
_LISTENER_GAUGES = (
    ("sozu_http_active_connections", "active"),
    ("sozu_http_websocket_active", "websockets_active"),
    ("sozu_h2_streams_active", "h2_streams_active"),
)


def _clock_ms() -> int:
    return time.time_ns() // 1_000_000


class _RandomBytes:
    """os.urandom read 4 KiB at a time: the random part of a request id costs no system call
    (one per ~400 ids instead of one per millisecond under load)."""

    __slots__ = ("_buffer", "_used")

    SIZE = 4096

    def __init__(self) -> None:
        self._buffer = b""
        self._used = 0

    def __call__(self, count: int) -> bytes:
        used = self._used
        if used + count > len(self._buffer):
            self._buffer = os.urandom(max(self.SIZE, count))
            used = 0
        self._used = used + count
        return self._buffer[used : used + count]


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class HttpListeners:
    """The HTTP and HTTPS listeners a worker serves, on its readiness loop (`HttpServer`)."""

    def __init__(
        self,
        state: ConfigState,
        registry: MetricsRegistry,
        server: HttpServer,
        clusters: dict[str, TcpCluster],
        on_event: Callable[[str, str, str | None], None],
        per_ip: PerIpLimits | None = None,
    ) -> None:
        self.state = state
        self.per_ip = per_ip if per_ip is not None else PerIpLimits()
        self.registry = registry
        self.server = server
        self._clusters = clusters
        # Counters outlive a deactivation so that totals never go back.
        self._counters: dict[str, HttpCounters] = {}
        # Every frontend's cluster by (https, route key), and how many point at each cluster:
        # kept from each frontend change (the state refuses duplicates and missing removals).
        self._front_cluster: dict[tuple[bool, str], str | None] = {}
        self._front_counts: dict[str, int] = {}
        # Backend addresses by cluster, and how many backends use each (idle connections to
        # an address no backend uses any more are closed).
        self._cluster_addresses: dict[str, set[tuple[str, int]]] = {}
        self._address_uses: dict[tuple[str, int], int] = {}
        self.health = HttpHealthChecks(state, clusters, on_event)
        # What every session reads: drain_timeout and the buffer limit come with ServerConfig.
        self.shared = SharedContext(
            self._cluster_lookup,
            ids=UlidGenerator(_clock_ms, _RandomBytes()),
            time_ns=time.time_ns,
            per_ip=self.per_ip,
            pid=os.getpid(),
        )

        def histogram(name: str, cluster_id: str) -> Histogram:
            return self.registry.histogram(name, cluster=cluster_id)

        self.shared.histogram = histogram
        self.buffer_limit = DEFAULT_BUFFER_LIMIT
        # The secret each HTTPS listener derives its session-ticket keys from (ServerConfig).
        self.tls_ticket_keys: bytes | None = None

    def start(self, tasks: trio.Nursery) -> None:
        self.health.start(tasks)

    def configure(self, drain_timeout: float, buffer_size: int) -> None:
        self.shared.drain_timeout = float(drain_timeout)
        self.buffer_limit = max(buffer_size, DEFAULT_MAX_HEAD, DEFAULT_BUFFER_LIMIT)

    def configure_access_logs(self, target: str | None, worker_id: int) -> None:
        self.shared.access_log = None if target is None else open_line_sink(target)
        self.shared.tag = f"WRK-{worker_id:02d}"

    def _cluster_lookup(self, cluster_id: str) -> tuple[Cluster, TcpCluster] | None:
        config = self.state.clusters.get(cluster_id)
        cluster = self._clusters.get(cluster_id)
        if config is None or cluster is None:
            return None
        return config, cluster

    def fronted(self, cluster_id: str) -> bool:
        """An HTTP or HTTPS frontend points at this cluster."""
        return self._front_counts.get(cluster_id, 0) > 0

    def _router(self, address: str, https: bool) -> Router:
        fronts = self.state.https_fronts if https else self.state.http_fronts
        return Router.build(f for f in fronts.values() if f.address == address)

    # -- listeners

    def start_listener(self, address: str, config: HttpListenerConfig, sock: socket.socket) -> None:
        https = isinstance(config, HttpsListenerConfig)
        tls = None
        if isinstance(config, HttpsListenerConfig):
            tls = ListenerTls.from_state(config, self.state, ticket_secret=self.tls_ticket_keys)
            for warning in tls.warnings:
                log.warning("HTTPS listener %s: %s", address, warning)
        counters = self._counters.setdefault(address, HttpCounters())
        context = ListenerContext(
            config,
            self._router(address, https),
            self.shared,
            counters=counters,
            buffer_limit=self.buffer_limit,
        )
        for warning in context.warnings:
            log.warning("listener %s answers: %s", address, warning)
        listener = HttpListener(self.server, address, context, tls)
        self._set_alpn_policy(listener, config)
        listener.own = sock
        listener.add_socket(sock)
        self.server.listeners[address] = listener
        listener.start_accepting()
        log.info("serving %s listener %s", "HTTPS" if https else "HTTP", address)

    @staticmethod
    def _set_alpn_policy(listener: HttpListener, config: HttpListenerConfig) -> None:
        listener.disable_http11 = isinstance(config, HttpsListenerConfig) and config.disable_http11
        if (
            isinstance(config, HttpsListenerConfig)
            and config.disable_http11
            and "h2" not in config.alpn_protocols
        ):
            log.warning(
                "listener %s: disable_http11 with h2 not offered refuses every connection",
                config.address,
            )

    def stop_listener(self, address: str) -> bool:
        listener = self.server.listeners.pop(address, None)
        if listener is None:
            return False
        listener.close()
        return True

    def served_listener(self, address: str) -> HttpListener | None:
        return self.server.listeners.get(address)

    def served_sockets(self) -> list[tuple[str, bool, socket.socket]]:
        """(address, https, own socket) of every served listener."""
        return [
            (address, listener.tls is not None, listener.own)
            for address, listener in self.server.listeners.items()
            if listener.own is not None
        ]

    def stop_accepting(self) -> None:
        for listener in self.server.listeners.values():
            listener.stop_accepting()
        self.server.drain()

    # -- configuration changes

    def frontend_changed(self, frontend: RequestHttpFrontend, *, https: bool, added: bool) -> None:
        """One frontend was added or removed: its listener's router follows (no rebuild), and
        the count of frontends per cluster."""
        key = (https, frontend.route_key())
        counts = self._front_counts
        previous = self._front_cluster.pop(key, None)
        if previous is not None:
            counts[previous] -= 1
            if not counts[previous]:
                del counts[previous]
        if added:
            self._front_cluster[key] = frontend.cluster_id
            if frontend.cluster_id is not None:
                counts[frontend.cluster_id] = counts.get(frontend.cluster_id, 0) + 1
        listener = self.server.listeners.get(frontend.address)
        if listener is None or (listener.tls is not None) != https:
            return  # built from the state when its listener starts
        if added:
            listener.context.router.add(frontend)
        else:
            listener.context.router.remove(frontend)

    def refresh_listener(self, address: str) -> None:
        listener = self.server.listeners.get(address)
        if listener is None:
            return
        config = self.state.https_listeners.get(address) or self.state.http_listeners.get(address)
        if config is not None:
            listener.context.configure(config)
            for warning in listener.context.warnings:
                log.warning("listener %s answers: %s", address, warning)
            self._set_alpn_policy(listener, config)

    def refresh_certificates(self, address: str) -> None:
        listener = self.server.listeners.get(address)
        if listener is not None and listener.tls is not None:
            listener.tls.load_state(self.state)

    def refresh_cluster(self, cluster_id: str) -> None:
        """One cluster changed: its health checks, its sticky ids; idle connections to
        addresses no backend uses any more closed."""
        state = self.state
        cluster = state.clusters.get(cluster_id)
        if (cluster is not None and cluster.health_check is not None) or self.health.knows(
            cluster_id
        ):
            self.health.refresh()
        shared = self.shared
        for backend_id in shared.sticky_to_backend.pop(cluster_id, {}).values():
            shared.backend_to_sticky.pop((cluster_id, backend_id), None)
        addresses: set[tuple[str, int]] = set()
        backends = state.backends.get(cluster_id, ())
        if backends:
            by_value = shared.sticky_to_backend.setdefault(cluster_id, {})
            for backend in backends:
                value = backend.sticky_id or backend.backend_id
                by_value.setdefault(value, backend.backend_id)
                shared.backend_to_sticky[(cluster_id, backend.backend_id)] = value
                host, _, port = backend.address.rpartition(":")
                addresses.add((host.strip("[]"), int(port)))
        old = self._cluster_addresses.pop(cluster_id, set())
        if addresses:
            self._cluster_addresses[cluster_id] = addresses
        uses = self._address_uses
        for address in addresses - old:
            uses[address] = uses.get(address, 0) + 1
        for address in old - addresses:
            uses[address] -= 1
            if not uses[address]:
                del uses[address]
                self.server.pool.forget(address)

    def check_invariants(self) -> None:
        """The indexes kept from each change say what a scan of the state says."""
        state = self.state
        expected: dict[str, int] = {}
        for fronts in (state.http_fronts, state.https_fronts):
            for front in fronts.values():
                if front.cluster_id is not None:
                    expected[front.cluster_id] = expected.get(front.cluster_id, 0) + 1
        assert self._front_counts == expected, (self._front_counts, expected)
        for address, listener in self.server.listeners.items():
            fronts = state.https_fronts if listener.tls is not None else state.http_fronts
            routed = {f.route_key() for f in listener.context.router.frontends()}
            assert routed == {k for k, f in fronts.items() if f.address == address}
        uses: dict[tuple[str, int], int] = {}
        for addresses in self._cluster_addresses.values():
            for backend_address in addresses:
                uses[backend_address] = uses.get(backend_address, 0) + 1
        assert uses == self._address_uses

    # -- metrics

    def fold_metrics(self) -> None:
        registry = self.registry
        for address, c in self._counters.items():
            for name, attribute in _LISTENER_COUNTERS:
                registry.counter(name, listener=address).value = getattr(c, attribute)
            if address in self.state.https_listeners or c.tls_handshakes:
                for name, attribute in _HTTPS_COUNTERS:
                    registry.counter(name, listener=address).value = getattr(c, attribute)
            for name, attribute in _LISTENER_GAUGES:
                registry.gauge(name, listener=address).value = getattr(c, attribute)
            for index, count in enumerate(c.h2_frames):
                if count:
                    registry.counter(
                        "sozu_h2_frames_received_total",
                        listener=address,
                        type=FRAME_NAMES[index] if index < len(FRAME_NAMES) else "unknown",
                    ).value = count
            for kind, count in c.h2_floods.items():
                registry.counter(
                    "sozu_h2_flood_violations_total", listener=address, kind=kind
                ).value = count
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
            for (cluster_id, protocol), count in c.cluster_requests.items():
                registry.counter(
                    "sozu_http_cluster_requests_total",
                    listener=address,
                    cluster=cluster_id,
                    protocol=protocol,
                ).value = count
            by_cluster: dict[tuple[str, str], int] = {}
            for (cluster_id, status), count in c.cluster_statuses.items():
                key2 = (cluster_id, _status_class(status))
                by_cluster[key2] = by_cluster.get(key2, 0) + count
            for (cluster_id, status_class), count in by_cluster.items():
                registry.counter(
                    "sozu_http_cluster_status_total",
                    listener=address,
                    cluster=cluster_id,
                    status=status_class,
                ).value = count
        for address, served in self.server.listeners.items():
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
        pool = self.server.pool
        shared = self.shared
        registry.counter("sozu_http_backend_pool_reused_total").value = pool.reused
        registry.counter("sozu_http_backend_kept_reused_total").value = shared.kept_reused
        registry.gauge("sozu_http_backend_pool_idle").value = len(pool)
        registry.gauge("sozu_http_backend_kept_idle").value = shared.kept_backs
        upstreams = self.server.upstreams
        registry.counter("sozu_h2_backend_connections_total").value = upstreams.opened
        registry.counter(
            "sozu_h2_backend_connect_failures_total"
        ).value = upstreams.connect_failures
        registry.counter("sozu_h2_backend_streams_total").value = upstreams.streams
        registry.counter("sozu_h2_backend_goaways_total").value = upstreams.goaways
        registry.counter("sozu_h2_backend_retired_total").value = upstreams.retired
        registry.gauge("sozu_h2_backend_connections").value = len(upstreams)
        registry.gauge("sozu_h2_backend_streams_active").value = upstreams.active_streams()

    def clear_metrics(self) -> None:
        for counters in self._counters.values():
            counters.clear()

    def close(self) -> None:
        self.health.close()
