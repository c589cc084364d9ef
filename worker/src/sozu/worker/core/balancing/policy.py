"""Load-balancing policy names and the injected randomness protocol."""

from __future__ import annotations

import enum
from typing import Protocol


class LoadBalancingPolicy(enum.StrEnum):
    """Upstream's `LoadBalancingAlgorithms` names (SCREAMING_SNAKE_CASE in configuration)."""

    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    LEAST_LOADED = "LEAST_LOADED"
    POWER_OF_TWO = "POWER_OF_TWO"
    HRW = "HRW"
    MAGLEV = "MAGLEV"


class RandomSource(Protocol):
    """What the randomised policies need; `random.Random` satisfies it."""

    def random(self) -> float: ...
