"""Bounded fuzzing of what the worker reads from the network: HTTP/1 heads and chunked
bodies, PROXY protocol v2 headers, and the router's lookups (properties in
support/fuzz_checks.py)."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import fuzz_checks as checks
from support.hostile_strategies import REQUEST_VALUES, hostile_text

from sozu.command.types import RequestHttpFrontend
from sozu.worker.core.proxy_protocol import SIGNATURE, build_v2

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cut_points = st.lists(st.integers(0, 5000), max_size=6)
head_limits = st.sampled_from([16384, 1, 30, 64, 200])
line_ends = st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b""])
tokens = st.sampled_from(
    [b"GET", b"HEAD", b"POST", b"CONNECT", b"OPTIONS", b"PRI", b"get", b"G T", b"", b"\x00"]
)
targets = st.sampled_from(
    [
        b"/",
        b"*",
        b"/a?b",
        b"http://example.com",
        b"http://a:80/x",
        b"example.com:443",
        b"//x",
        b"/\x00",
        b"http:///",
        b"://",
        b"",
        b"/ /",
    ]
)
versions = st.sampled_from(
    [
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"HTTP/0.9",
        b"HTTP/1.1 ",
        b"HTTP/1",
        b"",
        b"http/1.1",
        # Other protocols llhttp parses.
        b"RTSP/1.0",
        b"ICE/1.0",
    ]
)
header_names = st.sampled_from(
    [
        b"Host",
        b"host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Connection",
        b"Upgrade",
        b"Expect",
        b"X-A",
        b"",
        b" Host",
        b"Host ",
        b"A\x00",
        b"Trailer",
    ]
)
header_values = st.sampled_from(
    [
        b"example.com",
        b"",
        b"0",
        b"5",
        b"-1",
        b"18446744073709551616",
        b"0" * 4400 + b"5",  # more digits than int() converts
        b"1, 2",
        b" 3 ",
        b"+4",
        b"chunked",
        b"gzip, chunked",
        b"chunked, gzip",
        b"identity",
        b"close",
        b"keep-alive",
        b"Upgrade",
        b"websocket",
        b"100-continue",
        b"\x00",
        b"a\r\n b",
        b"\xff\xfe",
    ]
)
headers = st.lists(
    st.tuples(header_names, st.sampled_from([b": ", b":", b" : ", b""]), header_values, line_ends),
    max_size=5,
).map(lambda items: b"".join(b"".join(item) for item in items))


@st.composite
def heads(draw: st.DrawFn, first_line: st.SearchStrategy[bytes]) -> bytes:
    """A message head built from plausible and broken pieces, then some body bytes."""
    return b"".join(
        (
            draw(first_line),
            draw(line_ends),
            draw(headers),
            draw(line_ends),
            draw(line_ends),
            draw(st.binary(max_size=20)),
        )
    )


request_lines = st.builds(
    lambda method, target, version: b" ".join((method, target, version)), tokens, targets, versions
)
status_lines = st.builds(
    lambda version, status, reason: b" ".join((version, status, reason)),
    versions,
    st.sampled_from([b"200", b"204", b"304", b"101", b"100", b"999", b"0", b"20", b"abc", b""]),
    st.sampled_from([b"OK", b"", b"\x00", b"Not Found"]),
)


@st.composite
def limits_near_the_end(draw: st.DrawFn, data: bytes) -> tuple[int, list[int]]:
    """A head size limit within a few bytes of where the head ends, and a cut near it too:
    where a head that arrives in pieces could be judged otherwise than one read whole."""
    end = data.find(b"\r\n\r\n") + 4
    limit = max(1, end + draw(st.integers(-5, 5)))
    return limit, [limit + draw(st.integers(-2, 2)), *draw(cut_points)]


@st.composite
def limited(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> tuple[bytes, int, list[int]]:
    """Bytes, a head size limit, and cut points."""
    drawn = draw(data)
    if draw(st.booleans()):
        limit, cuts = draw(limits_near_the_end(drawn))
    else:
        limit, cuts = draw(head_limits), draw(cut_points)
    return drawn, limit, cuts


@FUZZ
@given(limited(st.binary(max_size=300) | heads(request_lines)))
def test_request_heads(case: tuple[bytes, int, list[int]]) -> None:
    checks.check_request_head(*case)


@FUZZ
@given(limited(st.binary(max_size=300) | heads(status_lines)), st.sampled_from([b"GET", b"HEAD"]))
def test_response_heads(case: tuple[bytes, int, list[int]], method: bytes) -> None:
    data, limit, cuts = case
    checks.check_response_head(data, method, limit, cuts)


chunk_lines = st.one_of(
    st.builds(
        lambda size, ext, end, data: size + ext + end + data + b"\r\n",
        st.sampled_from([b"0", b"5", b"a", b"A", b"ffffffffffffffff", b"1" * 17, b"", b"-1", b"x"])
        | st.integers(0, 40).map(lambda n: f"{n:x}".encode()),
        st.sampled_from([b"", b";a=b", b" ", b"\t;x", b";" + b"x" * 5000]),
        line_ends,
        st.binary(max_size=40),
    ),
    st.sampled_from([b"Trailer: x\r\n", b" folded\r\n", b"nocolon\r\n", b"\r\n"]),
    st.binary(max_size=10),
)


@FUZZ
@given(st.lists(chunk_lines, max_size=6).map(b"".join), st.sampled_from([400, 502]), cut_points)
def test_chunked_bodies(data: bytes, status: int, cuts: list[int]) -> None:
    checks.check_chunked(data, status, cuts)


addresses = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
)
proxy_headers = st.one_of(
    st.builds(build_v2, addresses, addresses, stream=st.booleans()),
    st.builds(
        lambda command, family, length, body: SIGNATURE + bytes((command, family)) + length + body,
        st.sampled_from([0x20, 0x21, 0x22, 0x11, 0x2F]),
        st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x41]),
        st.integers(0, 300).map(lambda n: n.to_bytes(2, "big")),
        st.binary(max_size=250),
    ),
)


@settings(FUZZ, max_examples=500)
@given(
    st.one_of(
        st.binary(max_size=80),
        st.tuples(proxy_headers, st.binary(max_size=20)).map(b"".join),
        st.builds(lambda h, n: h[:n], proxy_headers, st.integers(0, 60)),
    ),
    cut_points,
)
def test_proxy_protocol(data: bytes, cuts: list[int]) -> None:
    checks.check_proxy_protocol(data, cuts)


def _frontend(data: dict[str, object]) -> RequestHttpFrontend | None:
    try:
        return msgspec.convert(data, RequestHttpFrontend)
    except msgspec.ValidationError:
        return None


frontends = st.one_of(
    REQUEST_VALUES.struct(RequestHttpFrontend, hostile=False),
    REQUEST_VALUES.struct(RequestHttpFrontend, hostile=True),
).map(_frontend)
authorities = st.one_of(
    st.sampled_from(
        [
            "example.com",
            "EXAMPLE.com.",
            "api.example.com:8080",
            "[::1]:443",
            "[::1",
            "a..b",
            "xn--nxasmq6b.com",
            "ουτοπία.δπθ.gr",
            "a.example.com:0",
            "a:99999",
            "[1.2.3.4]",
            "",
        ]
    ),
    hostile_text,
    st.text(alphabet="ab.-:[]*/0123456789é", max_size=20),
)
paths = st.one_of(st.sampled_from(["/", "/api", "/api/v1", "/v2", ""]), hostile_text)


@settings(FUZZ, max_examples=150)
@given(
    st.lists(frontends, max_size=8),
    st.lists(st.integers(0, 7), max_size=3),
    st.lists(st.tuples(authorities, paths, st.sampled_from(["GET", "", "x y"])), min_size=1),
)
def test_router(
    drawn: list[RequestHttpFrontend | None],
    removed: list[int],
    lookups: list[tuple[str, str, str]],
) -> None:
    checks.check_router([f for f in drawn if f is not None], removed, lookups)
