"""An HTTP or HTTPS listener of a worker (trio shell): accept loop, TLS handshake, sessions.

The listener holds what its sessions read on every request: the router of its frontends, its
answers, its TLS contexts, the counters. What listeners share (clusters, sticky ids, the
backend pool, request ids) lives in `HttpShared`, owned by the worker's `HttpListeners`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import trio

from sozu.command.addresses import to_sockaddr
from sozu.command.metrics import Histogram
from sozu.command.types import Cluster, HstsConfig, HttpListenerConfig, HttpsListenerConfig
from sozu.worker.accept import AcceptingListener
from sozu.worker.balancing import Backend
from sozu.worker.connection_limit import ConnectionLimit
from sozu.worker.http.answers import AnswerSet
from sozu.worker.http.backend_pool import BackendPool
from sozu.worker.http.policy import hsts_value
from sozu.worker.http.request_id import UlidGenerator
from sozu.worker.http.router import Router
from sozu.worker.http.session import HttpSession
from sozu.worker.http.streams import PlainStream, Stream, TlsStream
from sozu.worker.http.tls_contexts import ListenerTls, served_certificate
from sozu.worker.per_ip import PerIpLimits
from sozu.worker.tcp.backends import TcpCluster

log = logging.getLogger("sozu.worker.http")

# Upstream's default buffer holds the whole head; a bigger head is refused (431).
DEFAULT_MAX_HEAD = 16384
LINGER = 2.0


@dataclass
class HttpCounters:
    """Plain counters of one listener, folded into the metrics at snapshot time."""

    accepted: int = 0
    active: int = 0
    requests: int = 0
    parse_errors: int = 0
    backend_parse_errors: int = 0
    no_backend: int = 0
    retries: int = 0
    backend_errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    websockets: int = 0
    websockets_active: int = 0
    sni_mismatches: int = 0
    rejected_per_ip: int = 0
    stale_connections: int = 0  # pooled backend connections found closed at reuse
    alpn_rejected: int = 0  # TLS connections dropped by disable_http11
    # Connections closed after a response that said close with pipelined requests unanswered
    # (a client may retry those, RFC 9112 9.3.2).
    pipelined_unanswered: int = 0
    tls_handshakes: int = 0
    # final status of every response sent (proxied or generated) -> count
    statuses: dict[int, int] = field(default_factory=dict)
    # status of every answer sozu generated itself -> count
    answers: dict[int, int] = field(default_factory=dict)
    cluster_requests: dict[str, int] = field(default_factory=dict)

    def count_status(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def count_answer(self, status: int) -> None:
        self.answers[status] = self.answers.get(status, 0) + 1
        self.count_status(status)

    def clear(self) -> None:
        active, websockets_active = self.active, self.websockets_active
        self.__init__()  # type: ignore[misc]
        self.active, self.websockets_active = active, websockets_active


class HttpShared:
    """What every HTTP/HTTPS listener of a worker shares."""

    def __init__(
        self,
        limit: ConnectionLimit,
        cluster_lookup: Callable[[str], tuple[Cluster, TcpCluster] | None],
        per_ip: PerIpLimits | None = None,
    ) -> None:
        self.limit = limit
        self.cluster_lookup = cluster_lookup
        self.pool = BackendPool(trio.current_time)
        self.ids = UlidGenerator(_clock_ms, _random_bytes)
        # cluster id -> sticky value -> backend id, and (cluster id, backend id) -> value
        self.sticky_to_backend: dict[str, dict[str, str]] = {}
        self.backend_to_sticky: dict[tuple[str, str], str] = {}
        self.draining = False
        # Connections per (cluster, client IP), shared with the worker's TCP listeners.
        self.per_ip = per_ip if per_ip is not None else PerIpLimits()
        self.response_seconds: dict[str, Histogram] = {}
        self.backend_response_seconds: dict[str, Histogram] = {}
        self.histogram: Callable[[str, str], Histogram] | None = None
        # One access log line per request when set (`access_logs_target`).
        self.access_log: Callable[[str], None] | None = None
        self.tag = "WRK"
        self.pid = os.getpid()

    def drain(self) -> None:
        """Stop keep-alive: each connection's next response says `Connection: close`, and the
        connection closes after it (idle ones wait for their next request, at most until the
        drain ends)."""
        self.draining = True


async def _linger(front: Stream) -> None:
    """A lingering close: the write side is shut (the client sees the end of the response),
    then input is read and discarded for up to LINGER seconds, so that the close does not
    turn into a reset that would destroy the response's tail at the client."""
    front.shutdown_write()
    with trio.move_on_after(LINGER), contextlib.suppress(OSError, ValueError):
        while await front.receive():
            pass


def _clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _random_bytes(count: int) -> bytes:
    return os.urandom(count)


