"""A worker's UDP listeners: one `FlowManager` + `UdpListenerProxy` per active listener.

Each UDP cluster routed by a UDP frontend has one `BackendSelector` (HRW unless the cluster sets
`load_balancing`) and, when its `udp.health` block enables checks, a `HealthProber`. The
listener's `ClusterConfig` is rebuilt from the state on every change and pushed to the core,
which applies it to new flows only. Counters live on the cores (kept across deactivation so
the Prometheus totals never go back) and are folded into the registry at snapshot time.
"""

from __future__ import annotations

import logging
import random
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from sozu.command.metrics import MetricsRegistry
from sozu.command.state import ConfigState
from sozu.command.types import Cluster, UdpHealthConfig, UdpListenerConfig
from sozu.worker.core.balancing import BackendSelector
from sozu.worker.core.cluster_view import backends_of, policy_of
from sozu.worker.core.udp.config import ClusterConfig, HealthMode, UdpHealthSettings
from sozu.worker.core.udp.health import ClusterHealth, HealthEvent
from sozu.worker.core.udp.limits import clamp_max_rx, effective_max_flows
from sozu.worker.core.udp.manager import FlowManager
from sozu.worker.core.udp.outputs import DropReason
from sozu.worker.shell.reactor import Reactor
from sozu.worker.shell.udp_health_prober import HealthProber
from sozu.worker.shell.udp_proxy import ShellCounters, UdpListenerProxy

log = logging.getLogger("sozu.worker")

SHELL_DROP_REASONS = ("wq_full", "send_error", "no_backend")


def soft_nofile() -> int | None:
    try:
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return None


def health_settings(config: UdpHealthConfig | None) -> UdpHealthSettings | None:
    """The core's health settings for a protocol health block (None: no block)."""
    if config is None:
        return None
    payload = config.udp_probe_payload
    return UdpHealthSettings(
        mode=HealthMode(config.mode),
        tcp_port=config.tcp_port,
        rise=config.rise,
        fall=config.fall,
        fail_open=config.fail_open,
        udp_probe_payload=None if payload is None else payload.encode(),
        probe_interval=float(config.probe_interval_seconds),
        probe_timeout=float(config.probe_timeout_seconds),
    )


def cluster_config(listener: UdpListenerConfig, cluster: Cluster | None) -> ClusterConfig:
    """Routing and knobs for new flows of `listener`, routed to `cluster` (None: unrouted)."""
    front, back = float(listener.front_timeout), float(listener.back_timeout)
    if cluster is None:
        return ClusterConfig(front_timeout=front, back_timeout=back)
    udp = cluster.udp
    if udp is None:
        return ClusterConfig(cluster=cluster.cluster_id, front_timeout=front, back_timeout=back)
    return ClusterConfig(
        cluster=cluster.cluster_id,
        affinity_with_port=udp.affinity_key == "SOURCE_IP_PORT",
        responses=udp.responses,
        requests=udp.requests,
        send_proxy_protocol=udp.send_proxy_protocol,
        proxy_protocol_every_datagram=udp.proxy_protocol_every_datagram,
        front_timeout=front,
        back_timeout=back,
    )


def _core_values(core: FlowManager) -> dict[str, int]:
    c = core.counters
    values = {
        "sozu_udp_datagrams_in_total": c.datagrams_in,
        "sozu_udp_datagrams_out_total": c.datagrams_out,
        "sozu_udp_bytes_in_total": c.bytes_in,
        "sozu_udp_bytes_out_total": c.bytes_out,
        "sozu_udp_flows_created_total": c.flows_created,
        "sozu_udp_flows_evicted_total": c.flows_evicted,
        "sozu_udp_flows_shed_total": c.flows_shed,
    }
    for reason in DropReason:
        values[f"drop:{reason}"] = c.dropped_by_reason[reason]
    return values


