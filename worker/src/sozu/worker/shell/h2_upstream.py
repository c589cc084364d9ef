"""HTTP/2 backend connections on the readiness loop: the shell around `H2Upstream`, and the
worker's pool of them.

A session whose cluster has `http2 = true` asks the pool for a stream to a backend address:
the pool attaches it to the open connection with the fewest streams that still takes one, or
dials a new connection. The connection moves bytes between its socket and its core, and
hands each touched stream to the client connection using it (`HttpConnection.settle`, which
delivers the stream's response bytes to its session core). A connection closes when its core
is done (backend gone, GOAWAY once idle, idle timeout, dial failure).
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from typing import TYPE_CHECKING

from sozu.worker.core.balancing.backend import Address
from sozu.worker.core.h2.upstream import H2Upstream
from sozu.worker.core.h2.upstream_stream import UpstreamStream
from sozu.worker.shell.connect import start_connect
from sozu.worker.shell.front_connection import READ_SIZE
from sozu.worker.shell.reactor import ERR, IN, OUT, Reactor

if TYPE_CHECKING:
    from sozu.worker.shell.http_connection import HttpConnection

log = logging.getLogger("sozu.worker.h2")


class UpstreamConnection:
    """One h2c connection to a backend and the client connections whose streams it carries."""

    __slots__ = (
        "address",
        "armed",
        "busy",
        "connect_until",
        "connecting",
        "core",
        "fd",
        "links",
        "mask",
        "pool",
        "sock",
        "soon_queued",
    )

    def __init__(self, pool: UpstreamPool, address: Address, sock: socket.socket) -> None:
        self.pool = pool
        self.address = address
        self.sock = sock
        self.fd = sock.fileno()
        self.core = H2Upstream()
        self.links: dict[UpstreamStream, HttpConnection] = {}
        self.armed = math.inf
        self.connecting = True
        self.connect_until = math.inf
        self.mask = OUT
        self.busy = False
        self.soon_queued = False

    # -- the pool's calls

    def attach(self, link: HttpConnection) -> UpstreamStream:
        stream = self.core.attach()
        self.links[stream] = link
        self.pool.streams += 1
        return stream

    def write(self, stream: UpstreamStream, data: bytearray, now: float) -> int:
        taken = self.core.write(stream, data, now)
        self._kick(now)
        return taken

    def take(self, stream: UpstreamStream, now: float) -> bytes:
        data = self.core.take(stream)
        self._kick(now)
        return data

    def release(self, stream: UpstreamStream, now: float) -> None:
        if self.links.pop(stream, None) is None:
            return
        if not self.core.done:
            self.core.release(stream, now)
            self._kick(now)

    # -- loop events

    def on_event(self, mask: int) -> None:
        reactor = self.pool.reactor
        now = reactor.now()
        core = self.core
        if self.connecting:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self.connecting = False
            self.connect_until = math.inf
            if code:
                self.pool.connect_failures += 1
                core.connect_failed()
            else:
                core.connected(now)
            self._deliver(now)
            return
        if mask & OUT:
            self._flush()
        if mask & (IN | ERR) and not core.done:
            try:
                data = self.sock.recv(READ_SIZE)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data:
                core.back_data(data, now)
            elif data is not None:
                core.back_eof()
        self._deliver(now)

    def deadline(self) -> float:
        return min(self.core.deadline, self.connect_until)

    def expire(self, now: float) -> None:
        if now >= self.connect_until:
            self.connecting = False
            self.connect_until = math.inf
            self.pool.connect_failures += 1
            self.core.connect_failed()
        else:
            self.core.on_timer(now)
        self._deliver(now)

    def abort(self, error: BaseException) -> None:
        """A handler raised while this connection delivered: it ends, and so do the client
        connections that used it."""
        self.core.close()
        links = list(self.links.values())
        self.links.clear()
        self._close()
        for link in links:
            link.close()

    # -- moving bytes

    def _kick(self, now: float) -> None:
        """After a call from a client connection: send, watch. Streams touched meanwhile
        (the connection failed while sending) hear of it once the loop's batch is done, not
        from inside the caller's own handling."""
        if self.busy:
            return
        self._flush()
        if self.core.done or self.core.touched:
            self.pool.reactor.soon(self)
        else:
            self._watch()

    def flush_soon(self) -> None:
        if self.fd >= 0:
            self._deliver(self.pool.reactor.now())

    def _deliver(self, now: float) -> None:
        """Send, hand each touched stream to its client connection, watch or close."""
        if self.busy:
            return
        self.busy = True
        core = self.core
        try:
            self._flush()
            rounds = 0
            while core.touched:
                touched, core.touched = core.touched, []
                for stream in dict.fromkeys(touched):
                    link = self.links.get(stream)
                    if link is not None:
                        link.settle(now)
                self._flush()
                rounds += 1
                assert rounds < 1000, "streams kept touching each other"
        finally:
            self.busy = False
        if core.done:
            self._close()
        else:
            self._watch()

    def _flush(self) -> None:
        buffer = self.core.to_back
        if not buffer or self.connecting:
            return
        try:
            sent = self.sock.send(buffer)
        except BlockingIOError:
            return
        except OSError:
            buffer.clear()
            self.core.back_eof()
            return
        del buffer[:sent]

    def _watch(self) -> None:
        mask = OUT if self.connecting or self.core.to_back else 0
        if not self.connecting:
            mask |= IN
        if mask != self.mask:
            self.mask = mask
            self.pool.reactor.modify(self.fd, mask)
        if self.deadline() < self.armed:
            self.pool.reactor.arm(self)

    def _close(self) -> None:
        if self.fd < 0:
            return
        self.pool.reactor.unregister(self.fd)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.fd = -1
        self.pool.gone(self)


