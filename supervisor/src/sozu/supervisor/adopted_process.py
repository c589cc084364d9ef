"""A worker process the supervisor did not spawn in this process image (trio).

After an in-place re-exec the supervisor keeps its pid, so its workers are still its
children, but the `trio.Process` objects are gone. This gives the same small interface
(`pid`, `returncode`, `wait`, `kill`): waiting polls waitpid(WNOHANG) a few times a second,
which any number of tasks may do at once.
"""

from __future__ import annotations

import contextlib
import os
import signal

import trio

POLL_INTERVAL = 0.05


class AdoptedProcess:
    """A child process known by its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            if self.returncode is None:
                # Not our child (any more): treat it as gone.
                self.returncode = -signal.SIGKILL
            return
        if pid != 0 and self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(status)

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
