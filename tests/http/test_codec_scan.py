"""The head scan (headers split from the raw head, the decisive ones found by one regex) says
exactly what llhttp's own header callbacks say, for any head llhttp accepts."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.worker.core.http.codec import (
    H_CONTENT_LENGTH,
    H_HOST,
    HeadError,
    parse_request_head,
    parse_response_head,
)

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~"
TOKEN = st.text(TOKEN_CHARS, min_size=1, max_size=12)
DECISIVE_NAMES = [
    "Host",
    "host",
    "HOST",
    "Content-Length",
    "content-length",
    "Transfer-Encoding",
    "Connection",
    "connection",
    "Expect",
    "Cookie",
    "X-Forwarded-For",
    "Forwarded",
    "X-Real-IP",
    "X-Request-Id",
    "Set-Cookie",
    "Strict-Transport-Security",
    "X-Host",
    "Hosts",
    "Content-Length-X",
]
NAMES = st.one_of(TOKEN, st.sampled_from(DECISIVE_NAMES))
VALUE = st.binary(max_size=20).map(
    lambda raw: bytes(b for b in raw if b in (9, 32) or 33 <= b <= 126 or b >= 128)
)
SPECIAL_VALUES = st.sampled_from(
    [b"0", b"12", b"chunked", b"gzip, chunked", b"close", b"keep-alive", b"100-continue",
     b"example.com", b" a ", b"\tb\t", b""]
)  # fmt: skip


class _Reference:
    """llhttp's own view of the headers, through its callbacks."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


def _reference(head: bytes, parser_type: type) -> list[tuple[bytes, bytes]] | None:
    reference = _Reference()
    parser = parser_type(reference)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return None
    return reference.headers


headers_strategy = st.lists(st.tuples(NAMES, st.one_of(VALUE, SPECIAL_VALUES)), max_size=8)


@settings(max_examples=3000, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT"]),
    target=st.sampled_from([b"/", b"/a?b=c", b"http://h.test/x", b"*"]),
    version=st.sampled_from([b"1.1", b"1.0"]),
    headers=headers_strategy,
)
def test_request_scan_matches_llhttp(
    method: bytes, target: bytes, version: bytes, headers: list[tuple[str, bytes]]
) -> None:
    head = method + b" " + target + b" HTTP/" + version + b"\r\n"
    head += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
    head += b"\r\n"
    expected = _reference(head, httptools.HttpRequestParser)
    try:
        parsed = parse_request_head(head)
    except HeadError:
        if expected is None:
            return
        lowered = [name.lower() for name, _ in expected]
        hosts = lowered.count(b"host")
        # Refused for what the proxy itself refuses.
        assert hosts > 1 or (hosts == 0 and version == b"1.1" and target[:1] in b"/*")
        return
    assert expected is not None
    assert parsed.headers == expected
    assert parsed.target == target
    last = {name.lower(): value for name, value in expected}
    assert bool(parsed.special & H_HOST) == (b"host" in last)
    assert bool(parsed.special & H_CONTENT_LENGTH) == (b"content-length" in last)
    if b"host" in last and target[:1] == b"/":
        # llhttp reports a value with the blanks after it, which are not part of it (RFC 9110
        # §5.5).
        assert parsed.authority == last[b"host"].rstrip(b" \t")


@settings(max_examples=3000, deadline=None)
@given(
    status=st.sampled_from([b"200 OK", b"204 No Content", b"404", b"301 Moved Permanently x"]),
    headers=headers_strategy,
)
def test_response_scan_matches_llhttp(status: bytes, headers: list[tuple[str, bytes]]) -> None:
    head = b"HTTP/1.1 " + status + b"\r\n"
    head += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
    head += b"\r\n"
    expected = _reference(head, httptools.HttpResponseParser)
    if expected is None:
        with pytest.raises(HeadError):
            parse_response_head(head, b"GET")
        return
    parsed = parse_response_head(head, b"GET")
    assert parsed.headers == expected
    assert parsed.reason == status[4:]
    last = {name.lower(): value for name, value in expected}
    if b"content-length" in last and parsed.status == 200:
        assert parsed.content_length == int(last[b"content-length"])
