"""UDP limits through the real daemon (one worker, so per-core counts are exact).

- `max_flows`: once the cap is reached, datagrams from new clients are shed (counted as shed
  flows and shed drops, never answered) while the existing flows keep working.
- `max_rx_datagram_size`: a bigger client datagram is dropped as truncated and never reaches
  the backend; a reply over the size is dropped the same way; one that fits goes through.
- both raised live (`listener udp update`): existing flows take replies of the new size
  whole, and the clients shed before are admitted.
- idle flows are evicted after the listener's timeouts: the flows gauge returns to 0 and the
  evicted counter rises by the number of flows.
- cluster `responses = 1`: each reply closes its flow, so the next query of the same client
  opens a new one.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from e2e.support.daemon import DaemonFactory, wait_for
from e2e.support.net import free_port
from e2e.support.udp_backends import NamedUdpEcho, client, listener_value, query

pytestmark = pytest.mark.e2e

# Short: the reply to a payload of N bytes is N + 2 bytes ("k:" + payload).
ECHO_NAME = "k"


def _config(
    listen: int,
    metrics_port: int,
    echo: NamedUdpEcho,
    *,
    listener: str = "",
    udp: str = "",
    timeout: int = 30,
) -> str:
    return f"""
[metrics]
prometheus_address = "127.0.0.1:{metrics_port}"

[[listeners]]
protocol = "udp"
address = "127.0.0.1:{listen}"
front_timeout = {timeout}
back_timeout = {timeout}
{listener}

[clusters.lim]
protocol = "tcp"
frontends = [{{ address = "127.0.0.1:{listen}" }}]
backends = [{{ address = "{echo.address}", backend_id = "{echo.name}" }}]

