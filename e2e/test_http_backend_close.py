"""A backend that closes right after each answer without saying so: whether the request
said close to it (HTTP/1.0 without keep-alive: never pooled) or not (an HTTP/1.1 client's
`Connection: close` is not passed on: pooled, then dropped when the backend's close is
seen), the next request, even one with a body (which cannot be retried once sent), goes to
a fresh connection and gets the backend's answer, not a 502."""

from __future__ import annotations

import socket

import pytest

from e2e.support.daemon import DaemonFactory
from e2e.support.http_backends import (
    ClosesAfterResponse,
    Reader,
    cluster,
    listener,
    read_response,
)
from e2e.support.net import free_port

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 10.0


def exchange(port: int, request: str) -> tuple[int, bytes]:
    """(status, body) of one request on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(request.encode())
        response = read_response(Reader(sock))
    assert response is not None, f"no response to {request[:60]!r}"
    return response.status, response.body


def test_a_connection_the_request_closed_is_not_pooled(start_daemon: DaemonFactory) -> None:
    listen = free_port()
    with ClosesAfterResponse("closer") as closer:
        config = listener(listen)
        config += cluster(
            "closer",
            [{"address": f"127.0.0.1:{listen}", "hostname": "closer.test"}],
            [{"address": closer.address, "backend_id": "closer"}],
        )
        # One worker: every request meets the same backend pool.
        start_daemon(worker_count=1, extra=config)
        host = "Host: closer.test\r\n"
        post = f"POST /{{}} HTTP/1.1\r\n{host}Content-Length: 2\r\n\r\nhi"
        assert exchange(listen, f"GET /1 HTTP/1.1\r\n{host}Connection: close\r\n\r\n") == (
            200,
            b"closer 1",
        )
        assert exchange(listen, post.format(2)) == (200, b"closer 2")
        assert exchange(listen, f"GET /3 HTTP/1.0\r\n{host}\r\n") == (200, b"closer 3")
        assert exchange(listen, post.format(4)) == (200, b"closer 4")
        assert [r.request_line for r in closer.requests] == [
            "GET /1 HTTP/1.1",
            "POST /2 HTTP/1.1",
            "GET /3 HTTP/1.0",
            "POST /4 HTTP/1.1",
        ]