@dataclass(eq=False)
class _ServedUdp:
    proxy: UdpListenerProxy
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False)
class _Checked:
    health: ClusterHealth
    prober: HealthProber
    settings: UdpHealthSettings
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class UdpListeners:
    """The UDP part of a worker's `Proxies`."""

    def __init__(
        self,
        state: ConfigState,
        registry: MetricsRegistry,
        on_event: Callable[[HealthEvent], None],
        reactor: Reactor,
    ) -> None:
        self.state = state
        self.reactor = reactor
        # Live flows per backend, by cluster, over every listener (loads for the selectors).
        self._loads: dict[str, dict[str, int]] = {}
        self.registry = registry
        self._on_event = on_event
        self.max_connections = 0
        self.buffer_size = 0
        self._served: dict[str, _ServedUdp] = {}
        self._cores: dict[str, FlowManager] = {}
        self._shell_counters: dict[str, ShellCounters] = {}
        self._selectors: dict[str, BackendSelector] = {}
        self._checked: dict[str, _Checked] = {}
        self._healthy_gauges: set[tuple[str, str]] = set()
        self._offsets: dict[str, dict[str, int]] = {}
        self._tasks: trio.Nursery | None = None
        self._handlers: trio.Nursery | None = None

    def start(self, tasks: trio.Nursery, handlers: trio.Nursery) -> None:
        self._tasks, self._handlers = tasks, handlers

    # -- listeners

    def _cluster_of(self, address: str) -> Cluster | None:
        for cluster_id, fronts in self.state.udp_fronts.items():
            if any(front.address == address for front in fronts):
                return self.state.clusters.get(cluster_id)
        return None

    def _limits(self, config: UdpListenerConfig) -> tuple[int, int]:
        max_flows = effective_max_flows(config.max_flows, soft_nofile(), self.max_connections)
        return max_flows, clamp_max_rx(config.max_rx_datagram_size, self.buffer_size)

    async def start_listener(
        self, address: str, config: UdpListenerConfig, sock: socket.socket
    ) -> None:
        assert self._handlers is not None
        self.refresh_clusters()
        routing = cluster_config(config, self._cluster_of(address))
        max_flows, max_rx = self._limits(config)
        if max_rx < config.max_rx_datagram_size:
            log.warning(
                "UDP listener %s: max_rx_datagram_size %d clamped to buffer_size %d",
                address,
                config.max_rx_datagram_size,
                max_rx,
            )
        core = self._cores.get(address)
        if core is None or core.is_draining():
            old = self._cores.get(address)
            if old is not None:  # the drained core's totals carry over
                self._shift(address, _core_values(old), 1)
            core = FlowManager(routing, max_flows=max_flows, max_rx_datagram_size=max_rx)
            self._cores[address] = core
        durations = self.registry.histogram("sozu_udp_flow_duration_seconds", listener=address)

        def flow_closed(_backend_id: str, seconds: float) -> None:
            durations.observe(seconds)

        proxy = UdpListenerProxy(
            sock,
            core,
            self._selectors.get,
            reactor=self.reactor,
            loads=self._loads,
            on_flow_closed=flow_closed,
        )
        counters = self._shell_counters.setdefault(address, proxy.counters)
        proxy.counters = counters
        proxy.set_cluster(routing)
        proxy.set_max_flows(max_flows)
        proxy.set_max_rx_datagram_size(max_rx)
        served = _ServedUdp(proxy)
        self._served[address] = served
        await self._handlers.start(self._serve, address, served)
        log.info("serving UDP listener %s", address)

    async def _serve(
        self,
        address: str,
        served: _ServedUdp,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with served.scope:
                await served.proxy.serve(task_status=task_status)
        except OSError as error:
            log.error("UDP listener %s stopped: %s", address, error)
        except Exception:
            # Outside any flow's boundary (a bug of the listener task itself): this listener
            # stops, the worker and its other listeners go on.
            log.exception("UDP listener %s stopped by an internal error", address)
        finally:
            served.done.set()

    async def stop_listener(self, address: str) -> None:
        """Close every flow, stop serving and close this worker's copy of the socket."""
        served = self._served.pop(address, None)
        if served is None:
            return
        served.proxy.close_all()
        served.scope.cancel()
        with trio.move_on_after(1.0):
            await served.done.wait()
        served.proxy.sock.close()

    def served_sockets(self) -> list[tuple[str, socket.socket]]:
        return [(address, served.proxy.sock) for address, served in self._served.items()]

    def served_proxy(self, address: str) -> UdpListenerProxy | None:
        served = self._served.get(address)
        return None if served is None else served.proxy

    def drain(self) -> None:
        """Soft stop: stop reading; live flows answer until idle (then their task ends)."""
        for served in self._served.values():
            served.proxy.drain()

    async def wait_drained(self) -> None:
        for served in list(self._served.values()):
            await served.done.wait()

    @property
    def active_flows(self) -> int:
        return sum(served.proxy.flow_count for served in self._served.values())

    def close(self) -> None:
        for served in self._served.values():
            served.scope.cancel()
            served.proxy.sock.close()
        self._served.clear()

    # -- clusters and listeners' live settings

    def refresh_clusters(self) -> None:
        """Selectors, health probers and the served listeners' routing, from the state."""
        state = self.state
        routed = {
            cluster_id
            for cluster_id, fronts in state.udp_fronts.items()
            if fronts and cluster_id in state.clusters
        }
        for cluster_id in set(self._selectors) - routed:
            del self._selectors[cluster_id]
            self._stop_checks(cluster_id)
        for cluster_id in routed:
            self._refresh_cluster(state.clusters[cluster_id])
        for address, served in self._served.items():
            config = state.udp_listeners.get(address)
            if config is None:
                continue
            proxy = served.proxy
            routing = cluster_config(config, self._cluster_of(address))
            if routing != proxy.core.cluster_config():
                proxy.set_cluster(routing)
            max_flows, max_rx = self._limits(config)
            if max_flows != proxy.core.max_flows():
                proxy.set_max_flows(max_flows)
            if max_rx != proxy.core.max_rx_datagram_size():
                proxy.set_max_rx_datagram_size(max_rx)

    def _refresh_cluster(self, cluster: Cluster) -> None:
        cluster_id = cluster.cluster_id
        policy = policy_of(cluster, udp=True)
        backends = backends_of(self.state, cluster_id)
        settings = health_settings(cluster.udp.health if cluster.udp is not None else None)
        fail_open = settings.fail_open if settings is not None else True
        selector = self._selectors.get(cluster_id)
        if selector is None:
            selector = BackendSelector(policy, backends, rng=random.Random(), fail_open=fail_open)
            self._selectors[cluster_id] = selector
        else:
            selector.set_policy(policy)
            selector.set_backends(backends)
            selector.fail_open = fail_open
        checked = self._checked.get(cluster_id)
        if settings is None or not settings.enabled:
            if checked is not None:
                self._stop_checks(cluster_id)
            return
        if checked is None:
            health = ClusterHealth(cluster_id, settings, backends)
            prober = HealthProber(
                health,
                selector,
                self._on_event,
                payload=settings.udp_probe_payload,
                probe_timeout=settings.probe_timeout,
            )
            checked = _Checked(health, prober, settings)
            self._checked[cluster_id] = checked
            assert self._tasks is not None
            self._tasks.start_soon(self._run_checks, checked)
            return
        for event in checked.health.configure(settings, backends):
            self._on_event(event)
        checked.settings = settings
        checked.prober.reconfigured(settings.udp_probe_payload, settings.probe_timeout)

    async def _run_checks(self, checked: _Checked) -> None:
        with checked.scope:
            await checked.prober.run()

    def _stop_checks(self, cluster_id: str) -> None:
        """Checks turned off or the cluster gone: stop probing, every backend healthy again."""
        checked = self._checked.pop(cluster_id, None)
        if checked is None:
            return
        checked.scope.cancel()
        selector = self._selectors.get(cluster_id)
        if selector is not None:
            for backend in selector.backends():
                selector.set_healthy(backend.id, True)

    # -- metrics

    def _totals(self, address: str) -> dict[str, int]:
        """The listener's counter values, by metric name and drop reason, offsets applied."""
        core = self._cores.get(address)
        values = {} if core is None else _core_values(core)
        shell = self._shell_counters.get(address)
        if shell is not None:
            for reason in SHELL_DROP_REASONS:
                key = f"drop:{reason}"
                values[key] = values.get(key, 0) + getattr(shell, reason)
            # A flow aborted because its upstream socket could not be opened was shed too.
            shed = "sozu_udp_flows_shed_total"
            values[shed] = values.get(shed, 0) + shell.upstream_open_failed
            for reason, count in shell.flow_errors.items():
                values[f"error:{reason}"] = count
            values["sozu_udp_kernel_drops_total"] = shell.kernel_drops
        for key, offset in self._offsets.get(address, {}).items():
            values[key] = values.get(key, 0) + offset
        return values

    def _shift(self, address: str, values: dict[str, int], sign: int) -> None:
        offsets = self._offsets.setdefault(address, {})
        for key, value in values.items():
            offsets[key] = offsets.get(key, 0) + sign * value

    def fold_metrics(self) -> None:
        registry = self.registry
        for served in self._served.values():
            served.proxy.sample_kernel_drops()
        for address, core in self._cores.items():
            registry.gauge(
                "sozu_udp_active_flows", listener=address
            ).value = core.counters.active_flows
            for key, value in self._totals(address).items():
                if key.startswith("drop:"):
                    registry.counter(
                        "sozu_udp_datagrams_dropped_total", listener=address, reason=key[5:]
                    ).value = value
                elif key.startswith("error:"):
                    registry.counter(
                        "sozu_udp_flow_errors_total", listener=address, reason=key[6:]
                    ).value = value
                else:
                    registry.counter(key, listener=address).value = value
        gauged: set[tuple[str, str]] = set()
        for cluster_id, selector in self._selectors.items():
            for backend in selector.backends():
                gauged.add((cluster_id, backend.id))
                registry.gauge(
                    "sozu_udp_backend_healthy", cluster=cluster_id, backend=backend.id
                ).value = 1 if selector.is_healthy(backend.id) else 0
        for cluster_id, backend_id in self._healthy_gauges - gauged:
            registry.forget("sozu_udp_backend_healthy", cluster=cluster_id, backend=backend_id)
        self._healthy_gauges = gauged

    def clear_metrics(self) -> None:
        """Counters restart from zero (the cores' own counters are monotonic: offsets)."""
        for address in self._cores:
            self._shift(address, self._totals(address), -1)
