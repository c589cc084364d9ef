"""The session core's own answers: waiting for a head (idle, 408, 400, 431), routing (400, 421,
404), policy (redirects, 401), cluster (503, 429), custom templates that keep the connection,
HSTS; the access log line of each."""

from __future__ import annotations

import base64
import hashlib

from support.http1_driver import PEER, World, get, ok, parse_responses

from sozu.command.types import HstsConfig
from sozu.worker.core.http1.actions import CLOSE_FRONT, LINGER_FRONT


def test_an_idle_connection_closes_silently_after_front_timeout() -> None:
    w = World(front_timeout=5)
    w.web()
    d = w.session()
    d.advance(4.9)
    assert not d.s.done
    d.advance(0.2)
    assert d.s.done
    assert d.front_close == CLOSE_FRONT
    assert d.client == b""
    assert w.ctx.counters.statuses == {}


def test_a_partial_head_gets_408_after_request_timeout_then_a_lingering_close() -> None:
    w = World(request_timeout=2, front_timeout=60, access_log=True)
    w.web()
    d = w.session()
    d.send(b"GET / HTTP/1.1\r\nHost: web.te")
    d.advance(1.9)
    assert not d.s.done
    d.advance(0.2)
    (response,) = parse_responses(d.take_client())
    assert response.status == 408
    assert response.header("connection") == ["close"]
    assert d.front_close == LINGER_FRONT
    assert d.s.done
    assert d.conns == []
    assert w.ctx.counters.answers == {408: 1}
    (line,) = w.lines
    assert " 408 | request head not received in time" in line
    assert f"{PEER[0]}:{PEER[1]}" in line


def test_the_request_timeout_runs_from_the_first_byte_not_from_the_last() -> None:
    w = World(request_timeout=2)
    w.web()
    d = w.session()
    for piece in (b"GET / HT", b"TP/1.1\r\n", b"Host: web"):
        d.send(piece)
        d.advance(0.9)
    assert d.s.done
    assert parse_responses(d.take_client())[0].status == 408


def test_a_partial_head_then_end_of_stream_closes_without_an_answer() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(b"GET / HTTP/1.1\r\n")
    d.eof()
    assert d.s.done
    assert d.front_close == CLOSE_FRONT
    assert d.client == b""


def test_an_invalid_head_is_answered_400_and_closed() -> None:
    w = World(access_log=True)
    w.web()
    d = w.session()
    d.send(b"GET / HTTP/1.1\r\nHost: web.test\r\nBad Header: x\r\n\r\nGET /next HTTP/1.1\r\n")
    (response,) = parse_responses(d.take_client())
    assert response.status == 400
    assert d.front_close == LINGER_FRONT
    assert d.s.done
    assert d.connects == []
    counters = w.ctx.counters
    assert counters.parse_errors == 1
    assert counters.requests == 0
    # The bytes after a head that could not be read are not requests that can be counted.
    assert counters.pipelined_unanswered == 0
    assert len(w.lines) == 1


def test_a_head_larger_than_the_limit_is_answered_431() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(b"GET / HTTP/1.1\r\nHost: web.test\r\nX-Big: " + b"a" * 16000)
    assert not d.s.done
    d.send(b"a" * 1000)
    assert parse_responses(d.take_client())[0].status == 431
    assert d.s.done


def test_a_bad_authority_is_400_an_unknown_host_404() -> None:
    w = World()
    w.web()
    d = w.session()
    d.send(get("/", "bad host!"))
    assert parse_responses(d.take_client())[0].status == 400
    d = w.session()
    d.send(get("/", "web.test:70000"))
    assert parse_responses(d.take_client())[0].status == 400
    d = w.session()
    d.send(get("/", "nowhere.test"))
    (response,) = parse_responses(d.take_client())
    assert response.status == 404
    assert d.front_close == LINGER_FRONT
    counters = w.ctx.counters
    assert counters.requests == 3
    assert counters.answers == {400: 2, 404: 1}
    assert counters.statuses == {400: 2, 404: 1}


def test_strict_sni_refuses_an_authority_the_certificate_does_not_cover() -> None:
    w = World(https=True, strict_sni_binding=True)
    w.web()
    w.cluster("other", [("o1", 9001)])
    w.frontend("other.test", "other")
    d = w.session(served_names=("web.test",), sni="web.test")
    d.send(get("/", "other.test"))
    response = parse_responses(d.take_client())[0]
    assert response.status == 421
    assert w.ctx.counters.sni_mismatches == 1
    d = w.session(served_names=("web.test",), sni="web.test")
    d.send(get("/", "web.test"))
    assert d.connects == [("b1", True, False)]
    # The default certificate answered an unknown SNI: that name itself is allowed.
    d = w.session(served_names=("default.test",), sni="other.test", default_cert=True)
    d.send(get("/", "other.test"))
    assert d.connects == [("o1", True, False)]


