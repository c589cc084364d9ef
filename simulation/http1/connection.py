"""One simulated client connection (`Conn`): its session, its client, and what the shell
holds for it (backend connections, a dial in progress, closes asked for, what it has seen
queued), as shell.py and the runner track it."""

from __future__ import annotations

from simulation.http1.model import Client
from simulation.http1.world import BackConn, Dial
from sozu.worker.core.http1.session import Http1Session


class Conn:
    """One client connection: its session, its client, and what the shell holds for it."""

    def __init__(self, sid: int, s: Http1Session, client: Client, now_ms: int) -> None:
        self.sid = sid
        self.s = s
        self.client = client
        self.back: BackConn | None = None
        self.kept: BackConn | None = None  # the idle connection the session keeps
        self.dial: Dial | None = None
        self.front_close = 0  # CLOSE_FRONT or LINGER_FRONT once asked
        self.finished = False
        self.drained = False
        self.drain_call = -1
        self.dropped = False  # the core dropped what was queued for the client
        self.aborted = False
        self.tunnel = False
        self.tunnel_conn: BackConn | None = None
        self.tunnel_ms = self.tunnel_front_ms = self.tunnel_back_ms = now_ms
        self.shut_back_due = False
        self.shut_front_due = False
        self.front_seen = 0  # len(to_front) after the last look
        self.back_seen = 0
        self.fsend_origin = -1
        self.bsend_origin = -1
        self.last_fire_ms = -1
        self.connected_ms = -1
        self.last_back_ms = -1
        self.resp_bytes = 0  # response bytes delivered on the current backend connection
        self.retry_expected = False
        self.close_due = False
        self.last_call = ""
        self.back_ended_with = ""

    def name(self) -> str:
        return f"session {self.sid}"
