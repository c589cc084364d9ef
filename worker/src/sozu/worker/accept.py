"""The accept loop shared by TCP and HTTP listeners (trio shell).

A drain loop over the listener socket the supervisor handed over: accept until it would block,
then one wait. Accepting pauses while the worker-wide connection limit is reached, and backs off
100 ms on resource exhaustion (EMFILE, ENFILE, ENOMEM, ENOBUFS) instead of failing.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

import trio

from sozu.worker.connection_limit import ConnectionLimit

log = logging.getLogger("sozu.worker")

ACCEPT_BATCH = 64
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def accept_loop(
    sock: socket.socket,
    limit: ConnectionLimit,
    address: str,
    on_client: Callable[[socket.socket, tuple[str, int]], None],
) -> None:
    """Accept forever; `on_client` gets each connection after the limit has been taken."""
    while True:
        await limit.wait_for_room()
        for _ in range(ACCEPT_BATCH):
            if limit.active >= limit.limit:
                break
            try:
                client, peer = sock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                break
            except OSError as error:
                if error.errno in _RESOURCE_ERRORS:
                    log.warning("accept on %s: %s; retrying", address, error)
                    await trio.sleep(0.1)
                    break
                raise
            limit.take()
            on_client(client, (peer[0], peer[1]))
        else:
            await trio.lowlevel.checkpoint()
