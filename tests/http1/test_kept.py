"""The backend connection a session keeps between its requests: the next request chosen for
the same backend goes out on it with no CONNECT; another backend, a body, a drain or the
client's close hands it on (pool) or closes it; the backend's close or bytes nobody asked for
drop it without a word to the client; a worker keeps at most `max_kept_backs`."""

from __future__ import annotations

from support.http1_driver import World, get, ok, parse_responses

from sozu.worker.core.http1.actions import CLOSE_BACK, CONNECT, RELEASE_BACK


def kept_world(*backends: tuple[str, int], max_kept_backs: int = 8) -> World:
    w = World(max_kept_backs=max_kept_backs)
    w.web(*backends)
    return w


def test_the_next_request_to_the_same_backend_goes_out_on_the_kept_connection() -> None:
    w = kept_world()
    d = w.session()
    d.send(get("/1"))
    first = d.connect()
    d.reply(ok())
    assert d.kept is first
    assert d.s.kept == first.address
    assert w.shared.kept_backs == 1
    assert not w.clusters["web"][1].loads, "an idle kept connection is no load"
    d.send(get("/2"))
    assert not d.history[-1] & CONNECT
    assert d.conn is first
    assert d.s.reused
    assert w.shared.kept_reused == 1
    d.reply(ok())
    assert len(d.connects) == 1
    assert [r.status for r in parse_responses(d.take_client())] == [200, 200]
    assert first.received.count(b"GET /") == 2
    d.eof()
    assert d.history[-1] & RELEASE_BACK, "the client left: its clean connection is pooled"
    assert first.pooled
    assert w.shared.kept_backs == 0


def test_another_backend_hands_the_kept_connection_to_the_pool() -> None:
    w = kept_world(("b1", 8001), ("b2", 8002))
    d = w.session()
    d.send(get("/1"))
    first = d.connect()
    d.reply(ok())
    d.send(get("/2"))  # round robin: b2
    assert d.history[-1] & RELEASE_BACK
    assert d.history[-1] & CONNECT
    assert first.pooled
    assert d.connects[-1][0] == "b2"
    second = d.connect()
    d.reply(ok())
    assert d.kept is second
    d.send(get("/3"))  # b1 again: its pooled connection
    assert d.history[-1] & (RELEASE_BACK | CONNECT) == RELEASE_BACK | CONNECT
    assert d.connect() is first
    d.reply(ok())
    assert [r.status for r in parse_responses(d.take_client())] == [200, 200, 200]


def test_a_request_with_a_body_takes_a_checked_connection() -> None:
    w = kept_world()
    d = w.session()
    d.send(get("/1"))
    first = d.connect()
    d.reply(ok())
    d.send(b"POST /up HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2\r\n\r\nhi")
    assert d.history[-1] & (RELEASE_BACK | CONNECT) == RELEASE_BACK | CONNECT
    assert d.connects[-1] == ("b1", True, True), "verify: a body cannot be sent twice"
    assert d.connect() is first
    d.reply(ok())
    assert [r.status for r in parse_responses(d.take_client())] == [200, 200]


def test_the_backend_closing_the_kept_connection_changes_nothing_for_the_client() -> None:
    for reset in (False, True):
        w = kept_world()
        d = w.session()
        d.send(get("/1"))
        d.connect()
        d.reply(ok())
        d.take_client()
        d.kept_closed(reset=reset)
        assert d.history[-1] == 0
        assert not d.take_client()
        assert d.client_open()
        assert w.shared.kept_backs == 0
        d.send(get("/2"))
        assert d.history[-1] & CONNECT
        d.connect()
        d.reply(ok())
        assert [r.status for r in parse_responses(d.take_client())] == [200]


def test_bytes_on_the_kept_connection_close_it() -> None:
    w = kept_world()
    d = w.session()
    d.send(get("/1"))
    first = d.connect()
    d.reply(ok())
    d.take_client()
    d.kept_speaks(b"HTTP/1.1 200 OK\r\n")
    assert d.history[-1] == CLOSE_BACK
    assert first.closed
    assert not d.take_client()
    assert d.client_open()


def test_a_kept_connection_found_closed_at_reuse_is_retried_on_a_fresh_one() -> None:
    w = kept_world()
    d = w.session()
    d.send(get("/1"))
    d.connect()
    d.reply(ok())
    d.send(get("/2"))
    assert d.s.reused
    d.back_eof()  # the backend had closed it: no byte of a response came
    assert w.ctx.counters.stale_connections == 1
    assert d.connects[-1] == ("b1", False, False)
    d.connect()
    d.reply(ok())
    assert [r.status for r in parse_responses(d.take_client())] == [200, 200]


def test_a_draining_worker_closes_kept_connections() -> None:
    w = kept_world()
    d = w.session()
    d.send(get("/1"))
    first = d.connect()
    d.reply(ok())
    w.shared.start_drain(d.now)
    d.drain()
    d.send(get("/2"))
    assert d.history[-1] & (CLOSE_BACK | CONNECT) == CLOSE_BACK | CONNECT
    assert first.closed
    d.connect()
    d.reply(ok())
    responses = parse_responses(d.take_client())
    assert [r.status for r in responses] == [200, 200]
    assert responses[-1].header("connection") == ["close"]


def test_a_worker_keeps_at_most_max_kept_backs() -> None:
    w = kept_world(max_kept_backs=1)
    one, two = w.session(), w.session()
    for d in (one, two):
        d.send(get("/"))
        d.connect()
        d.reply(ok())
    assert one.kept is not None
    assert two.kept is None
    assert two.history[-1] & RELEASE_BACK, "past the limit the connection is pooled"
    assert w.shared.kept_backs == 1
