"""Portable 64-bit hashing used for backend placement and client affinity keys (docs/udp.md).

FNV-1a/64 over an explicit byte layout with a seeded offset basis, then the splitmix64
finalizer. Never the builtin `hash()`: it depends on PYTHONHASHSEED and differs between
processes, while every worker must place a key on the same backend.
"""

from __future__ import annotations

import ipaddress
import struct

from sozu.worker.core.balancing.backend import Address

DEFAULT_HASH_SEED = 0x9E3779B97F4A7C15

MASK64 = (1 << 64) - 1
FNV_OFFSET_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3

_LE64 = struct.Struct("<Q")
_LE16 = struct.Struct("<H")


def splitmix64_finalize(s: int) -> int:
    s = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    s = ((s ^ (s >> 27)) * 0x94D049BB133111EB) & MASK64
    return s ^ (s >> 31)


def fnv1a64(seed: int, data: bytes, state: int | None = None) -> int:
    """FNV-1a/64 of `data`, from the seeded basis or from a previous `state` (a prefix hash)."""
    s = (FNV_OFFSET_BASIS ^ seed) & MASK64 if state is None else state
    for b in data:
        s = ((s ^ b) * FNV_PRIME) & MASK64
    return s


def encode_address(addr: Address) -> bytes:
    """Family byte (4 or 6), packed IP, little-endian port: the hashed address layout."""
    ip = ipaddress.ip_address(addr[0])
    return bytes((ip.version,)) + ip.packed + _LE16.pack(addr[1])


def key_prefix_state(seed: int, key: int) -> int:
    """FNV state after the 8 key bytes; lets HRW hash many addresses for one key cheaply."""
    return fnv1a64(seed, _LE64.pack(key & MASK64))


def hash_encoded(prefix_state: int, encoded_addr: bytes) -> int:
    s = prefix_state
    for b in encoded_addr:
        s = ((s ^ b) * FNV_PRIME) & MASK64
    return splitmix64_finalize(s)


def hash_backend(seed: int, key: int, addr: Address) -> int:
    """splitmix64(fnv1a(seed, le64(key) + family + ip + le16(port)))."""
    return hash_encoded(key_prefix_state(seed, key), encode_address(addr))
