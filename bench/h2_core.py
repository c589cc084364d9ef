"""Cost of one HTTP/2 request stream through the h2 session core alone (not a test).

    .venv/bin/python -O bench/h2_core.py            # µs per stream, split h2 library / rest
    .venv/bin/python -O bench/h2_core.py --profile  # cProfile of the server side, by cumtime

Drives one `H2Session` as the loop shell would, with a client on the `h2` library: 32 GET
streams per round (as `h2load -m32`), each stream core gets a pooled backend connection,
a 13-byte response, and ends. Only the server side is timed (process time): the client's
own `h2` work is outside the measured calls. The split times every call into the `h2`
connection object (framing, HPACK, flow control, stream states) as "library"; the rest is
sozu's (translation, the HTTP/1.1 stream cores, routing, response reading).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
from http1_core import RESPONSE, context  # bench/ is the script's directory

from sozu.command.types import HttpsListenerConfig
from sozu.worker.core.h2.session import H2Session
from sozu.worker.core.http1.actions import CONNECT

HEADERS = [
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "web.test"),
    (":path", "/"),
    ("user-agent", "h2load nghttp2/1.52.0"),
    ("accept-encoding", "gzip, deflate"),
]
LIBRARY_CALLS = (
    "receive_data",
    "send_headers",
    "send_data",
    "end_stream",
    "data_to_send",
    "acknowledge_received_data",
    "local_flow_control_window",
    "reset_stream",
)


class Clock:
    """Process time spent inside the wrapped library calls."""

    def __init__(self) -> None:
        self.library = 0.0

    def wrap(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return call(*args, **kwargs)
            finally:
                self.library += time.process_time() - started

        return timed


def run(
    rounds: int, *, split: bool, profile: cProfile.Profile | None = None
) -> tuple[float, float]:
    """(µs per stream on the server side, of which µs in the h2 library)."""
    listener = context(HttpsListenerConfig(address="127.0.0.1:8443"))
    session = H2Session(listener, ("10.0.0.1", 5000), served_names=("web.test",), sni="web.test")
    clock = Clock()
    if split:
        for name in LIBRARY_CALLS:
            setattr(session.conn, name, clock.wrap(getattr(session.conn, name)))
    session.start(0.0)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    session.front_data(client.data_to_send(), 0.0)
    client.receive_data(bytes(session.to_front))
    session.to_front.clear()
    clock.library = 0.0
    now, server, streams = 1.0, 0.0, 0
    gc.collect()
    for _ in range(rounds):
        for _ in range(32):
            client.send_headers(client.get_next_available_stream_id(), HEADERS, end_stream=True)
        wire = client.data_to_send()
        started = time.process_time()
        if profile is not None:
            profile.enable()
        session.front_data(wire, now)
        opened, session.opened = session.opened, []
        for stream_id, inner in opened:
            assert inner.actions & CONNECT, bytes(inner.to_front)[:200]
            inner.actions = 0
            inner.back_connected(now, True)
            inner.to_back.clear()
            inner.sent(now)
            inner.back_data(RESPONSE, now)
            data = bytes(inner.to_front)
            inner.to_front.clear()
            inner.sent(now)
            session.response_data(stream_id, data, now)
            assert session.stream_finished(stream_id)
            inner.actions = 0
            inner.abort(now)
            session.stream_closed(stream_id, now)
            streams += 1
        session.cancelled.clear()
        out = bytes(session.to_front)
        session.to_front.clear()
        if profile is not None:
            profile.disable()
        server += time.process_time() - started
        client.receive_data(out)
    return server / streams * 1e6, clock.library / streams * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=600)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profile = cProfile.Profile()
        run(args.rounds // 2, split=False, profile=profile)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        return
    run(50, split=False)
    best = min(run(args.rounds, split=False)[0] for _ in range(3))
    total, library = min((run(args.rounds, split=True) for _ in range(3)), key=lambda r: r[0])
    print(
        f"{best:.1f} µs per stream (best of 3 x {args.rounds * 32} streams,"
        f" -O: {sys.flags.optimize > 0})"
    )
    print(
        f"  timed split: {total:.1f} µs = {library:.1f} in the h2 library "
        f"+ {total - library:.1f} in sozu (the timers add their own cost)"
    )


if __name__ == "__main__":
    main()
