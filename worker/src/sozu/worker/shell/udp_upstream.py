"""One UDP flow's connected upstream socket (`UdpUpstream`), registered with the worker's
`Reactor`: its handler flushes the flow's queue towards the backend when the socket is
writable, and reads the backend's replies (up to BUDGET per wake-up) into the listener
proxy's buffer, sending each to the client on the fast path (into the listener's send batch,
when it has one, or at once when it is the wake-up's lone reply) or feeding the core."""

from __future__ import annotations

import math
import socket
from typing import TYPE_CHECKING, Final

from sozu.worker.core.udp.egress import UPSTREAM_QUEUE_CAP, SendResult, WriteQueue
from sozu.worker.shell.reactor import HUP, IN, OUT

if TYPE_CHECKING:
    from sozu.worker.shell.udp_batching import Receiver
    from sozu.worker.shell.udp_proxy import UdpListenerProxy

# Datagrams read from one socket per wake-up; the loop comes back for the rest (level-triggered).
BUDGET: Final = 64
PROBE_EVERY: Final = 8
# What handling one reply did (`UdpUpstream._reply`).
_SENT: Final = 0
_FULL: Final = 1
_CLOSED: Final = 2


class UdpUpstream:
    """One flow's connected upstream socket, registered with the loop (owner of its fd)."""

    __slots__ = (
        "armed",
        "backend_id",
        "cluster",
        "fd",
        "flow",
        "opened_at",
        "proxy",
        "queue",
        "reads",
        "single",
        "sock",
    )

    def __init__(
        self,
        proxy: UdpListenerProxy,
        flow: int,
        sock: socket.socket,
        cluster: str,
        backend_id: str,
        opened_at: float,
    ) -> None:
        self.proxy = proxy
        self.flow = flow
        self.sock = sock
        self.fd = sock.fileno()
        self.cluster = cluster
        self.backend_id = backend_id
        self.opened_at = opened_at
        # Datagrams waiting for the socket to become writable: made on the first send that
        # would block (most flows never need one; an empty deque costs about 600 bytes).
        self.queue: WriteQueue[bytes] | None = None
        self.armed = math.inf
        # True while wake-ups find one reply each (request-reply traffic): then one read per
        # wake-up, without the read that would only find the socket empty; every
        # PROBE_EVERY-th wake-up drains it again to notice a backlog.
        self.single = False
        self.reads = 0

    def pending(self) -> WriteQueue[bytes]:
        queue = self.queue
        if queue is None:
            queue = self.queue = WriteQueue(UPSTREAM_QUEUE_CAP)
        return queue

    def send(self, payload: bytes) -> SendResult:
        try:
            self.sock.send(payload)
        except BlockingIOError:
            return SendResult.WOULD_BLOCK
        except OSError:
            return SendResult.ERROR
        return SendResult.SENT

    def __call__(self, mask: int) -> None:
        """The loop's handler: a reply (or room to send) on this flow's socket. The flow is
        its own handler: a bound method kept per flow would cost 64 bytes more."""
        proxy = self.proxy
        flow = self.flow
        if mask & OUT:
            try:
                queue = self.queue
                if queue is None or queue.flush(self.send):
                    proxy.reactor.modify(self.fd, IN)
            except Exception as error:
                proxy.flow_failed(flow, error)
                proxy.apply()
                return
        if not mask & (IN | HUP):
            return
        recv_batch = proxy.recv_batch
        if recv_batch is None or self.single:
            self._read_each(proxy)  # one reply per wake-up: one recv is the cheapest call
        else:
            self._read_batches(proxy, recv_batch)

    def _read_batches(self, proxy: UdpListenerProxy, recv_batch: Receiver) -> None:
        """Replies with recvmmsg into the proxy's slots: a short batch means the socket is
        drained, so no read finds it empty."""
        now = proxy.now()
        fd = self.fd
        buffer, view = proxy.slot_buffer, proxy.slot_view
        slot = len(proxy.buffer)
        slots = proxy.slots
        read = 0
        while read < BUDGET:
            try:
                got = recv_batch(fd, buffer, slot, slots)
            except ConnectionRefusedError:
                read += 1
                continue  # ICMP port unreachable: the backend is down; idleness will tell
            except OSError:
                return
            at = 0
            # A first batch of one that drained the socket: the one reply of this wake-up.
            lone = read == 0 and len(got) == 1
            for size, _source in got:
                outcome = self._reply(proxy, now, view[at : at + size], lone)
                if outcome is not _SENT:
                    if outcome is _CLOSED:
                        return
                    now = proxy.now()  # the full path may have read a later time
                at += slot
            if len(got) < slots:
                # A wake-up with a single reply: request-reply traffic, read one at a time.
                self.single = read == 0 and len(got) == 1
                return
            read += slots

    def _read_each(self, proxy: UdpListenerProxy) -> None:
        """Replies with one recv each: without the batching binding, and for request-reply
        flows (`single`), whose every PROBE_EVERY-th wake-up drains the socket to notice a
        backlog."""
        now = proxy.now()
        recv_into = self.sock.recv_into
        buffer, view = proxy.buffer, proxy.view
        single = self.single
        if single:
            self.reads += 1
            if self.reads >= PROBE_EVERY:
                self.reads = 0
                single = False
        read = 0
        for _ in range(BUDGET):
            try:
                size = recv_into(buffer)
            except BlockingIOError:
                self.single = read == 1
                return
            except ConnectionRefusedError:
                continue  # ICMP port unreachable: the backend is down; idleness will tell
            except OSError:
                return
            read += 1
            outcome = self._reply(proxy, now, view[:size], single)
            if outcome is _SENT:
                if single:
                    return
                continue
            if outcome is _CLOSED:
                return
            now = proxy.now()  # the full path may have read a later time

    def _reply(self, proxy: UdpListenerProxy, now: float, payload: memoryview, lone: bool) -> int:
        """One reply from the backend: to its client on the fast path (_SENT), or through the
        core and its outputs (_FULL; _CLOSED when that closed the flow). `lone`: no other
        reply of this read joins it (`send_to_client` may then send it at once)."""
        flow = self.flow
        try:
            client = proxy.core.return_established(now, flow, payload)
            if client is not None:
                proxy.send_to_client(client, payload, lone)
                return _SENT
            proxy.core.handle_backend_datagram(now, flow, payload)
        except Exception as error:
            proxy.flow_failed(flow, error)
        proxy.apply()
        # A reply that closed the flow (responses reached): its socket is gone.
        return _FULL if flow in proxy.upstreams else _CLOSED

    # Timed: an upstream has no timer of its own (the flow's idle deadline is the core's).
    def deadline(self) -> float:
        return math.inf

    def expire(self, now: float) -> None:
        pass

    def abort(self, error: BaseException) -> None:
        proxy = self.proxy
        proxy.flow_failed(self.flow, error)
        proxy.close_upstream(self.flow)
        proxy.apply()
