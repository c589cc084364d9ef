"""Less travelled paths of the session core: frontend header edits and rewrites both ways,
frontend HSTS, the per-IP slot moving between clusters, a close whose flush stalls, a client
leaving during a dial, aborted requests in the access log, counters and invariants."""

from __future__ import annotations

from collections.abc import Callable

from support.http1_driver import PEER, Driver, World, backend_head, get, ok, parse_responses

from sozu.command.metrics import Histogram
from sozu.command.types import Header, HstsConfig, PathRule
from sozu.worker.core.http1.actions import CLOSE_FRONT, LINGER_FRONT, describe


def test_frontend_header_edits_and_rewrites_apply_both_ways() -> None:
    w = World(send_x_real_ip=True)
    w.cluster("web", [("b1", 8001)])
    w.frontend(
        "/(api)[0-9]+/.example.test",
        "web",
        rewrite_host="internal.test",
        rewrite_path="/v2/items",
        path=PathRule(kind="REGEX", value="/v1(/.*)"),
        headers=(
            Header(position="REQUEST", key="X-Added", val="yes"),
            Header(position="REQUEST", key="X-Secret", val=""),
            Header(position="RESPONSE", key="X-Served-By", val="sozu"),
            Header(position="BOTH", key="X-Both", val="1"),
        ),
    )
    d = w.session()
    d.send(get("/v1/items?x=1", "api42.example.test", "X-Secret: hidden"))
    d.connect()
    line, headers, _ = backend_head(d.received())
    assert line == "GET /v2/items HTTP/1.1"
    assert headers["host"] == ["internal.test"]
    assert headers["x-forwarded-host"] == ["api42.example.test"]
    assert headers["x-added"] == ["yes"]
    assert headers["x-both"] == ["1"]
    assert "x-secret" not in headers
    assert headers["x-real-ip"] == [PEER[0]]
    d.reply(ok())
    (response,) = parse_responses(d.take_client())
    assert response.header("x-served-by") == ["sozu"]
    assert response.header("x-both") == ["1"]


def test_a_frontend_hsts_policy_overrides_the_listener_one_on_proxied_responses() -> None:
    w = World(https=True, strict_sni_binding=False, hsts=HstsConfig(enabled=True))
    w.cluster("web", [("b1", 8001)])
    w.frontend("web.test", "web", hsts=HstsConfig(enabled=True, max_age=5, preload=True))
    d = w.session()
    d.send(get())
    d.connect()
    assert backend_head(d.received())[1]["x-forwarded-proto"] == ["https"]
    d.reply(ok())
    (response,) = parse_responses(d.take_client())
    assert response.header("strict-transport-security") == ["max-age=5; preload"]


def test_the_per_ip_slot_follows_the_cluster_of_the_latest_request() -> None:
    w = World()
    w.cluster("a", [("a1", 8001)])
    w.frontend("a.test", "a")
    w.cluster("b", [("b1", 8002)])
    w.frontend("b.test", "b")
    per_ip = w.shared.per_ip
    d = w.session()
    d.send(get("/", "a.test"))
    d.connect()
    d.reply(ok())
    assert (per_ip.held("a", PEER[0]), per_ip.held("b", PEER[0])) == (1, 0)
    d.send(get("/", "b.test"))
    assert (per_ip.held("a", PEER[0]), per_ip.held("b", PEER[0])) == (0, 1)
    d.connect()
    d.reply(ok())
    d.reset()
    assert len(per_ip) == 0


def test_a_close_whose_flush_stalls_ends_after_front_timeout() -> None:
    w = World(front_timeout=10)
    w.web()
    d = w.session()
    d.flush_front = False
    d.send(get("/", "nowhere.test"))
    assert d.front_close == LINGER_FRONT
    assert not d.s.done, "alive until the answer is flushed"
    assert not d.s.wants_front_read()
    d.advance(10.1)
    assert d.s.done
    assert not d.s.to_front


