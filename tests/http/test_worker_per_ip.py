"""`max_connections_per_ip` through an in-process worker (docs/http.md, Connections per
client IP): the process-wide value from the ServerConfig for clusters without their own, a
cluster's own value (0 = unlimited) winning; one slot per frontend connection and (cluster,
client IP), held while the connection lives. HTTP answers 429 with `Retry-After` (the
cluster's `retry_after`, else the process-wide one, 60 by default; none when 0) and closes;
TCP closes the connection."""

from __future__ import annotations

from typing import Any

import trio
from support.worker_harness import Client, Worker, read_head, sample, worker


async def answer_ok(stream: trio.SocketStream) -> None:
    """A keep-alive HTTP backend answering every request `200 ok`."""
    buf = bytearray()
    while await read_head(stream, buf) is not None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def echo(stream: trio.SocketStream) -> None:
    async for chunk in stream:
        await stream.send_all(chunk)


async def http_cluster(w: Worker, port: int, cluster_id: str, **keys: Any) -> None:
    await w.cluster(cluster_id, [await w.backend(answer_ok)], **keys)
    await w.http_frontend(port, f"{cluster_id}.test", cluster_id)


async def status_of(port: int, host: str) -> tuple[Client, int, dict[str, str]]:
    """A new connection and the status and headers of its first request."""
    client = await Client.open(port)
    response = await client.get(host)
    assert response is not None
    return client, response[0], response[1]


async def test_the_process_wide_limit_applies_to_clusters_without_their_own() -> None:
    with trio.fail_after(10):
        async with worker(max_connections_per_ip=1) as w:
            port = await w.http_listener()
            await http_cluster(w, port, "web")
            first, status, _ = await status_of(port, "web.test")
            assert status == 200
            # The first connection is idle but open: it still holds the slot.
            second, status, headers = await status_of(port, "web.test")
            assert status == 429
            assert headers["retry-after"] == "60"
            assert await second.closed()
            await second.aclose()
            # Its next request is served: one slot per connection, not per request.
            response = await first.get("web.test")
            assert response is not None
            assert response[0] == 200
            await first.aclose()
            await trio.sleep(0.05)
            assert len(w.proxies.per_ip) == 0
            third, status, _ = await status_of(port, "web.test")
            assert status == 200
            await third.aclose()
            snapshot = w.proxies.snapshot()
            listener = f"127.0.0.1:{port}"
            assert sample(snapshot, "sozu_http_rejected_per_ip_total", listener=listener) == 1


async def test_a_cluster_value_wins_and_zero_is_unlimited() -> None:
    with trio.fail_after(10):
        async with worker(max_connections_per_ip=1, retry_after=7) as w:
            port = await w.http_listener()
            await http_cluster(w, port, "open", max_connections_per_ip=0)
            await http_cluster(w, port, "two", max_connections_per_ip=2, retry_after=0)
            await http_cluster(w, port, "default")
            clients = []
            for _ in range(3):
                client, status, _ = await status_of(port, "open.test")
                assert status == 200
                clients.append(client)
            for _ in range(2):
                client, status, _ = await status_of(port, "two.test")
                assert status == 200
                clients.append(client)
            refused, status, headers = await status_of(port, "two.test")
            assert status == 429
            assert "retry-after" not in headers, "retry_after = 0: no header"
            await refused.aclose()
            client, status, _ = await status_of(port, "default.test")
            assert status == 200
            clients.append(client)
            refused, status, headers = await status_of(port, "default.test")
            assert status == 429
            assert headers["retry-after"] == "7", "the process-wide retry_after"
            await refused.aclose()
            for client in clients:
                await client.aclose()


async def test_a_connection_moves_its_slot_to_the_cluster_of_its_latest_request() -> None:
    with trio.fail_after(10):
        async with worker(max_connections_per_ip=1) as w:
            port = await w.http_listener()
            await http_cluster(w, port, "a")
            await http_cluster(w, port, "b")
            client, status, _ = await status_of(port, "a.test")
            assert status == 200
            assert w.proxies.per_ip.held("a", "127.0.0.1") == 1
            response = await client.get("b.test")
            assert response is not None
            assert response[0] == 200
            assert w.proxies.per_ip.held("a", "127.0.0.1") == 0
            assert w.proxies.per_ip.held("b", "127.0.0.1") == 1
            other, status, _ = await status_of(port, "a.test")
            assert status == 200
            await other.aclose()
            await client.aclose()


async def tcp_exchange(port: int, payload: bytes) -> tuple[trio.SocketStream, bytes]:
    """A new connection, `payload` sent, and what came back before EOF or the echo."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(payload)
    try:
        received = await stream.receive_some(65536)
    except trio.BrokenResourceError:
        received = b""
    return stream, received


async def test_tcp_connections_over_the_limit_are_closed() -> None:
    with trio.fail_after(10):
        async with worker(max_connections_per_ip=1) as w:
            await w.cluster("db", [await w.backend(echo)])
            port = await w.tcp_listener("db")
            await w.cluster("open", [await w.backend(echo)], max_connections_per_ip=0)
            open_port = await w.tcp_listener("open")
            first, received = await tcp_exchange(port, b"one")
            assert received == b"one"
            second, received = await tcp_exchange(port, b"two")
            assert received == b"", "closed without a byte"
            await second.aclose()
            unlimited = [await tcp_exchange(open_port, b"x") for _ in range(3)]
            assert [received for _, received in unlimited] == [b"x"] * 3
            await first.aclose()
            for stream, _ in unlimited:
                await stream.aclose()
            with trio.fail_after(2):
                while len(w.proxies.per_ip):  # noqa: ASYNC110 - polling a plain counter
                    await trio.sleep(0.01)
            third, received = await tcp_exchange(port, b"three")
            assert received == b"three"
            await third.aclose()
            snapshot = w.proxies.snapshot()
            listener = f"127.0.0.1:{port}"
            assert sample(snapshot, "sozu_tcp_rejected_per_ip_total", listener=listener) == 1
