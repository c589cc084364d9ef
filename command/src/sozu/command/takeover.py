"""Taking over the workers of a supervisor that died (kill -9, a crash) without a handoff.

A worker whose channel closes while it serves (no stop was asked) keeps serving and listens
on a SOCK_SEQPACKET unix socket at a well-known path beside its instance's command socket
(`takeover_path`): `<command socket>.workers/<worker id>`. A new supervisor of the same
instance (the same command socket) connects to each one before it binds anything:

1. supervisor -> worker: a `TakeoverRequest` (msgpack, one message);
2. worker -> supervisor: a `TakeoverOffer` (msgpack) with two fds in the same message: the
   supervisor's ends of a fresh channel socketpair (SOCK_STREAM) and SCM socketpair
   (SOCK_SEQPACKET); then its listener sockets with their manifest (`fdpass`), slot by slot;
3. the worker serves its new channel as it served the old one (no Hello: the offer says who
   it is), and the supervisor adopts it as after an in-place upgrade.

A worker nobody takes over within `drain_timeout` stops accepting, drains and exits.
"""

from __future__ import annotations

import array
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from sozu.command.fdpass import FdPassingError, ReceivedListener, receive_listeners_blocking

TAKEOVER_VERSION: Final = 1
# sockaddr_un's path is 108 bytes, NUL included.
MAX_SOCKET_PATH: Final = 107
MAX_MESSAGE: Final = 65536


class TakeoverRequest(msgspec.Struct, frozen=True, kw_only=True):
    version: int = TAKEOVER_VERSION


class TakeoverOffer(msgspec.Struct, frozen=True, kw_only=True):
    """Who the worker is; its channel fds come with this message."""

    version: int = TAKEOVER_VERSION
    worker_id: int
    slot: int
    pid: int
    build_id: str
    state_hash: str


@dataclass(frozen=True)
class TakenWorker:
    """What a taken-over worker handed over (the caller owns the fds and sockets)."""

    offer: TakeoverOffer
    channel_fd: int
    scm_fd: int
    listeners: tuple[ReceivedListener, ...]


class TakeoverError(Exception):
    """A worker that could not be taken over (gone, or not speaking the protocol)."""


def takeover_dir(command_socket: str | Path) -> Path:
    return Path(f"{Path(command_socket).absolute()}.workers")


def takeover_path(command_socket: str | Path, worker_id: int) -> str | None:
    """Where worker `worker_id` of this instance waits to be taken over; None when that
    path is too long for a unix socket (takeover is then off)."""
    path = str(takeover_dir(command_socket) / str(worker_id))
    return path if len(path.encode()) <= MAX_SOCKET_PATH else None


def take_over(path: Path, timeout: float) -> TakenWorker:
    """Connect to a waiting worker and take its channel and listener sockets (blocking)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(msgspec.msgpack.encode(TakeoverRequest()))
            fds = array.array("i")
            message, ancillary, flags, _ = sock.recvmsg(
                MAX_MESSAGE, socket.CMSG_SPACE(2 * fds.itemsize), socket.MSG_CMSG_CLOEXEC
            )
        except OSError as error:
            raise TakeoverError(f"{path}: {error}") from None
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        try:
            if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) != 2:
                raise TakeoverError(f"{path}: a takeover offer without its two channel fds")
            try:
                offer = msgspec.msgpack.decode(message, type=TakeoverOffer)
            except msgspec.DecodeError as error:
                raise TakeoverError(f"{path}: {error}") from None
            if offer.version != TAKEOVER_VERSION:
                raise TakeoverError(f"{path}: takeover version {offer.version}")
            try:
                listeners = receive_listeners_blocking(sock)
            except (OSError, FdPassingError) as error:
                raise TakeoverError(f"{path}: listener sockets: {error}") from None
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return TakenWorker(
            offer=offer, channel_fd=fds[0], scm_fd=fds[1], listeners=tuple(listeners)
        )
    finally:
        sock.close()
