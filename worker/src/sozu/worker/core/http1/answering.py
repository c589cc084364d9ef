"""Answers the session core writes itself (404, 503, 408...), access log lines, and the count of
requests a closing connection leaves unanswered.

An answer ends its request: the connection goes on to the next request, or closes with a
lingering close when the answer says `Connection: close`. An answer that would keep the
connection but cannot (a parse error, an unread request body, a drain) gets `Connection: close`
added, so that no client is told keep-alive and then sees the connection end.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

from sozu.worker.core.http.access_log import AccessRecord, format_line
from sozu.worker.core.http.answers import AnswerContext
from sozu.worker.core.http.codec import (
    ChunkedScanner,
    Framing,
    HeadError,
    find_head_end,
    header_value,
    parse_request_head,
)

if TYPE_CHECKING:
    from sozu.worker.core.http1.session import Http1Session

_CLOSE: Final = (b"Connection", b"close")
_STS: Final = b"Strict-Transport-Security"


def answer(
    s: Http1Session,
    code: int,
    now: float,
    *,
    message: str = "",
    cluster_id: str = "",
    backend_id: str = "",
    redirect_location: str = "",
    www_authenticate: str = "",
    inline_template: str | None = None,
    retry_after: int | None = None,
) -> None:
    """Queue the answer `code` for the request in progress (or for bytes that never made a
    head: 400, 408) and end that request."""
    assert not s.back_open, "drop the backend before answering"
    assert not s.back_opened
    ctx = s.ctx
    shared = ctx.shared
    head = s.head
    if head is None:
        # No head was parsed: the answer is logged on its own, under a fresh id.
        s.request_id = shared.ids.generate()
        if shared.access_log is not None:
            s.account_out()
            s.log_on = True
            s.log_started = now
            s.log_in0 = s.bytes_in
            s.log_out0 = s.bytes_out
    answers = ctx.answers
    route = ""
    if s.routed:
        assert head is not None
        # The cluster's templates on top of the listener's (cached per cluster).
        answers = answers.for_cluster(s.cluster_config)
        route = f"{head.method.decode('latin-1')} {s.authority} {head.path.decode('latin-1')}"
    context = AnswerContext(
        request_id=s.request_id,
        cluster_id=cluster_id,
        backend_id=backend_id,
        route=route,
        redirect_location=redirect_location,
        www_authenticate=www_authenticate,
        retry_after=retry_after,
        message=message,
    )
    extra: tuple[tuple[bytes, bytes], ...] = ()
    if ctx.hsts_default is not None:
        extra = ((_STS, ctx.hsts_default),)
    rendered = answers.render(code, context, inline_template=inline_template, extra_headers=extra)
    body_unread = not s.up_done
    close = rendered.close
    if not close and (head is None or body_unread or s.draining):
        rendered = answers.render(
            code, context, inline_template=inline_template, extra_headers=(*extra, _CLOSE)
        )
        close = True
    s.counters.count_answer(code)
    routed_to = cluster_id or (s.cluster_config.cluster_id if s.cluster_config else "")
    if routed_to:
        s.counters.count_cluster_status(routed_to, code)
    s.to_front += rendered.data
    s.status = code
    if s.log_on:
        s.log_message = message or None
        if not s.log_cluster and cluster_id:
            s.log_cluster = cluster_id
        log_request(s, now)
    if close:
        s.close_front(now, linger=True, count_pipelined=head is not None and not body_unread)
    else:
        s.next_request(now)


def log_request(s: Http1Session, now: float) -> None:
    """Write the access log line of the request in progress (once)."""
    if not s.log_on:
        return
    s.log_on = False
    shared = s.ctx.shared
    sink = shared.access_log
    if sink is None:
        return
    s.account_out()
    if not s.session_id:
        s.session_id = shared.ids.generate()
    head = s.head
    user_agent = header_value(head.headers, b"user-agent") if head is not None else None
    linked = s.linked
    started = s.log_started
    record = AccessRecord(
        time_ns=shared.time_ns(),
        pid=shared.pid,
        tag=shared.tag,
        session_id=s.session_id,
        request_id=s.request_id,
        cluster_id=s.log_cluster,
        backend_id=linked.id if linked is not None else None,
        client=f"{s.peer[0]}:{s.peer[1]}",
        backend_address=(
            f"{linked.address[0]}:{linked.address[1]}" if linked is not None else None
        ),
        request_time=now - started,
        service_time=None if linked is None else s.backend_started - started,
        response_time=None if linked is None else now - s.backend_started,
        bytes_in=s.bytes_in - s.log_in0,
        bytes_out=s.bytes_out - s.log_out0,
        tags=s.log_tags or {},
        user_agent=user_agent.decode("latin-1") if user_agent else None,
        protocol=s.ctx.scheme,
        authority=head.authority.decode("latin-1") if head and head.authority else "",
        method=head.method.decode("latin-1") if head else "",
        path=head.path.decode("latin-1") if head else "",
        status=s.status or None,
        message=s.log_message,
    )
    # A full disk or a closed sink must not end the request.
    with contextlib.suppress(OSError, ValueError):
        sink(format_line(record))


def count_requests(buf: bytes | bytearray, max_head: int) -> int:
    """How many requests the bytes of `buf` start (a partial or invalid last one counts)."""
    data = bytes(buf)
    count = 0
    position = 0
    while position < len(data):
        count += 1
        rest = data[position:]
        try:
            end = find_head_end(rest, max_head)
            if end < 0:
                break
            head = parse_request_head(rest[:end])
            if head.framing is Framing.CHUNKED:
                scanner = ChunkedScanner()
                used = scanner.feed(rest[end:])
                if not scanner.done:
                    break
                position += end + used
                continue
        except HeadError:
            break
        position += end + head.content_length
    return count