class UpstreamPool:
    """The worker's h2c backend connections, by backend address."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.by_address: dict[Address, list[UpstreamConnection]] = {}
        # Plain counts for the metrics snapshot.
        self.opened = 0
        self.streams = 0
        self.connect_failures = 0
        self.goaways = 0  # connections that ended after the backend's GOAWAY
        self.retired = 0  # connections retired before their stream ids ran out

    def __len__(self) -> int:
        return sum(len(found) for found in self.by_address.values())

    def active_streams(self) -> int:
        return sum(c.core.load for found in self.by_address.values() for c in found)

    def stream(
        self,
        link: HttpConnection,
        address: Address,
        now: float,
        *,
        fresh: bool,
        connect_timeout: float,
    ) -> tuple[UpstreamConnection, UpstreamStream, bool] | None:
        """A stream to `address` for `link`: on the open connection with the fewest streams
        (unless `fresh`: a new one), or on a new connection; None when the dial fails at once.
        The flag says whether the connection was already in use (it may turn out stale)."""
        best: UpstreamConnection | None = None
        if not fresh:
            for found in self.by_address.get(address, ()):
                core = found.core
                if core.usable and (best is None or core.load < best.core.load):
                    best = found
        if best is None:
            best = self._dial(address, now, connect_timeout)
            if best is None:
                return None
        reused = best.core.ready and best.core.streams_opened > 0
        return best, best.attach(link), reused

    def _dial(self, address: Address, now: float, timeout: float) -> UpstreamConnection | None:
        dial = start_connect(address)
        if dial is None:
            self.connect_failures += 1
            return None
        connection = UpstreamConnection(self, address, dial[0])  # done once writable
        connection.connect_until = now + timeout
        self.reactor.register(connection.fd, OUT, connection.on_event, connection)
        self.reactor.arm(connection)
        self.by_address.setdefault(address, []).append(connection)
        self.opened += 1
        return connection

    def gone(self, connection: UpstreamConnection) -> None:
        core = connection.core
        self.goaways += core.going_away
        self.retired += core.retired
        found = self.by_address.get(connection.address)
        if found is not None and connection in found:
            found.remove(connection)
            if not found:
                del self.by_address[connection.address]

    def close(self) -> None:
        for found in list(self.by_address.values()):
            for connection in list(found):
                connection.core.close()
                connection.links.clear()
                connection._close()
        self.by_address.clear()

    def check_invariants(self) -> None:
        for address, found in self.by_address.items():
            assert found, address
            for connection in found:
                assert connection.address == address
                assert connection.fd >= 0
                assert set(connection.links) <= connection.core.attached
                connection.core.check_invariants()
