"""The readiness loop: timers, exception boundaries, and yielding to trio when saturated."""

from __future__ import annotations

import gc
import math
import os
import socket
import time
import weakref
from collections.abc import Callable

import trio
from support.loop_driver import run_until

from sozu.worker.shell.reactor import COMPACT_AFTER, FLUSH_AFTER, IN, Reactor


class Timed:
    """A timed object whose deadline a test moves."""

    def __init__(self, at: float = math.inf, *, stuck: bool = False) -> None:
        self.armed = math.inf
        self.at = at
        self.stuck = stuck
        self.fired: list[float] = []
        self.aborted: list[BaseException] = []

    def deadline(self) -> float:
        return self.at

    def expire(self, now: float) -> None:
        self.fired.append(now)
        if not self.stuck:
            self.at = math.inf

    def abort(self, error: BaseException) -> None:
        self.aborted.append(error)
        self.at = math.inf


async def test_timers_fire_in_order_and_follow_moved_deadlines() -> None:
    reactor = Reactor()
    async with trio.open_nursery() as nursery:
        await nursery.start(reactor.run)
        now = reactor.now()
        late, early, moved_later, moved_earlier = (Timed(now + d) for d in (0.2, 0.05, 0.1, 0.3))
        for timed in (late, early, moved_later, moved_earlier):
            reactor.arm(timed)
        moved_later.at = now + 0.25  # later: its first entry fires, finds it, re-arms
        moved_earlier.at = now + 0.02  # earlier: a new entry
        reactor.arm(moved_earlier)
        with trio.fail_after(5):
            while not late.fired:  # noqa: ASYNC110 - polling what the loop sets
                await trio.sleep(0.01)
            await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    order = sorted((t.fired[0], name) for name, t in (
        ("late", late), ("early", early), ("moved_later", moved_later),
        ("moved_earlier", moved_earlier),
    ))  # fmt: skip
    assert [name for _, name in order] == ["moved_earlier", "early", "late", "moved_later"]
    for name, timed in (("late", late), ("early", early), ("moved_later", moved_later)):
        assert len(timed.fired) == 1, name
    assert moved_later.fired[0] >= now + 0.25
    assert reactor.stats.timers == 4
    assert reactor.stats.lag_max < 1.0


async def test_a_raising_handler_or_a_stuck_timer_ends_only_its_owner() -> None:
    reactor = Reactor()
    bad_owner, good_owner, stuck = Timed(), Timed(), Timed(stuck=True)
    left, right = socket.socketpair()
    other_left, other_right = socket.socketpair()
    seen: list[bytes] = []

    def bad(_mask: int) -> None:
        raise KeyError("a bug in one connection")

    def good(_mask: int) -> None:
        seen.append(other_left.recv(100))

    try:
        reactor.register(left.fileno(), IN, bad, bad_owner)
        reactor.register(other_left.fileno(), IN, good, good_owner)
        async with trio.open_nursery() as nursery:
            await nursery.start(reactor.run)
            stuck.at = reactor.now()
            reactor.arm(stuck)
            right.send(b"x")
            other_right.send(b"y")
            with trio.fail_after(5):
                while not (seen and bad_owner.aborted and stuck.aborted):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        for sock in (left, right, other_left, other_right):
            sock.close()
    assert seen == [b"y"]
    assert isinstance(bad_owner.aborted[0], KeyError)
    assert isinstance(stuck.aborted[0], RuntimeError)
    assert len(stuck.fired) == 1, "a timer that does not move fires once, then its owner ends"
    assert reactor.stats.errors == {"KeyError": 1, "RuntimeError": 1}


class Deferred:
    """What `Reactor.soon` holds: records its flushes (and raises when `broken`)."""

    def __init__(self, log: list[str], name: str, *, broken: bool = False) -> None:
        self.soon_queued = False
        self.log = log
        self.name = name
        self.broken = broken
        self.aborted: list[BaseException] = []

    def flush_soon(self) -> None:
        self.log.append(f"flush {self.name}")
        if self.broken:
            raise ValueError("a bug in one flush")

    def abort(self, error: BaseException) -> None:
        self.aborted.append(error)


