"""The supervisor's listener sockets: one SO_REUSEPORT socket per active listener and slot.

The supervisor binds them when a listener becomes active, hands each slot's copies to the
worker of that slot (SCM_RIGHTS) and keeps its own duplicate, so a relaunched worker adopts
the very same socket and nothing waiting in its backlog is reset. See LIFECYCLE.md.
"""

from __future__ import annotations

import logging
import socket

from sozu.command.addresses import to_sockaddr
from sozu.command.fdpass import PassedListener
from sozu.command.types import ListenerType
from sozu.supervisor.address_owner import AddressClaims

log = logging.getLogger("sozu.supervisor")

BACKLOG = 1024

ListenerKey = tuple[ListenerType, str]


def bind_listener_socket(proxy: ListenerType, address: str) -> socket.socket:
    """A non-blocking, close-on-exec socket bound to `address` (listening, with TCP_NODELAY,
    if stream-based)."""
    host, port = to_sockaddr(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if proxy == "UDP" else socket.SOCK_STREAM
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            # Copied by Linux to every accepted connection (no call per connection).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class ListenerSockets:
    """Sockets by listener and slot.

    An empty slot (no worker of its own: restart limit, replay failure) keeps the sockets it
    had, served by another worker that adopts them, or has none when no worker could (they
    are closed so that no client waits in a queue nobody serves); listeners activated while
    it is empty get no socket for it. `revive_slot` binds what it lacks before its next
    worker starts.
    """

    def __init__(self, slot_count: int, claims: AddressClaims | None = None) -> None:
        self.slot_count = slot_count
        # Ownership of the addresses (see address_owner.py); None: no check (unit tests).
        self.claims = claims
        self._sockets: dict[ListenerKey, dict[int, socket.socket]] = {}
        self._dead_slots: set[int] = set()

    def __contains__(self, key: ListenerKey) -> bool:
        return key in self._sockets

    def items(self) -> list[tuple[ListenerKey, dict[int, socket.socket]]]:
        return list(self._sockets.items())

    @property
    def dead_slots(self) -> set[int]:
        return set(self._dead_slots)

    def adopt(
        self, sockets: list[tuple[ListenerKey, int, socket.socket]], dead_slots: set[int]
    ) -> None:
        """Take over the sockets a previous supervisor held (upgrade): (key, slot, socket)."""
        for key, slot, sock in sockets:
            self._sockets.setdefault(key, {})[slot] = sock
            if self.claims is not None:
                self.claims.claim(*key, probe=False)
        self._dead_slots |= dead_slots

    def bind(self, proxy: ListenerType, address: str) -> None:
        """Bind the listener's socket of every live slot; OSError (nothing kept) on failure."""
        key = (proxy, address)
        if key in self._sockets:
            return
        if self.claims is not None:
            self.claims.claim(proxy, address)
        bound: dict[int, socket.socket] = {}
        try:
            for slot in range(self.slot_count):
                if slot not in self._dead_slots:
                    bound[slot] = bind_listener_socket(proxy, address)
        except BaseException:
            for sock in bound.values():
                sock.close()
            if self.claims is not None:
                self.claims.release(proxy, address)
            raise
        self._sockets[key] = bound
        log.info("bound %s listener %s (%d sockets)", proxy, address, len(bound))

    def for_slot(
        self, slot: int, keys: list[ListenerKey] | None = None, *, foreign: bool = False
    ) -> list[tuple[PassedListener, socket.socket]]:
        """The slot's sockets (of `keys`, default all), with their manifest entries; marked
        with the slot when they go to another slot's worker (`foreign`)."""
        wanted = self._sockets.keys() if keys is None else keys
        out: list[tuple[PassedListener, socket.socket]] = []
        for proxy, address in wanted:
            sock = self._sockets.get((proxy, address), {}).get(slot)
            if sock is not None:
                entry = PassedListener(address=address, proxy=proxy, slot=slot if foreign else None)
                out.append((entry, sock))
        return out

    def is_empty(self, slot: int) -> bool:
        return slot in self._dead_slots

    def mark_empty(self, slot: int) -> None:
        """The slot has no worker of its own: new listeners get no socket for it."""
        self._dead_slots.add(slot)

    def revive_slot(self, slot: int, active: list[ListenerKey]) -> list[str]:
        """Bind the slot's socket of every `active` listener that lacks one; the bind
        errors."""
        self._dead_slots.discard(slot)
        errors = []
        for proxy, address in active:
            if (proxy, address) not in self._sockets and self.claims is not None:
                try:
                    self.claims.claim(proxy, address)
                except OSError as error:
                    errors.append(f"cannot own {proxy} listener {address}: {error}")
                    continue
            by_slot = self._sockets.setdefault((proxy, address), {})
            if slot not in by_slot:
                try:
                    by_slot[slot] = bind_listener_socket(proxy, address)
                except OSError as error:
                    errors.append(f"cannot bind {proxy} listener {address}: {error}")
        return errors

    def close(self, proxy: ListenerType, address: str) -> None:
        """Close the listener's duplicates (after the workers closed their copies)."""
        for sock in self._sockets.pop((proxy, address), {}).values():
            sock.close()
        if self.claims is not None:
            self.claims.release(proxy, address)

    def close_slot(self, slot: int) -> None:
        """No worker is coming for `slot`: close its sockets so no client waits in them."""
        self._dead_slots.add(slot)
        for by_slot in self._sockets.values():
            sock = by_slot.pop(slot, None)
            if sock is not None:
                sock.close()

    def close_all(self) -> None:
        for by_slot in self._sockets.values():
            for sock in by_slot.values():
                sock.close()
        self._sockets.clear()
        if self.claims is not None:
            self.claims.release_all()
