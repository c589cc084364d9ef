"""FieldEncoder (hpack_out.py): `encode_after` (a block whose first fields are a stem shared by
many responses, its part of the block kept) gives the bytes `encode` gives, before and after
a table size update, for stems met again or new, and the `hpack` library's decoder reads the
blocks back as the fields."""

from __future__ import annotations

from hpack import Decoder
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.worker.core.h2.hpack_out import FieldEncoder

FIELDS = [
    (b":status", b"200"),
    (b":status", b"404"),
    (b"server", b"nginx/1.22.1"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"13"),
    (b"x-long", b"v" * 100),
    (b"sozu-id", b"01JEXAMPLE0000000000000000"),
]
fields = st.lists(st.sampled_from(FIELDS), max_size=5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 3), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 3), fields, st.booleans()), max_size=12),
)
def test_encode_after_is_encode(stem_sizes: list[int], steps: list[object]) -> None:
    stems = [tuple(FIELDS[i % len(FIELDS)] for i in range(n)) for n in stem_sizes]
    kept, plain = FieldEncoder(), FieldEncoder()
    decoder = Decoder()
    for step in steps:
        assert isinstance(step, tuple)
        index, tail, resize = step
        stem = stems[index % len(stems)]
        if resize:
            kept.header_table_size = plain.header_table_size = 4096
        headers = [*stem, *tail]
        if not headers:
            continue
        block = kept.encode_after(stem, headers)
        assert block == plain.encode(headers)
        assert list(decoder.decode(block, raw=True)) == headers


def test_a_stem_is_kept_by_identity() -> None:
    encoder = FieldEncoder()
    encoder.encode([(b":status", b"200")])  # the first block's table size update
    stem = tuple([(b":status", b"200"), (b"server", b"sozu")])
    first = encoder.encode_after(stem, [*stem, (b"x", b"1")])
    assert len(encoder._stems) == 1
    again = encoder.encode_after(stem, [*stem, (b"x", b"2")])
    assert first[:-1] == again[:-1]
    equal = tuple(list(stem))
    assert equal is not stem
    assert encoder.encode_after(equal, [*equal]) == encoder.encode([*stem])
    assert len(encoder._stems) == 2  # an equal tuple is another stem
