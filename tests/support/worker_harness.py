"""An in-process worker serving HTTP or TCP listeners, driven through `channel_loop.handle`,
with small trio backends and raw clients on loopback (shared by the worker-level tests)."""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from sozu.command import requests as rq
from sozu.command.envelope import PROTOCOL_VERSION
from sozu.command.metrics import MetricsSnapshot
from sozu.command.responses import Event
from sozu.command.types import (
    Backend,
    Cluster,
    HttpListenerConfig,
    RequestHttpFrontend,
    RequestTcpFrontend,
    TcpListenerConfig,
)
from sozu.worker.shell.channel_loop import WorkerCore, handle
from sozu.worker.shell.proxies import Proxies

Handler = Callable[[trio.SocketStream], Awaitable[None]]


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@dataclass
class Worker:
    core: WorkerCore
    proxies: Proxies
    tasks: trio.Nursery
    events: list[Event] = field(default_factory=list)
    count: int = 0

    async def ok(self, request: rq.Request) -> None:
        self.count += 1
        response = await handle(self.core, self.proxies, str(self.count), request)
        assert response.status == "ok", response.message

    async def backend(self, handler: Handler) -> str:
        """A trio TCP server on loopback running `handler` per connection; its address."""
        listeners = await self.tasks.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        return f"127.0.0.1:{port}"

    async def http_listener(self, **keys: Any) -> int:
        sock = bound_socket()
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        await self.ok(rq.AddHttpListener(listener=HttpListenerConfig(address=address, **keys)))
        self.proxies._received[("HTTP", address)] = sock
        await self.ok(rq.ActivateListener(address=address, proxy="HTTP"))
        return int(sock.getsockname()[1])

    async def tcp_listener(self, cluster_id: str, **keys: Any) -> int:
        sock = bound_socket()
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        await self.ok(rq.AddTcpListener(listener=TcpListenerConfig(address=address, **keys)))
        await self.ok(
            rq.AddTcpFrontend(frontend=RequestTcpFrontend(cluster_id=cluster_id, address=address))
        )
        self.proxies._received[("TCP", address)] = sock
        await self.ok(rq.ActivateListener(address=address, proxy="TCP"))
        return int(sock.getsockname()[1])

    async def cluster(self, cluster_id: str, backends: list[str], **keys: Any) -> None:
        await self.ok(rq.AddCluster(cluster=Cluster(cluster_id=cluster_id, **keys)))
        for index, address in enumerate(backends):
            backend = Backend(cluster_id=cluster_id, backend_id=f"b{index}", address=address)
            await self.ok(rq.AddBackend(backend=backend))

    async def http_frontend(self, port: int, hostname: str, cluster_id: str) -> None:
        front = RequestHttpFrontend(
            address=f"127.0.0.1:{port}", hostname=hostname, cluster_id=cluster_id
        )
        await self.ok(rq.AddHttpFrontend(frontend=front))


@asynccontextmanager
async def worker(**server_config: Any) -> AsyncIterator[Worker]:
    """A worker that has received its ServerConfig (with `server_config` fields)."""
    core = WorkerCore(worker_id=0)
    events: list[Event] = []
    proxies = Proxies(core.state, events.append)
    try:
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as tasks:
                proxies.start(tasks, handlers)
                w = Worker(core, proxies, tasks, events)
                await w.ok(
                    rq.ServerConfig(
                        protocol_version=PROTOCOL_VERSION,
                        worker_id=0,
                        slot=0,
                        drain_timeout=1,
                        **server_config,
                    )
                )
                yield w
                tasks.cancel_scope.cancel()
            handlers.cancel_scope.cancel()
    finally:
        proxies.close()


class Client:
    """A raw HTTP/1.1 client connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buf += data
        return bool(data)

    async def response(self) -> tuple[int, dict[str, str], bytes] | None:
        """(status, lowercase headers, body) of the next response; None on EOF."""
        while b"\r\n\r\n" not in self.buf:
            if not await self._fill():
                return None
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        size = int(headers.get("content-length", "0"))
        while len(self.buf) < size:
            if not await self._fill():
                return None
        body, self.buf = self.buf[:size], self.buf[size:]
        return status, headers, body

    async def get(
        self, host: str, path: str = "/", extra: str = ""
    ) -> tuple[int, dict[str, str], bytes] | None:
        await self.stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        return await self.response()

    async def closed(self) -> bool:
        """True once the proxy has closed the connection (EOF or reset)."""
        try:
            return not await self._fill()
        except trio.BrokenResourceError:
            return True

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_head(stream: trio.SocketStream, buf: bytearray) -> bytes | None:
    """A request head from `stream` (bytes past it stay in `buf`); None on EOF."""
    while b"\r\n\r\n" not in buf:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return None
        if not data:
            return None
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    del buf[:end]
    return head


def sample(snapshot: MetricsSnapshot, name: str, **labels: str) -> float | None:
    wanted = tuple(sorted(labels.items()))
    for found in (*snapshot.counters, *snapshot.gauges):
        if found.name == name and tuple(sorted(found.labels)) == wanted:
            return found.value
    return None
