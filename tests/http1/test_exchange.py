"""The session core forwarding requests: edited heads, keep-alive on both sides, request and
response bodies (length, chunked, close-delimited, none), interim responses, early answers,
backend errors (502, 504), pooled connections found stale, connect retries, pipelining."""

from __future__ import annotations

import pytest
from support.http1_driver import World, backend_head, get, ok, parse_responses

from sozu.command.metrics import Histogram
from sozu.command.types import Header
from sozu.worker.core.http1.actions import CLOSE_FRONT, LINGER_FRONT

POST_HEAD = b"POST /up HTTP/1.1\r\nHost: web.test\r\nContent-Length: 10\r\n\r\n"
CHUNKED_HEAD = b"POST /up HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_request_is_forwarded_with_edited_headers_and_answered() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get("/a?b=1", "web.test", "X-Custom: kept", "X-Forwarded-For: 10.9.9.9"))
    assert d.connects == [("b1", True, False)]
    d.connect()
    line, headers, rest = backend_head(d.received())
    assert line == "GET /a?b=1 HTTP/1.1"
    assert rest == b""
    assert headers["x-custom"] == ["kept"]
    assert headers["x-forwarded-for"] == ["10.9.9.9, 10.0.0.7"]
    assert headers["forwarded"] == ['proto=http;for="10.0.0.7:40123";by=127.0.0.1']
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-port"] == ["8080"]
    (request_id,) = headers["sozu-id"]
    assert headers["x-request-id"] == [request_id]
    d.reply(ok(b"hello", "X-Backend: b1"))
    (response,) = parse_responses(d.take_client())
    assert (response.status, response.body) == (200, b"hello")
    assert response.header("sozu-id") == [request_id]
    assert response.header("connection") == []
    assert d.client_open()
    counters = w.ctx.counters
    assert counters.requests == 1
    assert counters.statuses == {200: 1}
    assert counters.cluster_requests == {("web", "http/1.1"): 1}
    assert counters.bytes_out == len(response.head) + 5


def test_keep_alive_reuses_the_client_and_the_pooled_backend_connection() -> None:
    w = World()
    cluster = w.web()
    d = w.session()
    for index in range(4):
        d.send(get(f"/{index}"))
        conn = d.connect()
        assert backend_head(d.received())[0] == f"GET /{index} HTTP/1.1"
        d.reply(ok(str(index).encode()))
        assert conn.pooled, "released to the pool after a complete exchange"
        assert cluster.loads == {}
    assert len(d.conns) == 1
    assert [r.body for r in parse_responses(d.take_client())] == [b"0", b"1", b"2", b"3"]
    assert d.client_open()


@pytest.mark.parametrize(
    "extra",
    [
        ("Connection: close",),
        ("Connection: keep-alive, close",),
        ("Connection: close", "connection: close, te"),
    ],
    ids=["close", "token", "two-lines"],
)
def test_a_request_that_says_close_gets_a_response_that_says_close(extra: tuple[str]) -> None:
    # The client's close is about its own connection: the backend is not told close, and
    # its connection goes to the pool.
    w = World()
    w.web()
    d = w.session()
    d.send(get("/", "web.test", *extra) + get("/never"))
    conn = d.connect()
    _, headers, _ = backend_head(d.received())
    assert not any("close" in value.lower() for value in headers.get("connection", []))
    assert headers.get("connection", []) in ([], ["keep-alive"], ["te"])
    d.reply(ok())
    (response,) = parse_responses(d.take_client())
    assert response.header("connection") == ["close"]
    assert d.front_close == LINGER_FRONT, "a request sent after the close: lingering"
    assert conn.pooled, "the backend connection outlives the client's"
    assert not conn.closed
    assert w.ctx.counters.pipelined_unanswered == 1


