"""HTTP and HTTPS listeners with `expect_proxy`: a PROXY v2 header comes first, its source is
the client address the backend is told about; a connection without a valid header is closed."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme

from e2e.support.daemon import DaemonFactory, wait_for
from e2e.support.http_backends import EchoHeaders, Reader, cluster, listener, read_response
from e2e.support.net import free_port, prometheus_series
from sozu.worker.core.proxy_protocol import SIGNATURE, build_v2

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 15.0
SOURCE = ("127.0.0.77", 40123)


def _request(sock: socket.socket | ssl.SSLSocket) -> bytes:
    sock.sendall(b"GET /who HTTP/1.1\r\nHost: proxied.test\r\n\r\n")
    response = read_response(Reader(sock))
    assert response is not None
    assert response.status == 200, response.head
    return response.body


def _handshake_and_request(context: ssl.SSLContext, raw: socket.socket) -> None:
    with context.wrap_socket(raw, server_hostname="proxied.test") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: proxied.test\r\n\r\n")
        if not tls.recv(1024):
            raise OSError("closed")


def _closed_without_answer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_http_listener_reads_the_proxy_header_and_forwards_its_source(
    start_daemon: DaemonFactory,
) -> None:
    listen, metrics = free_port(), free_port()
    destination = ("127.0.0.1", listen)
    with EchoHeaders("echo") as echo:
        config = f'[metrics]\nprometheus_address = "127.0.0.1:{metrics}"\n'
        config += listener(listen, expect_proxy=True)
        config += cluster(
            "proxied",
            [{"address": f"127.0.0.1:{listen}", "hostname": "proxied.test"}],
            [{"address": echo.address, "backend_id": "echo"}],
        )
        start_daemon(extra=config)
        # The header in one write with the request, then split over several writes.
        with socket.create_connection(destination, timeout=IO_TIMEOUT) as sock:
            sock.sendall(build_v2(SOURCE, destination))
            echoed = _request(sock)
            assert b"X-Forwarded-For: 127.0.0.77\r\n" in echoed, echoed
            assert b'for="127.0.0.77:40123"' in echoed, echoed
            echoed = _request(sock)  # keep-alive: the header was read once
            assert b"X-Forwarded-For: 127.0.0.77\r\n" in echoed
        header = build_v2(("127.0.0.78", 1), destination)
        with socket.create_connection(destination, timeout=IO_TIMEOUT) as sock:
            for piece in (header[:5], header[5:17], header[17:]):
                sock.sendall(piece)
                time.sleep(0.05)
            assert b"X-Forwarded-For: 127.0.0.78\r\n" in _request(sock)
        served = len(echo.requests)
        # No header: closed without an answer, nothing reaches the backend.
        with socket.create_connection(destination, timeout=IO_TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: proxied.test\r\n\r\n")
            assert _closed_without_answer(sock)
        # A header announcing a datagram flow does not describe a TCP connection: refused.
        with socket.create_connection(destination, timeout=IO_TIMEOUT) as sock:
            sock.sendall(build_v2(("127.0.0.79", 1), destination, stream=False))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: proxied.test\r\n\r\n")
            assert _closed_without_answer(sock)
        # A LOCAL header (a load balancer's health check): closed too.
        with socket.create_connection(destination, timeout=IO_TIMEOUT) as sock:
            sock.sendall(SIGNATURE + b"\x20\x00\x00\x00")
            assert _closed_without_answer(sock)
        assert len(echo.requests) == served
        key = (
            "sozu_http_proxy_protocol_errors_total",
            frozenset({("listener", f"127.0.0.1:{listen}")}),
        )
        refused = wait_for(
            lambda: (prometheus_series(metrics).get(key) or 0) >= 2 or None,
            timeout=10,
            what="the refused headers counted",
        )
        assert refused is True
        # The connection without a header and the datagram one; a LOCAL one is no error.
        assert prometheus_series(metrics).get(key) == 2


def test_https_listener_reads_the_proxy_header_before_the_handshake(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    authority = trustme.CA()
    issued = authority.issue_cert("proxied.test")
    certificate, key = tmp_path / "proxied.crt", tmp_path / "proxied.key"
    issued.cert_chain_pems[0].write_to_path(str(certificate))
    issued.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    authority.configure_trust(context)
    listen = free_port()
    destination = ("127.0.0.1", listen)
    with EchoHeaders("echo") as echo:
        config = listener(
            listen, "https", expect_proxy=True, certificate=str(certificate), key=str(key)
        )
        config += cluster(
            "proxied",
            [
                {
                    "address": f"127.0.0.1:{listen}",
                    "hostname": "proxied.test",
                    "certificate": str(certificate),
                    "key": str(key),
                }
            ],
            [{"address": echo.address, "backend_id": "echo"}],
        )
        start_daemon(extra=config)
        raw = socket.create_connection(destination, timeout=IO_TIMEOUT)
        raw.sendall(build_v2(SOURCE, destination))
        with context.wrap_socket(raw, server_hostname="proxied.test") as tls:
            echoed = _request(tls)
        assert b"X-Forwarded-For: 127.0.0.77\r\n" in echoed, echoed
        assert b"X-Forwarded-Proto: https\r\n" in echoed
        # A TLS ClientHello where the header should be: refused before any handshake.
        raw = socket.create_connection(destination, timeout=IO_TIMEOUT)
        with pytest.raises((ssl.SSLError, OSError)):
            _handshake_and_request(context, raw)
        assert len(echo.requests) == 1
