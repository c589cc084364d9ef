"""The simulated world around the HTTP/1.1 session cores: one seed's settings, the listener
context and its cluster, the backends (how they accept connections and how they answer), the
backend connections and the pool of idle ones the shell keeps.

Backends answer each request as they read it, by a plan drawn per request: a normal response
(length, chunked or close-delimited body, none for HEAD/204/304, 1xx first, sometimes early,
before the request body), or a fault: garbage, a close or reset before or in the middle of the
response, silence, a malformed chunked body, bytes after the response.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from simulation.http1.wire import HOST, Message, Reader, chunked
from sozu.command.types import Cluster, HttpListenerConfig, RequestHttpFrontend
from sozu.worker.core.balancing import Backend, LoadBalancingPolicy
from sozu.worker.core.balancing.backend import Address
from sozu.worker.core.clusters import TcpCluster
from sozu.worker.core.http.request_id import UlidGenerator
from sozu.worker.core.http.router import Router
from sozu.worker.core.http1.context import ListenerContext, SharedContext

if TYPE_CHECKING:
    from simulation.http1.model import Track

LISTEN: Final = "127.0.0.1:8080"
CLUSTER: Final = "web"
WALL_MS: Final = 1_750_000_000_000
KEEP_ALIVE_404: Final = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
POLICIES: Final = (
    LoadBalancingPolicy.ROUND_ROBIN,
    LoadBalancingPolicy.RANDOM,
    LoadBalancingPolicy.LEAST_LOADED,
    LoadBalancingPolicy.POWER_OF_TWO,
)

# (weight, fault) of a backend's answer to one request; "" is a proper response.
FAULTS: Final = (
    (70, ""),
    (3, "garbage"),
    (3, "early-close"),
    (2, "reset-before"),
    (3, "silent"),
    (2, "reset-mid"),
    (3, "eof-mid"),
    (2, "stall-mid"),
    (3, "bad-chunk"),
    (3, "extra"),
)
_FAULT_NAMES: Final = [name for _, name in FAULTS]
_FAULT_WEIGHTS: Final = [weight for weight, _ in FAULTS]
_STATUSES: Final = (200, 200, 200, 200, 200, 201, 204, 304, 404, 500)
_GARBAGE: Final = (b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 2x0 Bad\r\n\r\n", b"\x00\x01\x02\r\n\r\n")


@dataclass(frozen=True)
class Settings:
    """Everything one seed configures up front."""

    front_timeout: int
    back_timeout: int
    connect_timeout: int
    request_timeout: int
    drain_timeout: int
    max_head: int
    buffer_limit: int
    keep_alive_404: bool
    per_ip_limit: int | None
    policy: LoadBalancingPolicy
    max_live: int
    peers: tuple[tuple[str, int], ...]
    p_pipeline: float  # a client pipelines its requests
    p_autoflush: float  # the shell sends what was queued right after an input
    p_stale: float  # a pooled connection the backend is closing as it is taken
    drain_after: int  # steps into the worker's life when it drains (-1: it does not)

    @staticmethod
    def draw(rng: random.Random) -> Settings:
        request_timeout = rng.randint(1, 4)
        front_timeout = (
            rng.randint(request_timeout + 1, request_timeout + 6)
            if rng.random() < 0.8
            else rng.randint(1, request_timeout)
        )
        max_head = rng.choice((256, 512, 1024, 4096))
        ips = [f"10.0.0.{i}" for i in range(1, rng.randint(2, 6))]
        return Settings(
            front_timeout=front_timeout,
            back_timeout=rng.randint(1, 5),
            connect_timeout=rng.randint(1, 3),
            request_timeout=request_timeout,
            drain_timeout=rng.randint(1, 8),
            max_head=max_head,
            buffer_limit=max_head * rng.choice((1, 2, 4)) + rng.randrange(64),
            keep_alive_404=rng.random() < 0.4,
            per_ip_limit=rng.choice((None, None, None, None, None, 1, 2)),
            policy=rng.choice(POLICIES),
            max_live=rng.randint(1, 4),
            peers=tuple((rng.choice(ips), 40000 + i) for i in range(64)),
            p_pipeline=rng.choice((0.0, 0.3, 0.8)),
            p_autoflush=rng.choice((0.2, 0.6, 0.95)),
            p_stale=rng.choice((0.0, 0.05, 0.2)),
            drain_after=rng.randint(50, 900) if rng.random() < 0.7 else -1,
        )


@dataclass(eq=False)
class SimBackend:
    """A backend server: how it accepts connections and how long it keeps idle ones."""

    backend: Backend
    refuse: float  # probability a dial is refused
    hang: float  # probability a dial never completes
    delay_ms: int  # longest connect delay
    keep_idle_ms: int  # closes an idle keep-alive connection after this long

    @property
    def address(self) -> Address:
        return self.backend.address


def draw_backends(rng: random.Random) -> list[SimBackend]:
    out = []
    for i in range(rng.randint(1, 4)):
        refuse = rng.choice((0.0, 0.0, 0.0, 0.0, 0.02, 0.1, 1.0))
        out.append(
            SimBackend(
                Backend(f"b{i}", ("10.1.0.1", 8000 + i)),
                refuse=refuse,
                hang=rng.choice((0.0, 0.0, 0.0, 0.02, 0.1)),
                delay_ms=rng.choice((0, 20, 300, 2500)),
                keep_idle_ms=rng.choice((500, 5000, 60000)),
            )
        )
    return out


class World:
    """The listener context, its cluster and the backends, as one seed set them up."""

    def __init__(self, rng: random.Random, settings: Settings, clock_ms: list[int]) -> None:
        self.settings = settings
        self.backends = draw_backends(rng)
        self.by_address = {b.address: b for b in self.backends}
        answers = {"404": KEEP_ALIVE_404} if settings.keep_alive_404 else {}
        config = HttpListenerConfig(
            address=LISTEN,
            front_timeout=settings.front_timeout,
            back_timeout=settings.back_timeout,
            connect_timeout=settings.connect_timeout,
            request_timeout=settings.request_timeout,
            answers=answers,
        )
        cluster = TcpCluster(
            CLUSTER,
            settings.policy,
            [b.backend for b in self.backends],
            rng=random.Random(rng.getrandbits(64)),
        )
        self.cluster = cluster
        self.cluster_config = Cluster(
            cluster_id=CLUSTER, max_connections_per_ip=settings.per_ip_limit
        )
        self.clusters = {CLUSTER: (self.cluster_config, cluster)}
        ulid_rng = random.Random(rng.getrandbits(64))
        ids = UlidGenerator(lambda: WALL_MS + clock_ms[0], ulid_rng.randbytes)
        self.shared = SharedContext(
            self.clusters.get,
            ids=ids,
            time_ns=lambda: (WALL_MS + clock_ms[0]) * 1_000_000,
            drain_timeout=float(settings.drain_timeout),
        )
        self.router = Router()
        self.router.add(RequestHttpFrontend(address=LISTEN, hostname=HOST, cluster_id=CLUSTER))
        self.ctx = ListenerContext(
            config,
            self.router,
            self.shared,
            max_head=settings.max_head,
            buffer_limit=settings.buffer_limit,
        )

    def candidates(self) -> list[str]:
        """Backend ids the cluster may choose now (none: every backend is backing off)."""
        backends, _ = self.cluster.selector.candidates()
        return [b.id for b in backends]


# -- backend replies


@dataclass(eq=False)
class Reply:
    """A backend's answer to one request, as planned when it read the request head."""

    tag: str
    status: int
    fault: str
    framing: str  # none, length, chunked, close (of the final response)
    interim: bytes  # 1xx heads before the final one
    head: bytes  # the final head
    body: bytes  # raw body
    says_close: bool
    early: bool  # sent before the request body is read whole
    tunnel: bool  # a 101 to an upgrade request
    wire: bytes  # what is sent: interim + head + body, cut short for a fault
    extra: bytes  # bytes after the response
    end: str  # once `wire` is out: keep, eof, reset or silent


