"""HTTP and HTTPS listeners on the readiness loop: TLS handshakes, then session cores.

`HttpServer` is the worker's HTTP side on the loop: its listeners (by address), the idle
backend pool and the connections it serves. An HTTPS connection first goes through its
handshake, driven by readiness events and bounded by the listener's front timeout; a
plain one starts its `Http1Session` at once.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl

from sozu.worker.core.http1.context import ListenerContext
from sozu.worker.core.http1.session import Http1Session
from sozu.worker.shell.accepting import Acceptor, LoopListener
from sozu.worker.shell.http_connection import HttpConnection
from sozu.worker.shell.idle_pool import IdlePool
from sozu.worker.shell.reactor import IN, OUT
from sozu.worker.shell.tls_contexts import ListenerTls, served_certificate

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
        if self.tls is None:
            self.server.start_session(self, client, peer)
        else:
            TlsHandshake(self, client, peer).begin()


class TlsHandshake:
    """An HTTPS connection until its handshake is done (then it becomes an HttpConnection)."""

    __slots__ = ("armed", "fd", "listener", "peer", "sock", "until")

    def __init__(self, listener: HttpListener, client: socket.socket, peer: tuple[str, int]):
        assert listener.tls is not None
        self.listener = listener
        self.peer = peer
        self.sock = listener.tls.context.wrap_socket(
            client, server_side=True, do_handshake_on_connect=False
        )
        self.fd = self.sock.fileno()
        self.armed = math.inf
        self.until = math.inf

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
            self.sock.do_handshake()
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
        listener.context.counters.tls_handshakes += 1
        reactor.unregister(self.fd)
        self.until = math.inf
        if listener.disable_http11 and self.sock.selected_alpn_protocol() != "h2":
            listener.context.counters.alpn_rejected += 1
            self._fail(registered=False)
            return
        listener.server.start_session(listener, self.sock, self.peer)

    def deadline(self) -> float:
        return self.until

    def expire(self, now: float) -> None:
        self._fail()

    def abort(self, error: BaseException) -> None:
        self._fail()

    def _fail(self, *, registered: bool = True) -> None:
        server = self.listener.server
        if registered:
            server.reactor.unregister(self.fd)
        self.until = math.inf
        self.sock.close()
        self.listener.context.counters.active -= 1
        server.acceptor.released()


class HttpServer:
    """The worker's HTTP and HTTPS listeners on the loop, and their connections."""

    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor
        self.reactor = acceptor.reactor
        self.pool = IdlePool(acceptor.reactor)
        self.listeners: dict[str, HttpListener] = {}
        self.connections: set[HttpConnection] = set()

    def start_session(
        self, listener: HttpListener, sock: socket.socket, peer: tuple[str, int]
    ) -> None:
        session = Http1Session(listener.context, peer)
        if isinstance(sock, ssl.SSLSocket):
            served = served_certificate(sock)
            if served is not None:
                session.served_names = served.names
                session.sni = served.server_name
                session.default_cert = served.default_used
        connection = HttpConnection(self, sock, session)
        self.connections.add(connection)
        connection.begin(self.reactor.now())

    def connection_closed(self, connection: HttpConnection) -> None:
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
