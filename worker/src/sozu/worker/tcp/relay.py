"""Relay bytes both ways between two connected non-blocking sockets (trio shell).

Each direction is a drain loop: move data until the source would block, then one wait. With
`os.splice` the bytes go socket -> pipe -> socket without entering Python; elsewhere a reused
buffer is used. End of stream on one side is propagated as a half-close (`shutdown(SHUT_WR)`)
to the other; the relay ends when both directions have ended, or at the first hard error,
or when no byte has moved for the idle timeout of both directions.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Final

import msgspec
import trio

CHUNK: Final = 65536
CHECKPOINT_EVERY: Final = 64
HAS_SPLICE: Final = hasattr(os, "splice")
_SPLICE_FLAGS: Final = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if HAS_SPLICE else 0


class RelayStats(msgspec.Struct):
    """Bytes moved each way; how the relay ended."""

    to_backend: int = 0
    to_client: int = 0
    timed_out: bool = False
    error: str | None = None


class IdleTimer:
    """One cancel scope whose deadline each transfer pushes forward (cheap: no new scope)."""

    __slots__ = ("scope",)

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope

    def touch(self, timeout: float) -> None:
        deadline = trio.current_time() + timeout
        if deadline > self.scope.deadline:
            self.scope.deadline = deadline


async def _splice_one_way(
    src: socket.socket, dst: socket.socket, timer: IdleTimer, idle: float
) -> int:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    moved = 0
    spins = 0
    src_fd, dst_fd = src.fileno(), dst.fileno()
    try:
        while True:
            try:
                count = os.splice(src_fd, write_end, CHUNK, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                # The pipe is always drained before a read: the source has nothing for us.
                await trio.lowlevel.wait_readable(src)
                continue
            if count == 0:
                return moved
            moved += count
            timer.touch(idle)
            while count:
                try:
                    count -= os.splice(read_end, dst_fd, count, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
            spins += 1
            if spins % CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
    finally:
        os.close(read_end)
        os.close(write_end)


async def _copy_one_way(
    src: socket.socket, dst: socket.socket, timer: IdleTimer, idle: float
) -> int:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    moved = 0
    spins = 0
    while True:
        try:
            count = src.recv_into(buffer)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(src)
            continue
        if count == 0:
            return moved
        moved += count
        timer.touch(idle)
        sent = 0
        while sent < count:
            try:
                sent += dst.send(view[sent:count])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(dst)
        spins += 1
        if spins % CHECKPOINT_EVERY == 0:
            await trio.lowlevel.checkpoint()


async def _one_way(
    src: socket.socket,
    dst: socket.socket,
    timer: IdleTimer,
    idle: float,
    use_splice: bool,
) -> int:
    pump = _splice_one_way if use_splice and HAS_SPLICE else _copy_one_way
    moved = await pump(src, dst, timer, idle)
    # Propagate the half-close; if the peer is already gone, the other direction notices.
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    return moved


async def relay(
    client: socket.socket,
    backend: socket.socket,
    *,
    front_timeout: float,
    back_timeout: float,
    use_splice: bool = True,
) -> RelayStats:
    """Relay until both sides have closed, an error, or idleness; the caller closes sockets.

    Client-to-backend traffic pushes the idle deadline `front_timeout` ahead, backend-to-client
    traffic `back_timeout` ahead.
    """
    stats = RelayStats()
    with trio.CancelScope(deadline=trio.current_time() + max(front_timeout, back_timeout)) as scope:
        timer = IdleTimer(scope)

        async def upstream() -> None:
            stats.to_backend = await _one_way(client, backend, timer, front_timeout, use_splice)

        async def downstream() -> None:
            stats.to_client = await _one_way(backend, client, timer, back_timeout, use_splice)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upstream)
                nursery.start_soon(downstream)
        except* OSError as group:
            stats.error = str(group.exceptions[0])
    stats.timed_out = scope.cancelled_caught
    return stats
