"""Inputs at the edge of what HTTP/1.1 allows, from clients and from backends: each gets the
answer the specifications give (served, 400 or 502), never an error escaping the session
core, and a backend connection that stopped speaking HTTP is never used again."""

from __future__ import annotations

from support.http1_driver import World, backend_head, get, ok, parse_responses

LONG_ZEROS = b"0" * 5000  # int() refuses more than 4300 digits; llhttp takes leading zeros


def test_a_content_length_with_thousands_of_leading_zeros_is_its_value() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(
        b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: " + LONG_ZEROS + b"5\r\n\r\nhello"
    )
    d.connect()
    line, _, body = backend_head(d.received())
    assert line == "POST / HTTP/1.1"
    assert body == b"hello"
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: " + LONG_ZEROS + b"2\r\n\r\nok")
    relayed = d.take_client()  # the length as the backend wrote it: too long for int()
    assert relayed.startswith(b"HTTP/1.1 200 OK\r\n")
    assert relayed.endswith(b"\r\n\r\nok")
    assert d.conns[-1].pooled, "a complete response gives its connection back"


def test_a_pipelined_request_with_a_long_length_behind_an_answer_is_counted() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(
        get("/", "nowhere.test", "Connection: close")
        + b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: "
        + LONG_ZEROS
        + b"1\r\n\r\nx"
    )
    [response] = parse_responses(d.take_client())
    assert response.status == 404
    assert w.ctx.counters.pipelined_unanswered == 1


def test_blanks_after_host_and_expect_values_are_not_part_of_them() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(b"GET / HTTP/1.1\r\nHost: web.test \t\r\n\r\n")
    d.connect()
    assert backend_head(d.received())[0] == "GET / HTTP/1.1"
    d = w.session()
    d.send(
        b"PUT / HTTP/1.1\r\nHost: web.test\r\nExpect: 100-continue \r\nContent-Length: 2\r\n\r\n"
    )
    assert d.s.head is not None
    assert d.s.head.expect_continue


def test_one_empty_line_before_a_request_line_is_ignored() -> None:
    w = World()
    w.web()
    d = w.session()
    # The CRLF some clients send after a body, in the same read as the next request or alone.
    d.send(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2\r\n\r\nhi\r\n")
    d.connect()
    assert backend_head(d.received())[::2] == ("POST / HTTP/1.1", b"hi")
    d.reply(ok())
    d.send(get("/second"))
    d.connect()
    assert backend_head(d.received())[0] == "GET /second HTTP/1.1"
    d.reply(ok())
    d.send(b"\r\n" + get("/third"))
    d.connect()
    assert backend_head(d.received())[0] == "GET /third HTTP/1.1"
    d.reply(ok())
    assert [r.status for r in parse_responses(d.take_client())] == [200, 200, 200]
    # Two empty lines are not a request line.
    d = w.session()
    d.send(b"\r\n\r\n" + get())
    assert [r.status for r in parse_responses(d.take_client())] == [400]


def test_an_absolute_target_names_the_origin_and_the_host_sent_on() -> None:
    w = World()
    w.web()
    w.cluster("admin", [("a1", 9001)])
    w.frontend("admin.test", "admin")
    d = w.session()
    d.send(b"GET http://web.test/x HTTP/1.1\r\nHost: admin.test\r\n\r\n")
    d.connect()
    line, headers, _ = backend_head(d.received())
    assert d.conn is not None
    assert d.conn.backend_id == "b1", "routed by the target's authority"
    assert line == "GET http://web.test/x HTTP/1.1"
    assert headers["host"] == ["web.test"]
    assert "x-forwarded-host" not in headers
    d.reply(ok())
    # HTTP/1.0 without Host: the target's authority is sent as Host.
    d = w.session()
    d.send(b"GET http://web.test/y HTTP/1.0\r\n\r\n")
    d.connect()
    assert backend_head(d.received())[1]["host"] == ["web.test"]
    # Host agreeing with the target: the head goes as received.
    d = w.session()
    d.send(b"GET http://web.test/z HTTP/1.1\r\nHost: web.test\r\n\r\n")
    d.connect()
    assert backend_head(d.received())[1]["host"] == ["web.test"]


def test_a_host_rewrite_of_an_absolute_target_forwards_the_target_authority() -> None:
    w = World()
    w.cluster("web", [("b1", 8001)])
    w.frontend("web.test", "web", rewrite_host="internal.test")
    d = w.session()
    d.send(b"GET http://web.test/x HTTP/1.1\r\nHost: other.test\r\n\r\n")
    d.connect()
    headers = backend_head(d.received())[1]
    assert headers["host"] == ["internal.test"]
    assert headers["x-forwarded-host"] == ["web.test"]


def test_a_101_nobody_asked_for_is_a_502_and_its_connection_is_dropped() -> None:
    w = World(max_kept_backs=4)
    w.web()
    d = w.session()
    d.send(
        b"POST / HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    conn = d.connect()
    d.reply(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    [response] = parse_responses(d.take_client())
    assert response.status == 502
    assert conn.closed
    assert not conn.pooled
    assert d.kept is None


def test_a_status_below_100_is_a_502() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.reply(b"HTTP/1.1 000 Odd\r\nContent-Length: 0\r\n\r\n")
    [response] = parse_responses(d.take_client())
    assert response.status == 502
    assert conn.closed


def test_interim_responses_do_not_reach_http_1_0_clients() -> None:
    w = World()
    w.web()
    for version, expected in (("1.1", [103, 200]), ("1.0", [200])):
        d = w.session()
        d.send(get(version=version))
        d.connect()
        d.reply(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        d.reply(ok())
        assert [r.status for r in parse_responses(d.take_client())] == expected, version


def test_a_dial_result_after_the_client_left_changes_nothing() -> None:
    # The client's reset and the backend's connect completing in one batch of events, the
    # client's handled first: the late result leaked a count (connected) or reached a
    # request already let go (failed).
    for connected in (True, False):
        w = World()
        cluster = w.web()
        d = w.session()
        d.send(get())
        assert d.dialing
        d.reset()
        assert d.s.done
        assert not d.s.awaits_connect()
        if connected:
            d.s.back_connected(d.now, False)
        else:
            d.s.back_connect_failed(d.now)
        d.s.check_invariants()
        assert d.s.done
        assert cluster.active == 0
        assert not cluster.loads
        assert not d.take_client()