def test_http10_without_keep_alive_is_closed_and_with_it_kept() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get("/", version="1.0"))
    conn = d.connect()
    assert backend_head(d.received())[0] == "GET / HTTP/1.0"
    d.reply(ok())
    # The client asked for the close and sent nothing after: nothing to linger for.
    assert d.front_close == CLOSE_FRONT
    assert conn.closed
    d = w.session()
    d.send(get("/", "web.test", "Connection: keep-alive", version="1.0"))
    d.connect()
    d.reply(ok())
    assert d.client_open()


def test_a_backend_that_says_close_is_not_pooled_and_the_client_connection_stays() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.reply(ok(b"x", "Connection: close"))
    (response,) = parse_responses(d.take_client())
    assert response.header("connection") == [], "hop-by-hop: not relayed"
    assert conn.closed
    assert d.client_open(), "the client connection stays: only the backend closes"
    d.send(get())
    assert d.connect() is not conn


@pytest.mark.parametrize("edited", [False, True], ids=["as-received", "edited"])
@pytest.mark.parametrize("value", ["close", "keep-alive, close"])
def test_a_backend_close_is_not_relayed_to_a_client_connection_that_stays(
    edited: bool, value: str
) -> None:
    """Regression (simulation seed 0x0): the backend's `Connection: close` reached the client,
    whose connection then stayed open and served the request pipelined behind, which a client
    told close takes for unanswered (RFC 9112 §9.6)."""
    w = World()
    w.cluster("web", [("b1", 8001)])
    edits = (Header(position="RESPONSE", key="X-Edited", val="1"),) if edited else ()
    w.frontend("web.test", "web", headers=edits)
    d = w.session()
    d.send(get("/1") + get("/2"))
    first = d.connect()
    d.reply(ok(b"x", f"Connection: {value}"))
    second = d.connect()
    assert first.closed
    assert second is not first
    d.reply(ok(b"y"))
    responses = parse_responses(d.take_client())
    assert [r.body for r in responses] == [b"x", b"y"]
    assert [r.header("connection") for r in responses] == [[], []]
    assert [r.header("x-edited") for r in responses] == ([["1"], ["1"]] if edited else [[], []])
    assert d.client_open()
    assert w.ctx.counters.pipelined_unanswered == 0


def test_a_backend_close_while_the_client_connection_closes_is_said_once() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get("/", "web.test", "Connection: close"))
    d.connect()
    d.reply(ok(b"x", "Connection: close"))
    (response,) = parse_responses(d.take_client())
    assert response.header("connection") == ["close"]
    assert d.front_close == CLOSE_FRONT, "the client asked for the close: no lingering"


def test_a_length_body_is_relayed_byte_exact_even_before_the_backend_is_connected() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(POST_HEAD + b"0123")
    assert d.connects == [("b1", True, True)], "a body cannot be replayed: verify the pool"
    d.send(b"45")
    d.connect()
    d.send(b"6789" + get("/next"))
    _, headers, body = backend_head(d.received())
    assert headers["content-length"] == ["10"]
    assert body == b"0123456789"
    d.reply(ok())
    # The pipelined request is served once the first response is complete.
    d.connect()
    assert backend_head(d.received())[0] == "GET /next HTTP/1.1"
    d.reply(ok(b"2"))
    assert [r.body for r in parse_responses(d.take_client())] == [b"ok", b"2"]


def test_a_chunked_body_with_trailers_is_relayed_raw() -> None:
    w = World()
    w.web()
    d = w.session()
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    d.send(CHUNKED_HEAD)
    d.connect()
    for index in range(0, len(body), 7):
        d.send(body[index : index + 7])
    assert backend_head(d.received())[2] == body
    assert d.s.up_done
    d.reply(ok())
    assert parse_responses(d.take_client())[0].status == 200
    assert d.client_open()


