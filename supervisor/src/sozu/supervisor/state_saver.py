"""`automatic_state_save`: the routing state written to `saved_state` after accepted changes.

Every accepted change marks the state dirty; one task writes it, at most one write at a
time. A burst of changes is coalesced into one write (the task waits COALESCE seconds after
the first change, and whatever arrives during a write is written right after it), so a
10,000-cluster state is not rewritten for every command. The snapshot is taken in one
synchronous step (no other task runs meanwhile, so it is consistent without the state lock)
and written atomically (temporary file, fsync, rename) in a thread: the state lock is never
held while writing. A change reaches the disk typically COALESCE seconds after its answer.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import trio

from sozu.command.state import ConfigState
from sozu.command.statefile import dump_state

log = logging.getLogger("sozu.supervisor")

COALESCE = 0.1


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader (or a crash) sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


class StateSaver:
    """Writes the state to `path` after changes (see the module docstring)."""

    def __init__(self, state: ConfigState, path: Path) -> None:
        self.state = state
        self.path = path
        self._dirty = trio.Event()
        self.writes = 0
        self.failures = 0
        # The hash last written (nothing is rewritten when a change was undone meanwhile).
        self._written: str | None = None

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            await trio.sleep(COALESCE)
            self._dirty = trio.Event()
            await self.save_now()

    async def save_now(self) -> None:
        state_hash = self.state.hash()
        if state_hash == self._written:
            return
        data = dump_state(self.state)  # synchronous: a consistent snapshot
        try:
            await trio.to_thread.run_sync(write_atomically, self.path, data)
        except OSError as error:
            self.failures += 1
            log.error("automatic state save to %s failed: %s", self.path, error)
            return
        self._written = state_hash
        self.writes += 1
