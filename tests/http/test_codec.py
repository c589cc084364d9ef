"""Request and response heads, smuggling defences and chunked framing of the HTTP codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sozu.worker.core.http.codec import (
    ChunkedScanner,
    Framing,
    HeadError,
    ResponseHead,
    find_head_end,
    has_token,
    header_value,
    parse_request_head,
    parse_response_head,
    parse_response_head_known,
)


def _request(raw: bytes) -> object:
    end = find_head_end(raw, 16384)
    assert end > 0
    return parse_request_head(raw[:end])


def test_simple_get() -> None:
    raw = b"GET /a?b=1 HTTP/1.1\r\nHost: Example.com:8080\r\nX-A: 1\r\n\r\nnext"
    end = find_head_end(raw, 1024)
    assert raw[end:] == b"next"
    head = parse_request_head(raw[:end])
    assert head.method == b"GET"
    assert head.path == b"/a?b=1"
    assert head.authority == b"Example.com:8080"
    assert head.version == b"1.1"
    assert head.framing is Framing.NONE
    assert head.keep_alive
    assert not head.upgrade
    assert head.headers == [(b"Host", b"Example.com:8080"), (b"X-A", b"1")]
    assert head.length == end


def test_bodies() -> None:
    head = parse_request_head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
    assert (head.framing, head.content_length) == (Framing.LENGTH, 12)
    head = parse_request_head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert head.framing is Framing.CHUNKED
    head = parse_request_head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert head.framing is Framing.NONE


def test_http10_and_close() -> None:
    head = parse_request_head(b"GET / HTTP/1.0\r\n\r\n")
    assert head.authority is None
    assert not head.keep_alive
    head = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert not head.keep_alive


def test_absolute_target_gives_authority() -> None:
    head = parse_request_head(b"GET http://b.example:81/x?y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head.authority == b"b.example:81"
    assert head.path == b"/x?y"
    head = parse_request_head(b"GET http://b.example HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (head.authority, head.path) == (b"b.example", b"/")


def test_upgrade_and_expect() -> None:
    head = parse_request_head(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert head.upgrade
    head = parse_request_head(
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
    )
    assert head.expect_continue
    assert not head.upgrade


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX Y: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n",
        # llhttp takes these protocols too: not HTTP.
        b"GET / RTSP/1.0\r\nHost: a\r\n\r\n",
        b"DESCRIBE / RTSP/1.0\r\nHost: a\r\n\r\n",
        b"SOURCE / ICE/1.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/0.9\r\nHost: a\r\n\r\n",
        # llhttp skips CR and LF before a method: the target was cut at the wrong offset.
        b"\nGET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\n\nGET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n",
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
def test_smuggling_and_malformed_requests_are_refused(raw: bytes) -> None:
    with pytest.raises(HeadError) as caught:
        parse_request_head(raw)
    assert caught.value.status == 400


def test_bare_lf_never_makes_a_head() -> None:
    with pytest.raises(HeadError):
        parse_request_head(b"GET / HTTP/1.1\nHost: a\n\n")


def test_oversize_head() -> None:
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 100) == -1
    with pytest.raises(HeadError) as caught:
        find_head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * 200, 100)
    assert caught.value.status == 431


def test_response_framing() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    head = parse_response_head(ok, b"GET")
    assert (head.status, head.reason, head.framing, head.content_length) == (
        200,
        b"OK",
        Framing.LENGTH,
        5,
    )
    assert head.keep_alive
    assert parse_response_head(ok, b"HEAD").framing is Framing.NONE
    for status in (b"204 No Content", b"304 Not Modified", b"100 Continue", b"103 Early Hints"):
        raw = b"HTTP/1.1 " + status + b"\r\nContent-Length: 5\r\n\r\n"
        assert parse_response_head(raw, b"GET").framing is Framing.NONE
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert parse_response_head(chunked, b"GET").framing is Framing.CHUNKED
    close = parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n", b"GET")
    assert close.framing is Framing.CLOSE
    assert not close.keep_alive
    assert not parse_response_head(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"GET"
    ).keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"ICE/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_invalid_response_is_502(raw: bytes) -> None:
    with pytest.raises(HeadError) as caught:
        parse_response_head(raw, b"GET")
    assert caught.value.status == 502


def test_versions_and_targets_come_from_the_start_line() -> None:
    head = parse_request_head(b"GET /a?b  HTTP/1.0\r\nHost: h\r\n\r\n")
    assert (head.method, head.target, head.version, head.path) == (b"GET", b"/a?b", b"1.0", b"/a?b")
    assert not head.keep_alive
    head = parse_request_head(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (head.target, head.version, head.keep_alive) == (b"*", b"1.1", True)
    response = parse_response_head(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n", b"GET")
    assert (response.status, response.reason, response.version) == (404, b"Not Found", b"1.0")
    assert not response.keep_alive


def _scan_whole(body: bytes, pieces: list[int]) -> tuple[int, ChunkedScanner]:
    scanner = ChunkedScanner()
    consumed = 0
    position = 0
    for size in [*pieces, len(body)]:
        piece = body[position : position + size]
        used = scanner.feed(piece)
        scanner.check_invariants()
        consumed += used
        position += used
        if scanner.done or position >= len(body):
            break
        assert used == len(piece)
    return consumed, scanner


CHUNKED = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"


def test_chunked_end_found_with_following_bytes() -> None:
    consumed, scanner = _scan_whole(CHUNKED + b"GET / HTTP/1.1\r\n", [])
    assert scanner.done
    assert consumed == len(CHUNKED)


@given(st.lists(st.integers(min_value=1, max_value=9), max_size=20))
def test_chunked_any_split(pieces: list[int]) -> None:
    consumed, scanner = _scan_whole(CHUNKED + b"XYZ", pieces)
    assert scanner.done
    assert consumed == len(CHUNKED)


@pytest.mark.parametrize(
    "body",
    [
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"\r\n",
        b"fffffffffffffffff\r\n",
        b"0\r\n bad\r\n\r\n",
    ],
)
def test_invalid_chunks(body: bytes) -> None:
    scanner = ChunkedScanner()
    with pytest.raises(HeadError) as caught:
        scanner.feed(body)
    assert caught.value.status == 400
    assert not scanner.done


def test_header_helpers() -> None:
    headers = [(b"Connection", b"keep-alive, Upgrade"), (b"upgrade", b"websocket")]
    assert header_value(headers, b"upgrade") == b"websocket"
    assert header_value(headers, b"host") is None
    assert has_token(header_value(headers, b"connection"), b"upgrade")
    assert not has_token(None, b"close")


def test_known_response_heads_are_the_parse_and_kept_per_kind_of_request() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\n"
    for method in (b"GET", b"HEAD", b"GET", b"POST"):
        known = parse_response_head_known(raw, method)
        fresh = parse_response_head(raw, method)
        assert [getattr(known, name) for name in ResponseHead.__slots__ if name != "_headers"] == [
            getattr(fresh, name) for name in ResponseHead.__slots__ if name != "_headers"
        ]
        assert known.headers == fresh.headers
    get = parse_response_head_known(raw, b"GET")
    assert parse_response_head_known(raw, b"POST") is get  # kept: same framing
    head = parse_response_head_known(raw, b"HEAD")
    assert head is not get
    assert head.framing is Framing.NONE
    assert get.framing is Framing.LENGTH
    with pytest.raises(HeadError):
        parse_response_head_known(b"HTTP/9.9 200 OK\r\n\r\n", b"GET")
    with pytest.raises(HeadError):  # refusals are not kept
        parse_response_head_known(b"HTTP/9.9 200 OK\r\n\r\n", b"GET")
