"""The UDP shell's batched system calls (docs/udp.md, "System calls"): many clients read with
recvmmsg, replies gathered and sent with sendmmsg, a full batch sent before it takes more, and
replies the socket has no room for handed to the listener's egress queue, in order."""

from __future__ import annotations

import errno
import socket

import pytest
import trio
from udp.test_shell import EchoBackend, running

from sozu.worker.shell import udp_batching
from sozu.worker.shell.udp_proxy import UdpListenerProxy

pytestmark = pytest.mark.skipif(
    not udp_batching.available(), reason="sozu_mmsg is not built here (`uv sync` builds it)"
)


async def _ask_together(address: tuple[str, int], count: int) -> dict[int, bytes]:
    """`count` clients (one flow each, with port affinity) each send one query at once; the
    answers each got within 2 s."""
    clients = [trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    answers: dict[int, bytes] = {}
    try:
        for index, client in enumerate(clients):
            await client.sendto(b"q%d" % index, address)

        async def collect(index: int, client: trio.socket.SocketType) -> None:
            data, _ = await client.recvfrom(1024)
            answers[index] = bytes(data)

        with trio.move_on_after(2.0):
            async with trio.open_nursery() as nursery:
                for index, client in enumerate(clients):
                    nursery.start_soon(collect, index, client)
    finally:
        for client in clients:
            client.close()
    return answers


async def test_many_clients_at_once_are_each_answered() -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")], affinity_with_port=True) as (address, proxy):
            assert proxy.batch is not None
            answers = await _ask_together(address, 40)
            assert answers == {index: b"BK0:q%d" % index for index in range(40)}
            assert proxy.counters.send_error == 0
            assert len(proxy.batch) == 0


async def test_a_full_batch_is_sent_before_it_takes_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udp_batching, "SEND_SLOTS", 2)
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")], affinity_with_port=True) as (address, proxy):
            answers = await _ask_together(address, 24)
            assert answers == {index: b"BK0:q%d" % index for index in range(24)}
            assert not proxy.backlog


def _never_lone(proxy: UdpListenerProxy) -> None:
    """Every reply into the batch, as when the loop's batch holds other events."""
    batched = proxy.send_to_client

    def send_to_client(
        destination: tuple[str, int], payload: bytes | memoryview, lone: bool = False
    ) -> None:
        batched(destination, payload)

    proxy.send_to_client = send_to_client  # type: ignore[method-assign]


class _NoRoom:
    """A send batch whose socket has no room on its first `rounds` flushes (the kernel's
    EAGAIN, which loopback never gives for datagrams): `flush` sends nothing, the shell must
    take what is held and queue it for when the socket is writable."""

    def __init__(self, real: udp_batching.SendBatch, rounds: int) -> None:
        self.real = real
        self.rounds = rounds
        self.taken: list[tuple[bytes, tuple[str, int]]] = []

    def add(self, payload: bytes | memoryview, address: tuple[str, int]) -> bool:
        return self.real.add(payload, address)

    def flush(self, fd: int) -> int:
        if self.rounds:
            self.rounds -= 1
            return 0
        return self.real.flush(fd)

    def take(self) -> list[tuple[bytes, tuple[str, int]]]:
        held = self.real.take()
        self.taken.extend(held)
        return held

    def __len__(self) -> int:
        return len(self.real)


async def test_replies_without_room_wait_in_the_egress_queue_and_then_go() -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")]) as (address, proxy):
            assert proxy.batch is not None
            no_room = _NoRoom(proxy.batch, rounds=1)
            proxy.batch = no_room  # type: ignore[assignment]
            # One query at a time: its reply would leave with sendto (a lone reply) and never
            # meet the batch.
            _never_lone(proxy)
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                await client.sendto(b"first", address)
                with trio.fail_after(2):
                    data, _ = await client.recvfrom(1024)
                assert data == b"BK0:first"
                # It went through the egress queue: taken from the batch, sent once writable.
                assert [payload for payload, _ in no_room.taken] == [b"BK0:first"]
                assert not proxy.backlog
                await client.sendto(b"second", address)
                with trio.fail_after(2):
                    data, _ = await client.recvfrom(1024)
                assert data == b"BK0:second"
                assert len(no_room.taken) == 1  # room again: straight out of the batch
            finally:
                client.close()
            assert proxy.counters.send_error == 0


class _NoSendmmsg(_NoRoom):
    """A send batch on a kernel without sendmmsg (ENOSYS)."""

    def flush(self, fd: int) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")


