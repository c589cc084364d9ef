"""The session core after a 101 (a raw tunnel with half-closes and an idle timeout), and sticky
sessions (the cookie picks the backend, never reaches it, and is set when it must be)."""

from __future__ import annotations

from support.http1_driver import World, backend_head, get, ok, parse_responses

from sozu.worker.core.http1.actions import CLOSE_FRONT, SHUTDOWN_BACK, SHUTDOWN_FRONT

UPGRADE = get(
    "/chat",
    "web.test",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
)
SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


def test_a_101_turns_the_connection_into_a_tunnel_with_half_closes() -> None:
    w = World(access_log=True)
    cluster = w.web()
    d = w.session()
    d.send(UPGRADE + b"early client bytes")
    conn = d.connect()
    line, headers, rest = backend_head(d.received())
    assert line == "GET /chat HTTP/1.1"
    assert headers["upgrade"] == ["websocket"]
    assert rest == b"", "bytes after the head wait for the backend's answer"
    d.reply(SWITCHING + b"server hello")
    assert d.tunnel
    head, _, after = d.take_client().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols")
    assert b"Sozu-Id: " in head
    assert after == b"server hello"
    assert d.received() == b"early client bytes"
    counters = w.ctx.counters
    assert (counters.websockets, counters.websockets_active) == (1, 1)
    d.send(b"ping")
    d.reply(b"pong")
    assert d.received() == b"ping"
    assert d.take_client() == b"pong"
    d.eof()
    assert d.history[-1] & SHUTDOWN_BACK
    assert not d.s.done
    d.reply(b"last words")
    assert d.take_client() == b"last words"
    d.back_eof()
    assert d.s.done
    assert d.front_close == CLOSE_FRONT
    assert conn.closed
    assert counters.websockets_active == 0
    assert counters.statuses == {101: 1}
    assert cluster.loads == {}
    (entry,) = w.lines
    assert entry.endswith(" web.test GET /chat 101")


def test_a_tunnel_ends_when_the_backend_closes_and_then_the_client() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(UPGRADE)
    conn = d.connect()
    d.reply(SWITCHING)
    d.back_eof()
    assert d.history[-1] & SHUTDOWN_FRONT
    assert not d.s.wants_back_read()
    assert d.s.wants_front_read()
    d.send(b"still talking")
    assert conn.received.endswith(b"still talking")
    d.eof()
    assert d.s.done
    assert conn.closed


def test_an_idle_tunnel_is_closed_and_a_reset_ends_it() -> None:
    w = World(front_timeout=10, back_timeout=20)
    w.web()
    d = w.session()
    d.send(UPGRADE)
    d.connect()
    d.reply(SWITCHING)
    d.advance(15)
    d.send(b"x")  # client traffic pushes the idle deadline front_timeout ahead, if later
    d.reply(b"y")  # backend traffic back_timeout ahead: 35
    d.advance(19.9)
    assert not d.s.done
    d.advance(0.2)
    assert d.s.done
    d = w.session()
    d.send(UPGRADE)
    conn = d.connect()
    d.reply(SWITCHING)
    d.back_reset()
    assert d.s.done
    assert conn.closed
    assert w.ctx.counters.websockets_active == 0


def test_a_101_without_an_upgrade_request_is_not_a_tunnel() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.reply(SWITCHING)
    assert not d.tunnel
    # A switch the request did not ask for (RFC 9110 §15.2.2): the backend connection no
    # longer speaks HTTP, and the client is not told it switched.
    assert parse_responses(d.take_client())[0].status == 502
    assert conn.closed
    # A 101 that names no protocol is not a valid response.
    d = w.session()
    d.send(get())
    d.connect()
    d.reply(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert parse_responses(d.take_client())[0].status == 502


def _sticky_world() -> World:
    w = World()
    w.cluster(
        "web",
        [("b1", 8001), ("b2", 8002)],
        sticky_ids={"b1": "one", "b2": "two"},
        sticky_session=True,
    )
    w.frontend("web.test", "web")
    return w


def _cookie(value: str) -> str:
    return f"SOZUBALANCEID={value}; Path=/"


def test_sticky_cookie_picks_its_backend_and_is_stripped() -> None:
    w = _sticky_world()
    for value, backend in (("two", "b2"), ("one", "b1"), ("two", "b2")):
        d = w.session()
        d.send(get("/", "web.test", f"Cookie: a=1; SOZUBALANCEID={value}; b=2"))
        assert d.connects[0][0] == backend
        d.connect()
        _, headers, _ = backend_head(d.received())
        assert headers["cookie"] == ["a=1; b=2"]
        d.reply(ok())
        (response,) = parse_responses(d.take_client())
        assert response.header("set-cookie") == [], "a valid cookie is not set again"


def test_a_missing_or_unusable_sticky_cookie_gets_a_fresh_one() -> None:
    w = _sticky_world()
    d = w.session()
    d.send(get())
    d.connect()
    _, headers, _ = backend_head(d.received())
    assert "cookie" not in headers
    d.reply(ok())
    (response,) = parse_responses(d.take_client())
    assert response.header("set-cookie") == [_cookie("one")]
    # The cookie's backend cannot be reached: another one, and the cookie moves.
    d = w.session()
    d.send(get("/", "web.test", "Cookie: SOZUBALANCEID=one"))
    assert d.connects == [("b1", True, False)]
    d.refuse()
    assert d.connects[-1][0] == "b2"
    d.connect()
    d.reply(ok())
    assert parse_responses(d.take_client())[0].header("set-cookie") == [_cookie("two")]
    d.send(get("/", "web.test", "Cookie: SOZUBALANCEID=one"))
    assert d.connects[-1][0] == "b2", "b1 backs off: the cookie cannot hold"
    d.connect()
    d.reply(ok())
    assert parse_responses(d.take_client())[0].header("set-cookie") == [_cookie("two")]
    d.send(get("/", "web.test", "Cookie: SOZUBALANCEID=nonsense"))
    d.connect()
    d.reply(ok())
    assert parse_responses(d.take_client())[0].header("set-cookie") == [_cookie("two")]
