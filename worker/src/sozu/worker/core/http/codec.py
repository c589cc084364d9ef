"""HTTP/1.1 message heads and body framing, sans-io.

httptools (llhttp) validates heads: request and status lines, header names and values,
Content-Length and Transfer-Encoding. It is fed exactly one head, located here by its blank
line, so the offset where a body starts is always known and bodies can be relayed as raw bytes
(no re-encoding). What llhttp accepts but a careful proxy must refuse is checked here: a
request line without a version (HTTP/0.9), versions other than 1.0 and 1.1, several Host
headers, a missing Host on HTTP/1.1, CONNECT. Response bodies follow RFC 9112 §6.3: none for
HEAD, 1xx, 204 and 304, whatever the headers say. Chunked bodies are scanned by
`ChunkedScanner`, which finds where the message ends and refuses malformed chunk sizes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import httptools

CRLF2 = b"\r\n\r\n"
# llhttp refuses a Content-Length above 2^64; chunk sizes are bounded the same way here.
MAX_CHUNK_SIZE_DIGITS = 16


class HeadError(Exception):
    """A head that must be refused: `status` is the answer to give (400, 413, 431 or 502)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Framing(enum.Enum):
    """How the end of a body is found."""

    NONE = 0
    LENGTH = 1
    CHUNKED = 2
    CLOSE = 3  # responses only: the body ends when the backend closes


Headers = list[tuple[bytes, bytes]]

# Headers a proxy must look at or edit, by lowercase name: `special` bits of a parsed head.
# A head with none of the bits a decision needs can be forwarded as received, with the
# proxy's own headers added before its blank line (the fast path of header_edits).
H_HOST = 1
H_CONTENT_LENGTH = 2
H_TRANSFER_ENCODING = 4
H_CONNECTION = 8
H_EXPECT = 16
H_COOKIE = 32
H_X_FORWARDED_FOR = 64
H_FORWARDED = 128
H_X_REAL_IP = 256
H_X_FORWARDED_PROTO = 512
H_X_FORWARDED_PORT = 1024
H_X_REQUEST_ID = 2048
H_STRICT_TRANSPORT_SECURITY = 4096
H_SET_COOKIE = 8192
_SPECIAL: dict[bytes, int] = {
    b"host": H_HOST,
    b"content-length": H_CONTENT_LENGTH,
    b"transfer-encoding": H_TRANSFER_ENCODING,
    b"connection": H_CONNECTION,
    b"expect": H_EXPECT,
    b"cookie": H_COOKIE,
    b"x-forwarded-for": H_X_FORWARDED_FOR,
    b"forwarded": H_FORWARDED,
    b"x-real-ip": H_X_REAL_IP,
    b"x-forwarded-proto": H_X_FORWARDED_PROTO,
    b"x-forwarded-port": H_X_FORWARDED_PORT,
    b"x-request-id": H_X_REQUEST_ID,
    b"strict-transport-security": H_STRICT_TRANSPORT_SECURITY,
    b"set-cookie": H_SET_COOKIE,
}


@dataclass(slots=True)
class RequestHead:
    """A parsed request head. `length` counts its bytes, blank line included; `raw` holds
    them; `special` has the H_* bits of the headers it carries."""

    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    length: int
    framing: Framing
    content_length: int
    keep_alive: bool
    upgrade: bool
    authority: bytes | None
    path: bytes
    expect_continue: bool
    raw: bytes = b""
    special: int = 0


@dataclass(slots=True)
class ResponseHead:
    """A parsed response head (`raw` and `special` as in RequestHead)."""

    status: int
    reason: bytes
    version: bytes
    headers: Headers
    length: int
    framing: Framing
    content_length: int
    keep_alive: bool
    raw: bytes = b""
    special: int = 0


