"""A worker serving a UDP listener, driven through its channel handler (`channel_loop.handle`):
activation, live routing and limit changes, health checks turned on and off, metrics folded
at snapshot time, deactivation and soft-stop draining."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from sozu.command import requests as rq
from sozu.command.envelope import PROTOCOL_VERSION
from sozu.command.metrics import MetricsSnapshot
from sozu.command.responses import Event
from sozu.command.types import (
    Backend,
    Cluster,
    RequestUdpFrontend,
    UdpClusterConfig,
    UdpHealthConfig,
    UdpListenerConfig,
)
from sozu.worker.shell.channel_loop import WorkerCore, handle
from sozu.worker.shell.proxies import Proxies

Address = tuple[str, int]


class Echo:
    """Answers `<name>:<payload>` on a loopback UDP socket."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def serve(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self.sock.bind(("127.0.0.1", 0))
        task_status.started(self.sock.getsockname())
        while True:
            data, peer = await self.sock.recvfrom(65535)
            await self.sock.sendto(self.name.encode() + b":" + data, peer)


class Worker:
    def __init__(self, core: WorkerCore, proxies: Proxies, address: str) -> None:
        self.core = core
        self.proxies = proxies
        self.address = address
        self.port = int(address.rsplit(":", 1)[1])
        self.count = 0

    async def ok(self, request: rq.Request) -> None:
        self.count += 1
        response = await handle(self.core, self.proxies, str(self.count), request)
        assert response.status == "ok", response.message

    async def query(self, payload: bytes, *, patience: float = 2.0) -> str | None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            await sock.sendto(payload, ("127.0.0.1", self.port))
            with trio.move_on_after(patience):
                answer = await sock.recv(65535)
                name, _, echoed = answer.partition(b":")
                assert echoed == payload
                return name.decode()
        return None


def counter(snapshot: MetricsSnapshot, name: str, **labels: str) -> float | None:
    wanted = tuple(sorted(labels.items()))
    for sample in (*snapshot.counters, *snapshot.gauges):
        if sample.name == name and tuple(sorted(sample.labels)) == wanted:
            return sample.value
    return None


@asynccontextmanager
async def worker(
    events: list[Event], **cluster_udp: object
) -> AsyncIterator[tuple[Worker, list[Address]]]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    core = WorkerCore(worker_id=0)
    proxies = Proxies(core.state, events.append)
    servers = [Echo(name) for name in ("alpha", "beta")]
    try:
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as tasks:
                proxies.start(tasks, handlers)
                echoes = [await tasks.start(server.serve) for server in servers]
                w = Worker(core, proxies, address)
                await w.ok(
                    rq.ServerConfig(
                        protocol_version=PROTOCOL_VERSION, worker_id=0, slot=0, drain_timeout=5
                    )
                )
                await w.ok(
                    rq.AddUdpListener(
                        listener=UdpListenerConfig(address=address, front_timeout=1, back_timeout=1)
                    )
                )
                udp = UdpClusterConfig(**cluster_udp)  # type: ignore[arg-type]
                await w.ok(rq.AddCluster(cluster=Cluster(cluster_id="dns", udp=udp)))
                for name, (host, port) in zip(("alpha", "beta"), echoes, strict=True):
                    await w.ok(
                        rq.AddBackend(
                            backend=Backend(
                                cluster_id="dns", backend_id=name, address=f"{host}:{port}"
                            )
                        )
                    )
                await w.ok(
                    rq.AddUdpFrontend(
                        frontend=RequestUdpFrontend(cluster_id="dns", address=address)
                    )
                )
                proxies._received[("UDP", address)] = listener
                await w.ok(rq.ActivateListener(address=address, proxy="UDP"))
                yield w, echoes
                tasks.cancel_scope.cancel()
            handlers.cancel_scope.cancel()
    finally:
        proxies.close()
        listener.close()
        for server in servers:
            server.sock.close()


