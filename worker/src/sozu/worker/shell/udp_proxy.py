"""The shell around one UDP listener's FlowManager, on the worker's readiness loop (docs/udp.md,
"The shell").

It owns the sockets and the clock, the core owns every decision. The listener socket and each
flow's connected upstream socket (`UdpUpstream`, udp_upstream.py) are registered with the
worker's `Reactor`; their handlers drain the socket (up to BUDGET datagrams per wake-up, the
loop comes back for the rest) into reused buffers of `max_rx + 1` bytes per datagram, so an
oversized datagram is seen as such. Where the compiled binding is installed
(udp_batching.py), the listener is read with recvmmsg and the replies of one batch of loop
events leave in one sendmmsg (`flush_soon`), but for a lone reply (`send_to_client`). A datagram
of an established flow takes the core's fast path (`forward_established`,
`return_established`: one lookup, counters, one send, no output records); everything else
goes through the core's full path and its outputs.
The listener's timer is the loop's: the proxy is a `Timed` whose deadline is the core's armed
one. Sends that would block wait in bounded queues (64 per flow, 256 for the listener's
replies) flushed when the socket is writable. Backend selection for `SelectBackend` is
answered at once from the cluster's `BackendSelector`, with the cluster's live flows per
backend as loads (LEAST_LOADED and POWER_OF_TWO weigh them as on TCP).

Every piece of one flow's work (a client datagram, an upstream reply, one output of the core,
an egress flush, the timer's closes) runs behind an exception boundary: an exception ends that
flow only (aborted in the core, its upstream socket closed), is logged with its traceback and
counted by reason (`ShellCounters.flow_errors`, `sozu_udp_flow_errors_total`). The listener
keeps reading and the other flows keep going.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from sozu.worker.core.balancing import Backend, BackendSelector
from sozu.worker.core.udp.config import ClusterConfig
from sozu.worker.core.udp.egress import CLIENT_QUEUE_CAP
from sozu.worker.core.udp.limits import recv_buffer_size
from sozu.worker.core.udp.manager import FlowManager
from sozu.worker.core.udp.outputs import (
    ArmTimer,
    CloseFlow,
    CloseReason,
    OpenUpstream,
    OutputT,
    SelectBackend,
    SendToBackend,
    SendToClient,
)
from sozu.worker.shell import udp_batching
from sozu.worker.shell.reactor import HUP, IN, OUT, Reactor
from sozu.worker.shell.udp_upstream import BUDGET, UdpUpstream

if TYPE_CHECKING:
    from sozu_mmsg import SendBatch

log = logging.getLogger("sozu.worker.udp")

# After the timer's work raised, the timer fires again this long after (never busy-looping).
TIMER_RETRY: Final = 1.0
# ICMP errors about earlier sends, reported on a later receive: nothing to read.
_ICMP_ERRORS: Final = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})
# getsockopt(SOL_SOCKET, SO_MEMINFO): nine u32, the last the socket's drop count (sk_drops).
SO_MEMINFO: Final = getattr(socket, "SO_MEMINFO", 55)
_MEMINFO: Final = struct.Struct("9I")
Address = tuple[str, int]


class ShellCounters(msgspec.Struct):
    """Drops that only the shell sees (the core counts its own)."""

    no_backend: int = 0
    upstream_open_failed: int = 0
    wq_full: int = 0
    send_error: int = 0
    unknown_flow: int = 0
    # Datagrams the kernel dropped on the listener's sockets (receive queue full), as
    # SO_RXQ_OVFL reports them; sampled with SO_MEMINFO at metrics time.
    kernel_drops: int = 0
    # Flows ended because handling them raised, by reason (exception class name).
    flow_errors: dict[str, int] = msgspec.field(default_factory=dict)


class UdpListenerProxy:
    """Serves one UDP listener socket with one FlowManager on the worker's loop."""

    def __init__(
        self,
        sock: socket.socket,
        core: FlowManager,
        selector_of: Callable[[str], BackendSelector | None],
        *,
        reactor: Reactor,
        loads: dict[str, dict[str, int]] | None = None,
        on_flow_closed: Callable[[str, float], None] | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.core = core
        # Public, with `buffer`, `view`, `upstreams`, `backlog`, `batch`, `recv_batch`,
        # `slot_buffer`, `slot_view`, `slots` and the methods apply, flow_failed, close_upstream,
        # send_to_client and client_send_failed: what each flow's UdpUpstream
        # (udp_upstream.py) uses of its proxy.
        self.reactor = reactor
        self.now = reactor.now
        self._selector_of = selector_of
        # Live flows per backend, by cluster (shared by the listeners of one worker).
        self._loads = loads if loads is not None else {}
        self._on_flow_closed = on_flow_closed
        self.buffer = bytearray(recv_buffer_size(core.max_rx_datagram_size()))
        self.view = memoryview(self.buffer)
        # With batching (udp_batching.py): the recvmmsg slots (the listener's reads and the
        # upstreams' share them: one handler runs at a time, and what a datagram leaves
        # behind is a copy), and the replies of one batch of events, sent with one sendmmsg
        # once the batch is done (`flush_soon`).
        self.batch: SendBatch | None = None
        self.soon_queued = False
        self.slots = 0
        self.slot_buffer = bytearray()
        self.slot_view = memoryview(self.slot_buffer)
        self.recv_batch: udp_batching.Receiver | None = None
        if udp_batching.available():
            self.batch = udp_batching.new_send_batch()
            self.recv_batch = udp_batching.receiver()
            self._size_slots()
        self.upstreams: dict[int, UdpUpstream] = {}
        # Replies waiting for the listener socket to become writable, in order.
        self.backlog: deque[tuple[bytes, Address]] = deque()
        self._reading = False  # the listener is registered for reads
        self._registered = False
        # Sockets of an empty slot this worker reads too (see `add_socket`), by fd.
        self._extra: dict[int, socket.socket] = {}
        self.counters = ShellCounters()
        self._drops_seen: dict[int, int] = {}  # by fd: the socket's drop count last sampled
        self._quiet_until = -math.inf  # upstream-open failures are logged at most once a second
        self._done = trio.Event()
        # Timed (the loop's timer for this listener): the core's armed deadline.
        self.armed = math.inf
        self._deadline = math.inf

    # -- control (called from the worker's control task) --------------------------------------

    def set_cluster(self, config: ClusterConfig) -> None:
        self.core.set_cluster(self.now(), config)
        self.apply()

    def set_max_flows(self, max_flows: int) -> None:
        self.core.set_max_flows(self.now(), max_flows)
        self.apply()

    def set_max_rx_datagram_size(self, size: int) -> None:
        self.core.set_max_rx_datagram_size(self.now(), size)
        self.buffer = bytearray(recv_buffer_size(size))
        self.view = memoryview(self.buffer)
        if self.batch is not None:
            self._size_slots()
        self.apply()

    def _size_slots(self) -> None:
        slot = len(self.buffer)
        self.slots = udp_batching.recv_slots(slot)
        self.slot_buffer = bytearray(slot * self.slots)
        self.slot_view = memoryview(self.slot_buffer)

    def drain(self) -> None:
        """Stop reading the listener; live flows keep answering until idle (docs/udp.md,
        "The shell")."""
        self.core.drain(self.now())
        self._reading = False
        self._watch_listener()
        for fd in list(self._extra):
            self.remove_socket(fd)
        self.apply()

    def add_socket(self, sock: socket.socket) -> None:
        """Read another socket bound to this listener's address (an empty slot's) into the
        same flows; replies leave through this listener's own socket (same address)."""
        sock.setblocking(False)
        fd = sock.fileno()
        self._extra[fd] = sock
        self.reactor.register(fd, IN, lambda mask: self._read(sock), self)

    def remove_socket(self, fd: int) -> None:
        """Stop reading an added socket and close this process's copy of it."""
        sock = self._extra.pop(fd, None)
        if sock is not None:
            self.reactor.unregister(fd)
            sock.close()

    def close_all(self) -> None:
        self.core.close_all(self.now())
        self.apply()
        self._deadline = math.inf

    @property
    def flow_count(self) -> int:
        return self.core.flow_count()

    def sample_kernel_drops(self) -> None:
        """Add the kernel's receive drops on the sockets read since the last sample."""
        seen = self._drops_seen
        live: dict[int, int] = {}
        for sock in (self.sock, *self._extra.values()):
            try:
                drops = _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[8]
            except OSError:
                continue  # closed, or a kernel without SO_MEMINFO
            fd = sock.fileno()
            self.counters.kernel_drops += max(0, drops - seen.get(fd, 0))
            live[fd] = drops
        self._drops_seen = live

    # -- serving --------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on the loop until cancelled, or drained with no flow left."""
        self._reading = not self.core.is_draining()
        self.reactor.register(self.sock.fileno(), self._listener_mask(), self._listener_ready, self)
        self._registered = True
        self.reactor.arm(self)
        try:
            task_status.started()
            await self._done.wait()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        reactor = self.reactor
        batch = self.batch
        if batch is not None and len(batch):
            # The replies of this batch still go out; what finds no room is dropped (the
            # backlog's datagrams are, as the socket goes).
            with contextlib.suppress(OSError):
                self.counters.send_error += batch.flush(self.sock.fileno())
            self.counters.send_error += len(batch.take())
        if self._registered:
            reactor.unregister(self.sock.fileno())
            self._registered = False
        for upstream in self.upstreams.values():
            reactor.unregister(upstream.fd)
            upstream.sock.close()  # stopped with live flows: their sockets go too
        self.upstreams.clear()
        for fd, extra in self._extra.items():
            reactor.unregister(fd)
            extra.close()
        self._extra.clear()
        self._deadline = math.inf
        self._done.set()

    def _listener_mask(self) -> int:
        return (IN if self._reading else 0) | (OUT if self.backlog else 0)

    def _watch_listener(self) -> None:
        if self._registered:
            self.reactor.modify(self.sock.fileno(), self._listener_mask())

    # Timed: the listener's one timer.
    def deadline(self) -> float:
        """The core's armed deadline (or the retry after a failed timer). A fast path that
        refreshed the flow holding the minimum moved it later without an ArmTimer record: the
        loop's entry for the earlier one fires, reads the later one here and waits again."""
        deadline = self._deadline
        armed = self.core.poll_timeout()
        if armed is not None and deadline < armed:
            self._deadline = deadline = armed
        return deadline

    def expire(self, now: float) -> None:
        self._deadline = math.inf
        try:
            self.core.handle_timeout(now)
        except Exception as error:
            self._timer_failed(now, error)
        else:
            self.apply()

    def abort(self, error: BaseException) -> None:
        """A failure outside any flow's boundary: this listener stops, the worker goes on."""
        log.error("UDP listener %s stopped by an internal error", self.sock, exc_info=error)
        self._shutdown()

    # -- handlers (called by the loop) ----------------------------------------------------------

    def _listener_ready(self, mask: int) -> None:
        if mask & OUT:
            self._flush_backlog()
        if mask & IN and self._reading:
            self._read(self.sock)
        elif mask & HUP and not mask & IN:
            self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # clear a pending error

    def _read(self, sock: socket.socket) -> None:
        """Drain up to BUDGET client datagrams from `sock` (the listener's or an added one)."""
        if self.recv_batch is not None:
            self._read_batches(sock, self.recv_batch)
            return
        # One reading of the clock per wake-up: deadlines are seconds, a wake-up ~0.1 ms.
        now = self.now()
        recvfrom_into = sock.recvfrom_into
        buffer, view = self.buffer, self.view
        for _ in range(BUDGET):
            try:
                size, source = recvfrom_into(buffer)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in _ICMP_ERRORS:
                    continue
                raise
            if len(source) != 2:
                source = (source[0], source[1])  # IPv6: drop flowinfo and scope id
            if not self._client_datagram(now, source, view[:size]):
                now = self.now()  # the full path read the clock since: no going back

    def _read_batches(self, sock: socket.socket, recv_batch: udp_batching.Receiver) -> None:
        """`_read` with recvmmsg: up to BUDGET datagrams, a batch of slots per call; a batch
        that comes back short means the socket is drained (no read that finds it empty)."""
        now = self.now()
        client_datagram = self._client_datagram
        fd = sock.fileno()
        buffer, view = self.slot_buffer, self.slot_view
        slot = len(self.buffer)
        slots = self.slots
        read = 0
        while read < BUDGET:
            try:
                got = recv_batch(fd, buffer, slot, slots)
            except OSError as error:
                if error.errno in _ICMP_ERRORS:
                    read += 1
                    continue
                if error.errno == errno.ENOSYS:
                    self._stop_batching(error)
                    self._read(sock)
                    return
                raise
            at = 0
            for size, source in got:
                if not client_datagram(now, source, view[at : at + size]):
                    now = self.now()  # the full path read the clock since: no going back
                at += slot
            if len(got) < slots:
                return
            read += slots

    def _client_datagram(self, now: float, source: Address, payload: memoryview) -> bool:
        """One client datagram: the fast path for an established flow (True), the core and
        its outputs otherwise (False: they may have read a later time, the caller's `now` is
        then behind the core's)."""
        try:
            flow = self.core.forward_established(now, source, payload)
            if flow >= 0:
                upstream = self.upstreams.get(flow)
                if upstream is None:
                    self.counters.unknown_flow += 1
                elif upstream.queue:
                    upstream.queue.push(bytes(payload))
                else:
                    try:
                        upstream.sock.send(payload)
                    except OSError as error:
                        self._backend_send_failed(upstream, payload, error)
                return True
            self.core.handle_client_datagram(now, source, payload)
        except Exception as error:
            self.flow_failed(self._client_flow(source), error)
        self.apply()
        return False

    # -- outputs --------------------------------------------------------------------------------

    def apply(self) -> None:
        core = self.core
        deadline = self._deadline
        while (output := core.poll_output()) is not None:
            try:
                self._do(output)
            except Exception as error:
                self.flow_failed(_flow_of(output), error)
        if self._deadline != deadline:
            self.reactor.arm(self)
        if not core.flow_count() and core.is_draining():
            self._done.set()

    # -- the per-flow exception boundary ---------------------------------------------------------

    def _client_flow(self, client: Address) -> int | None:
        try:
            return self.core.client_flow(client)
        except Exception:
            log.exception("looking up the flow of %s failed", client)
            return None

    def flow_failed(self, flow: int | None, error: BaseException) -> None:
        """Handling `flow` (None: no flow yet) raised: count, log, and end that flow only.

        The core aborts the flow (its `CloseFlow` output, applied by the caller's `apply`,
        closes the upstream socket); if the core cannot, the shell closes its side at once.
        """
        reason = type(error).__name__
        errors = self.counters.flow_errors
        errors[reason] = errors.get(reason, 0) + 1
        what = "UDP work outside any flow" if flow is None else f"UDP flow {flow}"
        log.error("%s ended by an internal error", what, exc_info=error)
        if flow is None:
            return
        try:
            self.core.abort_flow(self.now(), flow, CloseReason.ABORTED)
        except Exception:
            log.exception("aborting the failed UDP flow %d failed too", flow)
            self.close_upstream(flow)

    def _timer_failed(self, now: float, error: Exception) -> None:
        """The timer's closes raised: the flows it was closing (those due) are closed one by
        one, each behind the boundary; the timer is re-armed whatever the core now says."""
        core = self.core
        self.flow_failed(None, error)
        try:
            due = [
                flow
                for flow in core.flow_ids()
                if (view := core.flow(flow)) is not None and view.idle_deadline <= now
            ]
        except Exception:
            log.exception("listing the due UDP flows failed")
            due = []
        self.apply()
        for flow in due:
            try:
                core.abort_flow(now, flow, CloseReason.IDLE)
            except Exception as abort_error:
                self.flow_failed(flow, abort_error)
            self.apply()
        if core.flow_count() and not now < self._deadline < math.inf:
            # No deadline (or a past one) armed with flows left: try again later.
            self._deadline = now + TIMER_RETRY
            self.reactor.arm(self)

    def _do(self, output: OutputT) -> None:
        match output:
            case SendToBackend(flow=flow, payload=payload):
                upstream = self.upstreams.get(flow)
                if upstream is None:
                    self.counters.unknown_flow += 1
                else:
                    self._to_backend(upstream, payload)
            case SendToClient(dst=destination, payload=payload):
                self.send_to_client(destination, payload)
            case SelectBackend(flow=flow, cluster=cluster, key=key):
                self._select(flow, cluster, key)
            case OpenUpstream(flow=flow, backend=backend_id, addr=address):
                self._open_upstream(flow, backend_id, address)
            case CloseFlow(flow=flow):
                self.close_upstream(flow)
            case ArmTimer(deadline=deadline):
                self._deadline = deadline
            case _:
                pass  # Metric and Drop: the core's counters already hold them

    def _select(self, flow: int, cluster: str, key: int) -> None:
        selector = self._selector_of(cluster)
        loads = self._loads.get(cluster)
        backend: Backend | None = (
            selector.select(key=key, loads=loads) if selector is not None else None
        )
        now = self.now()
        if backend is None:
            self.counters.no_backend += 1
            self.core.abort_flow(now, flow, CloseReason.ABORTED)
            return
        self.core.handle_backend_resolved(now, flow, backend.id, backend.address)

    def _open_upstream(self, flow: int, backend_id: str, address: Address) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        try:
            sock = socket.socket(
                family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            )
        except OSError as error:
            self._upstream_failed(flow, backend_id, error)
            return
        try:
            sock.connect(address)
        except OSError as error:
            sock.close()
            self._upstream_failed(flow, backend_id, error)
            return
        except BaseException:
            sock.close()  # anything else (a port out of range, ...): the boundary ends the flow
            raise
        view = self.core.flow(flow)
        if view is not None:
            # The flow's own creation time (this wake-up's): one float for both.
            cluster, opened_at = view.config.cluster, view.created_at
        else:
            cluster, opened_at = "", self.now()
        upstream = UdpUpstream(self, flow, sock, cluster, backend_id, opened_at)
        self.upstreams[flow] = upstream
        loads = self._loads.setdefault(cluster, {})
        loads[backend_id] = loads.get(backend_id, 0) + 1
        self.reactor.register(upstream.fd, IN, upstream, upstream)

    def _upstream_failed(self, flow: int, backend_id: str, error: OSError) -> None:
        self.counters.upstream_open_failed += 1
        now = self.now()
        if now >= self._quiet_until:
            # At most one line a second: a flood of new sources meeting EMFILE or exhausted
            # local ports is a flood of these (each is counted as shed).
            self._quiet_until = now + 1.0
            log.warning(
                "upstream socket to %s for flow %d: %s (%d failed so far)",
                backend_id,
                flow,
                error,
                self.counters.upstream_open_failed,
            )
        self.core.abort_flow(now, flow, CloseReason.ABORTED)

    def close_upstream(self, flow: int) -> None:
        upstream = self.upstreams.pop(flow, None)
        if upstream is None:
            return  # a flow closed before its upstream opened (still awaiting a backend)
        self.reactor.close(upstream.sock)
        queue = upstream.queue
        if queue is not None:
            self.counters.wq_full += queue.dropped_full
            self.counters.send_error += queue.send_errors
        loads = self._loads.get(upstream.cluster)
        if loads is not None:
            left = loads.get(upstream.backend_id, 0) - 1
            if left > 0:
                loads[upstream.backend_id] = left
            else:
                loads.pop(upstream.backend_id, None)
        if self._on_flow_closed is not None:
            self._on_flow_closed(upstream.backend_id, self.now() - upstream.opened_at)

    def _to_backend(self, upstream: UdpUpstream, payload: bytes | memoryview) -> None:
        """Send on the flow's upstream socket, or queue behind what already waits."""
        queue = upstream.queue
        if queue:
            queue.push(bytes(payload))
            return
        try:
            upstream.sock.send(payload)
        except OSError as error:
            self._backend_send_failed(upstream, payload, error)

    def _backend_send_failed(
        self, upstream: UdpUpstream, payload: bytes | memoryview, error: OSError
    ) -> None:
        """A send to the backend failed: a full socket queues the datagram (and watches for
        room), anything else drops it and counts."""
        if isinstance(error, BlockingIOError):
            upstream.pending().push(bytes(payload))
            self.reactor.modify(upstream.fd, IN | OUT)
        else:
            self.counters.send_error += 1

    def send_to_client(
        self, destination: Address, payload: bytes | memoryview, lone: bool = False
    ) -> None:
        """Behind the egress FIFO, into the batch's sendmmsg, or with one sendto. `lone`: no
        other reply of the caller's read follows (request-reply traffic at a low rate); when
        the loop's batch is that one event too and nothing waits, one sendto now costs less
        than a batch of one sent at the batch's end."""
        if self.backlog:
            self._queue_for_client(destination, payload)
            return
        batch = self.batch
        if batch is not None and not (lone and self.reactor.lone and not len(batch)):
            if not batch.add(payload, destination):
                self.flush_soon()  # full: what it holds goes first
                if self.backlog or not batch.add(payload, destination):
                    self._queue_for_client(destination, payload)
                    return
            if not self.soon_queued:
                self.reactor.soon(self)
            return
        try:
            self.sock.sendto(payload, destination)
        except OSError as error:
            self.client_send_failed(destination, payload, error)

    def client_send_failed(
        self, destination: Address, payload: bytes | memoryview, error: OSError
    ) -> None:
        """A send to a client failed: a full listener socket queues the datagram behind it,
        anything else drops it and counts."""
        if isinstance(error, BlockingIOError):
            self._queue_for_client(destination, payload)
        else:
            self.counters.send_error += 1

    def _queue_for_client(self, destination: Address, payload: bytes | memoryview) -> None:
        backlog = self.backlog
        if len(backlog) >= CLIENT_QUEUE_CAP:
            self.counters.wq_full += 1
            return
        backlog.append((bytes(payload), destination))
        if len(backlog) == 1:
            self._watch_listener()

    def flush_soon(self) -> None:
        """Send the replies batched since the last flush (the loop calls it once the batch of
        events is done); what the socket has no room for waits in the backlog, in order."""
        batch = self.batch
        if batch is None:
            return  # batching was turned off since this flush was queued
        try:
            self.counters.send_error += batch.flush(self.sock.fileno())
        except OSError as error:
            if error.errno != errno.ENOSYS:
                self.counters.send_error += len(batch.take())  # the listener socket is gone
                return
            self._stop_batching(error)
            for payload, destination in batch.take():
                self.send_to_client(destination, payload)
            return
        if len(batch):
            for payload, destination in batch.take():
                self._queue_for_client(destination, payload)

    def _stop_batching(self, error: OSError) -> None:
        """The kernel lacks recvmmsg or sendmmsg: one system call per datagram from now on."""
        log.warning(
            "UDP listener %s: %s; reading and sending one datagram at a time", self.sock, error
        )
        self.batch = None
        self.recv_batch = None

    def _flush_backlog(self) -> None:
        backlog = self.backlog
        sendto = self.sock.sendto
        while backlog:
            payload, destination = backlog[0]
            try:
                sendto(payload, destination)
            except BlockingIOError:
                return
            except OSError:
                self.counters.send_error += 1
            backlog.popleft()
        self._watch_listener()


def _flow_of(output: OutputT) -> int | None:
    """The flow an output is about (None for timers, metrics and drops)."""
    if isinstance(output, SendToBackend | SendToClient | SelectBackend | OpenUpstream | CloseFlow):
        return output.flow
    return None
