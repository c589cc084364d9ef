"""What every atheris target shares: the target record and the layout of its input bytes.

A byte target's input is one parameter byte, two bytes that seed the cut points (where the
input is split to arrive in pieces), then the input itself; `unpack` reads them back, and
`pack` builds the seeds. Targets whose input is structured data draw it with hypothesis
(`fuzz_one_input`), so that they share the strategies of the bounded runs in tests/fuzz.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings


@dataclass(frozen=True)
class Target:
    """One fuzz target: a function of the fuzzer's bytes, seeds to start from, and libFuzzer
    flags of its own."""

    name: str
    check: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    summary: str
    flags: tuple[str, ...] = ()


def pack(payload: bytes, parameter: int = 0, cut_seed: int = 0) -> bytes:
    """The input of a byte target that `unpack` reads as these values."""
    return bytes((parameter,)) + cut_seed.to_bytes(2, "big") + payload


def unpack(data: bytes) -> tuple[int, list[int], bytes]:
    """(parameter byte, cut points, payload) of a byte target's input."""
    if len(data) < 3:
        return 0, [], data
    seed = int.from_bytes(data[1:3], "big")
    payload = data[3:]
    draw = random.Random(seed)
    cuts = [draw.randrange(len(payload) + 1) for _ in range(seed % 7)]
    return data[0], cuts, payload


# For hypothesis-driven targets: the fuzzer, not hypothesis, decides how long to run, and a
# failure must raise at once rather than be shrunk and saved.
FUZZ_SETTINGS = settings(
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def random_seeds(name: str, count: int = 8, size: int = 8192) -> list[bytes]:
    """Seeds for a hypothesis-driven target whose examples take many choices: random bytes,
    enough for whole examples (an input that runs out before they are drawn runs nothing)."""
    draw = random.Random(name)
    return [draw.randbytes(size) for _ in range(count)]


# Let the fuzzer try long inputs from the start rather than growing them slowly.
LONG_INPUTS = ("-len_control=0",)


def hypothesis_target(test: Any) -> Callable[[bytes], None]:
    """A byte target running a `@given` test on the fuzzer's bytes."""
    run: Callable[[bytes], object] = test.hypothesis.fuzz_one_input

    def check(data: bytes) -> None:
        run(data)

    return check
