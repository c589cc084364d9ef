"""An HTTP/2 request stream's header block as an HTTP/1.1 request head, with the h2 -> h1
smuggling checks (data-plane.md): no CR, LF or NUL in a name or value, no uppercase name, no
connection-specific header, `te` only `trailers`, one valid content-length, the pseudo-headers
a request needs and no other. A refused block raises `Refused` (the stream is reset with
PROTOCOL_ERROR)."""

from __future__ import annotations

from collections.abc import Sequence

# Headers HTTP/2 forbids (RFC 9113 8.2.2): their presence makes the request malformed.
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_BAD_BYTES = (b"\r", b"\n", b"\x00")
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))


class Refused(Exception):
    """A request header block that must not be translated (the reason says why)."""


class Translated:
    """What a request stream becomes: the HTTP/1.1 head and how its body is framed."""

    __slots__ = ("chunked", "content_length", "head", "method")

    def __init__(self, head: bytes, method: bytes, content_length: int, chunked: bool) -> None:
        self.head = head
        self.method = method
        # -1 when the client sent none.
        self.content_length = content_length
        # The body (if any) is sent to the backend chunked: no content-length was given.
        self.chunked = chunked


def _check(name: bytes, value: bytes) -> None:
    for bad in _BAD_BYTES:
        if bad in name or bad in value:
            raise Refused(f"forbidden byte in header {name!r}")
    if name != name.lower():
        raise Refused(f"uppercase header name {name!r}")
    if value != value.strip(b" \t"):
        raise Refused(f"blank around the value of {name!r}")


def translate(headers: Sequence[tuple[bytes, bytes]], end_stream: bool) -> Translated:
    """The HTTP/1.1 head of a request stream (`end_stream`: the block ended the stream)."""
    pseudo: dict[bytes, bytes] = {}
    lines: list[bytes] = []
    content_length = -1
    cookies: list[bytes] = []
    regular_seen = False
    for name, value in headers:
        _check(name, value)
        if name.startswith(b":"):
            if regular_seen:
                raise Refused("pseudo-header after a regular header")
            if name not in _PSEUDO or name in pseudo:
                raise Refused(f"unknown or repeated pseudo-header {name!r}")
            pseudo[name] = value
            continue
        regular_seen = True
        if name in CONNECTION_SPECIFIC:
            raise Refused(f"connection-specific header {name!r}")
        if name == b"te" and value != b"trailers":
            raise Refused("te other than trailers")
        if name == b"host":
            continue  # :authority wins; a host header is only a fallback, below
        if name == b"content-length":
            if not value.isdigit() or (content_length >= 0 and int(value) != content_length):
                raise Refused("invalid content-length")
            content_length = int(value)
            continue
        if name == b"cookie":
            cookies.append(value)  # split crumbs are joined again for HTTP/1.1
            continue
        lines.append(name + b": " + value)
    method = pseudo.get(b":method")
    path = pseudo.get(b":path")
    authority = pseudo.get(b":authority")
    if method is None or not method.isalpha():
        raise Refused("missing or invalid :method")
    if method == b"CONNECT":
        raise Refused("CONNECT is not proxied over HTTP/2")
    if not path or not (path.startswith(b"/") or path == b"*") or b" " in path:
        raise Refused("missing or invalid :path")
    if b":scheme" not in pseudo:
        raise Refused("missing :scheme")
    if authority is None:
        host = [v for n, v in headers if n == b"host"]
        if len(host) != 1:
            raise Refused("no :authority and no single host")
        authority = host[0]
    if not authority or b"@" in authority or b" " in authority:
        raise Refused("invalid :authority")
    head = [method + b" " + path + b" HTTP/1.1", b"host: " + authority]
    head += lines
    if cookies:
        head.append(b"cookie: " + b"; ".join(cookies))
    chunked = False
    if content_length >= 0:
        head.append(b"content-length: " + str(content_length).encode())
    elif not end_stream:
        chunked = True
        head.append(b"transfer-encoding: chunked")
    return Translated(b"\r\n".join(head) + b"\r\n\r\n", method, content_length, chunked)
