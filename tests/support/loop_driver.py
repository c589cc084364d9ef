"""Driving the readiness loop in tests: run it until a condition holds, and an fd owner
without a timer."""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from sozu.worker.shell.reactor import Reactor


class Untimed:
    """An fd owner for the loop that never has a deadline (a test's extra socket)."""

    armed = math.inf

    def deadline(self) -> float:
        return math.inf

    def expire(self, now: float) -> None:
        pass

    def abort(self, error: BaseException) -> None:
        raise AssertionError(error)


async def run_until(reactor: Reactor, done: Callable[[], bool]) -> None:
    """Run `reactor` until `done()` (checked every 10 ms, failing after 5 s), then stop it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(reactor.run)
        with trio.fail_after(5):
            while not done():  # noqa: ASYNC110 - polling what the loop's handlers set
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
