"""What the HTTP/1.1 and HTTP/2 client connections of the readiness loop share: the loop's
Timed protocol (the timer is the core's `deadline`, or the end of a lingering close), the
start, and the discarding reads of a lingering close. Each connection brings its socket
handling, `settle` and `_finish`."""

from __future__ import annotations

import math
import socket
from typing import TYPE_CHECKING, Protocol

from sozu.worker.shell.reactor import IN, Handler

if TYPE_CHECKING:
    from sozu.worker.shell.http_listener import HttpServer

READ_SIZE = 65536
LINGER = 2.0


class FrontSession(Protocol):
    """The part of a session core (`Http1Session`, `H2Session`) this base drives."""

    @property
    def deadline(self) -> float: ...

    def start(self, now: float) -> None: ...

    def on_timer(self, now: float) -> None: ...


class FrontConnection:
    """A client connection on the loop: its subclasses hold the attributes named here."""

    __slots__ = ()

    server: HttpServer
    sock: socket.socket
    fd: int
    armed: float  # kept by the loop (its Timed protocol)
    session: FrontSession
    finished: bool
    lingering: bool
    linger_until: float
    on_front_event: Handler

    def settle(self, now: float) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def begin(self, now: float, *, registered: bool = False) -> None:
        """Start serving (`registered`: the fd is on the loop already, its TLS handshake's:
        taken over without an epoll round trip)."""
        reactor = self.server.reactor
        if registered:
            reactor.rebind(self.fd, self.on_front_event, self)
            reactor.modify(self.fd, IN)
        else:
            reactor.register(self.fd, IN, self.on_front_event, self)
        self.session.start(now)
        self.settle(now)

    # -- the loop's Timed protocol

    def deadline(self) -> float:
        if self.finished:
            return math.inf
        return self.linger_until if self.lingering else self.session.deadline

    def expire(self, now: float) -> None:
        if self.lingering:
            self._finish()
            return
        self.session.on_timer(now)
        self.settle(now)

    def abort(self, error: BaseException) -> None:
        """An internal error in this connection (counted by the loop): it ends, the worker
        goes on."""
        self._finish()

    def close(self) -> None:
        """The worker stops: end at once."""
        self._finish()

    def _linger_read(self) -> None:
        """Client bytes while lingering: discarded (raw, TLS records included) until the
        client closes."""
        try:
            data = socket.socket.recv(self.sock, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._finish()
