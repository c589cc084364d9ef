"""UDP through the real daemon: queries answered by a cluster of two backends, source-port
affinity, one flow per answer (`responses = 1`), a backend that stops marked unhealthy by the
UDP health probe, and Prometheus counters matching the queries sent."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from e2e.support.daemon import DaemonFactory, wait_for
from e2e.support.net import Series, free_port, prometheus_series
from e2e.support.udp_backends import NamedUdpEcho, client, query

pytestmark = pytest.mark.e2e


def _config(listen: int, metrics_port: int, backends: list[NamedUdpEcho]) -> str:
    entries = ", ".join(f'{{ address = "{b.address}", backend_id = "{b.name}" }}' for b in backends)
    return f"""
[metrics]
prometheus_address = "127.0.0.1:{metrics_port}"

[[listeners]]
protocol = "udp"
address = "127.0.0.1:{listen}"
front_timeout = 2
back_timeout = 2

[clusters.dns]
protocol = "tcp"
frontends = [{{ address = "127.0.0.1:{listen}" }}]
backends = [{entries}]

[clusters.dns.udp]
affinity_key = "SOURCE_IP_PORT"
responses = 1

[clusters.dns.udp.health]
mode = "UDP_PROBE"
udp_probe_payload = "health"
probe_interval_seconds = 1
probe_timeout_seconds = 1
rise = 2
fall = 2
"""


@pytest.fixture
def echoes() -> Iterator[list[NamedUdpEcho]]:
    servers = [NamedUdpEcho(name) for name in ("alpha", "beta")]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def test_udp_queries_affinity_flows_health_and_metrics(
    start_daemon: DaemonFactory, echoes: list[NamedUdpEcho]
) -> None:
    listen, metrics_port = free_port(), free_port()
    listener = f"127.0.0.1:{listen}"
    start_daemon(extra=_config(listen, metrics_port, echoes))
    sent = 0

    # The first query is answered through sozu (retried while the listener comes up).
    deadline = time.monotonic() + 10
    while True:
        with client() as sock:
            sock.settimeout(0.5)
            sent += 1
            try:
                assert query(sock, listen, b"first") in ("alpha", "beta")
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    # One client socket sticks to one backend (a new flow per query: responses = 1).
    with client() as sock:
        names = [query(sock, listen, f"q{i}".encode()) for i in range(5)]
        sent += 5
    assert len(set(names)) == 1, names

    # Twenty client sockets use both backends.
    served = []
    for index in range(20):
        with client() as sock:
            served.append(query(sock, listen, f"c{index}".encode()))
            sent += 1
    assert set(served) == {"alpha", "beta"}, served

    at_listener = frozenset({("listener", listener)})

    def flows_settled() -> Series | None:
        series = prometheus_series(metrics_port)
        created = series.get(("sozu_udp_flows_created_total", at_listener))
        evicted = series.get(("sozu_udp_flows_evicted_total", at_listener))
        done = (
            created is not None
            and created == evicted
            and series.get(("sozu_udp_datagrams_in_total", at_listener)) == sent
            and series.get(("sozu_udp_active_flows", at_listener)) == 0
        )
        return series if done else None

    series = wait_for(flows_settled, timeout=5, what=f"{sent} datagrams in, every flow closed")
    assert series[("sozu_udp_flows_created_total", at_listener)] >= 26
    assert series[("sozu_udp_datagrams_out_total", at_listener)] >= 26

    # Stopping one backend makes it unhealthy; every query is answered by the other one.
    alpha, beta = echoes
    beta.close()
    beta_health = ("sozu_udp_backend_healthy", frozenset({("cluster", "dns"), ("backend", "beta")}))
    alpha_health = (
        "sozu_udp_backend_healthy",
        frozenset({("cluster", "dns"), ("backend", "alpha")}),
    )
    wait_for(
        lambda: True if prometheus_series(metrics_port).get(beta_health) == 0 else None,
        timeout=5,
        what="beta unhealthy",
    )
    assert prometheus_series(metrics_port)[alpha_health] >= 1
    for index in range(10):
        with client() as sock:
            assert query(sock, listen, f"h{index}".encode()) == "alpha"
            sent += 1

    wait_for(
        lambda: (
            True
            if prometheus_series(metrics_port).get(("sozu_udp_datagrams_in_total", at_listener))
            == sent
            else None
        ),
        timeout=5,
        what=f"{sent} datagrams in",
    )
    assert alpha.datagrams > 0


def test_udp_routing_built_live_from_the_cli(
    start_daemon: DaemonFactory, echoes: list[NamedUdpEcho]
) -> None:
    daemon = start_daemon()
    listen = free_port()
    address = f"127.0.0.1:{listen}"
    for command in (
        ("listener", "udp", "add", "-a", address, "--max-rx-datagram-size", "2048"),
        ("listener", "udp", "update", "-a", address, "--max-rx-datagram-size", "1024"),
        (
            "cluster",
            "add",
            "-i",
            "live",
            "--load-balancing-policy",
            "hrw",
            "--udp-affinity",
            "source_ip_port",
            "--udp-responses",
            "1",
            "--udp-health-mode",
            "health_off",
        ),
        ("frontend", "udp", "add", "--id", "live", "-a", address),
        *(
            ("backend", "add", "-i", "live", "--backend-id", echo.name, "-a", echo.address)
            for echo in echoes
        ),
        ("listener", "udp", "activate", "-a", address),
    ):
        result = daemon.sozu(*command)
        assert result.returncode == 0, (command, result.stderr)
    assert "1024" in daemon.sozu("-j", "listener", "list").stdout
    assert '"SOURCE_IP_PORT"' in daemon.sozu("-j", "cluster", "list", "-i", "live").stdout
    served = []
    for index in range(20):
        with client() as sock:
            served.append(query(sock, listen, f"c{index}".encode()))
    assert set(served) == {"alpha", "beta"}, served
    refused = daemon.sozu("listener", "udp", "update", "-a", "127.0.0.1:1", "--max-flows", "3")
    assert refused.returncode != 0
