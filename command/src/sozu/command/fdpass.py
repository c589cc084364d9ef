"""Listener sockets handed from the supervisor to a worker with SCM_RIGHTS.

Each message on the worker's SOCK_SEQPACKET socketpair is one `sendmsg`: an msgpack
`FdManifest` naming, in order, the listener sockets whose fds ride in that same message's
SCM_RIGHTS data; larger sets are split over several messages (`more` marks all but the last).
Receiving passes MSG_CMSG_CLOEXEC (CPython's `socket.recv_fds` drops its flags, so its fds
arrive inheritable) and checks MSG_CTRUNC and MSG_TRUNC; whatever goes wrong, every fd that
arrived is closed before the error is raised.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
import trio

from sozu.command.types import ListenerType

MAX_FDS_PER_MESSAGE: Final = 200
MANIFEST_BUFFER_SIZE: Final = 65536
_FD_SIZE: Final = array.array("i").itemsize

AncillaryData = list[tuple[int, int, bytes]]


class FdPassingError(Exception):
    """A message of the fd channel cannot be accepted; the fds it carried are closed."""


class PassedListener(msgspec.Struct, frozen=True, kw_only=True):
    """What one passed fd is: the listener's address and protocol, and the slot whose socket
    it is when not the receiver's own (an empty slot's socket it adopts)."""

    address: str
    proxy: ListenerType
    slot: int | None = None


class FdManifest(msgspec.Struct, frozen=True, kw_only=True):
    """The fds of one message, in order; `more` when another message of the batch follows."""

    listeners: tuple[PassedListener, ...]
    more: bool = False


@dataclass(frozen=True, slots=True)
class ReceivedListener:
    """A listener socket received from the supervisor (close-on-exec); the caller owns it."""

    listener: PassedListener
    sock: socket.socket


_encoder: Final = msgspec.msgpack.Encoder()
_manifest_decoder: Final = msgspec.msgpack.Decoder(FdManifest)


def _fileno(fd: int | socket.socket) -> int:
    return fd if isinstance(fd, int) else fd.fileno()


def _messages(
    listeners: Sequence[tuple[PassedListener, int | socket.socket]], max_fds: int
) -> list[tuple[bytes, AncillaryData]]:
    if max_fds < 1:
        raise ValueError(f"max_fds must be at least 1, not {max_fds}")
    messages: list[tuple[bytes, AncillaryData]] = []
    starts = range(0, len(listeners), max_fds) if listeners else range(1)
    for start in starts:
        chunk = listeners[start : start + max_fds]
        manifest = FdManifest(
            listeners=tuple(passed for passed, _ in chunk),
            more=start + max_fds < len(listeners),
        )
        fds = array.array("i", (_fileno(fd) for _, fd in chunk))
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())] if fds else []
        messages.append((_encoder.encode(manifest), ancillary))
    return messages


def _ancillary_size(max_fds: int) -> int:
    if max_fds < 1:
        raise ValueError(f"max_fds must be at least 1, not {max_fds}")
    return socket.CMSG_SPACE(_FD_SIZE * max_fds)


def _received_fds(ancillary: AncillaryData) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % _FD_SIZE])
    return fds.tolist()


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def _accept_message(
    data: bytes, ancillary: AncillaryData, flags: int, max_fds: int
) -> tuple[FdManifest, list[socket.socket]] | None:
    """Check one received message; None at end of stream. Closes its fds on any error."""
    fds = _received_fds(ancillary)
    sockets: list[socket.socket] = []
    try:
        if flags & socket.MSG_CTRUNC:
            raise FdPassingError(
                f"fd message truncated: more fds than the {max_fds} expected at most"
                f" ({len(fds)} arrived, the rest were dropped)"
            )
        if flags & socket.MSG_TRUNC:
            raise FdPassingError(f"fd manifest longer than {MANIFEST_BUFFER_SIZE} bytes")
        if not data:
            if fds:
                raise FdPassingError(f"{len(fds)} fds arrived without a manifest")
            return None
        try:
            manifest = _manifest_decoder.decode(data)
        except (msgspec.DecodeError, ValueError, RecursionError) as error:
            raise FdPassingError(f"invalid fd manifest: {error}") from None
        if len(manifest.listeners) != len(fds):
            raise FdPassingError(
                f"fd manifest names {len(manifest.listeners)} listeners but {len(fds)} fds arrived"
            )
        for fd in fds:
            try:
                sockets.append(socket.socket(fileno=fd))
            except OSError as error:
                raise FdPassingError(f"received fd {fd} is not a socket: {error}") from None
    except BaseException:
        for sock in sockets:
            sock.close()
        _close_all(fds[len(sockets) :])
        raise
    return manifest, sockets


class _Batch:
    """Messages of one batch received so far; closes them all if the batch fails."""

    __slots__ = ("received",)

    def __init__(self) -> None:
        self.received: list[ReceivedListener] = []

    def add(self, message: tuple[FdManifest, list[socket.socket]] | None) -> bool:
        """Add one message; True when the batch is complete."""
        if message is None:
            raise FdPassingError(
                "fd channel closed by the peer"
                + (" in the middle of a batch" if self.received else "")
            )
        manifest, sockets = message
        self.received.extend(map(ReceivedListener, manifest.listeners, sockets))
        return not manifest.more

    def close(self) -> None:
        for received in self.received:
            received.sock.close()


async def send_listeners(
    sock: trio.socket.SocketType,
    listeners: Sequence[tuple[PassedListener, int | socket.socket]],
    *,
    max_fds: int = MAX_FDS_PER_MESSAGE,
) -> None:
    """Send listener fds with their manifest (the sender keeps its own copies open)."""
    for payload, ancillary in _messages(listeners, max_fds):
        await sock.sendmsg([payload], ancillary)


def send_listeners_blocking(
    sock: socket.socket,
    listeners: Sequence[tuple[PassedListener, int | socket.socket]],
    *,
    max_fds: int = MAX_FDS_PER_MESSAGE,
) -> None:
    """`send_listeners` on a blocking socket."""
    for payload, ancillary in _messages(listeners, max_fds):
        sock.sendmsg([payload], ancillary)


async def receive_listeners(
    sock: trio.socket.SocketType, *, max_fds: int = MAX_FDS_PER_MESSAGE
) -> list[ReceivedListener]:
    """Receive one batch of listener sockets (close-on-exec), in the order they were sent.

    `max_fds` must be at least the sender's per-message count. Raises `FdPassingError`, with
    every fd of the batch closed, on a bad message or when the peer closes the channel.
    """
    ancillary_size = _ancillary_size(max_fds)
    batch = _Batch()
    try:
        while True:
            data, ancillary, flags, _ = await sock.recvmsg(
                MANIFEST_BUFFER_SIZE, ancillary_size, socket.MSG_CMSG_CLOEXEC
            )
            if batch.add(_accept_message(data, ancillary, flags, max_fds)):
                return batch.received
    except BaseException:
        batch.close()
        raise


def receive_listeners_blocking(
    sock: socket.socket, *, max_fds: int = MAX_FDS_PER_MESSAGE
) -> list[ReceivedListener]:
    """`receive_listeners` on a blocking socket."""
    ancillary_size = _ancillary_size(max_fds)
    batch = _Batch()
    try:
        while True:
            data, ancillary, flags, _ = sock.recvmsg(
                MANIFEST_BUFFER_SIZE, ancillary_size, socket.MSG_CMSG_CLOEXEC
            )
            if batch.add(_accept_message(data, ancillary, flags, max_fds)):
                return batch.received
    except BaseException:
        batch.close()
        raise


__all__ = [
    "MANIFEST_BUFFER_SIZE",
    "MAX_FDS_PER_MESSAGE",
    "FdManifest",
    "FdPassingError",
    "PassedListener",
    "ReceivedListener",
    "receive_listeners",
    "receive_listeners_blocking",
    "send_listeners",
    "send_listeners_blocking",
]
