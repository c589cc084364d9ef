"""Event subscribers: each gets every event once, in order; a slow one is dropped."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from sozu.command.envelope import Response, processing
from sozu.command.responses import Event, EventKind

MAX_QUEUED_EVENTS = 1000
log = logging.getLogger("sozu.supervisor")

Reply = Callable[[Response], Awaitable[bool]]


class EventHub:
    """Fans events out to the connections that sent SubscribeEvents."""

    def __init__(self) -> None:
        self._queues: dict[int, trio.MemorySendChannel[Event]] = {}
        self._next = 0

    def publish(
        self,
        kind: EventKind,
        *,
        source: str = "main",
        cluster_id: str | None = None,
        backend_id: str | None = None,
        address: str | None = None,
        message: str | None = None,
    ) -> None:
        event = Event(
            kind=kind,
            source=source,
            cluster_id=cluster_id,
            backend_id=backend_id,
            address=address,
            message=message,
        )
        log.info("event %s%s", kind, f": {message}" if message else "")
        for key, queue in list(self._queues.items()):
            try:
                queue.send_nowait(event)
            except trio.WouldBlock:
                log.warning("event subscriber %d too slow, dropping it", key)
                queue.close()
                del self._queues[key]

    async def follow(self, request_id: str, reply: Reply) -> None:
        """Send this subscriber its events until its connection goes away."""
        send, receive = trio.open_memory_channel[Event](MAX_QUEUED_EVENTS)
        key = self._next
        self._next += 1
        self._queues[key] = send
        try:
            if not await reply(processing(request_id, "main", Event(kind="EVENTS_SUBSCRIBED"))):
                return
            async for event in receive:
                if not await reply(processing(request_id, event.source, event)):
                    return
        finally:
            self._queues.pop(key, None)
            send.close()
            receive.close()
