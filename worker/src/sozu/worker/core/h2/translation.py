"""An HTTP/2 request stream's header block as an HTTP/1.1 request head, with the h2 -> h1
smuggling checks (the "Defences" section of LIFECYCLE.md beside it): no CR, LF or NUL in a
name or value, no uppercase name, no connection-specific header, `te` only `trailers`, one
valid content-length, the pseudo-headers a request needs and no other. A refused block raises
`Refused` (the stream is reset with PROTOCOL_ERROR).

The head is built both as bytes and as the `RequestHead` the HTTP/1.1 parser would make of
them (the stream's session core takes it as parsed): so every name must be a token, every
value visible characters, blanks and obs-text, the method one the parser knows and the
path printable ASCII, no more than that parser accepts. tests/h2/test_translation.py
checks the two agree.

`translate_known` keeps the translations of the header blocks clients repeat (a browser or
a load generator sends the same block for every request to a page's assets once HPACK has
indexed it), bounded in count and in size: a translation is a pure function of the block,
and neither it nor its `RequestHead` is changed by whoever reads it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sozu.worker.core.http.codec import (
    _SPECIAL,
    H_CONTENT_LENGTH,
    H_COOKIE,
    H_HOST,
    H_TRANSFER_ENCODING,
    Framing,
    RequestHead,
)

# Headers HTTP/2 forbids (RFC 9113 8.2.2): their presence makes the request malformed.
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
# RFC 9110 5.1 token, lowercase only (RFC 9113 8.2.1), and 5.5 field values (no CR, LF, NUL
# or other control but HTAB), no blank at either end.
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
# The methods the HTTP/1.1 parser (llhttp) accepts, CONNECT aside (refused below).
_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH "
    b"UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE "
    b"UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY CONNECT".split()
)
# The parser refuses a content-length that does not fit in 64 bits.
_MAX_LENGTH = 2**63
_MAX_LENGTH_DIGITS = len(str(_MAX_LENGTH))
_PATH = re.compile(rb"/[\x21-\x7e]*|\*")
_AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]+")


# Translations kept by `translate_known`, and the largest head kept.
KNOWN_ENTRIES = 256
KNOWN_HEAD_MAX = 2048


class Refused(Exception):
    """A request header block that must not be translated (the reason says why)."""


class Translated:
    """What a request stream becomes: the HTTP/1.1 head and how its body is framed."""

    __slots__ = ("chunked", "content_length", "head", "method", "request")

    def __init__(
        self, head: bytes, method: bytes, content_length: int, chunked: bool, request: RequestHead
    ) -> None:
        self.head = head
        # The same head as the HTTP/1.1 parser gives it.
        self.request = request
        self.method = method
        # -1 when the client sent none.
        self.content_length = content_length
        # The body (if any) is sent to the backend chunked: no content-length was given.
        self.chunked = chunked


def _check(name: bytes, value: bytes) -> None:
    if _NAME.fullmatch(name) is None:
        raise Refused(f"header name {name[:64]!r} is not a lowercase token")
    if _VALUE.fullmatch(value) is None:
        raise Refused(f"forbidden byte, or a blank around the value, in header {name!r}")


_known: dict[tuple[tuple[tuple[bytes, bytes], ...], bool], Translated] = {}


def translate_known(headers: Sequence[tuple[bytes, bytes]], end_stream: bool) -> Translated:
    """`translate`, answered from the translations kept when the same block was seen."""
    key = (tuple(headers), end_stream)
    found = _known.get(key)
    if found is None:
        found = translate(headers, end_stream)
        if len(found.head) <= KNOWN_HEAD_MAX:
            if len(_known) >= KNOWN_ENTRIES:
                _known.clear()
            _known[key] = found
    return found


def translate(headers: Sequence[tuple[bytes, bytes]], end_stream: bool) -> Translated:
    """The HTTP/1.1 head of a request stream (`end_stream`: the block ended the stream)."""
    pseudo: dict[bytes, bytes] = {}
    lines: list[bytes] = []
    content_length = -1
    cookies: list[bytes] = []
    regular_seen = False
    special = H_HOST
    expect_continue = False
    for name, value in headers:
        if name.startswith(b":"):
            if _VALUE.fullmatch(value) is None:
                raise Refused(f"forbidden byte in {name!r}")
            if regular_seen:
                raise Refused("pseudo-header after a regular header")
            if name not in _PSEUDO or name in pseudo:
                raise Refused(f"unknown or repeated pseudo-header {name!r}")
            pseudo[name] = value
            continue
        _check(name, value)
        regular_seen = True
        if name in CONNECTION_SPECIFIC:
            raise Refused(f"connection-specific header {name!r}")
        if name == b"te" and value != b"trailers":
            raise Refused("te other than trailers")
        if name == b"host":
            continue  # :authority wins; a host header is only a fallback, below
        if name == b"content-length":
            # Leading zeros stripped first: int() refuses more than 4300 digits.
            digits = value.lstrip(b"0") or b"0"
            if not value.isdigit() or len(digits) > _MAX_LENGTH_DIGITS:
                raise Refused("invalid content-length")
            length = int(digits)
            if length >= _MAX_LENGTH or (content_length >= 0 and length != content_length):
                raise Refused("invalid content-length")
            content_length = length
            continue
        if name == b"cookie":
            cookies.append(value)  # split crumbs are joined again for HTTP/1.1
            continue
        if name == b"expect":
            expect_continue = value.lower() == b"100-continue"
        special |= _SPECIAL.get(name, 0)
        lines.append(name + b": " + value)
    method = pseudo.get(b":method")
    path = pseudo.get(b":path")
    authority = pseudo.get(b":authority")
    if method is None or method not in _METHODS:
        raise Refused("missing or unknown :method")
    if method == b"CONNECT":
        raise Refused("CONNECT is not proxied over HTTP/2")
    if path is None or _PATH.fullmatch(path) is None:
        raise Refused("missing or invalid :path")
    if b":scheme" not in pseudo:
        raise Refused("missing :scheme")
    if authority is None:
        host = [v for n, v in headers if n == b"host"]
        if len(host) != 1:
            raise Refused("no :authority and no single host")
        authority = host[0]
    if _AUTHORITY.fullmatch(authority) is None or b"@" in authority:
        raise Refused("invalid :authority")
    head = [method + b" " + path + b" HTTP/1.1", b"host: " + authority]
    head += lines
    if cookies:
        special |= H_COOKIE
        head.append(b"cookie: " + b"; ".join(cookies))
    chunked = False
    framing = Framing.NONE
    length = 0
    if content_length >= 0:
        special |= H_CONTENT_LENGTH
        head.append(b"content-length: " + str(content_length).encode())
        if content_length:
            framing = Framing.LENGTH
            length = content_length
    elif not end_stream:
        chunked = True
        special |= H_TRANSFER_ENCODING
        framing = Framing.CHUNKED
        head.append(b"transfer-encoding: chunked")
    raw = b"\r\n".join(head) + b"\r\n\r\n"
    request = RequestHead(
        method,
        path,
        b"1.1",
        len(raw),
        framing,
        length,
        True,
        False,
        authority,
        path,
        expect_continue,
        raw,
        special,
    )
    return Translated(raw, method, content_length, chunked, request)
