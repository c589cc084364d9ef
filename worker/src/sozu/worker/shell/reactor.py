"""The worker's readiness loop: one epoll object, one trio task, plain synchronous handlers.

Every data-plane socket (listeners, client and backend connections, pooled idle connections)
is registered here with a handler, a callable taking the epoll event mask. When no trio task
is runnable, `run` blocks in its own epoll object, where trio's epoll fd is registered too
(trio_peek): a socket a trio task waits on wakes it, and it then yields to trio; its wait is
bounded by its own and trio's next deadlines. Otherwise (or when trio's internals are not the
expected ones) it waits for its epoll fd to become readable through trio. Ready events are
handled in batches: at most MAX_EVENTS per poll, and once it has run for YIELD_AFTER seconds
without waiting it yields to trio before polling again, so that a saturated loop never starves
the rest of the worker (the supervisor channel, health probes, metrics).

Timers: each timed object (a connection) has one deadline; the loop keeps one heap entry per
object, lazily repaired: moving a deadline later costs nothing (the entry fires, sees the later
deadline and is pushed again), moving it earlier pushes a new entry (the old one is skipped
when it pops). An owner whose last fd is unregistered (its connection closed, or its socket
handed on) is disarmed; once stale entries are the majority the heap is rebuilt without them,
so none keeps a closed connection alive. The loop's wait is bounded by the earliest entry.

A handler that raises ends its own connection, never the loop: the exception is logged,
counted by reason and handed to the handler's owner (`abort`).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import select
import socket
import time
from collections.abc import Callable, Sized
from typing import Final, Protocol

import trio

from sozu.worker.shell import trio_peek

log = logging.getLogger("sozu.worker.loop")

IN: Final = select.EPOLLIN
OUT: Final = select.EPOLLOUT
ERR: Final = select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
# Always reported, whatever a registration asks for: the peer is gone both ways.
HUP: Final = select.EPOLLERR | select.EPOLLHUP
MAX_EVENTS: Final = 64
YIELD_AFTER: Final = 0.002
# The sends deferred to the end of a batch (`soon`) go out earlier once the batch has run this
# long since they last went out: 64 HTTP/1.1 events take about this long at saturation, but a
# full TLS handshake costs hundreds of µs, and 64 of them would hold every answer for tens of ms.
FLUSH_AFTER: Final = 0.002
# The longest blocking wait in the loop's own epoll (a bound, not a tick: wake-ups come from
# the fds and deadlines).
MAX_BLOCK: Final = 1.0
# The timer heap is rebuilt without its stale entries once there are more than this many and
# they are the majority.
COMPACT_AFTER: Final = 256
# A blocking poll that returned after this long waited (rather than found events ready).
WAITED: Final = 0.0002

Handler = Callable[[int], None]


class Deferred(Protocol):
    """What `Reactor.soon` holds: a connection that flushes once the current batch is done."""

    soon_queued: bool

    def flush_soon(self) -> None: ...

    def abort(self, error: BaseException) -> None: ...


class Timed(Protocol):
    """What the loop's timers hold: the armed deadline (set by the loop) and its expiry."""

    armed: float

    def deadline(self) -> float: ...

    def expire(self, now: float) -> None: ...

    def abort(self, error: BaseException) -> None: ...


class _Later:
    """A one-shot timer of the loop."""

    __slots__ = ("armed", "at", "callback")

    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.armed = math.inf
        self.at = at
        self.callback = callback

    def deadline(self) -> float:
        return self.at

    def expire(self, now: float) -> None:
        self.at = math.inf
        self.callback()

    def abort(self, error: BaseException) -> None:
        self.at = math.inf


class LoopStats:
    """Loop metrics, plain numbers folded into the worker's registry at snapshot time."""

    __slots__ = ("batch_seconds", "batches", "errors", "events", "lag_max", "lag_total", "timers")

    def __init__(self) -> None:
        self.batches = 0
        self.events = 0
        self.batch_seconds = 0.0
        self.timers = 0
        # How late timers fired (seconds): total and worst.
        self.lag_total = 0.0
        self.lag_max = 0.0
        # Handler exceptions by reason (exception class name).
        self.errors: dict[str, int] = {}


