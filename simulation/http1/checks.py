"""What the harness checks as bytes move, against the model and the behaviour reference
(LIFECYCLE.md): each response queued for a client (the backend's own for its request, in
order and byte-exact, or an answer the reference gives for what happened to it, saying close
exactly when it must), each close of a client connection (after a response that said close,
lingering, with the requests behind it counted, unless the client asked for the close; a cut
or a silent close only with a cause),
each backend connection pooled (only after a complete exchange), what backends read (the
request in progress, its body byte-exact, `Connection: close` once draining) and tunnels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from simulation.http1.backend_replies import replies_for, send_reply
from simulation.http1.model import Track, explain
from simulation.http1.wire import (
    BAD_CHUNK,
    BAD_HEAD,
    BIG_HEAD,
    NO_ROUTE,
    PROXY,
    UPGRADE,
    Message,
    ParseError,
)
from simulation.http1.world import CLUSTER, BackConn
from sozu.worker.core.http1.actions import LINGER_FRONT

if TYPE_CHECKING:
    from simulation.http1.connection import Conn
    from simulation.http1.shell import Shell

# Backend faults that leave a response incomplete.
CUT_FAULTS: Final = frozenset({"reset-mid", "eof-mid", "stall-mid", "bad-chunk"})
ROUTED: Final = frozenset({PROXY, UPGRADE, BAD_CHUNK})


def _track(c: Conn, tag: str) -> Track | None:
    for t in c.client.tracks:
        if t.tag == tag:
            return t
    return None


# -- responses queued for a client


def check_head(sh: Shell, c: Conn, m: Message, call: str) -> None:
    client = c.client
    t = client.current()
    if t is None or t.first_ms < 0:
        raise sh.fail(f"{c.name()}: a {m.status} response queued with no request outstanding")
    if m.interim:
        if m.tag != t.tag:
            raise sh.fail(f"{c.name()}: a {m.status} tagged {m.tag or '-'} while {t.tag} waits")
        t.interims_seen += 1
        t.interim_end = m.start + len(m.head)
        if t.interims_seen > t.interims_sent:
            raise sh.fail(f"{c.name()}: more interim responses for {t.tag} than the backend sent")
        return
    if m.tag:
        if m.tag != t.tag:
            raise sh.fail(f"{c.name()}: the response to {m.tag} queued while {t.tag} waits")
        reply = t.reply
        if reply is None or not t.head_at_core:
            raise sh.fail(f"{c.name()}: a response head for {t.tag} its backend did not send")
        if m.status != reply.status:
            raise sh.fail(
                f"{c.name()}: status {m.status} for {t.tag}, its backend said {reply.status}"
            )
        reasons = []
        if t.req.close:
            reasons.append("the request said close")
        if c.drained:
            reasons.append("draining")
        if reply.framing == "close":
            reasons.append("close-delimited")
        if not t.up_done():
            reasons.append("request body not read")
        if m.status != 101 and m.says_close != bool(reasons):
            said = "close" if m.says_close else "keep-alive"
            raise sh.fail(
                f"{c.name()}: the response to {explain(t)} says {said} "
                f"({', '.join(reasons) or 'nothing asks to close'})"
            )
    else:
        why = answer_allowed(sh, c, t, m.status, call)
        if why:
            raise sh.fail(f"{c.name()}: {m.status} answered to {explain(t)} on {call}: {why}")
        close = not (m.status == 404 and sh.settings.keep_alive_404) or t.req.has_body or c.drained
        if m.says_close != close:
            raise sh.fail(
                f"{c.name()}: the {m.status} answer to {explain(t)} "
                f"{'says' if m.says_close else 'does not say'} close"
            )
    t.response = m


def answer_allowed(sh: Shell, c: Conn, t: Track, status: int, call: str) -> str:
    """Why the core may not answer `status` to `t` on `call` ("" when it may)."""
    kind = t.req.kind
    due = sh.timer_due
    if status == 400:
        return "" if kind in (BAD_HEAD, BAD_CHUNK) else "the request is valid"
    if status == 431:
        return "" if kind == BIG_HEAD else "its head fits"
    if status == 404:
        return "" if kind == NO_ROUTE else "it has a frontend"
    if status == 408:
        if call != "on_timer" or "head" not in due:
            return f"no request timer was due ({sorted(due)})"
        return "its head was complete" if t.head_done else ""
    if kind not in ROUTED:
        return "it is not routed to a cluster"
    if status == 429:
        limit = sh.settings.per_ip_limit
        held = sh.world.shared.per_ip.held(CLUSTER, c.s.peer[0])
        return "" if limit and held >= limit else f"{held} per-IP slots held, limit {limit}"
    if status == 502:
        if call == "back_data":
            ok = t.reply is not None and t.reply.fault in ("garbage", "bad-chunk")
            return "" if ok else "its backend sent a valid head"
        if call in ("back_eof", "back_error"):
            if t.head_at_core:
                return "its backend's response head had arrived"
            if c.retry_expected:
                return "a request without a body on a reused connection goes to a fresh one"
            return ""
        return f"no backend event ({call})"
    if status == 503:
        if call == "on_timer":
            return "a timed out attempt gives 504"
        if t.failed_attempts >= 3 or not sh.world.candidates():
            return ""
        return f"{t.failed_attempts} failed attempts and {sh.world.candidates()} to choose from"
    if status == 504:
        if call != "on_timer":
            return "no timer fired"
        if "connect" in due:
            ok = t.failed_attempts >= 3 or not sh.world.candidates()
            return "" if ok else f"{t.failed_attempts} failed attempts: another one is due"
        if due & {"response", "bsend"} or ("body" in due and t.response is None):
            return ""
        return f"timers due: {sorted(due)}"
    return "not an answer the reference gives"


def check_done(sh: Shell, c: Conn, m: Message, call: str) -> None:
    if m.interim:
        return
    client = c.client
    t = client.current()
    assert t is not None
    assert t.response is m
    client.answered += 1
    client.last_complete_ms = sh.now_ms
    reply = t.reply
    if m.tag and reply is not None and m.status != 101:
        body = reply.body
        if reply.framing == "close":
            body = reply.wire[len(reply.interim) + len(reply.head) :]
        if bytes(m.body) != body:
            at = next((i for i, (a, b) in enumerate(zip(m.body, body, strict=False)) if a != b), -1)
            raise sh.fail(
                f"{c.name()}: the body of {explain(t)} reached the client altered "
                f"({len(m.body)} bytes, {len(body)} sent, first difference at {at})"
            )
    if m.status == 101:
        client.tunnel = True
    elif m.says_close:
        c.close_due = True


def tunnel_down(sh: Shell, c: Conn, data: bytes) -> None:
    client = c.client
    client.tunnel_queued += data
    conn = c.tunnel_conn or c.back
    sent = conn.tunnel_out if conn is not None else b""
    if bytes(client.tunnel_queued) != bytes(sent[: len(client.tunnel_queued)]):
        raise sh.fail(f"{c.name()}: tunnel bytes from the backend reached the client altered")


# -- closes


def check_close(sh: Shell, c: Conn, call: str, bits: int, unanswered: int) -> None:
    client = c.client
    rt = next((t for t in reversed(client.tracks) if t.response is not None), None)
    last = rt.response if rt is not None else None
    if (
        last is not None
        and not last.complete
        and last.framing == "close"
        and call == "back_eof"
        and c.back is not None
        and not c.back.outbox
    ):
        # A close-delimited body ends as the backend closes.
        done = client.reader.end_of_stream()
        if done is not None:
            check_done(sh, c, done, call)
    cut = rt is not None and last is not None and not last.complete and not c.tunnel
    if bits == LINGER_FRONT or (cut and not (client.reset or c.aborted or c.dropped)):
        # Requests buffered behind a response that ends the connection (said close, or was
        # cut short) are counted, once the request it answered was read whole.
        if rt is None:
            raise sh.fail(f"{c.name()}: a lingering close before any response")
        expected = 0
        head_read = rt.req.kind not in (BAD_HEAD, BIG_HEAD) and rt.response_status() != 408
        if head_read and rt.up_done():
            index = client.tracks.index(rt)
            expected = sum(1 for u in client.tracks[index + 1 :] if u.first_ms >= 0)
        if unanswered != expected:
            raise sh.fail(
                f"{c.name()}: {unanswered} requests counted unanswered behind {explain(rt)}, "
                f"{expected} were sent"
            )
    elif unanswered:
        raise sh.fail(f"{c.name()}: {unanswered} requests counted unanswered on a plain close")
    if bits == LINGER_FRONT:
        if last is None or not last.complete or not last.says_close:
            raise sh.fail(f"{c.name()}: a lingering close without a complete response saying close")
        return
    if c.tunnel or client.reset or c.aborted or c.dropped:
        return
    if rt is not None and last is not None and not last.complete:
        excused = (
            (rt.reply is not None and rt.reply.fault in CUT_FAULTS)
            or not rt.up_done()
            or (call == "on_timer" and bool(sh.timer_due & {"resp-body", "body", "bsend"}))
        )
        if not excused:
            raise sh.fail(f"{c.name()}: the response to {explain(rt)} was cut short on {call}")
        return
    if last is not None and last.says_close:
        # Unless the client asked for the close and its request was read whole: it sends
        # nothing after such a request, so there is nothing to discard.
        assert rt is not None
        if not (rt.req.close and rt.up_done() and last.complete):
            raise sh.fail(f"{c.name()}: closed without lingering after a response that said close")
        if not client.started():
            return
    started = client.started()
    if started:
        t = started[0]
        if client.eof_sent and not t.whole:
            return
        after = "after a response that promised keep-alive" if last else "with no response"
        raise sh.fail(f"{c.name()}: closed on {call} with {explain(t)} unanswered {after}")
    if client.eof_sent:
        return
    if call == "on_timer" and "idle" in sh.timer_due:
        return
    raise sh.fail(f"{c.name()}: an idle connection closed on {call} before its deadline")


def check_release(sh: Shell, c: Conn, conn: BackConn, *, reuse: bool = False) -> None:
    """`conn` may be pooled or kept (or, `reuse`, has just been reused for the next request:
    what is queued for it then is that request)."""
    why = conn.clean()
    if not why and (conn.reader.buf or conn.reader.current is not None):
        why = "a request on it is not complete"
    if not why and c.drained:
        why = "the worker drains"
    if not why and c.s.to_back and not reuse:
        why = "bytes are still queued for it"
    t = _track(c, conn.replies[-1].tag) if conn.replies else None
    if not why and (t is None or t.response is None or not t.response.complete):
        why = "no response completed"
    if not why and t is not None and t.back_close:
        why = f"{t.tag} reached it saying close"
    if why:
        raise sh.fail(f"{c.name()}: backend connection #{conn.number} pooled although {why}")


def check_finished(sh: Shell, c: Conn) -> None:
    client = c.client
    conn = c.tunnel_conn
    if conn is None or c.aborted or client.reset or c.dropped:
        return
    if client.eof_sent and c.back_ended_with == "eof" and c.last_call != "on_timer":
        if bytes(conn.tunnel_in) != bytes(client.tunnel_sent):
            raise sh.fail(f"{c.name()}: the tunnel ended before its client's bytes arrived")
        if bytes(client.tunnel_queued) != bytes(conn.tunnel_out):
            raise sh.fail(f"{c.name()}: the tunnel ended before its backend's bytes arrived")


# -- what backends read


def backend_reads(sh: Shell, c: Conn, conn: BackConn, data: bytes) -> None:
    conn.received += len(data)
    if conn.tunnel:
        conn.tunnel_in += data
        sent = c.client.tunnel_sent
        if bytes(conn.tunnel_in) != bytes(sent[: len(conn.tunnel_in)]):
            raise sh.fail(f"{c.name()}: tunnel bytes from the client reached the backend altered")
        return
    if conn.stale:
        if not conn.end and not conn.peer_ended:
            conn.end = "eof"  # it closed as the request went out: nothing is read
            conn.ready_ms = sh.now_ms
        return
    try:
        events = conn.reader.feed(data)
    except ParseError as error:
        what = f"backend #{conn.number} read what it cannot parse: {error}"
        raise sh.fail(f"{c.name()}: {what}") from None
    for kind, obj in events:
        if isinstance(obj, bytes):
            continue  # backends read no tunnel through the reader
        t = _track(c, obj.tag)
        if t is None:
            raise sh.fail(f"{c.name()}: backend #{conn.number} read {obj.tag!r}, never sent")
        if kind == "head":
            if t.req.kind not in ROUTED:
                raise sh.fail(f"{c.name()}: {explain(t)} reached a backend")
            current = c.client.current()
            if t is not current:
                waiting = current.tag if current is not None else "nothing"
                raise sh.fail(f"{c.name()}: a backend read {t.tag} while {waiting} waits")
            if obj.method != t.req.method:
                raise sh.fail(f"{c.name()}: {t.tag} reached its backend as {obj.method}")
            if 0 <= c.drain_call < t.first_connect_call and not obj.says_close:
                raise sh.fail(
                    f"{c.name()}: {t.tag} reached its backend without close while draining"
                )
            keep_alive = "keep-alive" in (obj.header("connection") or "").lower()
            t.back_close = obj.says_close or (obj.version == "1.0" and not keep_alive)
            replies_for(sh, conn, t, obj)
        elif kind == "done":
            if bytes(obj.body) != t.req.body:
                raise sh.fail(f"{c.name()}: the body of {explain(t)} reached its backend altered")
            if conn.waiting is not None and conn.waiting_track is t:
                send_reply(sh, conn, t)
