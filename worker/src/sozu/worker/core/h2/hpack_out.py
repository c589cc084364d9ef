"""The HPACK encoder of sozu's HTTP/2 connections (sans-io), in place of the `hpack` library's.

Every field goes out as a literal without indexing (RFC 7541 6.2.2), its name by static-table
index when it has one, or as an indexed field when the static table has the exact pair (`:status
200`): nothing is ever added to the dynamic table, so there is no table to search and no
eviction to track, and the peer's decoder keeps an empty table. The first block (and the
first after the peer changes SETTINGS_HEADER_TABLE_SIZE) starts with a dynamic table size
update to 0, always within the peer's limit. Encoded fields are cached by (name, value) for the
short values that repeat (content types, servers, statuses), bounded in count. Strings are
sent as they are, never Huffman-coded: a few bytes more on the wire, none of the per-byte
Python work (most values of a response are new each time: ids, dates, lengths).

The `h2` library calls `encode(headers)` when it builds a HEADERS frame, and sets
`header_table_size` when the peer's setting changes: that is the whole interface it uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from hpack.table import HeaderTable

# Values longer than this are encoded each time (ids, dates, cookies rarely repeat).
CACHED_VALUE_MAX: Final = 64
CACHE_ENTRIES: Final = 4096
CACHED_STEMS: Final = 64
_TABLE_SIZE_ZERO: Final = b"\x20"
# name -> static index; (name, value) -> static index
_NAMES: Final[dict[bytes, int]] = {}
_PAIRS: Final[dict[tuple[bytes, bytes], int]] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _NAMES.setdefault(_name, _index)
    _PAIRS.setdefault((_name, _value), _index)


def encode_integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 5.1, with `flags` in the first byte's high bits."""
    assert value >= 0
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_string(data: bytes) -> bytes:
    """A string literal (not Huffman-coded)."""
    return encode_integer(len(data), 7, 0) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    index = _PAIRS.get((name, value))
    if index is not None:
        return encode_integer(index, 7, 0x80)
    index = _NAMES.get(name, 0)
    if index:
        return encode_integer(index, 4, 0) + encode_string(value)
    return b"\x00" + encode_string(name) + encode_string(value)


class FieldEncoder:
    """An HPACK encoder that never indexes (see the module docstring)."""

    __slots__ = ("_cache", "_size_update", "_stems")

    def __init__(self) -> None:
        self._cache: dict[tuple[bytes, bytes], bytes] = {}
        # id(stem) -> (the stem, held so that its id stays its own; its encoding)
        self._stems: dict[int, tuple[tuple[tuple[bytes, bytes], ...], bytes]] = {}
        self._size_update = True

    @property
    def header_table_size(self) -> int:
        return 0

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._size_update = True

    def encode_after(
        self, stem: tuple[tuple[bytes, bytes], ...], headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        """`encode(headers)` for a list that starts with the fields of `stem`, a tuple shared
        by many lists (response_reader.py): each field is encoded alone, so the stem's part
        of the block is kept (by the tuple's identity, bounded) and the rest encoded."""
        if self._size_update:
            return self.encode(headers)
        known = self._stems.get(id(stem))
        if known is None or known[0] is not stem:
            if len(self._stems) >= CACHED_STEMS:
                self._stems.clear()
            known = self._stems[id(stem)] = (stem, self.encode(stem))
        return known[1] + self.encode(headers[len(stem) :])

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        cache = self._cache
        parts = []
        if self._size_update:
            self._size_update = False
            parts.append(_TABLE_SIZE_ZERO)
        for name, value in headers:
            key = (name, value)
            field = cache.get(key)
            if field is None:
                field = encode_field(name, value)
                if len(value) <= CACHED_VALUE_MAX:
                    if len(cache) >= CACHE_ENTRIES:
                        cache.clear()
                    cache[key] = field
            parts.append(field)
        return b"".join(parts)
