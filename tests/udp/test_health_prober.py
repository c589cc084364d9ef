"""Health probes against real loopback sockets: a backend going away and coming back."""

from __future__ import annotations

import random
import socket

import trio

from sozu.worker.core.balancing import Backend, BackendSelector, LoadBalancingPolicy
from sozu.worker.core.udp.config import UdpHealthSettings
from sozu.worker.core.udp.health import ClusterHealth, HealthEvent
from sozu.worker.shell.udp_health_prober import HealthProber, tcp_probe, udp_probe


class Recorder:
    """Collects events; `wait_for` returns once a given event has been seen."""

    def __init__(self) -> None:
        self.events: list[HealthEvent] = []
        self._changed = trio.Event()

    def __call__(self, event: HealthEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, event: HealthEvent) -> None:
        while event not in self.events:
            self._changed = trio.Event()
            await self._changed.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_tcp_probe_succeeds_on_a_listener_and_fails_on_a_closed_port() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    with trio.fail_after(5):
        assert await tcp_probe(listener.getsockname(), 1.0)
        listener.close()
        assert not await tcp_probe(("127.0.0.1", free_port()), 1.0)


async def test_udp_probe_needs_an_answer() -> None:
    answering = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await answering.bind(("127.0.0.1", 0))
    silent = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await silent.bind(("127.0.0.1", 0))

    async def answer() -> None:
        _, peer = await answering.recvfrom(100)
        await answering.sendto(b"PONG", peer)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            assert await udp_probe(answering.getsockname(), b"PING", 1.0)
        assert not await udp_probe(silent.getsockname(), b"PING", 0.2)  # timeout
        assert not await udp_probe(("127.0.0.1", free_port()), b"PING", 1.0)  # refused
    answering.close()
    silent.close()


async def test_prober_marks_a_dead_backend_down_and_up_again() -> None:
    alive = socket.socket()
    alive.bind(("127.0.0.1", 0))
    alive.listen(16)
    dead_port = free_port()
    backends = [Backend("up", alive.getsockname()), Backend("down", ("127.0.0.1", dead_port))]
    selector = BackendSelector(LoadBalancingPolicy.HRW, backends, rng=random.Random(0))
    health = ClusterHealth(
        "dns", UdpHealthSettings(rise=1, fall=2, probe_interval=0.1, probe_timeout=0.5), backends
    )
    recorder = Recorder()
    prober = HealthProber(health, selector, recorder, payload=None, probe_timeout=0.5)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prober.run)
            await recorder.wait_for(HealthEvent("HEALTH_CHECK_UNHEALTHY", "dns", "down"))
            assert not selector.is_healthy("down")
            assert {selector.select(key=k).id for k in range(50)} == {"up"}  # type: ignore[union-attr]
            revived = socket.socket()
            revived.bind(("127.0.0.1", dead_port))
            revived.listen(16)
            await recorder.wait_for(HealthEvent("HEALTH_CHECK_HEALTHY", "dns", "down"))
            assert selector.is_healthy("down")
            nursery.cancel_scope.cancel()
    alive.close()
    revived.close()
