"""PROXY protocol v2 headers for UDP (udp.md §4): send-only, DGRAM, no TLVs.

Source is the real client, destination the backend. Same-family pairs give the 28-byte (IPv4)
or 52-byte (IPv6) header; mixed families (including a v4-mapped IPv6 against IPv4: nothing is
unmapped) give the 16-byte AF_UNSPEC header with a zero address length.
"""

from __future__ import annotations

import ipaddress
import struct

from sozu.worker.balancing.backend import Address

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
VERSION_2_PROXY = 0x21
INET_DGRAM = 0x12
INET6_DGRAM = 0x22
UNSPEC = 0x00
HEADER_PREFIX_LENGTH = 16
IPV4_HEADER_LENGTH = 28
IPV6_HEADER_LENGTH = 52

_PORTS = struct.Struct("!HH")


def _prefix(family: int, address_length: int) -> bytes:
    return SIGNATURE + bytes((VERSION_2_PROXY, family)) + address_length.to_bytes(2, "big")


def build_header(src: Address, dst: Address) -> bytes:
    s = ipaddress.ip_address(src[0])
    d = ipaddress.ip_address(dst[0])
    if s.version != d.version:
        return _prefix(UNSPEC, 0)
    family = INET_DGRAM if s.version == 4 else INET6_DGRAM
    body = s.packed + d.packed + _PORTS.pack(src[1], dst[1])
    return _prefix(family, len(body)) + body


def header_length(src: Address, dst: Address) -> int:
    s = ipaddress.ip_address(src[0]).version
    d = ipaddress.ip_address(dst[0]).version
    if s != d:
        return HEADER_PREFIX_LENGTH
    return IPV4_HEADER_LENGTH if s == 4 else IPV6_HEADER_LENGTH


def prepend_header(src: Address, dst: Address, payload: bytes) -> bytes:
    return build_header(src, dst) + payload
