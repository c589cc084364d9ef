"""Deterministic simulation harness of the UDP flow core (docs/udp.md, Simulation).

`python -m simulation.udp --seeds N | --seed S [--steps K] [--digests]`. Importing
it loads neither trio nor socket (a test checks), so it runs anywhere the core runs.
"""

from simulation.udp.env import parse_int
from simulation.udp.runner import (
    DEFAULT_SEEDS,
    DEFAULT_STEPS,
    CoreFactory,
    SeedResult,
    Simulation,
    run_seed,
    run_sweep,
    summary_line,
)

__all__ = [
    "DEFAULT_SEEDS",
    "DEFAULT_STEPS",
    "CoreFactory",
    "SeedResult",
    "Simulation",
    "parse_int",
    "run_seed",
    "run_sweep",
    "summary_line",
]
