"""Rendezvous (highest random weight) hashing, udp.md §3.4.

Per candidate, `u = (hash + 0.5) / 2**64` and `score = -weight / ln(u)`; the highest score
wins and ties keep the earlier candidate. Stateless: removing a non-winner never moves a key,
adding a backend only moves keys onto it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sozu.worker.balancing.hashing import DEFAULT_HASH_SEED, hash_encoded, key_prefix_state

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
    best = -1
    best_score = -math.inf
    for i, (encoded, weight) in enumerate(candidates):
        score = hrw_score(hash_encoded(prefix, encoded), weight)
        if best < 0 or score > best_score:
            best = i
            best_score = score
    if __debug__ and best >= 0:
        assert all(hrw_score(hash_encoded(prefix, e), w) <= best_score for e, w in candidates), (
            "HRW winner is not maximal"
        )
    return best
