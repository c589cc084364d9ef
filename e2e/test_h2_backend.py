"""Clusters with `http2 = true`: the real daemon speaks h2c to a Python `h2` backend
(e2e/support/h2c_backend.py). Every front/back pair is exercised (HTTP/1.1 and h2 clients
to an h2 backend, next to an HTTP/1.1 nginx cluster on the same listeners): routing, the
request translated (pseudo-headers, `te: trailers` kept, forwarding headers added), bodies
byte-exact both ways, trailers relayed, 100 concurrent streams of one client connection
multiplexed on the backend connection, a backend GOAWAY followed by new connections with no
failed request, and `cluster h2 disable|enable` switching the backend protocol live."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
import trustme

from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.h2c_backend import H2cBackend, h2c_backend, pattern
from e2e.support.http_backends import cluster, listener
from e2e.support.net import free_port, prometheus_series
from e2e.support.nginx import Nginx, nginx_backends
from e2e.support.programs import require_program

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 15.0


@dataclass
class Site:
    http_port: int
    https_port: int
    backend: H2cBackend
    nginx: Nginx
    ca_file: Path
    metrics_port: int
    daemon: Daemon


@pytest.fixture
def site(start_daemon: DaemonFactory, tmp_path: Path) -> Iterator[Site]:
    """HTTP and HTTPS listeners; `grpc.test` and `h2.test` go to the h2c backend (cluster
    `h2back`, http2 = true), `h1.test` to nginx (HTTP/1.1)."""
    ca = trustme.CA()
    issued = ca.issue_cert("h2.test", "h1.test", "grpc.test")
    cert, key, ca_file = tmp_path / "site.crt", tmp_path / "site.key", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    http_port, https_port, metrics_port = free_port(), free_port(), free_port()
    with h2c_backend() as backend, nginx_backends(tmp_path / "nginx", "h1") as nginx:
        config = listener(http_port) + listener(https_port, "https")

        def frontends(*names: str) -> list[dict[str, object]]:
            found: list[dict[str, object]] = []
            for name in names:
                found.append({"address": f"127.0.0.1:{http_port}", "hostname": name})
                found.append(
                    {
                        "address": f"127.0.0.1:{https_port}",
                        "hostname": name,
                        "certificate": str(cert),
                        "key": str(key),
                    }
                )
            return found

        config += cluster(
            "h2back",
            frontends("h2.test", "grpc.test"),
            [{"address": backend.address, "backend_id": "h2c-1"}],
            http2=True,
        )
        config += cluster(
            "h1back", frontends("h1.test"), [{"address": nginx.address("h1"), "backend_id": "n"}]
        )
        config += f'[metrics]\nprometheus_address = "127.0.0.1:{metrics_port}"\n'
        daemon = start_daemon(extra=config)
        yield Site(http_port, https_port, backend, nginx, ca_file, metrics_port, daemon)


def _curl(site: Site, *args: str) -> subprocess.CompletedProcess[bytes]:
    curl = require_program("curl")
    resolve: list[str] = []
    for name in ("h2.test", "h1.test"):
        for port in (site.http_port, site.https_port):
            resolve += ["--resolve", f"{name}:{port}:127.0.0.1"]
    return subprocess.run(
        [curl, "-sS", "--cacert", str(site.ca_file), *resolve, *args],
        capture_output=True,
        timeout=60,
        check=False,
    )


def _headers(raw: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in raw.decode("latin-1").splitlines():
        name, colon, value = line.partition(":")
        if colon and not line.startswith("HTTP/"):
            found[name.strip().lower()] = value.strip()
    return found


@pytest.mark.parametrize("front", ["http/1.1", "https/1.1", "h2"])
def test_each_client_protocol_reaches_the_h2_backend(
    site: Site, front: str, tmp_path: Path
) -> None:
    port = site.http_port if front == "http/1.1" else site.https_port
    scheme = "http" if front == "http/1.1" else "https"
    version = "--http2" if front == "h2" else "--http1.1"
    body = pattern(300_000)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    head_file = tmp_path / "head.txt"
    result = _curl(
        site,
        version,
        "-D",
        str(head_file),
        "--data-binary",
        f"@{upload}",
        "-H",
        "te: trailers",
        f"{scheme}://h2.test:{port}/echo?x=1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == body
    headers = _headers(head_file.read_bytes())
    assert headers["x-method"] == "POST"
    assert headers["x-path"] == "/echo?x=1"
    assert headers["x-authority"] == f"h2.test:{port}"
    assert headers["x-scheme"] == "http"
    assert headers["x-body-sha256"] == hashlib.sha256(body).hexdigest()
    assert headers["x-forwarded-for"] == "127.0.0.1"
    if front == "h2":
        assert headers["x-te"] == "trailers"
    # A big response, flow-controlled on both connections.
    result = _curl(site, version, f"{scheme}://h2.test:{port}/size/5000000")
    assert result.returncode == 0, result.stderr
    assert result.stdout == pattern(5_000_000)
    # The HTTP/1.1 cluster beside it is unchanged.
    result = _curl(site, version, f"{scheme}://h1.test:{port}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"h1\n"


def test_trailers_are_relayed_to_http1_and_h2_clients(site: Site) -> None:
    curl = require_program("curl")
    # HTTP/1.1 client: the response comes chunked, trailers after the last chunk (raw).
    result = subprocess.run(
        [
            curl,
            "-sS",
            "--raw",
            "-H",
            "te: trailers",
            f"http://127.0.0.1:{site.http_port}/trailers",
            "-H",
            "host: h2.test",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(b"0\r\nx-trailer: done\r\ngrpc-status: 0\r\n\r\n"), result.stdout
    # h2 client: the trailers come as the final HEADERS of the stream.
    got = _h2_get(site, [("/trailers", "h2.test")])
    _, body, trailers, reset = got[1]
    assert reset is None
    assert body == b"body before trailers\n"
    assert (b"x-trailer", b"done") in trailers
    assert (b"grpc-status", b"0") in trailers


def _h2_get(
    site: Site, requests: list[tuple[str, str]]
) -> dict[int, tuple[list[tuple[bytes, bytes]], bytes, list[tuple[bytes, bytes]], int | None]]:
    """GET each (path, authority) as a stream of one h2 connection to the HTTPS listener:
    per stream id, its response headers, body, trailers and reset code."""
    import socket

    context = ssl.create_default_context(cafile=str(site.ca_file))
    context.set_alpn_protocols(["h2"])
    results: dict[
        int, tuple[list[tuple[bytes, bytes]], bytes, list[tuple[bytes, bytes]], int | None]
    ] = {}
    with (
        socket.create_connection(("127.0.0.1", site.https_port), timeout=IO_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="h2.test") as tls,
    ):
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(2**30)
        pending: dict[int, tuple[list[tuple[bytes, bytes]], bytearray, list[tuple[bytes, bytes]]]]
        pending = {}
        for path, authority in requests:
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(
                stream_id,
                [
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", authority),
                    (":path", path),
                    ("te", "trailers"),
                ],
                end_stream=True,
            )
            pending[stream_id] = ([], bytearray(), [])
        tls.sendall(conn.data_to_send())
        while len(results) < len(requests):
            data = tls.recv(65536)
            assert data, "the connection closed before every stream ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    pending[event.stream_id][0].extend(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    pending[event.stream_id][1].extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    pending[event.stream_id][2].extend(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    got = pending[event.stream_id]
                    results[event.stream_id] = (got[0], bytes(got[1]), got[2], None)
                elif isinstance(event, h2.events.StreamReset):
                    got = pending[event.stream_id]
                    code = int(event.error_code or 0)
                    results[event.stream_id] = (got[0], bytes(got[1]), got[2], code)
            tls.sendall(conn.data_to_send())
    return results


def test_hundred_streams_of_one_connection_are_multiplexed(site: Site) -> None:
    sizes = [1000 + 3331 * i for i in range(100)]
    results = _h2_get(site, [(f"/size/{size}", "h2.test") for size in sizes])
    assert len(results) == 100
    for (stream_id, (headers, body, _, reset)), size in zip(
        sorted(results.items()), sizes, strict=True
    ):
        assert reset is None, stream_id
        assert (b":status", b"200") in headers
        assert hashlib.sha256(body).digest() == hashlib.sha256(pattern(size)).digest()
    # Far fewer backend connections than streams: they were multiplexed.
    assert 1 <= site.backend.connections <= 4, site.backend.connections


def test_a_backend_goaway_loses_no_request(site: Site) -> None:
    curl = require_program("curl")
    failures: list[str] = []
    done = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal done
        while not stop.is_set():
            result = subprocess.run(
                [
                    curl,
                    "-sS",
                    "-H",
                    "host: h2.test",
                    "--parallel",
                    "--parallel-max",
                    "8",
                    *[f"http://127.0.0.1:{site.http_port}/size/{20000 + i}" for i in range(8)],
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}\\n",
                ]
                + ["-o", "/dev/null"] * 7,
                capture_output=True,
                timeout=60,
                check=False,
            )
            codes = result.stdout.decode().split()
            if result.returncode != 0 or codes != ["200"] * 8:
                failures.append(f"{result.returncode} {codes} {result.stderr[-300:]!r}")
            done += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: done >= 3 or None, timeout=20, what="load before the GOAWAY")
        before = site.backend.connections
        for _ in range(3):
            site.backend.goaway()
            target = site.backend.connections + 1
            wait_for(
                lambda target=target: site.backend.connections >= target or None,  # type: ignore[misc]
                timeout=20,
                what="a new backend connection after the GOAWAY",
            )
        wait_for(lambda: done >= 10 or None, timeout=30, what="load after the GOAWAYs")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failures, failures[:5]
    assert site.backend.connections > before


def test_cluster_h2_disable_switches_to_http1(site: Site) -> None:
    result = _curl(site, "--http1.1", f"http://h2.test:{site.http_port}/anything")
    assert result.returncode == 0
    streams = site.backend.streams
    assert streams >= 1
    _ok(site.daemon.sozu("cluster", "h2", "disable", "-i", "h2back"))
    # Spoken to in HTTP/1.1 now: the h2c backend refuses it (no preface), the client gets an
    # error status and the backend sees no new stream.
    result = _curl(
        site,
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"http://h2.test:{site.http_port}/anything",
    )
    assert result.stdout.decode() in ("502", "503"), result.stdout
    assert site.backend.streams == streams
    _ok(site.daemon.sozu("cluster", "h2", "enable", "-i", "h2back"))
    result = _curl(site, "--http1.1", f"http://h2.test:{site.http_port}/again")
    assert result.returncode == 0, result.stderr
    assert site.backend.streams == streams + 1

    def counted() -> bool | None:
        series = prometheus_series(site.metrics_port)
        opened = sum(
            value for (name, _), value in series.items() if name == "sozu_h2_backend_streams_total"
        )
        return True if opened >= streams + 1 else None

    wait_for(counted, timeout=10, what="the backend streams counted")


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def test_h2c_with_prior_knowledge_on_the_http_listener(site: Site) -> None:
    """A client that opens a plain connection with the HTTP/2 preface speaks h2c: to the h2
    backend and to the HTTP/1.1 one."""
    for host, expected in (("h2.test", None), ("h1.test", b"h1\n")):
        result = _curl(
            site,
            "--http2-prior-knowledge",
            "-w",
            "\\n%{http_version}",
            f"http://{host}:{site.http_port}/echo",
        )
        assert result.returncode == 0, result.stderr
        body, _, version = result.stdout.rpartition(b"\n")
        assert version == b"2"
        if expected is not None:
            assert body == expected
    h2load = require_program("h2load")
    result_text = subprocess.run(
        [
            h2load,
            "-n",
            "600",
            "-c",
            "3",
            "-m",
            "10",
            "-H",
            ":authority: h2.test",
            f"http://127.0.0.1:{site.http_port}/size/100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result_text.returncode == 0, result_text.stdout + result_text.stderr
    assert "Application protocol: h2c" in result_text.stdout, result_text.stdout
    assert "600 succeeded, 0 failed, 0 errored" in result_text.stdout, result_text.stdout
    assert "status codes: 600 2xx" in result_text.stdout, result_text.stdout
