"""Exception boundaries of the supervisor: what one peer does ends only its own work.

A command connection, an answer task, a state-change job or a metrics scrape that raises is
logged with its traceback and counted by reason (`sozu_<where>_errors_total{reason}`); the
error never reaches the daemon's root nursery. Cancellation passes through untouched.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec

import trio
from prometheus_client.core import Metric

log = logging.getLogger("sozu.supervisor")

P = ParamSpec("P")

# Errors a peer causes by going away: counted, logged without a traceback.
PEER_ERRORS: tuple[type[BaseException], ...] = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ConnectionError,
    TimeoutError,
)


def reason_of(error: BaseException) -> str:
    """A short, bounded label for an error: its class name."""
    return type(error).__name__


class ErrorCounts:
    """Errors caught at the boundaries, by (where, reason)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def record(self, where: str, error: BaseException) -> None:
        self.counts[(where, reason_of(error))] += 1
        if isinstance(error, PEER_ERRORS):
            log.info("%s: %s: %s", where, reason_of(error), error)
        else:
            log.error("%s failed", where, exc_info=error)

    def guarded(
        self, where: str, function: Callable[P, Awaitable[None]]
    ) -> Callable[P, Awaitable[None]]:
        """`function`, with any Exception it raises recorded instead of propagated."""

        async def run(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                await function(*args, **kwargs)
            except Exception as error:
                self.record(where, error)

        return run

    def families(self) -> list[Metric]:
        by_where: dict[str, Metric] = {}
        for (where, reason), count in sorted(self.counts.items()):
            family = by_where.get(where)
            if family is None:
                family = by_where[where] = Metric(
                    f"sozu_{where}_errors", f"sozu {where} errors caught, by reason", "counter"
                )
            family.add_sample(f"sozu_{where}_errors_total", {"reason": reason}, float(count))
        return list(by_where.values())
