"""One TCP proxy connection as a sans-io state machine: PROXY header, backend choice, relay.

States: EXPECT (the listener expects a PROXY v2 header: read until it is complete, at most
the listener's front timeout), CONNECTING (a backend of the listener's cluster is dialled; up
to CONNECT_ATTEMPTS backends, failing ones backed off by the cluster), PIPE (bytes flow both
ways; the shell moves them, with `os.splice` where it can, and reports what moved), DONE.

The shell reads, after each input: `to_back` (the PROXY header and any client bytes read with
it, sent before relaying starts), `actions` (CONNECT to `target`, CLOSE_BACK for an abandoned
dial, PIPE once connected, CLOSE at the end), `deadline` and `done`. A cluster's per-IP limit
is checked before a backend is chosen (refused: closed). Idle timeouts: front_timeout for
client-to-backend traffic, back_timeout for backend-to-client traffic; the relay ends when
neither moved for its timeout, or when both directions have ended (a half-close is passed on).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from sozu.command.types import Cluster, TcpListenerConfig
from sozu.worker.core.per_ip import PerIpLimits
from sozu.worker.core.proxy_protocol import (
    TRANSPORT_STREAM,
    ProxyProtocolError,
    build_v2,
    parse_v2,
)

if TYPE_CHECKING:
    from sozu.worker.core.balancing.backend import Address, Backend
    from sozu.worker.core.clusters import TcpCluster

CONNECT_ATTEMPTS: Final = 3
MAX_PROXY_HEADER: Final = 4096

EXPECT, CONNECTING, PIPE, DONE = range(4)
STATE_NAMES: Final = ("EXPECT", "CONNECTING", "PIPE", "DONE")

# Actions, read (then cleared) by the shell after every input.
CONNECT: Final = 1  # dial `target`, then back_connected / back_connect_failed
CLOSE_BACK: Final = 2  # abandon the backend connection (a dial that timed out)
PIPE_START: Final = 4  # connected and to_back queued: relay both ways from now on
CLOSE: Final = 8  # close both connections; `done` is set


class TcpCounters:
    """Plain counters of one listener, read by the metrics snapshot."""

    __slots__ = (
        "accepted",
        "active",
        "backend_errors",
        "bytes_in",
        "bytes_out",
        "no_backend",
        "proxy_protocol_errors",
        "rejected_per_ip",
        "retries",
        "timed_out",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.active = 0
        self.backend_errors = 0
        self.retries = 0  # connect attempts after the first
        self.no_backend = 0  # sessions closed without a backend
        self.proxy_protocol_errors = 0
        self.rejected_per_ip = 0  # closed by max_connections_per_ip
        self.bytes_in = 0
        self.bytes_out = 0
        self.timed_out = 0  # relays ended by idleness


class TcpContext:
    """One TCP listener as its sessions read it."""

    __slots__ = ("cluster_of", "cluster_record", "config", "counters", "per_ip")

    def __init__(
        self,
        config: TcpListenerConfig,
        cluster_of: Callable[[], TcpCluster | None],
        *,
        counters: TcpCounters | None = None,
        per_ip: PerIpLimits | None = None,
        cluster_record: Callable[[str], Cluster | None] | None = None,
    ) -> None:
        self.config = config
        self.cluster_of = cluster_of
        self.counters = counters if counters is not None else TcpCounters()
        self.per_ip = per_ip
        self.cluster_record = cluster_record


class TcpSession:
    """One client connection of a TCP listener (see the module docstring)."""

    __slots__ = (
        "actions",
        "attempts",
        "backend",
        "buffer",
        "cluster",
        "connect_started",
        "ctx",
        "deadline",
        "done",
        "down_ended",
        "down_idle",
        "local",
        "opened",
        "per_ip",
        "raw_header",
        "source",
        "state",
        "target",
        "to_back",
        "up_ended",
        "up_idle",
    )

    def __init__(self, ctx: TcpContext, peer: tuple[str, int], local: tuple[str, int]) -> None:
        self.ctx = ctx
        self.source = peer
        self.local = local
        self.to_back = bytearray()
        self.actions = 0
        self.target: Address | None = None
        self.deadline = math.inf
        self.done = False
        self.state = EXPECT
        self.buffer = bytearray()
        self.raw_header = b""
        self.cluster: TcpCluster | None = None
        self.backend: Backend | None = None
        self.attempts = 0
        self.connect_started = 0.0
        self.opened = False  # cluster.opened() counted for `backend`
        self.per_ip: str | None = None  # the cluster whose per-IP slot this holds
        self.up_idle = math.inf
        self.down_idle = math.inf
        self.up_ended = False
        self.down_ended = False

    # -- inputs

    def start(self, now: float) -> None:
        if self.ctx.config.expect_proxy:
            self.deadline = now + self.ctx.config.front_timeout
        else:
            self._route(now)

    def wants_front_read(self) -> bool:
        """Read the client before the relay only while a PROXY header is expected."""
        return self.state == EXPECT

    def front_data(self, data: bytes, now: float) -> None:
        """Client bytes read before the relay (a PROXY header and what follows it)."""
        assert self.state == EXPECT, STATE_NAMES[self.state]
        buffer = self.buffer
        buffer += data
        try:
            header = parse_v2(buffer, transport=TRANSPORT_STREAM)
        except ProxyProtocolError:
            self.ctx.counters.proxy_protocol_errors += 1
            self._close()
            return
        if header is None:
            if len(buffer) > MAX_PROXY_HEADER:
                self.ctx.counters.proxy_protocol_errors += 1
                self._close()
            return
        if header.source is None:
            self._close()  # LOCAL or AF_UNSPEC: nothing to proxy for (a health check)
            return
        self.source = header.source
        self.raw_header = bytes(buffer[: header.length])
        del buffer[: header.length]
        self._route(now)

    def front_eof(self, now: float) -> None:
        if self.state == PIPE:
            self.up_ended = True
            self._maybe_done()
        else:
            self._close()  # EOF before a backend: a health check, closed silently

    def back_eof(self, now: float) -> None:
        assert self.state == PIPE
        self.down_ended = True
        self._maybe_done()

    def error(self, now: float) -> None:
        """A reset or a failed send on either side: the relay ends."""
        self._close()

    def back_connected(self, now: float) -> None:
        assert self.state == CONNECTING
        cluster, backend = self.cluster, self.backend
        assert cluster is not None
        assert backend is not None
        cluster.connection_succeeded(backend.id)
        if cluster.connect_seconds is not None:
            cluster.connect_seconds.observe(now - self.connect_started)
        cluster.opened(backend.id)
        self.opened = True
        early = bytes(self.buffer)
        self.buffer.clear()
        if cluster.send_proxy:
            header = self.raw_header or build_v2(self.source, self.local)
            self.to_back += header
        self.to_back += early
        self.ctx.counters.bytes_in += len(early)
        self.state = PIPE
        self.actions |= PIPE_START
        self.up_idle = now + self.ctx.config.front_timeout
        self.down_idle = now + self.ctx.config.back_timeout
        self.deadline = max(self.up_idle, self.down_idle)

    def back_connect_failed(self, now: float) -> None:
        assert self.state == CONNECTING
        self._failed_connect(now)

    def moved(self, up: int, down: int, now: float) -> None:
        """The shell relayed `up` bytes to the backend and `down` to the client."""
        counters = self.ctx.counters
        if up:
            counters.bytes_in += up
            self.up_idle = now + self.ctx.config.front_timeout
        if down:
            counters.bytes_out += down
            self.down_idle = now + self.ctx.config.back_timeout
        cluster, backend = self.cluster, self.backend
        if cluster is not None and backend is not None:
            cluster.transferred(backend.id, up, down)
        self.deadline = max(self.up_idle, self.down_idle)

    def on_timer(self, now: float) -> None:
        if now < self.deadline or self.done:
            return
        state = self.state
        if state == CONNECTING:
            self.actions |= CLOSE_BACK
            self._failed_connect(now)
        elif state == PIPE:
            self.ctx.counters.timed_out += 1
            self._close()
        else:
            self._close()

    # -- decisions

    def _route(self, now: float) -> None:
        ctx = self.ctx
        cluster = ctx.cluster_of()
        if cluster is None:
            ctx.counters.no_backend += 1
            self._close()
            return
        self.cluster = cluster
        per_ip = ctx.per_ip
        if per_ip is not None:
            record = ctx.cluster_record(cluster.cluster_id) if ctx.cluster_record else None
            if not per_ip.take(record or Cluster(cluster_id=cluster.cluster_id), self.source[0]):
                ctx.counters.rejected_per_ip += 1
                self._close()
                return
            self.per_ip = cluster.cluster_id
        self.state = CONNECTING
        self._connect(now)

    def _connect(self, now: float) -> None:
        cluster = self.cluster
        assert cluster is not None
        backend = cluster.choose(now)
        if backend is None or self.attempts >= CONNECT_ATTEMPTS:
            self.ctx.counters.no_backend += 1
            self._close()
            return
        if self.attempts:
            self.ctx.counters.retries += 1
        self.attempts += 1
        self.backend = backend
        self.target = backend.address
        self.connect_started = now
        self.deadline = now + self.ctx.config.connect_timeout
        self.actions |= CONNECT

    def _failed_connect(self, now: float) -> None:
        cluster, backend = self.cluster, self.backend
        assert cluster is not None
        assert backend is not None
        self.ctx.counters.backend_errors += 1
        cluster.connection_failed(backend.id, now)
        self._connect(now)

    def _maybe_done(self) -> None:
        if self.up_ended and self.down_ended:
            self._close()

    def _close(self) -> None:
        if self.done:
            return
        self.actions |= CLOSE
        self.state = DONE
        self.done = True
        self.deadline = math.inf
        if self.opened:
            cluster, backend = self.cluster, self.backend
            assert cluster is not None
            assert backend is not None
            cluster.closed(backend.id)
            self.opened = False
        if self.per_ip is not None and self.ctx.per_ip is not None:
            self.ctx.per_ip.give(self.per_ip, self.source[0])
            self.per_ip = None

    def check_invariants(self) -> None:
        assert (self.state == DONE) == self.done
        assert not self.done or self.deadline == math.inf
        assert self.state == PIPE or not (self.up_ended or self.down_ended)
        assert self.state != CONNECTING or self.target is not None
        assert not self.opened or self.state in (PIPE, DONE)
        assert self.attempts <= CONNECT_ATTEMPTS
