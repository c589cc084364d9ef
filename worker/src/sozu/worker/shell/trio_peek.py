"""What the readiness loop needs to know of trio to wait in its own epoll object.

Waiting through trio (`wait_readable` on the loop's epoll fd inside a cancel scope) costs a
full scheduler pass for every batch of events, about 16 µs here, several µs per request under
load. When no other trio task is runnable the loop can instead block in its own `epoll.poll`,
with trio's epoll fd registered in it (so any socket a trio task waits on, trio's wake-up
socket, signals and calls from threads included, wakes the loop) and its timeout bounded by
trio's next deadline; it hands control back to trio as soon as trio has something to do.

Which tasks are runnable is followed with a trio instrument (public API): a task is pending
from `task_scheduled` to `before_task_step` (trio's run queue alone would miss the tasks of
the batch being run). trio's epoll object and its next deadline are not public: `peek()`
returns None when they are not what is expected, and the loop then waits through trio as
before; a test pins the fast path to the trio version in the lock file.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sized

import trio

log = logging.getLogger("sozu.worker.loop")


class _Pending(trio.abc.Instrument):
    """The tasks scheduled to run and not yet stepped."""

    __slots__ = ("tasks",)

    def __init__(self) -> None:
        self.tasks: set[trio.lowlevel.Task] = set()

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        self.tasks.add(task)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.tasks.discard(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.tasks.discard(task)


class TrioPeek:
    """trio's epoll fd, its next deadline, and whether another task could run now."""

    __slots__ = ("_instrument", "fd", "next_deadline", "pending", "waiting_for_idle")

    def __init__(
        self, fd: int, waiting_for_idle: Sized, next_deadline: Callable[[], float]
    ) -> None:
        self.fd = fd
        # trio is idle when both `pending` and this are empty: no other task is runnable and
        # none waits for all tasks to be blocked (the loop reads them inline, once a wake-up).
        self.waiting_for_idle = waiting_for_idle
        # trio's clock is time.perf_counter plus an offset, like the loop's `now`.
        self.next_deadline = next_deadline
        self._instrument = _Pending()
        self.pending = self._instrument.tasks

    def attach(self) -> None:
        """Start following runnable tasks (the caller then yields twice to trio, so that
        every task scheduled before this ran once and is followed from then on)."""
        trio.lowlevel.add_instrument(self._instrument)

    def detach(self) -> None:
        with contextlib.suppress(KeyError, RuntimeError):
            trio.lowlevel.remove_instrument(self._instrument)


def peek() -> TrioPeek | None:
    """The current trio run's peek, or None if its internals are not the expected ones."""
    try:
        runner = trio._core._run.GLOBAL_RUN_CONTEXT.runner
        fd = runner.io_manager._epoll.fileno()
        waiting_for_idle = runner.waiting_for_idle
        next_deadline = runner.deadlines.next_deadline
        clock = runner.clock
    except AttributeError as error:
        log.warning("waiting through trio for every batch (trio internals differ: %s)", error)
        return None
    if type(clock).__name__ != "SystemClock" or not isinstance(fd, int):
        return None
    if not callable(next_deadline) or not hasattr(waiting_for_idle, "__len__"):
        return None
    return TrioPeek(fd, waiting_for_idle, next_deadline)
