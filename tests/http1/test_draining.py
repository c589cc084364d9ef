"""Honest draining: the response being written when the drain starts, or the next one, says
`Connection: close` and the connection closes (lingering) after it; a response that already
promised keep-alive gets one more request; an idle connection waits for that request until the
drain deadline; requests pipelined behind a close are counted, never answered by an EOF."""

from __future__ import annotations

from support.http1_driver import World, backend_head, get, ok, parse_responses

from sozu.worker.core.http1.actions import CLOSE_FRONT, LINGER_FRONT


def test_a_drain_while_waiting_for_the_response_makes_it_say_close() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.drain()
    d.reply(ok())
    (response,) = parse_responses(d.take_client())
    assert response.header("connection") == ["close"]
    assert d.front_close == LINGER_FRONT
    assert conn.closed, "no connection is pooled while draining"


def test_a_drain_before_the_request_reached_the_backend_says_close_both_ways() -> None:
    w = World()
    w.web()
    d = w.session()
    d.drain()
    d.send(get())
    d.connect()
    _, headers, _ = backend_head(d.received())
    assert headers["connection"] == ["close"]
    d.reply(ok())
    assert parse_responses(d.take_client())[0].header("connection") == ["close"]
    assert d.front_close == LINGER_FRONT


def test_a_keep_alive_response_already_sent_gets_one_more_request() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get("/1"))
    d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    d.drain()  # the head went out promising keep-alive
    d.reply(b"cd")
    (first,) = parse_responses(d.take_client())
    assert first.header("connection") == []
    assert d.client_open(), "the promise is kept: the connection waits"
    d.advance(20)
    assert not d.s.done
    d.send(get("/2"))
    d.connect()
    d.reply(ok())
    (second,) = parse_responses(d.take_client())
    assert second.header("connection") == ["close"]
    assert d.front_close == LINGER_FRONT


def test_an_idle_draining_connection_closes_only_at_the_drain_deadline() -> None:
    w = World(front_timeout=60)
    w.web()
    d = w.session()
    d.send(get())
    d.connect()
    d.reply(ok())
    d.take_client()
    d.drain()
    assert d.s.deadline == d.now + 30
    d.advance(29.9)
    assert not d.s.done
    d.advance(0.2)
    assert d.s.done
    assert d.front_close == CLOSE_FRONT
    assert d.client == b""


def test_the_idle_timeout_still_applies_when_it_comes_first() -> None:
    w = World(front_timeout=5)
    w.web()
    d = w.session()
    d.drain()
    d.advance(5.1)
    assert d.s.done


def test_a_request_started_before_the_deadline_is_served() -> None:
    w = World()
    w.web()
    d = w.session()
    d.drain()
    d.advance(29)
    d.send(b"GET / HTTP/1.1\r\n")
    d.advance(2)
    assert not d.s.done, "request bytes: no longer idle"
    d.send(b"Host: web.test\r\n\r\n")
    d.connect()
    d.reply(ok())
    assert parse_responses(d.take_client())[0].header("connection") == ["close"]


def test_pipelined_requests_behind_a_close_are_counted_not_answered() -> None:
    w = World()
    w.web()
    d = w.session()
    d.drain()
    chunked = b"POST /c HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    post = b"POST /p HTTP/1.1\r\nHost: web.test\r\nContent-Length: 3\r\n\r\nabc"
    pipelined = (
        get("/2") + post + chunked + b"3\r\nabc\r\n0\r\n\r\n" + get("/3") + chunked + b"1\r\n"
    )
    d.send(get("/1") + pipelined)
    d.connect()
    d.reply(ok())
    assert len(parse_responses(d.take_client())) == 1
    assert d.front_close == LINGER_FRONT
    # /2, the POST, the chunked POST, /3, and the chunked POST cut short.
    assert w.ctx.counters.pipelined_unanswered == 5


def test_a_worker_already_draining_drains_new_sessions_from_their_start() -> None:
    w = World()
    w.web()
    w.shared.start_drain(990.0)
    d = w.session()
    assert d.s.draining
    assert d.s.deadline == 990.0 + 30
    d.send(get())
    d.connect()
    d.reply(ok())
    assert parse_responses(d.take_client())[0].header("connection") == ["close"]


def test_a_generated_answer_while_draining_says_close() -> None:
    w = World(answers={"404": "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"})
    w.web()
    d = w.session()
    d.drain()
    d.send(get("/", "nowhere.test"))
    (response,) = parse_responses(d.take_client())
    assert response.header("connection") == ["close"]
    assert d.front_close == LINGER_FRONT


def test_a_drain_changes_nothing_in_a_tunnel() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get("/ws", "web.test", "Upgrade: websocket", "Connection: Upgrade"))
    d.connect()
    d.reply(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    assert d.tunnel
    d.drain()
    d.send(b"frame")
    assert d.received().endswith(b"frame")
    assert not d.s.done
    assert d.s.deadline < d.now + 61, "only the tunnel's idle timer"
