"""PROXY protocol v2 headers for UDP: send-only, DGRAM, no TLVs (docs/udp.md, PROXY protocol).

Source is the real client, destination the backend. Same-family pairs give the 28-byte (IPv4)
or 52-byte (IPv6) header; mixed families (including a v4-mapped IPv6 against IPv4: nothing is
unmapped) give the 16-byte AF_UNSPEC header with a zero address length. The bytes come from
the shared builder in `sozu.worker.core.proxy_protocol`.
"""

from __future__ import annotations

import ipaddress

from sozu.worker.core.balancing.backend import Address
from sozu.worker.core.proxy_protocol import PREFIX_LENGTH, build_v2

HEADER_PREFIX_LENGTH = PREFIX_LENGTH
IPV4_HEADER_LENGTH = 28
IPV6_HEADER_LENGTH = 52


def build_header(src: Address, dst: Address) -> bytes:
    return build_v2(src, dst, stream=False)


def header_length(src: Address, dst: Address) -> int:
    s = ipaddress.ip_address(src[0]).version
    d = ipaddress.ip_address(dst[0]).version
    if s != d:
        return HEADER_PREFIX_LENGTH
    return IPV4_HEADER_LENGTH if s == 4 else IPV6_HEADER_LENGTH


def prepend_header(src: Address, dst: Address, payload: bytes) -> bytes:
    return build_header(src, dst) + payload
