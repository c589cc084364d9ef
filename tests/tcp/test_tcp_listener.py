"""TCP listeners on the readiness loop over real loopback sockets: relaying (spliced and
copied), half-close, retries, PROXY v2, the connection cap, idle timeouts."""

from __future__ import annotations

import functools
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from sozu.command.types import TcpListenerConfig
from sozu.worker.core.balancing import Backend, LoadBalancingPolicy
from sozu.worker.core.clusters import TcpCluster
from sozu.worker.core.proxy_protocol import ProxyHeader, parse_v2
from sozu.worker.core.tcp_session import TcpContext, TcpCounters
from sozu.worker.shell.accepting import Acceptor
from sozu.worker.shell.connection_limit import ConnectionLimit
from sozu.worker.shell.reactor import Reactor
from sozu.worker.shell.tcp_listener import TcpListener, TcpServer

Handler = Callable[[trio.SocketStream], Awaitable[None]]


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def free_port() -> int:
    """A port nothing listens on (bound then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def echo(stream: trio.SocketStream) -> None:
    async for chunk in stream:
        await stream.send_all(chunk)
    await stream.send_eof()


@asynccontextmanager
async def backend_server(nursery: trio.Nursery, handler: Handler) -> AsyncIterator[int]:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    yield port


class Served:
    """What the tests read of a listener: its counters."""

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener

    @property
    def counters(self) -> TcpCounters:
        return self.listener.context.counters


@asynccontextmanager
async def proxy(
    nursery: trio.Nursery,
    backends: list[tuple[str, int]],
    *,
    config: TcpListenerConfig | None = None,
    send_proxy: bool = False,
    limit: int = 100,
    use_splice: bool = True,
) -> AsyncIterator[tuple[int, Served, TcpCluster]]:
    sock = listening_socket()
    port = sock.getsockname()[1]
    cluster = TcpCluster(
        "c",
        LoadBalancingPolicy.ROUND_ROBIN,
        [Backend(f"b{i}", address) for i, address in enumerate(backends)],
        send_proxy=send_proxy,
        rng=random.Random(0),
    )
    config = config or TcpListenerConfig(address=f"127.0.0.1:{port}")
    reactor = Reactor()
    connection_limit = ConnectionLimit(limit)
    server = TcpServer(Acceptor(reactor, lambda: connection_limit), use_splice=use_splice)
    listener = TcpListener(server, config.address, TcpContext(config, lambda: cluster))
    listener.add_socket(sock)
    server.listeners[config.address] = listener
    listener.start_accepting()
    await nursery.start(reactor.run)
    try:
        yield port, Served(listener), cluster
    finally:
        server.close()


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition (sessions end asynchronously, after the client saw its bytes)."""
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - polling a plain counter
            await trio.sleep(0.01)


async def read_all(stream: trio.SocketStream) -> bytes:
    data = bytearray()
    async for chunk in stream:
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "copy"])
async def test_large_transfer_is_byte_exact_both_ways(use_splice: bool) -> None:
    payload = random.Random(5).randbytes(3 * 1024 * 1024)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with (
                backend_server(nursery, echo) as backend_port,
                proxy(nursery, [("127.0.0.1", backend_port)], use_splice=use_splice) as (
                    port,
                    listener,
                    _,
                ),
            ):
                stream = await trio.open_tcp_stream("127.0.0.1", port)

                async def send() -> None:
                    await stream.send_all(payload)
                    await stream.send_eof()

                received = bytearray()

                async def receive() -> None:
                    received.extend(await read_all(stream))

                async with trio.open_nursery() as pair:
                    pair.start_soon(send)
                    pair.start_soon(receive)
                await stream.aclose()
                assert received == payload
                await eventually(lambda: listener.counters.active == 0)
                assert listener.counters.bytes_in == len(payload)
                assert listener.counters.bytes_out == len(payload)
            nursery.cancel_scope.cancel()


async def test_half_close_reaches_the_backend_and_the_answer_comes_back() -> None:
    async def answer_after_eof(stream: trio.SocketStream) -> None:
        request = await read_all(stream)
        await stream.send_all(b"got " + request)
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with (
                backend_server(nursery, answer_after_eof) as backend_port,
                proxy(nursery, [("127.0.0.1", backend_port)]) as (port, _, _),
            ):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"question")
                await stream.send_eof()
                assert await read_all(stream) == b"got question"
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_refused_backend_is_retried_on_another_and_backed_off() -> None:
    dead = ("127.0.0.1", free_port())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with (
                backend_server(nursery, echo) as backend_port,
                proxy(nursery, [dead, ("127.0.0.1", backend_port)]) as (port, listener, cluster),
            ):
                for _ in range(3):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    await stream.send_all(b"ping")
                    assert await stream.receive_some(10) == b"ping"
                    await stream.aclose()
                assert listener.counters.backend_errors == 1  # b0 backed off after one failure
                assert "b0" not in {b.id for b in cluster.selector.candidates()[0]}
                assert listener.counters.retries == 1
                assert cluster.connect_errors == {"b0": 1}
                await eventually(lambda: cluster.active == 0)
                assert cluster.connections_total == 3
                assert cluster.connections == {"b1": 3}
                assert cluster.bytes_in == cluster.bytes_out == {"b1": 12}
                assert not cluster.is_down("b0")  # one failure: backing off, not down
            nursery.cancel_scope.cancel()