def test_a_malformed_chunk_is_400_when_nothing_of_the_response_went_out() -> None:
    w = World()
    cluster = w.web()
    d = w.session()
    d.send(CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\n" + get("/smuggled"))
    conn = d.connect()
    (response,) = parse_responses(d.take_client())
    assert response.status == 400
    assert d.front_close == LINGER_FRONT
    assert conn.closed
    assert cluster.loads == {}
    counters = w.ctx.counters
    assert counters.parse_errors == 1
    assert counters.statuses == {400: 1}, "counted once"
    assert counters.pipelined_unanswered == 0, "bytes after a broken body are not requests"


def test_a_malformed_chunk_after_the_response_started_ends_both_connections() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(CHUNKED_HEAD + b"5\r\nhello\r\n")
    conn = d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    d.send(b"zz\r\n")
    assert d.front_close == CLOSE_FRONT
    assert conn.closed
    assert d.s.done
    assert d.take_client().endswith(b"01234")


@pytest.mark.parametrize("split", [1, 5, 1000])
def test_response_bodies_by_length_and_chunked_are_relayed_in_pieces(split: int) -> None:
    w = World()
    w.web()
    d = w.session()
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Sum: 1\r\n\r\n"
    )
    for response in (ok(b"x" * 50), chunked):
        d.send(get())
        d.connect()
        for index in range(0, len(response), split):
            d.reply(response[index : index + split])
    first, second = parse_responses(d.take_client())
    assert first.body == b"x" * 50
    assert second.body == b"abcdefg"
    assert len(d.conns) == 1, "both exchanges complete: the connection is reused"


def test_a_close_delimited_body_ends_at_the_backend_eof_and_closes_the_client() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\n\r\npart one ")
    d.reply(b"part two")
    assert d.client_open()
    d.back_eof()
    (response,) = parse_responses(d.take_client())
    assert response.header("connection") == ["close"]
    assert response.body == b"part one part two"
    assert d.front_close == LINGER_FRONT
    assert conn.closed
    assert w.ctx.counters.statuses == {200: 1}


def test_a_reset_never_completes_a_body() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\n\r\npartial")
    d.back_reset()
    assert d.front_close == CLOSE_FRONT, "a truncated response: no lingering"
    d = w.session()
    d.send(get())
    d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    d.back_eof()
    assert d.front_close == CLOSE_FRONT


def test_head_204_and_304_responses_have_no_body() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(b"HEAD /big HTTP/1.1\r\nHost: web.test\r\n\r\n")
    d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    for status in (204, 304):
        d.send(get())
        d.connect()
        d.reply(f"HTTP/1.1 {status} X\r\nContent-Length: 7\r\n\r\n".encode())
    responses = parse_responses(d.take_client(), frozenset({0}))
    assert [r.status for r in responses] == [200, 204, 304]
    assert len(d.conns) == 1
    assert d.client_open()


