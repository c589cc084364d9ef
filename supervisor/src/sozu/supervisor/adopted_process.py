"""A worker process the supervisor did not spawn in this process image (trio).

After an in-place re-exec the supervisor keeps its pid, so its workers are still its
children, but the `trio.Process` objects are gone. This gives the same small interface
(`pid`, `returncode`, `wait`, `kill`): waiting polls waitpid(WNOHANG) a few times a second,
which any number of tasks may do at once. A worker taken over from a supervisor that died is
no child of ours: a pidfd is polled instead.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal

import trio

POLL_INTERVAL = 0.05


class AdoptedProcess:
    """A child process known by its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd: int | None = None

    def _reap(self) -> None:
        if self.returncode is not None:
            return
        if self._pidfd is not None:
            self._poll_pidfd()
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Not our child: a worker taken over from a supervisor that died (see
            # orphans.py). A pidfd tells when it exits (its status is not ours to read).
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except OSError:
                self.returncode = -signal.SIGKILL  # already gone
                return
            self._poll_pidfd()
            return
        if pid != 0:
            self.returncode = os.waitstatus_to_exitcode(status)

    def _poll_pidfd(self) -> None:
        assert self._pidfd is not None
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        if readable:
            os.close(self._pidfd)
            self._pidfd = None
            self.returncode = 0

    async def wait(self) -> int:
        """The exit code, once the process has exited."""
        while True:
            self._reap()
            if self.returncode is not None:
                return self.returncode
            await trio.sleep(POLL_INTERVAL)

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
