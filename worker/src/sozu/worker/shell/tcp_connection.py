"""One TCP proxy connection on the readiness loop: the shell around `TcpSession`.

Before the relay the core decides (PROXY header, backend choice, retries) and this dials and
reads what the core wants read; once connected, two `Direction`s move the bytes, spliced
where the kernel can, and report what moved to the core, which keeps the idle timers and
ends the relay when both directions are over.
"""

from __future__ import annotations

import math
import socket
from typing import TYPE_CHECKING

from sozu.worker.core.tcp_session import (
    CLOSE,
    CLOSE_BACK,
    CONNECT,
    PIPE,
    PIPE_START,
    TcpSession,
)
from sozu.worker.shell.connect import start_connect
from sozu.worker.shell.reactor import ERR, HUP, IN, OUT, Handler
from sozu.worker.shell.relay import Direction

if TYPE_CHECKING:
    from sozu.worker.shell.tcp_listener import TcpServer

READ_SIZE = 4096


class TcpConnection:
    """A client connection of a TCP listener and its backend connection."""

    __slots__ = (
        "armed",
        "back",
        "back_fd",
        "connecting",
        "down",
        "fd",
        "finished",
        "on_back_event",
        "on_front_event",
        "server",
        "session",
        "sock",
        "started",
        "up",
    )

    def __init__(self, server: TcpServer, sock: socket.socket, session: TcpSession) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.session = session
        self.back: socket.socket | None = None
        self.back_fd = -1
        self.connecting = False
        self.up: Direction | None = None  # client -> backend
        self.down: Direction | None = None  # backend -> client
        self.armed = math.inf
        self.finished = False
        self.started = 0.0
        self.on_front_event: Handler = self.on_front
        self.on_back_event: Handler = self.on_back

    def begin(self, now: float) -> None:
        self.started = now
        self.server.reactor.register(self.fd, IN, self.on_front_event, self)
        self.session.start(now)
        self.settle(now)

    # -- the loop's Timed protocol

    def deadline(self) -> float:
        return math.inf if self.finished else self.session.deadline

    def expire(self, now: float) -> None:
        self.session.on_timer(now)
        self.settle(now)

    def abort(self, error: BaseException) -> None:
        """An internal error (counted by the loop): this connection ends, nothing else."""
        self._finish()

    def close(self) -> None:
        self._finish()

    # -- events

    def on_front(self, mask: int) -> None:
        now = self.server.reactor.now()
        session = self.session
        up, down = self.up, self.down
        if up is not None and down is not None:
            try:
                if mask & OUT:
                    self._moved(0, down.flush(), now)
                if mask & (IN | ERR):
                    self._moved(up.pump(), 0, now)
                    if up.ended and up.shut:
                        session.front_eof(now)
                if mask & HUP and not up.ended:
                    session.error(now)  # hung up with bytes still to come: gone
            except OSError:
                session.error(now)
        elif session.wants_front_read():
            try:
                data = self.sock.recv(READ_SIZE)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data:
                session.front_data(data, now)
            elif data is not None:
                session.error(now)
        elif mask & ERR:
            session.error(now)  # the client went away before the relay
        self.settle(now)

    def on_back(self, mask: int) -> None:
        now = self.server.reactor.now()
        session = self.session
        back = self.back
        assert back is not None
        if self.connecting:
            code = back.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self.connecting = False
            if code:
                self._drop_back()
                session.back_connect_failed(now)
            else:
                session.back_connected(now)
            self.settle(now)
            return
        up, down = self.up, self.down
        if up is not None and down is not None:
            try:
                if mask & OUT:
                    self._moved(up.flush(), 0, now)
                if mask & (IN | ERR):
                    self._moved(0, down.pump(), now)
                    if down.ended and down.shut:
                        session.back_eof(now)
                if mask & HUP and not down.ended:
                    session.error(now)
            except OSError:
                session.error(now)
        self.settle(now)

    def _moved(self, up: int, down: int, now: float) -> None:
        if up or down:
            self.session.moved(up, down, now)

    # -- carrying out what the core asks

    def settle(self, now: float) -> None:
        session = self.session
        actions = session.actions
        if actions:
            session.actions = 0
            if actions & CLOSE_BACK:
                self._drop_back()
            if actions & CONNECT:
                self._connect(now)
                if session.actions:
                    self.settle(now)
                    return
            if actions & PIPE_START and not session.done:
                self._start_pipe(now)
            if actions & CLOSE:
                self._finish()
                return
        if session.done:
            self._finish()
            return
        self._watch()
        self.server.reactor.arm(self)

    def _connect(self, now: float) -> None:
        session = self.session
        address = session.target
        assert address is not None
        assert self.back is None
        dial = start_connect(address)
        if dial is None:
            session.back_connect_failed(now)
            return
        sock, in_progress = dial
        self.back = sock
        self.back_fd = sock.fileno()
        self.server.reactor.register(self.back_fd, OUT, self.on_back_event, self)
        if in_progress:
            self.connecting = True
        else:
            session.back_connected(now)

    def _start_pipe(self, now: float) -> None:
        back = self.back
        assert back is not None
        session = self.session
        pipes = self.server.pipes
        self.up = Direction(self.sock, back, pipes)
        self.down = Direction(back, self.sock, pipes)
        if session.to_back:
            self.up.queue(bytes(session.to_back))
            session.to_back.clear()
            try:
                self.up.flush()
            except OSError:
                session.error(now)

    def _drop_back(self) -> None:
        back = self.back
        if back is not None:
            self.server.reactor.close(back)
            self.back, self.back_fd = None, -1
            self.connecting = False

    def _watch(self) -> None:
        reactor = self.server.reactor
        up, down = self.up, self.down
        if up is None or down is None:
            reactor.modify(self.fd, IN if self.session.wants_front_read() else 0)
            if self.back is not None:
                reactor.modify(self.back_fd, OUT if self.connecting else 0)
            return
        mask = IN if up.wants_read() else 0
        if down.blocked:
            mask |= OUT
        reactor.modify(self.fd, mask)
        back_mask = IN if down.wants_read() else 0
        if up.blocked:
            back_mask |= OUT
        reactor.modify(self.back_fd, back_mask)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        for direction in (self.up, self.down):
            if direction is not None:
                direction.close()
        self._drop_back()
        server = self.server
        now = server.reactor.now()
        if not self.session.done:
            self.session.error(now)  # the worker stops, or an internal error
        # The bound handlers refer back to this connection: without them it is freed at once
        # by reference counting, not later by a full collection.
        self.on_front_event = self.on_back_event = _ended
        server.reactor.close(self.sock)
        server.connection_closed(self, now - self.started)


def _ended(_mask: int) -> None:
    """The handler of a finished connection (never registered: the loop let go of it)."""


__all__ = ["PIPE", "TcpConnection"]