def test_interim_responses_are_relayed_before_the_final_one() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(POST_HEAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
    d.connect()
    d.reply(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert d.take_client() == b"HTTP/1.1 100 Continue\r\n\r\n"
    d.send(b"0123456789")
    assert backend_head(d.received())[2] == b"0123456789"
    d.reply(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\n")
    d.reply(b"Content-Length: 0\r\n\r\n")
    early, created = parse_responses(d.take_client())
    assert (early.status, early.header("link")) == (103, ["</s.css>"])
    assert created.status == 201
    assert w.ctx.counters.statuses == {201: 1}, "only final responses are counted"


def test_a_backend_answering_before_the_whole_body_closes_both_connections() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(POST_HEAD + b"01")
    conn = d.connect()
    d.reply(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
    (response,) = parse_responses(d.take_client())
    assert response.status == 413
    assert response.header("connection") == ["close"]
    assert d.front_close == LINGER_FRONT
    assert conn.closed


def test_bytes_past_the_response_make_the_backend_unusable_not_the_client() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.reply(ok(b"12") + b"garbage")
    assert parse_responses(d.take_client())[0].body == b"12"
    assert conn.closed
    assert d.client_open(), "the client got a complete response that promised keep-alive"
    d.send(get())
    assert d.connect() is not conn


@pytest.mark.parametrize(
    "answer",
    [b"NOT HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", b"HTTP/1.1 20"],
    ids=["garbage", "bad-length", "partial"],
)
def test_an_invalid_or_cut_response_is_502(answer: bytes) -> None:
    w = World()
    cluster = w.web()
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.reply(answer)
    if not d.s.done:
        d.back_eof()
    (response,) = parse_responses(d.take_client())
    assert response.status == 502
    assert conn.closed
    assert cluster.loads == {}
    assert w.ctx.counters.backend_parse_errors == 1
    assert w.ctx.counters.statuses == {502: 1}


def test_a_fresh_connection_closed_before_answering_is_502() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    d.connect()
    d.back_eof()
    assert parse_responses(d.take_client())[0].status == 502
    assert w.ctx.counters.stale_connections == 0


def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get("/1"))
    first = d.connect()
    d.reply(ok())
    d.send(get("/2"))
    assert d.connect() is first
    d.back_eof()
    assert first.closed
    assert d.connects[-1] == ("b1", False, False), "the retry dials a fresh connection"
    second = d.connect()
    assert second is not first
    assert backend_head(d.received())[0] == "GET /2 HTTP/1.1"
    d.reply(ok(b"2"))
    assert [r.body for r in parse_responses(d.take_client())] == [b"ok", b"2"]
    counters = w.ctx.counters
    assert counters.stale_connections == 1
    assert counters.cluster_requests == {("web", "http/1.1"): 3}


def test_a_refused_request_is_sent_once_more_even_from_a_new_connection() -> None:
    """What an HTTP/2 backend refused was never processed: a request without a body goes
    again on a fresh connection even when its first one was new; refused twice, 502."""
    w = World()
    w.web()
    d = w.session()
    d.send(get("/1"))
    first = d.connect(pooled=False)
    d.back_refused()
    assert first.closed
    assert d.connects[-1] == ("b1", False, False), "the retry asks for a fresh connection"
    d.connect()
    assert backend_head(d.received())[0] == "GET /1 HTTP/1.1"
    d.back_refused()
    assert parse_responses(d.take_client())[0].status == 502
    assert w.ctx.counters.stale_connections == 1
    body = w.session()
    body.send(POST_HEAD + b"0123456789")
    body.connect(pooled=False)
    body.back_refused()
    assert parse_responses(body.take_client())[0].status == 502, "a body is never replayed"


def test_a_stale_pooled_connection_under_a_body_is_not_retried() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get("/1"))
    d.connect()
    d.reply(ok())
    d.send(POST_HEAD + b"0123456789")
    d.connect()
    d.back_reset()
    assert parse_responses(d.take_client())[1].status == 502
    assert len(d.connects) == 2


def test_connect_failures_retry_other_backends_then_answer_503() -> None:
    w = World()
    cluster = w.web(("b1", 8001), ("b2", 8002))
    d = w.session()
    d.send(get())
    d.refuse()
    assert [c[0] for c in d.connects] == ["b1", "b2"]
    d.connect()
    d.reply(ok())
    assert parse_responses(d.take_client())[0].status == 200
    counters = w.ctx.counters
    assert counters.retries == 1
    assert counters.backend_errors == 1
    assert cluster.connect_errors == {"b1": 1}
    # b1 backs off: the next requests go to b2 until they fail too.
    d.send(get())
    d.refuse()
    assert parse_responses(d.take_client())[0].status == 503
    assert counters.no_backend == 1
    assert d.front_close == LINGER_FRONT


def test_three_connect_failures_to_one_backend_answer_503() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    d.refuse()
    assert parse_responses(d.take_client())[0].status == 503
    assert len(d.connects) == 1, "the only backend is backing off: nothing else to try"


def test_connect_timeouts_abandon_the_dial_and_end_in_504() -> None:
    w = World(connect_timeout=3)
    w.web(("b1", 8001), ("b2", 8002), ("b3", 8003))
    d = w.session()
    d.send(get())
    d.advance(2.9)
    assert len(d.connects) == 1
    d.advance(0.2)
    assert len(d.connects) == 2
    d.advance(3.1)
    d.advance(3.1)
    (response,) = parse_responses(d.take_client())
    assert response.status == 504
    assert len(d.connects) == 3
    assert w.ctx.counters.backend_errors == 3
    assert w.ctx.counters.retries == 2


def test_a_backend_that_never_answers_gets_504_after_back_timeout() -> None:
    w = World(back_timeout=30)
    cluster = w.web()
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.advance(29.9)
    assert d.client == b""
    d.advance(0.2)
    assert parse_responses(d.take_client())[0].status == 504
    assert conn.closed
    assert cluster.loads == {}


def test_a_response_body_stalling_for_back_timeout_is_cut() -> None:
    w = World(back_timeout=30)
    w.web()
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    d.advance(29)
    d.reply(b"6")
    d.advance(29)
    assert not d.s.done
    d.advance(2)
    assert d.s.done
    assert d.front_close == CLOSE_FRONT
    assert conn.closed
    assert w.ctx.counters.statuses == {200: 1}


def test_pipelined_requests_are_answered_one_after_the_other_in_order() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(b"".join(get(f"/p{i}") for i in range(3)))
    for index in range(3):
        assert len(d.connects) == index + 1, "one exchange at a time"
        d.connect()
        assert backend_head(d.received())[0] == f"GET /p{index} HTTP/1.1"
        d.reply(ok(f"r{index}".encode()))
    assert [r.body for r in parse_responses(d.take_client())] == [b"r0", b"r1", b"r2"]


def test_a_client_that_half_closes_after_its_request_still_gets_the_response() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get())
    d.eof()
    d.connect()
    d.reply(ok())
    assert parse_responses(d.take_client())[0].status == 200
    assert d.front_close == CLOSE_FRONT
    assert d.s.done


def test_a_client_that_leaves_mid_body_closes_the_backend_too() -> None:
    w = World()
    cluster = w.web()
    d = w.session()
    d.send(POST_HEAD + b"01")
    conn = d.connect()
    d.eof()
    assert conn.closed
    assert d.s.done
    assert d.client == b""
    assert cluster.loads == {}
    d = w.session()
    d.send(get())
    conn = d.connect()
    d.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n1")
    d.reset()
    assert conn.closed
    assert d.s.done
    assert w.ctx.counters.statuses == {200: 1}


def test_a_removed_backend_gets_no_pooled_connection() -> None:
    w = World()
    cluster = w.web(("b1", 8001), ("b2", 8002))
    d = w.session()
    d.send(get())
    conn = d.connect()
    cluster.selector.remove_backend("b1")
    d.reply(ok())
    assert conn.closed
    assert d.client_open()


def test_response_times_are_observed_per_cluster_and_the_access_log_has_the_backend() -> None:
    w = World(access_log=True)
    w.web()
    histograms: dict[str, Histogram] = {}

    def histogram(name: str, cluster_id: str) -> Histogram:
        return histograms.setdefault(f"{name}/{cluster_id}", Histogram())

    w.shared.histogram = histogram
    d = w.session()
    d.send(get("/t"))
    d.advance(0.5)
    d.connect()
    d.advance(0.25)
    d.reply(ok())
    assert {name: h.sum for name, h in histograms.items()} == {
        "sozu_http_response_time_seconds/web": 0.75,
        "sozu_http_backend_response_time_seconds/web": 0.25,
    }
    (line,) = w.lines
    assert "INFO-ACCESS" in line
    assert " 10.1.0.1:8001 750ms/500ms/250ms/-/- " in line
    assert " web b1] " in line
    assert line.endswith(" web.test GET /t 200")
