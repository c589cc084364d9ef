"""Drives the HTTP/1.1 session core in tests: a listener context with clusters of fake backends
(`World`), and a stand-in for the loop shell (`Driver`) that carries out the core's actions,
flushes its buffers into byte logs, keeps a backend connection pool, and checks every
invariant after every call. Responses the client received are parsed by `parse_responses`."""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field
from typing import Any

from sozu.command.types import (
    Cluster,
    HttpListenerConfig,
    HttpsListenerConfig,
    RequestHttpFrontend,
)
from sozu.worker.core.balancing import Backend, LoadBalancingPolicy
from sozu.worker.core.clusters import TcpCluster
from sozu.worker.core.http.request_id import UlidGenerator
from sozu.worker.core.http.router import Router
from sozu.worker.core.http1.actions import (
    CLOSE_BACK,
    CLOSE_FRONT,
    CONNECT,
    LINGER_FRONT,
    RELEASE_BACK,
    SHUTDOWN_BACK,
    SHUTDOWN_FRONT,
    TUNNEL,
)
from sozu.worker.core.http1.context import ListenerContext, SharedContext
from sozu.worker.core.http1.session import Http1Session

LISTEN = "127.0.0.1:8080"
PEER = ("10.0.0.7", 40123)
WALL_NS = 1_750_000_000_000_000_000


