"""The HTTP/1.1 session core: one client connection as a synchronous sans-io state machine.

The shell (one readiness loop per worker) feeds it events (`front_data`, `back_data`, `sent`,
`on_timer`...) with the monotonic time, and after every call reads what it produced: bytes in
`to_front` and `to_back`, action bits in `actions` (see actions.py), the backend in `target`,
the next timer in `deadline`, and `done`. Nothing here does I/O or reads a clock. Routing and
policy live in routing.py, the backend exchange in exchange.py, generated answers and access
log lines in answering.py; this module holds the state, the inputs, the request heads, the
timers and the closing of the client connection. LIFECYCLE.md beside it draws the states.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sozu.worker.core.http.codec import ChunkedScanner, RequestHead
from sozu.worker.core.http1 import exchange, tunnel
from sozu.worker.core.http1.actions import CLOSE_BACK, CLOSE_FRONT, LINGER_FRONT, BackendTarget
from sozu.worker.core.http1.answering import count_requests, log_request
from sozu.worker.core.http1.context import ListenerContext
from sozu.worker.core.http1.heads import read_first_head, read_heads, read_parsed_head, read_timer
from sozu.worker.core.http1.invariants import check_session
from sozu.worker.core.http1.routing import release_per_ip_slot
from sozu.worker.core.http1.states import (
    INF,
    R_HEAD,
    READ_BACK,
    READ_FRONT,
    S_CLOSING,
    S_CONNECTING,
    S_DONE,
    S_EXCHANGE,
    S_HEAD,
    S_TUNNEL,
)

if TYPE_CHECKING:
    from sozu.command.types import Cluster, RequestHttpFrontend
    from sozu.worker.core.balancing.backend import Backend
    from sozu.worker.core.clusters import TcpCluster
    from sozu.worker.core.http.header_edits import HeaderEdit


class Http1Session:
    """One client connection. The shell reads `to_front`, `to_back`, `actions`, `target`,
    `deadline` and `done` after each input call; every other attribute is the core's own."""

    __slots__ = (
        "actions",
        "attempt",
        "authority",
        "back_close_pending",
        "back_extra",
        "back_keep",
        "back_keep_asked",
        "back_open",
        "back_opened",
        "back_received",
        "backend",
        "backend_started",
        "blen",
        "bytes_in",
        "bytes_out",
        "closing",
        "cluster",
        "cluster_config",
        "connect_started",
        "counters",
        "ctx",
        "deadline",
        "default_cert",
        "done",
        "drain_deadline",
        "draining",
        "fbuf",
        "flen",
        "forwarding",
        "fresh",
        "front_ended",
        "frontend",
        "head",
        "in_heads",
        "keep_alive",
        "keeps_back",
        "kept",
        "last_timeout",
        "limit",
        "linked",
        "log_cluster",
        "log_in0",
        "log_message",
        "log_on",
        "log_out0",
        "log_started",
        "log_tags",
        "peer",
        "per_ip_cluster",
        "per_ip_held",
        "protocol",
        "r_phase",
        "r_remaining",
        "r_scanner",
        "rbuf",
        "request_bytes",
        "request_id",
        "responding",
        "response_edits",
        "reused",
        "routed",
        "served_names",
        "session_id",
        "sni",
        "started",
        "state",
        "status",
        "sticky",
        "sticky_found",
        "t_back",
        "t_bsend",
        "t_fsend",
        "t_read",
        "target",
        "target_slot",
        "to_back",
        "to_front",
        "tunnel_back_done",
        "tunnel_front_done",
        "up_done",
        "up_remaining",
        "up_scanner",
    )

    # Per-request state (reset by `reset_request`).
    head: RequestHead | None
    request_id: str
    authority: str
    routed: bool
    frontend: RequestHttpFrontend | None
    cluster_config: Cluster | None
    cluster: TcpCluster | None
    request_bytes: bytes
    keep_alive: bool
    sticky: str | None
    sticky_found: bytes | None
    response_edits: tuple[HeaderEdit, ...]
    started: float
    attempt: int
    fresh: bool
    last_timeout: bool
    connect_started: float
    backend: Backend | None
    linked: Backend | None
    reused: bool
    back_opened: bool
    backend_started: float
    back_received: bool
    up_done: bool
    up_remaining: int
    up_scanner: ChunkedScanner | None
    r_phase: int
    r_remaining: int
    r_scanner: ChunkedScanner | None
    responding: bool
    closing: bool
    back_keep: bool
    back_keep_asked: bool
    back_extra: bool
    status: int
    log_on: bool
    log_started: float
    log_in0: int
    log_out0: int
    log_cluster: str | None
    log_message: str | None
    log_tags: dict[str, str] | None

    def __init__(
        self,
        ctx: ListenerContext,
        peer: tuple[str, int],
        *,
        served_names: tuple[str, ...] = (),
        sni: str | None = None,
        default_cert: bool = False,
        h2_stream: bool = False,
    ) -> None:
        self.ctx = ctx
        self.counters = ctx.counters
        self.limit = ctx.buffer_limit
        self.peer = peer  # the client address (the PROXY protocol source when there is one)
        # What the TLS handshake served (HTTPS): checked against each request's authority.
        self.served_names = served_names
        self.sni = sni
        self.default_cert = default_cert
        # -- read by the shell
        self.to_front = bytearray()
        self.to_back = bytearray()
        self.actions = 0
        self.target: BackendTarget | None = None
        self.deadline = INF
        self.done = False
        # -- the connection
        self.state = S_HEAD
        self.fbuf = bytearray()  # client bytes not consumed yet (head, pipelined requests)
        self.rbuf = bytearray()  # backend bytes of a response head not complete yet
        self.front_ended = False  # the client half-closed
        self.back_open = False  # a backend connection is up and its input is wanted
        self.back_close_pending = False  # close the backend once to_back is flushed
        # Between requests: the backend connection kept (exchange.py, `let_kept_go`). The core
        # of an HTTP/2 stream keeps none (its response ends it) and counts its request as h2.
        self.kept: tuple[str, int] | None = None
        self.keeps_back = not h2_stream
        self.protocol = "h2" if h2_stream else "http/1.1"
        self.tunnel_front_done = False
        self.tunnel_back_done = False
        self.draining = False
        self.drain_deadline = INF
        self.in_heads = False
        self.target_slot = BackendTarget()
        # Timers: client reads (idle, head, body, tunnel idle, drain), backend (connect,
        # response, body idle), and the two send timers (no progress on a queued buffer).
        self.t_read = self.t_back = self.t_fsend = self.t_bsend = INF
        # Buffer lengths when last accounted (the shell only removes, the core only appends).
        self.flen = 0
        self.blen = 0
        self.bytes_in = 0  # head and body bytes of this connection's requests
        self.bytes_out = 0  # bytes queued for the client
        self.session_id = ""
        self.per_ip_cluster: str | None = None
        self.per_ip_held: set[str] | None = None  # an HTTP/2 stream's: its connection's slots
        # The forwarding headers of this connection's requests, built once (header_edits).
        self.forwarding: bytes | None = None
        self._init_request()

    def _init_request(self) -> None:
        """Every per-request field, for the first request."""
        self.request_id = ""
        self.authority = ""
        self.frontend = None
        self.cluster_config = None
        self.cluster = None
        self.request_bytes = b""
        self.keep_alive = True  # the client's connection stays after this exchange
        self.back_keep_asked = True  # the request sent to the backend did not say close
        self.sticky = None
        self.sticky_found = None
        self.response_edits = ()
        self.started = 0.0
        self.attempt = 0
        self.fresh = False
        self.last_timeout = False
        self.connect_started = 0.0
        self.backend = None
        self.reused = False
        self.back_opened = False  # cluster.opened() was counted for `backend`
        self.backend_started = 0.0
        self.back_received = False  # a response byte came on this backend connection
        self.up_remaining = 0
        self.r_remaining = 0
        self.back_keep = False
        self.back_extra = False  # the backend sent bytes past the response
        self.log_started = 0.0
        self.log_in0 = 0
        self.log_out0 = 0
        self.reset_request()

    def reset_request(self) -> None:
        """Back to idle between requests. Only what is read before the next request sets it
        is reset here: `serve` and the exchange set the rest as they go."""
        self.head = None
        self.routed = False
        self.linked = None  # the backend the request was last connected to
        self.up_done = True
        self.up_scanner = None
        self.r_phase = R_HEAD
        self.r_scanner = None
        self.responding = False  # a final response head went to the client
        self.closing = False  # that head says `Connection: close`
        self.status = 0
        self.log_on = False
        self.log_cluster = None
        self.log_message = None
        self.log_tags = None

    # -- back pressure

    def reads(self) -> int:
        """What to read now (asked after every event): READ_FRONT, the client, while what it
        sent waits within the limit; READ_BACK, the backend connection, while it is open or
        kept (to learn that the backend closed it) and to_front is within the limit."""
        limit = self.limit
        front = self.state < S_CLOSING and not self.front_ended and len(self.fbuf) <= limit
        reads = READ_FRONT if front and len(self.to_back) <= limit else 0
        if (self.back_open or self.kept is not None) and len(self.to_front) <= limit:
            reads |= READ_BACK
        return reads

    def wants_front_read(self) -> bool:
        return bool(self.reads() & READ_FRONT)

    def wants_back_read(self) -> bool:
        return bool(self.reads() & READ_BACK)

    # -- inputs

    def start(self, now: float) -> None:
        """The connection was accepted (and its TLS handshake done)."""
        assert self.state == S_HEAD
        assert self.t_read == INF
        assert not self.fbuf
        self.t_read = now + self.ctx.front_timeout
        if self.ctx.shared.draining:
            self.drain(now)
        self._settle(now)

    def front_data(self, data: bytes, now: float) -> None:
        """Bytes read from the client."""
        assert data, "end of stream is front_eof"
        self.counters.bytes_in += len(data)
        state = self.state
        if state == S_HEAD:
            fbuf = self.fbuf
            if fbuf:
                fbuf += data
                read_heads(self, now)
            else:
                self.t_read = now + self.ctx.request_timeout
                read_first_head(self, data, now)
        elif state == S_EXCHANGE and not self.up_done:
            self.t_read = now + self.ctx.front_timeout
            exchange.upload(self, data, now)
        elif state == S_TUNNEL:
            self.to_back += data
            idle = now + self.ctx.front_timeout
            if idle > self.t_read:
                self.t_read = idle
        elif state < S_CLOSING:
            # A body waiting for its backend connection, or requests pipelined behind this one.
            self.fbuf += data
        self._settle(now)

    def start_with_head(self, head: RequestHead, now: float) -> None:
        """`start`, then a whole request head already parsed (an HTTP/2 stream's) as if its
        bytes were read."""
        if self.ctx.shared.draining:
            self.start(now)
        read_parsed_head(self, head, now)  # sets t_read (request_timeout) in either case
        self._settle(now)

    def front_eof(self, now: float) -> None:
        """The client half-closed its connection."""
        if not self.front_ended and self.state < S_CLOSING:
            self.front_ended = True
            state = self.state
            if state == S_HEAD:
                read_heads(self, now)
            elif state == S_EXCHANGE and not self.up_done:
                self.hang_up(now)  # the request body will never be complete
            elif state == S_TUNNEL:
                tunnel.side_ended(self, now, front=True)
        self._settle(now)

    def front_error(self, now: float) -> None:
        """The client connection failed (reset, or a send failed): nothing more reaches it."""
        if not self.done:
            self.account_out()
            self.to_front.clear()
            self.flen = 0
            if self.state == S_CLOSING:
                if self.back_close_pending:
                    self._close_back_now()
            else:
                self.hang_up(now)
        self._settle(now)

    def awaits_connect(self) -> bool:
        """Whether the CONNECT asked for is still wanted (the client may have left since)."""
        return self.state == S_CONNECTING

    def back_connected(self, now: float, reused: bool) -> None:
        """The CONNECT succeeded: a pooled connection (`reused`) or a new one. Nothing
        changes once the session no longer waits for it (`awaits_connect`)."""
        if self.awaits_connect():
            exchange.connected(self, now, reused)
            self._settle(now)

    def back_connect_failed(self, now: float) -> None:
        """The CONNECT failed (refused, unreachable...); as `back_connected`, nothing
        changes once the session no longer waits for it."""
        if self.awaits_connect():
            exchange.connect_failed(self, now, timed_out=False)
            self._settle(now)

    def back_data(self, data: bytes, now: float) -> None:
        """Bytes read from the backend connection."""
        assert data, "end of stream is back_eof"
        state = self.state
        if state == S_EXCHANGE:
            self.t_back = now + self.ctx.back_timeout
            exchange.response_data(self, data, now)
        elif state == S_TUNNEL:
            self.to_front += data
            idle = now + self.ctx.back_timeout
            if idle > self.t_read:
                self.t_read = idle
        elif self.kept is not None:
            # The backend spoke on an idle connection nobody asked anything: unusable.
            exchange.let_kept_go(self, close=True)
        self._settle(now)

    def back_eof(self, now: float) -> None:
        """The backend half-closed its connection."""
        self._back_ended(now, reset=False)

    def back_error(self, now: float) -> None:
        """The backend connection failed (reset, or a send failed). The shell reads what is
        readable first: a backend may answer, then reset."""
        self._back_ended(now, reset=True)

    def back_refused(self, now: float) -> None:
        """The backend did not process the request (an HTTP/2 stream refused, or above a
        GOAWAY's last stream id): as a stale connection, sent again if it can be."""
        self._back_ended(now, reset=False, refused=True)

    def _back_ended(self, now: float, *, reset: bool, refused: bool = False) -> None:
        state = self.state
        if state == S_EXCHANGE:
            self.back_open = False
            exchange.backend_ended(self, now, reset=reset, refused=refused)
        elif state == S_TUNNEL:
            if reset:
                tunnel.end(self, now)
                self.close_front(now, linger=False, count_pipelined=False)
            elif not self.tunnel_back_done:
                tunnel.side_ended(self, now, front=False)
        elif state == S_CLOSING and self.back_close_pending:
            self._close_back_now()
        elif self.kept is not None:
            # The backend closed the idle connection (the shell dropped it already).
            exchange.let_kept_go(self, close=None)
        self._settle(now)

    def sent(self, now: float) -> None:
        """The shell sent (and removed) bytes from `to_front` and/or `to_back`."""
        length = len(self.to_front)
        if length < self.flen:
            self.flen = length
            self.t_fsend = now + self.ctx.front_timeout if length else INF
        length = len(self.to_back)
        if length < self.blen:
            self.blen = length
            self.t_bsend = now + self.ctx.back_timeout if length else INF
        if self.state == S_CLOSING:
            self._settle(now)
        elif not self.done:
            self.deadline = min(self.t_read, self.t_back, self.t_fsend, self.t_bsend)

    def on_timer(self, now: float) -> None:
        """`now` reached `deadline` (calls before it change nothing)."""
        if not self.done and now >= self.t_fsend:
            # The client has not read for front_timeout: nothing more can reach it.
            self.front_error(now)
            return
        if not self.done and now >= self.t_bsend:
            exchange.back_send_stalled(self, now)
        if not self.done and now >= self.t_back:
            exchange.back_timer(self, now)
        if not self.done and now >= self.t_read:
            read_timer(self, now)
        self._settle(now)

    def drain(self, now: float) -> None:
        """The worker drains: the response being written, or the next one, says close; an idle
        connection waits for one more request until the drain deadline."""
        if not self.draining and not self.done:
            self.draining = True
            shared = self.ctx.shared
            deadline = shared.drain_deadline
            self.drain_deadline = deadline if deadline != INF else now + shared.drain_timeout
            if self.state == S_HEAD and not self.fbuf and self.drain_deadline < self.t_read:
                self.t_read = self.drain_deadline
        self._settle(now)

    # -- request heads

    def next_request(self, now: float) -> None:
        """The request is over and the connection stays: wait for (or parse) the next head."""
        self.reset_request()
        self.state = S_HEAD
        self.t_back = INF
        if self.fbuf:
            self.t_read = now + self.ctx.request_timeout
        else:
            self.t_read = now + self.ctx.front_timeout
            if self.drain_deadline < self.t_read:
                self.t_read = self.drain_deadline
        if not self.in_heads and (self.fbuf or self.front_ended):
            read_heads(self, now)

    # -- ending

    def abort(self, now: float) -> None:
        """The shell drops the connection (the worker stops, an error in the shell): nothing
        more is sent or read, what the core holds is released, and it is `done`."""
        self.front_error(now)

    def hang_up(self, now: float) -> None:
        """End the connection without an answer (client gone, stalled): the request in
        progress is logged as it stands, the backend connection closed, what is queued for
        the client still goes out."""
        if self.state == S_TUNNEL:
            tunnel.end(self, now)
        elif self.head is not None:
            exchange.drop_back(self, keep=False)
            if self.status:
                self.counters.count_status(self.status)
                if self.cluster is not None:
                    self.counters.count_cluster_status(self.cluster.cluster_id, self.status)
                exchange.observe(self, now)
            log_request(self, now)
        self.close_front(now, linger=False, count_pipelined=False)

    def close_front(self, now: float, *, linger: bool, count_pipelined: bool) -> None:
        """Close the client connection once to_front is flushed (`linger`: the response said
        close; requests still buffered behind it are counted, never answered)."""
        assert not self.back_open
        assert not self.back_opened
        if self.kept is not None:
            exchange.let_kept_go(self, close=self.draining)
        if count_pipelined and self.fbuf:
            self.counters.pipelined_unanswered += count_requests(self.fbuf, self.ctx.max_head)
        self.fbuf.clear()
        self.rbuf.clear()
        self.reset_request()
        self.actions |= LINGER_FRONT if linger else CLOSE_FRONT
        self.state = S_CLOSING
        self.t_read = INF
        self.t_back = INF
        if not self.back_close_pending:
            self.target = None

    def _close_back_now(self) -> None:
        self.to_back.clear()
        self.blen = 0
        self.t_bsend = INF
        self.back_close_pending = False
        self.actions |= CLOSE_BACK
        self.target = None

    def _finish(self) -> None:
        self.state = S_DONE
        self.done = True
        self.t_read = self.t_back = self.t_fsend = self.t_bsend = INF
        self.target = None
        release_per_ip_slot(self)

    def account_out(self) -> None:
        """Count the bytes queued for the client since the last count."""
        added = len(self.to_front) - self.flen
        assert added >= 0, "to_front shrank without `sent`"
        if added:
            self.counters.bytes_out += added
            self.bytes_out += added
            self.flen += added

    def _settle(self, now: float) -> None:
        """End of every input: count output, arm the send timers, finish a flushed close, and
        publish the next deadline."""
        length = len(self.to_front)
        added = length - self.flen
        if added:
            assert added > 0, "to_front shrank without `sent`"
            self.counters.bytes_out += added
            self.bytes_out += added
            self.flen = length
        if not length:
            self.t_fsend = INF
        elif self.t_fsend == INF:
            self.t_fsend = now + self.ctx.front_timeout
        length = len(self.to_back)
        if length:
            self.blen = length
            if self.t_bsend == INF:
                self.t_bsend = now + self.ctx.back_timeout
        else:
            self.blen = 0
            self.t_bsend = INF
        if self.state == S_CLOSING:
            if self.back_close_pending and not self.to_back:
                self._close_back_now()
            if not self.to_front and not self.back_close_pending:
                self._finish()
        if self.done:
            self.deadline = INF
        else:
            self.deadline = min(self.t_read, self.t_back, self.t_fsend, self.t_bsend)

    def check_invariants(self) -> None:
        """The state is consistent (call after any input, once the shell read the outputs)."""
        check_session(self)
