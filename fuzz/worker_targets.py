"""Fuzz targets of the worker: HTTP/1 heads and chunked bodies, PROXY protocol v2 headers
and the HTTP router."""

from __future__ import annotations

import atheris
from support import fuzz_checks as checks

from fuzz.inputs import Target, pack, unpack
from sozu.command.types import PathRule, RequestHttpFrontend
from sozu.worker.core.proxy_protocol import build_v2

HEAD_LIMITS = (16384, 1, 16, 64, 256, 1024)
METHODS = (b"GET", b"HEAD", b"POST", b"CONNECT")
REQUESTS = (
    b"GET /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\nConnection: keep-alive\r\n\r\nnext",
    b"POST http://example.com/x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n"
    b"Expect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
)
RESPONSES = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
)
CHUNKED = (
    b"5\r\nhello\r\n0\r\n\r\n",
    b"a;ext=1\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nrest",
    b"ffffffffffffffff\r\n",
)


def _limit(parameter: int, payload: bytes, cuts: list[int]) -> int:
    """The head size limit the parameter's low bits choose. With the high bit set, it is
    within a few bytes of the head's end, with a cut there: where a head read in pieces could
    be judged otherwise than one read whole."""
    if parameter & 0x80:
        limit = max(1, payload.find(b"\r\n\r\n") + (parameter & 0x07))
        cuts.append(limit)
        return limit
    return HEAD_LIMITS[(parameter & 0x07) % len(HEAD_LIMITS)]


def http_request(data: bytes) -> None:
    parameter, cuts, payload = unpack(data)
    checks.check_request_head(payload, _limit(parameter, payload, cuts), cuts)


def http_response(data: bytes) -> None:
    parameter, cuts, payload = unpack(data)
    method = METHODS[(parameter >> 3) % len(METHODS)]
    checks.check_response_head(payload, method, _limit(parameter, payload, cuts), cuts)


def chunked(data: bytes) -> None:
    parameter, cuts, payload = unpack(data)
    checks.check_chunked(payload, 502 if parameter & 1 else 400, cuts)


def proxy_protocol(data: bytes) -> None:
    _, cuts, payload = unpack(data)
    checks.check_proxy_protocol(payload, cuts)


def _proxy_seeds() -> list[bytes]:
    headers = [
        build_v2(("192.0.2.1", 1234), ("198.51.100.2", 443)),
        build_v2(("2001:db8::1", 1), ("::1", 80), stream=False),
        build_v2(("192.0.2.1", 1), ("::1", 80)),
    ]
    return [pack(header + b"GET / HTTP/1.1\r\n", 0, 5) for header in headers]


HOSTNAMES = (
    "example.com",
    "*.example.com",
    "api.example.com",
    "*",
    "/[a-z]+/.example.com",
    "/api(?P<n>[0-9]+)/.example.com",
    "xn--nxasmq6b.com",
    "ουτοπία.δπθ.gr",
)
PATHS = ("", "/", "/api", "/api/", "^/v[0-9]+", "/a.*b", "/(x|y)/[0-9]{1,4}", "(a+)+$")
POSITIONS = ("PRE", "TREE", "POST")
KINDS = ("PREFIX", "REGEX", "EQUALS")


def _frontend(provider: atheris.FuzzedDataProvider) -> RequestHttpFrontend | None:
    if provider.ConsumeBool():
        hostname = provider.PickValueInList(list(HOSTNAMES))
    else:
        hostname = provider.ConsumeUnicodeNoSurrogates(24)
    kind = provider.PickValueInList(list(KINDS))
    path = provider.PickValueInList(list(PATHS))
    if provider.ConsumeBool():
        path = provider.ConsumeUnicodeNoSurrogates(16)
    try:
        return RequestHttpFrontend(
            address="127.0.0.1:80",
            hostname=hostname,
            cluster_id=provider.PickValueInList(["app", "api", None]),
            path=PathRule(kind=kind, value=path),
            method=provider.PickValueInList([None, "GET", "POST"]),
            position=provider.PickValueInList(list(POSITIONS)),
        )
    except ValueError:
        return None  # refused by the record itself, as decoding would


def router(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    frontends = [_frontend(provider) for _ in range(provider.ConsumeIntInRange(0, 8))]
    removed = provider.ConsumeIntListInRange(provider.ConsumeIntInRange(0, 3), 0, 7)
    lookups = []
    for _ in range(provider.ConsumeIntInRange(1, 4)):
        host = provider.ConsumeUnicodeNoSurrogates(64)
        path = provider.ConsumeUnicodeNoSurrogates(64)
        method = provider.ConsumeUnicodeNoSurrogates(8)
        lookups.append((host, path, method))
    checks.check_router([f for f in frontends if f is not None], removed, lookups)


TARGETS: tuple[Target, ...] = (
    Target(
        "http_request",
        http_request,
        lambda: [pack(r, p, 3) for r in REQUESTS for p in (0, 2, 5, 0x83)],
        "find_head_end and parse_request_head, split",
    ),
    Target(
        "http_response",
        http_response,
        lambda: [pack(r, p, 3) for r in RESPONSES for p in (0, 0x08, 0x10, 0x84)],
        "find_head_end and parse_response_head, split",
    ),
    Target(
        "chunked",
        chunked,
        lambda: [pack(body, 0, 6) for body in CHUNKED],
        "ChunkedScanner, split",
    ),
    Target("proxy_protocol", proxy_protocol, _proxy_seeds, "parse_v2, split, headers rebuilt"),
    Target(
        "router",
        router,
        lambda: [bytes(range(256))],
        "Router add/remove/lookup, parse_authority and split_hostname_pattern",
    ),
)
