"""Deterministic simulation harness of the HTTP/1.1 session core (core/http1/LIFECYCLE.md).

`python -m simulation.http1 --seeds N | --seed S [--steps K] [--digests] [--trace]`. Importing
it loads neither trio nor socket (a test checks), so it runs anywhere the core runs.
"""

from simulation.http1.runner import (
    DEFAULT_SEEDS,
    DEFAULT_STEPS,
    SeedResult,
    SessionFactory,
    Simulation,
    run_seed,
    run_sweep,
    summary_line,
)
from simulation.udp.env import parse_int

__all__ = [
    "DEFAULT_SEEDS",
    "DEFAULT_STEPS",
    "SeedResult",
    "SessionFactory",
    "Simulation",
    "parse_int",
    "run_seed",
    "run_sweep",
    "summary_line",
]
