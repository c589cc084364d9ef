"""The shell's part, played around every simulated session as the readiness loop plays it:
each input call is followed by the action bits carried out in their order (pool, close,
connect: a pooled connection handed back at once, a dial completing now or later or never),
and by sends of part of what was queued (then `sent`). Every core call goes through `call`,
which reads what the call queued for the client and checks it (checks.py), and feeds the
run's digest. Backends read what they are sent and answer it (world.py's plans, carried out
by backend_replies.py).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable

from simulation.http1 import checks
from simulation.http1.connection import Conn
from simulation.http1.model import Failure
from simulation.http1.timers import due_now
from simulation.http1.wire import ParseError
from simulation.http1.world import (
    CLOSED,
    OPEN,
    BackConn,
    Dial,
    Pool,
    Settings,
    World,
    plan_request_reading,
)
from sozu.worker.core.http1.actions import (
    CLOSE_BACK,
    CLOSE_FRONT,
    CONNECT,
    LINGER_FRONT,
    RELEASE_BACK,
    SHUTDOWN_BACK,
    SHUTDOWN_FRONT,
    TUNNEL,
    describe,
)
from sozu.worker.core.http1.session import Http1Session

MAX_ROUNDS = 16
HOLD_MS = 1000  # how long a client waits for 100 Continue before sending the body anyway


class Shell:
    """The plumbing shared by the simulation: core calls, actions, flushes, backends."""

    def __init__(self, seed: int, factory: Callable[..., Http1Session]) -> None:
        self.seed = seed
        self.factory = factory
        self.rng = random.Random(seed)
        self.clock = [0]
        self.now_ms = 0
        self.calls = 0
        self.digest = hashlib.blake2b(digest_size=16)
        self.trace: Callable[[str], None] | None = None
        self.settings: Settings
        self.world: World
        self.pool = Pool()
        self.conns: dict[int, Conn] = {}
        self.all_conns: list[Conn] = []
        self.back_conns: list[BackConn] = []
        self.timer_due: set[str] = set()
        self.drain_ms = -1
        self.drain_deadline = math.inf
        self.big = 4096
        self.queued_total = 0
        self.delivered_total = 0

    @property
    def now(self) -> float:
        return self.now_ms / 1000.0

    def fail(self, what: str) -> Failure:
        return Failure(what)

    # -- core calls

    def call(self, c: Conn, name: str, fn: Callable[[], None]) -> tuple[int, int]:
        """Run one core input; returns (action bits it set, bytes it queued for the client)."""
        s = c.s
        self.calls += 1
        counters = self.world.ctx.counters
        unanswered = counters.pipelined_unanswered
        reused = self.world.shared.kept_reused
        c.last_call = name
        fn()
        acts = s.actions
        queued = self._observe(c, name)
        self._follow_kept(c, self.world.shared.kept_reused - reused)
        self.digest.update(b"%d %s %d %d %r;" % (c.sid, name.encode(), acts, queued, s.deadline))
        if self.trace is not None:
            self.trace(
                f"    {c.name()} {name} -> {describe(acts)} +{queued}B front={len(s.to_front)} "
                f"back={len(s.to_back)} deadline={s.deadline:.3f}{' done' if s.done else ''}"
            )
        closing = acts & (CLOSE_FRONT | LINGER_FRONT)
        delta = counters.pipelined_unanswered - unanswered
        if closing:
            if c.front_close:
                raise self.fail(f"{c.name()}: the client connection closed twice")
            c.front_close = closing
            checks.check_close(self, c, name, closing, delta)
        elif c.close_due:
            raise self.fail(
                f"{c.name()}: a response that said close is complete, the connection stays open"
            )
        elif delta:
            raise self.fail(f"{c.name()}: {delta} requests counted unanswered without a close")
        c.close_due = False
        return acts, queued

    def _observe(self, c: Conn, name: str) -> int:
        s = c.s
        length = len(s.to_front)
        if length < c.front_seen:
            c.dropped = True
            c.front_seen = 0
        queued = 0
        if length > c.front_seen:
            data = bytes(s.to_front[c.front_seen :])
            if c.front_seen == 0:
                c.fsend_origin = self.now_ms
            c.front_seen = length
            queued = len(data)
            self.digest.update(data)
            self._queued(c, data, name)
        if not length:
            c.fsend_origin = -1
        length = len(s.to_back)
        if length < c.back_seen:
            c.back_seen = 0
        if length > c.back_seen:
            self.digest.update(s.to_back[c.back_seen :])
            if c.back_seen == 0:
                c.bsend_origin = self.now_ms
            c.back_seen = length
        if not length:
            c.bsend_origin = -1
        return queued

    def _follow_kept(self, c: Conn, reused: int) -> None:
        """What the session did with the connection it may keep between requests: kept it
        (checked as a release to the pool is), or sent its next request on it (checked as a
        CONNECT that takes a pooled connection is). Letting it go comes as RELEASE_BACK or
        CLOSE_BACK, or follows the backend's close of it (`kept_end`)."""
        s = c.s
        if reused:
            if reused != 1:
                raise self.fail(f"{c.name()}: {reused} kept connections reused in one input")
            conn = c.kept if c.kept is not None else c.back
            if conn is None:
                raise self.fail(f"{c.name()}: reused a kept connection it does not have")
            checks.check_release(self, c, conn, reuse=True)
            target = s.target
            t = c.client.current()
            if target is None or target.address != conn.backend.address:
                raise self.fail(f"{c.name()}: reused a connection to another backend")
            if t is None or not t.head_done or t.req.has_body:
                raise self.fail(f"{c.name()}: reused a kept connection for {t}")
            if target.backend_id not in self.world.candidates():
                raise self.fail(f"{c.name()}: reused a connection to a backend backing off")
            if c.last_call in ("back_eof", "back_error"):
                raise self.fail(f"{c.name()}: a retry reused a kept connection")
            if t.first_connect_call < 0:
                t.first_connect_call = self.calls
            c.kept = None
            c.back = None
            self._attach(c, conn, reused=True)
            # The backend may be closing it just now, or closed it while idle unseen.
            idle = self.now_ms - conn.idle_since_ms >= conn.backend.keep_idle_ms
            conn.stale = idle or self.rng.random() < self.settings.p_stale
        elif s.kept is not None and c.kept is None:
            conn = c.back
            if conn is None:
                raise self.fail(f"{c.name()}: keeps a backend connection it does not have")
            checks.check_release(self, c, conn)
            c.kept = conn
            c.back = None
            conn.idle_since_ms = self.now_ms
            conn.reused = False
        if (s.kept is None) != (c.kept is None) and not s.actions & (RELEASE_BACK | CLOSE_BACK):
            raise self.fail(f"{c.name()}: the kept connection was let go without an action")

    def kept_end(self, c: Conn, how: str) -> None:
        """The backend closes (or resets) the idle connection the session keeps: the shell
        drops it, then tells the core, which must change nothing the client sees."""
        conn = c.kept
        assert conn is not None
        c.kept = None
        conn.state = CLOSED
        conn.owner = -1
        fn = c.s.back_eof if how == "eof" else c.s.back_error
        acts, queued = self.call(c, f"kept_{how}", lambda: fn(self.now))
        if acts or queued or c.s.kept is not None:
            raise self.fail(f"{c.name()}: the close of its kept connection changed something")
        self.settle(c)

    def kept_speaks(self, c: Conn) -> None:
        """The backend sends bytes on the idle kept connection: unusable, closed."""
        conn = c.kept
        assert conn is not None
        data = bytes(conn.outbox)
        conn.outbox.clear()
        acts, queued = self.call(c, "kept_data", lambda: c.s.back_data(data, self.now))
        if acts != CLOSE_BACK or queued or c.s.kept is not None:
            raise self.fail(f"{c.name()}: bytes on its kept connection did not close it")
        self.settle(c)

    def _queued(self, c: Conn, data: bytes, name: str) -> None:
        client = c.client
        client.queued += len(data)
        self.queued_total += len(data)

        def method() -> str:
            t = client.current()
            return t.req.method if t is not None else "GET"

        try:
            events = client.reader.feed(data, method)
        except ParseError as error:
            raise self.fail(f"{c.name()}: queued bytes its client cannot read: {error}") from None
        for kind, obj in events:
            if isinstance(obj, bytes):
                checks.tunnel_down(self, c, obj)
            elif kind == "head":
                checks.check_head(self, c, obj, name)
            else:
                checks.check_done(self, c, obj, name)

    def settle(self, c: Conn) -> None:
        """Carry out the action bits until the session asks for nothing more."""
        s = c.s
        for _ in range(MAX_ROUNDS):
            acts = s.actions
            if not acts:
                break
            s.actions = 0
            self._carry_out(c, acts)
        else:
            raise self.fail(f"{c.name()}: the session kept asking for actions ({s.actions})")
        if s.done and not c.finished:
            self._finish(c)
        self._half_closes(c)

    def _carry_out(self, c: Conn, acts: int) -> None:
        s = c.s
        if acts & RELEASE_BACK:
            conn = c.back if c.back is not None else c.kept
            if conn is None:
                raise self.fail(f"{c.name()}: RELEASE_BACK without a backend connection")
            if conn is c.kept:
                if c.drained:
                    raise self.fail(f"{c.name()}: kept connection pooled while draining")
            else:
                checks.check_release(self, c, conn)
            self.pool.give(conn, self.now_ms)
            c.back = c.kept = None
        if acts & CLOSE_BACK:
            if c.back is None and c.kept is not None:
                c.kept.state = CLOSED
                c.kept.owner = -1
                c.kept = None
            if c.back is not None:
                c.back.state = CLOSED
                c.back.owner = -1
                c.back = None
            c.dial = None
        if acts & CONNECT:
            self._connect(c)
        if acts & TUNNEL:
            c.tunnel = True
            c.tunnel_conn = c.back
            c.tunnel_ms = c.tunnel_front_ms = c.tunnel_back_ms = self.now_ms
        if acts & SHUTDOWN_BACK:
            if not c.client.eof_sent:
                raise self.fail(f"{c.name()}: SHUTDOWN_BACK but its client did not half-close")
            c.shut_back_due = True
        if acts & SHUTDOWN_FRONT:
            conn = c.tunnel_conn
            if conn is None or not conn.peer_ended:
                raise self.fail(f"{c.name()}: SHUTDOWN_FRONT but the backend did not half-close")
            c.shut_front_due = True
        if s.to_back and c.back is None and c.dial is None:
            raise self.fail(f"{c.name()}: bytes queued for a backend connection it does not have")

    def _connect(self, c: Conn) -> None:
        s = c.s
        target = s.target
        if target is None:
            raise self.fail(f"{c.name()}: CONNECT without a target")
        sim = self.world.by_address.get(target.address)
        if sim is None or sim.backend.id != target.backend_id:
            raise self.fail(f"{c.name()}: CONNECT to an unknown backend {target!r}")
        if c.back is not None or c.dial is not None:
            raise self.fail(f"{c.name()}: CONNECT while it holds a backend connection")
        candidates = self.world.candidates()
        if target.backend_id not in candidates:
            raise self.fail(
                f"{c.name()}: CONNECT to {target.backend_id}, which is backing off "
                f"(candidates {candidates})"
            )
        t = c.client.current()
        if t is None or not t.head_done:
            raise self.fail(f"{c.name()}: CONNECT with no complete request head")
        if c.last_call in ("back_eof", "back_error"):
            if not c.retry_expected:
                raise self.fail(f"{c.name()}: {t.tag} sent again after its backend closed")
            if target.allow_pooled:
                raise self.fail(f"{c.name()}: the retry of {t.tag} may take a pooled connection")
            t.failed_attempts = 0
        if target.verify != t.req.has_body:
            raise self.fail(f"{c.name()}: CONNECT verify={target.verify} for {t.tag}")
        if t.first_connect_call < 0:
            t.first_connect_call = self.calls
        rng = self.rng
        if target.allow_pooled:
            conn = self.pool.take(target.address, self.now_ms, rng, self.settings.p_stale)
            if conn is not None:
                self._attach(c, conn, reused=True)
                self.call(c, "back_connected", lambda: s.back_connected(self.now, True))
                return
        roll = rng.random()
        outcome = (
            "refused" if roll < sim.refuse else "hang" if roll < sim.refuse + sim.hang else "ok"
        )
        delay = rng.randint(0, sim.delay_ms)
        if outcome != "hang" and (delay == 0 or rng.random() < 0.2):
            # connect_ex answered at once.
            self._dialed(c, Dial(sim, outcome, self.now_ms, self.now_ms))
            return
        ready = self.now_ms + delay if outcome != "hang" else 1 << 62
        c.dial = Dial(sim, outcome, self.now_ms, ready)

    def _dialed(self, c: Conn, dial: Dial) -> None:
        s = c.s
        if dial.outcome == "ok":
            conn = BackConn(len(self.back_conns) + 1, dial.backend)
            conn.not_reading = plan_request_reading(self.rng)
            self.back_conns.append(conn)
            self._attach(c, conn, reused=False)
            self.call(c, "back_connected", lambda: s.back_connected(self.now, False))
        else:
            t = c.client.current()
            assert t is not None
            t.failed_attempts += 1
            self.call(c, "back_connect_failed", lambda: s.back_connect_failed(self.now))

    def _attach(self, c: Conn, conn: BackConn, *, reused: bool) -> None:
        conn.owner = c.sid
        conn.state = OPEN
        conn.reused = reused
        c.back = conn
        c.connected_ms = c.last_back_ms = self.now_ms
        c.resp_bytes = 0
        t = c.client.current()
        assert t is not None
        t.connected = True

    def _finish(self, c: Conn) -> None:
        """The session is done: the shell closes the client connection."""
        s = c.s
        c.finished = True
        del self.conns[c.sid]
        if not c.front_close:
            raise self.fail(f"{c.name()}: done without closing its client connection")
        if s.to_front or s.to_back:
            raise self.fail(f"{c.name()}: done with bytes still queued")
        if c.back is not None:
            raise self.fail(f"{c.name()}: done holding backend connection #{c.back.number}")
        if c.kept is not None:
            raise self.fail(f"{c.name()}: done keeping backend connection #{c.kept.number}")
        if c.dial is not None:
            raise self.fail(f"{c.name()}: done with a connect in progress")
        if s.deadline != math.inf:
            raise self.fail(f"{c.name()}: done with a deadline {s.deadline}")
        checks.check_finished(self, c)

    def _half_closes(self, c: Conn) -> None:
        s = c.s
        if c.shut_back_due and c.back is None:
            c.shut_back_due = False  # closed instead (its buffer stalled)
        if c.shut_back_due and not s.to_back and c.back is not None:
            assert c.back is c.tunnel_conn
            c.shut_back_due = False
            if bytes(c.back.tunnel_in) != bytes(c.client.tunnel_sent):
                raise self.fail(f"{c.name()}: the backend half-closed before all tunnel bytes")
        if c.shut_front_due and not s.to_front:
            c.shut_front_due = False
            conn = c.tunnel_conn
            sent = conn.tunnel_out if conn is not None else b""
            if not c.dropped and bytes(c.client.tunnel_queued) != bytes(sent):
                raise self.fail(f"{c.name()}: the client half-closed before all tunnel bytes")

    # -- the client side

    def client_send(self, c: Conn, n: int) -> None:
        client = c.client
        data = bytes(client.out[:n])
        del client.out[:n]
        if client.pace_ms:
            client.next_send_ms = self.now_ms + self.rng.randint(0, client.pace_ms)
        client.delivered_bytes(n, self.now_ms)
        self.delivered_total += n
        self.call(c, "front_data", lambda: c.s.front_data(data, self.now))
        self.settle(c)

    def tunnel_send(self, c: Conn, data: bytes) -> None:
        c.client.tunnel_sent += data
        c.tunnel_front_ms = self.now_ms
        self.delivered_total += len(data)
        self.call(c, "front_data", lambda: c.s.front_data(data, self.now))
        self.settle(c)

    def read_amount(self, c: Conn) -> int:
        """How much the client reads of what is queued for it now."""
        client = c.client
        n = len(c.s.to_front)
        if not n or 0 <= client.stop_reading_at <= client.received:
            return 0
        mode = client.read_mode
        if mode == "fast":
            return n
        if mode == "bytes":
            return min(n, self.rng.randint(1, 16))
        return self.rng.randint(1, n)

    def flush_front(self, c: Conn, n: int) -> None:
        s = c.s
        del s.to_front[:n]
        c.front_seen -= n
        c.client.received += n
        c.fsend_origin = self.now_ms if s.to_front else -1
        self.call(c, "sent", lambda: s.sent(self.now))
        self.settle(c)

    # -- the backend side

    def back_read_amount(self, c: Conn) -> int:
        conn = c.back
        n = len(c.s.to_back)
        if conn is None or not n or conn.not_reading:
            return 0
        return n if self.rng.random() < 0.6 else self.rng.randint(1, n)

    def flush_back(self, c: Conn, n: int) -> None:
        s = c.s
        conn = c.back
        if conn is None:
            raise self.fail(f"{c.name()}: bytes queued for a backend it is not connected to")
        data = bytes(s.to_back[:n])
        del s.to_back[:n]
        c.back_seen -= n
        c.bsend_origin = self.now_ms if s.to_back else -1
        checks.backend_reads(self, c, conn, data)
        self.call(c, "sent", lambda: s.sent(self.now))
        self.settle(c)

    def backend_send(self, c: Conn, n: int) -> None:
        conn = c.back
        assert conn is not None
        data = bytes(conn.outbox[:n])
        del conn.outbox[:n]
        conn.sent += n
        conn.main_left = max(0, conn.main_left - n)
        while conn.marks and conn.marks[0][0] <= conn.sent:
            conn.marks.pop(0)[1].head_at_core = True
        c.resp_bytes += n
        c.last_back_ms = self.now_ms
        if c.tunnel:
            c.tunnel_back_ms = self.now_ms
        self.call(c, "back_data", lambda: c.s.back_data(data, self.now))
        self.settle(c)

    def backend_tunnel_send(self, c: Conn, data: bytes) -> None:
        conn = c.back
        assert conn is not None
        conn.tunnel_out += data
        c.tunnel_back_ms = self.now_ms
        self.call(c, "back_data", lambda: c.s.back_data(data, self.now))
        self.settle(c)

    def backend_end(self, c: Conn, how: str) -> None:
        """The backend half-closes (eof) or resets its connection."""
        conn = c.back
        assert conn is not None
        conn.peer_ended = True
        conn.end = ""
        c.back_ended_with = how
        t = c.client.current()
        c.retry_expected = (
            t is not None
            and not c.tunnel
            and conn.reused
            and not t.req.has_body
            and c.resp_bytes == 0
            and t.response is None
        )
        if how == "eof":
            self.call(c, "back_eof", lambda: c.s.back_eof(self.now))
        else:
            self.call(c, "back_error", lambda: c.s.back_error(self.now))
        self.settle(c)

    # -- time

    def fire(self, c: Conn) -> None:
        """`on_timer` at the session's deadline, with the check of what it did."""
        due = due_now(c, self.settings, self.drain_deadline, self.now)
        t = c.client.current()
        if c.dial is not None and "connect" in due and t is not None:
            t.failed_attempts += 1
        self.timer_due = due
        dropped = c.dropped
        try:
            acts, queued = self.call(c, "on_timer", lambda: c.s.on_timer(self.now))
        finally:
            self.timer_due = set()
        c.last_fire_ms = self.now_ms
        if (acts or queued or c.dropped != dropped) and not due:
            raise self.fail(
                f"{c.name()}: a timer fired at {self.now:.3f} with nothing due "
                f"({describe(acts)}, {queued} bytes queued)"
            )
        if c.dropped != dropped and "fsend" not in due:
            raise self.fail(f"{c.name()}: the client was dropped before its send timer")
        if acts & CONNECT and "connect" not in due:
            raise self.fail(f"{c.name()}: a new connect attempt with no connect timeout due")
        self.settle(c)
