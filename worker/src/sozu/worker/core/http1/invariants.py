"""The invariants of an HTTP/1.1 session core, checked after every input in tests (asserts:
`python -O` skips them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from sozu.worker.core.http.codec import Framing
from sozu.worker.core.http1.actions import ALL_ACTIONS
from sozu.worker.core.http1.states import (
    CONNECT_ATTEMPTS,
    INF,
    R_CHUNKED,
    R_HEAD,
    R_LENGTH,
    S_CLOSING,
    S_CONNECTING,
    S_DONE,
    S_EXCHANGE,
    S_HEAD,
    S_TUNNEL,
    STATE_NAMES,
)

if TYPE_CHECKING:
    from sozu.worker.core.http1.session import Http1Session

_NO_BODY: Final = Framing.NONE


def check_session(s: Http1Session) -> None:
    """Positive and negative space of every state; the published deadline and buffers."""
    state = s.state
    assert state in range(S_DONE + 1), state
    assert 0 <= s.actions <= ALL_ACTIONS, s.actions
    assert s.done == (state == S_DONE)
    assert s.flen == len(s.to_front), "unsettled to_front"
    assert s.blen == len(s.to_back), "unsettled to_back"
    assert (s.t_fsend == INF) == (not s.to_front) or s.done
    assert (s.t_bsend == INF) == (not s.to_back) or s.done
    assert s.bytes_in >= 0
    assert s.bytes_out >= 0
    assert s.draining == (s.drain_deadline != INF)
    assert s.kept is None or s.keeps_back
    if s.kept is not None:
        assert state == S_HEAD, "a connection is kept only between requests"
        assert s.target is None
        assert not s.back_open
        assert not s.back_opened
        assert not s.to_back
    if s.done:
        assert s.deadline == INF
        assert s.target is None
        assert s.kept is None
        assert s.per_ip_cluster is None
        assert not s.back_open
        assert not s.back_opened
        assert not s.back_close_pending
        assert s.head is None
        assert not s.fbuf
        assert not s.rbuf
        assert not s.wants_front_read()
        assert not s.wants_back_read()
        return
    assert s.deadline == min(s.t_read, s.t_back, s.t_fsend, s.t_bsend)
    assert s.deadline > 0
    head = s.head
    assert (head is not None) == (state in (S_CONNECTING, S_EXCHANGE, S_TUNNEL)), STATE_NAMES[state]
    assert s.back_opened == (state in (S_EXCHANGE, S_TUNNEL)), STATE_NAMES[state]
    assert not s.back_open or s.back_opened
    assert s.back_close_pending <= (state == S_CLOSING)
    assert (s.target is not None) == (
        state in (S_CONNECTING, S_EXCHANGE, S_TUNNEL) or s.back_close_pending
    ), STATE_NAMES[state]
    assert s.target is None or s.target is s.target_slot
    if state in (S_HEAD, S_CLOSING):
        assert s.t_back == INF
        assert not s.rbuf
        assert not s.responding
        assert s.status == 0
        assert s.up_done
        assert s.r_phase == R_HEAD
        assert s.to_back == b"" or s.back_close_pending
    if state == S_HEAD:
        assert s.t_read != INF
        assert len(s.fbuf) < s.ctx.max_head
        assert not s.fbuf or s.fbuf.find(b"\r\n\r\n") < 0
        assert not s.front_ended, "a client that half-closed is not waited for"
    elif state == S_CONNECTING:
        assert head is not None
        assert s.backend is not None
        assert s.t_back != INF
        assert s.t_read == INF
        assert not s.to_back
        assert not s.responding
        assert 0 <= s.attempt < CONNECT_ATTEMPTS
        assert s.request_bytes
        target = s.target
        assert target is not None
        assert target.backend_id == s.backend.id
        assert target.address == s.backend.address
        assert target.verify == (head.framing is not _NO_BODY)
        assert target.allow_pooled == (not s.fresh)
        config = s.cluster_config
        assert target.h2 == (config is not None and config.http2)
    elif state == S_EXCHANGE:
        assert head is not None
        assert s.backend is not None
        assert s.request_bytes
        assert (head.framing is _NO_BODY) <= s.up_done
        assert (s.t_read != INF) == (not s.up_done)
        assert s.t_back != INF
        assert (s.r_phase == R_HEAD) == (not s.responding)
        assert s.back_open, "a backend that closed ends the exchange"
        assert s.linked is s.backend
        assert s.back_received or not s.responding
        assert s.responding == (s.status != 0)
        assert s.r_phase != R_LENGTH or s.r_remaining > 0
        scanner = s.r_scanner
        assert (scanner is not None) == (s.r_phase == R_CHUNKED)
        if scanner is not None:
            scanner.check_invariants()
            assert not scanner.done
        if s.up_scanner is not None:
            s.up_scanner.check_invariants()
            assert s.up_scanner.done == s.up_done
        assert s.up_remaining >= 0
        assert s.r_phase != R_CHUNKED or s.rbuf == b""
    elif state == S_TUNNEL:
        assert s.t_back == INF
        assert s.t_read != INF
        assert s.back_open == (not s.tunnel_back_done)
        assert not s.fbuf
        assert not s.rbuf
        assert not (s.tunnel_front_done and s.tunnel_back_done)
    elif state == S_CLOSING:
        assert s.t_read == INF
        assert not s.fbuf
        assert not s.back_open
        assert not s.back_opened
        assert s.to_front or s.back_close_pending
        assert not s.wants_front_read()
        assert not s.wants_back_read()
    if s.per_ip_cluster is not None:
        assert s.ctx.shared.per_ip.held(s.per_ip_cluster, s.peer[0]) >= 1
    if not s.wants_front_read():
        assert (
            state >= S_CLOSING or s.front_ended or len(s.to_back) > s.limit or len(s.fbuf) > s.limit
        )
    assert s.r_phase in (R_HEAD, R_LENGTH, R_CHUNKED) or s.responding
    assert s.responding or not s.closing, "only a response head says close"
    assert s.up_done or state in (S_CONNECTING, S_EXCHANGE), "a body is owed only in a request"
    assert not s.in_heads, "the head loop never outlives an input"
