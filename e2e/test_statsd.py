"""StatsD export from a live daemon (`[metrics] address`): the lines a UDP socket receives
add up to the traffic the test sent, under upstream's names, with cluster tags."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from e2e.support.daemon import DaemonFactory
from e2e.support.http_backends import EchoHeaders, cluster, listener
from e2e.support.net import free_port

pytestmark = pytest.mark.e2e

REQUESTS = 5


def _counts(lines: list[str], name: str, tag: str | None = None) -> int:
    total = 0
    for line in lines:
        metric, _, rest = line.partition(":")
        value, _, kind_and_tags = rest.partition("|")
        kind, _, tags = kind_and_tags.partition("|")
        if metric == name and kind == "c" and (tag is None or tag in tags.split(",")):
            total += int(value)
    return total


def test_statsd_lines_add_up_to_the_traffic(start_daemon: DaemonFactory) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.5)
    port = free_port()
    with receiver, EchoHeaders("web") as web:
        daemon = start_daemon(
            extra=f'[metrics]\naddress = "127.0.0.1:{receiver.getsockname()[1]}"\n'
            "tagged_metrics = true\n"
            + listener(port)
            + cluster(
                "web",
                [{"address": f"127.0.0.1:{port}", "hostname": "web.test"}],
                [{"address": web.address, "backend_id": "web-1"}],
            )
        )
        daemon.wait_running()
        for _ in range(REQUESTS):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/", headers={"Host": "web.test"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
        lines: list[str] = []
        deadline = time.monotonic() + 10
        # Sent once a second: wait for the requests to show, then one more second for
        # anything that would wrongly come after.
        settled: float | None = None
        while time.monotonic() < deadline:
            try:
                datagram = receiver.recv(65535)
            except TimeoutError:
                datagram = b""
            if datagram:
                assert len(datagram) <= 1432
                lines += datagram.decode().split("\n")
            total = sum(
                _counts([line], "sozu.http.requests") for line in lines if "cluster_id:" not in line
            )
            if total >= REQUESTS and settled is None:
                settled = time.monotonic() + 2.5
            if settled is not None and time.monotonic() > settled:
                break
    process = sum(
        _counts([line], "sozu.http.requests") for line in lines if "cluster_id:" not in line
    )
    assert process == REQUESTS, lines
    per_cluster = sum(
        _counts([line], "sozu.http.requests") for line in lines if "#cluster_id:web" in line
    )
    assert per_cluster == REQUESTS, lines
    assert _counts(lines, "sozu.http.status.2xx") == REQUESTS, lines
    assert any(line.startswith("sozu.configuration.clusters:1|g") for line in lines), lines
