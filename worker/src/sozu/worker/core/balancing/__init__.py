"""Pure load balancing: backend descriptors, hashing, HRW, Maglev, health hysteresis, selection.

Shared by the UDP, TCP and HTTP shells. Nothing here does I/O, reads a clock or owns a global
random generator: randomness is injected (`RandomSource`), loads are supplied by the caller.
"""

from sozu.worker.core.balancing.backend import Address, Backend
from sozu.worker.core.balancing.hashing import (
    DEFAULT_HASH_SEED,
    encode_address,
    fnv1a64,
    hash_backend,
    splitmix64_finalize,
)
from sozu.worker.core.balancing.health import HealthBook, HealthState
from sozu.worker.core.balancing.hrw import hrw_score, hrw_select
from sozu.worker.core.balancing.maglev import (
    DEFAULT_MAGLEV_SIZE,
    MaglevTable,
    smallest_prime_at_least,
)
from sozu.worker.core.balancing.policy import LoadBalancingPolicy, RandomSource
from sozu.worker.core.balancing.selector import BackendSelector

__all__ = [
    "DEFAULT_HASH_SEED",
    "DEFAULT_MAGLEV_SIZE",
    "Address",
    "Backend",
    "BackendSelector",
    "HealthBook",
    "HealthState",
    "LoadBalancingPolicy",
    "MaglevTable",
    "RandomSource",
    "encode_address",
    "fnv1a64",
    "hash_backend",
    "hrw_score",
    "hrw_select",
    "smallest_prime_at_least",
    "splitmix64_finalize",
]
