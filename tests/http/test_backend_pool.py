"""The keep-alive pool of backend connections: reuse, stale detection, caps and idle expiry."""

from __future__ import annotations

import socket

from sozu.worker.http.backend_pool import RECENT, BackendPool

ADDRESS = ("127.0.0.1", 8000)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


def test_reuse_most_recent_first() -> None:
    pool = BackendPool(Clock())
    (a, a_peer), (b, b_peer) = _pair(), _pair()
    pool.give(ADDRESS, a)
    pool.give(ADDRESS, b)
    pool.check_invariants()
    assert len(pool) == 2
    assert pool.take(ADDRESS) is b
    assert pool.take(ADDRESS) is a
    assert pool.take(ADDRESS) is None
    assert pool.reused == 2
    pool.check_invariants()
    for sock in (a, a_peer, b, b_peer):
        sock.close()


def test_closed_or_chatty_connections_are_dropped() -> None:
    clock = Clock()
    pool = BackendPool(clock)
    closed, closed_peer = _pair()
    chatty, chatty_peer = _pair()
    closed_peer.close()
    chatty_peer.send(b"unsolicited")
    pool.give(ADDRESS, closed)
    pool.give(ADDRESS, chatty)
    clock.now = RECENT + 0.5  # old enough to be peeked at
    assert pool.take(ADDRESS) is None
    assert closed.fileno() == -1
    assert chatty.fileno() == -1
    assert len(pool) == 0
    pool.check_invariants()
    chatty_peer.close()


def test_cap_and_idle_expiry() -> None:
    clock = Clock()
    pool = BackendPool(clock, per_backend=2, max_idle=10.0)
    pairs = [_pair() for _ in range(3)]
    for ours, _ in pairs:
        pool.give(ADDRESS, ours)
        pool.check_invariants()
    assert len(pool) == 2
    assert pairs[0][0].fileno() == -1, "the oldest beyond the cap is closed"
    clock.now = 11.0
    assert pool.take(ADDRESS) is None
    assert all(ours.fileno() == -1 for ours, _ in pairs)
    pool.check_invariants()
    for _, theirs in pairs:
        theirs.close()


def test_recently_released_connection_is_reused_without_a_peek() -> None:
    clock = Clock()
    pool = BackendPool(clock)
    ours, theirs = _pair()
    theirs.send(b"would be seen by a peek")
    pool.give(ADDRESS, ours)
    clock.now = RECENT / 2
    assert pool.take(ADDRESS) is ours
    ours.close()
    theirs.close()


def test_forget_and_close() -> None:
    pool = BackendPool(Clock())
    one, one_peer = _pair()
    two, two_peer = _pair()
    pool.give(ADDRESS, one)
    pool.give(("127.0.0.1", 9000), two)
    pool.forget(ADDRESS)
    assert one.fileno() == -1
    assert pool.addresses() == [("127.0.0.1", 9000)]
    pool.close()
    assert two.fileno() == -1
    assert len(pool) == 0
    one_peer.close()
    two_peer.close()
