"""HTTP and HTTPS listeners on the readiness loop: TLS handshakes, then session cores.

`HttpServer` is the worker's HTTP side on the loop: its listeners (by address), the idle
backend pool and the connections it serves. An HTTPS connection first goes through its
handshake, driven by readiness events and bounded by the listener's front timeout; a
plain one starts its `Http1Session` at once. On an `expect_proxy` listener both first read
their PROXY v2 header (`ProxyHeaderRead`), whose source address is then the client's.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl

from sozu.worker.core.h2.session import H2Session
from sozu.worker.core.http1.context import ListenerContext
from sozu.worker.core.http1.session import Http1Session
from sozu.worker.core.proxy_protocol import (
    TRANSPORT_STREAM,
    ProxyProtocolError,
    read_v2,
)
from sozu.worker.shell.accepting import Acceptor, LoopListener
from sozu.worker.shell.h2_connection import H2FrontConnection
from sozu.worker.shell.h2_upstream import UpstreamPool
from sozu.worker.shell.http_connection import HttpConnection
from sozu.worker.shell.idle_pool import IdlePool
from sozu.worker.shell.reactor import IN, OUT
from sozu.worker.shell.tls_contexts import ListenerTls, served_certificate
from sozu.worker.shell.tls_socket import TlsSocket

log = logging.getLogger("sozu.worker.http")


class HttpListener(LoopListener):
    """One HTTP or HTTPS listener: its context (what its sessions read) and TLS settings."""

    def __init__(
        self,
        server: HttpServer,
        address: str,
        context: ListenerContext,
        tls: ListenerTls | None,
    ) -> None:
        super().__init__(server.acceptor, address)
        self.server = server
        self.context = context
        self.tls = tls
        self.disable_http11 = False

    def accepted(self, client: socket.socket, peer: tuple[str, int]) -> None:
        counters = self.context.counters
        counters.accepted += 1
        counters.active += 1
        if self.context.config.expect_proxy:
            ProxyHeaderRead(self, client, peer).begin()
        else:
            self.proceed(client, peer)

    def proceed(self, client: socket.socket, peer: tuple[str, int]) -> None:
        """The connection's client is known: its TLS handshake, or its session."""
        if self.tls is None:
            self.server.start_session(self, client, peer)
        else:
            TlsHandshake(self, client, peer).begin()


class _Opening:
    """A connection before its session: waiting for its PROXY header or its TLS handshake,
    bounded by the listener's front timeout. It owns its fd on the loop until it hands the
    socket on (`_handed_over`; a handshake's session rebinds the fd instead) or ends (`_fail`);
    letting go of its fd disarms its timer."""

    __slots__ = ("armed", "fd", "listener", "peer", "sock", "until")

    def __init__(self, listener: HttpListener, sock: socket.socket, peer: tuple[str, int]):
        self.listener = listener
        self.sock = sock
        self.peer = peer
        self.fd = sock.fileno()
        self.armed = math.inf
        self.until = math.inf

    def deadline(self) -> float:
        return self.until

    def expire(self, now: float) -> None:
        self._fail()

    def abort(self, error: BaseException) -> None:
        self._fail()

    def _handed_over(self) -> None:
        self.listener.server.reactor.unregister(self.fd)
        self.until = math.inf

    def _fail(self) -> None:
        server = self.listener.server
        self.until = math.inf
        server.reactor.close(self.sock)
        self.listener.context.counters.active -= 1
        server.acceptor.released()


class ProxyHeaderRead(_Opening):
    """A connection of an `expect_proxy` listener until its PROXY v2 header is read (bounded
    by the front timeout). Exactly the header's bytes are read, what follows stays in the
    socket for the TLS handshake or the session; the header's source becomes the client's
    address. A LOCAL header (a load balancer's health check) closes the connection."""

    __slots__ = ("buffer",)

    def __init__(self, listener: HttpListener, client: socket.socket, peer: tuple[str, int]):
        super().__init__(listener, client, peer)
        self.buffer = bytearray()

    def begin(self) -> None:
        reactor = self.listener.server.reactor
        self.until = reactor.now() + self.listener.context.front_timeout
        reactor.register(self.fd, IN, self.on_event, self)
        reactor.arm(self)
        self.on_event(IN)

    def on_event(self, _mask: int) -> None:
        buffer = self.buffer
        counters = self.listener.context.counters
        while True:
            try:
                header, missing = read_v2(buffer, transport=TRANSPORT_STREAM)
            except ProxyProtocolError as error:
                counters.proxy_protocol_errors += 1
                log.debug("PROXY header on %s refused: %s", self.listener.address, error)
                self._fail()
                return
            if header is not None:
                break
            try:
                data = self.sock.recv(missing)
            except BlockingIOError:
                return
            except OSError:
                self._fail()
                return
            if not data:
                self._fail()  # closed before a whole header: a probe, closed silently
                return
            buffer += data
        if header.source is None:
            self._fail()  # LOCAL or UNSPEC: nothing to serve
            return
        self._handed_over()
        self.listener.proceed(self.sock, header.source)


