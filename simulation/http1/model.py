"""The reference model of one simulated client connection: the requests it sends (its script),
what each became (delivered, forwarded, answered), and the responses the proxy queued for it,
read by the harness's own parser. The checks in checks.py compare each response with what the
model says it must be: the backend's own response to that request, byte-exact, or an answer
the behaviour reference (LIFECYCLE.md) gives for what happened to it.
"""

from __future__ import annotations

import random
from typing import Final

from simulation.http1.wire import (
    BAD_CHUNK,
    BAD_HEAD,
    BIG_HEAD,
    INVALID_KINDS,
    NO_ROUTE,
    PROXY,
    UPGRADE,
    Message,
    Reader,
    Request,
    build_request,
)
from simulation.http1.world import Reply, Settings

_KINDS: Final = (PROXY,) * 40 + (NO_ROUTE,) * 3 + (UPGRADE,) * 2 + (BAD_HEAD, BIG_HEAD, BAD_CHUNK)


class Failure(Exception):
    """A check failed: `what` is the failure line's text."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class Track:
    """One request of a client, from its first byte to its answer."""

    __slots__ = (
        "back_close",
        "body_done",
        "connected",
        "failed_attempts",
        "first_connect_call",
        "first_ms",
        "head_at_core",
        "head_done",
        "held",
        "interim_end",
        "interims_seen",
        "interims_sent",
        "last_ms",
        "reply",
        "req",
        "response",
        "sent",
        "start",
    )

    def __init__(self, req: Request, start: int, sent: int) -> None:
        self.req = req
        self.start = start  # offset of its first byte in the client's stream
        self.sent = sent  # bytes of it the client sends (fewer when it stalls)
        self.held = b""  # an Expect: 100-continue body not released yet
        self.back_close = False  # the head its backend read said close
        self.first_ms = -1  # when its first byte reached the core
        self.last_ms = -1
        self.head_done = False
        self.body_done = False
        self.failed_attempts = 0
        self.first_connect_call = -1
        self.reply: Reply | None = None
        self.head_at_core = False  # the backend's final head reached the core whole
        self.interims_sent = 0
        self.interims_seen = 0
        self.interim_end = -1  # queued-stream offset after the last 1xx head for it
        self.connected = False  # a backend connection was up for it (its body relayed)
        self.response: Message | None = None

    @property
    def tag(self) -> str:
        return self.req.tag

    @property
    def end(self) -> int:
        return self.start + len(self.req.wire)

    @property
    def head_end(self) -> int:
        return self.start + len(self.req.head)

    def up_done(self) -> bool:
        """The core relayed its whole body (or it has none)."""
        return not self.req.has_body or (
            self.body_done and self.connected and self.req.kind != BAD_CHUNK
        )

    def response_status(self) -> int:
        return self.response.status if self.response is not None else 0

    @property
    def whole(self) -> bool:
        """The client sends all of it."""
        return self.sent == len(self.req.wire)


class Client:
    """One client connection's script and what became of it."""

    def __init__(self, rng: random.Random, cid: int, settings: Settings, now_ms: int) -> None:
        self.cid = cid
        self.settings = settings
        self.start_ms = now_ms
        self.pipelined = rng.random() < settings.p_pipeline
        self.script_left = min(1 + int(rng.expovariate(0.3)), 10)
        self.read_mode = rng.choice(("fast", "fast", "fast", "chunky", "chunky", "bytes"))
        # Slow writers pause between the slices they send.
        self.pace_ms = rng.choice((0, 0, 0, 0, 20, 100, 400))
        self.next_send_ms = now_ms
        # Some clients stop reading at some point (the proxy's send timer must end them).
        self.stop_reading_at = rng.randint(0, 3000) if rng.random() < 0.02 else -1
        self.end_mode = rng.choice(("idle", "idle", "eof", "eof-early"))
        self.tracks: list[Track] = []
        self.out = bytearray()  # bytes to send, not delivered yet
        self.generated = 0  # length of the stream so far
        self.delivered = 0
        self.reader = Reader(responses=True)
        self.queued = 0  # bytes the proxy queued for this client
        self.received = 0  # bytes this client read
        self.answered = 0  # final responses completed in the queued stream
        self.last_complete_ms = now_ms  # when the last final response completed
        self.stalled = False  # stopped sending in the middle of a request
        self.eof_due = False
        self.eof_sent = False
        self.reset = False
        self.ended = False  # no more requests will be written
        self.tunnel = False  # a 101 was queued: raw bytes from then on
        self.tunnel_sent = bytearray()
        self.tunnel_queued = bytearray()

    # -- the script

    def can_write(self) -> bool:
        """Whether the client may write the next request now."""
        if self.ended or self.stalled or self.tunnel or self.reset or self.out:
            return False
        if any(t.held for t in self.tracks):
            return False
        if self.script_left <= 0:
            return False
        if self.tracks:
            last = self.tracks[-1]
            if last.req.close or last.req.kind in INVALID_KINDS or last.req.kind == UPGRADE:
                return False
            if not self.pipelined and not self._read_answer(last):
                return False
        return True

    def _read_answer(self, t: Track) -> bool:
        r = t.response
        return r is not None and r.complete and self.received >= r.end

    def write_request(self, rng: random.Random, big: int) -> Track:
        index = len(self.tracks)
        kind = rng.choice(_KINDS)
        req = build_request(
            rng, f"c{self.cid}r{index}", kind, max_head=self.settings.max_head, big=big
        )
        self.script_left -= 1
        sent = len(req.wire)
        fault = rng.random()
        if fault < 0.03 or (fault < 0.05 and self.end_mode != "eof-early"):
            # Stops in the middle: forever (408 or a body timeout), or with a half-close.
            sent = rng.randint(1, max(1, len(req.wire) - 1))
            self.stalled = True
            self.eof_due = fault >= 0.03
        t = Track(req, self.generated, sent)
        self.tracks.append(t)
        wire = req.wire[:sent]
        if req.expect and sent == len(req.wire):
            t.held = req.body
            wire = req.head
        self.out += wire
        self.generated += len(wire) + len(t.held)
        if self.script_left <= 0 or kind in INVALID_KINDS or kind == UPGRADE or req.close:
            self.ended = True
            if self.end_mode == "eof-early" and not self.stalled:
                self.eof_due = True
        return t

    def release_held(self, now_ms: int, hold_ms: int) -> None:
        """An Expect: 100-continue body goes once a 100 was read, or after a pause."""
        for t in self.tracks:
            if not t.held:
                continue
            if t.response is not None and self.received > t.response.start:
                # Answered without it: that response says close, nothing more is written.
                self.generated -= len(t.held)
                t.sent = len(t.req.head)
                t.held = b""
                self.ended = True
                continue
            if self.delivered < t.head_end:
                return
            if 0 <= t.interim_end <= self.received or now_ms - t.last_ms >= hold_ms:
                self.out += t.held
                t.held = b""
            return

    def done_writing(self) -> bool:
        """Nothing more will be written (the end of the script, or a stall)."""
        return (
            (self.ended or self.stalled) and not self.out and not any(t.held for t in self.tracks)
        )

    # -- bookkeeping

    def delivered_bytes(self, n: int, now_ms: int) -> None:
        """`n` more bytes of the stream reached the core."""
        before = self.delivered
        after = before + n
        self.delivered = after
        for t in self.tracks:
            if t.start + t.sent <= before or t.start >= after:
                continue
            if t.first_ms < 0:
                t.first_ms = now_ms
            t.last_ms = now_ms
            if after >= t.head_end:
                t.head_done = True
            if after >= t.end:
                t.body_done = True

    def current(self) -> Track | None:
        """The request the proxy is on: the first one not answered."""
        return self.tracks[self.answered] if self.answered < len(self.tracks) else None

    def started(self) -> list[Track]:
        """Requests with a byte delivered and no final response complete."""
        return [t for t in self.tracks[self.answered :] if t.first_ms >= 0]


def explain(t: Track) -> str:
    req = t.req
    flags = [req.kind, req.method, req.framing]
    if req.close:
        flags.append("close")
    if req.expect:
        flags.append("expect")
    if not t.whole:
        flags.append(f"cut@{t.sent}")
    if t.reply is not None:
        flags.append(f"reply={t.reply.status}{'/' + t.reply.fault if t.reply.fault else ''}")
    return f"{t.tag}[{' '.join(flags)}]"
