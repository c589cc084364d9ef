"""The tunnel after a 101 (WebSocket and other upgrades), for the session core: the 101 head
relayed, then raw bytes both ways; each side's half-close is passed on, and the tunnel ends
when both sides ended, on a reset or when idle (docs/http.md, "Keep-alive and framing").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sozu.worker.core.http.codec import ResponseHead
from sozu.worker.core.http.header_edits import serialize_head
from sozu.worker.core.http1 import exchange
from sozu.worker.core.http1.actions import SHUTDOWN_BACK, SHUTDOWN_FRONT, TUNNEL
from sozu.worker.core.http1.answering import log_request
from sozu.worker.core.http1.states import INF, S_TUNNEL

if TYPE_CHECKING:
    from sozu.worker.core.http1.session import Http1Session


def start(s: Http1Session, response: ResponseHead, leftover: bytes | bytearray, now: float) -> None:
    ctx, counters = s.ctx, s.counters
    headers = [*response.headers, (ctx.sozu_id_header, s.request_id.encode())]
    s.to_front += serialize_head(b"HTTP/1.1 101 " + response.reason, headers)
    s.to_front += leftover
    if s.fbuf:
        s.to_back += s.fbuf
        s.fbuf.clear()
    counters.websockets += 1
    counters.websockets_active += 1
    s.status = 101
    s.responding = True
    s.up_done = True
    s.up_scanner = None
    s.state = S_TUNNEL
    s.actions |= TUNNEL
    s.t_back = INF
    s.t_read = now + max(ctx.front_timeout, ctx.back_timeout)
    if s.front_ended:
        s.tunnel_front_done = True
        s.actions |= SHUTDOWN_BACK


def side_ended(s: Http1Session, now: float, *, front: bool) -> None:
    """One side of the tunnel half-closed: pass it on; both done ends the tunnel."""
    if front:
        s.tunnel_front_done = True
        s.actions |= SHUTDOWN_BACK
    else:
        s.tunnel_back_done = True
        s.back_open = False
        s.actions |= SHUTDOWN_FRONT
    if s.tunnel_front_done and s.tunnel_back_done:
        end(s, now, flush_back=True)
        s.close_front(now, linger=False, count_pipelined=False)


def end(s: Http1Session, now: float, *, flush_back: bool = False) -> None:
    """The tunnel is over: its request is counted and logged; the backend connection closes
    (after to_back is flushed when `flush_back`)."""
    assert s.state == S_TUNNEL
    s.counters.websockets_active -= 1
    s.counters.count_status(101)
    exchange.observe(s, now)
    log_request(s, now)
    if flush_back and s.to_back:
        if s.back_opened:
            assert s.cluster is not None
            assert s.backend is not None
            s.cluster.closed(s.backend.id)
            s.back_opened = False
        s.back_open = False
        s.back_close_pending = True
    else:
        exchange.drop_back(s, keep=False)