def test_a_client_leaving_during_the_dial_abandons_it() -> None:
    w = World(access_log=True)
    cluster = w.web()
    d = w.session()
    d.send(get("/gone"))
    assert d.dialing
    d.reset()
    assert not d.dialing, "CLOSE_BACK abandons the dial"
    assert d.s.done
    assert d.front_close == CLOSE_FRONT
    assert cluster.loads == {}
    (line,) = w.lines
    assert line.endswith(" web.test GET /gone -")


def test_an_aborted_response_is_counted_and_logged_with_its_status() -> None:
    w = World(access_log=True)
    w.web()
    d = w.session()
    d.send(get())
    d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    d.reset()
    assert w.ctx.counters.statuses == {200: 1}
    (line,) = w.lines
    assert line.endswith(" 200")


def test_a_stale_pooled_connection_that_resets_is_retried_too() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get("/1"))
    d.connect()
    d.reply(ok())
    d.send(get("/2"))
    d.connect()
    d.back_reset()
    assert d.connects[-1] == ("b1", False, False)
    d.connect()
    d.reply(ok())
    assert [r.status for r in parse_responses(d.take_client())] == [200, 200]


def test_counters_add_up_over_a_mixed_connection() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get("/1"))
    d.connect()
    d.reply(ok(b"x" * 100))
    d.send(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 3\r\n\r\nabc")
    d.connect()
    d.reply(ok())
    d.send(get("/", "nowhere.test"))
    client = d.take_client()
    counters = w.ctx.counters
    assert counters.bytes_out == len(client)
    assert counters.requests == 3
    assert counters.statuses == {200: 2, 404: 1}
    assert counters.answers == {404: 1}
    assert d.s.bytes_out == len(client)
    assert d.s.done


def test_actions_describe_themselves() -> None:
    assert describe(0) == "-"
    assert describe(CLOSE_FRONT | LINGER_FRONT) == "CLOSE_FRONT|LINGER_FRONT"


def test_connect_times_are_observed_for_new_connections_only() -> None:
    w = World()
    cluster = w.web()
    cluster.connect_seconds = Histogram()
    d = w.session()
    d.send(get())
    d.advance(0.5)
    d.connect()
    d.reply(ok())
    d.send(get())
    d.connect()
    d.reply(ok())
    assert sum(cluster.connect_seconds.counts) == 1
    assert cluster.connect_seconds.sum == 0.5


def test_a_client_gone_before_the_connect_with_half_a_body_aborts_at_connect() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 10\r\n\r\n1234")
    d.eof()
    assert not d.s.done, "the body may still be complete in the buffer"
    conn = d.connect()
    assert conn.closed
    assert d.s.done
    d = w.session()
    d.send(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 4\r\n\r\n1234")
    d.eof()
    d.connect()
    assert backend_head(d.received())[2] == b"1234"
    d.reply(ok())
    assert parse_responses(d.take_client())[0].status == 200


def test_a_malformed_chunk_from_the_backend_is_502_or_a_cut() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    (response,) = parse_responses(d.take_client())
    assert response.status == 502, "nothing went out yet"
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
    d.reply(b"2\r\ncdX\r\n")
    assert d.take_client().endswith(b"2\r\nab\r\n")
    assert d.front_close == CLOSE_FRONT
    assert conn.closed


def test_a_backend_not_reading_while_it_answers_is_cut() -> None:
    w = World(back_timeout=5, front_timeout=100)
    w.web()
    d = w.session()
    d.send(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100\r\n\r\n")
    conn = d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    d.flush_back = False
    d.send(b"x" * 10)
    d.advance(5.1)
    assert d.s.done
    assert conn.closed
    assert d.front_close == CLOSE_FRONT


def test_a_client_pausing_while_the_backend_is_full_is_not_blamed() -> None:
    w = World(back_timeout=100, front_timeout=5)
    w.web()
    d = w.session()
    d.send(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100000\r\n\r\n")
    d.connect()
    d.flush_back = False
    d.send(b"x" * 20_000)
    assert not d.s.wants_front_read()
    d.advance(50)
    assert not d.s.done, "the client cannot send: the backend's send timer decides"
    d.advance(50.1)
    (response,) = parse_responses(d.take_client())
    assert response.status == 504


def test_a_tunnel_flushes_the_client_bytes_before_closing_the_backend() -> None:
    w = World(back_timeout=5)
    w.web()
    d = w.session()
    d.send(get("/ws", "web.test", "Upgrade: websocket", "Connection: Upgrade"))
    d.eof()
    conn = d.connect()
    d.reply(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    assert d.s.tunnel_front_done, "the client had half-closed already"
    d = w.session()
    d.send(get("/ws", "web.test", "Upgrade: websocket", "Connection: Upgrade"))
    conn = d.connect()
    d.reply(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    d.flush_back = False
    d.send(b"last client words")
    d.eof()
    d.back_eof()
    assert d.front_close == CLOSE_FRONT
    assert not conn.closed, "to_back is flushed first"
    assert not d.s.done
    d.flush()
    assert conn.received.endswith(b"last client words")
    assert conn.closed
    assert d.s.done


def test_a_tunnel_close_whose_backend_flush_stalls_or_fails_ends() -> None:
    upgrade = get("/ws", "web.test", "Upgrade: websocket", "Connection: Upgrade")
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    for end in ("stall", "eof", "reset"):
        w = World(back_timeout=5)
        w.web()
        d = w.session()
        d.send(upgrade)
        conn = d.connect()
        d.reply(switching)
        d.flush_back = False
        d.send(b"unread")
        d.eof()
        d.back_eof()
        assert not d.s.done
        if end == "stall":
            d.advance(5.1)
        elif end == "eof":
            d.back_eof()
        else:
            d.reset()
        assert conn.closed, end
        assert d.s.done, end
        assert b"unread" not in conn.received, "never flushed"


def test_a_stalled_tunnel_and_a_reset_client_end_it() -> None:
    upgrade = get("/ws", "web.test", "Upgrade: websocket", "Connection: Upgrade")
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    w = World(back_timeout=5, front_timeout=100)
    w.web()
    d = w.session()
    d.send(upgrade)
    conn = d.connect()
    d.reply(switching)
    d.flush_back = False
    d.send(b"backend never reads this")
    d.advance(5.1)
    assert d.s.done
    assert conn.closed
    d = w.session()
    d.send(upgrade)
    conn = d.connect()
    d.reply(switching)
    d.reset()
    assert d.s.done
    assert conn.closed
    assert w.ctx.counters.websockets_active == 0
    assert w.ctx.counters.statuses == {101: 2}


def test_a_whole_head_that_is_invalid_or_too_big_in_one_read() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(b"GET / HTTP/1.1\r\nHost: web.test\r\n" + b"X: " + b"a" * 17000 + b"\r\n\r\n")
    assert parse_responses(d.take_client())[0].status == 431
    d = w.session()
    d.send(b"GET / HTTP/9.9\r\nHost: web.test\r\n\r\n")
    assert parse_responses(d.take_client())[0].status == 400


def test_garbage_behind_a_close_counts_as_one_unanswered_request() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get("/", "web.test", "Connection: close") + get("/2") + b"NOT HTTP\r\n\r\n")
    d.connect()
    d.reply(ok())
    assert w.ctx.counters.pipelined_unanswered == 2


def test_abort_ends_the_session_from_any_state() -> None:
    upgrade = get("/ws", "web.test", "Upgrade: websocket", "Connection: Upgrade")
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    steps: list[list[Callable[[Driver], object]]] = [
        [],
        [lambda d: d.send(b"GET / HT")],
        [lambda d: d.send(get())],
        [lambda d: d.send(get()), lambda d: d.connect()],
        [lambda d: d.send(get()), lambda d: d.connect(), lambda d: d.reply(b"HTTP/1.1 200 OK\r\n")],
        [lambda d: d.send(upgrade), lambda d: d.connect(), lambda d: d.reply(switching)],
        [lambda d: setattr(d, "flush_front", False), lambda d: d.send(get("/", "x.test"))],
    ]
    for script in steps:
        w = World()
        cluster = w.web()
        d = w.session()
        for step in script:
            step(d)
        d.abort()
        assert d.s.done
        assert all(conn.closed for conn in d.conns)
        assert cluster.loads == {}
        assert len(w.shared.per_ip) == 0
        assert w.ctx.counters.websockets_active == 0
