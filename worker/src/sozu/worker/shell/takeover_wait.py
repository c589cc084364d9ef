"""A worker whose supervisor died: serve on, and wait to be taken over (trio shell).

See `sozu.command.takeover` for the protocol. The worker keeps accepting and serving with the
state it has (no change can reach it), listens at its takeover path, and hands its channel
and its listener sockets to the first supervisor of its instance that asks. If none comes
within `drain_timeout`, it stops accepting, drains (at most `drain_timeout` more) and exits.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import socket
from pathlib import Path

import msgspec
import trio

from sozu.command.build import build_id
from sozu.command.fdpass import send_listeners
from sozu.command.takeover import (
    MAX_MESSAGE,
    TAKEOVER_VERSION,
    TakeoverOffer,
    TakeoverRequest,
)
from sozu.worker.shell.proxies import Proxies

log = logging.getLogger("sozu.worker")

REQUEST_PATIENCE = 5.0


def _listen(path: str) -> socket.socket:
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(4)
    return sock


async def wait_for_takeover(
    *,
    path: str,
    worker_id: int,
    slot: int,
    state_hash: str,
    proxies: Proxies,
    patience: float,
) -> tuple[socket.socket, socket.socket] | None:
    """The worker's ends of the channel and SCM socketpairs of the supervisor that took it
    over; None if none did within `patience` seconds (the caller then drains)."""
    try:
        listener = trio.socket.from_stdlib_socket(_listen(path))
    except OSError as error:
        log.error("cannot wait to be taken over at %s: %s", path, error)
        return None
    log.warning(
        "the supervisor is gone: serving on, waiting up to %g s to be taken over at %s",
        patience,
        path,
    )
    try:
        with trio.move_on_after(patience):
            while True:
                client, _ = await listener.accept()
                with client:
                    try:
                        with trio.fail_after(REQUEST_PATIENCE):
                            taken = await _offer(client, worker_id, slot, state_hash, proxies)
                    except (OSError, trio.TooSlowError, msgspec.DecodeError) as error:
                        log.warning("takeover attempt failed: %s", error)
                        continue
                log.info("taken over by a new supervisor")
                return taken
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    log.warning("nobody took this worker over in %g s", patience)
    return None


async def _offer(
    client: trio.socket.SocketType,
    worker_id: int,
    slot: int,
    state_hash: str,
    proxies: Proxies,
) -> tuple[socket.socket, socket.socket]:
    request = msgspec.msgpack.decode(await client.recv(MAX_MESSAGE), type=TakeoverRequest)
    if request.version != TAKEOVER_VERSION:
        raise OSError(f"takeover version {request.version} not spoken here")
    channel, channel_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    scm, scm_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        offer = TakeoverOffer(
            worker_id=worker_id,
            slot=slot,
            pid=os.getpid(),
            build_id=build_id(),
            state_hash=state_hash,
        )
        fds = [channel_peer.fileno(), scm_peer.fileno()]
        await client.sendmsg(
            [msgspec.msgpack.encode(offer)],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())],
        )
        await send_listeners(client, proxies.listener_sockets(slot))
    except BaseException:
        channel.close()
        scm.close()
        raise
    finally:
        channel_peer.close()
        scm_peer.close()
    return channel, scm
