"""Sweeps spread over processes: seeds are independent, so a sweep can run them in forked
children and hand back each seed's result and echoed lines in seed order, the same output as
one process gives. The function run per seed is inherited through fork, not pickled: a
session or core class defined in a test module works as it does in one process.

`multiprocessing` is imported only when a sweep forks: it imports `socket`, and importing the
harness must not (the tests check that neither the cores nor the harness import trio or socket).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar, cast

R = TypeVar("R")


class Result(Protocol):
    @property
    def digest(self) -> str: ...


D = TypeVar("D", bound=Result)

# The seed function of the sweep being run, set before its children fork (one sweep at a time:
# a sweep does not start another).
_current: Callable[[int], object] | None = None


def cpus() -> int:
    """The processors this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _call(seed: int) -> object:
    assert _current is not None, "a child runs only inside a sweep"
    return _current(seed)


def ordered(run: Callable[[int], R], seeds: range, jobs: int) -> Iterator[R]:
    """`run(seed)` for every seed, in seed order, over up to `jobs` processes (one: here)."""
    global _current
    jobs = min(jobs, len(seeds))
    if jobs > 1:
        import multiprocessing

        if "fork" in multiprocessing.get_all_start_methods():
            assert _current is None, "sweeps do not nest"
            _current = run
            try:
                with multiprocessing.get_context("fork").Pool(jobs) as pool:
                    # Small chunks: seeds differ in cost, and results stream back in order.
                    for result in pool.imap(_call, seeds, chunksize=2):
                        yield cast(R, result)
            finally:
                _current = None
            return
    yield from map(run, seeds)


def sweep(
    run_seed: Callable[[int, Callable[[str], None]], D],
    seeds: range,
    *,
    echo: Callable[[str], None] | None,
    digests: bool,
    jobs: int,
) -> list[D]:
    """A harness's sweep: `run_seed(seed, echo)` per seed, echoing each seed's lines (its
    failure, and its digest with `digests`) in seed order, over up to `jobs` processes."""

    def one(seed: int) -> tuple[D, list[str]]:
        lines: list[str] = []
        result = run_seed(seed, lines.append)
        if digests:
            lines.append(f"seed=0x{seed:x} digest={result.digest}")
        return result, lines

    results = []
    for result, lines in ordered(one, seeds, jobs):
        if echo is not None:
            for line in lines:
                echo(line)
        results.append(result)
    return results
