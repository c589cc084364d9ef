"""The Prometheus endpoint passes `promtool check metrics` (Debian's `prometheus` package).

A daemon with HTTP, TCP and UDP listeners serves a little traffic of each kind (answered
requests through a backend, a 503 for an unknown host, a TCP connection, UDP datagrams
through an echo backend) so that listener, cluster, backend and UDP series all exist; the
scrape must then satisfy promtool's checks (names, units, types, help texts).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import urllib.request

import pytest

from e2e.support.daemon import DaemonFactory, wait_for
from e2e.support.http_backends import EchoHeaders, cluster, listener
from e2e.support.net import free_port, scrape
from e2e.support.programs import require_program

pytestmark = pytest.mark.e2e


def _udp_echo(stop: threading.Event) -> tuple[socket.socket, threading.Thread]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)

    def run() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            sock.sendto(data, peer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return sock, thread


def _get(port: int, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status: int = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status


def _scraped_with(port: int, family: str) -> str | None:
    """The body of a scrape holding `family` (None: not yet)."""
    head, _, body = scrape(port).partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return body if family in body else None


def test_the_metrics_endpoint_passes_promtool(start_daemon: DaemonFactory) -> None:
    promtool = require_program("promtool")
    stop = threading.Event()
    echo, thread = _udp_echo(stop)
    http_port, tcp_port, udp_port, metrics = free_port(), free_port(), free_port(), free_port()
    try:
        with EchoHeaders("web") as web:
            daemon = start_daemon(
                extra=f'[metrics]\nprometheus_address = "127.0.0.1:{metrics}"\n'
                + listener(http_port)
                + listener(tcp_port, "tcp")
                + listener(udp_port, "udp")
                + cluster(
                    "web",
                    [{"address": f"127.0.0.1:{http_port}", "hostname": "web.test"}],
                    [{"address": web.address, "backend_id": "web-1"}],
                )
                + f'[clusters.raw]\nprotocol = "tcp"\n'
                f'frontends = [{{ address = "127.0.0.1:{tcp_port}" }}]\n'
                f'backends = [{{ address = "{web.address}" }}]\n'
                + f'[clusters.dgram]\nprotocol = "tcp"\n'
                f'frontends = [{{ address = "127.0.0.1:{udp_port}" }}]\n'
                f'backends = [{{ address = "127.0.0.1:{echo.getsockname()[1]}" }}]\n'
            )
            daemon.wait_running()
            assert wait_for(lambda: _get(http_port, "web.test") == 200 or None, what="a 200")
            assert _get(http_port, "nobody.test") >= 400  # no route: a generated answer
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as raw:
                raw.sendall(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
                assert raw.recv(4096).startswith(b"HTTP/1.1 200")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(2)
                for index in range(3):
                    client.sendto(b"ping %d" % index, ("127.0.0.1", udp_port))
                    assert client.recvfrom(2048)[0] == b"ping %d" % index
            text = wait_for(lambda: _scraped_with(metrics, "sozu_udp_datagrams_in_total"))
    finally:
        stop.set()
        echo.close()
        thread.join(5)
    for family in ("sozu_http_requests_total", "sozu_udp_datagrams_in_total"):
        assert family in text
    # TLS counters belong to HTTPS listeners only.
    assert "sozu_https_handshakes_total" not in text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "", checked.stdout
