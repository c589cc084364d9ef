"""Bounded egress FIFO for UDP sends that would block, without sockets (docs/udp.md, The shell).

The shell tries a send directly; on would-block the datagram is queued and WRITABLE interest
armed until the queue empties. While the queue is non-empty new datagrams are appended behind
it (order is kept); at capacity the *new* datagram is dropped (`wq_full`). A hard send error
drops that one datagram (`send_error`) and the drain goes on. The send itself is a callable
supplied by the shell, so this module never touches a socket.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

UPSTREAM_QUEUE_CAP = 64  # per flow
CLIENT_QUEUE_CAP = 256  # per listener (client returns)

T = TypeVar("T")


class SendResult(enum.StrEnum):
    SENT = "sent"
    WOULD_BLOCK = "would_block"
    ERROR = "error"


class WriteQueue(Generic[T]):
    __slots__ = ("_items", "cap", "dropped_full", "send_errors", "sent")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"queue cap must be >= 1, got {cap}")
        self.cap = cap
        self._items: deque[T] = deque()
        self.dropped_full = 0
        self.send_errors = 0
        self.sent = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def push(self, item: T) -> bool:
        """Queue behind the others; False (and counted `wq_full`) when the queue is full."""
        if len(self._items) >= self.cap:
            self.dropped_full += 1
            return False
        self._items.append(item)
        return True

    def offer(self, item: T, send: Callable[[T], SendResult]) -> bool:
        """Send now if nothing is queued, else queue. Return True when WRITABLE is needed."""
        if self._items:
            self.push(item)
            return True
        result = send(item)
        if result is SendResult.SENT:
            self.sent += 1
        elif result is SendResult.WOULD_BLOCK:
            self._items.append(item)
        else:
            self.send_errors += 1
        return bool(self._items)

    def flush(self, send: Callable[[T], SendResult]) -> bool:
        """Send queued items in order until one would block. Return True when empty."""
        items = self._items
        while items:
            result = send(items[0])
            if result is SendResult.WOULD_BLOCK:
                return False
            items.popleft()
            if result is SendResult.SENT:
                self.sent += 1
            else:
                self.send_errors += 1
        return True

    def clear(self) -> None:
        self._items.clear()
