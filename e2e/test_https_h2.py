"""HTTP/2 on an HTTPS listener through the real daemon, to nginx speaking HTTP/1.1: curl
`--http2` routed by host, two clusters on one h2 connection (a client on the `h2` library),
a malformed request stream reset without reaching a backend, nghttp, a bounded h2load
run with zero errors, and each flood class cut with GOAWAY ENHANCE_YOUR_CALM (raw frames)
while a curl loop on other connections sees no failure and the defence's metric moves."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
import trustme
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from e2e.support.daemon import DaemonFactory, wait_for
from e2e.support.http_backends import cluster, listener
from e2e.support.net import free_port, prometheus_series
from e2e.support.nginx import BIG_FILE_SIZE, Nginx, nginx_backends
from e2e.support.programs import require_program
from e2e.support.tls_site import alpha_beta_https

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 15.0


@dataclass
class H2Site:
    port: int
    nginx: Nginx
    ca_file: Path
    ca: trustme.CA
    metrics_port: int


@pytest.fixture
def h2_site(start_daemon: DaemonFactory, tmp_path: Path) -> Iterator[H2Site]:
    """An HTTPS listener (default ALPN: h2, http/1.1) with one certificate for `alpha.test`
    and `beta.test`, each routed to its own nginx cluster."""
    listen, metrics_port = free_port(), free_port()
    with nginx_backends(tmp_path / "nginx", "alpha", "beta") as nginx:
        config, ca_file, ca = alpha_beta_https(tmp_path, listen, metrics_port, nginx)
        start_daemon(extra=config)
        yield H2Site(listen, nginx, ca_file, ca, metrics_port)


def _curl(site: H2Site, *args: str) -> subprocess.CompletedProcess[str]:
    curl = require_program("curl")
    resolve: list[str] = []
    for name in ("alpha", "beta"):
        resolve += ["--resolve", f"{name}.test:{site.port}:127.0.0.1"]
    return subprocess.run(
        [curl, "-sS", "--http2", "--cacert", str(site.ca_file), *resolve, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_curl_http2_is_routed_by_authority(h2_site: H2Site, tmp_path: Path) -> None:
    for name in ("alpha", "beta"):
        result = _curl(
            h2_site, "-w", "\\n%{http_version} %{http_code}", f"https://{name}.test:{h2_site.port}/"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{name}\n\n2 200", result.stdout
    result = _curl(h2_site, f"https://alpha.test:{h2_site.port}/headers")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "request: GET /headers HTTP/1.1" in lines
    assert f"host: alpha.test:{h2_site.port}" in lines
    assert "x-forwarded-proto: https" in lines
    downloaded = tmp_path / "big.bin"
    result = _curl(
        h2_site, "-o", str(downloaded), f"https://alpha.test:{h2_site.port}/files/big.bin"
    )
    assert result.returncode == 0, result.stderr
    assert downloaded.stat().st_size == BIG_FILE_SIZE
    assert downloaded.read_bytes() == h2_site.nginx.big_file.read_bytes()

    def counted_as_h2() -> bool | None:
        series = prometheus_series(h2_site.metrics_port)
        counts = {
            (dict(labels)["cluster"], dict(labels)["protocol"]): value
            for (name, labels), value in series.items()
            if name == "sozu_http_cluster_requests_total"
        }
        ok = counts.get(("alpha", "h2"), 0) >= 3 and counts.get(("beta", "h2"), 0) >= 1
        return True if ok and ("alpha", "http/1.1") not in counts else None

    wait_for(counted_as_h2, timeout=10, what="the streams counted per cluster as h2")


def _h2_exchange(
    site: H2Site, requests: list[list[tuple[str, str]]], body: bytes | None = None
) -> dict[int, tuple[list[tuple[bytes, bytes]], bytes, int | None]]:
    """Send `requests` as streams of one h2 connection; return per stream id its response
    headers, body and reset code (None when it ended normally)."""
    context = ssl.create_default_context(cafile=str(site.ca_file))
    context.set_alpn_protocols(["h2"])
    results: dict[int, tuple[list[tuple[bytes, bytes]], bytes, int | None]] = {}
    with (
        socket.create_connection(("127.0.0.1", site.port), timeout=IO_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="alpha.test") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        # No client-side header checks: the tests send malformed requests on purpose.
        config = h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        pending: dict[int, tuple[list[tuple[bytes, bytes]], bytearray]] = {}
        for headers in requests:
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, headers, end_stream=body is None)
            if body is not None:
                conn.send_data(stream_id, body, end_stream=True)
            pending[stream_id] = ([], bytearray())
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
                elif isinstance(event, h2.events.StreamEnded):
                    got = pending[event.stream_id]
                    results[event.stream_id] = (got[0], bytes(got[1]), None)
                elif isinstance(event, h2.events.StreamReset):
                    got = pending[event.stream_id]
                    code = int(event.error_code or 0)
                    results[event.stream_id] = (got[0], bytes(got[1]), code)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    # Streams not ended yet are reported with the GOAWAY's code, negated.
                    for stream_id, got in pending.items():
                        if stream_id not in results:
                            code = -int(event.error_code or 0)
                            results[stream_id] = (got[0], bytes(got[1]), code)
            tls.sendall(conn.data_to_send())
    return results


def _request(authority: str, path: str = "/", **extra: str) -> list[tuple[str, str]]:
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", authority)]
    return [*headers, (":path", path), *extra.items()]


def test_streams_of_one_connection_reach_two_clusters(h2_site: H2Site) -> None:
    results = _h2_exchange(
        h2_site, [_request("alpha.test"), _request("beta.test"), _request("alpha.test")]
    )
    bodies = [results[i][1] for i in sorted(results)]
    assert bodies == [b"alpha\n", b"beta\n", b"alpha\n"]
    for headers, _, reset in results.values():
        assert reset is None
        assert (b":status", b"200") in headers
        assert not any(name in (b"connection", b"keep-alive") for name, _ in headers)


def test_a_malformed_stream_is_reset_and_the_others_are_served(h2_site: H2Site) -> None:
    # A body longer than its content-length: never relayed; the connection ends with GOAWAY
    # PROTOCOL_ERROR (reported by the helper as -1).
    post = [(":method", "POST"), (":scheme", "https"), (":authority", "alpha.test")]
    lying = [*post, (":path", "/upload/x"), ("content-length", "2")]
    results = _h2_exchange(h2_site, [lying], body=b"0123456789")
    assert [reset for _, _, reset in results.values()] == [-1]
    # A connection-specific header: that stream alone is reset with PROTOCOL_ERROR.
    bad = _request("alpha.test", "/", **{"connection": "keep-alive"})
    results = _h2_exchange(h2_site, [bad, _request("beta.test")])
    assert [results[k][2] for k in sorted(results)] == [1, None]
    assert [results[k][1] for k in sorted(results)] == [b"", b"beta\n"]


def test_nghttp_fetches_both_hosts(h2_site: H2Site) -> None:
    nghttp = require_program("nghttp")
    for name in ("alpha", "beta"):
        result = subprocess.run(
            [nghttp, "-H", f":authority: {name}.test", f"https://127.0.0.1:{h2_site.port}/"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == f"{name}\n", result.stdout


def test_h2load_bounded_run_has_no_error(h2_site: H2Site) -> None:
    h2load = require_program("h2load")
    result = subprocess.run(
        [
            h2load,
            "-n",
            "2000",
            "-c",
            "4",
            "-m",
            "10",
            f"--connect-to=127.0.0.1:{h2_site.port}",
            f"https://alpha.test:{h2_site.port}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored",
        result.stdout,
    )
    assert line is not None, result.stdout
    total, done, succeeded, failed, errored = (int(g) for g in line.groups())
    assert (total, done, succeeded, failed, errored) == (2000, 2000, 2000, 0, 0), result.stdout
    assert "status codes: 2000 2xx" in result.stdout, result.stdout

    # Ended streams let go of their timers (and so of their cores): what stays armed is the
    # pooled backend connections, far fewer than the 2,000 streams (read from a snapshot
    # taken after all of them were counted).
    def streams_let_go() -> bool | None:
        series = prometheus_series(h2_site.metrics_port)
        requests = sum(
            value
            for (name, labels), value in series.items()
            if name == "sozu_http_cluster_requests_total" and ("protocol", "h2") in labels
        )
        if requests < 2000:
            return None
        armed = [v for (name, _), v in series.items() if name == "sozu_event_loop_timers_armed"]
        assert armed
        assert sum(armed) < 200, armed
        return True

    wait_for(streams_let_go, timeout=10, what="the streams' timers disarmed")


# -- flood defences (upstream's default limits: 100 PING, 50 SETTINGS, 100 empty DATA, 100
# stream-0 WINDOW_UPDATE and 100 RST_STREAM per second, 20 CONTINUATION per header block)


def _flood(kind: str) -> bytes:
    """Raw frames well past the default limit of `kind`, after a request on stream 1 (so
    that DATA and RST_STREAM have a stream to name)."""
    if kind == "ping":
        return b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(300))
    if kind == "settings":
        return b"".join(SettingsFrame(0, settings={4: 65535}).serialize() for _ in range(200))
    if kind == "empty_data":
        return b"".join(DataFrame(1, b"").serialize() for _ in range(300))
    if kind == "window_update_stream0":
        return b"".join(WindowUpdateFrame(0, window_increment=1).serialize() for _ in range(300))
    if kind == "priority":
        return b"".join(
            PriorityFrame(3 + 2 * i, depends_on=0, stream_weight=15).serialize() for i in range(300)
        )
    if kind == "continuation":
        block = HeadersFrame(3, data=b"\x82").serialize()  # END_HEADERS never comes
        return block + b"".join(ContinuationFrame(3, data=b"\x84").serialize() for _ in range(60))
    raise AssertionError(kind)


def _flood_connection(site: H2Site, kind: str) -> int | None:
    """Open an h2 connection, start a POST on stream 1, send the flood; the GOAWAY error code
    received (None when the connection ended without one)."""
    context = ssl.create_default_context(cafile=str(site.ca_file))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", site.port), timeout=IO_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="alpha.test") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        post = [(":method", "POST"), (":scheme", "https"), (":authority", "alpha.test")]
        conn.send_headers(1, [*post, (":path", "/upload/flood")])
        tls.sendall(conn.data_to_send())
        # Cut while sending: what it answered is still read below.
        with contextlib.suppress(OSError):
            tls.sendall(_flood(kind))
        code = None
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline:
            try:
                data = tls.recv(65536)
            except OSError:
                break
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    code = int(event.error_code or 0)
        return code


FLOOD_KINDS = (
    "ping",
    "settings",
    "empty_data",
    "window_update_stream0",
    "priority",
    "continuation",
)


def test_each_flood_is_cut_while_other_clients_are_served(h2_site: H2Site) -> None:
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def curl_loop() -> None:
        nonlocal served
        while not stop.is_set():
            result = _curl(
                h2_site,
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                f"https://beta.test:{h2_site.port}/",
            )
            if result.returncode != 0 or result.stdout != "2 200":
                failures.append(f"{result.returncode} {result.stdout} {result.stderr}")
            served += 1

    loop = threading.Thread(target=curl_loop, daemon=True)
    loop.start()
    try:
        for kind in FLOOD_KINDS:
            code = _flood_connection(h2_site, kind)
            assert code == 11, f"{kind}: GOAWAY {code}, not ENHANCE_YOUR_CALM (11)"
    finally:
        stop.set()
        loop.join(timeout=60)
    assert served > 0
    assert not failures, failures

    def counted() -> bool | None:
        series = prometheus_series(h2_site.metrics_port)
        kinds = {
            dict(labels)["kind"]: value
            for (name, labels), value in series.items()
            if name == "sozu_h2_flood_violations_total"
        }
        return True if all(kinds.get(kind, 0) >= 1 for kind in FLOOD_KINDS) else None

    wait_for(counted, timeout=10, what="every flood kind counted in the metrics")


def test_alpn_without_h2_refuses_an_h2_only_client_and_prefers_its_order(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """A listener whose alpn_protocols is `http/1.1, h2` gives a client offering both what
    it lists first; one offering only h2 to a listener without h2 gets no protocol (Python's
    ssl cannot fail that handshake as upstream's rustls does) and, when it speaks HTTP/2
    anyway, GOAWAY HTTP_1_1_REQUIRED; the refusal is counted."""
    ca = trustme.CA()
    issued = ca.issue_cert("alpha.test")
    cert, key, ca_file = tmp_path / "site.crt", tmp_path / "site.key", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    h1_first, h1_only, metrics_port = free_port(), free_port(), free_port()
    config = listener(h1_first, "https") + 'alpn_protocols = ["http/1.1", "h2"]\n'
    config += listener(h1_only, "https") + 'alpn_protocols = ["http/1.1"]\n'
    with nginx_backends(tmp_path / "nginx", "alpha") as nginx:
        frontends: list[dict[str, object]] = [
            {
                "address": f"127.0.0.1:{port}",
                "hostname": "alpha.test",
                "certificate": str(cert),
                "key": str(key),
            }
            for port in (h1_first, h1_only)
        ]
        config += cluster(
            "alpha", frontends, [{"address": nginx.address("alpha"), "backend_id": "a"}]
        )
        config += f'[metrics]\nprometheus_address = "127.0.0.1:{metrics_port}"\n'
        start_daemon(extra=config)

        def negotiated(port: int, offer: list[str]) -> str | None:
            context = ssl.create_default_context(cafile=str(ca_file))
            context.set_alpn_protocols(offer)
            with (
                socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw,
                context.wrap_socket(raw, server_hostname="alpha.test") as tls,
            ):
                return tls.selected_alpn_protocol()

        assert negotiated(h1_first, ["h2", "http/1.1"]) == "http/1.1"
        assert negotiated(h1_first, ["h2"]) == "h2"
        assert negotiated(h1_only, ["h2", "http/1.1"]) == "http/1.1"
        context = ssl.create_default_context(cafile=str(ca_file))
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", h1_only), timeout=IO_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname="alpha.test") as tls,
        ):
            assert tls.selected_alpn_protocol() is None
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.send_headers(1, _request("alpha.test"), end_stream=True)
            tls.sendall(conn.data_to_send())
            codes: list[int] = []
            while not codes:
                data = tls.recv(65536)
                assert data, "closed without a GOAWAY"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        codes.append(int(event.error_code or 0))
        assert codes == [0xD]  # HTTP_1_1_REQUIRED

        def counted() -> bool | None:
            refused = sum(
                value
                for (name, labels), value in prometheus_series(metrics_port).items()
                if name == "sozu_https_h2_without_alpn_total"
                and dict(labels).get("listener") == f"127.0.0.1:{h1_only}"
            )
            return True if refused >= 1 else None

        wait_for(counted, timeout=10, what="the refusal counted")
