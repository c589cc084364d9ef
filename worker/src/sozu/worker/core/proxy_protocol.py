"""PROXY protocol v2: header building (stream or datagram) and incremental parsing (sans-io).

Only version 2 is spoken, as upstream. `parse_v2` is fed the bytes received so far and
returns None while the header is incomplete, a `ProxyHeader` once it is whole, or raises
`ProxyProtocolError` for anything that cannot become a valid header (bad signature, version,
command, family, transport, length over the maximum). A stream listener passes
`transport=TRANSPORT_STREAM`: a PROXY header announcing a datagram flow does not describe its
connection and is refused like a malformed one. Addresses are `(host, port)` tuples.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, Literal

import msgspec

SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
PREFIX_LENGTH: Final = 16
# Upstream refuses headers over 232 bytes (16-byte prefix + the 216 bytes of an AF_UNIX pair).
MAX_HEADER_LENGTH: Final = 232

COMMAND_LOCAL: Final = 0x20
COMMAND_PROXY: Final = 0x21
FAMILY_UNSPEC: Final = 0x00
FAMILY_INET: Final = 0x10
FAMILY_INET6: Final = 0x20
FAMILY_UNIX: Final = 0x30
TRANSPORT_UNSPEC: Final = 0x00
TRANSPORT_STREAM: Final = 0x01
TRANSPORT_DGRAM: Final = 0x02
_TRANSPORT_NAMES: Final = {
    TRANSPORT_UNSPEC: "UNSPEC",
    TRANSPORT_STREAM: "STREAM",
    TRANSPORT_DGRAM: "DGRAM",
}

_PORTS: Final = struct.Struct("!HH")
Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """Bytes that are not, and cannot become, a valid PROXY v2 header."""


class ProxyHeader(msgspec.Struct, frozen=True):
    """A parsed header. `source`/`destination` are None for LOCAL, UNSPEC and UNIX."""

    command: Literal["LOCAL", "PROXY"]
    source: Address | None
    destination: Address | None
    length: int  # bytes the header occupies, TLVs included


def build_v2(source: Address, destination: Address, *, stream: bool = True) -> bytes:
    """A PROXY command header; mixed address families give the 16-byte UNSPEC header."""
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    transport = TRANSPORT_STREAM if stream else TRANSPORT_DGRAM
    if src.version != dst.version:
        return SIGNATURE + bytes((COMMAND_PROXY, FAMILY_UNSPEC)) + b"\x00\x00"
    family = FAMILY_INET if src.version == 4 else FAMILY_INET6
    body = src.packed + dst.packed + _PORTS.pack(source[1], destination[1])
    return (
        SIGNATURE + bytes((COMMAND_PROXY, family | transport)) + len(body).to_bytes(2, "big") + body
    )


def read_v2(
    data: bytes | bytearray, *, transport: int | None = None
) -> tuple[ProxyHeader | None, int]:
    """`parse_v2` with what a reader needs next: the header and 0 once `data` holds it all,
    else None and how many more bytes complete it, so that a reader can take exactly the
    header and leave what follows it (a TLS ClientHello) in the socket. ProxyProtocolError
    as soon as the bytes cannot become a header."""
    header = parse_v2(data, transport=transport)
    if header is not None:
        return header, 0
    if len(data) < PREFIX_LENGTH:
        return None, PREFIX_LENGTH - len(data)
    return None, PREFIX_LENGTH + int.from_bytes(data[14:16], "big") - len(data)


def parse_v2(
    data: bytes | bytearray | memoryview, *, transport: int | None = None
) -> ProxyHeader | None:
    """Parse a header from the start of `data`; None if more bytes are needed. `transport`:
    the connection's own (TRANSPORT_STREAM or TRANSPORT_DGRAM), which a PROXY command must
    announce (or UNSPEC); None takes either."""
    view = memoryview(data)
    seen = min(len(view), len(SIGNATURE))
    if bytes(view[:seen]) != SIGNATURE[:seen]:
        raise ProxyProtocolError("not a PROXY protocol v2 header (bad signature)")
    if len(view) < PREFIX_LENGTH:
        return None
    version_command = view[12]
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"unsupported PROXY protocol version {version_command >> 4}")
    if version_command not in (COMMAND_LOCAL, COMMAND_PROXY):
        raise ProxyProtocolError(f"unknown PROXY protocol command {version_command & 0x0F}")
    family = view[13] & 0xF0
    announced = view[13] & 0x0F
    if announced not in _TRANSPORT_NAMES:
        raise ProxyProtocolError(f"unknown PROXY protocol transport {announced}")
    if (
        transport is not None
        and version_command == COMMAND_PROXY
        and announced not in (transport, TRANSPORT_UNSPEC)
    ):
        raise ProxyProtocolError(
            f"a PROXY protocol header for {_TRANSPORT_NAMES[announced]} on a"
            f" {_TRANSPORT_NAMES[transport]} connection"
        )
    body_length = int.from_bytes(view[14:16], "big")
    total = PREFIX_LENGTH + body_length
    if total > MAX_HEADER_LENGTH:
        raise ProxyProtocolError(f"PROXY protocol header of {total} bytes is too long")
    if len(view) < total:
        return None
    body = view[PREFIX_LENGTH:total]
    command: Literal["LOCAL", "PROXY"] = "LOCAL" if version_command == COMMAND_LOCAL else "PROXY"
    if command == "LOCAL" or family in (FAMILY_UNSPEC, FAMILY_UNIX):
        return ProxyHeader(command, None, None, total)
    if family == FAMILY_INET:
        needed, size = 12, 4
    elif family == FAMILY_INET6:
        needed, size = 36, 16
    else:
        raise ProxyProtocolError(f"unknown PROXY protocol address family {family >> 4}")
    if body_length < needed:
        raise ProxyProtocolError(f"address block of {body_length} bytes is too short")
    src = ipaddress.ip_address(bytes(body[:size]))
    dst = ipaddress.ip_address(bytes(body[size : 2 * size]))
    src_port, dst_port = _PORTS.unpack_from(body, 2 * size)
    return ProxyHeader(command, (src.compressed, src_port), (dst.compressed, dst_port), total)
