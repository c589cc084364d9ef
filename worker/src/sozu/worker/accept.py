"""The accept loop shared by TCP and HTTP listeners, and their common base (trio shell).

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


class AcceptingListener:
    """A listener socket served by `accept_loop` until `stop_accepting()`; each connection
    runs `_session` in the handler nursery, so stopping the loop leaves sessions running."""

    _accept_scope: trio.CancelScope | None = None

    def __init__(self, sock: socket.socket, address: str) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.address = address
        # Set once `serve` has returned.
        self.done = trio.Event()

    def connection_limit(self) -> ConnectionLimit:
        raise NotImplementedError

    def count_accepted(self) -> None:
        raise NotImplementedError

    async def _session(self, client: socket.socket, peer: tuple[str, int]) -> None:
        raise NotImplementedError

    def stop_accepting(self) -> None:
        """Leave the listener socket alone from now on; sessions go on."""
        if self._accept_scope is not None:
            self._accept_scope.cancel()

    async def serve(
        self,
        handlers: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept until `stop_accepting()` (or an accept error, logged); sessions are started
        in `handlers`."""
        try:
            with trio.CancelScope() as self._accept_scope:
                task_status.started()

                def on_client(client: socket.socket, peer: tuple[str, int]) -> None:
                    self.count_accepted()
                    handlers.start_soon(self._session, client, peer)

                await accept_loop(self.sock, self.connection_limit(), self.address, on_client)
        except OSError as error:
            log.error("listener %s stopped: %s", self.address, error)
        finally:
            self.done.set()

    async def close(self, patience: float = 1.0) -> None:
        """Stop accepting, wait (bounded) for the loop to return, close this process's copy of
        the socket."""
        self.stop_accepting()
        with trio.move_on_after(patience):
            await self.done.wait()
        self.sock.close()
