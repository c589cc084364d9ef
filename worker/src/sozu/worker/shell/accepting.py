"""Listener sockets on the readiness loop, and the worker-wide connection limit.

A `LoopListener` accepts on its sockets (its own, plus those of an empty worker slot it
adopts) until they would block, at most ACCEPT_BATCH per readiness event and for at most
ACCEPT_BUDGET seconds, and hands each connection to `accepted`. The budget matters for TLS: a
connection's handshake starts as it is accepted, and a full one costs hundreds of µs, so
draining a backlog of them in one event would hold back every request already in progress.
What is left stays in the backlog; the socket is still readable, and the loop comes back to it
after the other ready events. The `Acceptor` owns the worker-wide limit: once it is reached every
listener stops being watched, and watching resumes when a connection ends below it. Resource
exhaustion (EMFILE, ENFILE, ENOMEM, ENOBUFS) pauses accepting for 100 ms instead of failing.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import Final

from sozu.worker.shell.connection_limit import ConnectionLimit
from sozu.worker.shell.reactor import IN, Reactor

log = logging.getLogger("sozu.worker")

ACCEPT_BATCH: Final = 64
ACCEPT_BUDGET: Final = 0.001
RESOURCE_PAUSE: Final = 0.1
_RESOURCE_ERRORS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class Acceptor:
    """Every listener of a worker on the loop, and the connection limit they share."""

    def __init__(self, reactor: Reactor, limit: Callable[[], ConnectionLimit]) -> None:
        self.reactor = reactor
        self._limit = limit
        self.listeners: set[LoopListener] = set()
        self.paused = False

    @property
    def limit(self) -> ConnectionLimit:
        return self._limit()

    def released(self) -> None:
        """A connection ended: give its place back, resume accepting if it was full."""
        limit = self.limit
        limit.give()
        if self.paused and limit.active < limit.limit:
            self.resume()

    def pause(self, retry_after: float | None = None) -> None:
        if self.paused:
            return
        self.paused = True
        for listener in self.listeners:
            listener.unwatch()
        if retry_after is not None:
            self.reactor.later(retry_after, self.resume)

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        for listener in self.listeners:
            if listener.accepting:
                listener.watch()


class LoopListener:
    """A listener's sockets on the loop; subclasses say what an accepted connection becomes."""

    armed = math.inf

    def __init__(self, acceptor: Acceptor, address: str) -> None:
        self.acceptor = acceptor
        self.address = address
        self.sockets: dict[int, socket.socket] = {}
        # The listener's own socket (not one of an empty slot it adopted).
        self.own: socket.socket | None = None
        self.accepting = False
        # Linux copies TCP_NODELAY from a listener to what it accepts, which saves a system
        # call per connection; the first connection accepted checks it (None: not yet).
        self.nodelay_inherited: bool | None = None
        acceptor.listeners.add(self)

    def accepted(self, client: socket.socket, peer: tuple[str, int]) -> None:
        raise NotImplementedError

    # -- sockets

    def add_socket(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        # The supervisor sets it when it binds; a socket bound by an older supervisor and
        # adopted in an upgrade may lack it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sockets[sock.fileno()] = sock
        if self.accepting and not self.acceptor.paused:
            self._watch_one(sock)

    def remove_socket(self, fd: int) -> None:
        """Stop accepting on one socket and close this process's copy of it."""
        sock = self.sockets.pop(fd, None)
        if sock is not None:
            self.acceptor.reactor.unregister(fd)
            sock.close()

    def start_accepting(self) -> None:
        self.accepting = True
        if not self.acceptor.paused:
            self.watch()

    def stop_accepting(self) -> None:
        """Leave the sockets alone (they stay open: an upgrade's successor serves them)."""
        self.accepting = False
        self.unwatch()

    def watch(self) -> None:
        for sock in self.sockets.values():
            self._watch_one(sock)

    def unwatch(self) -> None:
        for fd in self.sockets:
            self.acceptor.reactor.unregister(fd)

    def _watch_one(self, sock: socket.socket) -> None:
        reactor = self.acceptor.reactor
        fd = sock.fileno()
        if fd not in reactor:
            reactor.register(fd, IN, lambda _mask: self._accept(sock), self)

    def close(self) -> None:
        self.stop_accepting()
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        self.acceptor.listeners.discard(self)

    # -- the loop's Timed protocol (listener sockets have no timer)

    def deadline(self) -> float:
        return math.inf

    def expire(self, now: float) -> None:
        pass

    def abort(self, error: BaseException) -> None:
        log.error("listener %s: %s", self.address, error)

    # -- accepting

    def _accept(self, sock: socket.socket) -> None:
        acceptor = self.acceptor
        limit = acceptor.limit
        family = sock.family
        perf_counter = time.perf_counter
        until = perf_counter() + ACCEPT_BUDGET
        for _ in range(ACCEPT_BATCH):
            if limit.active >= limit.limit:
                acceptor.pause()
                return
            try:
                # What socket.accept does, less its two enum conversions (family and type
                # read back from the listener) on every connection.
                fd, peer = sock._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in _RESOURCE_ERRORS:
                    log.warning("accept on %s: %s; retrying", self.address, error)
                    acceptor.pause(retry_after=RESOURCE_PAUSE)
                    return
                raise
            client = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            limit.take()
            client.setblocking(False)
            if not self.nodelay_inherited:
                self._nodelay(client)
            self.accepted(client, (peer[0], peer[1]))
            if perf_counter() > until:
                return

    def _nodelay(self, client: socket.socket) -> None:
        if self.nodelay_inherited is None:
            self.nodelay_inherited = bool(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            if self.nodelay_inherited:
                return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