def plan_reply(rng: random.Random, request: Message, upgrade: bool, big: int) -> Reply:
    """The backend's answer to `request` (as it read the head), drawn from `rng`."""
    tag = request.tag
    fault = rng.choices(_FAULT_NAMES, _FAULT_WEIGHTS)[0]
    interim = b""
    if rng.random() < 0.08:
        interim += b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\nX-Sim-Tag: %s\r\n\r\n" % (
            tag.encode()
        )
    if upgrade and rng.random() < 0.75 and fault in ("", "silent", "early-close"):
        head = (
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            f"X-Sim-Tag: {tag}\r\n\r\n"
        ).encode()
        if fault:
            return _faulty(rng, tag, 101, fault, "none", interim, head, b"", False)
        first = rng.randbytes(rng.randint(1, 40)) if rng.random() < 0.3 else b""
        return Reply(
            tag, 101, "", "none", interim, head, first, False, False, True,
            interim + head + first, b"", "keep",
        )  # fmt: skip
    status = rng.choice(_STATUSES)
    version = "1.0" if rng.random() < 0.05 else "1.1"
    lines = [f"HTTP/{version} {status} Sim", f"X-Sim-Tag: {tag}"]
    says_close = rng.random() < 0.08
    if says_close:
        lines.append("Connection: close")
    elif version == "1.0" or rng.random() < 0.05:
        lines.append("Connection: keep-alive")
    size = rng.randint(1, big) if rng.random() < 0.1 else rng.randint(0, 400)
    payload = rng.randbytes(size)
    if request.method == "HEAD" or status in (204, 304):
        framing = "none"
        if status not in (204, 304) and rng.random() < 0.5:
            lines.append(f"Content-Length: {size}")
        body = b""
    else:
        if request.version == "1.1" and rng.random() < 0.45:
            framing = "chunked"
        else:
            framing = "close" if rng.random() < 0.12 else "length"
        if fault == "bad-chunk":
            framing = "chunked"
        if fault == "bad-chunk" and request.version != "1.1":
            fault, framing = "", "length"
        if framing == "length":
            lines.append(f"Content-Length: {size}")
            body = payload
        elif framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            body = chunked(rng, payload, junk=b"xyz\r\n" if fault == "bad-chunk" else b"")
        else:
            body = payload
    if framing == "none" and fault in ("bad-chunk",):
        fault = ""
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    early = request.framing != "none" and rng.random() < 0.15
    return _faulty(rng, tag, status, fault, framing, interim, head, body, says_close, early)