def test_redirects_answer_without_touching_a_backend() -> None:
    w = World()
    w.cluster("web", [("b1", 8001)])
    w.frontend("moved.test", "web", redirect="PERMANENT", redirect_scheme="USE_HTTPS")
    w.frontend("found.test", "web", redirect="FOUND")
    w.frontend("perm.test", "web", redirect="PERMANENT_REDIRECT", rewrite_port=8443)
    w.cluster("secure", [("s1", 8002)], https_redirect=True)
    w.frontend("secure.test", "secure")
    cases = [
        ("moved.test", 301, "https://moved.test/a?b"),
        ("found.test", 302, "http://found.test/a?b"),
        ("perm.test", 308, "http://perm.test:8443/a?b"),
        ("secure.test", 301, "https://secure.test/a?b"),
    ]
    for host, status, location in cases:
        d = w.session()
        d.send(get("/a?b", host))
        (response,) = parse_responses(d.take_client())
        assert response.status == status, host
        assert response.header("location") == [location]
        assert d.connects == []


def test_a_frontend_without_cluster_and_a_failed_basic_auth_answer_401() -> None:
    w = World()
    w.frontend("denied.test", None)
    digest = hashlib.sha256(b"secret").hexdigest()
    w.cluster(
        "auth",
        [("a1", 8001)],
        authorized_hashes=(f"alice:{digest}",),
        www_authenticate='Basic realm="inside"',
    )
    w.frontend("auth.test", "auth", required_auth=True)
    d = w.session()
    d.send(get("/", "denied.test"))
    assert parse_responses(d.take_client())[0].status == 401
    d = w.session()
    d.send(get("/", "auth.test", "Authorization: Basic " + base64.b64encode(b"alice:no").decode()))
    (response,) = parse_responses(d.take_client())
    assert response.status == 401
    assert response.header("www-authenticate") == ['Basic realm="inside"']
    d = w.session()
    good = base64.b64encode(b"alice:secret").decode()
    d.send(get("/", "auth.test", "Authorization: Basic " + good))
    assert d.connects == [("a1", True, False)]


def test_a_frontend_whose_cluster_is_unknown_or_empty_answers_503() -> None:
    w = World()
    w.frontend("ghost.test", "ghost")
    w.cluster("empty", [])
    w.frontend("empty.test", "empty")
    d = w.session()
    d.send(get("/", "ghost.test"))
    (response,) = parse_responses(d.take_client())
    assert response.status == 503
    assert b"no cluster" in response.body
    d = w.session()
    d.send(get("/", "empty.test"))
    (response,) = parse_responses(d.take_client())
    assert response.status == 503
    assert b"no backend available" in response.body
    assert w.ctx.counters.no_backend == 1


def test_per_ip_limit_answers_429_with_retry_after_and_frees_the_slot_at_close() -> None:
    w = World()
    w.cluster("web", [("b1", 8001)], max_connections_per_ip=1, retry_after=7)
    w.frontend("web.test", "web")
    first = w.session()
    first.send(get())
    first.connect()
    second = w.session()
    second.send(get())
    (response,) = parse_responses(second.take_client())
    assert response.status == 429
    assert response.header("retry-after") == ["7"]
    assert w.ctx.counters.rejected_per_ip == 1
    assert w.shared.per_ip.held("web", PEER[0]) == 1
    first.reply(ok())
    assert w.shared.per_ip.held("web", PEER[0]) == 1, "held until the connection ends"
    first.eof()
    assert first.s.done
    assert w.shared.per_ip.held("web", PEER[0]) == 0
    third = w.session()
    third.send(get())
    assert third.connects == [("b1", True, False)]


def test_a_custom_answer_without_close_keeps_the_connection() -> None:
    template = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    w = World(answers={"404": template})
    w.web()
    d = w.session()
    d.send(get("/", "nowhere.test") + get("/", "web.test"))
    (response,) = parse_responses(d.take_client())
    assert response.status == 404
    assert response.header("connection") == []
    assert d.client_open()
    # The pipelined request behind the answer is served.
    assert d.connects == [("b1", True, False)]
    d.connect()
    d.reply(ok())
    assert parse_responses(d.take_client())[0].status == 200


def test_an_answer_that_cannot_keep_the_connection_says_close() -> None:
    template = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    w = World(answers={"404": template})
    w.web()
    # A request body left unread: the connection cannot go on, and the answer says so.
    d = w.session()
    d.send(b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 10\r\n\r\n")
    (response,) = parse_responses(d.take_client())
    assert response.status == 404
    assert response.header("connection") == ["close"]
    assert d.front_close == LINGER_FRONT


def test_https_answers_carry_the_listener_hsts() -> None:
    w = World(https=True, strict_sni_binding=False, hsts=HstsConfig(enabled=True, max_age=60))
    w.web()
    d = w.session(served_names=("web.test",))
    d.send(get("/", "nowhere.test"))
    (response,) = parse_responses(d.take_client())
    assert response.status == 404
    assert response.header("strict-transport-security") == ["max-age=60"]
    d = w.session(served_names=("web.test",))
    d.send(get())
    d.connect()
    d.reply(ok())
    assert parse_responses(d.take_client())[0].header("strict-transport-security") == ["max-age=60"]


def test_answers_are_logged_with_their_route_and_message() -> None:
    w = World(access_log=True)
    w.cluster("empty", [])
    w.frontend("empty.test", "empty", tags={"team": "a"})
    d = w.session()
    d.send(get("/x?y", "empty.test", "User-Agent: probe 1"))
    (line,) = w.lines
    assert "ERROR-ACCESS" in line
    assert "[team=a, user-agent=probe_1]" in line
    assert " empty.test GET /x?y 503 | no backend available" in line
    assert "[" + d.s.session_id + " " in line
