"""h2 -> HTTP/1.1 translation: the head built from a request stream, and each smuggling
check of data-plane.md refusing a block (the stream is then reset with PROTOCOL_ERROR)."""

from __future__ import annotations

import pytest

from sozu.worker.core.h2.translation import Refused, translate

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/p")]


def test_a_get_becomes_an_http11_head_with_host() -> None:
    out = translate([*BASE, (b"accept", b"*/*"), (b"te", b"trailers")], end_stream=True)
    assert out.head == b"GET /p HTTP/1.1\r\nhost: a.test\r\naccept: */*\r\nte: trailers\r\n\r\n"
    assert out.method == b"GET"
    assert not out.chunked


def test_cookie_crumbs_are_joined() -> None:
    out = translate([*BASE, (b"cookie", b"a=1"), (b"cookie", b"b=2")], end_stream=True)
    assert b"\r\ncookie: a=1; b=2\r\n" in out.head


def test_a_body_without_length_is_chunked_and_with_length_keeps_it() -> None:
    post = [(b":method", b"POST"), *BASE[1:]]
    assert translate(post, end_stream=False).chunked
    assert b"transfer-encoding: chunked" in translate(post, end_stream=False).head
    sized = translate([*post, (b"content-length", b"4")], end_stream=False)
    assert not sized.chunked
    assert sized.content_length == 4
    assert b"content-length: 4\r\n" in sized.head


@pytest.mark.parametrize(
    "extra",
    [
        [(b"x-a", b"1\r\nx-b: 2")],  # CR/LF in a value
        [(b"x-a", b"1\x00")],  # NUL in a value
        [(b"x-a\r\nx-b", b"1")],  # CR/LF in a name
        [(b"X-Upper", b"1")],  # uppercase name
        [(b"connection", b"keep-alive")],
        [(b"keep-alive", b"timeout=5")],
        [(b"proxy-connection", b"keep-alive")],
        [(b"transfer-encoding", b"chunked")],
        [(b"upgrade", b"websocket")],
        [(b"te", b"gzip")],
        [(b"content-length", b"1x")],
        [(b"content-length", b"1"), (b"content-length", b"2")],
        [(b":path", b"/again")],  # repeated pseudo-header
        [(b":protocol", b"websocket")],  # unknown pseudo-header
        [(b"x-a", b" padded")],
    ],
)
def test_smuggling_checks_refuse(extra: list[tuple[bytes, bytes]]) -> None:
    headers = [*BASE, *extra]
    if extra[0][0].startswith(b":"):
        headers = [*BASE[:-1], *extra, BASE[-1]]
    with pytest.raises(Refused):
        translate(headers, end_stream=True)


@pytest.mark.parametrize(
    "headers",
    [
        [(b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/")],  # no :method
        [(b":method", b"GET"), (b":authority", b"a.test"), (b":path", b"/")],  # no :scheme
        [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test")],  # no :path
        [*BASE[:3], (b":path", b"p")],  # path not absolute
        [*BASE[:3], (b":path", b"/a b")],  # a blank in the path
        [(b":method", b"CONNECT"), *BASE[1:]],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")],  # no authority
        [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"u@a.test"), BASE[3]],
        [*BASE[:2], (b"x-a", b"1"), *BASE[2:]],  # pseudo-header after a regular one
    ],
)
def test_invalid_pseudo_headers_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(Refused):
        translate(headers, end_stream=True)


def test_host_is_the_fallback_when_authority_is_absent() -> None:
    headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"host", b"h.test")]
    assert b"\r\nhost: h.test\r\n" in translate(headers, end_stream=True).head
