"""Accepting on the loop: a backlog of costly connections does not hold back other events,
and accepted connections carry TCP_NODELAY."""

from __future__ import annotations

import socket
import time

from support.loop_driver import Untimed, run_until

from sozu.worker.shell.accepting import ACCEPT_BUDGET, Acceptor, LoopListener
from sozu.worker.shell.connection_limit import ConnectionLimit
from sozu.worker.shell.reactor import IN, Reactor


class Recording(LoopListener):
    """Logs "accept" for each accepted connection and keeps it, spending `cost` seconds on it
    (as a TLS handshake started at accept does)."""

    def __init__(self, reactor: Reactor, log: list[str], cost: float) -> None:
        limit = ConnectionLimit(100)
        super().__init__(Acceptor(reactor, lambda: limit), "127.0.0.1")
        self.log = log
        self.cost = cost
        self.clients: list[socket.socket] = []

    def accepted(self, client: socket.socket, peer: tuple[str, int]) -> None:
        self.clients.append(client)
        self.log.append("accept")
        until = time.perf_counter() + self.cost
        while time.perf_counter() < until:
            pass


def listening() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server


def connect(server: socket.socket, count: int) -> list[socket.socket]:
    """`count` connections, in the server's backlog once this returns."""
    return [socket.create_connection(server.getsockname()) for _ in range(count)]


async def accept_three(cost: float) -> list[str]:
    """Three connections wait in the backlog and another socket stays readable; returns the
    order in which the loop handled them."""
    reactor = Reactor()
    log: list[str] = []
    listener = Recording(reactor, log, cost)
    server = listening()
    clients = connect(server, 3)
    left, right = socket.socketpair()
    right.send(b"never read: ready at every poll")
    try:
        listener.add_socket(server)
        listener.start_accepting()
        reactor.register(left.fileno(), IN, lambda _mask: log.append("other"), Untimed())
        await run_until(reactor, lambda: log.count("accept") == 3 and log[-1] == "other")
    finally:
        listener.close()
        for sock in [*clients, *listener.clients, left, right]:
            sock.close()
    return log


async def test_a_costly_backlog_is_accepted_one_budget_per_event() -> None:
    """Once an event has spent ACCEPT_BUDGET, the rest of the backlog waits for the next poll,
    and the other ready sockets are handled in between."""
    log = await accept_three(cost=2 * ACCEPT_BUDGET)
    first, last = log.index("accept"), len(log) - 1 - log[::-1].index("accept")
    between = log[first:last]
    assert between.count("accept") == 2
    assert between.count("other") >= 2, log


async def test_a_cheap_backlog_is_accepted_in_one_event() -> None:
    """The control: cheap connections are accepted back to back (one event takes the whole
    backlog; the test allows one preemption of the process longer than the budget)."""
    log = await accept_three(cost=0.0)
    first = log.index("accept")
    assert log[first : first + 2] == ["accept"] * 2, log


async def accept_two(*, queued_first: bool) -> tuple[bool | None, list[int]]:
    """Two connections accepted: whether the listener found TCP_NODELAY inherited, and each
    accepted connection's TCP_NODELAY."""
    reactor = Reactor()
    log: list[str] = []
    listener = Recording(reactor, log, 0.0)
    server = listening()
    # In the backlog before the listener has TCP_NODELAY, or after.
    clients = connect(server, 2) if queued_first else []
    try:
        listener.add_socket(server)
        clients = clients or connect(server, 2)
        listener.start_accepting()
        await run_until(reactor, lambda: len(log) == 2)
        nodelay = [
            accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            for accepted in listener.clients
        ]
        return listener.nodelay_inherited, nodelay
    finally:
        listener.close()
        for sock in [*clients, *listener.clients]:
            sock.close()


async def test_accepted_connections_inherit_tcp_nodelay_from_the_listener() -> None:
    """Small writes go out at once: TCP_NODELAY is set on the listener, which Linux copies to
    each connection it accepts (no system call per connection)."""
    assert await accept_two(queued_first=False) == (True, [1, 1])


async def test_tcp_nodelay_is_set_on_each_connection_when_not_inherited() -> None:
    """Connections queued before the listener had TCP_NODELAY lack it: from the first such
    one on, the listener sets it on each connection."""
    assert await accept_two(queued_first=True) == (False, [1, 1])
