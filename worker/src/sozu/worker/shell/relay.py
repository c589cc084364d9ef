"""Moving bytes one way between two non-blocking sockets, for the readiness loop.

`Direction` pumps from a source to a destination on readiness events: with `os.splice`
through a pipe (socket -> pipe -> socket: the bytes never enter Python), else through one
reused buffer. Bytes the destination would not take wait (in the pipe, or as a view of the
buffer) and the source is not read meanwhile: that is the back pressure. Pipes come from a
`PipePool` and go back to it whenever they are empty, so only directions with bytes waiting
hold one (two fds). End of stream is passed on as a write-side shutdown once everything before
it was delivered.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from typing import Final

CHUNK: Final = 65536
# Pipes are grown to this (fewer splice calls and loop wake-ups per megabyte); the kernel
# allocates their pages only as bytes wait in them.
PIPE_SIZE: Final = 262144
# Reads per readiness event: a busy connection does not hold the loop for long.
MAX_PUMPS: Final = 16
HAS_SPLICE: Final = hasattr(os, "splice")
_FLAGS: Final = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if HAS_SPLICE else 0


class PipePool:
    """Empty pipes (read end, write end) kept for reuse."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._free: list[tuple[int, int]] = []
        self.created = 0

    def take(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        self.created += 1
        pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # over the per-user limit: the default size
            fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        return pipe

    def give(self, pipe: tuple[int, int], *, empty: bool) -> None:
        if empty and len(self._free) < self.keep:
            self._free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        for read_end, write_end in self._free:
            os.close(read_end)
            os.close(write_end)
        self._free.clear()


class Direction:
    """Bytes from `src` to `dst` (see the module docstring)."""

    __slots__ = (
        "buffer",
        "dst",
        "ended",
        "pending",
        "pipe",
        "pipes",
        "shut",
        "src",
        "view",
        "waiting",
    )

    def __init__(self, src: socket.socket, dst: socket.socket, pipes: PipePool | None) -> None:
        self.src = src
        self.dst = dst
        self.pipes = pipes  # None: copy through a buffer
        self.pipe: tuple[int, int] | None = None
        self.pending = 0  # bytes in the pipe not yet spliced out
        self.buffer: bytearray | None = None
        self.view = memoryview(b"")  # copied bytes not yet sent
        self.ended = False  # the source reached its end of stream
        self.shut = False  # the end was passed on to the destination
        self.waiting = b""  # bytes queued before relaying starts (a PROXY header)

    @property
    def blocked(self) -> bool:
        """Bytes wait for the destination: do not read the source, watch the destination."""
        return bool(self.pending or self.view or self.waiting)

    def wants_read(self) -> bool:
        return not self.ended and not self.blocked

    def queue(self, data: bytes) -> None:
        """Bytes to send before anything read from the source."""
        self.waiting += data

    def pump(self) -> int:
        """Read what the source has (bounded) and pass it on; bytes moved. OSError on a reset
        or a broken destination."""
        moved = 0
        for _ in range(MAX_PUMPS):
            if self.blocked or self.ended:
                break
            if self.pipes is not None:
                got = self._splice_in()
            else:
                got = self._copy_in()
            if got is None:
                break
            if got == 0:
                self.ended = True
                break
            moved += self._flush_out()
        self._release_pipe()
        self._pass_end()
        return moved

    def flush(self) -> int:
        """The destination is writable again: send what waits; bytes moved."""
        moved = self._flush_out()
        self._release_pipe()
        self._pass_end()
        return moved

    def _splice_in(self) -> int | None:
        if self.pipe is None:
            assert self.pipes is not None
            self.pipe = self.pipes.take()
        try:
            count = os.splice(self.src.fileno(), self.pipe[1], PIPE_SIZE, flags=_FLAGS)
        except BlockingIOError:
            return None
        self.pending = count
        return count

    def _copy_in(self) -> int | None:
        if self.buffer is None:
            self.buffer = bytearray(CHUNK)
        try:
            count = self.src.recv_into(self.buffer)
        except BlockingIOError:
            return None
        self.view = memoryview(self.buffer)[:count]
        return count

    def _flush_out(self) -> int:
        moved = 0
        dst = self.dst
        if self.waiting:
            try:
                sent = dst.send(self.waiting)
            except BlockingIOError:
                return 0
            self.waiting = self.waiting[sent:]
            if self.waiting:
                return 0
        if self.pending:
            assert self.pipe is not None
            while self.pending:
                try:
                    count = os.splice(self.pipe[0], dst.fileno(), self.pending, flags=_FLAGS)
                except BlockingIOError:
                    break
                self.pending -= count
                moved += count
        elif self.view:
            try:
                sent = dst.send(self.view)
            except BlockingIOError:
                return moved
            self.view = self.view[sent:]
            moved += sent
        return moved

    def _release_pipe(self) -> None:
        if self.pipe is not None and not self.pending:
            assert self.pipes is not None
            self.pipes.give(self.pipe, empty=True)
            self.pipe = None

    def _pass_end(self) -> None:
        if self.ended and not self.shut and not self.blocked:
            self.shut = True
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self.pipe is not None:
            assert self.pipes is not None
            self.pipes.give(self.pipe, empty=not self.pending)
            self.pipe = None
            self.pending = 0