class _Collector:
    """The callbacks llhttp calls while it parses one head: every header is kept, and the
    ones a proxy decides on are noted as they pass (one pass over the headers)."""

    __slots__ = (
        "chunked",
        "connection",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "hosts",
        "reason",
        "special",
        "url",
    )

    def __init__(self) -> None:
        self.headers: Headers = []
        self.url = b""
        self.reason = b""
        self.special = 0
        self.host: bytes | None = None
        self.hosts = 0
        self.content_length = 0
        self.chunked = False
        self.connection: bytes | None = None
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        bit = _SPECIAL.get(name.lower())
        if bit:
            self.special |= bit
            if bit == H_HOST:
                self.hosts += 1
                self.host = value
            elif bit == H_CONTENT_LENGTH:
                # llhttp refuses several or invalid lengths, and a length with chunked.
                self.content_length = int(value)
            elif bit == H_TRANSFER_ENCODING:
                # llhttp already refused any coding list that does not end in chunked.
                self.chunked = value.rstrip().lower().endswith(b"chunked")
            elif bit == H_CONNECTION:
                self.connection = value
            elif bit == H_EXPECT:
                self.expect_continue = value.lower() == b"100-continue"


def find_head_end(buf: bytes | bytearray, limit: int) -> int:
    """The length of the head at the start of `buf` (blank line included), or -1 if incomplete.

    HeadError(431) once `limit` bytes hold no complete head.
    """
    # The blank line must end within `limit` bytes: searching further would accept a head
    # that arrived whole and refuse the same head had its last bytes arrived later.
    end = buf.find(CRLF2, 0, limit)
    if end >= 0:
        return end + 4
    if len(buf) >= limit:
        raise HeadError(431, f"head larger than {limit} bytes")
    return -1


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a complete request head (as delimited by `find_head_end`); HeadError(400) if bad."""
    collector = _Collector()
    parser = httptools.HttpRequestParser(collector)
    upgrade = False
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        upgrade = True
    except httptools.HttpParserError as error:
        raise HeadError(400, f"invalid request: {error}") from None
    version = parser.get_http_version()
    if version not in ("1.1", "1.0"):
        raise HeadError(400, f"unsupported HTTP version {version}")
    method = parser.get_method()
    if method == b"CONNECT":
        raise HeadError(400, "CONNECT is not proxied")
    if collector.hosts > 1:
        raise HeadError(400, "several Host headers")
    target = collector.url
    authority, path = _split_target(target)
    if authority is None:
        if collector.host is None and version == "1.1":
            raise HeadError(400, "no Host header")
        authority = collector.host
    chunked = collector.chunked
    content_length = 0 if chunked else collector.content_length
    if chunked:
        framing = Framing.CHUNKED
    elif content_length:
        framing = Framing.LENGTH
    else:
        framing = Framing.NONE
    return RequestHead(
        method=method,
        target=target,
        version=version.encode(),
        headers=collector.headers,
        length=len(head),
        framing=framing,
        content_length=content_length,
        keep_alive=_keep_alive(version, collector.connection),
        upgrade=upgrade and method == b"GET",
        authority=authority,
        path=path,
        expect_continue=collector.expect_continue,
        raw=head,
        special=collector.special,
    )


def _keep_alive(version: str, connection: bytes | None) -> bool:
    if version == "1.1":
        return not has_token(connection, b"close")
    return has_token(connection, b"keep-alive")


def _split_target(target: bytes) -> tuple[bytes | None, bytes]:
    """(authority of an absolute target or None, path with query)."""
    if target[:1] == b"/" or target == b"*":
        return None, target
    scheme_end = target.find(b"://")
    if scheme_end <= 0:
        raise HeadError(400, "request target is neither a path nor an absolute URI")
    rest = target[scheme_end + 3 :]
    slash = rest.find(b"/")
    if slash < 0:
        query = rest.find(b"?")
        if query < 0:
            return rest, b"/"
        return rest[:query], b"/" + rest[query:]
    return rest[:slash], rest[slash:]


def parse_response_head(head: bytes, request_method: bytes) -> ResponseHead:
    """Parse a complete response head; HeadError(502) if the backend sent something invalid."""
    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as error:
        raise HeadError(502, f"invalid response: {error}") from None
    version = parser.get_http_version()
    if version not in ("1.1", "1.0"):
        raise HeadError(502, f"unsupported HTTP version {version} in a response")
    status = parser.get_status_code()
    content_length = 0
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        framing = Framing.NONE
    elif collector.chunked:
        framing = Framing.CHUNKED
    elif collector.special & H_CONTENT_LENGTH:
        content_length = collector.content_length
        framing = Framing.LENGTH if content_length else Framing.NONE
    else:
        framing = Framing.CLOSE
    return ResponseHead(
        status=status,
        reason=collector.reason,
        version=version.encode(),
        headers=collector.headers,
        length=len(head),
        framing=framing,
        content_length=content_length,
        keep_alive=_keep_alive(version, collector.connection) and framing is not Framing.CLOSE,
        raw=head,
        special=collector.special,
    )


class _Chunk(enum.Enum):
    SIZE = 0  # reading a chunk-size line
    DATA = 1  # inside chunk data
    DATA_END = 2  # expecting the CRLF after chunk data
    TRAILERS = 3  # after the last chunk: trailer lines until an empty one
    DONE = 4


class ChunkedScanner:
    """Finds the end of a chunked body in raw bytes without copying chunk data.

    `feed` returns how many of the given bytes belong to the body; once `done`, the rest
    belongs to whatever follows. Sizes are hex digits only (optionally followed by chunk
    extensions); anything else is a HeadError(400), or 502 when `status` says so.
    """

    __slots__ = ("_line", "_remaining", "_state", "_status", "done")

    MAX_LINE = 4096

    def __init__(self, status: int = 400) -> None:
        self._state = _Chunk.SIZE
        self._remaining = 0
        self._line = bytearray()
        self._status = status
        self.done = False

    def check_invariants(self) -> None:
        assert self.done == (self._state is _Chunk.DONE)
        assert self._remaining >= 0
        assert self._state is _Chunk.DATA or self._remaining == 0
        assert len(self._line) <= self.MAX_LINE

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        position = 0
        size = len(data)
        while position < size and self._state is not _Chunk.DONE:
            state = self._state
            if state is _Chunk.DATA:
                step = min(self._remaining, size - position)
                position += step
                self._remaining -= step
                if not self._remaining:
                    self._state = _Chunk.DATA_END
                continue
            newline = bytes(data[position : min(size, position + self.MAX_LINE)]).find(b"\n")
            if newline < 0:
                self._line += data[position:size]
                if len(self._line) > self.MAX_LINE:
                    raise HeadError(self._status, "chunk line too long")
                return size
            self._line += data[position : position + newline + 1]
            position += newline + 1
            if len(self._line) > self.MAX_LINE:
                raise HeadError(self._status, "chunk line too long")
            line = bytes(self._line)
            self._line.clear()
            if not line.endswith(b"\r\n"):
                raise HeadError(self._status, "chunk line not ended by CRLF")
            self._line_done(line[:-2])
        return position

    def _line_done(self, line: bytes) -> None:
        state = self._state
        if state is _Chunk.DATA_END:
            if line:
                raise HeadError(self._status, "chunk data longer than its size")
            self._state = _Chunk.SIZE
        elif state is _Chunk.SIZE:
            digits = line.split(b";", 1)[0].rstrip(b" \t")
            if not digits or len(digits) > MAX_CHUNK_SIZE_DIGITS or not _is_hex(digits):
                raise HeadError(self._status, f"invalid chunk size {line[:32]!r}")
            self._remaining = int(digits, 16)
            self._state = _Chunk.DATA if self._remaining else _Chunk.TRAILERS
        elif state is _Chunk.TRAILERS:
            if not line:
                self._state = _Chunk.DONE
                self.done = True
            elif line[:1] in (b" ", b"\t") or b":" not in line:
                raise HeadError(self._status, "invalid trailer line")


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _is_hex(digits: bytes) -> bool:
    return all(byte in _HEX for byte in digits)


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of a header (name given in lower case)."""
    length = len(name)
    for key, value in headers:
        if len(key) == length and key.lower() == name:
            return value
    return None


def has_token(value: bytes | None, token: bytes) -> bool:
    """True if a comma-separated header value (Connection, Upgrade) holds `token`."""
    if value is None:
        return False
    return any(part.strip().lower() == token for part in value.split(b","))