def ulids() -> UlidGenerator:
    counter = itertools.count(1)
    return UlidGenerator(lambda: WALL_NS // 1_000_000, lambda n: next(counter).to_bytes(n, "big"))


class World:
    """One listener and its clusters; `backends` are (id, port) pairs on 10.1.0.1.

    Sessions keep no backend connection between requests unless `max_kept_backs` says so
    (the worker's default does; the simulation and tests/http1/test_kept.py cover it): the
    other tests follow every request through CONNECT and the pool."""

    def __init__(
        self,
        *,
        https: bool = False,
        access_log: bool = False,
        max_kept_backs: int = 0,
        **keys: Any,
    ) -> None:
        config: HttpListenerConfig
        if https:
            config = HttpsListenerConfig(address=LISTEN, **keys)
        else:
            config = HttpListenerConfig(address=LISTEN, **keys)
        self.clusters: dict[str, tuple[Cluster, TcpCluster]] = {}
        self.shared = SharedContext(
            self.clusters.get, ids=ulids(), time_ns=lambda: WALL_NS, drain_timeout=30.0
        )
        self.shared.max_kept_backs = max_kept_backs
        self.lines: list[str] = []
        if access_log:
            self.shared.access_log = self.lines.append
        self.router = Router()
        self.ctx = ListenerContext(config, self.router, self.shared)
        self.seen_histograms: dict[tuple[str, str], Any] = {}

    def cluster(
        self,
        cluster_id: str,
        backends: list[tuple[str, int]] | None = None,
        *,
        sticky_ids: dict[str, str] | None = None,
        **keys: Any,
    ) -> TcpCluster:
        members = [Backend(b, ("10.1.0.1", port)) for b, port in (backends or [])]
        cluster = TcpCluster(
            cluster_id, LoadBalancingPolicy.ROUND_ROBIN, members, rng=random.Random(0)
        )
        self.clusters[cluster_id] = (Cluster(cluster_id=cluster_id, **keys), cluster)
        by_value = self.shared.sticky_to_backend.setdefault(cluster_id, {})
        for member in members:
            value = (sticky_ids or {}).get(member.id, member.id)
            by_value.setdefault(value, member.id)
            self.shared.backend_to_sticky[(cluster_id, member.id)] = value
        return cluster

    def frontend(self, hostname: str, cluster_id: str | None, **keys: Any) -> None:
        self.router.add(
            RequestHttpFrontend(address=LISTEN, hostname=hostname, cluster_id=cluster_id, **keys)
        )

    def web(self, *backends: tuple[str, int], **keys: Any) -> TcpCluster:
        """The usual setup: `web.test` routed to cluster `web`."""
        cluster = self.cluster("web", list(backends or [("b1", 8001)]), **keys)
        self.frontend("web.test", "web")
        return cluster

    def session(self, **keys: Any) -> Driver:
        return Driver(self, Http1Session(self.ctx, PEER, **keys))

    def check(self) -> None:
        self.ctx.check_invariants()
        for _, cluster in self.clusters.values():
            assert cluster.check_invariants()
            assert all(load > 0 for load in cluster.loads.values())
        self.router.check_invariants()


@dataclass(eq=False)
class BackConn:
    """A fake backend connection: what it received, and how it ended."""

    number: int
    backend_id: str
    address: tuple[str, int]
    received: bytearray = field(default_factory=bytearray)
    closed: bool = False
    pooled: bool = False
    shut: bool = False


class Driver:
    """Plays the loop shell around one session."""

    def __init__(self, world: World, session: Http1Session) -> None:
        self.world = world
        self.s = session
        self.now = 1000.0
        self.client = bytearray()  # everything the client received
        self.flush_front = True
        self.flush_back = True
        self.front_close = 0  # CLOSE_FRONT or LINGER_FRONT once asked
        self.front_shut = False
        self.tunnel = False
        self.conn: BackConn | None = None  # the connection of the current exchange
        self.kept: BackConn | None = None  # the idle connection the session keeps
        self.reused_kept = 0  # requests sent on the kept connection
        self.conns: list[BackConn] = []
        self.pool: dict[tuple[str, int], list[BackConn]] = {}
        self.connects: list[tuple[str, bool, bool]] = []  # (backend id, allow_pooled, verify)
        self.dialing = False
        self.history: list[int] = []
        self._kept_reused_seen = world.shared.kept_reused
        session.start(self.now)
        self._after()

    # -- plumbing

    def _after(self) -> None:
        s = self.s
        actions, s.actions = s.actions, 0
        self.history.append(actions)
        reused = self.world.shared.kept_reused - self._kept_reused_seen
        self._kept_reused_seen = self.world.shared.kept_reused
        if reused:
            assert reused == 1
            conn = self.kept if self.kept is not None else self.conn
            assert conn is not None, "reused a kept connection the shell does not hold"
            assert s.target is not None
            assert s.target.address == conn.address
            self.kept = None
            self.conn = conn
            self.reused_kept += 1
        elif s.kept is not None and self.kept is None:
            assert self.conn is not None, "kept a connection the shell does not hold"
            assert s.kept == self.conn.address
            self.kept, self.conn = self.conn, None
        if actions & RELEASE_BACK:
            conn = self.conn if self.conn is not None else self.kept
            assert conn is not None
            assert not s.to_back
            conn.pooled = True
            self.pool.setdefault(conn.address, []).append(conn)
            if conn is self.kept:
                self.kept = None
            else:
                self.conn = None
        if actions & CLOSE_BACK:
            assert not s.to_back, "the core empties to_back when it closes the backend"
            if self.conn is None and self.kept is not None:
                self.kept.closed = True
                self.kept = None
            if self.conn is not None:
                self.conn.closed = True
                self.conn = None
            self.dialing = False
        if actions & CONNECT:
            target = s.target
            assert target is not None
            assert self.conn is None
            self.connects.append((target.backend_id, target.allow_pooled, target.verify))
            self.dialing = True
        if actions & TUNNEL:
            self.tunnel = True
        if actions & SHUTDOWN_FRONT:
            self.front_shut = True
        if actions & (CLOSE_FRONT | LINGER_FRONT):
            assert not self.front_close, "the client connection is closed once"
            assert not (actions & CLOSE_FRONT and actions & LINGER_FRONT)
            self.front_close = actions & (CLOSE_FRONT | LINGER_FRONT)
        self._flush()
        if actions & SHUTDOWN_BACK and self.conn is not None and not s.to_back:
            self.conn.shut = True
        self.check()

    def _flush(self) -> None:
        s = self.s
        moved = False
        if self.flush_front and s.to_front:
            self.client += s.to_front
            s.to_front.clear()
            moved = True
        if self.flush_back and s.to_back:
            assert self.conn is not None, "bytes for a backend that is not connected"
            self.conn.received += s.to_back
            s.to_back.clear()
            moved = True
        if moved:
            s.sent(self.now)
            actions, s.actions = s.actions, 0
            assert not actions & ~(CLOSE_BACK | RELEASE_BACK), actions
            if actions & CLOSE_BACK and self.conn is not None:
                self.conn.closed = True
                self.conn = None

    def check(self) -> None:
        self.s.check_invariants()
        self.world.check()
        assert (self.kept is None) == (self.s.kept is None), "the shell and the core disagree"
        if self.s.done:
            assert self.front_close, "done without closing the client connection"

    # -- the client

    def send(self, data: bytes) -> None:
        assert self.s.wants_front_read(), "the core does not want client bytes now"
        self.s.front_data(data, self.now)
        self._after()

    def eof(self) -> None:
        self.s.front_eof(self.now)
        self._after()

    def reset(self) -> None:
        self.s.front_error(self.now)
        self._after()

    def abort(self) -> None:
        self.s.abort(self.now)
        self._after()

    def drain(self) -> None:
        self.s.drain(self.now)
        self._after()

    def client_open(self) -> bool:
        """Neither CLOSE_FRONT nor LINGER_FRONT was asked."""
        return not self.front_close

    def take_client(self) -> bytes:
        data = bytes(self.client)
        self.client.clear()
        return data

    # -- backends

    def connect(self, *, pooled: bool = True) -> BackConn:
        """Satisfy the pending CONNECT: a pooled connection when allowed and `pooled`."""
        assert self.dialing, "no CONNECT pending"
        target = self.s.target
        assert target is not None
        idle = self.pool.get(target.address)
        self.dialing = False
        if pooled and target.allow_pooled and idle:
            conn = idle.pop()
            conn.pooled = False
            self.conn = conn
            self.s.back_connected(self.now, True)
        else:
            conn = BackConn(len(self.conns) + 1, target.backend_id, target.address)
            self.conns.append(conn)
            self.conn = conn
            self.s.back_connected(self.now, False)
        self._after()
        return conn

    def refuse(self) -> None:
        assert self.dialing
        self.dialing = False
        self.s.back_connect_failed(self.now)
        self._after()

    def reply(self, data: bytes) -> None:
        assert self.conn is not None
        assert self.s.wants_back_read(), "the core does not want backend bytes now"
        self.s.back_data(data, self.now)
        self._after()

    def back_eof(self) -> None:
        self.s.back_eof(self.now)
        self._after()

    def kept_closed(self, *, reset: bool = False) -> None:
        """The backend closes the idle kept connection: the shell drops it, tells the core."""
        assert self.kept is not None
        self.kept.closed = True
        self.kept = None
        if reset:
            self.s.back_error(self.now)
        else:
            self.s.back_eof(self.now)
        self._after()

    def kept_speaks(self, data: bytes) -> None:
        """The backend sends bytes on the idle kept connection."""
        assert self.kept is not None
        assert self.s.wants_back_read(), "a kept connection is watched"
        self.s.back_data(data, self.now)
        self._after()

    def back_reset(self) -> None:
        self.s.back_error(self.now)
        self._after()

    def back_refused(self) -> None:
        """The backend did not process the request (an HTTP/2 stream refused)."""
        self.s.back_refused(self.now)
        self._after()

    def received(self) -> bytes:
        """What the current (or last) backend connection received, then forgotten."""
        conn = self.conn or self.conns[-1]
        data = bytes(conn.received)
        conn.received.clear()
        return data

    # -- time

    def advance(self, seconds: float) -> None:
        """Let time pass, firing the core's timer as the shell would."""
        end = self.now + seconds
        while self.s.deadline <= end and not self.s.done:
            self.now = max(self.now, self.s.deadline)
            self.s.on_timer(self.now)
            self._after()
        self.now = end

    def flush(self) -> None:
        """The peers read everything queued for them (whatever `flush_*` say)."""
        front, back = self.flush_front, self.flush_back
        self.flush_front = self.flush_back = True
        self._flush()
        self.flush_front, self.flush_back = front, back
        self.check()


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ?(.*)")


def parse_responses(
    data: bytes, head_requests: frozenset[int] = frozenset(), *, until_close: bool = True
) -> list[Response]:
    """The responses in `data`, in order; indexes in `head_requests` are answers to HEAD
    (no body). A body without framing runs to the end of `data` when `until_close`."""
    out: list[Response] = []
    position = 0
    index = 0
    while position < len(data):
        end = data.index(b"\r\n\r\n", position) + 4
        head = data[position:end]
        lines = head[:-4].split(b"\r\n")
        match = _STATUS.fullmatch(lines[0])
        assert match, lines[0]
        status = int(match.group(1))
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.decode(), value.strip().decode()))
        response = Response(status, match.group(2).decode(), headers, b"", head)
        position = end
        lowered = {k.lower(): v for k, v in headers}
        if 100 <= status < 200 and status != 101:
            out.append(response)
            continue
        if index in head_requests or status in (204, 304, 101):
            pass
        elif lowered.get("transfer-encoding", "").lower().endswith("chunked"):
            body = bytearray()
            while True:
                line_end = data.index(b"\r\n", position)
                size = int(data[position:line_end].split(b";")[0], 16)
                position = line_end + 2
                if size == 0:
                    position = data.index(b"\r\n\r\n", position - 2) + 4
                    break
                body += data[position : position + size]
                position += size + 2
            response.body = bytes(body)
        elif "content-length" in lowered:
            size = int(lowered["content-length"])
            response.body = data[position : position + size]
            assert len(response.body) == size, "truncated body"
            position += size
        elif until_close:
            response.body = data[position:]
            position = len(data)
        out.append(response)
        index += 1
    return out


def backend_head(data: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    """(request line, headers by lower-case name, rest) of what a backend received."""
    end = data.index(b"\r\n\r\n") + 4
    lines = data[: end - 4].decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.lower(), []).append(value.strip())
    return lines[0], headers, data[end:]


def ok(body: bytes = b"ok", *extra: str) -> bytes:
    """A keep-alive 200 with a Content-Length body."""
    headers = "".join(f"{line}\r\n" for line in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def get(path: str = "/", host: str = "web.test", *extra: str, version: str = "1.1") -> bytes:
    headers = "".join(f"{line}\r\n" for line in extra)
    return f"GET {path} HTTP/{version}\r\nHost: {host}\r\n{headers}\r\n".encode()
