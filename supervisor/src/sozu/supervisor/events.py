"""Event subscribers: each gets every event once, in order; a slow one is dropped.

Events are numbered (`seq`) and the last KEPT_EVENTS are kept, handed over across a
supervisor upgrade, so that a follower that lost its connection resumes from the last number
it saw (`SubscribeEvents(since=N)`) without a gap.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Iterable

import trio

from sozu.command.envelope import Response, processing
from sozu.command.responses import Event, EventKind

MAX_QUEUED_EVENTS = 1000
KEPT_EVENTS = 1000
log = logging.getLogger("sozu.supervisor")

Reply = Callable[[Response], Awaitable[bool]]


class EventHub:
    """Fans events out to the connections that sent SubscribeEvents."""

    def __init__(self, kept: Iterable[Event] = (), next_seq: int = 1) -> None:
        self._queues: dict[int, trio.MemorySendChannel[Event]] = {}
        self._next = 0
        self._history: collections.deque[Event] = collections.deque(kept, maxlen=KEPT_EVENTS)
        self.next_seq = next_seq

    @property
    def kept(self) -> tuple[Event, ...]:
        return tuple(self._history)

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
            seq=self.next_seq,
            source=source,
            cluster_id=cluster_id,
            backend_id=backend_id,
            address=address,
            message=message,
        )
        self.next_seq += 1
        self._history.append(event)
        log.info("event %s%s", kind, f": {message}" if message else "")
        for key, queue in list(self._queues.items()):
            try:
                queue.send_nowait(event)
            except trio.WouldBlock:
                log.warning("event subscriber %d too slow, dropping it", key)
                queue.close()
                del self._queues[key]

    async def follow(self, request_id: str, since: int | None, reply: Reply) -> None:
        """Send this subscriber its events until its connection goes away; with `since`, the
        kept events numbered after it first."""
        send, receive = trio.open_memory_channel[Event](MAX_QUEUED_EVENTS)
        key = self._next
        self._next += 1
        self._queues[key] = send
        missed = [e for e in self._history if since is not None and (e.seq or 0) > since]
        try:
            subscribed = Event(kind="EVENTS_SUBSCRIBED", seq=self.next_seq - 1)
            if not await reply(processing(request_id, "main", subscribed)):
                return
            for event in missed:
                if not await reply(processing(request_id, event.source, event)):
                    return
            last = missed[-1].seq if missed else None
            async for event in receive:
                if last is not None and (event.seq or 0) <= last:
                    continue
                if not await reply(processing(request_id, event.source, event)):
                    return
        finally:
            self._queues.pop(key, None)
            send.close()
            receive.close()
