"""Idle keep-alive connections to backends, registered with the readiness loop.

A connection is pooled after a complete exchange the core declared reusable (RELEASE_BACK).
While idle it stays registered with the loop: any readiness (the backend closed it, reset it,
or sent bytes nobody asked for) drops it at once, so a connection taken from the pool was
alive at the last poll and needs no peek (a request that cannot be replayed asks `verify`: a
non-blocking peek then). Each backend address keeps at most `per_backend` idle connections,
the most recently released first; those idle longer than `max_idle` are dropped when met.
The bound is well above the concurrency one client connection brings (an HTTP/2 client runs
up to 100 streams at once, each with a backend connection): with a smaller one, every burst
past it closes connections that the next burst opens again.
"""

from __future__ import annotations

import math
import socket
from collections import deque

from sozu.worker.shell.reactor import IN, Reactor

Address = tuple[str, int]
# Idle connections kept per backend address.
PER_BACKEND = 1024


class _Idle:
    """One pooled connection while nobody uses it (the loop's owner of its fd). The entry of
    a socket is kept while the socket lives and reused each time it comes back."""

    __slots__ = ("address", "armed", "handler", "pool", "since", "sock")

    def __init__(self, pool: IdlePool, address: Address, sock: socket.socket, since: float):
        self.pool = pool
        self.address = address
        self.sock = sock
        self.since = since
        self.armed = math.inf
        self.handler = self.on_event

    def on_event(self, _mask: int) -> None:
        self.pool.drop(self)

    def deadline(self) -> float:
        return math.inf

    def expire(self, now: float) -> None:
        pass

    def abort(self, error: BaseException) -> None:
        self.pool.drop(self)


class IdlePool:
    """Idle connections by backend address (see the module docstring)."""

    def __init__(self, reactor: Reactor, *, per_backend: int = PER_BACKEND, max_idle: float = 60.0):
        assert per_backend >= 1
        assert max_idle > 0
        self.reactor = reactor
        self.per_backend = per_backend
        self.max_idle = max_idle
        self._idle: dict[Address, deque[_Idle]] = {}
        # Every socket's entry by fd, idle or not (bounded by the number of fds).
        self._entries: dict[int, _Idle] = {}
        self.reused = 0
        self.dropped = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._idle.values())

    def give(self, address: Address, sock: socket.socket, now: float) -> None:
        """Pool a connection registered with the loop (it stays registered, watched for
        input: the cheapest way to learn that the backend closed it)."""
        fd = sock.fileno()
        idle = self._entries.get(fd)
        if idle is None or idle.sock is not sock:
            # (An entry of an earlier socket with this fd, closed by its session: replaced.)
            idle = self._entries[fd] = _Idle(self, address, sock, now)
        else:
            idle.address = address
            idle.since = now
        self.reactor.rebind(fd, idle.handler, idle)
        # IN only (hang-ups are reported anyway): the mask a session reading it uses too, so
        # neither giving nor taking it costs an epoll_ctl.
        self.reactor.modify(fd, IN)
        queue = self._idle.get(address)
        if queue is None:
            queue = self._idle[address] = deque()
        queue.append(idle)
        if len(queue) > self.per_backend:
            self._close(queue.popleft())

    def take(self, address: Address, now: float, *, verify: bool = False) -> socket.socket | None:
        """A live idle connection to `address`, still registered with the loop (the caller
        rebinds it to its own handler), or None."""
        queue = self._idle.get(address)
        while queue:
            idle = queue.pop()
            if not queue:
                del self._idle[address]
            if now - idle.since > self.max_idle or (verify and not _quiet(idle.sock)):
                self._close(idle)
                self.dropped += 1
                queue = self._idle.get(address)
                continue
            self.reused += 1
            return idle.sock
        return None

    def drop(self, idle: _Idle) -> None:
        """The backend closed (or spoke on) an idle connection: it goes."""
        queue = self._idle.get(idle.address)
        if queue is not None and idle in queue:
            queue.remove(idle)
            if not queue:
                del self._idle[idle.address]
        self.dropped += 1
        self._close(idle)

    def _close(self, idle: _Idle) -> None:
        fd = idle.sock.fileno()
        if self._entries.get(fd) is idle:
            del self._entries[fd]
        self.reactor.close(idle.sock)

    def closed(self, fd: int) -> None:
        """A session closed a connection that came from the pool: its entry goes."""
        self._entries.pop(fd, None)

    def forget(self, address: Address) -> None:
        """Close every idle connection to a backend (removed from its cluster)."""
        for idle in self._idle.pop(address, ()):
            self._close(idle)

    def addresses(self) -> list[Address]:
        return list(self._idle)

    def close(self) -> None:
        for queue in self._idle.values():
            for idle in queue:
                self._close(idle)
        self._idle.clear()
        self._entries.clear()

    def check_invariants(self) -> None:
        for address, queue in self._idle.items():
            assert queue, f"empty idle queue kept for {address}"
            assert len(queue) <= self.per_backend
            times = [idle.since for idle in queue]
            assert times == sorted(times), "idle queue not in release order"
            for idle in queue:
                assert idle.sock.fileno() in self.reactor, "an idle connection is watched"
                assert self._entries[idle.sock.fileno()] is idle


def _quiet(sock: socket.socket) -> bool:
    """True when the connection is open and has nothing unread."""
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False
