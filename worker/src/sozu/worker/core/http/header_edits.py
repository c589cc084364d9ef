"""Header edits of proxied HTTP messages (upstream kawa_h1/editor.rs) and head serialisation.

A header block is `list[tuple[bytes, bytes]]`: names keep their original case and compare
case-insensitively, order is kept. The edit functions return a new list and leave their
input untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from sozu.command.types import Header
from sozu.worker.core.http.codec import (
    H_CONNECTION,
    H_FORWARDED,
    H_X_FORWARDED_FOR,
    H_X_FORWARDED_PORT,
    H_X_FORWARDED_PROTO,
    H_X_REQUEST_ID,
    has_token,
)

Headers = list[tuple[bytes, bytes]]

_CONNECTION: Final = b"connection"
_COOKIE: Final = b"cookie"
_XFF: Final = b"x-forwarded-for"
_FORWARDED: Final = b"forwarded"
_X_REAL_IP: Final = b"x-real-ip"
_X_PROTO: Final = b"x-forwarded-proto"
_X_PORT: Final = b"x-forwarded-port"
_X_REQUEST_ID: Final = b"x-request-id"
_HOST: Final = b"host"
_STS: Final = b"strict-transport-security"


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """One frontend edit: append `value` under `name`, or delete every `name` when empty."""

    name: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class FrontendEdits:
    """A frontend's `headers` split by direction (BOTH lands in both)."""

    request: tuple[HeaderEdit, ...] = ()
    response: tuple[HeaderEdit, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestEdits:
    """An edited request header block and what the edit learned on the way."""

    headers: Headers
    sticky_value: bytes | None
    """Value of the sticky cookie the client sent (the cookie itself was removed)."""
    keep_alive: bool
    """False when the client asked for `Connection: close` (or the stream is closing)."""
    xff_chain: bytes | None
    """The X-Forwarded-For value the client sent, for the access log."""
    x_proto_trusted: bool
    x_proto_differs: bool
    x_port_trusted: bool
    x_port_differs: bool


@dataclass(frozen=True, slots=True)
class ResponseEdits:
    """An edited response header block; `keep_alive` is False on a backend `close`."""

    headers: Headers
    keep_alive: bool


@lru_cache(maxsize=1024)
def compile_frontend_edits(headers: tuple[Header, ...]) -> FrontendEdits:
    """The frontend `headers` config as byte edits per direction (cached)."""
    request = []
    response = []
    for header in headers:
        edit = HeaderEdit(header.key.encode(), header.val.encode())
        if header.position in ("REQUEST", "BOTH"):
            request.append(edit)
        if header.position in ("RESPONSE", "BOTH"):
            response.append(edit)
    return FrontendEdits(tuple(request), tuple(response))


def format_ip(ip: str) -> str:
    """An IP literal as it appears with a port: IPv6 in brackets."""
    return f"[{ip}]" if ":" in ip else ip


def _strip_cookie(value: bytes, name: bytes) -> tuple[bytes | None, bytes | None]:
    """(value without the `name` cookie or None if nothing is left, the cookie's value)."""
    found = None
    kept = []
    for pair in value.split(b";"):
        pair = pair.strip()
        if not pair:
            continue
        key, _, cookie_value = pair.partition(b"=")
        if key.strip() == name:
            found = cookie_value.strip()
        else:
            kept.append(pair)
    if found is None:
        return value, None
    return (b"; ".join(kept) if kept else None), found


def apply_edits(headers: Headers, edits: Iterable[HeaderEdit]) -> Headers:
    """Apply frontend edits in order: a non-empty value appends, an empty one deletes."""
    for edit in edits:
        if edit.value:
            headers.append((edit.name, edit.value))
        else:
            lowered = edit.name.lower()
            headers = [h for h in headers if h[0].lower() != lowered]
    return headers


def without_close(value: bytes) -> bytes:
    """A Connection header value without its `close` token(s)."""
    tokens = (token.strip() for token in value.split(b","))
    return b", ".join(token for token in tokens if token and token.lower() != b"close")


def edit_request(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    request_id: bytes,
    https: bool,
    public_ip: str,
    public_port: int,
    peer: tuple[str, int] | None,
    closing: bool = False,
    keep_backend: bool = False,
    sticky_name: bytes | None = b"SOZUBALANCEID",
    sozu_id_header: bytes = b"Sozu-Id",
    elide_x_real_ip: bool = False,
    send_x_real_ip: bool = False,
    rewrite_host: bytes | None = None,
    target_host: bytes | None = None,
    edits: Sequence[HeaderEdit] = (),
) -> RequestEdits:
    """The request header block sent to the backend (docs/http.md, "Header edits").

    `peer` is the client (or PROXY source) address, None when unknown. `keep_backend`: the
    client's `Connection: close` is about its own connection, its close token is not
    forwarded (the backend connection may be reused). Added headers come
    in upstream order: X-Forwarded-For, Forwarded, X-Real-IP, X-Forwarded-Port,
    X-Forwarded-Proto, Connection, X-Request-Id, `sozu_id_header`; then, for a host
    rewrite, X-Forwarded-Host; then the frontend's request edits. `target_host`: the
    authority of an absolute-form target, sent as Host in place of the one received (RFC 9112
    §3.2.2); a host rewrite still wins, with it as X-Forwarded-Host.
    """
    proto = b"https" if https else b"http"
    port_bytes = str(public_port).encode()
    out: Headers = []
    sticky_value: bytes | None = None
    keep_alive = not closing
    has_connection = has_request_id = False
    x_proto_trusted = x_proto_differs = x_port_trusted = x_port_differs = False
    xff_index = forwarded_index = -1
    # The Host sent when it is not the one received, and the one received (the first line).
    host = rewrite_host if rewrite_host is not None else target_host
    received_host: bytes | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == _COOKIE and sticky_name is not None:
            value_left, found = _strip_cookie(value, sticky_name)
            if found is not None:
                sticky_value = found
            if value_left is None:
                continue
            value = value_left
        elif lowered == _CONNECTION:
            has_connection = True
            if closing:
                value = b"close"
            elif has_token(value, b"close"):
                if not keep_backend:
                    keep_alive = False
                else:
                    value = without_close(value)
                    if not value:
                        continue
        elif lowered == _XFF:
            xff_index = len(out)
        elif lowered == _FORWARDED:
            forwarded_index = len(out)
        elif lowered == _X_REAL_IP:
            if elide_x_real_ip:
                continue
        elif lowered == _X_PROTO:
            x_proto_trusted = True
            x_proto_differs |= value.strip().lower() != proto
        elif lowered == _X_PORT:
            x_port_trusted = True
            x_port_differs |= value.strip() != port_bytes
        elif lowered == _X_REQUEST_ID:
            has_request_id = True
        elif lowered == _HOST and host is not None:
            if received_host is not None:
                continue
            received_host = value
            value = host
        out.append((name, value))

    xff_chain = out[xff_index][1] if xff_index >= 0 else None
    if peer is not None:
        peer_ip, peer_port = peer
        ip = peer_ip.encode()
        forwarded = b'proto=%s;for="%s:%d";by=%s' % (
            proto,
            format_ip(peer_ip).encode(),
            peer_port,
            _forwarded_by(public_ip),
        )
        if xff_index >= 0:
            xff_name, xff_value = out[xff_index]
            out[xff_index] = (xff_name, xff_value + b", " + ip)
        if forwarded_index >= 0:
            fwd_name, fwd_value = out[forwarded_index]
            out[forwarded_index] = (fwd_name, fwd_value + b", " + forwarded)
        if xff_index < 0:
            out.append((b"X-Forwarded-For", ip))
        if forwarded_index < 0:
            out.append((b"Forwarded", forwarded))
        if send_x_real_ip:
            out.append((b"X-Real-IP", ip))
    if not x_port_trusted:
        out.append((b"X-Forwarded-Port", port_bytes))
    if not x_proto_trusted:
        out.append((b"X-Forwarded-Proto", proto))
    if closing and not has_connection:
        out.append((b"Connection", b"close"))
    if not has_request_id:
        out.append((b"X-Request-Id", request_id))
    out.append((sozu_id_header, request_id))
    if host is not None and received_host is None:
        out.append((b"Host", host))
    if rewrite_host is not None:
        asked = target_host if target_host is not None else received_host
        if asked is not None:
            out.append((b"X-Forwarded-Host", asked))
    if edits:
        out = apply_edits(out, edits)
    return RequestEdits(
        headers=out,
        sticky_value=sticky_value,
        keep_alive=keep_alive,
        xff_chain=xff_chain,
        x_proto_trusted=x_proto_trusted,
        x_proto_differs=x_proto_differs,
        x_port_trusted=x_port_trusted,
        x_port_differs=x_port_differs,
    )


@lru_cache(maxsize=64)
def _forwarded_by(public_ip: str) -> bytes:
    return f'"[{public_ip}]"'.encode() if ":" in public_ip else public_ip.encode()


def edit_response(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    request_id: bytes,
    closing: bool = False,
    sozu_id_header: bytes = b"Sozu-Id",
    sticky_name: bytes = b"SOZUBALANCEID",
    sticky_value: bytes | None = None,
    sticky_found: bytes | None = None,
    edits: Sequence[HeaderEdit] = (),
    hsts: bytes | None = None,
    hsts_force: bool = False,
) -> ResponseEdits:
    """The response header block sent to the client (docs/http.md, "Header edits").

    `sticky_value` is the backend's sticky id when the cluster is sticky; a Set-Cookie is
    added when it differs from `sticky_found` (the request's cookie). HSTS is added when the
    backend sent none, or replaces the backend's when `hsts_force`.
    """
    out: Headers = []
    keep_alive = True
    has_connection = False
    for name, value in headers:
        if name.lower() == _CONNECTION:
            has_connection = True
            if has_token(value, b"close"):
                keep_alive = False
            if closing:
                value = b"close"
        out.append((name, value))
    if closing and not has_connection:
        out.append((b"Connection", b"close"))
    if sticky_value is not None and sticky_value != sticky_found:
        out.append((b"Set-Cookie", sticky_name + b"=" + sticky_value + b"; Path=/"))
    out.append((sozu_id_header, request_id))
    if edits:
        out = apply_edits(out, edits)
    if hsts is not None:
        out = add_hsts(out, hsts, force=hsts_force)
    return ResponseEdits(out, keep_alive)


def add_hsts(headers: Headers, value: bytes, *, force: bool = False) -> Headers:
    """Add Strict-Transport-Security when absent; with `force`, replace any present."""
    present = any(name.lower() == _STS for name, _ in headers)
    if present and not force:
        return headers
    if present:
        headers = [h for h in headers if h[0].lower() != _STS]
    headers.append((b"Strict-Transport-Security", value))
    return headers


# Request headers the fast path cannot forward as received (their values are extended).
FORWARDING_HEADERS = H_X_FORWARDED_FOR | H_FORWARDED | H_X_FORWARDED_PROTO | H_X_FORWARDED_PORT


def forwarding_block(
    peer: tuple[str, int] | None,
    *,
    https: bool,
    public_ip: str,
    public_port: int,
    send_x_real_ip: bool,
) -> bytes:
    """The header lines `edit_request` adds for a request that carries no forwarding header
    of its own: X-Forwarded-For, Forwarded, [X-Real-IP], X-Forwarded-Port, X-Forwarded-Proto.
    They only depend on the connection, so a session builds them once."""
    if peer is None:
        return _forwarding_parts(None, https, public_ip, public_port, send_x_real_ip)[0]
    head, tail = _forwarding_parts(peer[0], https, public_ip, public_port, send_x_real_ip)
    return b"%s%d%s" % (head, peer[1], tail)


@lru_cache(maxsize=1024)
def _forwarding_parts(
    ip: str | None, https: bool, public_ip: str, public_port: int, send_x_real_ip: bool
) -> tuple[bytes, bytes]:
    """`forwarding_block` before and after the client's port (the connections of a client
    differ in their port only); without a client, the whole block and nothing."""
    proto = b"https" if https else b"http"
    rest = b"X-Forwarded-Port: %d\r\nX-Forwarded-Proto: %s\r\n" % (public_port, proto)
    if ip is None:
        return rest, b""
    encoded = ip.encode()
    head = b'X-Forwarded-For: %s\r\nForwarded: proto=%s;for="%s:' % (
        encoded,
        proto,
        format_ip(ip).encode(),
    )
    tail = b'";by=%s\r\n' % _forwarded_by(public_ip)
    if send_x_real_ip:
        tail += b"X-Real-IP: " + encoded + b"\r\n"
    return head, tail + rest


def fast_request_head(
    raw: bytes,
    special: int,
    block: bytes,
    *,
    request_id: bytes,
    sozu_id_header: bytes,
    closing: bool,
) -> bytes:
    """`edit_request`'s result, serialized, for a request that needs none of its edits of
    existing headers (the caller checked `special`): the head as received, with the proxy's
    headers added before its blank line, in `edit_request`'s order."""
    assert raw.endswith(b"\r\n\r\n")
    assert not special & FORWARDING_HEADERS
    assert not (closing and special & H_CONNECTION)
    parts = [raw[:-2], block]
    if closing:
        parts.append(b"Connection: close\r\n")
    if not special & H_X_REQUEST_ID:
        parts += (b"X-Request-Id: ", request_id, b"\r\n")
    parts += (sozu_id_header, b": ", request_id, b"\r\n\r\n")
    return b"".join(parts)


# The usual spelling of a backend's keep-alive, said close in place when the client's
# connection closes after the response.
_KEEP_ALIVE_LINE: Final = b"\r\nConnection: keep-alive\r\n"
_CLOSE_LINE: Final = b"\r\nConnection: close\r\n"


def one_connection_line(raw: bytes) -> bool:
    """Whether a head has exactly one Connection line (any case): its usual spelling can then
    be edited in place, with no other line saying something else."""
    return raw.lower().count(b"\r\nconnection:") == 1


def fast_response_head(
    raw: bytes,
    special: int,
    keep_alive: bool,
    *,
    request_id: bytes,
    sozu_id_header: bytes,
    closing: bool,
) -> bytes | None:
    """`edit_response`'s result, serialized, for an HTTP/1.1 response without sticky cookie,
    frontend edits or HSTS to add (the caller checked): as received, plus Sozu-Id (and
    `Connection: close` when closing: added, or said by its one `Connection: keep-alive`
    line). None when its Connection header needs the full edit (`keep_alive`: the response
    lets the backend connection stay open)."""
    assert raw.startswith(b"HTTP/1.1 ")
    assert raw.endswith(b"\r\n\r\n")
    if special & H_CONNECTION:
        if not keep_alive:
            return None  # its close is about the backend connection only, or the client's too
        if closing:
            if raw.count(_KEEP_ALIVE_LINE) != 1 or not one_connection_line(raw):
                return None
            raw = raw.replace(_KEEP_ALIVE_LINE, _CLOSE_LINE)
        return b"".join((raw[:-2], sozu_id_header, b": ", request_id, b"\r\n\r\n"))
    if closing:
        return b"".join(
            (raw[:-2], b"Connection: close\r\n", sozu_id_header, b": ", request_id, b"\r\n\r\n")
        )
    return b"".join((raw[:-2], sozu_id_header, b": ", request_id, b"\r\n\r\n"))


def serialize_head(start_line: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """`start_line CRLF (name: value CRLF)* CRLF`."""
    return b"\r\n".join([start_line, *[name + b": " + value for name, value in headers], b"", b""])
