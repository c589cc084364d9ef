"""HTTP/1.1 proxying through the real daemon (docs/http.md): routing, default
answers (404, 503, 502, 504, 408), keep-alive on both sides, 10 MB bodies both ways,
WebSocket, forwarding headers, sticky sessions, request smuggling, https_redirect and a wrk
smoke run. Backends are a real nginx or the small Python servers of `http_backends`."""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from e2e.support.daemon import Daemon, DaemonFactory
from e2e.support.http_backends import (
    BrokenBackend,
    ClosesAfterRequest,
    EchoHeaders,
    Reader,
    Response,
    SlowBackend,
    WebSocketEcho,
    cluster,
    encode_frame,
    listener,
    read_frame,
    read_response,
    websocket_accept,
)
from e2e.support.net import free_port
from e2e.support.nginx import BIG_FILE_SIZE, Nginx, nginx_backends
from e2e.support.programs import require_program

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 15.0
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def web_site(listen: int, nginx: Nginx) -> str:
    """An HTTP listener on `listen` and the cluster `web` (`web.test`) to nginx's `web`."""
    return listener(listen) + cluster(
        "web",
        [{"address": f"127.0.0.1:{listen}", "hostname": "web.test"}],
        [{"address": nginx.address("web"), "backend_id": "web"}],
    )


