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
import re
from typing import Final

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
# Not a header: an absolute-form target whose authority is not what Host says (or there is no
# Host). The target's authority names the origin and the Host sent on is replaced with it
# (RFC 9112 §3.2.2).
H_TARGET_HOST = 16384
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


class RequestHead:
    """A parsed request head. `length` counts its bytes, blank line included; `raw` holds
    them; `special` has the H_* bits of the headers it carries. `headers` (name, value) pairs
    are split from `raw` on first use: most requests are forwarded without them."""

    __slots__ = (
        "_headers",
        "authority",
        "content_length",
        "expect_continue",
        "framing",
        "keep_alive",
        "length",
        "method",
        "path",
        "raw",
        "special",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        length: int,
        framing: Framing,
        content_length: int,
        keep_alive: bool,
        upgrade: bool,
        authority: bytes | None,
        path: bytes,
        expect_continue: bool,
        raw: bytes,
        special: int,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.length = length
        self.framing = framing
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.authority = authority
        self.path = path
        self.expect_continue = expect_continue
        self.raw = raw
        self.special = special
        self._headers: Headers | None = None

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = split_headers(self.raw)
        return headers

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r} {self.target!r} HTTP/{self.version.decode()})"


class ResponseHead:
    """A parsed response head (`raw`, `special` and `headers` as in RequestHead)."""

    __slots__ = (
        "_headers",
        "content_length",
        "framing",
        "keep_alive",
        "length",
        "raw",
        "reason",
        "special",
        "status",
        "version",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        length: int,
        framing: Framing,
        content_length: int,
        keep_alive: bool,
        raw: bytes,
        special: int,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.length = length
        self.framing = framing
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.raw = raw
        self.special = special
        self._headers: Headers | None = None

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = split_headers(self.raw)
        return headers

    def __repr__(self) -> str:
        return f"ResponseHead({self.status} {self.reason!r} HTTP/{self.version.decode()})"


def split_headers(raw: bytes) -> Headers:
    """The (name, value) pairs of a head llhttp accepted: every line ends in CRLF, has no
    folding, and reads `name:` then optional blanks (dropped) then the value (kept as is,
    trailing blanks included, as llhttp reports it)."""
    lines = raw.split(b"\r\n")
    headers: Headers = []
    append = headers.append
    for line in lines[1:-2]:
        name, _, value = line.partition(b":")
        append((name, value.lstrip(b" \t")))
    return headers


# The headers a proxy decides on, found in one scan of a head llhttp accepted (a line starts
# after CRLF, the name is followed by its colon, blanks before the value are not part of it;
# those after it are stripped where the value is read, not by the pattern: a lazy match
# would cost time quadratic in a long value's length).
_SPECIAL_LINE = re.compile(
    rb"\r\n(" + b"|".join(re.escape(name) for name in _SPECIAL) + rb"):[ \t]*([^\r]*)",
    re.IGNORECASE,
)


class _NoCallbacks:
    """llhttp validates and reports the start line; the headers are scanned afterwards."""

    __slots__ = ()


_NO_CALLBACKS = _NoCallbacks()


def _scan_special(raw: bytes) -> tuple[int, bytes | None, int, int, bool, bytes | None, bool]:
    """(special bits, last Host, Host count, Content-Length, chunked, Connection (its lines joined),
    Expect: 100-continue) of a head llhttp accepted."""
    special = 0
    host: bytes | None = None
    hosts = 0
    content_length = 0
    chunked = False
    connection: bytes | None = None
    expect_continue = False
    for name, value in _SPECIAL_LINE.findall(raw):
        bit = _SPECIAL[name.lower()]
        special |= bit
        if bit == H_HOST:
            hosts += 1
            host = value.rstrip(b" \t")
        elif bit == H_CONTENT_LENGTH:
            # llhttp refuses several or invalid lengths, a length with chunked, and values of
            # 2^64 or more, but not leading zeros: int() would refuse more than 4300 digits.
            digits = value.rstrip(b" \t").lstrip(b"0")
            content_length = int(digits) if digits else 0
        elif bit == H_TRANSFER_ENCODING:
            # llhttp already refused any coding list that does not end in chunked.
            chunked = value.rstrip().lower().endswith(b"chunked")
        elif bit == H_CONNECTION:
            # Repeated lines are one list (RFC 9110 §5.3): a close in any of them counts.
            connection = value if connection is None else connection + b", " + value
        elif bit == H_EXPECT:
            expect_continue = value.rstrip(b" \t").lower() == b"100-continue"
    return special, host, hosts, content_length, chunked, connection, expect_continue


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


_V11: Final = b"1.1"
_V10: Final = b"1.0"


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a complete request head (as delimited by `find_head_end`); HeadError(400) if bad."""
    parser = httptools.HttpRequestParser(_NO_CALLBACKS)
    upgrade = False
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        upgrade = True
    except httptools.HttpParserError as error:
        raise HeadError(400, f"invalid request: {error}") from None
    # llhttp accepted `method SP+ target SP+ PROTOCOL/d.d CRLF` (strictly: no other line end),
    # the target without blanks: the version and the target are read from the bytes.
    eol = head.find(b"\r\n")
    version = head[eol - 3 : eol]
    if head[eol - 9 : eol - 3] != b" HTTP/":  # llhttp also takes RTSP/ and ICE/
        raise HeadError(400, "not an HTTP request line")
    if version == _V11:
        http11 = True
    elif version == _V10:
        http11 = False
    else:
        raise HeadError(400, f"unsupported HTTP version {version.decode('latin-1')}")
    method = parser.get_method()
    if not head.startswith(method):
        # llhttp skips CR and LF bytes before the method; the offsets above do not (heads.py
        # drops the one empty line a request may follow).
        raise HeadError(400, "not an HTTP request line")
    if method == b"CONNECT":
        raise HeadError(400, "CONNECT is not proxied")
    special, host, hosts, content_length, chunked, connection, expect_continue = _scan_special(head)
    if hosts > 1:
        raise HeadError(400, "several Host headers")
    target = head[len(method) : eol - 9].strip(b" ")
    if target[:1] == b"/":
        authority: bytes | None = None
        path = target
    else:
        authority, path = split_target(target)
    if authority is None:
        if host is None and http11:
            raise HeadError(400, "no Host header")
        authority = host
    elif host != authority:
        special |= H_TARGET_HOST
    if chunked:
        content_length = 0
        framing = Framing.CHUNKED
    elif content_length:
        framing = Framing.LENGTH
    else:
        framing = Framing.NONE
    return RequestHead(
        method,
        target,
        _V11 if http11 else _V10,
        len(head),
        framing,
        content_length,
        _keep_alive(http11, connection),
        upgrade and method == b"GET",
        authority,
        path,
        expect_continue,
        head,
        special,
    )


def _keep_alive(http11: bool, connection: bytes | None) -> bool:
    if connection is None:
        return http11
    if http11:
        return not has_token(connection, b"close")
    return has_token(connection, b"keep-alive") and not has_token(connection, b"close")


def split_target(target: bytes) -> tuple[bytes | None, bytes]:
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


# Response heads kept by `parse_response_head_known`, and the longest kept.
KNOWN_RESPONSES = 64
KNOWN_RESPONSE_MAX = 2048
_known_responses: dict[tuple[bytes, bool], ResponseHead] = {}


def parse_response_head_known(head: bytes, request_method: bytes) -> ResponseHead:
    """`parse_response_head`, answered from the heads kept when the same bytes came for the
    same kind of request (HEAD or not): a backend's heads repeat but for their Date, new each
    second. A parse is a pure function of those, and a ResponseHead is never changed by its
    readers (its `headers` are made from `raw`, alike each time)."""
    key = (head, request_method == b"HEAD")
    found = _known_responses.get(key)
    if found is None:
        found = parse_response_head(head, request_method)  # errors are not kept
        if len(head) <= KNOWN_RESPONSE_MAX:
            if len(_known_responses) >= KNOWN_RESPONSES:
                _known_responses.clear()
            _known_responses[key] = found
    return found


def parse_response_head(head: bytes, request_method: bytes) -> ResponseHead:
    """Parse a complete response head; HeadError(502) if the backend sent something invalid."""
    parser = httptools.HttpResponseParser(_NO_CALLBACKS)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as error:
        raise HeadError(502, f"invalid response: {error}") from None
    # llhttp accepted `PROTOCOL/d.d SP ddd [SP reason] CRLF`.
    if head[:5] != b"HTTP/":  # llhttp also takes RTSP/ and ICE/
        raise HeadError(502, "not an HTTP status line")
    version = head[5:8]
    if version != _V11 and version != _V10:
        raise HeadError(502, f"unsupported HTTP version {version.decode('latin-1')} in a response")
    status = parser.get_status_code()
    if status < 100:
        raise HeadError(502, f"status {status} out of range")
    special, _, _, length, chunked, connection, _ = _scan_special(head)
    content_length = 0
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        framing = Framing.NONE
    elif chunked:
        framing = Framing.CHUNKED
    elif special & H_CONTENT_LENGTH:
        content_length = length
        framing = Framing.LENGTH if content_length else Framing.NONE
    else:
        framing = Framing.CLOSE
    reason = head[13 : head.find(b"\r\n")]
    http11 = version == _V11
    return ResponseHead(
        status,
        reason,
        _V11 if http11 else _V10,
        len(head),
        framing,
        content_length,
        _keep_alive(http11, connection) and framing is not Framing.CLOSE,
        head,
        special,
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
    if b"," not in value:
        return value.strip().lower() == token
    return any(part.strip().lower() == token for part in value.split(b","))
