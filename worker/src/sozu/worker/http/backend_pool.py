"""Idle keep-alive connections to backends, reused by later requests of any client.

A connection is pooled only after a complete exchange where neither the request nor the
response asked to close. Before reuse it is checked with a non-blocking peek (unless it was
released less than `RECENT` seconds ago and the caller could retry the request elsewhere): a
backend that closed it (EOF) or sent unsolicited bytes makes it unusable, and it is dropped.
Each backend keeps at most `per_backend` idle connections, the most recently used first; those
idle longer than `max_idle` seconds are dropped when met.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable

Address = tuple[str, int]
# Seconds after its release during which a pooled connection is reused without a peek.
RECENT = 1.0


class BackendPool:
    """Idle connections by backend address."""

    def __init__(
        self, clock: Callable[[], float], *, per_backend: int = 64, max_idle: float = 60.0
    ) -> None:
        assert per_backend >= 1
        assert max_idle > 0
        self._clock = clock
        self._idle: dict[Address, deque[tuple[float, socket.socket]]] = {}
        self.per_backend = per_backend
        self.max_idle = max_idle
        self.reused = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._idle.values())

    def take(self, address: Address, *, verify: bool = False) -> socket.socket | None:
        """A live idle connection to `address`, or None; `verify` peeks even a recent one."""
        queue = self._idle.get(address)
        if not queue:
            return None
        now = self._clock()
        oldest_allowed = now - self.max_idle
        while queue:
            since, sock = queue.pop()
            if since < oldest_allowed:
                sock.close()
                continue
            if now - since < RECENT and not verify:
                # Released a moment ago: a backend closing it now is caught by the session's
                # retry on a fresh connection, so the peek (a system call) is skipped.
                self.reused += 1
                if not queue:
                    del self._idle[address]
                return sock
            try:
                peeked = sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                self.reused += 1
                if not queue:
                    del self._idle[address]
                return sock
            except OSError:
                peeked = b""
            del peeked
            sock.close()
        del self._idle[address]
        return None

    def give(self, address: Address, sock: socket.socket) -> None:
        """Keep a connection whose last response was complete."""
        queue = self._idle.setdefault(address, deque())
        queue.append((self._clock(), sock))
        if len(queue) > self.per_backend:
            queue.popleft()[1].close()

    def forget(self, address: Address) -> None:
        """Close every idle connection to a backend (removed from its cluster)."""
        for _, sock in self._idle.pop(address, ()):
            sock.close()

    def addresses(self) -> list[Address]:
        return list(self._idle)

    def close(self) -> None:
        for queue in self._idle.values():
            for _, sock in queue:
                sock.close()
        self._idle.clear()

    def check_invariants(self) -> None:
        for address, queue in self._idle.items():
            assert queue, f"empty idle queue kept for {address}"
            assert len(queue) <= self.per_backend
            times = [since for since, _ in queue]
            assert times == sorted(times), "idle queue not in release order"
            assert all(sock.fileno() >= 0 for _, sock in queue), "closed socket in the pool"
