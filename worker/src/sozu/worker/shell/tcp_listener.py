"""TCP listeners on the readiness loop, and the connections they serve."""

from __future__ import annotations

import socket

from sozu.command.metrics import Histogram
from sozu.worker.core.tcp_session import TcpContext, TcpSession
from sozu.worker.shell.accepting import Acceptor, LoopListener
from sozu.worker.shell.relay import HAS_SPLICE, PipePool
from sozu.worker.shell.tcp_connection import TcpConnection


class TcpListener(LoopListener):
    """One TCP listener: its context (config, cluster, counters) and its sockets."""

    def __init__(self, server: TcpServer, address: str, context: TcpContext) -> None:
        super().__init__(server.acceptor, address)
        self.server = server
        self.context = context
        # Connection durations in seconds, when the worker's metrics want them.
        self.durations: Histogram | None = None

    def accepted(self, client: socket.socket, peer: tuple[str, int]) -> None:
        counters = self.context.counters
        counters.accepted += 1
        counters.active += 1
        local = client.getsockname()
        session = TcpSession(self.context, peer, (local[0], local[1]))
        connection = TcpConnection(self.server, client, session)
        self.server.connections[connection] = self
        connection.begin(self.server.reactor.now())


class TcpServer:
    """The worker's TCP listeners on the loop and their connections."""

    def __init__(self, acceptor: Acceptor, *, use_splice: bool = True) -> None:
        self.acceptor = acceptor
        self.reactor = acceptor.reactor
        self.pipes = PipePool() if use_splice and HAS_SPLICE else None
        self.listeners: dict[str, TcpListener] = {}
        self.connections: dict[TcpConnection, TcpListener] = {}

    def connection_closed(self, connection: TcpConnection, duration: float) -> None:
        listener = self.connections.pop(connection, None)
        if listener is not None:
            listener.context.counters.active -= 1
            if listener.durations is not None:
                listener.durations.observe(duration)
        self.acceptor.released()

    def close(self) -> None:
        for connection in list(self.connections):
            connection.close()
        for listener in list(self.listeners.values()):
            listener.close()
        self.listeners.clear()
        if self.pipes is not None:
            self.pipes.close()