async def one_batch(
    reactor: Reactor, handle: Callable[[str], None], done: Callable[[], bool]
) -> None:
    """Three sockets ready at the loop's first poll (one batch); each event reads its socket
    and calls `handle` with the socket's name ("0" to "2"). Runs the loop until `done()`."""
    pairs = [socket.socketpair() for _ in range(3)]

    def handler(sock: socket.socket, name: str) -> Callable[[int], None]:
        def on_event(_mask: int) -> None:
            sock.recv(100)
            handle(name)

        return on_event

    try:
        for index, (left, right) in enumerate(pairs):
            reactor.register(left.fileno(), IN, handler(left, str(index)), Timed())
            right.send(b"x")
        await run_until(reactor, done)
    finally:
        for left, right in pairs:
            left.close()
            right.close()


async def test_flushes_asked_during_a_batch_run_once_after_all_its_handlers() -> None:
    """What HTTP/1.1 connections rely on to send once per batch: every handler of the batch
    runs first, then each deferred flush once however often it was asked for; a flush that
    raises ends only its owner."""
    reactor = Reactor()
    log: list[str] = []
    flushed, broken = Deferred(log, "a"), Deferred(log, "b", broken=True)

    def handle(name: str) -> None:
        log.append(f"event {name}")
        reactor.soon(flushed)
        if name == "2":
            reactor.soon(broken)

    await one_batch(reactor, handle, lambda: bool(broken.aborted))
    assert sorted(log[:3]) == ["event 0", "event 1", "event 2"]
    assert log[3:] == ["flush a", "flush b"]
    assert not flushed.soon_queued
    assert not broken.soon_queued
    assert not flushed.aborted
    assert isinstance(broken.aborted[0], ValueError)
    assert reactor.stats.errors == {"ValueError": 1}


async def test_flushes_go_out_within_a_long_batch() -> None:
    """A batch of slow handlers (full TLS handshakes cost hundreds of µs each) does not hold
    the deferred sends to its end: once FLUSH_AFTER has passed since they last went out, they
    go out before the next handler."""
    reactor = Reactor()
    log: list[str] = []
    flushed = Deferred(log, "a")

    def handle(name: str) -> None:
        log.append(f"event {name}")
        reactor.soon(flushed)
        until = time.perf_counter() + 2 * FLUSH_AFTER
        while time.perf_counter() < until:
            pass

    await one_batch(reactor, handle, lambda: len(log) >= 6)
    assert reactor.stats.batches == 1, "the three events were one batch"
    assert [entry.split()[0] for entry in log] == ["event", "flush"] * 3
    assert sorted(log[0::2]) == ["event 0", "event 1", "event 2"]


async def test_a_saturated_loop_yields_to_other_tasks() -> None:
    """A socket that stays readable keeps the loop busy forever; trio tasks still run."""
    reactor = Reactor()
    left, right = socket.socketpair()
    right.send(b"never read")
    calls = 0

    def busy(_mask: int) -> None:
        nonlocal calls
        calls += 1

    ticks = 0
    try:
        reactor.register(left.fileno(), IN, busy, Timed())
        async with trio.open_nursery() as nursery:
            await nursery.start(reactor.run)
            with trio.fail_after(5):
                while ticks < 50:
                    await trio.lowlevel.checkpoint()
                    ticks += 1
            nursery.cancel_scope.cancel()
    finally:
        left.close()
        right.close()
    assert calls > 50, "the loop ran between the other task's turns"
    assert reactor.stats.batches >= calls // 256


