"""A worker driven over its two channels in-process, as the supervisor drives it.

Listener sockets go over the SCM socketpair, then the activation: the worker serves the TCP
listener, reports metrics, stops accepting on deactivation and drains its
sessions on SoftStop.
"""

from __future__ import annotations

import functools
import socket

import trio

from sozu.command import requests as rq
from sozu.command.channel import FramedConnection
from sozu.command.envelope import PROTOCOL_VERSION, Response
from sozu.command.fdpass import send_listeners
from sozu.command.responses import Event, MetricsReport
from sozu.command.types import Backend, Cluster, RequestTcpFrontend, TcpListenerConfig
from sozu.supervisor.listener_sockets import ListenerSockets
from sozu.worker.shell.channel_loop import WorkerCore, serve_channel


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _echo(stream: trio.SocketStream) -> None:
    async for chunk in stream:
        await stream.send_all(chunk)


class Supervisor:
    """The supervisor's end of one worker's channels."""

    def __init__(self, conn: FramedConnection, scm: trio.socket.SocketType) -> None:
        self.conn = conn
        self.scm = scm
        self.events: list[Event] = []
        self._next = 0

    async def call(self, request: rq.Request) -> Response:
        self._next += 1
        request_id = str(self._next)
        await self.conn.send_request(request_id, request)
        while True:
            response = await self.conn.receive_response()
            assert response is not None
            if isinstance(response.content, Event):
                self.events.append(response.content)
                continue
            assert response.id == request_id
            return response

    async def ok(self, request: rq.Request) -> Response:
        response = await self.call(request)
        assert response.status == "ok", response.message
        return response


async def _roundtrip(port: int, payload: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        received = b""
        while len(received) < len(payload):
            chunk = await stream.receive_some()
            assert chunk
            received += chunk
        return received


async def test_worker_serves_reports_and_drains_a_tcp_listener() -> None:
    channel, channel_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    scm, scm_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    port, dead_port = _free_port(), _free_port()
    address = f"127.0.0.1:{port}"
    sockets = ListenerSockets(1)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, _echo, 0, host="127.0.0.1")
            )
            backend_port = listeners[0].socket.getsockname()[1]
            exit_status: list[int] = []
            exited = trio.Event()

            async def worker() -> None:
                core = WorkerCore(worker_id=7)
                exit_status.append(await serve_channel(core, channel_child, scm=scm_child))
                exited.set()

            nursery.start_soon(worker)
            conn = FramedConnection.from_socket(channel)
            sup = Supervisor(conn, trio.socket.from_stdlib_socket(scm))
            hello = await conn.receive_response()
            assert hello is not None
            await sup.ok(rq.ServerConfig(protocol_version=PROTOCOL_VERSION, worker_id=7, slot=0))
            await sup.ok(rq.AddTcpListener(listener=TcpListenerConfig(address=address)))
            await sup.ok(rq.AddCluster(cluster=Cluster(cluster_id="c")))
            await sup.ok(
                rq.AddTcpFrontend(frontend=RequestTcpFrontend(cluster_id="c", address=address))
            )
            for backend_id, backend_port_ in (("dead", dead_port), ("live", backend_port)):
                backend = Backend(
                    cluster_id="c", backend_id=backend_id, address=f"127.0.0.1:{backend_port_}"
                )
                await sup.ok(rq.AddBackend(backend=backend))

            sockets.bind("TCP", address)
            await send_listeners(sup.scm, sockets.for_slot(0))
            await sup.ok(rq.ActivateListener(address=address, proxy="TCP"))
            for _ in range(4):
                assert await _roundtrip(port, b"hello") == b"hello"

            # Byte counts are added when a session ends, just after its client saw the echo.
            with trio.fail_after(5):
                while True:
                    report = (await sup.ok(rq.QueryMetrics())).content
                    assert isinstance(report, MetricsReport)
                    assert report.snapshot is not None
                    gauges = {(s.name, s.labels): s.value for s in report.snapshot.gauges}
                    if gauges[("sozu_tcp_active_connections", (("listener", address),))] == 0:
                        break
                    await trio.sleep(0.01)
            counters = {(s.name, s.labels): s.value for s in report.snapshot.counters}
            assert counters[("sozu_tcp_connections_total", (("listener", address),))] == 4
            assert counters[("sozu_tcp_bytes_in_total", (("listener", address),))] == 20
            assert (
                counters[
                    ("sozu_backend_connections_total", (("backend", "live"), ("cluster", "c")))
                ]
                == 4
            )
            assert (
                counters[
                    ("sozu_backend_connect_errors_total", (("backend", "dead"), ("cluster", "c")))
                ]
                >= 1
            )
            assert counters[("sozu_cluster_connections_total", (("cluster", "c"),))] == 4
            assert counters[("sozu_tcp_retries_total", (("listener", address),))] >= 1
            assert counters[("sozu_tcp_refused_total", (("listener", address),))] == 0
            live = (("backend", "live"), ("cluster", "c"))
            assert counters[("sozu_backend_bytes_in_total", live)] == 20
            assert counters[("sozu_backend_bytes_out_total", live)] == 20
            assert gauges[("sozu_backend_up", live)] == 1
            assert gauges[("sozu_backend_active_connections", live)] == 0
            assert gauges[("sozu_cluster_active_connections", (("cluster", "c"),))] == 0
            connect = {(h.name, h.labels): h for h in report.snapshot.histograms}[
                ("sozu_backend_connect_seconds", (("cluster", "c"),))
            ]
            assert sum(connect.counts) == 4
            await sup.ok(rq.ConfigureMetrics(config="CLEAR"))
            report = (await sup.ok(rq.QueryMetrics())).content
            assert isinstance(report, MetricsReport)
            assert report.snapshot is not None
            assert all(s.value == 0 for s in report.snapshot.counters)

            # A session open across the deactivation keeps flowing; new connections are refused
            # once the supervisor closes its duplicate too.
            session = await trio.open_tcp_stream("127.0.0.1", port)
            await session.send_all(b"x")
            assert await session.receive_some() == b"x"
            await sup.ok(rq.DeactivateListener(address=address, proxy="TCP"))
            sockets.close("TCP", address)
            try:
                await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                pass
            else:
                raise AssertionError("connected to a deactivated listener")
            await session.send_all(b"y")
            assert await session.receive_some() == b"y"

            # Soft stop: answered once the last session has ended.
            async with trio.open_nursery() as stopper:
                answered = trio.Event()

                async def soft_stop() -> None:
                    await sup.ok(rq.SoftStop())
                    answered.set()

                stopper.start_soon(soft_stop)
                await trio.sleep(0.2)
                assert not answered.is_set()
                await session.aclose()
                with trio.fail_after(5):
                    await answered.wait()
            with trio.fail_after(5):
                await exited.wait()
            assert exit_status == [0]
            await conn.aclose()
            sup.scm.close()
            scm_child.close()
            nursery.cancel_scope.cancel()
    sockets.close_all()
