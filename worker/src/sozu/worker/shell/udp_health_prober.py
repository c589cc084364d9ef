"""Runs a UDP cluster's health probes (trio shell around `ClusterHealth`).

TCP probe: a non-blocking connect to the backend's address (or `tcp_port`), success when it
completes within the timeout. UDP probe: a connected datagram socket sends the payload once;
any datagram back is a success, an ICMP port-unreachable (ECONNREFUSED) or the timeout a
failure. Verdicts go to the cluster's selector, events to a callback.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import trio

from sozu.worker.core.balancing import BackendSelector
from sozu.worker.core.udp.health import ClusterHealth, HealthEvent, Probe
from sozu.worker.shell.connect import connect_backend


async def tcp_probe(address: tuple[str, int], limit: float) -> bool:
    try:
        sock = await connect_backend(address, limit)
    except OSError:
        return False
    sock.close()
    return True


async def udp_probe(address: tuple[str, int], payload: bytes, limit: float) -> bool:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.connect(address)
        sock.send(payload)
        with trio.move_on_after(limit):
            while True:
                try:
                    sock.recv(65535)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                return True
        return False
    except OSError:  # ECONNREFUSED (ICMP unreachable), or the send failed
        return False
    finally:
        sock.close()


class HealthProber:
    """Probes one cluster on schedule until cancelled."""

    def __init__(
        self,
        health: ClusterHealth,
        selector: BackendSelector,
        on_event: Callable[[HealthEvent], None],
        *,
        payload: bytes | None,
        probe_timeout: float,
    ) -> None:
        self.health = health
        self.selector = selector
        self._on_event = on_event
        self._payload = payload
        self._timeout = probe_timeout
        self._wake = trio.Event()

    def reconfigured(self, payload: bytes | None, probe_timeout: float) -> None:
        """Settings changed (the caller already called `health.configure`): re-plan now."""
        self._payload = payload
        self._timeout = probe_timeout
        self._apply_verdicts()
        self._wake.set()

    def _apply_verdicts(self) -> None:
        for backend in self.selector.backends():
            self.selector.set_healthy(backend.id, self.health.healthy(backend.id))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                for probe in self.health.due(trio.current_time()):
                    nursery.start_soon(self._probe, probe)
                deadline = self.health.next_deadline()
                self._wake = trio.Event()
                with trio.move_on_at(deadline if deadline is not None else float("inf")):
                    await self._wake.wait()

    async def _probe(self, probe: Probe) -> None:
        if probe.kind == "tcp":
            success = await tcp_probe(probe.address, self._timeout)
        else:
            assert self._payload is not None
            success = await udp_probe(probe.address, self._payload, self._timeout)
        events = self.health.record(probe, success)
        self._apply_verdicts()
        for event in events:
            self._on_event(event)