async def test_worker_serves_a_udp_listener_and_follows_live_changes() -> None:
    events: list[Event] = []
    with trio.fail_after(20):
        async with worker(events, affinity_key="SOURCE_IP_PORT", responses=1) as (w, echoes):
            names = {await w.query(b"q%d" % i) for i in range(16)}
            assert names == {"alpha", "beta"}
            served = w.proxies.udp._served[w.address]
            assert served.proxy.core.cluster_config().affinity_with_port
            assert served.proxy.core.max_flows() > 0

            # Unrouted: new datagrams are dropped as no_backend.
            frontend = RequestUdpFrontend(cluster_id="dns", address=w.address)
            await w.ok(rq.RemoveUdpFrontend(frontend=frontend))
            assert await w.query(b"lost", patience=0.3) is None
            await w.ok(rq.AddUdpFrontend(frontend=frontend))
            # One backend left: it answers everything.
            host, port = echoes[1]
            await w.ok(
                rq.RemoveBackend(cluster_id="dns", backend_id="beta", address=f"{host}:{port}")
            )
            assert {await w.query(b"r%d" % i) for i in range(6)} == {"alpha"}

            await w.ok(
                rq.UpdateUdpListener(address=w.address, max_flows=7, max_rx_datagram_size=100)
            )
            assert served.proxy.core.max_flows() == 7
            assert served.proxy.core.max_rx_datagram_size() == 100
            assert await w.query(b"x" * 200, patience=0.3) is None  # truncated

            await trio.sleep(0.05)
            snapshot = w.proxies.snapshot()
            labels = {"listener": w.address}
            assert counter(snapshot, "sozu_udp_datagrams_in_total", **labels) == 22
            assert counter(snapshot, "sozu_udp_datagrams_out_total", **labels) == 22
            assert counter(snapshot, "sozu_udp_flows_created_total", **labels) == 22
            assert counter(snapshot, "sozu_udp_flows_evicted_total", **labels) == 22
            assert counter(snapshot, "sozu_udp_active_flows", **labels) == 0
            dropped = "sozu_udp_datagrams_dropped_total"
            assert counter(snapshot, dropped, reason="no_backend", **labels) == 1
            assert counter(snapshot, dropped, reason="truncated", **labels) == 1
            assert counter(snapshot, dropped, reason="wq_full", **labels) == 0
            assert (
                counter(snapshot, "sozu_udp_backend_healthy", cluster="dns", backend="alpha") == 1
            )
            assert (
                counter(snapshot, "sozu_udp_backend_healthy", cluster="dns", backend="beta") is None
            )
            durations = [
                h for h in snapshot.histograms if h.name == "sozu_udp_flow_duration_seconds"
            ]
            assert len(durations) == 1
            assert sum(durations[0].counts) == 22

            # `sozu metrics clear`: the totals restart from zero (the core's own stay monotonic).
            w.proxies.clear_metrics()
            assert counter(w.proxies.snapshot(), "sozu_udp_datagrams_in_total", **labels) == 0
            assert await w.query(b"again") == "alpha"
            await trio.sleep(0.05)
            snapshot = w.proxies.snapshot()
            assert counter(snapshot, "sozu_udp_datagrams_in_total", **labels) == 1
            assert counter(snapshot, dropped, reason="no_backend", **labels) == 0

            await w.ok(rq.DeactivateListener(address=w.address, proxy="UDP"))
            assert w.address not in w.proxies.udp._served
            assert await w.query(b"after", patience=0.3) is None

            # Activated again (a fresh socket on the same address): served, totals kept.
            again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            again.bind(("127.0.0.1", w.port))
            w.proxies._received[("UDP", w.address)] = again
            await w.ok(rq.ActivateListener(address=w.address, proxy="UDP"))
            assert await w.query(b"back") == "alpha"
            await trio.sleep(0.05)
            snapshot = w.proxies.snapshot()
            assert counter(snapshot, "sozu_udp_datagrams_in_total", **labels) == 2


async def test_health_checks_mark_a_dead_backend_and_turning_them_off_resets() -> None:
    events: list[Event] = []
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead_address = f"127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    with trio.fail_after(20):
        async with worker(events, affinity_key="SOURCE_IP_PORT") as (w, _):
            # The TCP companion probe needs a TCP listener; give every backend the same one.
            tcp = trio.socket.socket()
            await tcp.bind(("127.0.0.1", 0))
            tcp.listen(16)
            tcp_port = tcp.getsockname()[1]
            health = UdpHealthConfig(
                mode="UDP_PROBE", udp_probe_payload="ping", tcp_port=tcp_port, fall=1, rise=1,
                probe_interval_seconds=1, probe_timeout_seconds=1,
            )  # fmt: skip
            await w.ok(
                rq.AddBackend(
                    backend=Backend(cluster_id="dns", backend_id="dead", address=dead_address)
                )
            )
            await w.ok(
                rq.AddCluster(
                    cluster=Cluster(
                        cluster_id="dns",
                        udp=UdpClusterConfig(affinity_key="SOURCE_IP_PORT", health=health),
                    )
                )
            )
            selector = w.proxies.udp._selectors["dns"]
            while selector.is_healthy("dead"):  # noqa: ASYNC110 (the prober sets no event)
                await trio.sleep(0.05)
            assert any(
                e.kind == "HEALTH_CHECK_UNHEALTHY" and e.backend_id == "dead" for e in events
            )
            assert selector.is_healthy("alpha")
            assert selector.is_healthy("beta")
            assert {await w.query(b"h%d" % i) for i in range(12)} <= {"alpha", "beta"}
            # Checks off: every backend healthy again, no prober left.
            await w.ok(rq.AddCluster(cluster=Cluster(cluster_id="dns", udp=UdpClusterConfig())))
            assert selector.is_healthy("dead")
            assert "dns" not in w.proxies.udp._checked
            tcp.close()


async def test_soft_stop_drains_live_flows() -> None:
    events: list[Event] = []
    with trio.fail_after(20):
        async with worker(events) as (w, _):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            await sock.sendto(b"one", ("127.0.0.1", w.port))
            await sock.recv(100)
            w.proxies.stop_accepting()
            assert w.proxies.udp.active_flows == 1
            # Draining: the listener is not read any more; the flow ends when idle.
            started = trio.current_time()
            assert await w.proxies.drain(5)
            assert trio.current_time() - started < 3  # idle after front_timeout (1 s)
            assert w.proxies.udp.active_flows == 0
            sock.close()