[clusters.lim.udp]
affinity_key = "SOURCE_IP_PORT"
{udp}
"""


class Metrics:
    """Listener-scoped series of one daemon, polled until they reach a value."""

    def __init__(self, metrics_port: int, listen: int) -> None:
        self.port = metrics_port
        self.listener = f"127.0.0.1:{listen}"

    def value(self, name: str, **labels: str) -> float:
        return listener_value(self.port, name, self.listener, **labels)

    def wait(self, name: str, expected: float, *, timeout: float = 5.0, **labels: str) -> None:
        """`name` equals `expected` within `timeout` s (the supervisor samples every second)."""
        last: list[float] = []

        def probe() -> bool | None:
            last[:] = [self.value(name, **labels)]
            return True if last[0] == expected else None

        try:
            wait_for(probe, timeout=timeout, what=f"{name} = {expected}")
        except TimeoutError:
            raise AssertionError(f"{name}{labels or ''}: {last} instead of {expected}") from None


def _warm_up(listen: int) -> None:
    """One answered query, retried while the listener comes up, from a socket of its own (so
    a late answer to a retry reaches nobody); its flow lives on."""

    def probe() -> bool | None:
        sock.settimeout(0.5)
        try:
            return True if query(sock, listen, b"warm") == ECHO_NAME else None
        except (TimeoutError, AssertionError):
            return None

    with client() as sock:
        wait_for(probe, timeout=10, what="first answer")


def _nothing_for(sock: socket.socket, seconds: float = 0.3) -> bool:
    """Whether no datagram arrives on `sock` within `seconds`."""
    sock.settimeout(seconds)
    try:
        sock.recvfrom(65535)
    except TimeoutError:
        return True
    return False


@pytest.fixture
def echo() -> Iterator[NamedUdpEcho]:
    server = NamedUdpEcho(ECHO_NAME)
    try:
        yield server
    finally:
        server.close()


def test_max_flows_sheds_new_clients_and_keeps_existing_flows(
    start_daemon: DaemonFactory, echo: NamedUdpEcho
) -> None:
    listen, metrics_port = free_port(), free_port()
    daemon = start_daemon(
        worker_count=1,
        extra=_config(
            listen, metrics_port, echo, listener="max_flows = 3\nmax_rx_datagram_size = 100"
        ),
    )
    metrics = Metrics(metrics_port, listen)
    _warm_up(listen)
    held = [client() for _ in range(2)]
    newcomers = [client() for _ in range(4)]
    try:
        for index, sock in enumerate(held):
            assert query(sock, listen, f"h{index}".encode()) == ECHO_NAME
        metrics.wait("sozu_udp_active_flows", 3)

        received = echo.datagrams
        for index, sock in enumerate(newcomers):
            sock.sendto(f"n{index}".encode(), ("127.0.0.1", listen))
        metrics.wait("sozu_udp_flows_shed_total", 4)
        assert metrics.value("sozu_udp_datagrams_dropped_total", reason="shed") == 4
        assert all(_nothing_for(sock) for sock in newcomers)
        assert echo.datagrams == received

        # Existing flows keep working at the cap.
        for index, sock in enumerate(held):
            assert query(sock, listen, f"again{index}".encode()) == ECHO_NAME
        assert metrics.value("sozu_udp_flows_created_total") == 3
        assert metrics.value("sozu_udp_active_flows") == 3

        # Oversize: a 98-byte query gets its 100-byte reply; 101 bytes are dropped on the way
        # in; 100 bytes reach the backend but its 102-byte reply is dropped on the way back.
        sock = held[0]
        fits = b"f" * 98
        assert query(sock, listen, fits) == ECHO_NAME
        received = echo.datagrams
        sock.sendto(b"x" * 101, ("127.0.0.1", listen))
        metrics.wait("sozu_udp_datagrams_dropped_total", 1, reason="truncated")
        assert echo.datagrams == received
        assert _nothing_for(sock)
        sock.sendto(b"y" * 100, ("127.0.0.1", listen))
        metrics.wait("sozu_udp_datagrams_dropped_total", 2, reason="truncated")
        assert echo.datagrams == received + 1
        assert _nothing_for(sock)
        sock.settimeout(5.0)
        assert query(sock, listen, fits) == ECHO_NAME
        assert metrics.value("sozu_udp_flows_shed_total") == 4

        # Both limits raised live: the held flow gets a 502-byte reply whole, and the
        # newcomers are admitted.
        result = daemon.sozu(
            "listener", "udp", "update", "-a", f"127.0.0.1:{listen}",
            "--max-rx-datagram-size", "1000", "--max-flows", "7",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert query(sock, listen, b"z" * 500) == ECHO_NAME
        for index, newcomer in enumerate(newcomers):
            newcomer.settimeout(5.0)
            assert query(newcomer, listen, f"late{index}".encode()) == ECHO_NAME
        metrics.wait("sozu_udp_active_flows", 7)
        assert metrics.value("sozu_udp_flows_shed_total") == 4
        assert metrics.value("sozu_udp_datagrams_dropped_total", reason="truncated") == 2
    finally:
        for sock in held + newcomers:
            sock.close()
    # The flows held by the cap close with the listener.
    result = daemon.sozu("listener", "udp", "deactivate", "-a", f"127.0.0.1:{listen}")
    assert result.returncode == 0, result.stderr
    metrics.wait("sozu_udp_active_flows", 0)
    metrics.wait("sozu_udp_flows_evicted_total", 7)


def test_idle_flows_are_evicted_after_the_timeouts(
    start_daemon: DaemonFactory, echo: NamedUdpEcho
) -> None:
    listen, metrics_port = free_port(), free_port()
    start_daemon(worker_count=1, extra=_config(listen, metrics_port, echo, timeout=1))
    metrics = Metrics(metrics_port, listen)
    _warm_up(listen)
    socks = [client() for _ in range(3)]
    try:
        # Keep three flows busy until the (sampled) gauge shows them, then let them idle.
        deadline = time.monotonic() + 5
        while metrics.value("sozu_udp_active_flows") != 3:
            assert time.monotonic() < deadline, "three flows never seen together"
            for sock in socks:
                assert query(sock, listen, b"busy") == ECHO_NAME
            time.sleep(0.2)
        created = metrics.value("sozu_udp_flows_created_total")
        # Idle for 1 s (front and back): evicted within 5 s, nothing more created.
        metrics.wait("sozu_udp_active_flows", 0)
        metrics.wait("sozu_udp_flows_evicted_total", created)
        assert metrics.value("sozu_udp_flows_created_total") == created

        # The same client comes back: a new flow.
        assert query(socks[0], listen, b"back") == ECHO_NAME
        metrics.wait("sozu_udp_flows_created_total", created + 1)
        metrics.wait("sozu_udp_flows_evicted_total", created + 1)
        metrics.wait("sozu_udp_active_flows", 0)
    finally:
        for sock in socks:
            sock.close()


def test_one_response_closes_the_flow(start_daemon: DaemonFactory, echo: NamedUdpEcho) -> None:
    listen, metrics_port = free_port(), free_port()
    start_daemon(worker_count=1, extra=_config(listen, metrics_port, echo, udp="responses = 1"))
    metrics = Metrics(metrics_port, listen)
    _warm_up(listen)
    metrics.wait("sozu_udp_flows_created_total", 1)
    metrics.wait("sozu_udp_flows_evicted_total", 1)
    created = 1
    with client() as sock:
        assert metrics.value("sozu_udp_active_flows") == 0
        for index in range(1, 4):
            assert query(sock, listen, f"q{index}".encode()) == ECHO_NAME
            metrics.wait("sozu_udp_flows_created_total", created + index)
            metrics.wait("sozu_udp_flows_evicted_total", created + index)
        assert metrics.value("sozu_udp_active_flows") == 0
        assert metrics.value("sozu_udp_datagrams_out_total") == created + 3
