"""The HPACK decoder of sozu's HTTP/2 client connections (sans-io): the `hpack` library's,
with a fast path for the blocks clients send most once their dynamic table is warm.

Browsers and load generators index every request header after the first request, so a
block is then nothing but one-byte indexed fields (RFC 7541 6.1, index 1 to 126). Such a
block neither changes the dynamic table nor holds a literal or a Huffman string: each byte
is a table lookup, and the same block decodes to the same list for as long as the table
does not change. Those lists are kept by block (bounded); any block that goes through the
library, and any change of the table's size, may change the table and empties them. The
fast path applies the same header list limit and table size check as the library does.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Decoder, HeaderTuple, OversizedHeaderListError
from hpack.hpack import DEFAULT_MAX_HEADER_LIST_SIZE

# Decoded indexed-only blocks kept per connection.
CACHED_BLOCKS = 64


class FieldDecoder(Decoder):
    """`hpack.Decoder` with the indexed-only fast path (see the module docstring)."""

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        self._blocks: dict[bytes, tuple[list[HeaderTuple], int]] = {}
        super().__init__(max_header_list_size=max_header_list_size)

    @property
    def header_table_size(self) -> int:
        return int(self.header_table.maxsize)

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._forget()
        self.header_table.maxsize = value

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        known = self._blocks.get(data) if raw else None  # kept only if indexed-only
        if known is None and raw and data and min(data) > 0x80 and max(data) < 0xFF:
            blocks = self._blocks
            known = self._indexed(data)
            if len(blocks) >= CACHED_BLOCKS:
                blocks.clear()
            blocks[data] = known
        if known is not None:
            headers, size = known
            limit = self.max_header_list_size
            if size > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
            self._assert_valid_table_size()
            return headers
        self._forget()
        return super().decode(data, raw)

    def _indexed(self, data: bytes) -> tuple[list[HeaderTuple], int]:
        """An indexed-only block's headers and their size as the header list limit counts
        it (an index past the table raises the library's error)."""
        table = self.header_table
        size = 0
        headers = []
        for byte in data:
            name, value = table.get_by_index(byte & 0x7F)
            size += 32 + len(name) + len(value)
            headers.append(HeaderTuple(name, value))
        return headers, size

    def _forget(self) -> None:
        if self._blocks:
            self._blocks.clear()

    @classmethod
    def replacing(cls, decoder: Decoder) -> FieldDecoder:
        """One with the limits `decoder` (the library's, as the connection set it) has."""
        fast = cls(max_header_list_size=decoder.max_header_list_size)
        fast.max_allowed_table_size = decoder.max_allowed_table_size
        fast.header_table_size = decoder.header_table_size
        return fast
