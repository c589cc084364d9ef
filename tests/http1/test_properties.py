"""Properties of the session core: whatever byte boundaries requests and responses arrive at,
each request reaches the backend byte-exact and gets exactly one response, in order, with its
body byte-exact; invariants hold after every call (checked by the driver)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from support.http1_driver import Driver, World, parse_responses


@dataclass(frozen=True)
class Exchange:
    method: str
    request_body: bytes
    request_chunked: bool
    status: int
    response_body: bytes
    response_chunked: bool
    interim: bool

    def request(self, index: int) -> bytes:
        head = f"{self.method} /r{index} HTTP/1.1\r\nHost: web.test\r\n"
        if self.request_chunked:
            return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked(
                self.request_body
            )
        if self.request_body:
            head += f"Content-Length: {len(self.request_body)}\r\n"
        return (head + "\r\n").encode() + self.request_body

    def forwarded_body(self) -> bytes:
        return chunked(self.request_body) if self.request_chunked else self.request_body

    def response(self) -> bytes:
        interim = b"HTTP/1.1 100 Continue\r\n\r\n" if self.interim else b""
        head = f"HTTP/1.1 {self.status} X\r\n"
        body = b"" if self.method == "HEAD" or self.status == 204 else self.response_body
        if self.response_chunked and body:
            return interim + (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked(body)
        return (
            interim + (head + f"Content-Length: {len(self.response_body)}\r\n\r\n").encode() + body
        )

    def expected_body(self) -> bytes:
        return b"" if self.method == "HEAD" or self.status == 204 else self.response_body


def chunked(body: bytes, size: int = 7) -> bytes:
    out = b"".join(
        b"%x\r\n" % len(body[i : i + size]) + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    )
    return out + b"0\r\n\r\n"


bodies = st.binary(max_size=60)
exchanges = st.builds(
    Exchange,
    method=st.sampled_from(["GET", "POST", "HEAD"]),
    request_body=bodies,
    request_chunked=st.booleans(),
    status=st.sampled_from([200, 201, 204, 404, 500]),
    response_body=bodies,
    response_chunked=st.booleans(),
    interim=st.booleans(),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def complete_request(data: bytes) -> int:
    """The length of the first complete request in `data`, or -1."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return -1
    end += 4
    head = data[:end].lower()
    if b"transfer-encoding: chunked" in head:
        position = end
        while True:
            line_end = data.find(b"\r\n", position)
            if line_end < 0:
                return -1
            size = int(data[position:line_end], 16)
            position = line_end + 2 + size + 2
            if position > len(data):
                return -1
            if size == 0:
                return position
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            total = end + int(line.split(b":")[1])
            return total if len(data) >= total else -1
    return end


def run(
    d: Driver,
    plan: list[Exchange],
    client_pieces: list[bytes],
    back_cuts: list[int],
    drain_at: int = -1,
) -> tuple[int, int]:
    """Play the client and a backend that answers each complete request with its scripted
    response, split at `back_cuts`, until nothing moves (draining at step `drain_at`);
    check what the backend received. (Requests answered, client bytes never delivered.)"""
    pending = list(client_pieces)
    answered = 0
    to_reply: list[bytes] = []
    received: list[bytes] = []
    for step in range(10_000):
        if step == drain_at:
            d.drain()
        if d.s.done:
            break
        if d.dialing:
            d.connect()
            continue
        conn = d.conn
        if conn is not None and not to_reply and answered < len(plan):
            size = complete_request(bytes(conn.received))
            if size > 0:
                received.append(bytes(conn.received[:size]))
                del conn.received[:size]
                to_reply = split(plan[answered].response(), back_cuts)
                answered += 1
                continue
        if to_reply and d.s.wants_back_read():
            d.reply(to_reply.pop(0))
            continue
        if pending and d.s.wants_front_read():
            d.send(pending.pop(0))
            continue
        if step < drain_at:
            continue
        break
    assert not to_reply
    for index, (exchange, raw) in enumerate(zip(plan, received, strict=False)):
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(f"{exchange.method} /r{index} HTTP/1.1".encode())
        assert body == exchange.forwarded_body()
    return answered, sum(len(piece) for piece in pending)


@settings(max_examples=300, deadline=None)
@given(
    plan=st.lists(exchanges, min_size=1, max_size=5),
    client_cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
    back_cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_every_request_gets_its_response_in_order_whatever_the_splits(
    plan: list[Exchange], client_cuts: list[int], back_cuts: list[int]
) -> None:
    w = World()
    w.web()
    d = w.session()
    stream = b"".join(exchange.request(index) for index, exchange in enumerate(plan))
    assert run(d, plan, split(stream, client_cuts), back_cuts) == (len(plan), 0)
    heads = frozenset(i for i, e in enumerate(plan) if e.method == "HEAD")
    responses = [r for r in parse_responses(d.take_client(), heads) if r.status != 100]
    assert [r.status for r in responses] == [e.status for e in plan]
    assert [r.body for r in responses] == [e.expected_body() for e in plan]
    assert len({r.header("sozu-id")[0] for r in responses}) == len(plan)
    assert d.client_open()
    assert len(d.conns) == 1, "every exchange completed: one pooled backend connection"
    counters = w.ctx.counters
    assert counters.requests == len(plan)
    assert sum(counters.statuses.values()) == len(plan)
    assert counters.pipelined_unanswered == 0


@settings(max_examples=200, deadline=None)
@given(
    plan=st.lists(exchanges, min_size=1, max_size=4),
    client_cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    drain_at=st.integers(min_value=0, max_value=40),
)
def test_a_drain_at_any_point_answers_or_counts_every_request(
    plan: list[Exchange], client_cuts: list[int], drain_at: int
) -> None:
    w = World()
    w.web()
    d = w.session()
    requests = [exchange.request(index) for index, exchange in enumerate(plan)]
    stream = b"".join(requests)
    _, undelivered = run(d, plan, split(stream, client_cuts), [], drain_at)
    # Bytes the client sent after the connection closed are dropped by the shell's lingering
    # close: only the requests the core saw begin are answered or counted.
    delivered = len(stream) - undelivered
    starts = [sum(len(r) for r in requests[:i]) for i in range(len(requests))]
    seen = sum(start < delivered for start in starts)
    heads = frozenset(i for i, e in enumerate(plan) if e.method == "HEAD")
    responses = [r for r in parse_responses(d.take_client(), heads) if r.status != 100]
    closes = [r.header("connection") == ["close"] for r in responses]
    unanswered = w.ctx.counters.pipelined_unanswered
    if d.s.done:
        # The last response said close, none before it; the rest was counted.
        assert closes == [False] * (len(responses) - 1) + [True]
        assert d.front_close
        assert len(responses) + unanswered == seen
    else:
        # Every request answered before the drain could say anything: the connection waits
        # for one more request (until the drain deadline).
        assert closes == [False] * len(plan)
        assert unanswered == 0
        d.advance(30.1)
        assert d.s.done
        assert d.client == b""