async def test_a_kernel_without_sendmmsg_turns_batching_off_and_loses_nothing() -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")]) as (address, proxy):
            assert proxy.batch is not None
            proxy.batch = _NoSendmmsg(proxy.batch, rounds=0)  # type: ignore[assignment]
            # One query at a time: its reply would leave with sendto (a lone reply) and never
            # meet the batch.
            _never_lone(proxy)
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for query in (b"one", b"two"):
                    await client.sendto(query, address)
                    with trio.fail_after(2):
                        data, _ = await client.recvfrom(1024)
                    assert data == b"BK0:" + query
            finally:
                client.close()
            assert proxy.batch is None
            assert proxy.counters.send_error == 0


class _Counting(_NoRoom):
    """A send batch that counts the replies it was given."""

    def __init__(self, real: udp_batching.SendBatch) -> None:
        super().__init__(real, rounds=0)
        self.added = 0

    def add(self, payload: bytes | memoryview, address: tuple[str, int]) -> bool:
        self.added += 1
        return super().add(payload, address)


async def test_one_query_at_a_time_is_answered_without_the_batch() -> None:
    """Request-reply traffic at a low rate: each reply is the only event of its wake-up and
    leaves with one sendto (docs/udp.md, "A lone reply")."""
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")]) as (address, proxy):
            assert proxy.batch is not None
            counting = _Counting(proxy.batch)
            proxy.batch = counting  # type: ignore[assignment]
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for index in range(8):
                    await client.sendto(b"q%d" % index, address)
                    with trio.fail_after(2):
                        data, _ = await client.recvfrom(1024)
                    assert data == b"BK0:q%d" % index
            finally:
                client.close()
            assert counting.added == 0
            assert proxy.counters.send_error == 0


async def test_a_lone_reply_never_overtakes_what_waits_before_it() -> None:
    """The shortcut is taken only with the loop's batch of one event and nothing waiting:
    otherwise the reply joins the send batch, or the egress FIFO, behind what is there."""
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")]) as (_, proxy):
            batch = proxy.batch
            assert batch is not None
            reactor = proxy.reactor
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await client.bind(("127.0.0.1", 0))
            destination = client.getsockname()

            async def received(count: int) -> list[bytes]:
                with trio.fail_after(2):
                    return [bytes((await client.recvfrom(1024))[0]) for _ in range(count)]

            try:
                # No await between a send and its check: the loop does not run meanwhile.
                reactor.lone = True
                proxy.send_to_client(destination, b"alone", lone=True)
                assert len(batch) == 0
                assert not proxy.backlog
                assert await received(1) == [b"alone"]

                reactor.lone = False  # the loop's batch holds other events
                proxy.send_to_client(destination, b"in-batch", lone=True)
                assert len(batch) == 1
                assert await received(1) == [b"in-batch"]

                reactor.lone = True
                proxy.send_to_client(destination, b"first")  # an earlier event's reply
                proxy.send_to_client(destination, b"second", lone=True)
                assert len(batch) == 2
                assert await received(2) == [b"first", b"second"]

                reactor.lone = True
                proxy.client_send_failed(destination, b"third", BlockingIOError())
                proxy.send_to_client(destination, b"fourth", lone=True)
                assert [payload for payload, _ in proxy.backlog] == [b"third", b"fourth"]
                assert await received(2) == [b"third", b"fourth"]
                assert not proxy.backlog
            finally:
                client.close()
            assert proxy.counters.send_error == 0


class _RefusingSocket:
    """The listener socket as `send_to_client` sees it, with a `sendto` failing with `error`."""

    def __init__(self, real: socket.socket, error: OSError) -> None:
        self.real = real
        self.error = error

    def sendto(self, payload: bytes | memoryview, address: tuple[str, int]) -> int:
        raise self.error

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


async def test_a_lone_reply_the_socket_refuses_waits_or_is_counted() -> None:
    """EAGAIN on the shortcut's sendto puts the reply in the egress FIFO (sent once the socket
    is writable); any other error drops it and counts it, as for a batched reply."""
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")]) as (_, proxy):
            real = proxy.sock
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await client.bind(("127.0.0.1", 0))
            destination = client.getsockname()
            try:
                proxy.reactor.lone = True
                proxy.sock = _RefusingSocket(real, BlockingIOError())  # type: ignore[assignment]
                proxy.send_to_client(destination, b"later", lone=True)
                proxy.sock = real
                assert [payload for payload, _ in proxy.backlog] == [b"later"]
                with trio.fail_after(2):
                    data, _ = await client.recvfrom(1024)
                assert data == b"later"
                assert not proxy.backlog

                proxy.reactor.lone = True
                refused = OSError(errno.EPERM, "refused")
                proxy.sock = _RefusingSocket(real, refused)  # type: ignore[assignment]
                proxy.send_to_client(destination, b"dropped", lone=True)
                proxy.sock = real
                assert not proxy.backlog
                assert proxy.counters.send_error == 1
            finally:
                proxy.sock = real
                client.close()
