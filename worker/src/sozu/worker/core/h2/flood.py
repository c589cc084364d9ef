"""The HTTP/2 flood guard of a client connection: reads the frame headers of what the client
sends, before the `h2` library parses it, counts frames by type, and finds the floods that
cost a server work without asking it anything (the "Defences" section of LIFECYCLE.md,
beside this module).

Per window of FLOOD_WINDOW seconds: PING, SETTINGS, empty DATA, WINDOW_UPDATE on stream 0
and PRIORITY frames, each against its limit (a client returns connection window as it reads
the DATA it is sent: each DATA frame sent in the window allows one more stream-0
WINDOW_UPDATE, `credit`); per header block, the CONTINUATION frames that
follow a HEADERS without END_HEADERS. Rapid reset (RST_STREAM) is counted by the session
from the library's events, header lists past their limit once decoded (HPACK bombs) from
the library's error. A flood found ends the connection with GOAWAY ENHANCE_YOUR_CALM.
Sans-io: bytes and `now` in, the kind of flood (or None) out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from sozu.worker.core.http1.counters import HttpCounters

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADER_SIZE: Final = 9
FLOOD_WINDOW: Final = 1.0

# Frame types (RFC 9113 §6) and the flags read here.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING = 0, 1, 2, 3, 4, 5, 6
GOAWAY, WINDOW_UPDATE, CONTINUATION = 7, 8, 9
FLAG_ACK = 0x1
FLAG_END_STREAM = 0x1
FLAG_END_HEADERS = 0x4

FRAME_NAMES: Final = (
    "data",
    "headers",
    "priority",
    "rst_stream",
    "settings",
    "push_promise",
    "ping",
    "goaway",
    "window_update",
    "continuation",
)

# Kinds of flood, as the metric labels them.
PING_FLOOD = "ping"
SETTINGS_FLOOD = "settings"
EMPTY_DATA_FLOOD = "empty_data"
WINDOW_UPDATE_FLOOD = "window_update_stream0"
PRIORITY_FLOOD = "priority"
CONTINUATION_FLOOD = "continuation"
RST_STREAM_FLOOD = "rst_stream"
HEADER_LIST_FLOOD = "header_list"  # found by the h2 library while decoding (HPACK bombs)
FLOOD_KINDS: Final = (
    PING_FLOOD,
    SETTINGS_FLOOD,
    EMPTY_DATA_FLOOD,
    WINDOW_UPDATE_FLOOD,
    PRIORITY_FLOOD,
    CONTINUATION_FLOOD,
    RST_STREAM_FLOOD,
    HEADER_LIST_FLOOD,
)


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """The listener's h2_max_* limits (upstream's names and defaults). PRIORITY frames have
    no upstream key: sozu bounds them like empty DATA."""

    ping: int = 100
    settings: int = 50
    empty_data: int = 100
    window_update_stream0: int = 100
    priority: int = 100
    continuation: int = 20

    def __post_init__(self) -> None:
        for name in ("ping", "settings", "empty_data", "window_update_stream0", "priority"):
            assert getattr(self, name) >= 1, name
        assert self.continuation >= 1


class FloodGuard:
    """Frame headers of one client connection's bytes, in order, across reads."""

    __slots__ = (
        "_continuations",
        "_header",
        "_in_block",
        "_preface",
        "_skip",
        "counters",
        "counts",
        "credit",
        "limits",
        "since",
    )

    def __init__(self, limits: FloodLimits, counters: HttpCounters) -> None:
        self.limits = limits
        # The listener's counters: frames received by type go to `h2_frames` (index: type,
        # unknown types last).
        self.counters = counters
        self._preface = len(PREFACE)  # preface bytes still to pass over
        self._skip = 0  # payload bytes of the current frame still to pass over
        self._header = b""  # the start of a frame header cut by a read
        self._in_block = False  # a HEADERS without END_HEADERS waits for its CONTINUATION
        self._continuations = 0
        # per-window counts: ping, settings, empty data, stream-0 window updates, priority
        self.counts = [0, 0, 0, 0, 0]
        self.credit = 0  # DATA frames sent in this window (see the module docstring)
        self.since = -FLOOD_WINDOW

    def feed(self, data: bytes, now: float) -> str | None:
        """Read `data` (the next bytes from the client); the flood it completes, if any."""
        if now - self.since >= FLOOD_WINDOW:
            self.since = now
            counts = self.counts
            counts[0] = counts[1] = counts[2] = counts[3] = counts[4] = 0
            self.credit = 0
        position = 0
        size = len(data)
        if self._preface:
            # The h2 library checks the preface's bytes; only its length matters here.
            step = min(self._preface, size)
            self._preface -= step
            position = step
        while position < size:
            if self._skip:
                step = min(self._skip, size - position)
                self._skip -= step
                position += step
                continue
            if self._header:
                need = HEADER_SIZE - len(self._header)
                header = self._header + data[position : position + need]
                position += min(need, size - position)
                if len(header) < HEADER_SIZE:
                    self._header = header
                    return None
                self._header = b""
            elif size - position >= HEADER_SIZE:
                header = data[position : position + HEADER_SIZE]
                position += HEADER_SIZE
            else:
                self._header = data[position:]
                return None
            flood = self._frame(header)
            if flood is not None:
                return flood
        return None

    def _frame(self, header: bytes) -> str | None:
        length = int.from_bytes(header[:3], "big")
        kind = header[3]
        flags = header[4]
        self._skip = length
        self.counters.h2_frames[kind if kind < len(FRAME_NAMES) else len(FRAME_NAMES)] += 1
        limits = self.limits
        counts = self.counts
        if self._in_block:
            if kind != CONTINUATION:
                self._in_block = False  # the library answers this with a connection error
            else:
                self._continuations += 1
                if self._continuations > limits.continuation:
                    return CONTINUATION_FLOOD
                if flags & FLAG_END_HEADERS:
                    self._in_block = False
                return None
        if kind == DATA:
            if length == 0 and not flags & FLAG_END_STREAM:
                counts[2] += 1
                if counts[2] > limits.empty_data:
                    return EMPTY_DATA_FLOOD
        elif kind in (HEADERS, PUSH_PROMISE):
            if not flags & FLAG_END_HEADERS:
                self._in_block = True
                self._continuations = 0
        elif kind == PING:
            if not flags & FLAG_ACK:
                counts[0] += 1
                if counts[0] > limits.ping:
                    return PING_FLOOD
        elif kind == SETTINGS:
            if not flags & FLAG_ACK:
                counts[1] += 1
                if counts[1] > limits.settings:
                    return SETTINGS_FLOOD
        elif kind == WINDOW_UPDATE:
            if int.from_bytes(header[5:9], "big") & 0x7FFFFFFF == 0:
                counts[3] += 1
                if counts[3] > limits.window_update_stream0 + self.credit:
                    return WINDOW_UPDATE_FLOOD
        elif kind == PRIORITY:
            counts[4] += 1
            if counts[4] > limits.priority:
                return PRIORITY_FLOOD
        return None

    def check_invariants(self) -> None:
        assert 0 <= self._preface <= len(PREFACE)
        assert self._skip >= 0
        assert len(self._header) < HEADER_SIZE
        assert not (self._header and self._skip), "a header is read only between payloads"
        assert not self._preface or (not self._skip and not self._header)
        assert self._in_block or self._continuations <= self.limits.continuation + 1
        assert all(count >= 0 for count in self.counts)
        assert self.credit >= 0
