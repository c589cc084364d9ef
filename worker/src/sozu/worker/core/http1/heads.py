"""Request heads of an HTTP/1.1 session core: the loop that parses the complete heads buffered
from the client, one after the other, and hands each to routing; a parse error is answered
(400, 431) and ends the connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sozu.worker.core.http.codec import HeadError, find_head_end, parse_request_head
from sozu.worker.core.http1.answering import answer
from sozu.worker.core.http1.routing import serve
from sozu.worker.core.http1.states import S_HEAD

if TYPE_CHECKING:
    from sozu.worker.core.http1.session import Http1Session


def read_heads(s: Http1Session, now: float) -> None:
    """Serve the complete heads in `fbuf`, one after the other, while the connection
    stays in S_HEAD (answers that keep the connection come back here)."""
    fbuf = s.fbuf
    s.in_heads = True
    while s.state == S_HEAD:
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
