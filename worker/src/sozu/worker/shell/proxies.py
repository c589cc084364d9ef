"""A worker's listeners: adopted sockets, the readiness loop, clusters and metrics.

Listener sockets arrive from the supervisor over the SCM socket and wait, by (proxy,
address), for their ActivateListener. TCP, HTTP and HTTPS listeners are then served on the
worker's readiness loop (`loop.Reactor`, one trio task): accepting, sessions and their timers
all run there, and stopping a listener's accepting (deactivation, soft stop) leaves its
sessions running. UDP listeners are served by `UdpListeners` (trio tasks).
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Callable
from typing import Protocol, cast

import trio

from sozu.command.fdpass import FdPassingError, PassedListener, receive_listeners
from sozu.command.metrics import Labels, MetricsRegistry, MetricsSnapshot
from sozu.command.responses import Event, EventKind
from sozu.command.state import ConfigState
from sozu.command.types import (
    HttpListenerConfig,
    ListenerType,
    TcpListenerConfig,
    UdpListenerConfig,
)
from sozu.worker.core.cluster_view import backends_of, policy_of
from sozu.worker.core.clusters import TcpCluster
from sozu.worker.core.per_ip import DEFAULT_RETRY_AFTER, PerIpLimits
from sozu.worker.core.tcp_session import TcpContext, TcpCounters
from sozu.worker.core.udp.health import HealthEvent
from sozu.worker.shell.accepting import Acceptor
from sozu.worker.shell.connection_limit import ConnectionLimit
from sozu.worker.shell.http_listener import HttpServer
from sozu.worker.shell.http_listeners import HttpListeners
from sozu.worker.shell.reactor import LoopStats, Reactor
from sozu.worker.shell.tcp_listener import TcpListener, TcpServer
from sozu.worker.shell.udp_listeners import UdpListeners

log = logging.getLogger("sozu.worker")

ListenerKey = tuple[ListenerType, str]


class SocketServer(Protocol):
    """A served listener that can serve more sockets bound to its address."""

    def add_socket(self, sock: socket.socket) -> None: ...

    def remove_socket(self, fd: int) -> None: ...


SOCKET_WAIT = 5.0
DEFAULT_MAX_CONNECTIONS = 10_000


class Proxies:
    """Everything a worker serves; `start` gives it the nurseries to run in."""

    def __init__(self, state: ConfigState, on_event: Callable[[Event], None]) -> None:
        self.state = state
        self.registry = MetricsRegistry()
        self._on_event = on_event
        self._received: dict[ListenerKey, socket.socket] = {}
        self._arrived = trio.Event()
        self._adopted: dict[ListenerKey, socket.socket] = {}
        # Sockets of empty slots: received, not yet adopted; and adopted (served), by slot.
        self._foreign_arrived: dict[int, list[tuple[ListenerKey, socket.socket]]] = {}
        self._foreign: dict[int, list[tuple[ListenerKey, socket.socket]]] = {}
        self._counters: dict[str, TcpCounters] = {}
        self._clusters: dict[str, TcpCluster] = {}
        self._cluster_of_listener: dict[str, str] = {}
        # Backend gauges set by the last snapshot, to drop those of backends gone since.
        self._backend_gauges: set[tuple[str, str]] = set()
        self._not_served_logged: set[ListenerType] = set()
        self.limit = ConnectionLimit(DEFAULT_MAX_CONNECTIONS)
        # Set once the listener sockets were returned (an upgrade: this worker drains).
        self.returned = False
        self.per_ip = PerIpLimits()
        # False with `disable_cluster_metrics`: snapshots leave out per-cluster and
        # per-backend series.
        self.cluster_metrics = True
        self._tasks: trio.Nursery | None = None
        self._handlers: trio.Nursery | None = None
        self.reactor = Reactor()
        self.acceptor = Acceptor(self.reactor, lambda: self.limit)
        self.tcp = TcpServer(self.acceptor)
        self.udp = UdpListeners(state, self.registry, self._health_event, self.reactor)
        self.http = HttpListeners(
            state,
            self.registry,
            HttpServer(self.acceptor),
            self._clusters,
            self._health_check_event,
            self.per_ip,
        )

    def start(self, tasks: trio.Nursery, handlers: trio.Nursery) -> None:
        self._tasks, self._handlers = tasks, handlers
        tasks.start_soon(self.reactor.run)
        self.udp.start(tasks, handlers)
        self.http.start(tasks)

    def configure(
        self,
        max_connections: int,
        buffer_size: int = 0,
        *,
        max_connections_per_ip: int = 0,
        retry_after: int = DEFAULT_RETRY_AFTER,
        cluster_metrics: bool = True,
        drain_timeout: float = 60.0,
    ) -> None:
        self.limit = ConnectionLimit(max(1, max_connections))
        self.udp.max_connections = max_connections
        self.udp.buffer_size = buffer_size
        self.http.configure(drain_timeout, buffer_size)
        self.per_ip.configure(max_connections_per_ip, retry_after)
        self.cluster_metrics = cluster_metrics

    # -- sockets from the supervisor

    async def receive_sockets(self, scm: trio.socket.SocketType) -> None:
        """Store every listener socket the supervisor sends, until it closes the channel."""
        while True:
            try:
                batch = await receive_listeners(scm)
            except FdPassingError as error:
                log.info("listener socket channel: %s", error)
                return
            for received in batch:
                key = (received.listener.proxy, received.listener.address)
                if received.listener.slot is not None:
                    # An empty slot's socket, served here too until ReleaseListeners.
                    arriving = self._foreign_arrived.setdefault(received.listener.slot, [])
                    arriving.append((key, received.sock))
                    continue
                old = self._received.pop(key, None)
                if old is not None:
                    old.close()
                self._received[key] = received.sock
            self._arrived.set()
            self._arrived = trio.Event()

    async def take_socket(self, key: ListenerKey, patience: float = SOCKET_WAIT) -> socket.socket:
        """The listener's socket, waiting (bounded) if it has not arrived yet; OSError if not."""
        with trio.move_on_after(patience):
            while key not in self._received:
                await self._arrived.wait()
        sock = self._received.pop(key, None)
        if sock is None:
            raise OSError(f"no socket received for {key[0]} listener {key[1]} in {patience:g} s")
        return sock

    async def adopt_slot(self, slot: int, count: int, patience: float = SOCKET_WAIT) -> int:
        """Serve the `count` sockets of empty slot `slot` that the supervisor sent, with the
        listeners already served here; the number now served. OSError if they did not come."""
        self.release_slot(slot)
        with trio.move_on_after(patience):
            while len(self._foreign_arrived.get(slot, ())) < count:
                await self._arrived.wait()
        arrived = self._foreign_arrived.pop(slot, [])
        if len(arrived) < count:
            for _, sock in arrived:
                sock.close()
            raise OSError(f"{len(arrived)} of {count} sockets of slot {slot} received")
        served: list[tuple[ListenerKey, socket.socket]] = []
        for key, sock in arrived:
            listener = self._served_listener(key)
            if listener is None:
                sock.close()  # not active here (deactivated meanwhile)
                continue
            listener.add_socket(sock)
            served.append((key, sock))
        self._foreign[slot] = served
        log.info("serving %d listener sockets of empty slot %d", len(served), slot)
        return len(served)

    def release_slot(self, slot: int) -> None:
        """Stop serving slot `slot`'s sockets (its own worker is back) and close them."""
        for key, sock in self._foreign.pop(slot, []):
            listener = self._served_listener(key)
            if listener is not None:
                listener.remove_socket(sock.fileno())
            else:
                sock.close()

    def listener_sockets(self, own_slot: int) -> list[tuple[PassedListener, socket.socket]]:
        """Every listener socket this worker holds, marked with the slot it belongs to (a
        supervisor taking this worker over uses them as its own)."""
        held: list[tuple[PassedListener, socket.socket]] = []
        for address, listener in self.tcp.listeners.items():
            if listener.own is not None:
                entry = PassedListener(address=address, proxy="TCP", slot=own_slot)
                held.append((entry, listener.own))
        for address, https, sock in self.http.served_sockets():
            proxy: ListenerType = "HTTPS" if https else "HTTP"
            held.append((PassedListener(address=address, proxy=proxy, slot=own_slot), sock))
        for address, sock in self.udp.served_sockets():
            held.append((PassedListener(address=address, proxy="UDP", slot=own_slot), sock))
        for (proxy, address), sock in (*self._adopted.items(), *self._received.items()):
            held.append((PassedListener(address=address, proxy=proxy, slot=own_slot), sock))
        for slot, adopted in self._foreign.items():
            for (proxy, address), sock in adopted:
                held.append((PassedListener(address=address, proxy=proxy, slot=slot), sock))
        return held

    def _release_listener(self, key: ListenerKey) -> None:
        for slot, adopted in self._foreign.items():
            kept = []
            for entry in adopted:
                if entry[0] == key:
                    listener = self._served_listener(key)
                    if listener is not None:
                        listener.remove_socket(entry[1].fileno())
                    else:
                        entry[1].close()
                else:
                    kept.append(entry)
            self._foreign[slot] = kept

    def _served_listener(self, key: ListenerKey) -> SocketServer | None:
        proxy, address = key
        if proxy == "TCP":
            return self.tcp.listeners.get(address)
        if proxy == "UDP":
            return self.udp.served_proxy(address)
        return self.http.served_listener(address)

    # -- listeners

    async def start_listener(self, proxy: ListenerType, address: str, sock: socket.socket) -> None:
        config = self.state.listener(proxy, address)
        if isinstance(config, UdpListenerConfig) and proxy == "UDP":
            await self.udp.start_listener(address, config, sock)
            return
        if isinstance(config, HttpListenerConfig) and proxy in ("HTTP", "HTTPS"):
            self.http.start_listener(address, config, sock)
            return
        if not isinstance(config, TcpListenerConfig) or proxy != "TCP":
            if proxy not in self._not_served_logged:
                self._not_served_logged.add(proxy)
                log.info("%s listener sockets are adopted but not served yet", proxy)
            old = self._adopted.pop((proxy, address), None)
            if old is not None:
                old.close()
            self._adopted[(proxy, address)] = sock
            return

        def cluster_of() -> TcpCluster | None:
            cluster_id = self._cluster_of_listener.get(address)
            return None if cluster_id is None else self._clusters.get(cluster_id)

        counters = self._counters.setdefault(address, TcpCounters())
        context = TcpContext(
            config,
            cluster_of,
            counters=counters,
            per_ip=self.per_ip,
            cluster_record=self.state.clusters.get,
        )
        listener = TcpListener(self.tcp, address, context)
        listener.durations = self.registry.histogram(
            "sozu_tcp_connection_duration_seconds", listener=address
        )
        listener.own = sock
        listener.add_socket(sock)
        self.tcp.listeners[address] = listener
        listener.start_accepting()
        log.info("serving TCP listener %s", address)

    async def stop_listener(self, proxy: ListenerType, address: str) -> None:
        """Stop accepting and close this worker's copy of the socket; sessions go on."""
        self._release_listener((proxy, address))
        served = self.tcp.listeners.pop(address, None) if proxy == "TCP" else None
        if served is not None:
            served.close()
        if proxy == "UDP":
            await self.udp.stop_listener(address)
        if proxy in ("HTTP", "HTTPS"):
            self.http.stop_listener(address)
        for pool in (self._adopted, self._received):
            sock = pool.pop((proxy, address), None)
            if sock is not None:
                sock.close()

    def refresh_listener(self, address: str) -> None:
        """New timeouts or PROXY settings apply to new sessions."""
        served = self.tcp.listeners.get(address)
        config = self.state.tcp_listeners.get(address)
        if served is not None and config is not None:
            served.context.config = config

    def stop_accepting(self) -> None:
        for served in self.tcp.listeners.values():
            served.stop_accepting()
        self.udp.drain()
        self.http.stop_accepting()

    async def drain(self, patience: float) -> bool:
        """Wait until every session and UDP flow has ended, at most `patience` seconds; True
        if they did."""
        with trio.move_on_after(patience):
            await self.limit.wait_idle()
            await self.udp.wait_drained()
            return True
        return False

    # -- clusters

    def tcp_frontend_changed(self, address: str) -> None:
        """A TCP frontend at `address` was added or removed: which cluster it serves."""
        serving = [
            cluster_id
            for cluster_id, fronts in self.state.tcp_fronts.items()
            if any(front.address == address for front in fronts)
        ]
        if serving:
            # Several clusters on one address (the state allows it live): the last one, as
            # a scan of the state gives.
            self._cluster_of_listener[address] = serving[-1]
        else:
            self._cluster_of_listener.pop(address, None)

    def refresh_cluster(self, cluster_id: str) -> None:
        """Bring one cluster's runtime in line with the state (its back-off and loads are
        kept): created once a TCP or HTTP frontend points at it, updated after each change.
        Nothing else is touched, so a change costs the same with 10 or 10,000 clusters."""
        state = self.state
        cluster = state.clusters.get(cluster_id)
        if cluster is not None and (
            cluster_id in state.tcp_fronts or self.http.fronted(cluster_id)
        ):
            policy = policy_of(cluster, udp=False)
            backends = backends_of(state, cluster_id)
            send_proxy = cluster.proxy_protocol in ("SEND_HEADER", "RELAY_HEADER")
            known = self._clusters.get(cluster_id)
            if known is None:
                created = TcpCluster(
                    cluster_id,
                    policy,
                    backends,
                    rng=random.Random(),
                    send_proxy=send_proxy,
                    on_event=self._event,
                )
                created.connect_seconds = self.registry.histogram(
                    "sozu_backend_connect_seconds", cluster=cluster_id
                )
                self._clusters[cluster_id] = created
            else:
                known.update(policy, backends, send_proxy=send_proxy)
        self.http.refresh_cluster(cluster_id)

    def _health_event(self, event: HealthEvent) -> None:
        self._on_event(
            Event(kind=event.kind, cluster_id=event.cluster_id, backend_id=event.backend_id)
        )

    def _health_check_event(self, kind: str, cluster_id: str, backend_id: str | None) -> None:
        self._on_event(
            Event(kind=cast(EventKind, kind), cluster_id=cluster_id, backend_id=backend_id)
        )

    def _event(self, kind: str, cluster_id: str, backend_id: str) -> None:
        self._on_event(
            Event(kind=cast(EventKind, kind), cluster_id=cluster_id, backend_id=backend_id)
        )

    # -- metrics

    def snapshot(self) -> MetricsSnapshot:
        """The registry, with the listeners' and clusters' plain counters folded in."""
        registry = self.registry
        for address, c in self._counters.items():
            registry.counter("sozu_tcp_connections_total", listener=address).value = c.accepted
            registry.gauge("sozu_tcp_active_connections", listener=address).value = c.active
            registry.counter("sozu_tcp_bytes_in_total", listener=address).value = c.bytes_in
            registry.counter("sozu_tcp_bytes_out_total", listener=address).value = c.bytes_out
            registry.counter("sozu_tcp_retries_total", listener=address).value = c.retries
            registry.counter("sozu_tcp_refused_total", listener=address).value = c.no_backend
            registry.counter(
                "sozu_tcp_proxy_protocol_errors_total", listener=address
            ).value = c.proxy_protocol_errors
            registry.counter(
                "sozu_tcp_rejected_per_ip_total", listener=address
            ).value = c.rejected_per_ip
        gauged: set[tuple[str, str]] = set()
        for cluster_id, cluster in self._clusters.items():
            registry.counter(
                "sozu_cluster_connections_total", cluster=cluster_id
            ).value = cluster.connections_total
            registry.gauge(
                "sozu_cluster_active_connections", cluster=cluster_id
            ).value = cluster.active
            for name, counts in (
                ("sozu_backend_connections_total", cluster.connections),
                ("sozu_backend_connect_errors_total", cluster.connect_errors),
                ("sozu_backend_bytes_in_total", cluster.bytes_in),
                ("sozu_backend_bytes_out_total", cluster.bytes_out),
            ):
                for backend_id, count in counts.items():
                    registry.counter(name, cluster=cluster_id, backend=backend_id).value = count
            # Gauges for the configured backends, and for removed ones still carrying sessions.
            current = {b.id for b in cluster.selector.backends()} | set(cluster.loads)
            for backend_id in current:
                gauged.add((cluster_id, backend_id))
                registry.gauge(
                    "sozu_backend_active_connections", cluster=cluster_id, backend=backend_id
                ).value = cluster.loads.get(backend_id, 0)
                registry.gauge("sozu_backend_up", cluster=cluster_id, backend=backend_id).value = (
                    0 if cluster.is_down(backend_id) else 1
                )
        for cluster_id, backend_id in self._backend_gauges - gauged:
            for name in ("sozu_backend_active_connections", "sozu_backend_up"):
                registry.forget(name, cluster=cluster_id, backend=backend_id)
        self._backend_gauges = gauged
        registry.gauge("sozu_worker_active_connections").value = self.limit.active
        self._fold_loop_metrics()
        self.udp.fold_metrics()
        self.http.fold_metrics()
        snapshot = registry.snapshot()
        if self.cluster_metrics:
            return snapshot
        return MetricsSnapshot(
            counters=tuple(s for s in snapshot.counters if not _per_cluster(s.labels)),
            gauges=tuple(s for s in snapshot.gauges if not _per_cluster(s.labels)),
            histograms=tuple(h for h in snapshot.histograms if not _per_cluster(h.labels)),
        )

    def _fold_loop_metrics(self) -> None:
        registry = self.registry
        stats = self.reactor.stats
        registry.counter("sozu_event_loop_batches_total").value = stats.batches
        registry.counter("sozu_event_loop_events_total").value = stats.events
        registry.counter("sozu_event_loop_busy_seconds_total").value = stats.batch_seconds
        registry.counter("sozu_event_loop_timers_total").value = stats.timers
        registry.counter("sozu_event_loop_timer_lag_seconds_total").value = stats.lag_total
        registry.gauge("sozu_event_loop_timer_lag_max_seconds").value = stats.lag_max
        registry.gauge("sozu_event_loop_timers_armed").value = self.reactor.armed_timers()
        for reason, count in stats.errors.items():
            registry.counter("sozu_worker_session_errors_total", reason=reason).value = count

    def clear_metrics(self) -> None:
        self.registry.clear()
        self.reactor.stats = LoopStats()
        for c in self._counters.values():
            c.accepted = c.bytes_in = c.bytes_out = c.no_backend = c.retries = 0
            c.backend_errors = c.proxy_protocol_errors = c.rejected_per_ip = 0
        for cluster in self._clusters.values():
            cluster.clear_counters()
        self.udp.clear_metrics()
        self.http.clear_metrics()

    def close(self) -> None:
        self.udp.close()
        self.http.close()
        self.http.server.close()
        self.tcp.close()
        for pool in (self._adopted, self._received):
            for sock in pool.values():
                sock.close()
        for foreign in (*self._foreign.values(), *self._foreign_arrived.values()):
            for _, sock in foreign:
                sock.close()
        self._adopted.clear()
        self._received.clear()


def _per_cluster(labels: Labels) -> bool:
    """A series of one cluster or backend (left out with `disable_cluster_metrics`)."""
    return any(name in ("cluster", "backend") for name, _ in labels)
