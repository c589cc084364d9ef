"""The worker-wide cap on client connections (trio): accepting pauses at the cap."""

from __future__ import annotations

import trio


class ConnectionLimit:
    """Counts open client connections of every listener of a worker."""

    def __init__(self, limit: int) -> None:
        assert limit >= 1
        self.limit = limit
        self.active = 0
        self._room = trio.Event()
        self._room.set()
        self._idle = trio.Event()
        self._idle.set()

    def take(self) -> None:
        self.active += 1
        assert self.active <= self.limit
        if self.active == 1:
            self._idle = trio.Event()
        if self.active == self.limit:
            self._room = trio.Event()

    def give(self) -> None:
        self.active -= 1
        assert self.active >= 0
        self._room.set()
        if not self.active:
            self._idle.set()

    async def wait_for_room(self) -> None:
        while self.active >= self.limit:
            await self._room.wait()

    async def wait_idle(self) -> None:
        """Until no connection is open (a draining worker waits for this)."""
        while self.active:
            await self._idle.wait()
