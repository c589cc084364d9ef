"""Rendezvous (highest random weight) hashing (docs/udp.md, Hashing: HRW and Maglev).

Per candidate, `u = (hash + 0.5) / 2**64` and `score = -weight / ln(u)`; the highest score
wins and ties keep the earlier candidate. Stateless: removing a non-winner never moves a key,
adding a backend only moves keys onto it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sozu.worker.core.balancing.hashing import (
    DEFAULT_HASH_SEED,
    FNV_PRIME,
    MASK64,
    hash_encoded,
    key_prefix_state,
)

_TWO64 = float(2**64)


def hrw_score(hash_value: int, weight: int) -> float:
    u = (float(hash_value) + 0.5) / _TWO64
    ln_u = math.log(u)
    # float(h) rounds up to 2**64 for the top ~2**10 hashes, so u == 1.0 and ln(u) == 0.0;
    # IEEE gives -w / +0.0 == -inf there, Python would raise instead.
    if ln_u == 0.0:
        return -math.inf
    return -weight / ln_u


def hrw_select(
    key: int, candidates: Sequence[tuple[bytes, int]], seed: int = DEFAULT_HASH_SEED
) -> int:
    """Index of the winning `(encoded_address, weight)` candidate, or -1 when there is none."""
    prefix = key_prefix_state(seed, key)
    log = math.log
    best = -1
    best_score = -math.inf
    # hash_encoded and hrw_score inlined: this loop is the whole cost of an HRW selection.
    for i, (encoded, weight) in enumerate(candidates):
        h = prefix
        for b in encoded:
            h = ((h ^ b) * FNV_PRIME) & MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK64
        h ^= h >> 31
        ln_u = log((float(h) + 0.5) / _TWO64)
        score = -weight / ln_u if ln_u != 0.0 else -math.inf
        if best < 0 or score > best_score:
            best = i
            best_score = score
    if __debug__ and best >= 0:
        scores = [hrw_score(hash_encoded(prefix, e), w) for e, w in candidates]
        assert scores[best] == best_score, "inlined HRW score differs from hrw_score"
        assert max(scores) == best_score, "HRW winner is not maximal"
        assert scores.index(best_score) == best, "HRW tie not won by the earlier candidate"
    return best
