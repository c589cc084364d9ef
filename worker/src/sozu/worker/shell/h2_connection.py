"""One HTTP/2 client connection on the readiness loop: the shell around `H2Session`, and
around each request stream's `Http1Session` core (a `StreamLink`: an HttpConnection whose
client side is the h2 stream instead of a socket).

The client socket is read and written here; the h2 core turns frames into stream cores
(`opened`), which run with their backend connections exactly like HTTP/1.1 connections, and
takes back the HTTP/1.1 responses they queue (`response_data`). A stream core ends when its
response is sent or the core cancels it; the connection ends when the core is `done` and its
last bytes are flushed.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
from typing import TYPE_CHECKING

from sozu.worker.core.h2.session import H2Session
from sozu.worker.core.http1.session import Http1Session
from sozu.worker.shell.front_connection import LINGER, READ_SIZE, FrontConnection
from sozu.worker.shell.http_connection import HttpConnection, _close_notify, _ended
from sozu.worker.shell.reactor import ERR, IN, OUT, Handler
from sozu.worker.shell.tls_socket import TlsSocket

if TYPE_CHECKING:
    from sozu.worker.shell.http_listener import HttpServer

# A stream's timer goes on the loop's heap only once its deadline comes before its
# connection's next sweep; the connection sweeps its streams every SWEEP s while it has any
# (one timer for all of them). Most streams end long before a timeout could fire: they never
# touch the heap, whose entries each cost a push, and a pass when compacted once disarmed.
SWEEP = 1.0


class StreamLink(HttpConnection):
    """A request stream's HTTP/1.1 core and its backend connection; what the core queues for
    its client goes to the h2 core."""

    __slots__ = ("front", "stream_id")

    def __init__(self, front: H2FrontConnection, stream_id: int, session: Http1Session) -> None:
        self.front = front
        self.stream_id = stream_id
        # The client socket belongs to the h2 connection: this link has none of its own.
        super().__init__(front.server, front.sock, session)
        self.fd = -1
        self.tls = False
        self.front_mask = 0

    def begin(self, now: float, *, registered: bool = False) -> None:
        assert not registered, "a stream link has no fd of its own"
        self.settle(now)

    def deadline(self) -> float:
        deadline = super().deadline()
        # Not before the next sweep: the sweep arms it (see SWEEP).
        return math.inf if deadline >= self.front.sweep_at else deadline

    def settle(self, now: float) -> None:
        super().settle(now)
        if not self.finished and self.front.session.stream_finished(self.stream_id):
            self._finish()
        front = self.front
        if not front.soon_queued:
            front.server.reactor.soon(front)

    def _flush_front(self, now: float) -> None:
        session = self.session
        to_front = session.to_front
        # What the h2 stream has room for; the core keeps the rest and stops reading its
        # backend (back pressure) until the stream resumes.
        room = self.front.session.stream_room(self.stream_id, len(to_front))
        if not room:
            return
        if room < len(to_front):
            data = bytes(to_front[:room])
            del to_front[:room]
        else:
            data = bytes(to_front)
            to_front.clear()
        session.sent(now)
        self.front.session.response_data(self.stream_id, data, now)

    def _watch(self) -> None:
        if self.back is None:
            return
        session = self.session
        if self.connecting:
            back_mask = OUT
        else:
            back_mask = IN if session.wants_back_read() else 0
            if session.to_back:
                back_mask |= OUT
        if back_mask != self.back_mask:
            self.back_mask = back_mask
            self.server.reactor.modify(self.back_fd, back_mask)

    def _close_front(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._drop_back()
        self.on_front_event = self.on_back_event = _ended
        reactor = self.server.reactor
        # No fd of its own whose unregistering would disarm it: its timer entry would hold
        # the link and its core until the deadline passed.
        reactor.disarm(self)
        now = reactor.now()
        if not self.session.done:
            self.session.abort(now)
        # A response that said close asked for a lingering close: it was complete (for a
        # body delimited by the backend's close, this is its end).
        self.front.link_closed(self, now, complete=self.linger_asked)


class H2FrontConnection(FrontConnection):
    """A TLS client connection that negotiated h2, and its streams' links."""

    __slots__ = (
        "armed",
        "fd",
        "finished",
        "linger_until",
        "lingering",
        "links",
        "on_front_event",
        "server",
        "session",
        "sock",
        "soon_queued",
        "sweep_at",
        "tls",
    )

    session: H2Session

    def __init__(self, server: HttpServer, sock: socket.socket, session: H2Session) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.session = session
        self.links: dict[int, StreamLink] = {}
        self.armed = math.inf
        self.finished = False
        # After the last frames (a GOAWAY): the write side is shut and input is discarded
        # for up to LINGER s, so that a close with unread input cannot reset what was sent.
        self.lingering = False
        self.linger_until = math.inf
        self.on_front_event: Handler = self.on_front
        self.soon_queued = False
        self.tls = isinstance(sock, TlsSocket)  # else h2c, with prior knowledge
        self.sweep_at = math.inf  # the next look at the links' deadlines (SWEEP)

    # -- events

    def on_front(self, mask: int) -> None:
        now = self.server.reactor.now()
        if self.lingering:
            self._linger_read()
            return
        session = self.session
        if mask & OUT and session.to_front:
            self._flush(now)
        if mask & (IN | ERR):
            self._read(now)
        self.settle(now)

    def _read(self, now: float) -> None:
        sock = self.sock
        session = self.session
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        except OSError:
            data = b""
        if not data:
            session.front_eof(now)
            return
        while isinstance(sock, TlsSocket) and sock.pending():
            try:
                data += sock.recv(READ_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
        session.front_data(data, now)

    def link_closed(self, link: StreamLink, now: float, *, complete: bool = False) -> None:
        if self.links.get(link.stream_id) is link:
            del self.links[link.stream_id]
            self.session.stream_closed(link.stream_id, now, complete=complete)

    def settle(self, now: float) -> None:
        """Start the streams the core opened, end those it cancelled, send, watch."""
        session = self.session
        while session.opened or session.cancelled:
            opened, session.opened = session.opened, []
            cancelled, session.cancelled = session.cancelled, []
            if opened and self.sweep_at == math.inf:
                self.sweep_at = now + SWEEP
            # A stream reset in the read that opened it is never started (no backend dial).
            reset = set(cancelled) if opened and cancelled else ()
            for stream_id, inner in opened:
                link = StreamLink(self, stream_id, inner)
                self.links[stream_id] = link
                if stream_id not in reset:
                    link.begin(now)
            for stream_id in cancelled:
                found = self.links.get(stream_id)
                if found is not None:
                    found.close()
        # Stream cores fed by this call (request bodies) queue backend bytes: send them.
        fed, session.fed = session.fed, []
        for stream_id in dict.fromkeys(fed):  # once each, however many DATA frames it got
            found = self.links.get(stream_id)
            if found is not None:
                found.settle(now)
        self.send(now)

    def flush_soon(self) -> None:
        """After the batch in which streams queued responses: one send for all of them."""
        self.send(self.server.reactor.now())

    def send(self, now: float) -> None:
        """Flush what the core queued and watch the socket for what it wants (after any
        input of the core, from this connection or one of its links)."""
        session = self.session
        if self.finished:
            return
        while session.cancelled:
            cancelled, session.cancelled = session.cancelled, []
            for stream_id in cancelled:
                found = self.links.get(stream_id)
                if found is not None:
                    found.close()
        if session.to_front:
            self._flush(now)
        if session.paused:
            # Streams held back (a shut window, or this socket not read): on once there is room.
            for stream_id in session.take_resumed():
                found = self.links.get(stream_id)
                if found is not None:
                    found.settle(now)
        if session.done and not session.to_front:
            self._linger()
            return
        mask = IN if not session.done else 0
        if session.to_front:
            mask |= OUT
        self.server.reactor.modify(self.fd, mask or IN)
        if self.deadline() < self.armed:
            self.server.reactor.arm(self)

    # -- the loop's Timed protocol: the core's deadline, or the next sweep of the links

    def deadline(self) -> float:
        deadline = super().deadline()
        if self.sweep_at < deadline and not self.finished:
            return self.sweep_at
        return deadline

    def expire(self, now: float) -> None:
        if self.sweep_at <= now:
            self.sweep_at = now + SWEEP if self.links else math.inf
            reactor = self.server.reactor
            for link in self.links.values():
                reactor.arm(link)  # those due before the next sweep
            if super().deadline() > now:
                return  # only the sweep was due (the loop arms the next one)
        super().expire(now)

    def _flush(self, now: float) -> None:
        buffer = self.session.to_front
        if not buffer:
            return
        try:
            sent = self.sock.send(buffer)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except OSError:
            buffer.clear()
            self.session.front_eof(now)
            return
        del buffer[:sent]

    def _linger(self) -> None:
        """The core is done and its last bytes are sent: close_notify, shut the write side,
        discard input until the client closes or LINGER s pass."""
        for link in list(self.links.values()):
            link.close()
        self.links.clear()
        if self.tls:
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
        reactor.arm(self)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        for link in list(self.links.values()):
            link.close()
        self.links.clear()
        self.server.reactor.unregister(self.fd)
        self.on_front_event = _ended
        if not self.lingering and self.tls:
            _close_notify(self.sock)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.session.done = True
        self.session.ended()
        self.server.connection_closed(self)
