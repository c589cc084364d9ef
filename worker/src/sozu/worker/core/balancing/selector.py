"""Per-cluster backend selection: candidates, fail-open, then the cluster policy (docs/udp.md).

Candidates are the healthy, not-backed-off, non-backup backends; else the healthy backups; else,
when `fail_open` is set (the default, upstream's only behaviour), every backend not in retry
back-off, health ignored. With `fail_open=False` an all-unhealthy cluster yields no backend.
The candidate list is cached and recomputed only after a health, back-off or membership change;
the Maglev table is rebuilt only when the (address, weight) list changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from sozu.worker.core.balancing.backend import Backend
from sozu.worker.core.balancing.hashing import DEFAULT_HASH_SEED, encode_address
from sozu.worker.core.balancing.hrw import hrw_select
from sozu.worker.core.balancing.maglev import DEFAULT_MAGLEV_SIZE, MaglevTable
from sozu.worker.core.balancing.policy import LoadBalancingPolicy, RandomSource

_RANDOMISED = (LoadBalancingPolicy.RANDOM, LoadBalancingPolicy.POWER_OF_TWO)


class _Slot(msgspec.Struct, gc=False):
    backend: Backend
    encoded: bytes
    healthy: bool = True
    retry_ok: bool = True


class BackendSelector:
    """Selection state of one cluster. Not thread-safe; one per cluster per worker."""

    def __init__(
        self,
        policy: LoadBalancingPolicy = LoadBalancingPolicy.HRW,
        backends: Iterable[Backend] = (),
        *,
        rng: RandomSource | None = None,
        fail_open: bool = True,
        maglev_size: int = DEFAULT_MAGLEV_SIZE,
        hash_seed: int = DEFAULT_HASH_SEED,
    ) -> None:
        self._rng = rng
        self._check_rng(policy)
        self._policy = policy
        self.fail_open = fail_open
        self._maglev_size = maglev_size
        self._seed = hash_seed
        self._slots: list[_Slot] = []
        self._index: dict[str, int] = {}
        self._cursor = 0
        # Candidate cache: indices, (encoded, weight) pairs for HRW, an index mask for Maglev.
        self._cands: list[int] | None = None
        self._cands_fail_open = False
        self._cand_pairs: list[tuple[bytes, int]] = []
        self._cand_mask: list[bool] = []
        self._maglev: MaglevTable | None = None
        self._maglev_stale = True
        self._maglev_reachable = False
        self.fail_open_active = False
        self.fail_open_decisions = 0
        self.fail_open_regimes = 0
        self.maglev_rebuilds = 0
        self.set_backends(backends)

    # -- configuration

    def _check_rng(self, policy: LoadBalancingPolicy) -> None:
        if policy in _RANDOMISED and self._rng is None:
            raise ValueError(f"{policy.name} needs an injected rng")

    @property
    def policy(self) -> LoadBalancingPolicy:
        return self._policy

    def set_policy(self, policy: LoadBalancingPolicy) -> None:
        self._check_rng(policy)
        if policy is self._policy:
            return
        self._policy = policy
        self._cursor = 0
        if policy is LoadBalancingPolicy.MAGLEV:
            self._maglev_stale = True

    def backends(self) -> list[Backend]:
        return [s.backend for s in self._slots]

    def backend(self, backend_id: str) -> Backend | None:
        i = self._index.get(backend_id)
        return None if i is None else self._slots[i].backend

    def _placement(self) -> list[tuple[str, int, int]]:
        return [
            (s.backend.address[0], s.backend.address[1], s.backend.effective_weight)
            for s in self._slots
        ]

    def set_backends(self, backends: Iterable[Backend]) -> None:
        """Replace the backend list; health and back-off of surviving ids are kept."""
        before = self._placement()
        old = {s.backend.id: s for s in self._slots}
        slots: list[_Slot] = []
        index: dict[str, int] = {}
        for b in backends:
            if b.id in index:
                raise ValueError(f"duplicate backend id {b.id!r}")
            prev = old.get(b.id)
            slot = _Slot(b, encode_address(b.address))
            if prev is not None:
                slot.healthy, slot.retry_ok = prev.healthy, prev.retry_ok
            index[b.id] = len(slots)
            slots.append(slot)
        self._slots, self._index = slots, index
        self._membership_changed(before)

    def add_backend(self, backend: Backend) -> None:
        """Insert, or update in place (same id keeps its position, health and back-off)."""
        before = self._placement()
        i = self._index.get(backend.id)
        slot = _Slot(backend, encode_address(backend.address))
        if i is None:
            self._index[backend.id] = len(self._slots)
            self._slots.append(slot)
        else:
            prev = self._slots[i]
            slot.healthy, slot.retry_ok = prev.healthy, prev.retry_ok
            self._slots[i] = slot
        self._membership_changed(before)

    def remove_backend(self, backend_id: str) -> bool:
        if backend_id not in self._index:
            return False
        before = self._placement()
        self._slots = [s for s in self._slots if s.backend.id != backend_id]
        self._index = {s.backend.id: i for i, s in enumerate(self._slots)}
        self._membership_changed(before)
        return True

    def _membership_changed(self, before: list[tuple[str, int, int]]) -> None:
        self._cands = None
        if self._placement() != before:
            self._maglev_stale = True

    def set_healthy(self, backend_id: str, healthy: bool) -> None:
        slot = self._slots[self._index[backend_id]]
        if slot.healthy != healthy:
            slot.healthy = healthy
            self._cands = None

    def set_retry_ok(self, backend_id: str, retry_ok: bool) -> None:
        """`False` while the backend is in retry back-off: never selected, not even fail-open."""
        slot = self._slots[self._index[backend_id]]
        if slot.retry_ok != retry_ok:
            slot.retry_ok = retry_ok
            self._cands = None

    def is_healthy(self, backend_id: str) -> bool:
        return self._slots[self._index[backend_id]].healthy

    def available_count(self) -> int:
        """Backends that can take a new flow without falling open (for the cluster gauges)."""
        return sum(1 for s in self._slots if s.healthy and s.retry_ok)

    # -- selection

    def candidates(self) -> tuple[list[Backend], bool]:
        """The current candidate backends and whether they are a fail-open set."""
        cands = self._candidates()
        return [self._slots[i].backend for i in cands], self._cands_fail_open

    def _candidates(self) -> list[int]:
        cands = self._cands
        if cands is not None:
            return cands
        slots = self._slots
        fail_open = False
        cands = [
            i for i, s in enumerate(slots) if s.healthy and s.retry_ok and not s.backend.backup
        ]
        if not cands:
            cands = [i for i, s in enumerate(slots) if s.healthy and s.retry_ok]
        if not cands and self.fail_open:
            cands = [i for i, s in enumerate(slots) if s.retry_ok]
            fail_open = bool(cands)
        self._cands = cands
        self._cands_fail_open = fail_open
        self._cand_pairs = [(slots[i].encoded, slots[i].backend.effective_weight) for i in cands]
        mask = [False] * len(slots)
        for i in cands:
            mask[i] = True
        self._cand_mask = mask
        if self._maglev is not None and not self._maglev_stale:
            self._maglev_reachable = self._maglev.owns_any(mask)
        return cands

    def _ensure_maglev(self) -> MaglevTable:
        table = self._maglev
        if table is None or self._maglev_stale:
            pairs = [(s.encoded, s.backend.effective_weight) for s in self._slots]
            table = self._maglev = MaglevTable(pairs, self._maglev_size, self._seed)
            self._maglev_stale = False
            self.maglev_rebuilds += 1
            self._maglev_reachable = table.owns_any(self._cand_mask)
        return table

    def select(
        self, key: int | None = None, loads: Mapping[str, int] | None = None
    ) -> Backend | None:
        """Pick a backend for a new flow or request, or None when no backend may be used.

        `key` is the affinity key (used by HRW and Maglev only; without one they fall back to
        round robin). `loads` maps backend ids to their current load (LEAST_LOADED and
        POWER_OF_TWO; a missing id counts as 0).
        """
        cands = self._candidates()
        if not cands:
            return None
        if self._cands_fail_open:
            if not self.fail_open_active:
                self.fail_open_active = True
                self.fail_open_regimes += 1
            self.fail_open_decisions += 1
        else:
            self.fail_open_active = False
        pos = self._pick(cands, key, loads)
        chosen = self._slots[cands[pos]].backend
        if __debug__:
            assert 0 <= pos < len(cands)
            assert chosen.effective_weight >= 1
        return chosen

    def _round_robin(self, n: int) -> int:
        pos = self._cursor % n
        self._cursor = (pos + 1) % n
        return pos

    def _pick(self, cands: list[int], key: int | None, loads: Mapping[str, int] | None) -> int:
        policy = self._policy
        n = len(cands)
        if policy is LoadBalancingPolicy.HRW:
            if key is None:
                return self._round_robin(n)
            return hrw_select(key, self._cand_pairs, self._seed)
        if policy is LoadBalancingPolicy.MAGLEV:
            table = self._ensure_maglev()
            if key is None or not self._maglev_reachable:
                return self._round_robin(n)
            idx = table.lookup(key, self._cand_mask)
            assert idx >= 0
            assert self._cand_mask[idx]
            return cands.index(idx)
        if policy is LoadBalancingPolicy.ROUND_ROBIN:
            return self._round_robin(n)
        if policy is LoadBalancingPolicy.RANDOM:
            return self._weighted_random()
        loads = loads or {}
        if policy is LoadBalancingPolicy.LEAST_LOADED:
            best = 0
            for pos in range(1, n):
                if self._lighter(cands[pos], cands[best], loads):
                    best = pos
            return best
        assert policy is LoadBalancingPolicy.POWER_OF_TWO
        if n == 1:
            return 0
        first = self._draw(n)
        second = self._draw(n - 1)
        if second >= first:
            second += 1
        return second if self._lighter(cands[second], cands[first], loads) else first

    def _draw(self, n: int) -> int:
        assert self._rng is not None
        return min(int(self._rng.random() * n), n - 1)

    def _weighted_random(self) -> int:
        assert self._rng is not None
        pairs = self._cand_pairs
        r = self._rng.random() * sum(w for _, w in pairs)
        for pos, (_, w) in enumerate(pairs):
            r -= w
            if r < 0:
                return pos
        return len(pairs) - 1

    def _lighter(self, a: int, b: int, loads: Mapping[str, int]) -> bool:
        """Whether backend `a` is strictly less loaded than `b`, relative to their weights."""
        ba, bb = self._slots[a].backend, self._slots[b].backend
        return loads.get(ba.id, 0) * bb.effective_weight < loads.get(bb.id, 0) * ba.effective_weight
