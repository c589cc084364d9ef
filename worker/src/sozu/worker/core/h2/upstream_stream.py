"""One request on an HTTP/2 backend connection, as the HTTP/1.1 session core sees it.

A session core speaks HTTP/1.1 to every backend. For a cluster with `http2 = true` its
request bytes are read here (httptools) into the stream's HEADERS, DATA and trailers, and the
backend's HTTP/2 response is written back as HTTP/1.1 bytes for the core to read: the status
line, the headers, the body with `content-length` when the backend gave one, chunked
otherwise, and the trailers as chunked trailers (gRPC's status travels there). Interim (1xx)
responses are relayed as HTTP/1.1 interim responses. The connection core (upstream.py)
drives the `h2` library; this holds the per-stream state and the two translations.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

import httptools

from sozu.worker.core.h2.translation import CONNECTION_SPECIFIC
from sozu.worker.core.http.codec import HeadError, split_target

# Headers HTTP/2 forbids (RFC 9113 8.2.2), dropped from the translated request; `host`
# becomes :authority, `te` is kept only as `trailers`. A response drops the same ones.
_DROPPED: Final = CONNECTION_SPECIFIC | {b"host", b"http2-settings"}
_BLANK: Final = (b" ", b"\t")
_UNSAFE: Final = re.compile(rb"[\r\n\x00]")
# Request body bytes a stream holds for flow control before it stops taking more.
BODY_LIMIT: Final = 65536
_REASONS: Final = {status.value: status.phrase.encode() for status in HTTPStatus}

# Stream phases.
P_HEAD: Final = 0  # reading the request head
P_BODY: Final = 1  # HEADERS sent; body bytes (if any) being sent as the window allows
P_SENT: Final = 2  # the request ended (END_STREAM sent, or queued behind the window)


class UpstreamStream:
    """A session core's request and its response on one backend connection.

    The connection core fills `inbox` (HTTP/1.1 response bytes for the session) and sets
    `ended` (the response is complete) or `failed` (the stream was reset or the connection
    lost; `refused`: the backend never processed the request). `news` says the shell has
    something to deliver: bytes, the end, or room for more request bytes."""

    __slots__ = (
        "body",
        "chunked",
        "ended",
        "failed",
        "fields",
        "flow_unacked",
        "head_only",
        "inbox",
        "method",
        "news",
        "parser",
        "path",
        "phase",
        "received",
        "refused",
        "request_done",
        "response_started",
        "stream_id",
        "trailers",
    )

    def __init__(self) -> None:
        self.stream_id = 0  # 0 until its HEADERS go out
        self.parser = httptools.HttpRequestParser(self)
        self.phase = P_HEAD
        self.method = b""
        self.path = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()  # request body not sent yet (flow control)
        self.request_done = False  # the whole request was read from the session
        # -- the response
        self.inbox = bytearray()
        self.flow_unacked = 0  # flow-controlled bytes in `inbox`, returned once taken
        self.response_started = False  # a final response head was written to `inbox`
        self.chunked = False
        self.head_only = False
        self.received = False  # anything came back for this stream
        self.ended = False
        self.failed = False
        self.refused = False
        self.news = False

    # -- the request, read from the session's bytes

    def feed(self, data: bytes | bytearray) -> bool:
        """Request bytes; False when they are not a request this stream can send."""
        try:
            self.parser.feed_data(bytes(data))
        except httptools.HttpParserUpgrade:
            # An Upgrade or CONNECT request: there is no upgrade to HTTP/2 backends, the
            # request goes out as a plain one (its upgrade headers dropped) and ends here.
            if self.phase == P_HEAD:
                return False
            self.request_done = True
        except httptools.HttpParserError:
            return False
        return True

    def head_ready(self) -> bool:
        return self.method != b"" and self.phase == P_HEAD

    def request_headers(self, *, scheme: bytes) -> list[tuple[bytes, bytes]]:
        """The request's HEADERS block: pseudo-headers, then the fields HTTP/2 allows."""
        authority = b""
        connection_named: set[bytes] = set()
        for name, value in self.fields:
            if name == b"host":
                authority = value
            elif name == b"connection":
                connection_named.update(t.strip().lower() for t in value.split(b","))
        path = self.path
        if not path.startswith(b"/") and path != b"*":
            # absolute-form: its authority wins over Host (RFC 9112 3.2.2), as in routing.
            try:
                found, path = split_target(path)
            except HeadError:
                found = None
            if found is not None:
                authority = found
        block = [
            (b":method", self.method),
            (b":scheme", scheme),
            (b":authority", authority),
            (b":path", path),
        ]
        for name, value in self.fields:
            if name in _DROPPED or name in connection_named:
                continue
            if name == b"te" and value.strip().lower() != b"trailers":
                continue
            block.append((name, value))
        return block

    # -- httptools callbacks (request)

    def on_url(self, url: bytes) -> None:
        self.path += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if value[:1] in _BLANK or value[-1:] in _BLANK:
            value = value.strip(b" \t")
        if self.phase == P_HEAD:
            self.fields.append((name.lower(), value))
        else:
            self.trailers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method()
        self.head_only = self.method == b"HEAD"

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.request_done = True

    # -- the response, written as HTTP/1.1 bytes

    def response_head(self, headers: list[tuple[bytes, bytes]], *, ended: bool) -> None:
        """A HEADERS block of the response (interim or final) with its :status."""
        if self.failed or self.ended:
            return
        self.received = True
        status = 0
        fields: list[bytes] = []
        length_given = False
        for name, value in headers:
            if _UNSAFE.search(name) or _UNSAFE.search(value):
                # The library's checks are off: CR, LF or NUL would split the HTTP/1.1 head.
                self.fail()
                return
            if name == b":status":
                status = int(value) if len(value) == 3 and value.isdigit() else 0
            elif name.startswith(b":") or name in CONNECTION_SPECIFIC:
                continue
            else:
                if name == b"content-length":
                    length_given = True
                fields.append(name + b": " + value)
        if not 100 <= status <= 999 or status == 101:
            # No protocol switch over an HTTP/2 stream (RFC 9113 8.6).
            self.fail()
            return
        inbox = self.inbox
        inbox += b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown"))
        if status < 200:
            fields.append(b"")
            inbox += b"\r\n".join(fields) + b"\r\n"
            self.news = True
            return
        self.response_started = True
        bodiless = self.head_only or status in (204, 304)
        if not bodiless and not length_given:
            if ended:
                fields.append(b"content-length: 0")
            else:
                self.chunked = True
                fields.append(b"transfer-encoding: chunked")
        fields.append(b"")
        inbox += b"\r\n".join(fields) + b"\r\n"
        self.news = True
        if ended:
            self.ended = True

    def response_data(self, data: bytes, flow: int) -> None:
        self.received = True
        self.flow_unacked += flow
        if data:
            if self.chunked:
                self.inbox += b"%x\r\n%b\r\n" % (len(data), data)
            else:
                self.inbox += data
        self.news = True

    def response_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Trailers end the response: chunked trailers (a response framed by its
        content-length has nowhere to put them, they are dropped)."""
        if self.failed or self.ended:
            return
        if any(_UNSAFE.search(n) or _UNSAFE.search(v) for n, v in headers):
            self.fail()
            return
        if self.chunked:
            lines = b"".join(n + b": " + v + b"\r\n" for n, v in headers if not n.startswith(b":"))
            self.inbox += b"0\r\n" + lines + b"\r\n"
            self.chunked = False
        self.end()

    def end(self) -> None:
        """END_STREAM from the backend."""
        if self.failed or self.ended:
            return
        if not self.response_started:
            self.fail()
            return
        if self.chunked:
            self.inbox += b"0\r\n\r\n"
            self.chunked = False
        self.ended = True
        self.news = True

    def fail(self, *, refused: bool = False) -> None:
        """The stream ends without a complete response; `refused`: the backend never
        processed it (REFUSED_STREAM, or above a GOAWAY's last stream id)."""
        if not self.ended and not self.failed:
            self.failed = True
            self.refused = refused and not self.received
            self.news = True

    def take(self) -> bytes:
        """The response bytes for the session (their window goes back to the backend)."""
        data = bytes(self.inbox)
        self.inbox.clear()
        return data

    def check_invariants(self) -> None:
        assert not (self.ended and self.failed)
        assert self.stream_id == 0 or self.stream_id % 2 == 1, self.stream_id
        assert self.phase == P_HEAD or self.stream_id > 0
        assert self.flow_unacked >= 0
        assert not self.refused or self.failed
        assert not self.chunked or self.response_started
