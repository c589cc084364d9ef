"""A TCP listener of a worker: accept loop, one session per connection (trio shell).

Accepting is a drain loop over the listener socket the supervisor handed over. Each session
reads an expected PROXY v2 header if the listener wants one, holds a per-IP slot of the
listener's cluster (`per_ip`: refused, the connection is closed), picks a backend of the cluster
(up to `CONNECT_ATTEMPTS` backends, failing ones backed off), writes a PROXY header if the
cluster sends one (its own, or the client's as received when relaying), then relays.
Sessions run in a handler nursery separate from the accept loop, so that stopping the accept
loop leaves them running: that is how a draining worker lets connections finish.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import msgspec
import trio

from sozu.command.metrics import Histogram
from sozu.command.types import Cluster, TcpListenerConfig
from sozu.worker.accept import AcceptingListener
from sozu.worker.connection_limit import ConnectionLimit
from sozu.worker.per_ip import PerIpLimits
from sozu.worker.proxy_protocol import ProxyProtocolError, build_v2, parse_v2
from sozu.worker.tcp.backends import TcpCluster
from sozu.worker.tcp.relay import relay

log = logging.getLogger("sozu.worker.tcp")

CONNECT_ATTEMPTS = 3


class TcpCounters(msgspec.Struct):
    """Plain counters of one listener, read by the metrics snapshot."""

    accepted: int = 0
    active: int = 0
    backend_errors: int = 0
    retries: int = 0  # connect attempts after the first
    no_backend: int = 0  # sessions closed without a backend
    proxy_protocol_errors: int = 0
    rejected_per_ip: int = 0  # closed by max_connections_per_ip
    bytes_in: int = 0
    bytes_out: int = 0


class TcpListenerProxy(AcceptingListener):
    """Serves one TCP listener socket."""

    def __init__(
        self,
        sock: socket.socket,
        config: TcpListenerConfig,
        cluster_of: Callable[[], TcpCluster | None],
        limit: ConnectionLimit,
        *,
        use_splice: bool = True,
        per_ip: PerIpLimits | None = None,
        cluster_record: Callable[[str], Cluster | None] | None = None,
    ) -> None:
        super().__init__(sock, config.address)
        self.config = config
        self._cluster_of = cluster_of
        self._limit = limit
        self._use_splice = use_splice
        self._per_ip = per_ip
        # The cluster's configuration (its own max_connections_per_ip), by id.
        self._cluster_record = cluster_record
        self.counters = TcpCounters()
        # Connection durations in seconds, when the worker's metrics want them.
        self.durations: Histogram | None = None

    def connection_limit(self) -> ConnectionLimit:
        return self._limit

    def count_accepted(self) -> None:
        self.counters.accepted += 1

    async def _session(self, client: socket.socket, peer: tuple[str, int]) -> None:
        self.counters.active += 1
        started = trio.current_time()
        try:
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self._proxy(client, (peer[0], peer[1]))
        except OSError as error:
            log.debug("session from %s:%s ended: %s", peer[0], peer[1], error)
        finally:
            client.close()
            self.counters.active -= 1
            self._limit.give()
            if self.durations is not None:
                self.durations.observe(trio.current_time() - started)

    async def _read_proxy_header(
        self, client: socket.socket
    ) -> tuple[tuple[str, int] | None, bytes, bytes] | None:
        """(source, raw header, bytes after it), or None if the connection must close."""
        buffer = bytearray()
        with trio.move_on_after(self.config.front_timeout):
            while True:
                try:
                    chunk = client.recv(4096)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(client)
                    continue
                if not chunk:
                    return None  # EOF before a header: a health check, closed silently
                buffer += chunk
                try:
                    header = parse_v2(buffer)
                except ProxyProtocolError as error:
                    self.counters.proxy_protocol_errors += 1
                    log.info("PROXY header on %s: %s", self.config.address, error)
                    return None
                if header is not None:
                    if header.source is None:
                        return None  # LOCAL or AF_UNSPEC: nothing to proxy for
                    raw = bytes(buffer[: header.length])
                    return header.source, raw, bytes(buffer[header.length :])
        return None

    async def _proxy(self, client: socket.socket, peer: tuple[str, int]) -> None:
        source, raw_header, early = peer, b"", b""
        if self.config.expect_proxy:
            parsed = await self._read_proxy_header(client)
            if parsed is None:
                return
            proxied_source, raw_header, early = parsed
            assert proxied_source is not None
            source = proxied_source
        cluster = self._cluster_of()
        if cluster is None:
            self.counters.no_backend += 1
            return
        per_ip = self._per_ip
        if per_ip is None:
            await self._relay_to_backend(client, cluster, source, raw_header, early)
            return
        record = self._cluster_record(cluster.cluster_id) if self._cluster_record else None
        if not per_ip.take(record or Cluster(cluster_id=cluster.cluster_id), source[0]):
            self.counters.rejected_per_ip += 1
            client.shutdown(socket.SHUT_WR)
            return
        try:
            await self._relay_to_backend(client, cluster, source, raw_header, early)
        finally:
            per_ip.give(cluster.cluster_id, source[0])

    async def _relay_to_backend(
        self,
        client: socket.socket,
        cluster: TcpCluster,
        source: tuple[str, int],
        raw_header: bytes,
        early: bytes,
    ) -> None:
        backend_sock = None
        backend_id = ""
        for attempt in range(CONNECT_ATTEMPTS):
            backend = cluster.choose(trio.current_time())
            if backend is None:
                break
            if attempt:
                self.counters.retries += 1
            backend_sock = await cluster.dial(backend, self.config.connect_timeout)
            if backend_sock is None:
                self.counters.backend_errors += 1
                continue
            backend_id = backend.id
            break
        if backend_sock is None:
            self.counters.no_backend += 1
            return
        cluster.opened(backend_id)
        bytes_in = bytes_out = 0
        try:
            preamble = early
            if cluster.send_proxy:
                if raw_header:
                    preamble = raw_header + early  # relay the client's own header
                else:
                    local = client.getsockname()
                    preamble = build_v2(source, (local[0], local[1])) + early
            if preamble:
                await _send_all(backend_sock, preamble)
            stats = await relay(
                client,
                backend_sock,
                front_timeout=self.config.front_timeout,
                back_timeout=self.config.back_timeout,
                use_splice=self._use_splice,
            )
            bytes_in, bytes_out = stats.to_backend + len(early), stats.to_client
        finally:
            backend_sock.close()
            self.counters.bytes_in += bytes_in
            self.counters.bytes_out += bytes_out
            cluster.transferred(backend_id, bytes_in, bytes_out)
            cluster.closed(backend_id)


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]
