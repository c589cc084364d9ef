"""Listener fds over a SOCK_SEQPACKET socketpair: close-on-exec, the same sockets, batches split
over several messages, and every failure closing whatever fds arrived."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack

import msgspec
import pytest
import trio

from sozu.command.fdpass import (
    MANIFEST_BUFFER_SIZE,
    FdManifest,
    FdPassingError,
    PassedListener,
    ReceivedListener,
    receive_listeners,
    receive_listeners_blocking,
    send_listeners,
    send_listeners_blocking,
)
from sozu.command.types import ListenerType

TIMEOUT = 5


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def seqpacket() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        yield left, right


@pytest.fixture
def listeners() -> Iterator[list[tuple[PassedListener, socket.socket]]]:
    """Two TCP listen sockets and a UDP one on loopback, with their manifest entries."""
    with ExitStack() as stack:
        made = []
        kinds: list[tuple[int, ListenerType]] = [
            (socket.SOCK_STREAM, "HTTP"),
            (socket.SOCK_STREAM, "TCP"),
            (socket.SOCK_DGRAM, "UDP"),
        ]
        for kind, proxy in kinds:
            sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
            sock.bind(("127.0.0.1", 0))
            if kind == socket.SOCK_STREAM:
                sock.listen()
            host, port = sock.getsockname()
            made.append((PassedListener(address=f"{host}:{port}", proxy=proxy), sock))
        yield made


def close_received(received: list[ReceivedListener]) -> None:
    for item in received:
        item.sock.close()


def check_same_sockets(
    sent: list[tuple[PassedListener, socket.socket]], received: list[ReceivedListener]
) -> None:
    assert [r.listener for r in received] == [passed for passed, _ in sent]
    for (_, original), item in zip(sent, received, strict=True):
        assert item.sock.fileno() != original.fileno()
        assert os.get_inheritable(item.sock.fileno()) is False
        assert item.sock.getsockname() == original.getsockname()
        assert item.sock.type == original.type


def test_pass_listeners_blocking(
    seqpacket: tuple[socket.socket, socket.socket],
    listeners: list[tuple[PassedListener, socket.socket]],
) -> None:
    sender, receiver = seqpacket
    send_listeners_blocking(sender, listeners)
    received = receive_listeners_blocking(receiver)
    try:
        check_same_sockets(listeners, received)
        # A connection to the TCP listener is accepted through the received fd.
        tcp = received[1].sock
        with socket.create_connection(tcp.getsockname(), timeout=TIMEOUT) as client:
            tcp.settimeout(TIMEOUT)
            accepted, peer = tcp.accept()
            with accepted:
                assert peer == client.getsockname()
                client.sendall(b"hello")
                assert accepted.recv(5) == b"hello"
    finally:
        close_received(received)


async def test_pass_listeners_trio(
    seqpacket: tuple[socket.socket, socket.socket],
    listeners: list[tuple[PassedListener, socket.socket]],
) -> None:
    sender = trio.socket.from_stdlib_socket(seqpacket[0].dup())
    receiver = trio.socket.from_stdlib_socket(seqpacket[1].dup())
    with sender, receiver, trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_listeners, sender, listeners)
            received = await receive_listeners(receiver)
        try:
            check_same_sockets(listeners, received)
            udp = received[2].sock
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind(("127.0.0.1", 0))
                client.sendto(b"ping", udp.getsockname())
                udp.settimeout(TIMEOUT)
                assert udp.recvfrom(16) == (b"ping", client.getsockname())
        finally:
            close_received(received)


def test_batch_split_over_several_messages(
    seqpacket: tuple[socket.socket, socket.socket],
    listeners: list[tuple[PassedListener, socket.socket]],
) -> None:
    sender, receiver = seqpacket
    send_listeners_blocking(sender, listeners * 2, max_fds=2)  # 6 fds: three messages
    received = receive_listeners_blocking(receiver, max_fds=2)
    try:
        check_same_sockets(listeners * 2, received)
    finally:
        close_received(received)
    send_listeners_blocking(sender, [])
    assert receive_listeners_blocking(receiver) == []


def test_manifest_count_mismatch_closes_fds(
    seqpacket: tuple[socket.socket, socket.socket],
    listeners: list[tuple[PassedListener, socket.socket]],
) -> None:
    sender, receiver = seqpacket
    before = open_fds()
    manifest = FdManifest(listeners=tuple(passed for passed, _ in listeners[:2]))
    fds = [sock.fileno() for _, sock in listeners]
    socket.send_fds(sender, [msgspec.msgpack.encode(manifest)], fds)
    with pytest.raises(FdPassingError, match="names 2 listeners but 3 fds arrived"):
        receive_listeners_blocking(receiver)
    assert open_fds() == before


def test_error_in_a_later_message_closes_the_whole_batch(
    seqpacket: tuple[socket.socket, socket.socket],
    listeners: list[tuple[PassedListener, socket.socket]],
) -> None:
    sender, receiver = seqpacket
    before = open_fds()
    first = FdManifest(listeners=(listeners[0][0],), more=True)
    socket.send_fds(sender, [msgspec.msgpack.encode(first)], [listeners[0][1].fileno()])
    socket.send_fds(sender, [b"\xc1 not a manifest"], [listeners[1][1].fileno()])
    with pytest.raises(FdPassingError, match="invalid fd manifest"):
        receive_listeners_blocking(receiver)
    assert open_fds() == before


def test_more_fds_than_the_ancillary_buffer_holds(
    seqpacket: tuple[socket.socket, socket.socket],
    listeners: list[tuple[PassedListener, socket.socket]],
) -> None:
    sender, receiver = seqpacket
    before = open_fds()
    send_listeners_blocking(sender, listeners * 3)  # 9 fds in one message
    with pytest.raises(FdPassingError, match="more fds than the 2 expected"):
        receive_listeners_blocking(receiver, max_fds=2)
    assert open_fds() == before


def test_truncated_manifest(
    seqpacket: tuple[socket.socket, socket.socket],
    listeners: list[tuple[PassedListener, socket.socket]],
) -> None:
    sender, receiver = seqpacket
    before = open_fds()
    socket.send_fds(sender, [b"x" * (MANIFEST_BUFFER_SIZE + 1)], [listeners[0][1].fileno()])
    with pytest.raises(FdPassingError, match="manifest longer than"):
        receive_listeners_blocking(receiver)
    assert open_fds() == before


def test_fd_that_is_not_a_socket(seqpacket: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = seqpacket
    before = open_fds()
    read_end, write_end = os.pipe()
    try:
        manifest = FdManifest(listeners=(PassedListener(address="127.0.0.1:80", proxy="TCP"),))
        socket.send_fds(sender, [msgspec.msgpack.encode(manifest)], [read_end])
    finally:
        os.close(read_end)
        os.close(write_end)
    with pytest.raises(FdPassingError, match="is not a socket"):
        receive_listeners_blocking(receiver)
    assert open_fds() == before


def test_peer_closing_the_channel(seqpacket: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = seqpacket
    sender.shutdown(socket.SHUT_WR)
    with pytest.raises(FdPassingError, match="closed by the peer"):
        receive_listeners_blocking(receiver)