class TlsHandshake(_Opening):
    """An HTTPS connection until its handshake is done (then it becomes an HttpConnection)."""

    __slots__ = ()
    sock: TlsSocket

    def __init__(self, listener: HttpListener, client: socket.socket, peer: tuple[str, int]):
        assert listener.tls is not None
        super().__init__(listener, TlsSocket.accepted(client, listener.tls.context), peer)

    def begin(self) -> None:
        reactor = self.listener.server.reactor
        self.until = reactor.now() + self.listener.context.front_timeout
        reactor.register(self.fd, IN, self.on_event, self)
        self.on_event(IN)

    def on_event(self, _mask: int) -> None:
        listener = self.listener
        reactor = listener.server.reactor
        tls = listener.tls
        assert tls is not None
        try:
            self.sock._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            reactor.modify(self.fd, IN)
            reactor.arm(self)
            return
        except ssl.SSLWantWriteError:
            reactor.modify(self.fd, OUT)
            reactor.arm(self)
            return
        except (ssl.SSLError, OSError) as error:
            reason = tls.record_handshake_failure(error)
            log.debug("TLS handshake on %s failed: %s", listener.address, reason)
            self._fail()
            return
        counters = listener.context.counters
        counters.tls_handshakes += 1
        if self.sock.session_reused:
            counters.tls_resumed += 1
        if listener.disable_http11 and self.sock.selected_alpn_protocol() != "h2":
            counters.alpn_rejected += 1
            self._fail()
            return
        # The session takes the registered fd over (rebinding it lets go of this owner).
        self.until = math.inf
        listener.server.start_session(listener, self.sock, self.peer, registered=True)


class HttpServer:
    """The worker's HTTP and HTTPS listeners on the loop, and their connections."""

    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor
        self.reactor = acceptor.reactor
        self.pool = IdlePool(acceptor.reactor)
        self.upstreams = UpstreamPool(acceptor.reactor)
        self.listeners: dict[str, HttpListener] = {}
        self.connections: set[HttpConnection | H2FrontConnection] = set()

    def start_session(
        self,
        listener: HttpListener,
        sock: socket.socket,
        peer: tuple[str, int],
        *,
        registered: bool = False,
    ) -> None:
        """Serve an accepted (and TLS-handshaken) connection (`registered`: its fd is on the
        loop already, owned by its handshake)."""
        if isinstance(sock, TlsSocket) and sock.selected_alpn_protocol() == "h2":
            self._start_h2(listener, sock, peer, registered=registered)
            return
        session = Http1Session(listener.context, peer)
        if isinstance(sock, TlsSocket):
            served = served_certificate(sock)
            if served is not None:
                session.served_names = served.names
                session.sni = served.server_name
                session.default_cert = served.default_used
        connection = HttpConnection(self, sock, session)
        self.connections.add(connection)
        connection.begin(self.reactor.now(), registered=registered)

    def _start_h2(
        self,
        listener: HttpListener,
        sock: TlsSocket,
        peer: tuple[str, int],
        *,
        registered: bool,
    ) -> None:
        served = served_certificate(sock)
        session = H2Session(
            listener.context,
            peer,
            served_names=served.names if served is not None else (),
            sni=served.server_name if served is not None else None,
            default_cert=served.default_used if served is not None else False,
        )
        connection = H2FrontConnection(self, sock, session)
        self.connections.add(connection)
        connection.begin(self.reactor.now(), registered=registered)

    def start_h2c(
        self,
        context: ListenerContext,
        sock: socket.socket,
        peer: tuple[str, int],
        data: bytes,
        now: float,
    ) -> None:
        """A plain connection whose first bytes are the HTTP/2 preface (h2c with prior
        knowledge): an HTTP/2 connection from those bytes on."""
        connection = H2FrontConnection(self, sock, H2Session(context, peer))
        self.connections.add(connection)
        connection.begin(now)
        if not connection.finished:
            connection.session.front_data(data, now)
            connection.settle(now)

    def connection_closed(self, connection: HttpConnection | H2FrontConnection) -> None:
        self.connections.discard(connection)
        connection.session.counters.active -= 1
        self.acceptor.released()

    def drain(self) -> None:
        """Every session drains (see the core): the response under way or the next one says
        close; idle connections end at the drain deadline."""
        now = self.reactor.now()
        for listener in self.listeners.values():
            listener.context.shared.start_drain(now)
        for connection in list(self.connections):
            if not connection.finished:
                connection.session.drain(now)
                connection.settle(now)

    def close(self) -> None:
        for connection in list(self.connections):
            connection.close()
        for listener in list(self.listeners.values()):
            listener.close()
        self.listeners.clear()
        self.pool.close()
        self.upstreams.close()