class HttpListenerProxy(AcceptingListener):
    """Serves one HTTP or HTTPS listener socket."""

    def __init__(
        self,
        sock: socket.socket,
        config: HttpListenerConfig,
        shared: HttpShared,
        router: Router,
        tls: ListenerTls | None = None,
    ) -> None:
        super().__init__(sock, config.address)
        self.shared = shared
        self.router = router
        self.tls = tls
        self.counters = HttpCounters()
        self.max_head = DEFAULT_MAX_HEAD
        self.scheme: Literal["http", "https"] = "https" if tls is not None else "http"
        self.configure(config)

    def configure(self, config: HttpListenerConfig) -> None:
        """New listener settings (answers, timeouts, headers) for the next requests."""
        self.config = config
        self.answers = AnswerSet(config.answers, config.sozu_id_header)
        for warning in self.answers.warnings:
            log.warning("listener %s answers: %s", config.address, warning)
        self.sozu_id_header = config.sozu_id_header.encode()
        public = to_sockaddr(config.public_address or config.address)
        self.public_ip, self.public_port = public[0], public[1]
        self.strict_sni = isinstance(config, HttpsListenerConfig) and config.strict_sni_binding
        self._hsts_default: bytes | None = None
        self.disable_http11 = False
        if isinstance(config, HttpsListenerConfig):
            self._hsts_default = hsts_value(config.hsts)
            self.disable_http11 = config.disable_http11
            if self.disable_http11:
                log.warning(
                    "listener %s: disable_http11 with h2 not offered refuses every connection",
                    config.address,
                )

    # -- what sessions read

    @property
    def pool(self) -> BackendPool:
        return self.shared.pool

    @property
    def ids(self) -> UlidGenerator:
        return self.shared.ids

    @property
    def draining(self) -> bool:
        return self.shared.draining

    def cluster(self, cluster_id: str) -> tuple[Cluster, TcpCluster] | None:
        return self.shared.cluster_lookup(cluster_id)

    def is_sticky(self, cluster_id: str) -> bool:
        known = self.shared.cluster_lookup(cluster_id)
        return known is not None and known[0].sticky_session

    def sticky_id(self, cluster_id: str, backend_id: str) -> str:
        return self.shared.backend_to_sticky.get((cluster_id, backend_id), backend_id)

    def sticky_backend(self, cluster: TcpCluster, value: str, now: float) -> Backend | None:
        backend_id = self.shared.sticky_to_backend.get(cluster.cluster_id, {}).get(value)
        return None if backend_id is None else cluster.usable(backend_id, now)

    def hsts_for(self, frontend_hsts: HstsConfig | None) -> bytes | None:
        """The HSTS value of a frontend (its own policy, else the listener's)."""
        if frontend_hsts is not None:
            return hsts_value(frontend_hsts)
        return self._hsts_default

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

    # -- accepting

    def connection_limit(self) -> ConnectionLimit:
        return self.shared.limit

    def count_accepted(self) -> None:
        self.counters.accepted += 1

    async def _session(self, client: socket.socket, peer: tuple[str, int]) -> None:
        counters = self.counters
        counters.active += 1
        front: Stream | None = None
        try:
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is None:
                front = PlainStream(client, self.config.front_timeout)
                session = HttpSession(self, front, peer)
            else:
                tls_front = await self._handshake(client)
                if tls_front is None:
                    return
                front = tls_front
                if self.disable_http11 and tls_front.sock.selected_alpn_protocol() != "h2":
                    # An h2-only listener: HTTP/1.1 (or no ALPN) is dropped after the handshake.
                    counters.alpn_rejected += 1
                    return
                session = HttpSession(self, front, peer)
                served = served_certificate(tls_front.sock)
                if served is not None:
                    session.served_names = served.names
                    session.sni = served.server_name
                    session.default_cert = served.default_used
            await session.run()
            if front is not None:
                await _linger(front)
        except OSError as error:
            log.debug("HTTP session from %s:%s ended: %s", peer[0], peer[1], error)
        finally:
            if front is not None:
                front.shutdown_write()
                front.close()
            client.close()
            counters.active -= 1
            self.shared.limit.give()

    async def _handshake(self, client: socket.socket) -> TlsStream | None:
        assert self.tls is not None
        try:
            wrapped = self.tls.context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        except OSError:
            return None
        stream = TlsStream(wrapped, self.config.front_timeout)
        with trio.move_on_after(self.config.front_timeout) as scope:
            try:
                await stream.handshake()
            except (ssl.SSLError, OSError) as error:
                reason = self.tls.record_handshake_failure(error)
                log.debug("TLS handshake on %s failed: %s", self.config.address, reason)
                wrapped.close()
                return None
        if scope.cancelled_caught:
            wrapped.close()
            return None
        self.counters.tls_handshakes += 1
        return stream