async def test_no_usable_backend_closes_the_client() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with proxy(nursery, [("127.0.0.1", free_port())]) as (port, listener, _):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                assert await read_all(stream) == b""
                await stream.aclose()
                assert listener.counters.no_backend == 1
            nursery.cancel_scope.cancel()


async def test_send_proxy_writes_the_client_address_first() -> None:
    seen: list[ProxyHeader | None] = []

    async def record(stream: trio.SocketStream) -> None:
        data = await read_all(stream)
        header = parse_v2(data)
        seen.append(header)
        assert header is not None
        await stream.send_all(data[header.length :])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with (
                backend_server(nursery, record) as backend_port,
                proxy(nursery, [("127.0.0.1", backend_port)], send_proxy=True) as (port, _, _),
            ):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                client_address = stream.socket.getsockname()
                await stream.send_all(b"body")
                await stream.send_eof()
                assert await read_all(stream) == b"body"
                await stream.aclose()
            nursery.cancel_scope.cancel()
    assert seen == [
        ProxyHeader("PROXY", (client_address[0], client_address[1]), ("127.0.0.1", port), 28)
    ]


@pytest.mark.parametrize("relay_header", [False, True], ids=["expect", "relay"])
async def test_expect_proxy_adopts_the_announced_source(relay_header: bool) -> None:
    from sozu.worker.core.proxy_protocol import build_v2

    announced = build_v2(("203.0.113.7", 5555), ("198.51.100.1", 443))
    received: list[bytes] = []

    async def record(stream: trio.SocketStream) -> None:
        received.append(await read_all(stream))
        await stream.aclose()

    sock_port = free_port()
    config = TcpListenerConfig(address=f"127.0.0.1:{sock_port}", expect_proxy=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with (
                backend_server(nursery, record) as backend_port,
                proxy(
                    nursery,
                    [("127.0.0.1", backend_port)],
                    config=config,
                    send_proxy=relay_header,
                ) as (port, _, _),
            ):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(announced[:10])
                await trio.sleep(0.05)  # the header may arrive in pieces
                await stream.send_all(announced[10:] + b"data")
                await stream.send_eof()
                assert await read_all(stream) == b""
                await stream.aclose()
            nursery.cancel_scope.cancel()
    assert received == [announced + b"data" if relay_header else b"data"]


def _datagram_header() -> bytes:
    from sozu.worker.core.proxy_protocol import build_v2

    return build_v2(("203.0.113.7", 5555), ("198.51.100.1", 53), stream=False)


@pytest.mark.parametrize(
    "opening",
    [b"GET / HTTP/1.1\r\n\r\n", _datagram_header() + b"data"],
    ids=["not-a-header", "datagram-header"],
)
async def test_bad_proxy_header_closes_without_reaching_a_backend(opening: bytes) -> None:
    config = TcpListenerConfig(address="127.0.0.1:1", expect_proxy=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with (
                backend_server(nursery, echo) as backend_port,
                proxy(nursery, [("127.0.0.1", backend_port)], config=config) as (
                    port,
                    listener,
                    cluster,
                ),
            ):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(opening)
                assert await read_all(stream) == b""
                await stream.aclose()
                assert listener.counters.proxy_protocol_errors == 1
                assert cluster.loads == {}
            nursery.cancel_scope.cancel()


async def test_connection_cap_pauses_accepting_until_a_slot_frees() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with (
                backend_server(nursery, echo) as backend_port,
                proxy(nursery, [("127.0.0.1", backend_port)], limit=1) as (port, listener, _),
            ):
                first = await trio.open_tcp_stream("127.0.0.1", port)
                await first.send_all(b"1")
                assert await first.receive_some(1) == b"1"
                second = await trio.open_tcp_stream("127.0.0.1", port)  # waits in the backlog
                await second.send_all(b"2")
                with trio.move_on_after(0.3):
                    await second.receive_some(1)
                    pytest.fail("a second connection was served over the cap")
                assert listener.counters.accepted == 1
                await first.aclose()
                assert await second.receive_some(1) == b"2"
                assert listener.counters.accepted == 2
                await second.aclose()
            nursery.cancel_scope.cancel()


async def test_idle_connection_is_closed_after_the_timeout() -> None:
    config = TcpListenerConfig(address="127.0.0.1:1", front_timeout=1, back_timeout=1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with (
                backend_server(nursery, echo) as backend_port,
                proxy(nursery, [("127.0.0.1", backend_port)], config=config) as (port, _, _),
            ):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"x")
                assert await stream.receive_some(1) == b"x"
                start = trio.current_time()
                assert await read_all(stream) == b""
                assert 0.5 < trio.current_time() - start < 5
                await stream.aclose()
            nursery.cancel_scope.cancel()


def test_counters_start_at_zero() -> None:
    counters = TcpCounters()
    assert all(getattr(counters, name) == 0 for name in TcpCounters.__slots__)
