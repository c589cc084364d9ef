"""Flow keys and client affinity keys (docs/udp.md, Admission ladder and Hashing).

A `FlowKey` is `(ip, port)` with SOURCE_IP_PORT affinity and `(ip, 0)` with SOURCE_IP. The
affinity key handed to the balancer is a seeded, portable 64-bit hash of the client address
(`splitmix64(fnv1a(seed, family + ip [+ le16 port]))`), identical across workers and restarts.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TypeAlias

from sozu.worker.core.balancing.backend import Address
from sozu.worker.core.balancing.hashing import fnv1a64, splitmix64_finalize

FlowKey: TypeAlias = tuple[str, int]

_LE16 = struct.Struct("<H")


def flow_key(src: Address, with_port: bool) -> FlowKey:
    return src if with_port else (src[0], 0)


def _family_and_packed(host: str) -> bytes:
    # Fast path for canonical dotted quads (what recvfrom returns); anything else, including
    # leading zeros, goes through ipaddress, which also rejects what is not an IP literal.
    parts = host.split(".")
    if len(parts) == 4 and all(
        p.isascii() and p.isdigit() and len(p) <= 3 and (p[0] != "0" or len(p) == 1) for p in parts
    ):
        octets = [int(p) for p in parts]
        if max(octets) <= 255:
            return bytes((4, *octets))
    ip = ipaddress.ip_address(host)
    return bytes((ip.version,)) + ip.packed


def affinity_hash(seed: int, src: Address, with_port: bool) -> int:
    data = _family_and_packed(src[0])
    if with_port:
        data += _LE16.pack(src[1])
    return splitmix64_finalize(fnv1a64(seed, data))