class Reactor:
    """One epoll object and its handlers (see the module docstring)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._owners: dict[int, Timed] = {}
        # What each fd is watched for, when not IN alone (most are: no entry for them, which
        # counts with 20,000 UDP flows).
        self._masks: dict[int, int] = {}
        # How many registered fds each owner has.
        self._fds_of: dict[Timed, int] = {}
        self._timers: list[tuple[float, int, Timed]] = []
        # Heap entries no longer live (replaced by an earlier one, or disarmed): each holds its
        # object until it surfaces, so the heap is rebuilt once they outnumber the live ones
        # (a closed connection must not be kept for its whole front timeout).
        self._stale = 0
        self._sequence = itertools.count()
        self.stats = LoopStats()
        # The cancel scope bounding the loop's current wait (None while it runs handlers).
        self._waiting: trio.CancelScope | None = None
        # trio's clock is perf_counter plus an offset: `now()` reads it without trio.
        self._offset = 0.0
        self.closed = False
        # Connections to flush once the batch of events being handled is done (`soon`).
        self._soon: list[Deferred] = []
        # The fds let go of since the batch began: a later event of the batch for one of them
        # is stale, even when a socket opened meanwhile got the same number (a dial's "ready"
        # would be taken for the new socket's).
        self._gone: set[int] = set()
        # True while `run` waits in its own epoll object when trio is idle (trio_peek).
        self.direct = False
        # Whether the batch of events last polled is one event; meaningful inside a handler
        # only (a UDP reply then has no other to join: it goes out at once, not via `soon`).
        self.lone = False

    def now(self) -> float:
        return time.perf_counter() + self._offset

    # -- registrations

    def register(self, fd: int, mask: int, handler: Handler, owner: Timed) -> None:
        assert fd not in self._handlers, fd
        self._epoll.register(fd, mask)
        self._handlers[fd] = handler
        self._owners[fd] = owner
        if mask != IN:
            self._masks[fd] = mask
        self._hold(owner)

    def modify(self, fd: int, mask: int) -> None:
        """Change what the registered `fd` is watched for (no system call when unchanged)."""
        if self._masks.get(fd, IN) != mask:
            self._epoll.modify(fd, mask)
            if mask == IN:
                del self._masks[fd]
            else:
                self._masks[fd] = mask

    def rebind(self, fd: int, handler: Handler, owner: Timed) -> None:
        """Give a registered fd another handler (a pooled connection taken by a session)."""
        assert fd in self._handlers, fd
        self._handlers[fd] = handler
        previous = self._owners[fd]
        if previous is not owner:
            self._owners[fd] = owner
            self._hold(owner)
            self._let_go(previous)

    def unregister(self, fd: int) -> None:
        if self._forget(fd):
            # Already closed: the kernel dropped it from the epoll set by itself; or the loop
            # is over (the worker stops) and its epoll object with it.
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def close(self, sock: socket.socket) -> None:
        """Unregister `sock` (if registered) and close it. Closing the only descriptor of a
        socket drops it from the epoll set, so this costs one system call fewer than
        `unregister` then close (the sockets of connections are never duplicated)."""
        self._forget(sock.fileno())
        sock.close()

    def _forget(self, fd: int) -> bool:
        """Drop what the loop holds for `fd`; False if it was not registered."""
        if self._handlers.pop(fd, None) is None:
            return False
        self._gone.add(fd)
        owner = self._owners.pop(fd)
        self._masks.pop(fd, None)
        self._let_go(owner)
        return True

    def _hold(self, owner: Timed) -> None:
        self._fds_of[owner] = self._fds_of.get(owner, 0) + 1

    def _let_go(self, owner: Timed) -> None:
        """`owner` lost one registered fd; with none left it is done (its connection closed,
        or its socket handed on): its timer entry is disarmed."""
        left = self._fds_of[owner] - 1
        if left:
            self._fds_of[owner] = left
        else:
            del self._fds_of[owner]
            self.disarm(owner)

    def __contains__(self, fd: int) -> bool:
        return fd in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    # -- timers

    def arm(self, timed: Timed) -> None:
        """(Re)consider `timed`'s deadline; call after anything that may have moved it (from a
        handler, or from a trio task while the loop waits: the wait is shortened)."""
        deadline = timed.deadline()
        if deadline < timed.armed:
            stale = timed.armed != math.inf  # the entry at the later deadline
            timed.armed = deadline
            heapq.heappush(self._timers, (deadline, next(self._sequence), timed))
            if stale:
                self._one_more_stale()
            waiting = self._waiting
            if waiting is not None and deadline < waiting.deadline:
                waiting.deadline = deadline

    def armed_timers(self) -> int:
        """Timer entries still live (every armed owner has one; stale ones not counted)."""
        return len(self._timers) - self._stale

    def disarm(self, timed: Timed) -> None:
        """`timed` is done: its entry no longer counts, and the heap lets go of it at the next
        compaction. Owners are disarmed when their last fd is unregistered."""
        if timed.armed != math.inf:
            timed.armed = math.inf
            self._one_more_stale()

    def _one_more_stale(self) -> None:
        self._stale += 1
        if self._stale > COMPACT_AFTER and 2 * self._stale > len(self._timers):
            self._compact()

    def _compact(self) -> None:
        # In place: `_fire_timers` holds this list while it runs expiries that may arm.
        self._timers[:] = [entry for entry in self._timers if entry[2].armed == entry[0]]
        heapq.heapify(self._timers)
        self._stale = 0

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        stats = self.stats
        while timers and timers[0][0] <= now:
            entry_deadline, _, timed = heapq.heappop(timers)
            if timed.armed != entry_deadline:
                if self._stale:
                    self._stale -= 1
                continue  # a stale entry: an earlier one replaced it, or disarmed
            timed.armed = math.inf
            deadline = timed.deadline()
            if deadline > now:
                self.arm(timed)  # moved later meanwhile
                continue
            stats.timers += 1
            lag = now - deadline
            stats.lag_total += lag
            if lag > stats.lag_max:
                stats.lag_max = lag
            try:
                timed.expire(now)
                if timed.deadline() <= now:
                    # Firing again at once would spin the loop: a bug, ended like any other.
                    raise RuntimeError("a timer fired without moving its deadline")
            except Exception as error:
                self._failed(timed, error)
            else:
                self.arm(timed)

    def soon(self, deferred: Deferred) -> None:
        """Call `deferred.flush_soon()` once the events and timers being handled are done:
        the writes that several events of one batch queue on one connection (the responses
        of many HTTP/2 streams) go out in one send, and the sends of a batch's HTTP/1.1
        connections go out together (http_connection.py says why). In a long batch they go
        out once FLUSH_AFTER has passed since they last did."""
        if not deferred.soon_queued:
            deferred.soon_queued = True
            self._soon.append(deferred)
            waiting = self._waiting
            if waiting is not None:
                waiting.deadline = -math.inf  # queued from a trio task: run it now

    def _run_soon(self) -> None:
        while self._soon:
            queued, self._soon = self._soon, []
            for deferred in queued:
                deferred.soon_queued = False
                try:
                    deferred.flush_soon()
                except Exception as error:
                    self._failed(deferred, error)

    def later(self, delay: float, callback: Callable[[], None]) -> None:
        """Call `callback` (in the loop) `delay` seconds from now."""
        self.arm(_Later(self.now() + delay, callback))

    def next_deadline(self) -> float:
        return self._timers[0][0] if self._timers else math.inf

    # -- the loop

    def _failed(self, owner: Timed | Deferred, error: BaseException) -> None:
        reason = type(error).__name__
        errors = self.stats.errors
        errors[reason] = errors.get(reason, 0) + 1
        log.error("connection ended by an internal error", exc_info=error)
        try:
            owner.abort(error)
        except Exception:
            log.exception("aborting a failed connection failed too")

    async def run(
        self,
        *,
        direct_wait: bool = True,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Handle ready events until cancelled (then the epoll object is closed).

        `direct_wait`: when trio has nothing runnable, block in the loop's own epoll object
        (trio's nested in it) instead of a trio scheduler pass per batch (see trio_peek)."""
        self._offset = offset = trio.current_time() - time.perf_counter()
        epoll = self._epoll
        handlers = self._handlers
        timers = self._timers
        stats = self.stats
        perf_counter = time.perf_counter
        side = trio_peek.peek() if direct_wait else None
        trio_fd = -1
        trio_pending: Sized = ()
        trio_waiting: Sized = ()
        if side is not None:
            trio_fd = side.fd
            trio_pending, trio_waiting = side.pending, side.waiting_for_idle
            epoll.register(trio_fd, IN)
            side.attach()
        self.direct = side is not None
        task_status.started()
        yielded = perf_counter()
        try:
            if side is not None:
                await trio.lowlevel.checkpoint()
                await trio.lowlevel.checkpoint()
            # This task's own deadline (-inf once cancelled): it changes only while other code
            # runs, so it is read again after each yield to trio and each wait that found
            # nothing (a handler cancelling the loop is seen within MAX_BLOCK).
            own_deadline = trio.current_effective_deadline()
            while True:
                now = perf_counter() + offset
                if timers and timers[0][0] <= now:
                    self._fire_timers(now)
                if self._soon:
                    self._run_soon()
                if side is None:
                    events = epoll.poll(0, MAX_EVENTS)
                    if not events:
                        with trio.move_on_at(self.next_deadline()) as self._waiting:
                            await trio.lowlevel.wait_readable(epoll.fileno())
                        self._waiting = None
                        yielded = perf_counter()
                        continue
                    started = flushed = perf_counter()
                else:
                    # trio's next timer, or this task's own deadline.
                    trio_deadline = side.next_deadline()
                    if own_deadline < trio_deadline:
                        trio_deadline = own_deadline
                    # Another trio task is runnable, or waits for all to be blocked.
                    if trio_pending or trio_waiting or trio_deadline <= now:
                        events = epoll.poll(0, MAX_EVENTS)
                        if not events:
                            await trio.lowlevel.checkpoint()  # trio has something to do
                            own_deadline = trio.current_effective_deadline()
                            yielded = perf_counter()
                            continue
                        started = flushed = perf_counter()
                    else:
                        # One system call per wake-up: block here, or come back at once with
                        # what is ready (no separate non-blocking poll first).
                        deadline = now + MAX_BLOCK
                        if trio_deadline < deadline:
                            deadline = trio_deadline
                        if timers and timers[0][0] < deadline:
                            deadline = timers[0][0]
                        before = perf_counter()
                        events = epoll.poll(max(deadline - now, 0.0), MAX_EVENTS)
                        started = flushed = perf_counter()
                        if not events:
                            own_deadline = trio.current_effective_deadline()
                            yielded = started
                            continue
                        if started - before > WAITED:
                            yielded = started  # it blocked: a wait, as trio's would be
                trio_ready = False
                self.lone = len(events) == 1
                gone = self._gone
                gone.clear()
                for fd, mask in events:
                    if gone and fd in gone:
                        continue
                    handler = handlers.get(fd)
                    if handler is None:
                        # trio's epoll: one of its tasks has something to do. Or an fd
                        # closed by an earlier handler of this batch.
                        trio_ready = trio_ready or fd == trio_fd
                        continue
                    try:
                        handler(mask)
                    except Exception as error:
                        owner = self._owners.get(fd)
                        if owner is not None:
                            self._failed(owner, error)
                        else:
                            log.exception("handler of fd %d failed", fd)
                        if handlers.get(fd) is handler:
                            self.unregister(fd)  # its owner did not let go: the loop must
                    if self._soon and perf_counter() - flushed > FLUSH_AFTER:
                        self._run_soon()
                        flushed = perf_counter()
                if self._soon:
                    self._run_soon()
                done = perf_counter()
                stats.batches += 1
                stats.events += len(events)
                stats.batch_seconds += done - started
                if trio_ready or done - yielded > YIELD_AFTER:
                    await trio.lowlevel.checkpoint()
                    own_deadline = trio.current_effective_deadline()
                    yielded = perf_counter()
        finally:
            self.closed = True
            if side is not None:
                side.detach()
            epoll.close()
