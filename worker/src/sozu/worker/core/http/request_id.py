"""ULID request and session identifiers, with an injected clock and random source.

A ULID is 128 bits: a 48-bit Unix time in milliseconds followed by 80 random bits, written as
26 Crockford base32 characters. Identifiers made within the same millisecond (or while the clock
stands still or steps back) increment the previous random part, so they sort in creation order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_LENGTH: Final = 26
_TIME_MAX: Final = (1 << 48) - 1
_RANDOM_MAX: Final = (1 << 80) - 1
_DECODE: Final = {c: i for i, c in enumerate(ALPHABET)} | {
    c.lower(): i for i, c in enumerate(ALPHABET)
}


# Two characters per 10 bits: the random part of every request id in eight lookups.
_PAIRS: Final = tuple(ALPHABET[i >> 5] + ALPHABET[i & 31] for i in range(1024))


def _encode80(value: int) -> str:
    pairs = _PAIRS
    return "".join(
        (
            pairs[value >> 70],
            pairs[(value >> 60) & 1023],
            pairs[(value >> 50) & 1023],
            pairs[(value >> 40) & 1023],
            pairs[(value >> 30) & 1023],
            pairs[(value >> 20) & 1023],
            pairs[(value >> 10) & 1023],
            pairs[value & 1023],
        )
    )


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def encode_ulid(value: int) -> str:
    """The 26-character text of a 128-bit ULID value."""
    if not 0 <= value < 1 << 128:
        raise ValueError("a ULID is a 128-bit unsigned integer")
    return _encode(value, ULID_LENGTH)


def decode_ulid(text: str) -> int:
    """The 128-bit value of a ULID text (case-insensitive)."""
    if len(text) != ULID_LENGTH or text[0] not in "01234567":
        raise ValueError(f"not a ULID: {text!r}")
    value = 0
    for char in text:
        digit = _DECODE.get(char)
        if digit is None:
            raise ValueError(f"not a ULID: {text!r}")
        value = (value << 5) | digit
    return value


def ulid_timestamp_ms(text: str) -> int:
    """The millisecond timestamp carried by a ULID."""
    return decode_ulid(text) >> 80


class UlidGenerator:
    """Makes monotonic ULIDs from `clock_ms()` (Unix ms) and `random_bytes(n)`."""

    __slots__ = ("_clock_ms", "_last_random", "_last_time", "_prefix", "_random_bytes", "_stem")

    def __init__(self, clock_ms: Callable[[], int], random_bytes: Callable[[int], bytes]) -> None:
        self._clock_ms = clock_ms
        self._random_bytes = random_bytes
        self._last_time = -1
        self._last_random = 0
        self._prefix = ""
        # The first 24 characters of the last identifier: the next one within the same
        # millisecond differs only in its last pair, unless the increment carries past it.
        self._stem = ""

    def generate(self) -> str:
        """A new ULID, greater than every one this generator returned before."""
        now = self._clock_ms()
        if not 0 <= now <= _TIME_MAX:
            raise ValueError(f"clock value {now} does not fit in 48 bits")
        if now > self._last_time:
            randomness = int.from_bytes(self._random_bytes(10), "big")
            self._set_time(now)
        else:
            randomness = self._last_random + 1
            low = randomness & 1023
            if low:
                self._last_random = randomness
                return self._stem + _PAIRS[low]
            if randomness > _RANDOM_MAX:
                # The random part is exhausted for this millisecond: borrow the next one.
                if self._last_time == _TIME_MAX:
                    raise OverflowError("ULID space exhausted")
                self._set_time(self._last_time + 1)
                randomness = 0
        self._last_random = randomness
        text = self._prefix + _encode80(randomness)
        self._stem = text[:24]
        return text

    def _set_time(self, time_ms: int) -> None:
        self._last_time = time_ms
        pairs = _PAIRS  # 48 bits as 10 characters: five pairs of 10 bits (the first 2 are 0)
        self._prefix = "".join(
            (
                pairs[time_ms >> 40],
                pairs[(time_ms >> 30) & 1023],
                pairs[(time_ms >> 20) & 1023],
                pairs[(time_ms >> 10) & 1023],
                pairs[time_ms & 1023],
            )
        )
