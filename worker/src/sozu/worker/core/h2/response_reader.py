"""An HTTP/1.1 response (what a stream's HTTP/1.1 session core queues for its client) read
back as HTTP/2 pieces: the status and headers (connection-specific ones dropped, names
lowercased), body bytes with any chunked framing removed, the trailers of a chunked body
(gRPC's status travels there), and the end of the message."""

from __future__ import annotations

import httptools

from sozu.worker.core.h2.translation import CONNECTION_SPECIFIC

# Response headers that are hop-by-hop in HTTP/1.1 and have no place in an HTTP/2 response.
_DROPPED = CONNECTION_SPECIFIC | {b"te", b"trailer"}
_BLANK = (b" ", b"\t")


class ResponseReader:
    """Feed it the response bytes; read `head` (once set), `body` (taken by the session) and
    `complete`. An invalid response sets `failed`. A reader whose response ended as a
    keep-alive message is `reusable` for the next stream (`reset`): its parser stands at a
    message boundary, and creating one costs more than a small response's whole parse."""

    __slots__ = (
        "_fields",
        "_head_only",
        "_parser",
        "body",
        "complete",
        "failed",
        "head",
        "reusable",
        "trailers",
    )

    def __init__(self, method: bytes) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.reset(method)

    def reset(self, method: bytes) -> None:
        """Ready for the response to a request of `method`."""
        self._head_only = method == b"HEAD"
        self._fields: list[tuple[bytes, bytes]] = []
        self.head: list[tuple[bytes, bytes]] | None = None
        self.trailers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.complete = False
        self.failed = False
        self.reusable = False

    def feed(self, data: bytes | bytearray) -> None:
        """Bytes of the response, in order."""
        assert not self.complete or not data, "bytes after a complete response"
        if self.failed or self.complete:
            return
        try:
            self._parser.feed_data(bytes(data))
        except httptools.HttpParserUpgrade:
            self.failed = True  # no 101 over HTTP/2
        except httptools.HttpParserError:
            self.failed = True

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._fields = []

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if value[:1] in _BLANK or value[-1:] in _BLANK:
            value = value.strip(b" \t")
        if self.head is None:
            self._fields.append((name, value))
        elif name not in _DROPPED and not name.startswith(b":"):
            self.trailers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            return  # informational responses are not relayed
        fields = [(b":status", str(status).encode())]
        fields += [(n, v) for n, v in self._fields if n not in _DROPPED]
        self.head = fields
        if self._head_only or status in (204, 304):
            self.complete = True

    def on_body(self, data: bytes) -> None:
        if not self.complete:
            self.body += data

    def on_message_complete(self) -> None:
        if self.head is not None:
            self.reusable = not self._head_only and self._parser.should_keep_alive()
            self.complete = True
