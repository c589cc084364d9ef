"""The command server counts the connections a client breaks (`sozu_command_errors_total`):
closed on a protocol error (`ProtocolError`) or reset by the client (`BrokenResourceError`);
a client that asks, reads its answer and leaves counts nothing."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from sozu.command import requests as rq
from sozu.command.envelope import RequestEnvelope, encode_request, ok
from sozu.command.framing import encode_frame
from sozu.supervisor.boundaries import ErrorCounts
from sozu.supervisor.mutations import Reply
from sozu.supervisor.server import CommandServer

MAX_FRAME = 4096


def _dispatch(envelope: RequestEnvelope, reply: Reply, nursery: trio.Nursery) -> None:
    nursery.start_soon(reply, ok(envelope.id, "done"))


@asynccontextmanager
async def serving(path: Path) -> AsyncIterator[ErrorCounts]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    errors = ErrorCounts()
    server = CommandServer(
        sock, _dispatch, max_frame_size=MAX_FRAME, allowed_uids=None, errors=errors
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            yield errors
            nursery.cancel_scope.cancel()
    finally:
        sock.close()


async def client(path: Path) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(str(path))
    return sock


async def served(errors: ErrorCounts, count: int) -> None:
    """Until `count` errors are counted (the server notices on its own schedule)."""
    while sum(errors.counts.values()) < count:  # noqa: ASYNC110 - counted by the server task
        await trio.sleep(0.01)


STATUS = encode_frame(encode_request("s", rq.Status()))


async def test_a_clean_client_counts_nothing(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with serving(tmp_path / "s.sock") as errors:
            with await client(tmp_path / "s.sock") as sock:
                await sock.send(STATUS)
                assert await sock.recv(65536)
            await trio.sleep(0.1)
            assert errors.counts == {}


async def test_a_frame_cut_by_the_end_of_the_stream_is_a_protocol_error(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with serving(tmp_path / "s.sock") as errors:
            with await client(tmp_path / "s.sock") as sock:
                await sock.send(STATUS[: len(STATUS) // 2])
                sock.shutdown(socket.SHUT_WR)
                assert await sock.recv(1) == b""  # closed without an answer
            await served(errors, 1)
            assert errors.counts == {("command", "ProtocolError"): 1}


async def test_an_oversize_frame_without_an_id_is_a_protocol_error(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with serving(tmp_path / "s.sock") as errors:
            with await client(tmp_path / "s.sock") as sock:
                await sock.send(struct.pack(">I", MAX_FRAME + 1) + b"\xc1" * (MAX_FRAME + 1))
                assert await sock.recv(1) == b""
            await served(errors, 1)
            assert errors.counts == {("command", "ProtocolError"): 1}


async def test_a_client_that_resets_its_connection_is_counted(tmp_path: Path) -> None:
    """A unix stream socket closed with unread data resets its peer."""
    with trio.fail_after(10):
        async with serving(tmp_path / "s.sock") as errors:
            with await client(tmp_path / "s.sock") as sock:
                await sock.send(STATUS)
                await trio.lowlevel.wait_readable(sock)  # the answer waits, unread
                await sock.send(STATUS[:10])
            await served(errors, 1)
            assert errors.counts == {("command", "BrokenResourceError"): 1}
