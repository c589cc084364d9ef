"""The recvmmsg/sendmmsg binding (`sozu_mmsg`, mmsg/src/sozu_mmsg.c) on real loopback sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from sozu.worker.shell import udp_batching

try:
    import sozu_mmsg
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI builds it (uv sync): missing there is a failure
    pytest.skip("sozu_mmsg is not built here (`uv sync` builds it)", allow_module_level=True)


def test_the_worker_batches_when_the_binding_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOZU_UDP_MMSG", raising=False)
    assert udp_batching.available()
    monkeypatch.setenv("SOZU_UDP_MMSG", "0")
    assert not udp_batching.available()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    reader = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reader.bind(("127.0.0.1", 0))
    sender.bind(("127.0.0.1", 0))
    reader.setblocking(False)
    sender.setblocking(False)
    yield reader, sender
    reader.close()
    sender.close()


def _drain(sock: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    got: list[tuple[bytes, tuple[str, int]]] = []
    while True:
        try:
            data, source = sock.recvfrom(70000)
        except BlockingIOError:
            return got
        got.append((data, source))


def test_recv_batch_reads_each_datagram_into_its_slot(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader, sender = pair
    for index in range(5):
        sender.sendto(bytes([65 + index]) * (index + 1), reader.getsockname())
    buffer = bytearray(8 * 16)
    got = sozu_mmsg.recv_batch(reader.fileno(), buffer, 16, 8)
    assert [size for size, _ in got] == [1, 2, 3, 4, 5]
    assert {source for _, source in got} == {sender.getsockname()}
    for index, (size, _) in enumerate(got):
        assert bytes(buffer[index * 16 : index * 16 + size]) == bytes([65 + index]) * size
    # Fewer than asked: the socket was drained; the next call finds it empty.
    assert sozu_mmsg.recv_batch(reader.fileno(), buffer, 16, 8) == []


def test_recv_batch_stops_at_count_and_leaves_the_rest(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader, sender = pair
    for index in range(5):
        sender.sendto(bytes([index]), reader.getsockname())
    buffer = bytearray(4 * 8)
    first = sozu_mmsg.recv_batch(reader.fileno(), buffer, 8, 3)
    assert len(first) == 3
    assert buffer[0:1] + buffer[8:9] + buffer[16:17] == bytes([0, 1, 2])
    rest = sozu_mmsg.recv_batch(reader.fileno(), buffer, 8, 3)
    assert len(rest) == 2
    assert buffer[0:1] + buffer[8:9] == bytes([3, 4])
    # `count` is bounded by the buffer's slots too.
    sender.sendto(b"x", reader.getsockname())
    sender.sendto(b"y", reader.getsockname())
    assert len(sozu_mmsg.recv_batch(reader.fileno(), buffer, 16, 64)) == 2


def test_an_oversized_datagram_fills_its_slot_and_no_more(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader, sender = pair
    sender.sendto(b"a" * 100, reader.getsockname())
    sender.sendto(b"b" * 3, reader.getsockname())
    buffer = bytearray(b"." * 20)
    got = sozu_mmsg.recv_batch(reader.fileno(), buffer, 10, 2)
    assert [size for size, _ in got] == [10, 3]
    assert bytes(buffer) == b"a" * 10 + b"bbb" + b"." * 7


def test_a_source_seen_again_is_the_same_tuple(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader, sender = pair
    buffer = bytearray(64)
    sender.sendto(b"1", reader.getsockname())
    ((_, first),) = sozu_mmsg.recv_batch(reader.fileno(), buffer, 64, 1)
    sender.sendto(b"2", reader.getsockname())
    ((_, again),) = sozu_mmsg.recv_batch(reader.fileno(), buffer, 64, 1)
    assert first == sender.getsockname()
    assert again is first


def test_ipv6_sources_are_host_and_port() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    reader = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        reader.bind(("::1", 0))
        sender.bind(("::1", 0))
        reader.setblocking(False)
        sender.sendto(b"six", reader.getsockname()[:2])
        buffer = bytearray(32)
        ((size, source),) = sozu_mmsg.recv_batch(reader.fileno(), buffer, 32, 4)
        assert (size, source) == (3, ("::1", sender.getsockname()[1]))
        batch = sozu_mmsg.SendBatch(4, 64)
        assert batch.add(b"back", source)
        assert batch.flush(reader.fileno()) == 0
        assert sender.recv(16) == b"back"
    finally:
        reader.close()
        sender.close()


def test_recv_batch_refuses_nonsense_and_reports_errors(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader, _ = pair
    with pytest.raises(ValueError, match="positive"):
        sozu_mmsg.recv_batch(reader.fileno(), bytearray(10), 0, 1)
    with pytest.raises(ValueError, match="no slot"):
        sozu_mmsg.recv_batch(reader.fileno(), bytearray(10), 11, 1)
    with pytest.raises(TypeError):
        sozu_mmsg.recv_batch(reader.fileno(), b"read-only", 4, 1)
    spare = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = spare.fileno()
    spare.close()
    with pytest.raises(OSError) as caught:
        sozu_mmsg.recv_batch(fd, bytearray(10), 10, 1)
    assert caught.value.errno == 9  # EBADF


def test_send_batch_sends_in_order_to_each_destination(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader, sender = pair
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.setblocking(False)
    try:
        batch = sozu_mmsg.SendBatch(8, 1024)
        for index in range(3):
            assert batch.add(f"s{index}".encode(), sender.getsockname())
            assert batch.add(memoryview(f"o{index}".encode()), other.getsockname())
        assert len(batch) == 6
        assert batch.flush(reader.fileno()) == 0
        assert len(batch) == 0
        assert [data for data, _ in _drain(sender)] == [b"s0", b"s1", b"s2"]
        assert [data for data, _ in _drain(other)] == [b"o0", b"o1", b"o2"]
        assert {source for _, source in _drain(sender) + _drain(other)} <= {reader.getsockname()}
    finally:
        other.close()


def test_a_full_batch_says_so_and_keeps_what_it_holds(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader, sender = pair
    destination = sender.getsockname()
    by_slots = sozu_mmsg.SendBatch(2, 1024)
    assert by_slots.add(b"a", destination)
    assert by_slots.add(b"b", destination)
    assert not by_slots.add(b"c", destination)
    by_bytes = sozu_mmsg.SendBatch(8, 10)
    assert by_bytes.add(b"12345678", destination)
    assert not by_bytes.add(b"123", destination)
    assert by_bytes.add(b"12", destination)
    assert by_bytes.take() == [(b"12345678", destination), (b"12", destination)]
    assert len(by_bytes) == 0
    assert by_slots.flush(reader.fileno()) == 0
    assert [data for data, _ in _drain(sender)] == [b"a", b"b"]
    # Emptied by the flush: room again.
    assert by_slots.add(b"c", destination)


def test_a_refused_datagram_is_dropped_and_counted_the_others_go(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader, sender = pair
    batch = sozu_mmsg.SendBatch(8, 1024)
    assert batch.add(b"first", sender.getsockname())
    assert batch.add(b"wrong family", ("::1", 9))  # an IPv6 destination on an IPv4 socket
    assert batch.add(b"last", sender.getsockname())
    assert batch.flush(reader.fileno()) == 1
    assert len(batch) == 0
    assert [data for data, _ in _drain(sender)] == [b"first", b"last"]


def test_bad_destinations_are_refused_at_add_and_change_nothing() -> None:
    batch = sozu_mmsg.SendBatch(4, 64)
    with pytest.raises(ValueError, match="not an IPv4 address"):
        batch.add(b"x", ("example.test", 53))
    with pytest.raises(ValueError, match="not an IPv6 address"):
        batch.add(b"x", ("::zz", 53))
    with pytest.raises(OverflowError):
        batch.add(b"x", ("127.0.0.1", 70000))
    with pytest.raises(TypeError):
        batch.add(b"x", "127.0.0.1:53")  # type: ignore[arg-type]
    assert len(batch) == 0
    with pytest.raises(ValueError, match="slots"):
        sozu_mmsg.SendBatch(0, 64)


def test_flushing_on_a_closed_socket_raises_and_keeps_the_batch() -> None:
    spare = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = spare.fileno()
    spare.close()
    batch = sozu_mmsg.SendBatch(4, 64)
    assert batch.add(b"x", ("127.0.0.1", 9))
    with pytest.raises(OSError):
        batch.flush(fd)
    with pytest.raises(OSError):
        batch.flush(-1)  # a closed socket object's fileno
    assert batch.take() == [(b"x", ("127.0.0.1", 9))]