def _faulty(
    rng: random.Random,
    tag: str,
    status: int,
    fault: str,
    framing: str,
    interim: bytes,
    head: bytes,
    body: bytes,
    says_close: bool,
    early: bool = False,
) -> Reply:
    full = interim + head + body
    extra = b""
    end = "eof" if says_close or framing == "close" else "keep"
    wire = full
    if fault == "garbage":
        wire = interim + rng.choice(_GARBAGE)
        end = "keep"
    elif fault in ("early-close", "reset-before", "silent"):
        wire = b""
        end = {"early-close": "eof", "reset-before": "reset", "silent": "silent"}[fault]
    elif fault in ("reset-mid", "eof-mid", "stall-mid"):
        # Cut somewhere after the interim heads: in the final head or in the body.
        wire = full[: rng.randint(len(interim) + 1, max(len(interim) + 1, len(full) - 1))]
        end = {"reset-mid": "reset", "eof-mid": "eof", "stall-mid": "silent"}[fault]
    elif fault == "extra" and framing != "close":
        extra = b"HTTP/1.1 200 Unasked\r\n\r\n"
    return Reply(
        tag, status, fault, framing, interim, head, body, says_close, early, False, wire, extra,
        end,
    )  # fmt: skip


# -- backend connections


OPEN: Final = "open"
POOLED: Final = "pooled"
CLOSED: Final = "closed"