def exchange(port: int, request: bytes) -> Response:
    """Send one raw request on a new connection; its response."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(request)
        response = read_response(Reader(sock))
    assert response is not None, f"no response to {request[:80]!r}"
    return response


def get(port: int, host: str, path: str = "/", headers: str = "") -> Response:
    return exchange(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())


def answer_then_eof(sock: socket.socket) -> tuple[Response | None, bytes]:
    """The response on `sock` and whatever follows it until the proxy closes the connection
    (a read timeout fails the test: the connection was kept open)."""
    reader = Reader(sock)
    response = read_response(reader)
    return response, reader.rest()


# -- routing and default answers


def test_routing_by_exact_host_wildcard_and_longest_prefix(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    listen = free_port()
    address = f"127.0.0.1:{listen}"
    with nginx_backends(tmp_path / "nginx", "exact", "api", "admin", "wild") as nginx:
        config = listener(listen)
        # Declared longest-first and shortest-first: the longest matching prefix wins anyway.
        config += cluster(
            "admin",
            [{"address": address, "hostname": "www.example.com", "path": "/api/admin"}],
            [{"address": nginx.address("admin"), "backend_id": "admin"}],
        )
        config += cluster(
            "exact",
            [{"address": address, "hostname": "www.example.com"}],
            [{"address": nginx.address("exact"), "backend_id": "exact"}],
        )
        config += cluster(
            "api",
            [{"address": address, "hostname": "www.example.com", "path": "/api"}],
            [{"address": nginx.address("api"), "backend_id": "api"}],
        )
        config += cluster(
            "wild",
            [{"address": address, "hostname": "*.example.com"}],
            [{"address": nginx.address("wild"), "backend_id": "wild"}],
        )
        start_daemon(extra=config)

        def served(host: str, path: str = "/") -> str:
            response = get(listen, host, path)
            assert response.status == 200, (host, path, response.head)
            return response.body.decode().strip()

        assert served("www.example.com") == "exact"
        assert served("WWW.Example.COM:8080", "/x") == "exact", "case and port are ignored"
        assert served("www.example.com", "/api") == "api"
        assert served("www.example.com", "/api/users?id=1") == "api"
        assert served("www.example.com", "/api/admin/panel") == "admin"
        assert served("www.example.com", "/ap") == "exact"
        assert served("a.example.com") == "wild"
        assert served("a.example.com", "/api/admin") == "wild", "path rules are per host"

        # No frontend: the built-in 404, then the connection is closed.
        for host in ("example.com", "a.b.example.com", "unknown.test"):
            with socket.create_connection(("127.0.0.1", listen), timeout=IO_TIMEOUT) as sock:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                response, after = answer_then_eof(sock)
            assert response is not None, host
            assert response.status == 404, (host, response.head)
            assert after == b""
            assert ULID.match(response.header("sozu-id")[0])


def test_cluster_without_backends_answers_503(start_daemon: DaemonFactory) -> None:
    listen = free_port()
    config = listener(listen)
    config += cluster("empty", [{"address": f"127.0.0.1:{listen}", "hostname": "empty.test"}])
    start_daemon(extra=config)
    with socket.create_connection(("127.0.0.1", listen), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: empty.test\r\n\r\n")
        response, after = answer_then_eof(sock)
    assert response is not None
    assert response.status == 503
    assert response.header("connection") == ["close"]
    assert after == b""


def test_broken_or_silently_closing_backend_answers_502(start_daemon: DaemonFactory) -> None:
    listen = free_port()
    address = f"127.0.0.1:{listen}"
    with BrokenBackend("broken") as broken, ClosesAfterRequest("closer") as closer:
        config = listener(listen)
        config += cluster(
            "broken",
            [{"address": address, "hostname": "broken.test"}],
            [{"address": broken.address, "backend_id": "broken"}],
        )
        config += cluster(
            "closer",
            [{"address": address, "hostname": "closer.test"}],
            [{"address": closer.address, "backend_id": "closer"}],
        )
        start_daemon(extra=config)
        for host, backend in (("broken.test", broken), ("closer.test", closer)):
            with socket.create_connection(("127.0.0.1", listen), timeout=IO_TIMEOUT) as sock:
                sock.sendall(f"GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                response, after = answer_then_eof(sock)
            assert response is not None, host
            assert response.status == 502, (host, response.head)
            assert after == b""
            assert [r.request_line for r in backend.requests] == ["GET /x HTTP/1.1"]


def test_backend_that_never_answers_gets_504_after_back_timeout(
    start_daemon: DaemonFactory,
) -> None:
    listen = free_port()
    with SlowBackend("slow") as slow:
        config = listener(listen, back_timeout=2)
        config += cluster(
            "slow",
            [{"address": f"127.0.0.1:{listen}", "hostname": "slow.test"}],
            [{"address": slow.address, "backend_id": "slow"}],
        )
        start_daemon(extra=config)
        started = time.monotonic()
        response = get(listen, "slow.test")
        elapsed = time.monotonic() - started
    assert response.status == 504
    assert len(slow.requests) == 1, "the request reached the backend"
    assert 1.5 <= elapsed < 8, elapsed


def test_client_sending_a_partial_head_gets_408_after_request_timeout(
    start_daemon: DaemonFactory,
) -> None:
    listen = free_port()
    with EchoHeaders("echo") as echo:
        config = listener(listen, request_timeout=2)
        config += cluster(
            "echo",
            [{"address": f"127.0.0.1:{listen}", "hostname": "echo.test"}],
            [{"address": echo.address, "backend_id": "echo"}],
        )
        start_daemon(extra=config)
        with socket.create_connection(("127.0.0.1", listen), timeout=IO_TIMEOUT) as sock:
            started = time.monotonic()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: echo.te")
            response, after = answer_then_eof(sock)
            elapsed = time.monotonic() - started
    assert response is not None
    assert response.status == 408
    assert after == b""
    assert 1.5 <= elapsed < 8, elapsed
    assert echo.connections == 0


# -- keep-alive and bodies


def test_keep_alive_reuses_client_and_backend_connections(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    listen = free_port()
    with nginx_backends(tmp_path / "nginx", "web") as nginx:
        start_daemon(extra=web_site(listen, nginx))
        requests = 6
        backend_connections = set()
        with socket.create_connection(("127.0.0.1", listen), timeout=IO_TIMEOUT) as sock:
            reader = Reader(sock)
            for index in range(requests):
                sock.sendall(f"GET /headers?n={index} HTTP/1.1\r\nHost: web.test\r\n\r\n".encode())
                response = read_response(reader)
                assert response is not None, f"connection closed after {index} requests"
                assert response.status == 200
                assert f"GET /headers?n={index} HTTP/1.1" in response.body.decode()
                backend_connections.update(response.header("x-connection"))
            # HEAD: the head of the 10 MiB file only; the next response follows at once.
            sock.sendall(b"HEAD /files/big.bin HTTP/1.1\r\nHost: web.test\r\n\r\n")
            response = read_response(reader, head_request=True)
            assert response is not None
            assert response.status == 200
            assert response.header("content-length") == [str(BIG_FILE_SIZE)]
            backend_connections.update(response.header("x-connection"))
            # Three pipelined requests in one write: three responses, in order.
            sock.sendall(
                b"".join(
                    f"GET /headers?p={index} HTTP/1.1\r\nHost: web.test\r\n\r\n".encode()
                    for index in range(3)
                )
            )
            for index in range(3):
                response = read_response(reader)
                assert response is not None
                assert response.status == 200
                assert f"GET /headers?p={index} HTTP/1.1" in response.body.decode()
                backend_connections.update(response.header("x-connection"))
        assert len(backend_connections) == 1, backend_connections

        # curl sees its connection reused too.
        curl = require_program("curl")
        url = f"http://web.test:{listen}/"
        result = subprocess.run(
            [curl, "-sv", "--resolve", f"web.test:{listen}:127.0.0.1", url, url, url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "web\n" * 3
        assert result.stderr.count("Re-using existing connection") == 2, result.stderr


def test_10mb_chunked_upload_and_download_are_byte_exact(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    curl = require_program("curl")
    listen = free_port()
    with nginx_backends(tmp_path / "nginx", "web") as nginx:
        start_daemon(extra=web_site(listen, nginx))
        resolve = ["--resolve", f"web.test:{listen}:127.0.0.1"]
        payload = random.Random(5).randbytes(10 * 1024 * 1024)
        upload = tmp_path / "upload.bin"
        upload.write_bytes(payload)
        with upload.open("rb") as stdin:
            # `-T -` reads stdin and sends it chunked.
            result = subprocess.run(
                [
                    curl,
                    "-sS",
                    "-v",
                    *resolve,
                    "-T",
                    "-",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    f"http://web.test:{listen}/upload/blob",
                ],
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        assert result.returncode == 0, result.stderr
        assert "Transfer-Encoding: chunked" in result.stderr
        assert result.stdout == "201", result.stderr
        assert nginx.uploaded("blob") == (len(payload), hashlib.sha256(payload).hexdigest())

        downloaded = tmp_path / "download.bin"
        result = subprocess.run(
            [
                curl,
                "-sS",
                *resolve,
                "-o",
                str(downloaded),
                "-w",
                "%{http_code}",
                f"http://web.test:{listen}/files/big.bin",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "200"
        assert downloaded.stat().st_size == BIG_FILE_SIZE
        assert downloaded.read_bytes() == nginx.big_file.read_bytes()


def test_websocket_upgrade_then_frames_echoed_both_ways(start_daemon: DaemonFactory) -> None:
    listen = free_port()
    with WebSocketEcho("ws") as backend:
        config = listener(listen)
        config += cluster(
            "ws",
            [{"address": f"127.0.0.1:{listen}", "hostname": "ws.test"}],
            [{"address": backend.address, "backend_id": "ws"}],
        )
        start_daemon(extra=config)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        with socket.create_connection(("127.0.0.1", listen), timeout=IO_TIMEOUT) as sock:
            sock.sendall(
                b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                + f"Sec-WebSocket-Key: {key}\r\n\r\n".encode()
            )
            reader = Reader(sock)
            head = reader.head()
            assert head is not None
            assert head.startswith(b"HTTP/1.1 101 "), head
            assert f"Sec-WebSocket-Accept: {websocket_accept(key)}".encode() in head
            mask = b"\x01\x02\x03\x04"
            big = random.Random(3).randbytes(200_000)
            for opcode, payload in ((0x1, "héllo".encode()), (0x2, big), (0x1, b"bye")):
                sock.sendall(encode_frame(opcode, payload, mask))
                assert read_frame(reader) == (opcode, payload)
            sock.sendall(encode_frame(0x8, b"\x03\xe8", mask))
            assert read_frame(reader) == (0x8, b"\x03\xe8")
            assert reader.rest() == b"", "the pipe closes once the backend closed"
        assert backend.connections == 1


# -- headers and stickiness


def test_forwarding_headers_reach_the_backend_and_sozu_id_the_client(
    start_daemon: DaemonFactory,
) -> None:
    listen = free_port()
    with EchoHeaders("echo") as echo:
        config = listener(listen)
        config += cluster(
            "echo",
            [{"address": f"127.0.0.1:{listen}", "hostname": "echo.test"}],
            [{"address": echo.address, "backend_id": "echo"}],
        )
        start_daemon(extra=config)
        with socket.create_connection(("127.0.0.1", listen), timeout=IO_TIMEOUT) as sock:
            client_port = sock.getsockname()[1]
            reader = Reader(sock)
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: echo.test\r\nX-Custom: kept\r\n\r\n")
            response = read_response(reader)
            assert response is not None
            assert response.status == 200
            # A second request with forwarding headers already set by a previous hop.
            sock.sendall(
                b"GET /b HTTP/1.1\r\nHost: echo.test\r\nX-Forwarded-For: 10.1.2.3\r\n"
                b"Forwarded: for=10.1.2.3\r\nX-Request-Id: my-request\r\n\r\n"
            )
            second = read_response(reader)
            assert second is not None
            assert second.status == 200
    first, chained = echo.requests
    assert first.header("x-custom") == ["kept"]
    assert first.header("x-forwarded-for") == ["127.0.0.1"]
    assert first.header("x-forwarded-proto") == ["http"]
    assert first.header("x-forwarded-port") == [str(listen)]
    assert first.header("forwarded") == [f'proto=http;for="127.0.0.1:{client_port}";by=127.0.0.1']
    (request_id,) = first.header("x-request-id")
    (sozu_id,) = first.header("sozu-id")
    assert ULID.match(sozu_id), sozu_id
    assert request_id == sozu_id
    assert response.header("sozu-id") == [sozu_id]

    assert chained.header("x-forwarded-for") == ["10.1.2.3, 127.0.0.1"]
    assert chained.header("forwarded") == [
        f'for=10.1.2.3, proto=http;for="127.0.0.1:{client_port}";by=127.0.0.1'
    ]
    assert chained.header("x-request-id") == ["my-request"]
    (second_id,) = chained.header("sozu-id")
    assert second_id != sozu_id
    assert second.header("sozu-id") == [second_id]


def _sticky_cookie(response: Response) -> str | None:
    for value in response.header("set-cookie"):
        match = re.fullmatch(r"SOZUBALANCEID=([^;]+); Path=/", value)
        if match:
            return match.group(1)
    return None


def test_sticky_session_keeps_a_client_on_its_backend_until_it_stops(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    listen = free_port()
    with (
        nginx_backends(tmp_path / "one", "one") as one,
        nginx_backends(tmp_path / "two", "two") as two,
    ):
        config = listener(listen)
        config += cluster(
            "sticky",
            [{"address": f"127.0.0.1:{listen}", "hostname": "sticky.test"}],
            [
                {"address": one.address("one"), "backend_id": "one", "sticky_id": "sticky-one"},
                {"address": two.address("two"), "backend_id": "two", "sticky_id": "sticky-two"},
            ],
            sticky_session=True,
        )
        start_daemon(extra=config)
        sticky_ids = {"one": "sticky-one", "two": "sticky-two"}

        first = get(listen, "sticky.test", "/headers", "Cookie: foo=bar\r\n")
        assert first.status == 200
        (backend,) = first.header("x-backend")
        assert _sticky_cookie(first) == sticky_ids[backend], first.head
        assert "cookie: foo=bar\n" in first.body.decode(), "the sticky cookie never reaches"

        cookie = f"Cookie: foo=bar; SOZUBALANCEID={sticky_ids[backend]}\r\n"
        for _ in range(8):
            again = get(listen, "sticky.test", "/headers", cookie)
            assert again.status == 200
            assert again.header("x-backend") == [backend]
            assert _sticky_cookie(again) is None, "a valid cookie is not set again"
            assert "cookie: foo=bar\n" in again.body.decode()

        invalid = get(listen, "sticky.test", "/", "Cookie: SOZUBALANCEID=invalid\r\n")
        assert invalid.status == 200
        assert _sticky_cookie(invalid) == sticky_ids[invalid.header("x-backend")[0]]

        (one if backend == "one" else two).stop()
        other = "two" if backend == "one" else "one"
        moved = get(listen, "sticky.test", "/", cookie)
        assert moved.status == 200, moved.head
        assert moved.header("x-backend") == [other]
        assert _sticky_cookie(moved) == sticky_ids[other]


# -- smuggling and malformed requests

SMUGGLING = {
    "content-length-and-chunked": (
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: echo.test\r\n\r\n"
    ),
    "duplicate-content-length": (
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        b"hello!"
    ),
    "two-host-headers": b"GET / HTTP/1.1\r\nHost: echo.test\r\nHost: other.test\r\n\r\n",
    "host-port-out-of-range": b"GET / HTTP/1.1\r\nHost: echo.test:70000\r\n\r\n",
    "host-port-zero": b"GET / HTTP/1.1\r\nHost: echo.test:0\r\n\r\n",
    "no-http-version": b"GET /\r\nHost: echo.test\r\n\r\n",
    # llhttp accepts this protocol's request line: sozu must not take it for HTTP.
    "rtsp-request-line": b"GET / RTSP/1.0\r\nHost: echo.test\r\n\r\n",
    "invalid-chunk-size": (
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n"
    ),
    "obs-fold": b"GET / HTTP/1.1\r\nHost: echo.test\r\nX-Folded: a\r\n b\r\n\r\n",
    "bad-header-name": b"GET / HTTP/1.1\r\nHost: echo.test\r\nBad Header: x\r\n\r\n",
}
# The head is valid: the backend may see it before the body turns out invalid.
BODY_ERRORS = {"invalid-chunk-size"}


@pytest.mark.parametrize("attempt", sorted(SMUGGLING))
def test_smuggling_attempt_is_answered_400_and_closed(
    start_daemon: DaemonFactory, attempt: str
) -> None:
    listen = free_port()
    with EchoHeaders("echo") as echo:
        config = listener(listen)
        config += cluster(
            "echo",
            [{"address": f"127.0.0.1:{listen}", "hostname": "echo.test"}],
            [{"address": echo.address, "backend_id": "echo"}],
        )
        start_daemon(extra=config)
        with socket.create_connection(("127.0.0.1", listen), timeout=IO_TIMEOUT) as sock:
            sock.sendall(SMUGGLING[attempt])
            response, after = answer_then_eof(sock)
        assert response is not None, "closed without an answer"
        assert response.status == 400, response.head
        assert after == b"", f"bytes after the 400: {after[:200]!r}"
        assert all("/smuggled" not in r.request_line for r in echo.requests)
        if attempt not in BODY_ERRORS:
            assert echo.requests == [], "a malformed head was forwarded"
        # The proxy still serves a well-formed request.
        assert get(listen, "echo.test").status == 200


# -- redirect and load


def test_https_redirect_cluster_answers_301_without_touching_the_backend(
    start_daemon: DaemonFactory,
) -> None:
    listen = free_port()
    with EchoHeaders("echo") as echo:
        config = listener(listen)
        config += cluster(
            "secure",
            [{"address": f"127.0.0.1:{listen}", "hostname": "example.com"}],
            [{"address": echo.address, "backend_id": "echo"}],
            https_redirect=True,
        )
        start_daemon(extra=config)
        response = get(listen, "example.com", "/redirected?true")
    assert response.status == 301
    assert response.header("location") == ["https://example.com/redirected?true"]
    assert echo.connections == 0


def test_wrk_smoke_run_has_no_errors(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    wrk = require_program("wrk")
    listen = free_port()
    with nginx_backends(tmp_path / "nginx", "web") as nginx:
        daemon: Daemon = start_daemon(extra=web_site(listen, nginx))
        result = subprocess.run(
            [
                wrk,
                "-t",
                "2",
                "-c",
                "16",
                "-d",
                "2s",
                "-H",
                "Host: web.test",
                f"http://127.0.0.1:{listen}/",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    assert result.returncode == 0, result.stderr
    output = result.stdout
    match = re.search(r"(\d+) requests in", output)
    assert match, output
    assert int(match.group(1)) >= 16, output
    assert "Socket errors" not in output, output
    assert "Non-2xx or 3xx responses" not in output, output
    assert daemon.wait_running()


def test_require_program_skips_by_hand_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = "sozu-e2e-no-such-program"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_program(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        require_program(missing)
    assert require_program("sh").endswith("/sh")


def test_expect_100_continue_is_relayed(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    """A client that asks `Expect: 100-continue` gets nginx's interim 100 through the proxy
    before sending its body, then the final answer; the body arrives whole."""
    curl = require_program("curl")
    listen = free_port()
    with nginx_backends(tmp_path / "nginx", "web") as nginx:
        start_daemon(extra=web_site(listen, nginx))
        payload = random.Random(7).randbytes(2 * 1024 * 1024)
        upload = tmp_path / "expect.bin"
        upload.write_bytes(payload)
        result = subprocess.run(
            [
                curl,
                "-sS",
                "-v",
                "--resolve",
                f"web.test:{listen}:127.0.0.1",
                "-H",
                "Expect: 100-continue",
                # Without the interim answer curl would wait this long, then send anyway.
                "--expect100-timeout",
                "30",
                "-T",
                str(upload),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://web.test:{listen}/upload/expect",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "< HTTP/1.1 100 Continue" in result.stderr, result.stderr
        assert result.stdout in ("201", "204"), result.stdout
        size, digest = nginx.uploaded("expect")
        assert size == len(payload)
        assert digest == hashlib.sha256(payload).hexdigest()


def test_a_close_the_client_asked_for_still_delivers_the_whole_response(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """A client that said close, then sent a stray CRLF (old clients do, RFC 9112 2.2) while
    its 10 MiB response was still on its way: the connection is not closed at once under the
    response (bytes came after the request: it lingers), and the whole body arrives."""
    listen = free_port()
    with nginx_backends(tmp_path / "nginx", "web") as nginx:
        start_daemon(worker_count=1, extra=web_site(listen, nginx))
        expected = hashlib.sha256(nginx.big_file.read_bytes()).hexdigest()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.settimeout(IO_TIMEOUT)
            sock.connect(("127.0.0.1", listen))
            sock.sendall(
                b"GET /files/big.bin HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n"
            )
            received = bytearray(sock.recv(65536))  # the response began: the request was read
            sock.sendall(b"\r\n")
            time.sleep(0.5)  # the rest of the response fills the buffers meanwhile
            while chunk := sock.recv(1 << 20):
                received += chunk
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head[:80]
        assert len(body) == BIG_FILE_SIZE
        assert hashlib.sha256(body).hexdigest() == expected
