"""Back pressure (what the core wants read while a buffer is over the listener's limit) and the
timeouts of a stalled side: a client or backend that does not read, a client that stops
sending its body (docs/http.md, Timeouts and Back pressure)."""

from __future__ import annotations

from support.http1_driver import World, backend_head, get, ok, parse_responses

from sozu.worker.core.http1.actions import CLOSE_FRONT

LIMIT = 16393


def test_a_slow_client_stops_the_backend_reads_until_to_front_drains() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    d.connect()
    d.flush_front = False
    size = 100_000
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"a" * LIMIT)
    assert not d.s.wants_back_read()
    assert len(d.s.to_front) > LIMIT
    sent = LIMIT
    while sent < size:
        d.flush()  # the client reads everything queued
        assert d.s.wants_back_read()
        piece = min(30_000, size - sent)
        d.reply(b"a" * piece)
        sent += piece
    d.flush()
    (response,) = parse_responses(d.take_client())
    assert len(response.body) == size


def test_a_backend_that_does_not_read_stops_the_client_reads() -> None:
    w = World()
    w.web()
    d = w.session()
    size = 60_000
    d.send(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: %d\r\n\r\n" % size)
    d.connect()
    d.flush_back = False
    d.send(b"b" * (LIMIT + 1))
    assert not d.s.wants_front_read()
    d.flush_back = True
    d.flush()
    assert d.s.wants_front_read()
    d.send(b"b" * (size - LIMIT - 1))
    assert len(backend_head(d.received())[2]) == size


def test_pipelined_bytes_over_the_limit_stop_the_client_reads() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    d.connect()
    filler = get("/x", "web.test", "X-Fill: " + "f" * 8000)
    d.send(filler)
    d.send(filler)
    d.send(filler)
    assert len(d.s.fbuf) > LIMIT
    assert not d.s.wants_front_read()
    d.reply(ok())
    assert d.s.wants_front_read(), "the next request was taken from the buffer"


def test_a_client_that_does_not_read_is_cut_after_front_timeout() -> None:
    w = World(front_timeout=10)
    cluster = w.web()
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.flush_front = False
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 20_000)
    d.advance(9.9)
    assert not d.s.done, "the backend is not blamed for the client's slowness"
    d.advance(0.2)
    assert d.s.done
    assert conn.closed
    assert not d.s.to_front
    assert cluster.loads == {}


def test_progress_pushes_the_send_timer_back() -> None:
    w = World(front_timeout=10)
    w.web()
    d = w.session()
    d.send(get())
    d.connect()
    d.flush_front = False
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    for _ in range(5):
        d.advance(8)
        del d.s.to_front[:1]
        d.s.sent(d.now)
        d.check()
    assert not d.s.done
    d.advance(10.1)
    assert d.s.done


def test_a_backend_that_does_not_read_the_request_gets_504() -> None:
    w = World(back_timeout=30)
    w.web()
    d = w.session()
    d.send(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n\r\n")
    d.flush_back = False
    conn = d.connect()
    d.send(b"12345")
    d.advance(30.1)
    (response,) = parse_responses(d.take_client())
    assert response.status == 504
    assert conn.closed
    assert d.s.done


def test_a_client_that_stops_sending_its_body_gets_504_then_close() -> None:
    w = World(front_timeout=10, back_timeout=5)
    w.web()
    d = w.session()
    d.send(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 10\r\n\r\n123")
    conn = d.connect()
    d.advance(9.9)
    assert not d.s.done, "the backend waits for the body: its timer does not fire"
    d.advance(0.2)
    (response,) = parse_responses(d.take_client())
    assert response.status == 504
    assert b"client timed out" in response.body
    assert conn.closed
    assert d.s.done


def test_a_client_stalling_mid_body_after_the_response_started_is_cut() -> None:
    w = World(front_timeout=10)
    w.web()
    d = w.session()
    d.send(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 10\r\n\r\n123")
    conn = d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    d.advance(10.1)
    assert d.s.done
    assert d.front_close == CLOSE_FRONT
    assert conn.closed


def test_the_back_timer_waits_while_the_client_is_back_pressured() -> None:
    w = World(front_timeout=100, back_timeout=5)
    w.web()
    d = w.session()
    d.send(get())
    d.connect()
    d.flush_front = False
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n" + b"a" * 20_000)
    d.advance(50)
    assert not d.s.done, "the backend is not read: its silence is not its fault"
    d.flush()
    d.advance(5.1)
    assert d.s.done, "read again and silent for back_timeout: cut"
