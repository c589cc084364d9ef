"""Backend back-off after failed connections (upstream `lib/src/retry.rs`), sans-io.

A failure outside a running back-off draws a wait uniformly in [1, 2**tries) seconds (1 s the
first time) and raises `tries` (capped at 6); the backend may not be used until the wait is
over. A backend with `tries >= 6` is down. A successful connection resets everything. Time
and randomness are injected.
"""

from __future__ import annotations

from typing import Final

from sozu.worker.core.balancing import RandomSource

MAX_TRIES: Final = 6


class RetryPolicy:
    """The back-off state of one backend."""

    __slots__ = ("_rng", "tries", "until")

    def __init__(self, rng: RandomSource) -> None:
        self._rng = rng
        self.tries = 0
        self.until = 0.0

    def can_open(self, now: float) -> bool:
        return now >= self.until

    @property
    def is_down(self) -> bool:
        return self.tries >= MAX_TRIES

    def fail(self, now: float) -> bool:
        """Record a failed connection; returns True when the backend just went down."""
        if now < self.until:
            return False  # already backing off: concurrent failures count once
        was_down = self.is_down
        span = 2**self.tries - 1  # wait in [1, 2**tries): 1 s exactly the first time
        self.until = now + 1.0 + self._rng.random() * span
        self.tries = min(self.tries + 1, MAX_TRIES)
        assert self.until > now
        return self.is_down and not was_down

    def succeed(self) -> bool:
        """Record a successful connection; returns True when a down backend came back up."""
        was_down = self.is_down
        self.tries = 0
        self.until = 0.0
        return was_down