def test_disarmed_and_replaced_entries_are_let_go() -> None:
    """A closed connection's heap entry must not keep it alive until its old deadline: once
    stale entries are the majority (and over COMPACT_AFTER) the heap is rebuilt without them;
    live entries keep firing in order."""
    reactor = Reactor()
    live = [Timed(1000.0 + index) for index in range(10)]
    for timed in live:
        reactor.arm(timed)
    closed = [Timed(2000.0 + index) for index in range(3 * COMPACT_AFTER)]
    refs = [weakref.ref(timed) for timed in closed]
    for timed in closed:
        reactor.arm(timed)
    for timed in closed:
        reactor.disarm(timed)
        assert timed.armed == math.inf
    del closed, timed
    gc.collect()
    alive = sum(ref() is not None for ref in refs)
    assert alive <= COMPACT_AFTER + 1, alive  # what is left waits for the next compaction
    assert len(reactor._timers) <= len(live) + COMPACT_AFTER + 1
    # Moving a deadline earlier leaves a stale entry too; the live ones still fire in order.
    moved = live[5]
    moved.at = 500.0
    reactor.arm(moved)
    reactor._fire_timers(1004.5)
    assert [t.fired for t in live] == [[1004.5]] * 6 + [[]] * 4
    reactor._epoll.close()


def test_an_owner_is_disarmed_when_its_last_fd_goes() -> None:
    """Two fds of one owner (a client and a backend connection): unregistering one keeps its
    timer; the last one disarms it. A fd rebound to another owner moves with it."""
    reactor = Reactor()
    owner, pool = Timed(100.0), Timed()
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        front, back = pairs[0][0].fileno(), pairs[1][0].fileno()
        reactor.register(front, IN, lambda _mask: None, owner)
        reactor.register(back, IN, lambda _mask: None, owner)
        reactor.arm(owner)
        assert owner.armed == 100.0
        reactor.rebind(back, lambda _mask: None, pool)  # the backend goes to the idle pool
        assert owner.armed == 100.0
        reactor.unregister(front)  # the connection ends
        assert owner.armed == math.inf
        reactor.unregister(back)
        assert reactor._fds_of == {}
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()
        reactor._epoll.close()


async def test_events_of_an_fd_let_go_earlier_in_the_batch_are_not_delivered() -> None:
    """The first handler of a batch closes the other ready socket and a new one takes its fd
    number: the batch's event for the old socket must not reach the new socket's handler (a
    dial in progress would take it for its connect completing)."""
    reactor = Reactor()
    pairs = [socket.socketpair() for _ in range(2)]
    replacement: list[socket.socket] = []
    calls: list[tuple[str, int]] = []  # (who, batch)

    def new_socket_event(_mask: int) -> None:
        calls.append(("new", reactor.stats.batches))
        replacement[0].recv(100)

    def first(index: int) -> Callable[[int], None]:
        def on_event(_mask: int) -> None:
            calls.append((str(index), reactor.stats.batches))
            if replacement:
                return  # the other socket went away: its event must not come
            other = pairs[1 - index][0]
            number = other.fileno()
            reactor.close(other)
            left, right = socket.socketpair()
            if left.fileno() == number:
                sock = left
            else:
                os.dup2(left.fileno(), number)
                left.close()
                sock = socket.socket(fileno=number)
            replacement.append(sock)
            pairs.append((sock, right))
            reactor.register(number, IN, new_socket_event, Timed())
            right.send(b"fresh")
            pairs[index][0].recv(100)

        return on_event

    try:
        for index, (left, right) in enumerate(pairs[:2]):
            reactor.register(left.fileno(), IN, first(index), Timed())
            right.send(b"x")
        await run_until(reactor, lambda: any(who == "new" for who, _ in calls))
    finally:
        for left, right in pairs:
            left.close()
            right.close()
    first_batch = calls[0][1]
    assert [who for who, batch in calls if batch == first_batch] in (["0"], ["1"])
    assert [who for who, _ in calls[1:]] == ["new"], calls
