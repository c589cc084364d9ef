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
    runs `_session` in the handler nursery, so stopping the loop leaves sessions running.

    `add_socket` serves one more socket bound to the same address (an empty worker slot's,
    adopted until the slot is refilled) with the same listener: same routing, same sessions.
    """

    _accept_scope: trio.CancelScope | None = None
    _loops: trio.Nursery | None = None

    def __init__(self, sock: socket.socket, address: str) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.address = address
        # Set once `serve` has returned.
        self.done = trio.Event()
        self._extra: dict[int, tuple[socket.socket, trio.CancelScope]] = {}
        self._on_client: Callable[[socket.socket, tuple[str, int]], None] | None = None

    def connection_limit(self) -> ConnectionLimit:
        raise NotImplementedError

    def count_accepted(self) -> None:
        raise NotImplementedError

    async def _session(self, client: socket.socket, peer: tuple[str, int]) -> None:
        raise NotImplementedError

    def stop_accepting(self) -> None:
        """Leave the listener sockets alone from now on; sessions go on."""
        if self._accept_scope is not None:
            self._accept_scope.cancel()

    async def _accept_from(self, sock: socket.socket) -> None:
        assert self._on_client is not None
        try:
            await accept_loop(sock, self.connection_limit(), self.address, self._on_client)
        except OSError as error:
            log.error("listener %s stopped: %s", self.address, error)

    async def _accept_extra(self, sock: socket.socket, scope: trio.CancelScope) -> None:
        with scope:
            await self._accept_from(sock)

    async def serve(
        self,
        handlers: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept until `stop_accepting()` (or an accept error, logged); sessions are started
        in `handlers`."""

        def on_client(client: socket.socket, peer: tuple[str, int]) -> None:
            self.count_accepted()
            handlers.start_soon(self._session, client, peer)

        self._on_client = on_client
        try:
            with trio.CancelScope() as self._accept_scope:
                async with trio.open_nursery() as loops:
                    self._loops = loops
                    for sock, scope in self._extra.values():
                        loops.start_soon(self._accept_extra, sock, scope)
                    task_status.started()
                    await self._accept_from(self.sock)
                    # The own socket failed: adopted ones are served until stopped.
        finally:
            self._loops = None
            self.done.set()

    def add_socket(self, sock: socket.socket) -> None:
        """Accept on another socket bound to this address too (see the class)."""
        sock.setblocking(False)
        scope = trio.CancelScope()
        self._extra[sock.fileno()] = (sock, scope)
        if self._loops is not None:
            self._loops.start_soon(self._accept_extra, sock, scope)

    def remove_socket(self, fd: int) -> None:
        """Stop accepting on an added socket and close this process's copy of it."""
        entry = self._extra.pop(fd, None)
        if entry is not None:
            entry[1].cancel()
            entry[0].close()

    async def close(self, patience: float = 1.0) -> None:
        """Stop accepting, wait (bounded) for the loops to return, close this process's copies
        of the sockets."""
        self.stop_accepting()
        with trio.move_on_after(patience):
            await self.done.wait()
        for fd in list(self._extra):
            self.remove_socket(fd)
        self.sock.close()
