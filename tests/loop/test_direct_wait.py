"""The loop blocking in its own epoll object while trio is idle: trio's timers, sockets and
cancellations still wake it at once (and the fast path is the one in use with the locked trio)."""

from __future__ import annotations

import socket
import threading

import trio

from sozu.worker.shell.reactor import Reactor
from sozu.worker.shell.trio_peek import peek


async def test_the_locked_trio_has_what_the_direct_wait_reads() -> None:
    side = peek()
    assert side is not None
    assert side.fd >= 0
    assert side.next_deadline() >= trio.current_time()
    reactor = Reactor()
    async with trio.open_nursery() as nursery:
        await nursery.start(reactor.run)
        assert reactor.direct
        nursery.cancel_scope.cancel()
    assert reactor.closed


async def test_trio_timers_and_sockets_wake_a_blocked_loop() -> None:
    reactor = Reactor()
    left, right = socket.socketpair()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(reactor.run)
            # A trio timer: the loop has no deadline of its own, it must wake for trio's.
            for delay in (0.05, 0.2):
                started = trio.current_time()
                await trio.sleep(delay)
                late = trio.current_time() - started - delay
                assert late < 0.5, late  # MAX_BLOCK (1 s) would show a missed deadline
            # A socket a trio task waits on, written from another thread.
            left.setblocking(False)
            timer = threading.Timer(0.1, right.send, (b"x",))
            started = trio.current_time()
            timer.start()
            with trio.fail_after(5):
                await trio.lowlevel.wait_readable(left)
            assert trio.current_time() - started < 0.6
            assert left.recv(1) == b"x"
            timer.join()
            # A cancellation from a deadline ends the loop while it blocks.
            started = trio.current_time()
            nursery.cancel_scope.deadline = trio.current_time() + 0.1
        assert trio.current_time() - started < 0.6
    finally:
        left.close()
        right.close()
    assert reactor.closed


async def test_the_loop_still_waits_through_trio_when_asked() -> None:
    reactor = Reactor()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: reactor.run(direct_wait=False, task_status=task_status)
        )
        assert not reactor.direct
        started = trio.current_time()
        await trio.sleep(0.05)
        assert trio.current_time() - started < 0.6
        nursery.cancel_scope.cancel()
