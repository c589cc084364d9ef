"""What a backend answers once it has read a request head: the reply world.py plans for it,
a 100 Continue first when the request expects one, then the reply's bytes queued on the
backend connection, each write with the delay before the backend sends it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulation.http1.model import Track
from simulation.http1.wire import UPGRADE, Message
from simulation.http1.world import BackConn, plan_reply

if TYPE_CHECKING:
    from simulation.http1.shell import Shell


def queue_reply(sh: Shell, conn: BackConn, t: Track | None, wire: bytes, head_len: int) -> None:
    """The backend writes `wire`; `t`'s final head ends `head_len` bytes into it."""
    if t is not None and 0 < head_len <= len(wire):
        conn.marks.append((conn.queued + head_len, t))
    conn.outbox += wire
    conn.queued += len(wire)
    conn.main_left += len(wire)
    delay = sh.rng.choice((0, 0, 0, 5, 50, 400)) if sh.rng.random() < 0.99 else 2500
    conn.ready_ms = max(conn.ready_ms, sh.now_ms + delay)


def replies_for(sh: Shell, conn: BackConn, t: Track, request: Message) -> None:
    """The backend read `t`'s head: plan its answer and send what goes at once."""
    reply = plan_reply(sh.rng, request, t.req.kind == UPGRADE, sh.big)
    t.reply = reply
    conn.replies.append(reply)
    t.interims_sent += reply.interim.count(b"HTTP/1.1 1")
    if reply.says_close:
        conn.said_close = True
    if reply.tunnel:
        conn.tunnel = True
        conn.tunnel_out += reply.body
    if t.req.expect and not reply.early and not reply.fault and sh.rng.random() < 0.7:
        t.interims_sent += 1
        continue_head = b"HTTP/1.1 100 Continue\r\nX-Sim-Tag: %s\r\n\r\n" % t.tag.encode()
        queue_reply(sh, conn, None, continue_head, 0)
    if reply.early or request.framing == "none":
        send_reply(sh, conn, t)
    else:
        conn.waiting = reply
        conn.waiting_track = t


def send_reply(sh: Shell, conn: BackConn, t: Track) -> None:
    reply = t.reply
    assert reply is not None
    conn.waiting = None
    conn.waiting_track = None
    queue_reply(sh, conn, t, reply.wire, len(reply.interim) + len(reply.head))
    conn.outbox += reply.extra
    conn.queued += len(reply.extra)
    if reply.end in ("eof", "reset"):
        conn.end = reply.end
