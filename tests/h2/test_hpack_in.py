"""The HPACK decoder's fast path for indexed-only blocks, and the decoded lists it keeps:
the same answers as the `hpack` library's decoder, also after the dynamic table changes."""

from __future__ import annotations

import pytest
from hpack import Decoder, Encoder, OversizedHeaderListError

from sozu.worker.core.h2 import hpack_in
from sozu.worker.core.h2.hpack_in import FieldDecoder

# Index 62 (0xBE) is the newest dynamic table entry.
NEWEST = b"\xbe"


def test_an_indexed_block_follows_the_table_as_it_changes() -> None:
    fast, plain = FieldDecoder(), Decoder()
    encoder = Encoder()
    for value in (b"1", b"2", b"3"):
        block = encoder.encode([(b"x-a", value)])  # a literal that enters the table
        assert fast.decode(block, raw=True) == plain.decode(block, raw=True)
        for _ in range(2):  # the second time from the kept list
            assert fast.decode(NEWEST, raw=True) == [(b"x-a", value)]
            assert plain.decode(NEWEST, raw=True) == [(b"x-a", value)]


def test_a_table_size_change_forgets_the_kept_lists() -> None:
    fast = FieldDecoder()
    fast.decode(Encoder().encode([(b"x-a", b"1")]), raw=True)
    assert fast.decode(NEWEST, raw=True) == [(b"x-a", b"1")]
    fast.header_table_size = 0  # evicts every dynamic entry
    with pytest.raises(Exception, match="Invalid table index"):
        fast.decode(NEWEST, raw=True)


def test_the_header_list_limit_holds_for_kept_lists() -> None:
    fast = FieldDecoder(max_header_list_size=1000)
    block = b"\x82\x84\x87"  # :method GET, :path /, :scheme https
    assert fast.decode(block, raw=True) == [
        (b":method", b"GET"),
        (b":path", b"/"),
        (b":scheme", b"https"),
    ]
    fast.max_header_list_size = 50  # as a SETTINGS change would lower it
    with pytest.raises(OversizedHeaderListError):
        fast.decode(block, raw=True)


def test_kept_lists_are_bounded() -> None:
    fast = FieldDecoder()
    for a in range(0x81, 0xBE):
        for b in (0x81, 0x82, 0x83):
            fast.decode(bytes((a, b)), raw=True)
    assert 0 < len(fast._blocks) <= hpack_in.CACHED_BLOCKS
