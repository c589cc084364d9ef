"""The deterministic simulation harness of the HTTP/1.1 session core.

One `random.Random(seed)` draws everything: the listener's timeouts and limits, the cluster's
backends (refusing, slow or hanging dials), every client's script (pipelined or not, bodies by
length or chunked, valid or not, oversized heads, upgrades, `Connection: close`, HTTP/1.0,
`Expect: 100-continue`, stalls, half-closes, resets, slow or stopped readers), every backend's
answer (see world.py), how much each peer reads at a time, when the clock moves, and when the
worker drains. Time is a virtual clock (integer milliseconds, handed to the cores as float
seconds); timers fire exactly at their deadline unless the clock jumps past it.

Each step is one weighted action among those possible (a client writes, sends a slice, reads,
half-closes; a backend reads, answers a slice, closes; a dial completes; the clock moves; a
session opens; the drain). Checks run inside every core call (responses and closes, see
checks.py) and after every step (invariants of every session and of the context, timers
running that must run). A worker that drained ends once its sessions are gone (those left at
its drain end are aborted): nothing it held may be left, and a fresh worker (new settings,
context, cluster and pool) takes over. The run ends by letting everything settle (clients
stop writing, timers fire) and checking that nothing leaked. A run reduces to a blake2b digest
of its trace.

The session class is injectable, which is how the tests prove the harness catches broken cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from simulation import parallel
from simulation.http1.connection import Conn
from simulation.http1.model import Client, Failure
from simulation.http1.shell import HOLD_MS, Shell
from simulation.http1.timers import dues
from simulation.http1.world import OPEN, Pool, Settings, World
from sozu.worker.core.http1.context import ListenerContext
from sozu.worker.core.http1.session import Http1Session

DEFAULT_SEEDS = 256
DEFAULT_STEPS = 2000
PROGRESS_EVERY = 500
BASE_MS = 1_000_000
SETTLE_ACTIONS = 60_000
SessionFactory = Callable[[ListenerContext, tuple[str, int]], Http1Session]


@dataclass(frozen=True)
class SeedResult:
    seed: int
    passed: bool
    digest: str
    steps: int
    failure: str | None  # the failure line, `seed=0x.. step=N phase: what`

    @property
    def seed_hex(self) -> str:
        return f"0x{self.seed:x}"


def _where(exc: BaseException) -> str:
    """`file.py:line in function` of the innermost frame, to make empty asserts legible."""
    tb = exc.__traceback__
    if tb is None:
        return "unknown location"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}"


def _ms(deadline: float) -> int:
    """The first clock millisecond at or after `deadline`."""
    ms = math.floor(deadline * 1000)
    return ms if ms / 1000.0 >= deadline else ms + 1


class Simulation(Shell):
    def __init__(
        self,
        seed: int,
        steps: int = DEFAULT_STEPS,
        factory: SessionFactory = Http1Session,
        *,
        echo: Callable[[str], None] | None = None,
        progress: bool = False,
        trace: bool = False,
    ) -> None:
        super().__init__(seed, factory)
        self.steps = steps
        self.echo = echo
        self.progress = progress
        if trace and echo is not None:
            self.trace = echo
        self.step = 0
        self.phase = "init"
        self.opened = 0
        self.episode = 0
        self.episode_start = 0
        self.totals = [0, 0, 0, 0]  # sessions, requests, answered, backend connections
        self.now_ms = self.clock[0] = BASE_MS

    # -- actions

    def _advance(self, ms: int) -> None:
        if ms > self.now_ms:
            self.now_ms = self.clock[0] = ms
            self.digest.update(b"t%d;" % ms)
        self._fire_due()

    def _fire_due(self) -> None:
        fired: dict[int, int] = {}
        while True:
            due = [c for c in self.conns.values() if c.s.deadline <= self.now]
            if not due:
                return
            c = min(due, key=lambda c: (c.s.deadline, c.sid))
            fired[c.sid] = fired.get(c.sid, 0) + 1
            if fired[c.sid] > 8:
                raise self.fail(f"{c.name()}: its timer keeps firing at {self.now:.3f}")
            self.fire(c)

    def _next_event_ms(self) -> int | None:
        times = []
        for c in self.conns.values():
            if c.s.deadline != math.inf:
                times.append(_ms(c.s.deadline))
            if c.dial is not None and c.dial.outcome != "hang":
                times.append(c.dial.ready_ms)
            if c.back is not None and (c.back.outbox or c.back.end):
                times.append(c.back.ready_ms)
            kept = c.kept
            if kept is not None:
                times.append(kept.idle_since_ms + kept.backend.keep_idle_ms)
                if kept.outbox or kept.end:
                    times.append(kept.ready_ms)
            if c.client.out:
                times.append(c.client.next_send_ms)
        later = [t for t in times if t > self.now_ms]
        return min(later) if later else None

    def _clock(self) -> None:
        """Time passes: mostly a little (peers are fast next to timeouts), sometimes a lot,
        sometimes exactly to the next thing due."""
        rng = self.rng
        roll = rng.random()
        nxt = self._next_event_ms()
        if roll < 0.06 and nxt is not None:
            target = nxt
        elif roll < 0.82:
            target = self.now_ms + rng.randint(1, 50)
        elif roll < 0.96:
            target = self.now_ms + rng.randint(50, 1000)
        else:
            target = self.now_ms + rng.randint(1000, 5000)
        self._advance(target)

    def _open(self) -> None:
        sid = self.opened
        self.opened += 1
        peers = self.settings.peers
        peer = peers[sid % len(peers)]
        s = self.factory(self.world.ctx, peer)
        client = Client(self.rng, sid, self.settings, self.now_ms)
        c = Conn(sid, s, client, self.now_ms)
        self.conns[sid] = c
        self.all_conns.append(c)
        if self.world.shared.draining:
            c.drained = True
            c.drain_call = self.calls + 1
        self.call(c, "start", lambda: s.start(self.now))
        self.settle(c)

    def _drain(self) -> None:
        self.drain_ms = self.now_ms
        self.world.shared.start_drain(self.now)
        self.drain_deadline = self.now + float(self.settings.drain_timeout)
        for c in list(self.conns.values()):
            if c.finished:
                continue
            c.drained = True
            c.drain_call = self.calls + 1
            self.call(c, "drain", partial(c.s.drain, self.now))
            self.settle(c)

    def _drain_now(self) -> bool:
        """The drain comes at its step, or soon after when an exchange is in flight then."""
        after = self.settings.drain_after
        if after < 0 or self.drain_ms >= 0 or self.step < self.episode_start + after:
            return False
        busy = any(c.back is not None and not c.tunnel for c in self.conns.values())
        return busy or self.step >= self.episode_start + after + 300

    def _drain_end(self) -> bool:
        """Past the drain deadline (and as long again for what is left): the worker goes."""
        if self.drain_ms < 0 or self.now < self.drain_deadline:
            return False
        if self.conns and self.now < self.drain_deadline + self.settings.drain_timeout:
            return False
        for c in list(self.conns.values()):
            self._abort(c)
        return True

    def _send_amount(self, available: int) -> int:
        roll = self.rng.random()
        if roll < 0.15:
            return 1
        if roll < 0.55:
            return available
        return self.rng.randint(1, available)

    def _options(self, final: bool) -> list[tuple[float, Callable[[], None]]]:
        now = self.now_ms
        opts: list[tuple[float, Callable[[], None]]] = []
        # A draining worker stops accepting at its drain deadline.
        accepting = self.drain_ms < 0 or self.now < self.drain_deadline
        if not final and accepting and len(self.conns) < self.settings.max_live:
            opts.append((2.0 if self.conns else 40.0, self._open))
        for c in list(self.conns.values()):
            s = c.s
            client = c.client
            client.release_held(now, HOLD_MS)
            wants_front = s.wants_front_read()
            if not final and client.can_write():
                opts.append((6.0, partial(self._write, c)))
            if client.out and wants_front and client.next_send_ms <= now:
                opts.append((30.0, partial(self._client_slice, c)))
            if c.tunnel and client.tunnel and not client.eof_sent and wants_front:
                if not final:
                    opts.append((6.0, partial(self._tunnel_slice, c)))
                opts.append((20.0 if final else 1.0, partial(self._eof, c)))
            elif not client.eof_sent and wants_front and self._eof_due(c):
                opts.append((10.0, partial(self._eof, c)))
            if self.read_amount(c):
                opts.append((20.0, partial(self._client_reads, c)))
            if not final:
                opts.append((0.03, partial(self._reset, c)))
                opts.append((0.01, partial(self._abort, c)))
            if c.dial is not None and c.dial.outcome != "hang" and c.dial.ready_ms <= now:
                opts.append((25.0, partial(self._dial_ready, c)))
            kept = c.kept
            if kept is not None:
                # The backend of an idle kept connection: bytes nobody asked for, the close
                # its reply announced, its idle timeout, or a close at any time.
                ready = kept.ready_ms <= now
                if kept.outbox and ready:
                    opts.append((10.0, partial(self.kept_speaks, c)))
                elif kept.end and ready:
                    opts.append((10.0, partial(self.kept_end, c, kept.end)))
                elif now - kept.idle_since_ms >= kept.backend.keep_idle_ms:
                    opts.append((10.0, partial(self.kept_end, c, "eof")))
                elif not final:
                    opts.append((0.3, partial(self.kept_end, c, "eof")))
                    opts.append((0.05, partial(self.kept_end, c, "reset")))
            conn = c.back
            if conn is None:
                continue
            if self.back_read_amount(c):
                opts.append((20.0, partial(self._backend_reads, c)))
            ready = conn.ready_ms <= now
            wants_back = s.wants_back_read()
            if conn.outbox and ready and wants_back:
                opts.append((30.0, partial(self._backend_slice, c)))
            if conn.end and not conn.outbox and ready and (wants_back or conn.end == "reset"):
                opts.append((10.0, partial(self.backend_end, c, conn.end)))
            tunnel_up = c.tunnel and conn.tunnel and not conn.outbox
            if tunnel_up and not conn.peer_ended and not conn.end and wants_back:
                if not final:
                    opts.append((6.0, partial(self._backend_tunnel_slice, c)))
                    opts.append((0.2, partial(self.backend_end, c, "reset")))
                opts.append((20.0 if final else 1.0, partial(self.backend_end, c, "eof")))
        return opts

    def _client_slice(self, c: Conn) -> None:
        self.client_send(c, self._send_amount(len(c.client.out)))

    def _tunnel_slice(self, c: Conn) -> None:
        self.tunnel_send(c, self.rng.randbytes(self.rng.randint(1, 300)))

    def _client_reads(self, c: Conn) -> None:
        self.flush_front(c, self.read_amount(c))

    def _backend_reads(self, c: Conn) -> None:
        self.flush_back(c, self.back_read_amount(c))

    def _backend_slice(self, c: Conn) -> None:
        conn = c.back
        assert conn is not None
        self.backend_send(c, self._send_amount(len(conn.outbox)))

    def _backend_tunnel_slice(self, c: Conn) -> None:
        self.backend_tunnel_send(c, self.rng.randbytes(self.rng.randint(1, 300)))

    def _eof_due(self, c: Conn) -> bool:
        client = c.client
        if not client.done_writing():
            return False
        if client.eof_due:
            return True
        return (
            client.end_mode == "eof"
            and client.ended
            and client.answered == len(client.tracks)
            and client.received == client.queued
        )

    def _write(self, c: Conn) -> None:
        c.client.write_request(self.rng, self.big)

    def _eof(self, c: Conn) -> None:
        c.client.eof_sent = True
        self.call(c, "front_eof", lambda: c.s.front_eof(self.now))
        self.settle(c)

    def _reset(self, c: Conn) -> None:
        c.client.reset = True
        self.call(c, "front_error", lambda: c.s.front_error(self.now))
        self.settle(c)

    def _abort(self, c: Conn) -> None:
        c.aborted = True
        self.call(c, "abort", lambda: c.s.abort(self.now))
        self.settle(c)

    def _dial_ready(self, c: Conn) -> None:
        dial = c.dial
        assert dial is not None
        c.dial = None
        self._dialed(c, dial)
        self.settle(c)

    def _act(self, final: bool) -> bool:
        """One weighted action; False when only the clock could move."""
        opts = self._options(final)
        if final:
            if not opts:
                return False
        elif all(weight < 1 for weight, _ in opts):
            # Nothing but the rare resets and aborts: only time can move things.
            nxt = self._next_event_ms()
            opts.append((100.0, partial(self._advance, nxt) if nxt else self._clock))
        else:
            opts.append((8.0, self._clock))
        total = sum(w for w, _ in opts)
        pick = self.rng.random() * total
        chosen = opts[-1][1]
        for weight, action in opts:
            pick -= weight
            if pick < 0:
                chosen = action
                break
        chosen()
        self._autoflush()
        return True

    def _autoflush(self) -> None:
        """After an event the shell sends what the peers take at once (sometimes)."""
        p = self.settings.p_autoflush
        for c in list(self.conns.values()):
            if c.finished or self.rng.random() >= p:
                continue
            n = self.back_read_amount(c)
            if n:
                self.flush_back(c, n)
            n = self.read_amount(c) if not c.finished else 0
            if n:
                self.flush_front(c, n)

    # -- checks

    def _check(self) -> None:
        settings = self.settings
        for c in self.conns.values():
            s = c.s
            s.check_invariants()
            if c.front_seen != len(s.to_front) or c.back_seen != len(s.to_back):
                raise self.fail(f"{c.name()}: its buffers changed outside an input")
            running = dues(c, settings, self.drain_deadline)
            if running:
                kind, _, due = min(running, key=lambda d: d[2])
                if s.deadline > due + 1e-9:
                    raise self.fail(
                        f"{c.name()}: deadline {s.deadline:.3f} is later than its {kind} timer "
                        f"due at {due:.3f}"
                    )
        world = self.world
        world.ctx.check_invariants()
        assert world.cluster.check_invariants()
        attached = sum(1 for c in self.conns.values() if c.back is not None)
        if sum(world.cluster.loads.values()) > attached:
            raise self.fail(f"cluster loads {world.cluster.loads} above {attached} connections")

    # -- driver

    def run(self) -> SeedResult:
        failure = None
        try:
            self._run()
        except Failure as exc:
            failure = self._line(self.phase, exc.what)
        except Exception as exc:  # the core raised: an invariant or a crash
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            failure = self._line(self.phase, f"{what} ({_where(exc)})")
        digest = self.digest.hexdigest()
        if failure is not None and self.echo is not None:
            self.echo(failure)
        if self.progress and self.echo is not None:
            self.echo(f"seed=0x{self.seed:x} digest={digest} steps={self.step} {self._tallies()}")
        return SeedResult(self.seed, failure is None, digest, self.step, failure)

    def _tallies(self) -> str:
        t = self.totals
        sessions = t[0] + len(self.all_conns)
        requests = t[1] + sum(len(c.client.tracks) for c in self.all_conns)
        answered = t[2] + sum(c.client.answered for c in self.all_conns)
        connections = t[3] + len(self.back_conns)
        return (
            f"workers={self.episode} sessions={sessions} requests={requests} "
            f"answered={answered} backend_connections={connections}"
        )

    def _new_worker(self) -> None:
        """A fresh worker: settings, listener context, cluster, backends and pool."""
        if self.episode:
            t = self.totals
            t[0] += len(self.all_conns)
            t[1] += sum(len(c.client.tracks) for c in self.all_conns)
            t[2] += sum(c.client.answered for c in self.all_conns)
            t[3] += len(self.back_conns)
        self.episode += 1
        self.episode_start = self.step
        self.settings = Settings.draw(self.rng)
        self.world = World(self.rng, self.settings, self.clock)
        self.world.router.check_invariants()  # the routes never change within a worker
        self.pool = Pool()
        self.conns = {}
        self.all_conns = []
        self.back_conns = []
        self.drain_ms = -1
        self.drain_deadline = math.inf
        self.queued_total = self.delivered_total = 0
        self.big = self.settings.buffer_limit * 3
        self.digest.update(b"worker %d;" % self.episode)

    def _line(self, phase: str, what: str) -> str:
        if phase == "FINAL":
            return f"seed=0x{self.seed:x} FINAL: {what}"
        return f"seed=0x{self.seed:x} step={self.step} {phase}: {what}"

    def _run(self) -> None:
        self._new_worker()
        self._open()
        self._check()
        for step in range(1, self.steps + 1):
            self.step = step
            self.phase = "step"
            if self._drain_now():
                self._drain()
            elif self._drain_end():
                self._leaks()
                self._new_worker()
            else:
                self._act(final=False)
            self._fire_due()
            self._check()
            if self.progress and self.echo is not None and step % PROGRESS_EVERY == 0:
                self.echo(
                    f"seed=0x{self.seed:x} step={step} live={len(self.conns)} {self._tallies()}"
                )
        self._final()

    def _final(self) -> None:
        """Clients stop writing; everything settles; nothing may be left behind."""
        self.phase = "FINAL"
        for c in self.conns.values():
            c.client.ended = True
            c.client.read_mode = "fast"
        for _ in range(SETTLE_ACTIONS):
            if not self.conns:
                break
            if not self._act(final=True):
                nxt = self._next_event_ms()
                if nxt is None:
                    stuck = ", ".join(
                        f"{c.name()} deadline={c.s.deadline}" for c in self.conns.values()
                    )
                    raise self.fail(f"sessions wait for nothing that will come: {stuck}")
                self._advance(nxt)
            self._fire_due()
            self._check()
        else:
            raise self.fail(f"{len(self.conns)} sessions did not settle")
        self._leaks()

    def _leaks(self) -> None:
        world = self.world
        counters = world.ctx.counters
        for conn in self.back_conns:
            if conn.state == OPEN:
                raise self.fail(
                    f"backend connection #{conn.number} left open by session {conn.owner}"
                )
        if world.cluster.loads or world.cluster.active:
            raise self.fail(
                f"cluster loads left: {world.cluster.loads} active={world.cluster.active}"
            )
        if len(world.shared.per_ip):
            raise self.fail("per-IP slots left held")
        if counters.websockets_active:
            raise self.fail(f"{counters.websockets_active} websockets still counted active")
        if counters.bytes_in != self.delivered_total:
            raise self.fail(f"bytes_in {counters.bytes_in}, clients sent {self.delivered_total}")
        if counters.bytes_out != self.queued_total:
            raise self.fail(f"bytes_out {counters.bytes_out}, {self.queued_total} were queued")
        heads = sum(1 for c in self.all_conns for t in c.client.tracks if t.response is not None)
        if sum(counters.statuses.values()) != heads:
            raise self.fail(f"{sum(counters.statuses.values())} statuses counted, {heads} sent")
        for c in self.all_conns:
            if not c.finished or not c.s.done or c.s.deadline != math.inf:
                raise self.fail(f"{c.name()} not done at the end")
        world.ctx.check_invariants()
        world.router.check_invariants()


def run_seed(
    seed: int,
    steps: int = DEFAULT_STEPS,
    factory: SessionFactory = Http1Session,
    *,
    echo: Callable[[str], None] | None = None,
    progress: bool = False,
    trace: bool = False,
) -> SeedResult:
    """Run one seed; with `echo`, print its failure line (and progress/trace if asked)."""
    return Simulation(seed, steps, factory, echo=echo, progress=progress, trace=trace).run()


def run_sweep(
    seeds: range,
    steps: int = DEFAULT_STEPS,
    factory: SessionFactory = Http1Session,
    *,
    echo: Callable[[str], None] | None = None,
    digests: bool = False,
    jobs: int = 1,
) -> list[SeedResult]:
    """Run many seeds, echoing one line per failure (and per seed with `digests`); over up to
    `jobs` processes, with the same results and lines in the same order as one."""

    def one(seed: int, record: Callable[[str], None]) -> SeedResult:
        return run_seed(seed, steps, factory, echo=record)

    return parallel.sweep(one, seeds, echo=echo, digests=digests, jobs=jobs)


def summary_line(results: list[SeedResult]) -> str:
    passed = sum(1 for r in results if r.passed)
    return f"{passed} passed, {len(results) - passed} failed"
