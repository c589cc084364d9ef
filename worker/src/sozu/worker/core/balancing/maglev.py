"""Maglev consistent hashing: a prime-sized, weighted lookup table (docs/udp.md, Hashing).

The table is built once per backend set (never per datagram, never on a health change: a lookup
probes forward past slots whose backend is not a candidate, which absorbs a partial outage and
keeps the healthy backends' keys pinned).
"""

from __future__ import annotations

from collections.abc import Sequence

from sozu.worker.core.balancing.hashing import DEFAULT_HASH_SEED, hash_encoded, key_prefix_state

DEFAULT_MAGLEV_SIZE = 65_537
OFFSET_KEY = 0x6F6666736574  # "offset"
SKIP_KEY = 0x736B69705F5F  # "skip__"


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def smallest_prime_at_least(n: int) -> int:
    n = max(n, 2)
    while not _is_prime(n):
        n += 1
    return n


class MaglevTable:
    """Slot -> backend index (position in the list given at build time)."""

    __slots__ = ("offsets", "quotas", "size", "skips", "slots", "slots_owned")

    def __init__(
        self,
        backends: Sequence[tuple[bytes, int]],
        requested_size: int = DEFAULT_MAGLEV_SIZE,
        seed: int = DEFAULT_HASH_SEED,
    ) -> None:
        """Build from `(encoded_address, weight)` pairs; weights must be >= 1."""
        m = smallest_prime_at_least(requested_size)
        self.size = m
        n = len(backends)
        off_prefix = key_prefix_state(seed, OFFSET_KEY)
        skip_prefix = key_prefix_state(seed, SKIP_KEY)
        self.offsets = [hash_encoded(off_prefix, e) % m for e, _ in backends]
        self.skips = [hash_encoded(skip_prefix, e) % (m - 1) + 1 for e, _ in backends]
        self.quotas = self._quotas([w for _, w in backends], m)
        self.slots: list[int] = [-1] * m
        self.slots_owned = [0] * n
        if n:
            self._fill()
        if __debug__ and n:
            assert -1 not in self.slots, "Maglev table not full"
            assert self.slots_owned == self.quotas

    @staticmethod
    def _quotas(weights: Sequence[int], m: int) -> list[int]:
        if not weights:
            return []
        assert all(w >= 1 for w in weights), weights
        total = sum(weights)
        quotas = [w * m // total for w in weights]
        # The remainder is smaller than len(weights): one pass hands out one slot each.
        for i in range(m - sum(quotas)):
            quotas[i % len(quotas)] += 1
        return quotas

    def _fill(self) -> None:
        m = self.size
        slots = self.slots
        owned = self.slots_owned
        offsets, skips, quotas = self.offsets, self.skips, self.quotas
        nxt = [0] * len(quotas)
        filled = 0
        while filled < m:
            for i, quota in enumerate(quotas):
                if owned[i] >= quota:
                    continue
                # (offset + j*skip) % m is a permutation of the slots since m is prime.
                j = nxt[i]
                c = (offsets[i] + j * skips[i]) % m
                while slots[c] >= 0:
                    j += 1
                    c = (offsets[i] + j * skips[i]) % m
                slots[c] = i
                nxt[i] = j + 1
                owned[i] += 1
                filled += 1
                if filled == m:
                    break

    def owns_any(self, allowed: Sequence[bool]) -> bool:
        """Whether some allowed backend owns at least one slot (else a lookup finds nothing)."""
        owned = self.slots_owned
        return any(a and owned[i] for i, a in enumerate(allowed))

    def lookup(self, key: int, allowed: Sequence[bool]) -> int:
        """First backend index probing `key % size`, +1, ... with `allowed[index]`; -1 if none.

        Callers that look up repeatedly with one candidate set check `owns_any` once and skip
        the lookup when it is false, so a disjoint set never costs a full table scan per call.
        """
        m = self.size
        slots = self.slots
        slot = key % m
        for _ in range(m):
            idx = slots[slot]
            if allowed[idx]:
                return idx
            slot += 1
            if slot == m:
                slot = 0
        return -1
