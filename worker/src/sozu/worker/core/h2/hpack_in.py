"""The HPACK decoder of sozu's HTTP/2 client connections (sans-io): the `hpack` library's,
with a fast path for the blocks clients send most once their dynamic table is warm.

Browsers and load generators index every request header after the first request, so a
block is then nothing but one-byte indexed fields (RFC 7541 6.1, index 1 to 126). Such a
block neither changes the dynamic table nor holds a literal or a Huffman string: each byte
is a table lookup. Any other block goes through the library, and the fast path applies the
same header list limit and table size check as the library does.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Decoder, HeaderTuple, OversizedHeaderListError


class FieldDecoder(Decoder):
    """`hpack.Decoder` with the indexed-only fast path (see the module docstring)."""

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        if raw and data and min(data) > 0x80 and max(data) < 0xFF:
            table = self.header_table
            limit = self.max_header_list_size
            size = 0
            headers = []
            for byte in data:
                name, value = table.get_by_index(byte & 0x7F)
                size += 32 + len(name) + len(value)
                if size > limit:
                    raise OversizedHeaderListError(
                        f"A header list larger than {limit} has been received"
                    )
                headers.append(HeaderTuple(name, value))
            self._assert_valid_table_size()
            return headers
        return super().decode(data, raw)

    @classmethod
    def replacing(cls, decoder: Decoder) -> FieldDecoder:
        """One with the limits `decoder` (the library's, as the connection set it) has."""
        fast = cls(max_header_list_size=decoder.max_header_list_size)
        fast.max_allowed_table_size = decoder.max_allowed_table_size
        fast.header_table_size = decoder.header_table_size
        return fast
