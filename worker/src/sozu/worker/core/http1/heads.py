"""Request heads of an HTTP/1.1 session core: the loop that parses the complete heads buffered
from the client, one after the other, and hands each to routing; a parse error is answered
(400, 431) and ends the connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sozu.worker.core.http.codec import HeadError, RequestHead, find_head_end, parse_request_head
from sozu.worker.core.http1 import exchange, tunnel
from sozu.worker.core.http1.answering import answer
from sozu.worker.core.http1.routing import serve
from sozu.worker.core.http1.states import S_EXCHANGE, S_HEAD, S_TUNNEL, STATE_NAMES

if TYPE_CHECKING:
    from sozu.worker.core.http1.session import Http1Session


def read_heads(s: Http1Session, now: float) -> None:
    """Serve the complete heads in `fbuf`, one after the other, while the connection
    stays in S_HEAD (answers that keep the connection come back here)."""
    fbuf = s.fbuf
    s.in_heads = True
    while s.state == S_HEAD:
        if fbuf[:2] == b"\r\n" and len(fbuf) > 2:
            # One empty line before a request line is ignored (RFC 9112 §2.2): the CRLF some
            # clients send after a request body. Once bytes follow it only, so that a stream
            # of them cannot keep a connection waiting past its request timeout.
            del fbuf[:2]
        if not fbuf:
            if s.front_ended:
                s.close_front(now, linger=False, count_pipelined=False)
            break
        try:
            end = find_head_end(fbuf, s.ctx.max_head)
            if end < 0:
                if s.front_ended:
                    s.close_front(now, linger=False, count_pipelined=False)
                break
            head = parse_request_head(bytes(fbuf[:end]))
        except HeadError as error:
            s.counters.parse_errors += 1
            answer(s, error.status, now, message=error.reason)
            break
        del fbuf[:end]
        serve(s, head, now)
    s.in_heads = False


def read_first_head(s: Http1Session, data: bytes, now: float) -> None:
    """`read_heads` for bytes that start a head: a whole head alone in `data` (the common
    case) is parsed without going through the buffer."""
    try:
        whole = find_head_end(data, s.ctx.max_head) == len(data)
    except HeadError:
        whole = False
    if whole:
        try:
            head = parse_request_head(data)
        except HeadError:
            whole = False
    if not whole:
        s.fbuf += data
        read_heads(s, now)
        return
    # `data` held the head alone: nothing is buffered behind it.
    s.in_heads = True
    serve(s, head, now)
    s.in_heads = False


def read_parsed_head(s: Http1Session, head: RequestHead, now: float) -> None:
    """`read_first_head` for a head parsed already (an HTTP/2 stream's, translated): counted
    and served as if its bytes had been read and parsed."""
    assert s.state == S_HEAD
    assert not s.fbuf
    s.counters.bytes_in += head.length
    s.t_read = now + s.ctx.request_timeout
    s.in_heads = True
    serve(s, head, now)
    s.in_heads = False


def read_timer(s: Http1Session, now: float) -> None:
    """The client read timer fired: no head in time (408, or an idle close), a request body
    stalled (504, or the end), or an idle tunnel."""
    state = s.state
    if state == S_HEAD:
        if s.fbuf:
            answer(s, 408, now, message="request head not received in time")
        else:
            # Idle (or the drain deadline): close without a word.
            s.close_front(now, linger=False, count_pipelined=False)
    elif state == S_EXCHANGE and not s.up_done:
        if len(s.to_back) > s.limit:
            # The backend is not reading: its own send timer decides.
            s.t_read = now + s.ctx.front_timeout
        elif not s.responding:
            exchange.give_up(s, now, 504, "client timed out during the request body")
        else:
            s.hang_up(now)
    elif state == S_TUNNEL:
        tunnel.end(s, now)
        s.close_front(now, linger=False, count_pipelined=False)
    else:  # pragma: no cover - no read timer is armed in other states
        raise AssertionError(f"read timer in {STATE_NAMES[state]}")