@dataclass(eq=False)
class BackConn:
    """A backend connection the shell holds: what the backend read, what it will send."""

    number: int
    backend: SimBackend
    state: str = OPEN
    owner: int = -1  # the session using it, -1 when pooled or closed
    reused: bool = False  # taken from the pool for the current request
    stale: bool = False  # the backend closes it as it is taken from the pool
    received: int = 0
    outbox: bytearray = field(default_factory=bytearray)
    ready_ms: int = 0  # the backend sends nothing before this
    main_left: int = 0  # bytes of the current reply's wire not delivered yet
    end: str = ""  # eof or reset, due once the outbox is delivered
    not_reading: bool = False  # stopped reading what the proxy sends
    said_close: bool = False
    peer_ended: bool = False  # the backend half-closed or reset
    replies: list[Reply] = field(default_factory=list)
    waiting: Reply | None = None  # a final reply waiting for the request body
    waiting_track: Track | None = None
    queued: int = 0  # bytes ever written (outbox offsets)
    sent: int = 0  # bytes ever delivered to the core
    marks: list[tuple[int, Track]] = field(default_factory=list)  # where final heads end
    tunnel: bool = False
    tunnel_in: bytearray = field(default_factory=bytearray)  # tunnel bytes from the client
    tunnel_out: bytearray = field(default_factory=bytearray)  # tunnel bytes it sent
    idle_since_ms: int = 0
    reader: Reader = field(default_factory=lambda: Reader(responses=False))

    def clean(self) -> str:
        """Why this connection could not be reused now ("" when it can)."""
        if self.state != OPEN:
            return f"it is {self.state}"
        if self.peer_ended or self.stale:
            return "the backend closed it"
        if self.said_close:
            return "the backend said close"
        if self.main_left or self.waiting is not None:
            return "its response is not complete"
        if self.replies and self.replies[-1].end != "keep":
            return f"its last reply ends with {self.replies[-1].end}"
        if self.tunnel:
            return "it carried a tunnel"
        return ""


class Pool:
    """Idle backend connections by address, the most recently released taken first. A
    connection the backend closed while idle is gone when next looked at (the shell's loop
    sees its readiness); one may be closing just as it is taken (`stale`)."""

    def __init__(self) -> None:
        self.idle: dict[Address, list[BackConn]] = {}

    def give(self, conn: BackConn, now_ms: int) -> None:
        conn.state = POOLED
        conn.owner = -1
        conn.reused = False
        conn.idle_since_ms = now_ms
        self.idle.setdefault(conn.backend.address, []).append(conn)

    def take(
        self, address: Address, now_ms: int, rng: random.Random, p_stale: float
    ) -> BackConn | None:
        queue = self.idle.get(address)
        while queue:
            conn = queue.pop()
            if not queue:
                del self.idle[address]
            if conn.outbox or now_ms - conn.idle_since_ms >= conn.backend.keep_idle_ms:
                conn.state = CLOSED  # the backend spoke on it or closed it while idle
                queue = self.idle.get(address)
                continue
            conn.state = OPEN
            conn.stale = rng.random() < p_stale
            return conn
        return None

    def conns(self) -> list[BackConn]:
        return [conn for queue in self.idle.values() for conn in queue]


@dataclass
class Dial:
    """A connection attempt in progress."""

    backend: SimBackend
    outcome: str  # ok, refused or hang
    issued_ms: int
    ready_ms: int


def plan_request_reading(rng: random.Random) -> bool:
    """Whether a new backend connection stops reading what it is sent (rarely)."""
    return rng.random() < 0.02
