"""The exchange of one request with a backend, for the session core: connect attempts, the
request body relay, the response head and body relay, keep-or-drop of the backend connection,
and the switch to a tunnel after a 101 (docs/http.md, "Keep-alive and framing", "Timeouts").

The request body (Content-Length by count, chunked by `ChunkedScanner`) is relayed as raw
bytes beside the response: a backend may answer before it has read the whole body, and that
response then says close. Response bodies are relayed raw too: by length, chunked, or until
the backend closes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from sozu.worker.core.http.codec import (
    ChunkedScanner,
    Framing,
    HeadError,
    ResponseHead,
    find_head_end,
    parse_response_head_known,
)
from sozu.worker.core.http.header_edits import edit_response, fast_response_head, serialize_head
from sozu.worker.core.http1 import tunnel
from sozu.worker.core.http1.actions import CLOSE_BACK, CONNECT, RELEASE_BACK
from sozu.worker.core.http1.answering import answer, log_request
from sozu.worker.core.http1.states import (
    CONNECT_ATTEMPTS,
    INF,
    R_CHUNKED,
    R_CLOSE,
    R_HEAD,
    R_LENGTH,
    S_CLOSING,
    S_CONNECTING,
    S_EXCHANGE,
    S_TUNNEL,
    STATE_NAMES,
)

if TYPE_CHECKING:
    from sozu.worker.core.http1.session import Http1Session

log = logging.getLogger("sozu.worker.http")

_NONE: Final = Framing.NONE
_LENGTH: Final = Framing.LENGTH
_CHUNKED: Final = Framing.CHUNKED
_CLOSE: Final = Framing.CLOSE

# -- connecting


def connect_next(s: Http1Session, now: float) -> None:
    """Choose the backend of attempt `s.attempt` (the sticky one first) and ask for a
    connection to it; 503 when the cluster has none to offer."""
    cluster = s.cluster
    assert cluster is not None
    assert s.head is not None
    backend = None
    if s.sticky is not None and s.attempt == 0:
        backend = s.ctx.sticky_backend(cluster, s.sticky, now)
    if backend is None:
        backend = cluster.choose(now)
    kept = s.kept
    reuse = False
    if kept is not None:
        # The connection kept from the last exchange: used again for a request to the same
        # backend that could be sent again on a new connection (no body: a body asks the
        # pool's check first), else handed to the pool (closed when the worker drains).
        reuse = (
            backend is not None
            and kept == backend.address
            and not s.fresh
            and not s.draining
            and s.head.framing is _NONE
            and not (s.cluster_config is not None and s.cluster_config.http2)
        )
        let_kept_go(s, close=None if reuse else s.draining)
    if backend is None:
        _no_backend(s, now)
        return
    s.backend = backend
    target = s.target_slot
    target.cluster_id = cluster.cluster_id
    target.backend_id = backend.id
    target.address = backend.address
    target.allow_pooled = not s.fresh
    target.verify = s.head.framing is not _NONE
    config = s.cluster_config
    target.h2 = config is not None and config.http2
    s.target = target
    s.state = S_CONNECTING
    s.connect_started = now
    s.t_read = INF
    if reuse:
        s.ctx.shared.kept_reused += 1
        connected(s, now, True)
        return
    s.actions |= CONNECT
    s.t_back = now + s.ctx.connect_timeout


def let_kept_go(s: Http1Session, *, close: bool | None) -> None:
    """The session no longer keeps its idle backend connection: to the pool (`close` False),
    closed (True), or taken again by this session or already dropped by the shell (None)."""
    assert s.kept is not None
    s.kept = None
    s.ctx.shared.kept_backs -= 1
    if close is True:
        s.actions |= CLOSE_BACK
    elif close is False:
        s.actions |= RELEASE_BACK


def _no_backend(s: Http1Session, now: float) -> None:
    assert s.cluster is not None
    cluster_id = s.cluster.cluster_id
    if s.last_timeout:
        answer(s, 504, now, cluster_id=cluster_id, message="backend connect timed out")
    else:
        s.counters.no_backend += 1
        answer(s, 503, now, cluster_id=cluster_id, message="no backend available")


def connected(s: Http1Session, now: float, reused: bool) -> None:
    """The backend connection is up: send the edited head and what is buffered of the body."""
    backend, cluster, counters = s.backend, s.cluster, s.counters
    assert backend is not None
    assert cluster is not None
    assert s.head is not None
    if not reused:
        if s.attempt:
            counters.retries += 1
        cluster.connection_succeeded(backend.id)
        if cluster.connect_seconds is not None:
            cluster.connect_seconds.observe(now - s.connect_started)
    s.reused = reused
    cluster.opened(backend.id)
    s.back_opened = s.back_open = True
    cluster_id = cluster.cluster_id
    key = (cluster_id, s.protocol)
    counters.cluster_requests[key] = counters.cluster_requests.get(key, 0) + 1
    s.linked = backend
    s.log_cluster = cluster_id
    s.backend_started = now
    s.state = S_EXCHANGE
    s.r_phase = R_HEAD
    s.back_received = False
    s.to_back += s.request_bytes
    s.t_back = now + s.ctx.back_timeout
    if s.up_done:
        s.t_read = INF
        return
    s.t_read = now + s.ctx.front_timeout
    fbuf = s.fbuf
    if fbuf:
        try:
            used = relay_body(s, fbuf, now)
        except HeadError as error:
            _body_refused(s, error, now)
            return
        del fbuf[:used]
    if not s.up_done and s.front_ended:
        s.hang_up(now)


def connect_failed(s: Http1Session, now: float, *, timed_out: bool) -> None:
    """The attempt failed: back-off bookkeeping, then the next attempt or the answer."""
    backend, cluster, counters = s.backend, s.cluster, s.counters
    assert backend is not None
    assert cluster is not None
    log.debug("backend %s of %s: connect failed", backend.id, cluster.cluster_id)
    counters.backend_errors += 1
    if s.attempt:
        counters.retries += 1
    cluster.connection_failed(backend.id, now)
    s.target = None
    s.t_back = INF
    s.attempt += 1
    s.last_timeout = timed_out
    if s.attempt >= CONNECT_ATTEMPTS:
        _no_backend(s, now)
    else:
        connect_next(s, now)


def drop_back(s: Http1Session, *, keep: bool, hold: bool = False) -> None:
    """Let go of the backend connection (or of the dial in progress): pooled when `keep`;
    `hold` (with `keep`): kept by the session for its next request instead (`s.kept`)."""
    if s.back_opened:
        assert s.cluster is not None
        assert s.backend is not None
        s.cluster.closed(s.backend.id)
        s.back_opened = False
    s.back_open = False
    if s.target is not None:
        if hold:
            assert keep
            assert not s.to_back
            assert s.kept is None
            s.kept = s.target.address
            s.ctx.shared.kept_backs += 1
        elif keep:
            assert not s.to_back
            s.actions |= RELEASE_BACK
        else:
            s.actions |= CLOSE_BACK
            s.to_back.clear()
        s.target = None
    s.rbuf.clear()


def observe(s: Http1Session, now: float) -> None:
    assert s.cluster is not None
    s.ctx.observe(s.cluster.cluster_id, now - s.started, now - s.backend_started)


def give_up(s: Http1Session, now: float, status: int, message: str) -> None:
    """Drop the backend connection and answer `status` for the exchange (502, 504, 400)."""
    cluster, backend = s.cluster, s.backend
    assert cluster is not None
    assert backend is not None
    assert not s.responding
    drop_back(s, keep=False)
    if status == 502:
        s.counters.backend_parse_errors += 1
    observe(s, now)
    answer(s, status, now, message=message, cluster_id=cluster.cluster_id, backend_id=backend.id)


# -- the request body


def relay_body(s: Http1Session, data: bytes | bytearray, now: float) -> int:
    """Move the request body bytes at the start of `data` to to_back; how many there were.
    HeadError for a malformed chunked body."""
    scanner = s.up_scanner
    if scanner is None:
        remaining = s.up_remaining
        used = min(remaining, len(data))
        s.up_remaining = remaining - used
        if used == remaining:
            s.up_done = True
    else:
        used = scanner.feed(data)
        if scanner.done:
            s.up_done = True
    s.to_back += data if used == len(data) else data[:used]
    s.bytes_in += used
    if s.up_done:
        s.t_read = INF
        if s.r_phase == R_HEAD:
            # The backend has the whole request: its time to answer starts now.
            s.t_back = now + s.ctx.back_timeout
    return used


def upload(s: Http1Session, data: bytes, now: float) -> None:
    """Client bytes during the request body: the body goes to the backend, the rest waits."""
    try:
        used = relay_body(s, data, now)
    except HeadError as error:
        _body_refused(s, error, now)
        return
    if used < len(data):
        s.fbuf += data[used:]


def _body_refused(s: Http1Session, error: HeadError, now: float) -> None:
    """A malformed chunked body: 400 when nothing of the response went out, else close."""
    log.debug("request body from %s: %s", s.peer[0], error.reason)
    if s.responding:
        s.hang_up(now)
        return
    s.counters.parse_errors += 1
    cluster = s.cluster
    assert cluster is not None
    drop_back(s, keep=False)
    observe(s, now)
    answer(s, error.status, now, message=error.reason)


# -- the response


def response_data(s: Http1Session, data: bytes, now: float) -> None:
    """Backend bytes during the exchange."""
    phase = s.r_phase
    if phase == R_HEAD:
        _response_head(s, data, now)
    elif phase == R_LENGTH:
        remaining = s.r_remaining
        size = len(data)
        if size < remaining:
            s.to_front += data
            s.r_remaining = remaining - size
        else:
            s.to_front += data if size == remaining else data[:remaining]
            s.r_remaining = 0
            s.back_extra = size > remaining
            finish_response(s, now, complete=True)
    elif phase == R_CHUNKED:
        scanner = s.r_scanner
        assert scanner is not None
        try:
            used = scanner.feed(data)
        except HeadError as error:
            log.info("backend chunked body refused: %s", error.reason)
            finish_response(s, now, complete=False)
            return
        s.to_front += data if used == len(data) else data[:used]
        if scanner.done:
            s.back_extra = used < len(data)
            finish_response(s, now, complete=True)
    else:
        s.to_front += data


def _response_head(s: Http1Session, data: bytes, now: float) -> None:
    """Bytes of the response head: relay 1xx heads, then take the final one."""
    head = s.head
    assert head is not None
    s.back_received = True
    rbuf = s.rbuf
    buf: bytes | bytearray = data
    if rbuf:
        rbuf += data
        buf = rbuf
    max_head = s.ctx.max_head
    while True:
        try:
            end = find_head_end(buf, max_head)
            if end < 0:
                if buf is not rbuf:
                    rbuf += buf
                return
            response = parse_response_head_known(bytes(buf[:end]), head.method)
        except HeadError as error:
            log.info("backend response refused: %s", error.reason)
            give_up(s, now, 502, "")
            return
        status = response.status
        if status < 200 and status != 101:
            # Interim (100 Continue, 103 Early Hints): relayed as is, but never to an HTTP/1.0
            # client (RFC 9110 §15.2); the final one follows.
            if head.version == b"1.1":
                s.to_front += serialize_head(
                    b"HTTP/1.1 %d %s" % (status, response.reason), response.headers
                )
            s.t_back = now + s.ctx.back_timeout
            if buf is rbuf:
                del rbuf[:end]
            else:
                buf = buf[end:]
            if not buf:
                return
            continue
        leftover = buf[end:]
        rbuf.clear()
        _final_response(s, response, leftover, now)
        return


def _final_response(
    s: Http1Session, response: ResponseHead, leftover: bytes | bytearray, now: float
) -> None:
    head, cluster, backend, ctx = s.head, s.cluster, s.backend, s.ctx
    assert head is not None
    assert cluster is not None
    assert backend is not None
    assert s.cluster_config is not None
    assert s.frontend is not None
    if response.status == 101:
        if head.upgrade:
            tunnel.start(s, response, leftover, now)
            return
        # A switch nobody asked for (RFC 9110 §15.2.2): that connection no longer speaks HTTP.
        log.info("backend response refused: 101 to a request that asked no upgrade")
        give_up(s, now, 502, "")
        return
    framing = response.framing
    scanner = None
    used = 0
    if framing is _CHUNKED:
        scanner = ChunkedScanner(status=502)
        try:
            used = scanner.feed(leftover)
        except HeadError as error:
            log.info("backend chunked body refused: %s", error.reason)
            give_up(s, now, 502, "")
            return
    closing = not s.keep_alive or s.draining or framing is _CLOSE or not s.up_done
    to_front = s.to_front
    sticky = s.sticky_found is not None or s.cluster_config.sticky_session
    hsts = ctx.hsts_for(s.frontend.hsts) if ctx.https else None
    # The common case: the head as received, plus Sozu-Id.
    plain = not sticky and not s.response_edits and hsts is None
    quick = None
    if plain and response.raw.startswith(b"HTTP/1.1 "):
        quick = fast_response_head(
            response.raw,
            response.special,
            response.keep_alive,
            request_id=s.request_id.encode(),
            sozu_id_header=ctx.sozu_id_header,
            closing=closing,
        )
    if quick is not None:
        to_front += quick
        back_keep = response.keep_alive
    else:
        to_front += _edited_response_head(s, response, closing, hsts)
        back_keep = s.back_keep
    s.responding = True
    s.closing = closing
    s.status = response.status
    # A request sent saying close (HTTP/1.0 without keep-alive, a drain) leaves the backend
    # free to close once it has answered, whatever its response says: never pooled
    # (`back_keep_asked`; an HTTP/1.1 client's own close is not sent on).
    s.back_keep = back_keep
    _response_body(s, response, leftover, scanner, used, now)


def _edited_response_head(
    s: Http1Session, response: ResponseHead, closing: bool, hsts: bytes | None
) -> bytes:
    """The response head with every edit applied (sticky cookie, frontend edits, HSTS);
    `back_keep` is set from what the backend said."""
    cluster, backend, ctx = s.cluster, s.backend, s.ctx
    assert cluster is not None
    assert backend is not None
    sticky_value = None
    if s.sticky_found is not None or (s.cluster_config and s.cluster_config.sticky_session):
        sticky_value = ctx.sticky_id(cluster.cluster_id, backend.id).encode()
    edited = edit_response(
        response.headers,
        request_id=s.request_id.encode(),
        closing=closing,
        sozu_id_header=ctx.sozu_id_header,
        sticky_name=ctx.sticky_name,
        sticky_value=sticky_value,
        sticky_found=s.sticky_found,
        edits=s.response_edits,
        hsts=hsts,
    )
    s.back_keep = edited.keep_alive and response.keep_alive
    headers = edited.headers
    if not closing and not edited.keep_alive:
        # The backend's close is about its own connection: the client's stays open, so it
        # must not be told close (RFC 9112 §9.6).
        headers = [(name, value) for name, value in headers if name.lower() != b"connection"]
    return serialize_head(b"HTTP/1.1 %d %s" % (response.status, response.reason), headers)


def _response_body(
    s: Http1Session,
    response: ResponseHead,
    leftover: bytes | bytearray,
    scanner: ChunkedScanner | None,
    used: int,
    now: float,
) -> None:
    """The start of the response body read with its head, and the relay phase after it."""
    to_front = s.to_front
    framing = response.framing
    s.back_extra = False
    if framing is _NONE:
        s.back_extra = bool(leftover)
        finish_response(s, now, complete=True)
    elif framing is _LENGTH:
        length = response.content_length
        if len(leftover) >= length:
            to_front += leftover if len(leftover) == length else leftover[:length]
            s.back_extra = len(leftover) > length
            finish_response(s, now, complete=True)
        else:
            to_front += leftover
            s.r_remaining = length - len(leftover)
            s.r_phase = R_LENGTH
    elif scanner is not None:
        to_front += leftover if used == len(leftover) else leftover[:used]
        if scanner.done:
            s.back_extra = used < len(leftover)
            finish_response(s, now, complete=True)
        else:
            s.r_scanner = scanner
            s.r_phase = R_CHUNKED
    else:
        to_front += leftover
        s.r_phase = R_CLOSE


def finish_response(s: Http1Session, now: float, *, complete: bool) -> None:
    """The response ended (`complete`: as framed): keep or drop both connections."""
    cluster, backend = s.cluster, s.backend
    assert cluster is not None
    assert backend is not None
    assert s.responding
    # Pooled only after a complete, framed exchange that nobody asked to close, whose request
    # was sent whole, to a backend still configured.
    keep_back = (
        complete
        and s.back_keep_asked
        and s.up_done
        and s.back_keep
        and not s.back_extra
        and not s.to_back
        and not s.draining
        and cluster.selector.backend(backend.id) is not None
    )
    shared = s.ctx.shared
    drop_back(
        s,
        keep=keep_back,
        hold=(
            keep_back
            and not s.closing
            and s.keeps_back
            and shared.kept_backs < shared.max_kept_backs
            and not (s.target is not None and s.target.h2)
        ),
    )
    s.counters.count_status(s.status)
    s.counters.count_cluster_status(cluster.cluster_id, s.status)
    if shared.histogram is not None:
        observe(s, now)
    if s.log_on:
        log_request(s, now)
    if complete and not s.closing:
        s.next_request(now)
    else:
        # A complete response said close: linger, unless the client asked for it and sent
        # nothing after (it sends no more). A truncated one: nothing more to say.
        said = s.head is not None and not s.head.keep_alive and s.up_done and not s.fbuf
        s.close_front(now, linger=complete and not said, count_pipelined=s.up_done)


def backend_ended(s: Http1Session, now: float, *, reset: bool, refused: bool = False) -> None:
    """The backend closed (or reset) its connection during the exchange; `refused`: it did
    not process the request (retried as from a stale connection, even on a new one)."""
    phase = s.r_phase
    head = s.head
    assert head is not None
    if phase == R_HEAD:
        # A pooled connection the backend had closed, or a refusal (once): again on a fresh
        # one, when the request has no body to replay.
        retry = s.reused or (refused and not s.fresh)
        if retry and not s.back_received and head.framing is _NONE:
            s.counters.stale_connections += 1
            drop_back(s, keep=False)
            s.fresh = True
            s.attempt = 0
            s.last_timeout = False
            connect_next(s, now)
        else:
            give_up(s, now, 502, "")
    else:
        # A reset never completes a body, even a close-delimited one.
        finish_response(s, now, complete=phase == R_CLOSE and not reset)


def back_timer(s: Http1Session, now: float) -> None:
    """The backend timer: connect timeout, no response in time, or an idle response body."""
    state = s.state
    if state == S_CONNECTING:
        drop_back(s, keep=False)  # the shell abandons the dial
        connect_failed(s, now, timed_out=True)
    elif state == S_EXCHANGE:
        if s.r_phase == R_HEAD:
            if not s.up_done:
                # Still waiting for the client's body: the client's timer decides.
                s.t_back = now + s.ctx.back_timeout
            else:
                give_up(s, now, 504, "")
        elif len(s.to_front) > s.limit:
            # Not read because the client is slow: the client's send timer decides.
            s.t_back = now + s.ctx.back_timeout
        else:
            finish_response(s, now, complete=False)
    else:  # pragma: no cover - no backend timer elsewhere
        raise AssertionError(f"backend timer in {STATE_NAMES[state]}")


def back_send_stalled(s: Http1Session, now: float) -> None:
    """The backend has not read to_back for back_timeout."""
    state = s.state
    if state == S_EXCHANGE:
        if s.responding:
            finish_response(s, now, complete=False)
        else:
            give_up(s, now, 504, "")
    elif state == S_TUNNEL:
        tunnel.end(s, now)
        s.close_front(now, linger=False, count_pipelined=False)
    elif state == S_CLOSING:
        s.to_back.clear()
    else:  # pragma: no cover - to_back is empty in other states
        raise AssertionError(f"backend send timer in {STATE_NAMES[state]}")
