"""RequestMux correlation of answers on one connection, and the blocking CLI client against a
small trio server on a unix socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio

from sozu.command.channel import ConnectionLost, FramedConnection, Rejected, RequestMux
from sozu.command.client import CommandClient, CommandTimeout, DaemonUnavailable
from sozu.command.envelope import (
    ProtocolError,
    RequestEnvelope,
    Response,
    decode_request,
    failure,
    ok,
    processing,
)
from sozu.command.framing import FrameReader, encode_frame
from sozu.command.requests import (
    ListWorkers,
    RemoveCluster,
    Status,
    SubscribeEvents,
    request_kind,
)
from sozu.command.responses import Event, EventKind

TIMEOUT = 5


def connection_pair(
    max_frame_size: int = 2_000_000,
) -> tuple[FramedConnection, FramedConnection]:
    left, right = socket.socketpair()
    return (
        FramedConnection.from_socket(left, max_frame_size=max_frame_size),
        FramedConnection.from_socket(right, max_frame_size=max_frame_size),
    )


async def read_requests(connection: FramedConnection, count: int) -> list[RequestEnvelope]:
    envelopes = []
    for _ in range(count):
        item = await connection.receive_request()
        assert isinstance(item, RequestEnvelope)
        envelopes.append(item)
    return envelopes


# -- RequestMux


async def test_calls_in_flight_answered_out_of_order() -> None:
    client, server = connection_pair()
    mux = RequestMux(client)
    results: dict[str, Response] = {}
    progress: list[tuple[str, str]] = []

    async def call(cluster_id: str) -> None:
        results[cluster_id] = await mux.call(
            RemoveCluster(cluster_id=cluster_id),
            on_processing=lambda r: progress.append((cluster_id, r.message)),
        )

    with trio.fail_after(TIMEOUT):
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            async with trio.open_nursery() as calls:
                for cluster_id in ("a", "b", "c"):
                    calls.start_soon(call, cluster_id)
                by_cluster = {}
                for envelope in await read_requests(server, 3):
                    assert isinstance(envelope.request, RemoveCluster)
                    by_cluster[envelope.request.cluster_id] = envelope.id
                assert mux.in_flight == 3
                # Answers interleaved across ids, finals in the reverse order of the calls.
                await server.send_response(processing(by_cluster["c"], "c1"))
                await server.send_response(processing(by_cluster["a"], "a1"))
                await server.send_response(processing(by_cluster["c"], "c2"))
                await server.send_response(ok(by_cluster["c"], "removed c"))
                await server.send_response(failure(by_cluster["b"], "no cluster b"))
                await server.send_response(processing(by_cluster["a"], "a2"))
                await server.send_response(ok(by_cluster["a"], "removed a"))
            assert mux.in_flight == 0
            await mux.aclose()
    assert {k: (r.status, r.message) for k, r in results.items()} == {
        "a": ("ok", "removed a"),
        "b": ("failure", "no cluster b"),
        "c": ("ok", "removed c"),
    }
    assert [m for k, m in progress if k == "a"] == ["a1", "a2"]
    assert [m for k, m in progress if k == "c"] == ["c1", "c2"]
    assert not [m for k, m in progress if k == "b"]
    assert mux.closed_reason == "connection closed locally"


async def test_unsolicited_answers_go_to_the_callback() -> None:
    client, server = connection_pair()
    pushed: list[Response] = []
    mux = RequestMux(client, on_unsolicited=pushed.append)
    event = Event(kind="BACKEND_DOWN", source="3", cluster_id="c", backend_id="b")
    with trio.fail_after(TIMEOUT):
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            await server.send_response(processing("EVENT", content=event))
            async with trio.open_nursery() as calls:
                calls.start_soon(mux.call, Status())
                (envelope,) = await read_requests(server, 1)
                await server.send_response(processing("EVENT", content=event))
                await server.send_response(ok(envelope.id))
            await server.send_response(ok(envelope.id, "late duplicate"))
            await server.aclose()  # run() ends on EOF
    assert [r.id for r in pushed] == ["EVENT", "EVENT", envelope.id]
    assert pushed[0].content == event
    assert pushed[2].message == "late duplicate"
    assert mux.closed_reason == "connection closed by the peer"


async def test_peer_closing_fails_calls_in_flight() -> None:
    client, server = connection_pair()
    mux = RequestMux(client)

    async def call() -> None:
        with pytest.raises(ConnectionLost, match="no answer to Status-1: connection closed by"):
            await mux.call(Status())

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            nursery.start_soon(call)
            await read_requests(server, 1)
            await server.aclose()
        with pytest.raises(ConnectionLost, match="cannot send ListWorkers-2"):
            await mux.call(ListWorkers())


async def test_garbage_from_the_peer_ends_run_without_raising() -> None:
    client, server = connection_pair()
    mux = RequestMux(client)

    async def call() -> None:
        with pytest.raises(ConnectionLost, match="protocol error: undecodable response"):
            await mux.call(Status())

    with trio.fail_after(TIMEOUT):
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            nursery.start_soon(call)
            await read_requests(server, 1)
            await server.send_payload(b"\xc1\xc1")
    assert mux.closed_reason is not None
    assert mux.closed_reason.startswith("protocol error")


async def test_duplicate_request_id_refused() -> None:
    client, server = connection_pair()
    mux = RequestMux(client)
    with trio.fail_after(TIMEOUT):
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            async with trio.open_nursery() as calls:
                calls.start_soon(partial(mux.call, Status(), request_id="same"))
                await read_requests(server, 1)
                with pytest.raises(ValueError, match="already in flight"):
                    await mux.call(Status(), request_id="same")
                await server.send_response(ok("same"))
            await mux.aclose()


async def test_oversize_answers_become_failures() -> None:
    client, server = connection_pair(max_frame_size=200)
    mux = RequestMux(client)
    with trio.fail_after(TIMEOUT):
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            results: list[Response] = []

            async def call() -> None:
                results.append(await mux.call(Status()))

            async with trio.open_nursery() as calls:
                calls.start_soon(call)
                (envelope,) = await read_requests(server, 1)
                # The sender replaces an answer over its own maximum with a Failure...
                await server.send_response(ok(envelope.id, "x" * 500))
            async with trio.open_nursery() as calls:
                calls.start_soon(call)
                (envelope,) = await read_requests(server, 1)
                # ... and the receiver turns one over its maximum into a Failure for its id.
                big = FramedConnection(server.stream, max_frame_size=10_000)
                await big.send_response(ok(envelope.id, "y" * 500))
            await mux.aclose()
    first, second = results
    assert first.status == "failure"
    assert "exceeds the maximum of 200 bytes" in first.message
    assert second.status == "failure"
    assert "exceeds the maximum of 200 bytes" in second.message


async def test_cancelled_call_is_abandoned() -> None:
    client, server = connection_pair()
    pushed: list[Response] = []
    arrived = trio.Event()

    def unsolicited(response: Response) -> None:
        pushed.append(response)
        arrived.set()

    mux = RequestMux(client, on_unsolicited=unsolicited)
    with trio.fail_after(TIMEOUT):
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            with trio.move_on_after(0.05):
                await mux.call(Status(), request_id="slow")
            assert mux.in_flight == 0
            await server.send_response(ok("slow"))
            await arrived.wait()
            await mux.aclose()
    assert [r.id for r in pushed] == ["slow"]


# -- blocking client against a trio server on a unix socket

Handler = Callable[[FramedConnection], Awaitable[None]]


async def start_server(nursery: trio.Nursery, path: Path, handler: Handler) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen()

    async def serve(stream: trio.SocketStream) -> None:
        async with FramedConnection(stream) as connection:
            await handler(connection)

    await nursery.start(trio.serve_listeners, serve, [trio.SocketListener(sock)])


async def answer_with_progress(connection: FramedConnection) -> None:
    async for item in connection.requests():
        if isinstance(item, Rejected):
            await connection.send_response(item.failure())
            continue
        await connection.send_response(ok("someone-else", "not for this request"))
        await connection.send_response(processing(item.id, "step 1"))
        await connection.send_response(processing(item.id, "step 2"))
        await connection.send_response(ok(item.id, request_kind(item.request)))


async def test_blocking_client_iterates_processing_then_final(tmp_path: Path) -> None:
    path = tmp_path / "sozu.sock"

    def client() -> list[tuple[str, str]]:
        with CommandClient.connect(path, timeout_ms=1000) as command:
            answers = [(r.status, r.message) for r in command.request(Status(), timeout_ms=2000)]
            seen: list[Response] = []
            final = command.call(ListWorkers(), timeout_ms=2000, on_processing=seen.append)
            assert [r.message for r in seen] == ["step 1", "step 2"]
            return [*answers, (final.status, final.message)]

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await start_server(nursery, path, answer_with_progress)
            answers = await trio.to_thread.run_sync(client)
            nursery.cancel_scope.cancel()
    assert answers == [
        ("processing", "step 1"),
        ("processing", "step 2"),
        ("ok", "Status"),
        ("ok", "ListWorkers"),
    ]


async def test_async_client_over_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "sozu.sock"
    progress: list[str] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await start_server(nursery, path, answer_with_progress)
            mux = RequestMux(await FramedConnection.connect_unix(path))
            nursery.start_soon(mux.run)
            answer = await mux.call(Status(), on_processing=lambda r: progress.append(r.message))
            await mux.aclose()
            nursery.cancel_scope.cancel()
    assert (answer.status, answer.message) == ("ok", "Status")
    assert progress == ["step 1", "step 2"]


async def test_blocking_client_timeout(tmp_path: Path) -> None:
    path = tmp_path / "sozu.sock"

    async def never_final(connection: FramedConnection) -> None:
        async for item in connection.requests():
            assert isinstance(item, RequestEnvelope)
            await connection.send_response(processing(item.id, "working"))
        await trio.sleep_forever()

    def client() -> tuple[list[Response], float]:
        seen: list[Response] = []
        start = time.monotonic()
        with CommandClient.connect(path) as command, pytest.raises(CommandTimeout) as caught:
            command.call(Status(), timeout_ms=300, on_processing=seen.append)
        assert "300 ms" in str(caught.value)
        return seen, time.monotonic() - start

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await start_server(nursery, path, never_final)
            seen, elapsed = await trio.to_thread.run_sync(client)
            nursery.cancel_scope.cancel()
    assert [r.message for r in seen] == ["working"]
    assert 0.3 <= elapsed < 2


async def test_blocking_client_subscribe_without_timeout(tmp_path: Path) -> None:
    path = tmp_path / "sozu.sock"

    async def events(connection: FramedConnection) -> None:
        item = await connection.receive_request()
        assert isinstance(item, RequestEnvelope)
        assert isinstance(item.request, SubscribeEvents)
        kinds: tuple[EventKind, ...] = ("EVENTS_SUBSCRIBED", "CLUSTER_ADDED")
        for kind in kinds:
            await connection.send_response(processing(item.id, content=Event(kind=kind)))
            await trio.sleep(0.05)
        await connection.send_response(processing("EVENT", content=Event(kind="BACKEND_UP")))
        await connection.send_response(failure(item.id, "events stream closed"))

    def client() -> list[str]:
        with CommandClient.connect(path) as command:
            return [
                r.content.kind if isinstance(r.content, Event) else r.message
                for r in command.subscribe()
            ]

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await start_server(nursery, path, events)
            kinds = await trio.to_thread.run_sync(client)
            nursery.cancel_scope.cancel()
    assert kinds == ["EVENTS_SUBSCRIBED", "CLUSTER_ADDED", "BACKEND_UP", "events stream closed"]


async def test_blocking_client_daemon_closing_before_the_answer(tmp_path: Path) -> None:
    path = tmp_path / "sozu.sock"

    async def hang_up(connection: FramedConnection) -> None:
        await connection.receive_request()

    def client() -> str:
        with CommandClient.connect(path) as command, pytest.raises(DaemonUnavailable) as caught:
            command.call(Status(), timeout_ms=2000)
        return str(caught.value)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await start_server(nursery, path, hang_up)
            message = await trio.to_thread.run_sync(client)
            nursery.cancel_scope.cancel()
    assert message == "the daemon closed the connection"


async def test_blocking_client_garbage_answer(tmp_path: Path) -> None:
    path = tmp_path / "sozu.sock"

    async def garbage(connection: FramedConnection) -> None:
        await connection.receive_request()
        await connection.stream.send_all(encode_frame(b"\xc1"))

    def client() -> None:
        with CommandClient.connect(path) as command, pytest.raises(ProtocolError):
            command.call(Status(), timeout_ms=2000)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await start_server(nursery, path, garbage)
            await trio.to_thread.run_sync(client)
            nursery.cancel_scope.cancel()


def test_missing_socket_is_daemon_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="No such file") as caught:
        CommandClient.connect(tmp_path / "missing.sock")
    assert "the daemon is not running, or uses another socket" in str(caught.value)


def test_a_stale_socket_file_says_the_daemon_is_not_running(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as left:
        left.bind(str(path))  # bound, never listening, then closed: what a dead daemon leaves
    with pytest.raises(DaemonUnavailable, match="Connection refused") as caught:
        CommandClient.connect(path)
    assert "left by a daemon that is not running" in str(caught.value)


def test_refused_socket_is_daemon_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # bound, never listening: like a socket left by a dead daemon
        with pytest.raises(DaemonUnavailable, match="refused"):
            CommandClient.connect(path)


async def test_concurrent_senders_never_interleave_frames() -> None:
    client, server = connection_pair()
    ids = [f"sender-{n}" for n in range(20)]
    received: list[Response] = []

    async def receive_all() -> None:
        async for response in client.responses():
            received.append(response)
            if len(received) == len(ids):
                return

    with trio.fail_after(TIMEOUT):
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(receive_all)
            # Each frame is larger than the socket buffers, so send_all writes it in parts.
            for request_id in ids:
                nursery.start_soon(server.send_response, ok(request_id, request_id * 20_000))
    assert sorted(r.id for r in received) == sorted(ids)
    assert all(r.message == r.id * 20_000 for r in received)


async def test_interrupted_send_closes_the_connection() -> None:
    client, server = connection_pair()
    with trio.fail_after(TIMEOUT):
        async with client, server:
            with trio.move_on_after(0.1) as scope:
                # Nobody reads: the frame cannot be written whole.
                await server.send_response(ok("stuck", "z" * 1_000_000))
            assert scope.cancelled_caught
            assert server.error is not None
            assert server.error.startswith("send interrupted")
            with pytest.raises(trio.ClosedResourceError):
                await server.send_response(ok("next"))
            # The peer sees a cut frame: a protocol error, not a wrong answer.
            with pytest.raises(ProtocolError, match="connection closed inside a frame"):
                await client.receive_response()


async def test_a_batch_goes_out_in_one_write_in_order_and_each_call_gets_its_answer() -> None:
    left, right = socket.socketpair()
    mux = RequestMux(FramedConnection.from_socket(left, max_frame_size=2_000_000))
    ids = [f"c{index}" for index in range(50)]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            pendings = await mux.send_batch([RemoveCluster(cluster_id=i) for i in ids])
            assert mux.in_flight == 50
            # Every frame is written by the time send_batch returns: one read gets them all.
            reader = FrameReader()
            reader.feed(right.recv(1 << 20))
            envelopes = []
            while (frame := reader.next_frame()) is not None:
                assert isinstance(frame, bytes)
                envelopes.append(decode_request(frame))
            removed = [e.request for e in envelopes]
            assert [r.cluster_id for r in removed if isinstance(r, RemoveCluster)] == ids
            assert [e.id for e in envelopes] == [p.request_id for p in pendings]
            server = FramedConnection.from_socket(right, max_frame_size=2_000_000)
            for envelope in reversed(envelopes):
                await server.send_response(ok(envelope.id, envelope.id))
            answers = [await pending.answer() for pending in pendings]
            assert [a.message for a in answers] == [e.id for e in envelopes]
            assert mux.in_flight == 0
            await mux.aclose()
            await server.aclose()
