"""Envelopes around requests and responses, and their two-stage decoding.

A request payload is the msgpack map `{v, id, request}`; a response payload is
`{v, id, status, message, content}`. Decoding reads the envelope first, with the request
kept raw, then the request by its tag: so a frame that carries an unknown request kind, a
newer protocol version or invalid fields still yields its id, and gets a Failure naming what
was wrong instead of a dropped connection.
"""

from __future__ import annotations

from typing import Final

import msgspec

from sozu.command.requests import REQUEST_KINDS, AnyRequest, Request, request_kind
from sozu.command.responses import AnyContent, ResponseStatus

PROTOCOL_VERSION: Final = 1
MAX_ID_LENGTH: Final = 256
# What decoding a peer's bytes may raise: ValueError for strings that are not UTF-8,
# RecursionError for a value nested too deeply to skip (a thousand levels take 1 KB).
UNREADABLE: Final = (msgspec.DecodeError, ValueError, RecursionError)


class ProtocolError(Exception):
    """A payload that cannot be read as an envelope at all (no usable id)."""


class RejectedRequest(Exception):
    """A readable envelope whose request cannot be accepted; answer Failure with `id`."""

    def __init__(self, request_id: str, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.message = message


class RequestEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """A request with its id and the protocol version its sender speaks."""

    v: int = PROTOCOL_VERSION
    id: str
    request: AnyRequest


class Response(msgspec.Struct, frozen=True, kw_only=True):
    """An answer to the request `id`; zero or more `processing`, then `ok` or `failure`."""

    v: int = PROTOCOL_VERSION
    id: str
    status: ResponseStatus
    message: str = ""
    content: AnyContent | None = None


class _RawRequestEnvelope(msgspec.Struct, frozen=True):
    v: int
    id: str
    request: msgspec.Raw


class _Tag(msgspec.Struct):
    type: str


class _IdOnly(msgspec.Struct):
    id: str


_msgpack_encoder: Final = msgspec.msgpack.Encoder()
_raw_request_decoder: Final = msgspec.msgpack.Decoder(_RawRequestEnvelope)
_request_decoder: Final = msgspec.msgpack.Decoder(AnyRequest)
_tag_decoder: Final = msgspec.msgpack.Decoder(_Tag)
_id_decoder: Final = msgspec.msgpack.Decoder(_IdOnly)
_response_decoder: Final = msgspec.msgpack.Decoder(Response)


def encode_request(request_id: str, request: Request, version: int = PROTOCOL_VERSION) -> bytes:
    """The msgpack payload of a request envelope."""
    return _msgpack_encoder.encode(RequestEnvelope(v=version, id=request_id, request=request))  # type: ignore[arg-type]


def encode_response(response: Response) -> bytes:
    """The msgpack payload of a response envelope."""
    return _msgpack_encoder.encode(response)


def decode_request(payload: bytes) -> RequestEnvelope:
    """Decode a request payload.

    Raises `ProtocolError` when no id can be read, `RejectedRequest` (with the id) when the
    envelope is readable but its version is newer, its request kind unknown or its fields
    invalid.
    """
    try:
        raw = _raw_request_decoder.decode(payload)
    except UNREADABLE as error:
        request_id = _read_id(payload)
        if request_id is None:
            raise ProtocolError(f"undecodable request envelope: {error}") from None
        raise RejectedRequest(request_id, f"invalid request envelope: {error}") from None
    if len(raw.id) > MAX_ID_LENGTH:
        raise ProtocolError(f"request id longer than {MAX_ID_LENGTH} characters")
    if raw.v > PROTOCOL_VERSION:
        raise RejectedRequest(
            raw.id,
            f"unsupported protocol version {raw.v} (this side speaks up to {PROTOCOL_VERSION})",
        )
    if raw.v < 1:
        raise RejectedRequest(raw.id, f"invalid protocol version {raw.v}")
    try:
        request = _request_decoder.decode(raw.request)
    except UNREADABLE as error:
        raise RejectedRequest(raw.id, _describe_request_error(raw.request, error)) from None
    return RequestEnvelope(v=raw.v, id=raw.id, request=request)


def _describe_request_error(raw: msgspec.Raw, error: Exception) -> str:
    try:
        kind = _tag_decoder.decode(raw).type
    except UNREADABLE:
        return f"invalid request: {error}"
    if kind not in REQUEST_KINDS:
        return f"unknown request kind {kind!r}"
    return f"invalid {kind} request: {error}"


def _read_id(payload: bytes) -> str | None:
    try:
        request_id = _id_decoder.decode(payload).id
    except UNREADABLE:
        return peek_id(payload)  # e.g. trailing bytes after a valid map
    return request_id if len(request_id) <= MAX_ID_LENGTH else None


def decode_response(payload: bytes) -> Response:
    """Decode a response payload; raises `ProtocolError` naming what is wrong."""
    try:
        return _response_decoder.decode(payload)
    except UNREADABLE as error:
        raise ProtocolError(f"undecodable response: {error}") from None


def peek_id(head: bytes) -> str | None:
    """The request id at the start of a truncated request payload, if it can be read.

    Used for oversize frames, of which only the first bytes are kept: the envelope is a
    msgpack map whose first entries are `v` and `id`, in either order.
    """
    view = memoryview(head)
    try:
        count, pos = _map_header(view, 0)
        for _ in range(count):
            key, pos = _str(view, pos)
            if key == "id":
                value, _ = _str(view, pos)
                return value if len(value) <= MAX_ID_LENGTH else None
            if key != "v":
                return None
            pos = _skip_int(view, pos)
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    return None


def _map_header(view: memoryview, pos: int) -> tuple[int, int]:
    byte = view[pos]
    if 0x80 <= byte <= 0x8F:
        return byte & 0x0F, pos + 1
    if byte == 0xDE:
        return int.from_bytes(view[pos + 1 : pos + 3], "big"), pos + 3
    raise ValueError("not a map")


def _str(view: memoryview, pos: int) -> tuple[str, int]:
    byte = view[pos]
    if 0xA0 <= byte <= 0xBF:
        length, pos = byte & 0x1F, pos + 1
    elif byte == 0xD9:
        length, pos = view[pos + 1], pos + 2
    elif byte == 0xDA:
        length, pos = int.from_bytes(view[pos + 1 : pos + 3], "big"), pos + 3
    else:
        raise ValueError("not a string")
    if pos + length > len(view):
        raise ValueError("truncated string")
    return bytes(view[pos : pos + length]).decode(), pos + length


def _skip_int(view: memoryview, pos: int) -> int:
    byte = view[pos]
    if byte <= 0x7F or byte >= 0xE0:
        return pos + 1
    sizes = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
    if byte in sizes:
        return pos + 1 + sizes[byte]
    raise ValueError("not an integer")


def failure(request_id: str, message: str) -> Response:
    return Response(id=request_id, status="failure", message=message)


def ok(request_id: str, message: str = "", content: AnyContent | None = None) -> Response:
    return Response(id=request_id, status="ok", message=message, content=content)


def processing(request_id: str, message: str = "", content: AnyContent | None = None) -> Response:
    return Response(id=request_id, status="processing", message=message, content=content)


__all__ = [
    "MAX_ID_LENGTH",
    "PROTOCOL_VERSION",
    "UNREADABLE",
    "ProtocolError",
    "RejectedRequest",
    "RequestEnvelope",
    "Response",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "failure",
    "ok",
    "peek_id",
    "processing",
    "request_kind",
]
