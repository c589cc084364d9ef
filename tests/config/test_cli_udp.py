"""`sozu cluster add --udp-*` and `sozu listener udp add|update` build the right requests."""

from __future__ import annotations

from typing import Any

import click
import pytest
from click.testing import CliRunner

from sozu.cli import routing_commands
from sozu.cli.main import sozu
from sozu.command import requests as rq
from sozu.command.requests import Request
from sozu.command.types import UdpClusterConfig, UdpHealthConfig, UdpListenerConfig


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Request]:
    captured: list[Request] = []

    def capture(ctx: click.Context, request: Request, render: Any = None) -> None:
        captured.append(request)

    monkeypatch.setattr(routing_commands, "send", capture)
    return captured


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(sozu, list(args), catch_exceptions=False)


def test_cluster_add_with_every_udp_option(sent: list[Request]) -> None:
    result = _invoke(
        "cluster", "add", "-i", "dns",
        "--load-balancing-policy", "maglev",
        "--udp-affinity", "source_ip_port",
        "--udp-responses", "1",
        "--udp-requests", "2",
        "--udp-send-proxy-protocol",
        "--udp-proxy-protocol-every-datagram",
        "--udp-health-mode", "udp_probe",
        "--udp-health-tcp-port", "5353",
        "--udp-health-rise", "3",
        "--udp-health-fall", "4",
        "--udp-health-no-fail-open",
        "--udp-health-payload", "ping",
        "--udp-health-interval", "7",
        "--udp-health-timeout", "6",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (request,) = sent
    assert isinstance(request, rq.AddCluster)
    assert request.cluster.load_balancing == "MAGLEV"
    assert request.cluster.udp == UdpClusterConfig(
        affinity_key="SOURCE_IP_PORT",
        responses=1,
        requests=2,
        send_proxy_protocol=True,
        proxy_protocol_every_datagram=True,
        health=UdpHealthConfig(
            mode="UDP_PROBE",
            tcp_port=5353,
            rise=3,
            fall=4,
            fail_open=False,
            udp_probe_payload="ping",
            probe_interval_seconds=7,
            probe_timeout_seconds=6,
        ),
    )


def test_cluster_add_udp_defaults(sent: list[Request]) -> None:
    assert _invoke("cluster", "add", "-i", "plain", "--load-balancing-policy", "hrw").exit_code == 0
    assert _invoke("cluster", "add", "-i", "udp", "--udp-responses", "1").exit_code == 0
    plain, udp = sent
    assert isinstance(plain, rq.AddCluster)
    assert isinstance(udp, rq.AddCluster)
    assert plain.cluster.udp is None
    assert plain.cluster.load_balancing == "HRW"
    assert udp.cluster.udp == UdpClusterConfig(responses=1)


def test_cluster_add_rejects_a_bad_udp_value(sent: list[Request]) -> None:
    result = CliRunner().invoke(sozu, ["cluster", "add", "-i", "x", "--udp-affinity", "nope"])
    assert result.exit_code == 2
    assert sent == []


def test_listener_udp_add_and_update(sent: list[Request]) -> None:
    address = "127.0.0.1:5300"
    add = _invoke(
        "listener", "udp", "add", "-a", address,
        "--max-rx-datagram-size", "4096", "--max-flows", "10",
        "--front-timeout", "3", "--back-timeout", "4",
    )  # fmt: skip
    assert add.exit_code == 0, add.output
    update = _invoke(
        "listener", "udp", "update", "-a", address,
        "--max-rx-datagram-size", "512", "--front-timeout", "9",
    )  # fmt: skip
    assert update.exit_code == 0, update.output
    added, updated = sent
    assert added == rq.AddUdpListener(
        listener=UdpListenerConfig(
            address=address,
            max_rx_datagram_size=4096,
            max_flows=10,
            front_timeout=3,
            back_timeout=4,
        )
    )
    assert updated == rq.UpdateUdpListener(
        address=address, max_rx_datagram_size=512, front_timeout=9
    )


def test_datagram_options_are_for_udp_listeners(sent: list[Request]) -> None:
    result = CliRunner().invoke(
        sozu, ["listener", "tcp", "add", "-a", "127.0.0.1:80", "--max-rx-datagram-size", "9"]
    )
    assert result.exit_code == 2
    assert sent == []
