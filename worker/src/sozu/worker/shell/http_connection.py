"""One HTTP/1.1 client connection on the readiness loop: the shell around `Http1Session`.

The core decides everything; this moves bytes and carries out its actions. On each readiness
event of the client or backend socket it reads once (a TLS socket: until the SSL object has
nothing buffered) and feeds the core. Once the loop has handled the whole batch of ready events
(`Reactor.soon`), `settle` sends what the core queued (as much as the sockets take, reporting
progress with `sent`), carries out the action bits (pool, close, connect: a pooled connection
is handed back at once, a dial completes on writability), and watches each socket for exactly
what the core wants (back pressure: a side is read only while the core says so). The
connection's timer is the core's `deadline`, or the end of a lingering close.

Why sends wait for the end of the batch: a send to a peer asleep in its own poll wakes it,
and on loopback that wake-up is the most expensive part of a send. Sent one by one between
the handlers of a batch, every response wakes the client and every request the backend; sent
together after the batch, a peer wakes once and finds several ready. Under light load a batch
is one event and nothing waits; under load the wait is bounded by the loop (at most MAX_EVENTS
handlers, and at most FLUSH_AFTER since the sends last went out).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import socket
import ssl
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from sozu.worker.core.h2.opening import H2C, REFUSAL, REFUSE, opening
from sozu.worker.core.http1.actions import (
    CLOSE_BACK,
    CLOSE_FRONT,
    CONNECT,
    LINGER_FRONT,
    RELEASE_BACK,
    SHUTDOWN_BACK,
    SHUTDOWN_FRONT,
)
from sozu.worker.core.http1.session import Http1Session
from sozu.worker.core.http1.states import READ_BACK, READ_FRONT
from sozu.worker.shell.connect import start_connect
from sozu.worker.shell.front_connection import LINGER, READ_SIZE, FrontConnection
from sozu.worker.shell.reactor import ERR, IN, OUT, Handler
from sozu.worker.shell.tls_socket import TlsSocket

if TYPE_CHECKING:
    from sozu.worker.core.h2.upstream_stream import UpstreamStream
    from sozu.worker.shell.h2_upstream import UpstreamConnection
    from sozu.worker.shell.http_listener import HttpServer

# Bounds the actions a single settle carries out (a pooled connection found stale asks for
# another at once, and so on): a core that kept asking would be a bug.
MAX_ROUNDS = 16


class HttpConnection(FrontConnection):
    """A client connection (plain or TLS) and the backend connection it currently uses."""

    __slots__ = (
        "armed",
        "back",
        "back_address",
        "back_fd",
        "back_mask",
        "channel",
        "channel_waiting",
        "connecting",
        "fd",
        "finished",
        "front_mask",
        "linger_asked",
        "linger_until",
        "lingering",
        "notified",
        "on_back_event",
        "on_front_event",
        "read_front",
        "server",
        "session",
        "shut_back",
        "shut_front",
        "sock",
        "soon_queued",
        "tls",
        "upstream",
        "write_front",
    )

    session: Http1Session

    def __init__(self, server: HttpServer, sock: socket.socket, session: Http1Session) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = isinstance(sock, TlsSocket)
        # A TLS socket is read and written through its SSL object directly: the same calls
        # as TlsSocket.recv and send, without their Python frame each.
        tls_object = sock._sslobj if isinstance(sock, TlsSocket) else None
        self.read_front: Callable[[int], bytes] = (
            sock.recv if tls_object is None else tls_object.read
        )
        self.write_front: Callable[[bytearray], int] = (
            sock.send if tls_object is None else tls_object.write
        )
        self.session = session
        self.back: socket.socket | None = None
        self.back_fd = -1
        self.back_address: tuple[str, int] | None = None
        # Instead of `back`, for a cluster that speaks HTTP/2: a stream on a shared backend
        # connection (h2_upstream.py), waiting while that connection is being dialled.
        self.channel: UpstreamStream | None = None
        self.upstream: UpstreamConnection | None = None
        self.channel_waiting = False
        # What each fd is watched for (the loop's registration, kept here to skip its lookup).
        self.front_mask = IN
        self.back_mask = 0
        self.connecting = False
        self.armed = math.inf
        self.lingering = False
        self.linger_asked = False
        self.linger_until = math.inf
        self.notified = False  # the TLS close_notify went out
        self.shut_back = False
        self.shut_front = False
        self.finished = False
        self.soon_queued = False  # waiting for the end of the batch (Reactor.soon)
        # Bound once: the loop calls these for every event.
        self.on_front_event: Handler = self.on_front
        self.on_back_event: Handler = self.on_back

    # -- events

    def on_front(self, mask: int) -> None:
        reactor = self.server.reactor
        now = reactor.now()
        if self.lingering:
            self._linger_read()
            return
        session = self.session
        if mask & OUT and session.to_front:
            self._flush_front(now)
        if mask & (IN | ERR):
            self._read_front(now)
        self.server.reactor.soon(self)

    def _read_front(self, now: float) -> None:
        session = self.session
        sock = self.sock
        try:
            data = self.read_front(READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        except OSError:
            session.front_error(now)
            return
        if not data:
            if session.wants_front_read():
                session.front_eof(now)
            else:
                session.front_error(now)  # hung up while we were not reading
            return
        if not session.bytes_in and not session.fbuf:  # no request yet: it may be HTTP/2
            first = opening(data, tls=self.tls)
            if first == H2C:
                self._become_h2(data, now)
                return
            if first == REFUSE:
                self._refuse_h2()
                return
        if self.tls:
            # Records already decrypted inside the SSL object make no readiness event.
            assert isinstance(sock, TlsSocket)
            pending = sock._sslobj.pending
            while pending():
                try:
                    data += self.read_front(READ_SIZE)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
        session.front_data(data, now)

    def _become_h2(self, data: bytes, now: float) -> None:
        """Hand the socket to an HTTP/2 connection, with the bytes read (the preface first);
        this connection ends without a word and without counting as closed."""
        server = self.server
        server.reactor.unregister(self.fd)
        self.finished = True
        self.on_front_event = self.on_back_event = _ended
        server.connections.discard(self)
        self.session.done = True
        server.start_h2c(self.session.ctx, self.sock, self.session.peer, data, now)

    def _refuse_h2(self) -> None:
        """HTTP/2 over TLS without having negotiated it (core/h2/opening.py): the refusal
        goes out, then the connection closes."""
        self.session.counters.h2_without_alpn += 1
        with contextlib.suppress(OSError, ssl.SSLError):
            self.sock.send(REFUSAL)
        self._finish()

    def on_back(self, mask: int) -> None:
        now = self.server.reactor.now()
        session = self.session
        back = self.back
        assert back is not None
        if self.connecting:
            code = back.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self.connecting = False
            # A result the session no longer awaits (its client left earlier in the batch)
            # changes nothing there; the close it queued drops this socket in the settle.
            if code:
                self._drop_back()
                session.back_connect_failed(now)
            else:
                session.back_connected(now, False)
            self.server.reactor.soon(self)
            return
        if mask & OUT and session.to_back:
            self._flush_back(now)
        if mask & (IN | ERR):
            try:
                data = back.recv(READ_SIZE)
            except BlockingIOError:
                data = None
            except OSError:
                self._drop_back()
                session.back_error(now)
                data = None
            else:
                if data:
                    session.back_data(data, now)
                else:
                    self._drop_back()
                    session.back_eof(now)
        self.server.reactor.soon(self)

    # -- carrying out what the core asks

    def flush_soon(self) -> None:
        """The batch of events is handled: settle (nothing left to do once finished)."""
        if not self.finished:
            self.settle(self.server.reactor.now())

    def settle(self, now: float) -> None:
        """Send, act, watch: once the inputs of a batch are in (`flush_soon`), and after a
        start, a timer or a drain."""
        session = self.session
        rounds = 0
        while True:
            if session.to_back:
                if self.back is not None:
                    if not self.connecting:
                        self._flush_back(now)
                elif self.channel is not None:
                    self._flush_channel(now)
            if session.to_front:
                self._flush_front(now)
            actions = session.actions
            if not actions:
                channel = self.channel
                if channel is not None and channel.news and self._pump_channel(channel, now):
                    continue
                break
            session.actions = 0
            self._act(actions, now)
            rounds += 1
            if rounds == MAX_ROUNDS:
                raise RuntimeError(f"the session kept asking for actions: {session.actions}")
        if session.done:
            self._close_front()
            return
        if self.shut_back or self.shut_front:
            self._half_close()
        self._watch()
        if session.deadline < self.armed and not self.lingering:
            self.server.reactor.arm(self)

    def _half_close(self) -> None:
        """Tunnel half-closes, once everything before them was delivered."""
        session = self.session
        if self.shut_back and self.back is not None and not session.to_back:
            with contextlib.suppress(OSError):
                self.back.shutdown(socket.SHUT_WR)
            self.shut_back = False
        if self.shut_front and not session.to_front:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self.sock, socket.SHUT_WR)
            self.shut_front = False

    def _act(self, actions: int, now: float) -> None:
        session = self.session
        server = self.server
        if actions & RELEASE_BACK and self.channel is not None:
            self._let_channel_go(now)
        elif actions & RELEASE_BACK:
            back, address = self.back, self.back_address
            assert back is not None
            assert address is not None
            assert not session.to_back
            self.back, self.back_fd, self.back_address = None, -1, None
            server.pool.give(address, back, now)
        if actions & CLOSE_BACK:
            self._drop_back()
        if actions & CONNECT:
            self._connect(now)
        if actions & SHUTDOWN_BACK:
            self.shut_back = True
        if actions & SHUTDOWN_FRONT:
            self.shut_front = True
        if actions & LINGER_FRONT:
            self.linger_asked = True
        # CLOSE_FRONT: the core sets `done` once to_front is flushed; _close_front closes then.
        assert actions & (CLOSE_FRONT | LINGER_FRONT) != (CLOSE_FRONT | LINGER_FRONT)

    def _connect(self, now: float) -> None:
        session = self.session
        target = session.target
        assert target is not None
        assert self.back is None
        if target.h2:
            self._connect_h2(now)
            return
        server = self.server
        address = target.address
        if target.allow_pooled:
            pooled = server.pool.take(address, now, verify=target.verify)
            if pooled is not None:
                self._attach(pooled, address, registered=True)
                session.back_connected(now, True)
                return
        dial = start_connect(address)
        if dial is None:
            session.back_connect_failed(now)
            return
        sock, in_progress = dial
        self._attach(sock, address)
        if in_progress:
            self.connecting = True
        else:
            session.back_connected(now, False)

    def _attach(
        self, sock: socket.socket, address: tuple[str, int], *, registered: bool = False
    ) -> None:
        self.back = sock
        self.back_fd = sock.fileno()
        self.back_address = address
        self.shut_back = False
        if registered:
            # Pooled connections are watched for IN (idle_pool).
            self.server.reactor.rebind(self.back_fd, self.on_back_event, self)
            self.back_mask = IN
        else:
            self.server.reactor.register(self.back_fd, OUT, self.on_back_event, self)
            self.back_mask = OUT

    def _drop_back(self) -> None:
        if self.channel is not None:
            self._let_channel_go(self.server.reactor.now())
        back = self.back
        if back is not None:
            self.server.pool.closed(self.back_fd)
            self.server.reactor.close(back)
            self.back, self.back_fd, self.back_address = None, -1, None
            self.connecting = False

    # -- a stream on an HTTP/2 backend connection

    def _connect_h2(self, now: float) -> None:
        session = self.session
        target = session.target
        assert target is not None
        got = self.server.upstreams.stream(
            self,
            target.address,
            now,
            fresh=not target.allow_pooled,
            connect_timeout=session.ctx.connect_timeout,
        )
        if got is None:
            session.back_connect_failed(now)
            return
        self.upstream, self.channel, reused = got
        if self.upstream.core.ready:
            session.back_connected(now, reused)
        else:
            self.channel_waiting = True

    def _pump_channel(self, channel: UpstreamStream, now: float) -> bool:
        """The stream's news for the session: the dial's outcome, response bytes (while it
        reads), its failure or end. False when nothing could be delivered now."""
        session = self.session
        upstream = self.upstream
        assert upstream is not None
        if self.channel_waiting:
            if upstream.core.ready and not channel.failed:
                self.channel_waiting = False
                session.back_connected(now, False)
                return True
            if channel.failed:
                self._let_channel_go(now)
                session.back_connect_failed(now)
                return True
            channel.news = False
            return False
        if channel.inbox:
            if not session.wants_back_read():
                return False
            session.back_data(upstream.take(channel, now), now)
            return True
        if channel.failed or channel.ended:
            refused = channel.refused
            failed = channel.failed
            self._let_channel_go(now)
            if refused:
                session.back_refused(now)
            elif failed:
                session.back_error(now)
            else:
                session.back_eof(now)
            return True
        channel.news = False
        return False

    def _flush_channel(self, now: float) -> None:
        if self.channel_waiting:
            return
        session = self.session
        upstream, channel = self.upstream, self.channel
        assert upstream is not None
        assert channel is not None
        taken = upstream.write(channel, session.to_back, now)
        if taken:
            del session.to_back[:taken]
            session.sent(now)

    def _let_channel_go(self, now: float) -> None:
        upstream, channel = self.upstream, self.channel
        assert upstream is not None
        assert channel is not None
        self.channel = self.upstream = None
        self.channel_waiting = False
        upstream.release(channel, now)

    # -- sending

    def _flush_front(self, now: float) -> None:
        session = self.session
        buffer = session.to_front
        try:
            sent = self.write_front(buffer)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except OSError:
            session.front_error(now)
            return
        if sent:
            del buffer[:sent]
            session.sent(now)

    def _flush_back(self, now: float) -> None:
        session = self.session
        buffer = session.to_back
        back = self.back
        assert back is not None
        try:
            sent = back.send(buffer)
        except BlockingIOError:
            return
        except OSError:
            self._drop_back()
            session.back_error(now)
            return
        if sent:
            del buffer[:sent]
            session.sent(now)

    def _watch(self) -> None:
        """Watch each fd for what the core wants now (a modify only when that changed).
        A `StreamLink` (h2_connection.py) watches its backend connection only."""
        session = self.session
        reads = session.reads()
        mask = IN if reads & READ_FRONT else 0
        if session.to_front:
            mask |= OUT
        if mask != self.front_mask:
            self.front_mask = mask
            self.server.reactor.modify(self.fd, mask)
        if self.back is not None:
            if self.connecting:
                back_mask = OUT
            else:
                back_mask = IN if reads & READ_BACK else 0
                if session.to_back:
                    back_mask |= OUT
            if back_mask != self.back_mask:
                self.back_mask = back_mask
                self.server.reactor.modify(self.back_fd, back_mask)

    # -- the end

    def _close_front(self) -> None:
        """The core is done: close the backend connection and the client's, lingering when
        the last response said close (shut the write side, discard input up to LINGER s), or
        when client bytes wait unread (a close then resets the connection, and the tail of
        the response still being sent is lost: a stray CRLF after a request body is enough)."""
        self._drop_back()
        if (self.linger_asked or _unread_input(self.fd)) and not self.finished:
            if self.tls:
                self.notified = True
                _close_notify(self.sock)
            try:
                socket.socket.shutdown(self.sock, socket.SHUT_WR)
            except OSError:
                self._finish()
                return
            self.lingering = True
            reactor = self.server.reactor
            self.linger_until = reactor.now() + LINGER
            reactor.modify(self.fd, IN)
            self.front_mask = IN
            reactor.arm(self)
            return
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._drop_back()
        server = self.server
        # The bound handlers refer back to this connection: without them it is freed at once
        # by reference counting, not later by a full collection.
        self.on_front_event = self.on_back_event = _ended
        if self.tls and not self.notified:
            self.notified = True
            _close_notify(self.sock)
        server.reactor.close(self.sock)
        if not self.session.done:
            self.session.abort(server.reactor.now())
        server.connection_closed(self)


_NO_BYTES: Final = bytes(4)  # FIONREAD's int, zero


def _unread_input(fd: int) -> bool:
    """Whether the kernel holds bytes of `fd` nobody read (FIONREAD)."""
    try:
        waiting = fcntl.ioctl(fd, termios.FIONREAD, _NO_BYTES)
    except (OSError, ValueError):
        return False
    return waiting != _NO_BYTES


def _close_notify(sock: socket.socket) -> None:
    """Send the TLS close_notify (the first unwrap call writes it; its answer is not waited
    for): a TLS frontend closes with close_notify and a write-side shutdown only, a full
    shutdown would reset the tail of the response."""
    assert isinstance(sock, TlsSocket)
    with contextlib.suppress(ssl.SSLError, OSError, ValueError):
        sock.unwrap()


def _ended(_mask: int) -> None:
    """The handler of a finished connection (never registered: the loop let go of it)."""
