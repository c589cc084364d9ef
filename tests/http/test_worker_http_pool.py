"""Pooled backend connections through an in-process worker: a connection whose request said
close (HTTP/1.0 without keep-alive) is never pooled, whatever the backend answered; an
HTTP/1.1 client's close is not passed on, so its backend connection is reused; a pooled
connection is checked before it carries a request body (which cannot be retried); one the
backend closed while it was idle is dropped at once and never reused."""

from __future__ import annotations

import pytest
import trio
from support.worker_harness import Client, read_head, sample, worker


class KeepAliveBackend:
    """Answers every request `200` without ever saying `Connection: close`; closes a
    connection `linger` seconds after each answer (None: keeps it open)."""

    def __init__(self, linger: float | None = None) -> None:
        self.linger = linger
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_proxy = 0

    async def __call__(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = bytearray()
        while True:
            head = await read_head(stream, buf)
            if head is None:
                self.closed_by_proxy += 1
                return
            self.requests.append(head.split(b"\r\n", 1)[0])
            if b"content-length: 2" in head.lower():
                while len(buf) < 2:
                    buf += await stream.receive_some(65536)
                del buf[:2]
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if self.linger is not None:
                await trio.sleep(self.linger)
                await stream.aclose()
                return


async def test_a_backend_connection_whose_request_said_close_is_not_pooled() -> None:
    """An HTTP/1.0 request without keep-alive reaches the backend as it is: the backend may
    close once it has answered, whatever it said, so its connection is never pooled."""
    backend = KeepAliveBackend()
    with trio.fail_after(10):
        async with worker() as w:
            port = await w.http_listener()
            await w.cluster("web", [await w.backend(backend)])
            await w.http_frontend(port, "web.test", "web")
            client = await Client.open(port)
            await client.stream.send_all(b"GET / HTTP/1.0\r\nHost: web.test\r\n\r\n")
            response = await client.response()
            assert response is not None
            assert response[0] == 200
            assert await client.closed()
            await client.aclose()
            pool = w.proxies.http.server.pool
            assert len(pool) == 0
            # The proxy closed its side: the backend sees the end of the connection.
            with trio.fail_after(2):
                while not backend.closed_by_proxy:  # noqa: ASYNC110 - polling a plain counter
                    await trio.sleep(0.01)
            # A keep-alive request afterwards still pools its connection.
            client = await Client.open(port)
            response = await client.get("web.test")
            assert response is not None
            assert response[0] == 200
            await client.aclose()
            # The session keeps its connection until its client goes, then pools it.
            with trio.fail_after(2):
                while len(pool) != 1:  # noqa: ASYNC110 - polling the pool's size
                    await trio.sleep(0.01)


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: keep-alive, close\r\n\r\n",
    ],
    ids=["close", "close-token"],
)
async def test_an_http11_client_close_keeps_the_backend_connection(request_head: bytes) -> None:
    """The client's close is about its own connection: the backend is not told close, and
    the next client's request goes out on the same backend connection."""
    backend = KeepAliveBackend()
    with trio.fail_after(10):
        async with worker() as w:
            port = await w.http_listener()
            await w.cluster("web", [await w.backend(backend)])
            await w.http_frontend(port, "web.test", "web")
            for _ in range(3):
                client = await Client.open(port)
                await client.stream.send_all(request_head)
                response = await client.response()
                assert response is not None
                assert response[0] == 200
                assert await client.closed()
                await client.aclose()
            assert backend.connections == 1
            assert backend.closed_by_proxy == 0
            assert len(w.proxies.http.server.pool) == 1


async def test_a_pooled_connection_is_checked_before_it_carries_a_body() -> None:
    backend = KeepAliveBackend(linger=0.05)
    with trio.fail_after(10):
        async with worker() as w:
            port = await w.http_listener()
            await w.cluster("web", [await w.backend(backend)])
            await w.http_frontend(port, "web.test", "web")
            client = await Client.open(port)
            assert (await client.get("web.test"))[0] == 200  # type: ignore[index]
            # The backend closes the pooled connection; the POST comes within pool.RECENT.
            await trio.sleep(0.2)
            await client.stream.send_all(
                b"POST /upload HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2\r\n\r\nhi"
            )
            response = await client.response()
            assert response is not None
            assert response[0] == 200, response
            await client.aclose()
    assert backend.requests == [b"GET / HTTP/1.1", b"POST /upload HTTP/1.1"]
    assert backend.connections == 2


async def test_a_pooled_connection_the_backend_closed_is_never_reused() -> None:
    """Idle pooled connections stay watched by the loop: the backend's close drops one at
    once, so the next request takes a fresh connection (no stale retry is needed)."""
    backend = KeepAliveBackend(linger=0.05)
    with trio.fail_after(10):
        async with worker() as w:
            port = await w.http_listener()
            await w.cluster("web", [await w.backend(backend)])
            await w.http_frontend(port, "web.test", "web")
            client = await Client.open(port)
            assert (await client.get("web.test", "/1"))[0] == 200  # type: ignore[index]
            await trio.sleep(0.2)
            response = await client.get("web.test", "/2")
            assert response is not None
            assert response[0] == 200, response
            await client.aclose()
            stale = sample(
                w.proxies.snapshot(),
                "sozu_http_backend_stale_connections_total",
                listener=f"127.0.0.1:{port}",
            )
    assert backend.requests == [b"GET /1 HTTP/1.1", b"GET /2 HTTP/1.1"]
    assert backend.connections == 2
    assert stale == 0
