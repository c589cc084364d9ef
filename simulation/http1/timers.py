"""The timers of a session as the behaviour reference (LIFECYCLE.md, "Timers") sets them,
computed from what the harness saw happen, never from the core's own fields.

`dues` lists, for the phase the connection is in, each timer that must be running and the
latest time it may fire. The harness requires the core's `deadline` to be no later than any
of them (a timer that should run does), and an expiry that changes anything to find one of
them due (no timer fires early). Each timer has an earliest and a latest expiry: the same time
where the reference is exact, a window where the core re-arms a timer it found blocked by
back pressure (from the last byte to the last expiry after it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulation.http1.connection import Conn
    from simulation.http1.world import Settings


def _at(ms: int, timeout: int) -> float:
    # The same float expression as the core's `now + timeout`, so equal times compare equal.
    return ms / 1000.0 + float(timeout)


Due = tuple[str, float, float]  # (timer, earliest expiry, latest expiry)


def _exact(name: str, due: float) -> Due:
    return (name, due, due)


def dues(c: Conn, settings: Settings, drain_deadline: float) -> list[Due]:
    """Every timer running on `c`, with its earliest and latest expiry (see the docstring)."""
    s = c.s
    ft, bt = settings.front_timeout, settings.back_timeout
    out: list[Due] = []
    if s.to_front and c.fsend_origin >= 0:
        out.append(_exact("fsend", _at(c.fsend_origin, ft)))
    if s.to_back and c.bsend_origin >= 0:
        out.append(_exact("bsend", _at(c.bsend_origin, bt)))
    if c.front_close or c.finished:
        return out
    if c.tunnel:
        due = max(
            _at(c.tunnel_ms, max(ft, bt)), _at(c.tunnel_front_ms, ft), _at(c.tunnel_back_ms, bt)
        )
        out.append(_exact("tunnel", due))
        return out
    if c.dial is not None:
        out.append(_exact("connect", _at(c.dial.issued_ms, settings.connect_timeout)))
        return out
    client = c.client
    t = client.current()
    if c.back is not None and t is not None:
        up_done = t.up_done()
        if t.response is None:
            if up_done:
                origin = max(c.connected_ms, c.last_back_ms, t.last_ms)
                out.append(_exact("response", _at(origin, bt)))
        else:
            # Re-armed at an expiry while the client is not reading.
            late = max(c.last_back_ms, c.last_fire_ms)
            out.append(("resp-body", _at(c.last_back_ms, bt), _at(late, bt)))
        if not up_done:
            # Re-armed at an expiry while the backend is not reading.
            origin = max(c.connected_ms, t.last_ms)
            late = max(origin, c.last_fire_ms)
            out.append(("body", _at(origin, ft), _at(late, ft)))
        return out
    if t is not None and t.first_ms >= 0:
        origin = max(t.first_ms, client.last_complete_ms)
        out.append(_exact("head", _at(origin, settings.request_timeout)))
        return out
    idle = _at(max(client.start_ms, client.last_complete_ms), ft)
    if c.drained:
        idle = min(idle, drain_deadline)
    out.append(_exact("idle", idle))
    return out


def due_now(c: Conn, settings: Settings, drain_deadline: float, now: float) -> set[str]:
    """The timers of `c` due at `now`."""
    return {name for name, first, _ in dues(c, settings, drain_deadline) if first <= now + 1e-9}
