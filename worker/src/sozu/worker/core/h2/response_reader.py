"""An HTTP/1.1 response (what a stream's HTTP/1.1 session core queues for its client) read
back as HTTP/2 pieces: the status and headers (connection-specific ones dropped, names
lowercased), body bytes with any chunked framing removed, the trailers of a chunked body
(gRPC's status travels there), and the end of the message.

Most responses are a head the session core wrote itself (from a backend head its parser
accepted, or one of its answers) and a body of a known length: such a head is split here
directly and its body counted down. Anything else (chunked or close-delimited bodies,
informational responses, a head that arrives in pieces or does not have exactly the shape
the core writes) goes through the httptools parser, from the first byte of the message.
"""

from __future__ import annotations

import re
from typing import Final

import httptools

from sozu.worker.core.h2.translation import CONNECTION_SPECIFIC

# Response headers that are hop-by-hop in HTTP/1.1 and have no place in an HTTP/2 response.
_DROPPED = CONNECTION_SPECIFIC | {b"te", b"trailer"}
_BLANK = (b" ", b"\t")
# A head as the core writes it, checked whole: the status line, then fields whose names are
# tokens and whose values hold no control byte but HTAB (group 2: the fields, each after CRLF).
_HEAD = re.compile(
    rb"HTTP/1\.1 ([2-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?"
    rb"((?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*)"
)
# One field line of such a head (name, then the value with its blanks).
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([\t\x20-\x7e\x80-\xff]*)")
# Longer content-lengths are left to the parser, which refuses those past 64 bits.
_LENGTH_DIGITS = 18
# Heads read by `_read_stem`, kept by their bytes (see `_known_stems`), and the longest kept.
KNOWN_STEMS = 64
KNOWN_STEM_MAX = 2048
_Stem = tuple[bytes, tuple[tuple[bytes, bytes], ...], int]
# `_read_stem`'s answer for a head left to the parser.
_NOT_DIRECT: Final[_Stem] = (b"", (), -1)
_REFUSED: Final = -2
# A backend answers with heads that repeat but for their Date (new each second) and the
# Sozu-Id the core adds as the last field: what a head holds up to its last line is read
# once. The reading is a pure function of those bytes, and its result is never changed.
_known_stems: dict[bytes, _Stem] = {}


def _read_stem(stem: bytes) -> _Stem:
    """A head's status line and fields (but its last line) as the direct path reads them:
    the status, the fields to relay and the content-length (-1: none); _NOT_DIRECT when the
    head must go to the parser (an unexpected shape, a bad or repeated content-length, a
    transfer-encoding)."""
    head = _HEAD.fullmatch(stem)
    if head is None:
        return _NOT_DIRECT
    fields: list[tuple[bytes, bytes]] = []
    length = -1
    for line in head.group(2).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        length = _add_field(fields, name, value, length)
        if length == _REFUSED:
            return _NOT_DIRECT
    return head.group(1), ((b":status", head.group(1)), *fields), length


def _add_field(fields: list[tuple[bytes, bytes]], name: bytes, value: bytes, length: int) -> int:
    """One field of a head on the direct path: kept in `fields` unless hop-by-hop; the
    content-length so far (-1: none), or _REFUSED for a head left to the parser (a bad or
    repeated content-length, a transfer-encoding)."""
    name = name.lower()
    value = value.strip(b" \t")
    if name == b"content-length":
        if length >= 0 or not value.isdigit() or len(value) > _LENGTH_DIGITS:
            return _REFUSED
        length = int(value)
    elif name == b"transfer-encoding":
        return _REFUSED
    if name not in _DROPPED:
        fields.append((name, value))
    return length


class ResponseReader:
    """Feed it the response bytes; read `head` (once set), `body` (taken by the session) and
    `complete`. An invalid response sets `failed`. A reader whose response ended as a
    keep-alive message is `reusable` for the next stream (`reset`): its parser stands at a
    message boundary, and creating one costs more than a small response's whole parse."""

    __slots__ = (
        "_fields",
        "_head_only",
        "_parser",
        "_remaining",
        "_slow",
        "body",
        "complete",
        "failed",
        "head",
        "head_stem",
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
        # The fields `head` starts with, shared by the heads of one stem (direct path only):
        # their encoding can be kept too.
        self.head_stem: tuple[tuple[bytes, bytes], ...] | None = None
        self.trailers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.complete = False
        self.failed = False
        self.reusable = False
        self._remaining = -1  # body bytes still expected by the direct path (-1: not on it)
        self._slow = False  # the message goes through the parser

    def feed(self, data: bytes | bytearray) -> None:
        """Bytes of the response, in order."""
        assert not self.complete or not data, "bytes after a complete response"
        if self.failed or self.complete:
            return
        if self._remaining >= 0:
            if len(data) > self._remaining:
                self.failed = True  # more than the head's content-length
                return
            self.body += data
            self._remaining -= len(data)
            if not self._remaining:
                self.complete = self.reusable = True
            return
        if not self._slow:
            if self.head is None:
                end = self._direct_head(data)
                if end >= 0:
                    if end < len(data):
                        self.feed(data[end:])
                    return
            self._slow = True
        try:
            self._parser.feed_data(bytes(data))
        except httptools.HttpParserUpgrade:
            self.failed = True  # no 101 over HTTP/2
        except httptools.HttpParserError:
            self.failed = True

    def _direct_head(self, data: bytes | bytearray) -> int:
        """Read a complete head of the shape the core writes, with a content-length (or no
        body to expect); the offset of its end, or -1 to leave the message to the parser."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return -1
        if type(data) is not bytes:
            data = bytes(data)  # the fields are kept: never views of a buffer that changes
        # The head up to its last line (the status line and every field but the last),
        # read once for every head that repeats it; then the last line.
        cut = data.rfind(b"\r\n", 0, end)
        stem = data[:cut] if cut >= 0 else data[:end]
        known = _known_stems.get(stem)
        if known is None:
            known = _read_stem(stem)
            if len(stem) <= KNOWN_STEM_MAX:
                if len(_known_stems) >= KNOWN_STEMS:
                    _known_stems.clear()
                _known_stems[stem] = known
        if known is _NOT_DIRECT:
            return -1
        status, stem_fields, length = known
        fields = list(stem_fields)
        if cut >= 0:
            line = _FIELD.fullmatch(data, cut + 2, end)
            if line is None:
                return -1
            length = _add_field(fields, line.group(1), line.group(2), length)
            if length == _REFUSED:
                return -1
        no_body = self._head_only or status in (b"204", b"304")
        if length < 0 and not no_body:
            return -1
        if (no_body or not length) and end + 4 < len(data):
            return -1  # bytes after a message without a body: the parser says what they are
        self.head = fields
        self.head_stem = stem_fields
        if no_body or not length:
            self.complete = self.reusable = True
        else:
            self._remaining = length
        return end + 4

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
