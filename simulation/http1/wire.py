"""Bytes on the simulated wires: the requests clients send, the responses backends send, and
the harness's own incremental parsers of both directions.

The parsers are written from RFC 9112 independently of the core's codec, so that they do not
share its mistakes. Every request and every response a simulated peer sends carries its tag
(`/t/<tag>` in the target, `X-Sim-Tag` in response heads), which is how the harness matches
what arrives with what was sent.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

HOST: Final = "web.test"
NOWHERE: Final = "nowhere.test"
TAG_HEADER: Final = "x-sim-tag"

# What a simulated client means a request to be.
PROXY: Final = "proxy"  # routed to the cluster
NO_ROUTE: Final = "no-route"  # no frontend: 404
UPGRADE: Final = "upgrade"  # asks for a websocket tunnel
BAD_HEAD: Final = "bad-head"  # 400
BIG_HEAD: Final = "big-head"  # 431
BAD_CHUNK: Final = "bad-chunk"  # a malformed chunked body: 400, or cut once responding
INVALID_KINDS: Final = frozenset({BAD_HEAD, BIG_HEAD, BAD_CHUNK})

_BAD_HEADS: Final = (
    "GET /t/{tag} HTTP/1.1\r\nHost: web.test\r\nNo colon in this line\r\n\r\n",
    "GET /t/{tag} HTTP/1.1\r\nX-Only: no host\r\n\r\n",
    "GET /t/{tag} HTTP/1.1\r\nHost: web.test\r\nHost: web.test\r\n\r\n",
    "POST /t/{tag} HTTP/1.1\r\nHost: web.test\r\nContent-Length: 12x\r\n\r\n",
    "GET /t/{tag} HTTP/2.5\r\nHost: web.test\r\n\r\n",
    "GET t/{tag} HTTP/1.1\r\nHost: web.test\r\n\r\n",
)
# Where a chunk-size line is due: not hex, data longer than its size, a negative size.
_BAD_CHUNKS: Final = (b"zz\r\n", b"5\r\nabcdefghij\r\n", b"-3\r\nabc\r\n", b"\r\n")


class ParseError(Exception):
    """Bytes a well-behaved proxy would never have sent this peer."""


@dataclass(frozen=True, eq=False)
class Request:
    """One request as its client sends it."""

    tag: str
    kind: str
    method: str
    version: str  # "1.1" or "1.0"
    close: bool  # says close (or HTTP/1.0 without keep-alive)
    expect: bool  # Expect: 100-continue, the body held back until a 100 or a pause
    framing: str  # "none", "length" or "chunked"
    head: bytes
    body: bytes  # raw, chunk framing included

    @property
    def wire(self) -> bytes:
        return self.head + self.body

    @property
    def has_body(self) -> bool:
        return self.framing != "none"


def chunked(
    rng: random.Random, body: bytes, *, extensions: bool = True, junk: bytes = b""
) -> bytes:
    """`body` in random-sized chunks, sometimes with extensions and trailers; `junk` goes
    where one of the chunk-size lines is due (a malformed body)."""
    out = bytearray()
    position = 0
    sizes = []
    while position < len(body):
        size = min(len(body) - position, rng.randint(1, 64) if rng.random() < 0.7 else 4096)
        sizes.append(size)
        position += size
    broken_at = rng.randint(0, len(sizes)) if junk else -1
    position = 0
    for index, size in enumerate(sizes):
        if index == broken_at:
            out += junk
        ext = b";e=1" if extensions and rng.random() < 0.1 else b""
        out += b"%x%s\r\n" % (size, ext) + body[position : position + size] + b"\r\n"
        position += size
    if broken_at == len(sizes):
        out += junk
    trailer = b"X-Trailer: 1\r\n" if extensions and rng.random() < 0.1 else b""
    return bytes(out) + b"0\r\n" + trailer + b"\r\n"


def build_request(rng: random.Random, tag: str, kind: str, *, max_head: int, big: int) -> Request:
    """A request of `kind`; `big` bounds a large body (to exercise back pressure)."""
    if kind == BAD_HEAD:
        head = rng.choice(_BAD_HEADS).format(tag=tag).encode()
        return Request(tag, kind, "GET", "1.1", True, False, "none", head, b"")
    if kind == BIG_HEAD:
        pad = "a" * (max_head + rng.randint(0, 200))
        head = f"GET /t/{tag} HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: {pad}\r\n\r\n".encode()
        return Request(tag, kind, "GET", "1.1", True, False, "none", head, b"")
    if kind == UPGRADE:
        head = (
            f"GET /t/{tag} HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\n\r\n"
        ).encode()
        return Request(tag, kind, "GET", "1.1", False, False, "none", head, b"")
    host = NOWHERE if kind == NO_ROUTE else HOST
    version = "1.0" if rng.random() < 0.06 else "1.1"
    method = rng.choice(("GET", "GET", "GET", "POST", "POST", "PUT", "HEAD", "DELETE"))
    if kind == BAD_CHUNK:
        method, version = "POST", "1.1"
    lines = [f"{method} {_target(rng, tag, host)} HTTP/{version}", f"Host: {host}"]
    close = False
    if version == "1.0":
        if rng.random() < 0.5:
            lines.append("Connection: keep-alive")
        else:
            close = True
    elif rng.random() < 0.05:
        lines.append("Connection: close")
        close = True
    for i in range(rng.choice((0, 0, 1, 2, 3))):
        lines.append(f"X-Sim-{i}: {rng.randrange(1 << 30):x}")
    if rng.random() < 0.05:
        lines.append("X-Forwarded-For: 192.0.2.1")
    raw_body = b""
    framing = "none"
    if method in ("POST", "PUT") or kind == BAD_CHUNK:
        size = rng.randint(1, big) if rng.random() < 0.12 else rng.randint(0, 300)
        raw_body = rng.randbytes(size)
        if kind == BAD_CHUNK or (version == "1.1" and rng.random() < 0.35):
            framing = "chunked"
        elif size:
            framing = "length"
    if framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        junk = rng.choice(_BAD_CHUNKS) if kind == BAD_CHUNK else b""
        body = chunked(rng, raw_body, junk=junk)
    elif framing == "length":
        lines.append(f"Content-Length: {len(raw_body)}")
        body = raw_body
    else:
        if rng.random() < 0.1:
            lines.append("Content-Length: 0")
        body = b""
    expect = framing != "none" and version == "1.1" and rng.random() < 0.25
    if expect:
        lines.append("Expect: 100-continue")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return Request(tag, kind, method, version, close, expect, framing, head, body)


def _target(rng: random.Random, tag: str, host: str) -> str:
    query = f"?q={rng.randrange(100)}" if rng.random() < 0.2 else ""
    if rng.random() < 0.05:
        return f"http://{host}/t/{tag}{query}"
    return f"/t/{tag}{query}"


# -- the harness's parsers


def _headers(lines: list[bytes]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ParseError(f"malformed header line {line[:60]!r}")
        headers.setdefault(name.decode("latin-1").lower(), []).append(
            value.strip().decode("latin-1")
        )
    return headers


def says_close(headers: dict[str, list[str]]) -> bool:
    return any(
        token.strip().lower() == "close"
        for v in headers.get("connection", ())
        for token in v.split(",")
    )


class ChunkScan:
    """Finds the end of a chunked body in raw bytes (strict: what the simulated peers send)."""

    __slots__ = ("done", "line", "remaining", "state")

    def __init__(self) -> None:
        self.state = "size"  # size, data, data-crlf, trailer
        self.line = bytearray()
        self.remaining = 0
        self.done = False

    def feed(self, data: bytes | bytearray) -> int:
        """How many bytes of `data` belong to the body (all of them until it ends)."""
        i = 0
        n = len(data)
        while i < n and not self.done:
            if self.state == "data":
                take = min(self.remaining, n - i)
                i += take
                self.remaining -= take
                if not self.remaining:
                    self.state = "data-crlf"
                continue
            self.line.append(data[i])
            i += 1
            if not self.line.endswith(b"\r\n"):
                if len(self.line) > 200:
                    raise ParseError("chunk line too long")
                continue
            line = bytes(self.line[:-2])
            self.line.clear()
            if self.state == "data-crlf":
                if line:
                    raise ParseError("chunk data longer than its size")
                self.state = "size"
            elif self.state == "size":
                digits = line.split(b";", 1)[0]
                if not digits or not re.fullmatch(rb"[0-9a-fA-F]{1,16}", digits):
                    raise ParseError(f"invalid chunk size {line[:20]!r}")
                self.remaining = int(digits, 16)
                self.state = "data" if self.remaining else "trailer"
            elif not line:
                self.done = True
        return i


_STATUS: Final = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: [^\r\n]*)?")
_REQUEST: Final = re.compile(rb"([A-Z]+) (\S+) HTTP/(1\.[01])")


class Message:
    """A response (client side) or request (backend side) being read."""

    __slots__ = (
        "body",
        "chunks",
        "complete",
        "end",
        "framing",
        "head",
        "headers",
        "interim",
        "method",
        "remaining",
        "start",
        "status",
        "tag",
        "version",
    )

    def __init__(self, head: bytes, headers: dict[str, list[str]], start: int) -> None:
        self.head = head
        self.headers = headers
        self.start = start  # stream offset of its first byte
        self.end = -1  # stream offset after its last byte, once complete
        self.status = 0
        self.method = ""
        self.version = ""
        self.tag = ""
        self.interim = False
        self.framing = "none"  # none, length, chunked, close
        self.remaining = 0
        self.chunks: ChunkScan | None = None
        self.body = bytearray()
        self.complete = False

    @property
    def says_close(self) -> bool:
        return says_close(self.headers)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[-1] if values else None


def _frame(m: Message) -> None:
    te = m.header("transfer-encoding")
    if te is not None and te.lower().endswith("chunked"):
        m.framing = "chunked"
        m.chunks = ChunkScan()
        return
    cl = m.headers.get("content-length")
    if cl is not None:
        if len(set(cl)) != 1 or not cl[0].isdigit():
            raise ParseError(f"invalid Content-Length {cl}")
        m.remaining = int(cl[0])
        m.framing = "length" if m.remaining else "none"
        return
    m.framing = "close" if m.status else "none"


class Reader:
    """Incremental reader of one direction of a connection. Returns ("head", m) when a head
    is complete, ("done", m) when a message is, ("raw", bytes) in a tunnel."""

    def __init__(self, responses: bool) -> None:
        self.responses = responses
        self.buf = bytearray()
        self.offset = 0  # stream offset of buf[0]
        self.current: Message | None = None
        self.tunnel = False
        self.messages = 0

    def feed(
        self, data: bytes, method_of_next: Callable[[], str] | None = None
    ) -> list[tuple[str, Message | bytes]]:
        events: list[tuple[str, Message | bytes]] = []
        if self.tunnel:
            self.offset += len(data)
            events.append(("raw", data))
            return events
        self.buf += data
        while self.buf and not self.tunnel:
            m = self.current
            if m is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > 1 << 16:
                        raise ParseError("a head longer than 64 KiB")
                    break
                m = self._head(bytes(self.buf[: end + 4]), method_of_next)
                self._consume(end + 4)
                events.append(("head", m))
                if m.framing == "none":
                    self._done(m, events)
                    if self.responses and m.status == 101:
                        self.tunnel = True
                        if self.buf:
                            rest = bytes(self.buf)
                            self._consume(len(rest))
                            events.append(("raw", rest))
                    continue
                self.current = m
                continue
            if m.framing == "length":
                take = min(m.remaining, len(self.buf))
                m.remaining -= take
            elif m.framing == "chunked":
                assert m.chunks is not None
                take = m.chunks.feed(self.buf)
            else:
                take = len(self.buf)
            m.body += self.buf[:take]
            self._consume(take)
            if (m.framing == "length" and not m.remaining) or (
                m.chunks is not None and m.chunks.done
            ):
                self._done(m, events)
        return events

    def end_of_stream(self) -> Message | None:
        """The peer closed: a close-delimited message completes; returns it."""
        m = self.current
        if m is not None and m.framing == "close" and not self.buf:
            m.complete = True
            m.end = self.offset
            self.current = None
            return m
        return None

    def _consume(self, n: int) -> None:
        del self.buf[:n]
        self.offset += n

    def _done(self, m: Message, events: list[tuple[str, Message | bytes]]) -> None:
        m.complete = True
        m.end = self.offset
        self.current = None
        self.messages += 1
        events.append(("done", m))

    def _head(self, raw: bytes, method_of_next: Callable[[], str] | None) -> Message:
        lines = raw[:-4].split(b"\r\n")
        m = Message(raw, _headers(lines[1:]), self.offset)
        tags = m.headers.get(TAG_HEADER)
        if self.responses:
            match = _STATUS.fullmatch(lines[0])
            if match is None:
                raise ParseError(f"invalid status line {lines[0][:60]!r}")
            m.status = int(match.group(1))
            m.tag = tags[-1] if tags else ""
            m.method = method_of_next() if method_of_next is not None else "GET"
            if 100 <= m.status < 200:
                m.interim = m.status != 101
                return m
            if m.method == "HEAD" or m.status in (204, 304):
                return m
            _frame(m)
            return m
        match = _REQUEST.fullmatch(lines[0])
        if match is None:
            raise ParseError(f"invalid request line {lines[0][:60]!r}")
        m.method = match.group(1).decode()
        target = match.group(2).decode("latin-1")
        m.version = match.group(3).decode()
        at = target.find("/t/")
        m.tag = target[at + 3 :].split("?", 1)[0] if at >= 0 else ""
        _frame(m)
        return m
