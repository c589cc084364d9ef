"""The trio shell around one UDP listener's FlowManager (docs/udp.md, "The shell").

It owns the sockets and the clock, the core owns every decision. Reading the listener is a
drain loop into one reused buffer of `max_rx + 1` bytes (so an oversized datagram is seen as
such); each flow gets one connected upstream socket, read by its own task, whose replies go back
through the listener socket; one timer per listener follows the core's armed deadline; sends
that would block wait in bounded queues (64 per flow, 256 per listener). Backend selection for
`SelectBackend` is answered at once from the cluster's `BackendSelector`.

Every piece of one flow's work (a client datagram, an upstream reply, one output of the core,
an egress flush, the timer's closes) runs behind an exception boundary: an exception ends that
flow only (aborted in the core, its upstream socket closed), is logged with its traceback and
counted by reason (`ShellCounters.flow_errors`, `sozu_udp_flow_errors_total`). The listener
keeps reading and the other flows keep going.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Final

import msgspec
import trio

from sozu.worker.core.balancing import Backend, BackendSelector
from sozu.worker.core.udp.config import ClusterConfig
from sozu.worker.core.udp.egress import CLIENT_QUEUE_CAP, UPSTREAM_QUEUE_CAP, SendResult, WriteQueue
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

log = logging.getLogger("sozu.worker.udp")

CHECKPOINT_EVERY: Final = 128
# After the timer's work raised, the timer fires again this long after (never busy-looping).
TIMER_RETRY: Final = 1.0
Address = tuple[str, int]


class ShellCounters(msgspec.Struct):
    """Drops that only the shell sees (the core counts its own)."""

    no_backend: int = 0
    upstream_open_failed: int = 0
    wq_full: int = 0
    send_error: int = 0
    unknown_flow: int = 0
    # Flows ended because handling them raised, by reason (exception class name).
    flow_errors: dict[str, int] = msgspec.field(default_factory=dict)


class _Upstream:
    __slots__ = ("backend_id", "flow", "opened_at", "queue", "scope", "send", "sock", "watching")

    def __init__(self, flow: int, sock: socket.socket, backend_id: str, opened_at: float) -> None:
        self.flow = flow
        self.sock = sock
        self.backend_id = backend_id
        self.opened_at = opened_at
        self.queue: WriteQueue[bytes] = WriteQueue(UPSTREAM_QUEUE_CAP)
        self.send = _send_connected(sock)
        self.scope = trio.CancelScope()
        self.watching = False


def _send_to(sock: socket.socket, destination: Address) -> Callable[[bytes], SendResult]:
    def send(payload: bytes) -> SendResult:
        try:
            sock.sendto(payload, destination)
        except BlockingIOError:
            return SendResult.WOULD_BLOCK
        except OSError:
            return SendResult.ERROR
        return SendResult.SENT

    return send


def _send_connected(sock: socket.socket) -> Callable[[bytes], SendResult]:
    def send(payload: bytes) -> SendResult:
        try:
            sock.send(payload)
        except BlockingIOError:
            return SendResult.WOULD_BLOCK
        except OSError:
            return SendResult.ERROR
        return SendResult.SENT

    return send


class UdpListenerProxy:
    """Serves one UDP listener socket with one FlowManager."""

    def __init__(
        self,
        sock: socket.socket,
        core: FlowManager,
        selector_of: Callable[[str], BackendSelector | None],
        *,
        on_flow_closed: Callable[[str, float], None] | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.core = core
        self._selector_of = selector_of
        self._on_flow_closed = on_flow_closed
        self._buffer = bytearray(recv_buffer_size(core.max_rx_datagram_size()))
        self._upstreams: dict[int, _Upstream] = {}
        self._client_queues: dict[Address, WriteQueue[bytes]] = {}
        self._client_backlog = 0
        self._nursery: trio.Nursery | None = None
        self._timer_scope = trio.CancelScope()
        self._read_scope = trio.CancelScope()
        # Sockets of an empty slot this worker reads too (see `add_socket`), by fd.
        self._extra: dict[int, tuple[socket.socket, trio.CancelScope]] = {}
        self.counters = ShellCounters()
        self._drained = trio.Event()

    # -- control (called from the worker's control task) --------------------------------------

    def set_cluster(self, config: ClusterConfig) -> None:
        self.core.set_cluster(trio.current_time(), config)
        self._apply()

    def set_max_flows(self, max_flows: int) -> None:
        self.core.set_max_flows(trio.current_time(), max_flows)
        self._apply()

    def set_max_rx_datagram_size(self, size: int) -> None:
        self.core.set_max_rx_datagram_size(trio.current_time(), size)
        self._buffer = bytearray(recv_buffer_size(size))
        self._apply()

    def drain(self) -> None:
        """Stop reading the listener; live flows keep answering until idle (docs/udp.md,
        "The shell")."""
        self.core.drain(trio.current_time())
        self._read_scope.cancel()
        for fd in list(self._extra):
            self.remove_socket(fd)
        self._apply()

    def add_socket(self, sock: socket.socket) -> None:
        """Read another socket bound to this listener's address (an empty slot's) into the
        same flows; replies leave through this listener's own socket (same address)."""
        assert self._nursery is not None
        sock.setblocking(False)
        scope = trio.CancelScope()
        self._extra[sock.fileno()] = (sock, scope)
        self._nursery.start_soon(self._read_extra, sock, scope)

    def remove_socket(self, fd: int) -> None:
        """Stop reading an added socket and close this process's copy of it."""
        entry = self._extra.pop(fd, None)
        if entry is not None:
            entry[1].cancel()
            entry[0].close()

    async def _read_extra(self, sock: socket.socket, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await self._read_listener(sock)
            except OSError as error:
                log.error("UDP listener socket %d stopped: %s", sock.fileno(), error)

    def close_all(self) -> None:
        self.core.close_all(trio.current_time())
        self._apply()
        self._timer_scope.deadline = float("inf")

    @property
    def flow_count(self) -> int:
        return self.core.flow_count()

    # -- tasks ----------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: the listener drain loop, the timer and the upstream readers."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._timer)
                task_status.started()
                with self._read_scope:
                    await self._read_listener(self.sock)
                # Draining: flows go on until the core has closed them all.
                if self.core.flow_count():
                    await self._drained.wait()
                nursery.cancel_scope.cancel()
        finally:
            for upstream in self._upstreams.values():
                upstream.sock.close()  # cancelled with live flows: their sockets go too
            self._upstreams.clear()
            for extra, _ in self._extra.values():
                extra.close()
            self._extra.clear()

    async def _read_listener(self, sock: socket.socket) -> None:
        core = self.core
        spins = 0
        while True:
            buffer = self._buffer
            try:
                size, source = sock.recvfrom_into(buffer)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as error:
                if error.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue  # an ICMP error about an earlier send: nothing to read
                raise
            client = (source[0], source[1])
            try:
                core.handle_client_datagram(trio.current_time(), client, memoryview(buffer)[:size])
            except Exception as error:
                self._flow_failed(self._client_flow(client), error)
            self._apply()
            spins += 1
            if spins % CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()

    async def _timer(self) -> None:
        while True:
            with self._timer_scope:
                await trio.sleep_forever()
            self._timer_scope = trio.CancelScope()
            now = trio.current_time()
            try:
                self.core.handle_timeout(now)
            except Exception as error:
                self._timer_failed(now, error)
            else:
                self._apply()

    async def _read_upstream(self, flow: int, upstream: _Upstream) -> None:
        sock = upstream.sock
        buffer = bytearray(len(self._buffer))
        view = memoryview(buffer)
        spins = 0
        with upstream.scope:
            while True:
                if len(buffer) != len(self._buffer):
                    # max_rx changed live: read whole replies of the new size, or one cut to
                    # the old buffer would pass the core's size check and reach the client cut.
                    buffer = bytearray(len(self._buffer))
                    view = memoryview(buffer)
                try:
                    size = sock.recv_into(buffer)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                except ConnectionRefusedError:
                    continue  # ICMP port unreachable: the backend is down; idleness will tell
                except OSError:
                    return  # the flow was closed (its socket with it)
                try:
                    self.core.handle_backend_datagram(trio.current_time(), flow, view[:size])
                except Exception as error:
                    self._flow_failed(flow, error)
                self._apply()
                if flow not in self._upstreams:
                    return  # this reply closed the flow (responses reached)
                spins += 1
                if spins % CHECKPOINT_EVERY == 0:
                    await trio.lowlevel.checkpoint()

    # -- outputs --------------------------------------------------------------------------------

    def _apply(self) -> None:
        core = self.core
        while (output := core.poll_output()) is not None:
            try:
                self._do(output)
            except Exception as error:
                self._flow_failed(_flow_of(output), error)
        if not core.flow_count() and core.is_draining():
            self._drained.set()

    # -- the per-flow exception boundary ---------------------------------------------------------

    def _client_flow(self, client: Address) -> int | None:
        try:
            return self.core.client_flow(client)
        except Exception:
            log.exception("looking up the flow of %s failed", client)
            return None

    def _flow_failed(self, flow: int | None, error: Exception) -> None:
        """Handling `flow` (None: no flow yet) raised: count, log, and end that flow only.

        The core aborts the flow (its `CloseFlow` output, applied by the caller's `_apply`,
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
            self.core.abort_flow(trio.current_time(), flow, CloseReason.ABORTED)
        except Exception:
            log.exception("aborting the failed UDP flow %d failed too", flow)
            self._close_upstream(flow)

    def _timer_failed(self, now: float, error: Exception) -> None:
        """The timer's closes raised: the flows it was closing (those due) are closed one by
        one, each behind the boundary; the timer is re-armed whatever the core now says."""
        core = self.core
        self._flow_failed(None, error)
        try:
            due = [
                flow
                for flow in core.flow_ids()
                if (view := core.flow(flow)) is not None and view.idle_deadline <= now
            ]
        except Exception:
            log.exception("listing the due UDP flows failed")
            due = []
        self._apply()
        for flow in due:
            try:
                core.abort_flow(now, flow, CloseReason.IDLE)
            except Exception as abort_error:
                self._flow_failed(flow, abort_error)
            self._apply()
        deadline = self._timer_scope.deadline
        if core.flow_count() and not now < deadline < float("inf"):
            # No deadline (or a past one) armed with flows left: try again later.
            self._timer_scope.deadline = now + TIMER_RETRY

    def _do(self, output: OutputT) -> None:
        match output:
            case SendToBackend(flow=flow, payload=payload):
                upstream = self._upstreams.get(flow)
                if upstream is None:
                    self.counters.unknown_flow += 1
                elif upstream.queue.offer(payload, upstream.send) and not upstream.watching:
                    upstream.watching = True
                    assert self._nursery is not None
                    self._nursery.start_soon(self._flush_upstream, upstream)
            case SendToClient(dst=destination, payload=payload):
                self._send_to_client(destination, payload)
            case SelectBackend(flow=flow, cluster=cluster, key=key):
                self._select(flow, cluster, key)
            case OpenUpstream(flow=flow, backend=backend_id, addr=address):
                self._open_upstream(flow, backend_id, address)
            case CloseFlow(flow=flow):
                self._close_upstream(flow)
            case ArmTimer(deadline=deadline):
                self._timer_scope.deadline = deadline
            case _:
                pass  # Metric and Drop: the core's counters already hold them

    def _select(self, flow: int, cluster: str, key: int) -> None:
        selector = self._selector_of(cluster)
        backend: Backend | None = selector.select(key=key) if selector is not None else None
        now = trio.current_time()
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
        upstream = _Upstream(flow, sock, backend_id, trio.current_time())
        self._upstreams[flow] = upstream
        assert self._nursery is not None, "serve() must be running"
        self._nursery.start_soon(self._read_upstream, flow, upstream)

    def _upstream_failed(self, flow: int, backend_id: str, error: OSError) -> None:
        log.warning("upstream socket to %s for flow %d: %s", backend_id, flow, error)
        self.counters.upstream_open_failed += 1
        self.core.abort_flow(trio.current_time(), flow, CloseReason.ABORTED)

    def _close_upstream(self, flow: int) -> None:
        upstream = self._upstreams.pop(flow, None)
        if upstream is None:
            return  # a flow closed before its upstream opened (still awaiting a backend)
        upstream.scope.cancel()
        trio.lowlevel.notify_closing(upstream.sock)
        upstream.sock.close()
        self.counters.wq_full += upstream.queue.dropped_full
        self.counters.send_error += upstream.queue.send_errors
        if self._on_flow_closed is not None:
            self._on_flow_closed(upstream.backend_id, trio.current_time() - upstream.opened_at)

    def _send_to_client(self, destination: Address, payload: bytes) -> None:
        queue = self._client_queues.get(destination)
        if queue is None:
            # The common case sends at once and allocates nothing; a sender closure is built
            # only when this client's replies have to wait for the socket.
            try:
                self.sock.sendto(payload, destination)
                return
            except BlockingIOError:
                pass
            except OSError:
                self.counters.send_error += 1
                return
            send = _send_to(self.sock, destination)
            if self._client_backlog >= CLIENT_QUEUE_CAP:
                self.counters.wq_full += 1
                return
            queue = self._client_queues[destination] = WriteQueue(CLIENT_QUEUE_CAP)
            queue.push(payload)
            self._client_backlog += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._flush_client, destination, queue, send)
        elif self._client_backlog >= CLIENT_QUEUE_CAP:
            self.counters.wq_full += 1
        elif queue.push(payload):
            self._client_backlog += 1

    async def _flush_upstream(self, upstream: _Upstream) -> None:
        queue = upstream.queue
        with upstream.scope:
            while queue:
                try:
                    await trio.lowlevel.wait_writable(upstream.sock)
                except (trio.ClosedResourceError, OSError):
                    return
                try:
                    queue.flush(upstream.send)
                except Exception as error:
                    self._flow_failed(upstream.flow, error)
                    self._apply()
                    return
        upstream.watching = False

    async def _flush_client(
        self, destination: Address, queue: WriteQueue[bytes], send: Callable[[bytes], SendResult]
    ) -> None:
        try:
            while queue:
                await trio.lowlevel.wait_writable(self.sock)
                before = len(queue)
                try:
                    queue.flush(send)
                except Exception as error:
                    # This client's flow ends; its queued replies are dropped as send errors.
                    self._client_backlog -= before - len(queue)
                    queue.send_errors += len(queue)
                    self._flow_failed(self._client_flow(destination), error)
                    self._apply()
                    return
                self._client_backlog -= before - len(queue)
        finally:
            self._client_backlog -= len(queue)
            del self._client_queues[destination]
            self.counters.send_error += queue.send_errors


def _flow_of(output: OutputT) -> int | None:
    """The flow an output is about (None for timers, metrics and drops)."""
    if isinstance(output, SendToBackend | SendToClient | SelectBackend | OpenUpstream | CloseFlow):
        return output.flow
    return None
