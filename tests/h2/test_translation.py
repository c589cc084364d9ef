"""h2 -> HTTP/1.1 translation: the head built from a request stream, and each smuggling
check (worker/src/sozu/worker/core/h2/LIFECYCLE.md, "Defences") refusing a
block (the stream is then reset with PROTOCOL_ERROR)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.worker.core.h2 import translation
from sozu.worker.core.h2.translation import Refused, translate, translate_known
from sozu.worker.core.http.codec import HeadError, parse_request_head

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


_NAMES = st.sampled_from(
    [
        b"accept",
        b"x-forwarded-for",
        b"forwarded",
        b"x-real-ip",
        b"x-request-id",
        b"expect",
        b"cookie",
        b"user-agent",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"te",
        b"host",
        b"content-length",
        b"strict-transport-security",
        b"x-custom",
    ]
)
_VALUES = st.sampled_from(
    [b"1", b"100-continue", b"trailers", b"a b", b"\xc3\xa9t\xc3\xa9", b"x\ty"]
)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(
        [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE", b"M-SEARCH", b"QUERY", b"FOO"]
    ),
    path=st.sampled_from([b"/", b"/a?b=c", b"/%20x", b"*", b"/~u/"]),
    fields=st.lists(st.tuples(_NAMES, _VALUES), max_size=8),
    end_stream=st.booleans(),
)
def test_the_head_given_as_parsed_is_what_the_parser_makes_of_its_bytes(
    method: bytes, path: bytes, fields: list[tuple[bytes, bytes]], end_stream: bool
) -> None:
    """The stream core takes `request` without parsing `head`: the two must agree field by
    field with the HTTP/1.1 parser's reading of the bytes."""
    headers = [(b":method", method), (b":scheme", b"https"), (b":authority", b"a.test:8443")]
    headers.append((b":path", path))
    try:
        out = translate([*headers, *fields], end_stream=end_stream)
    except Refused:
        return
    parsed = parse_request_head(out.head)
    given_ = out.request
    for name in (
        "method",
        "target",
        "version",
        "length",
        "framing",
        "content_length",
        "keep_alive",
        "upgrade",
        "authority",
        "path",
        "expect_continue",
        "raw",
        "special",
    ):
        assert getattr(given_, name) == getattr(parsed, name), name


@pytest.mark.parametrize(
    ("name", "value"),
    [(b"x a", b"1"), (b"x(a)", b"1"), (b"", b"1"), (b"x-a", b"1\x7f"), (b"x-a", b"\x01")],
)
def test_what_the_http1_parser_would_refuse_is_refused(name: bytes, value: bytes) -> None:
    with pytest.raises(Refused):
        translate([*BASE, (name, value)], end_stream=True)


@pytest.mark.parametrize("method", [b"FOO", b"G", b"GETX", b"PRI", b"CONNECT"])
def test_methods_the_http1_parser_does_not_know_are_refused(method: bytes) -> None:
    headers = [(b":method", method), *BASE[1:]]
    with pytest.raises(Refused):
        translate(headers, end_stream=True)
    with pytest.raises(HeadError):
        parse_request_head(method + b" /p HTTP/1.1\r\nhost: a.test\r\n\r\n")


def test_a_content_length_with_thousands_of_leading_zeros_is_its_value() -> None:
    # int() refuses more than 4300 digits; the HTTP/1.1 parser takes leading zeros.
    length = b"0" * 5000 + b"4"
    out = translate([*BASE, (b"content-length", length)], end_stream=False)
    assert out.request.content_length == 4
    assert parse_request_head(out.head).content_length == 4
    for value in (b"0" * 5000 + b"1" * 20, b"", b"+0"):
        with pytest.raises(Refused):
            translate([*BASE, (b"content-length", value)], end_stream=False)


def test_a_content_length_past_64_bits_is_refused() -> None:
    with pytest.raises(Refused):
        translate([*BASE, (b"content-length", b"18446744073709551616")], end_stream=False)
    with pytest.raises(HeadError):
        parse_request_head(
            b"POST /p HTTP/1.1\r\nhost: a\r\ncontent-length: 18446744073709551616\r\n\r\n"
        )


@pytest.mark.parametrize(
    "pseudo",
    [
        (b":path", b"/a b"),
        (b":path", b"/\xc3\xa9"),
        (b":path", b"a"),
        (b":method", b"get"),
        (b":method", b"G T"),
        (b":authority", b"a b"),
        (b":authority", b"u@a.test"),
    ],
)
def test_invalid_pseudo_header_values_are_refused(pseudo: tuple[bytes, bytes]) -> None:
    headers = [pseudo if name == pseudo[0] else (name, value) for name, value in BASE]
    with pytest.raises(Refused):
        translate(headers, end_stream=True)


def test_known_translations_are_kept_bounded_and_never_refusals() -> None:
    translation._known.clear()
    block = [*BASE, (b"accept", b"*/*")]
    first = translate_known(block, True)
    assert translate_known(list(block), True) is first  # the same block, from the kept one
    assert translate_known(block, False) is not first  # end_stream is part of the key
    assert first.head == translate(block, True).head
    with pytest.raises(Refused):
        translate_known([*BASE, (b"connection", b"close")], True)
    with pytest.raises(Refused):
        translate_known([*BASE, (b"connection", b"close")], True)  # refused each time
    large = [*BASE, (b"x-big", b"v" * translation.KNOWN_HEAD_MAX)]
    assert translate_known(large, True) is not translate_known(large, True)  # too big to keep
    for n in range(translation.KNOWN_ENTRIES * 2):
        translate_known([*BASE, (b"x-n", str(n).encode())], True)
    assert 0 < len(translation._known) <= translation.KNOWN_ENTRIES
