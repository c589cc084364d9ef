"""Cost of one keep-alive request through the HTTP/1.1 session core alone (not a test).

    .venv/bin/python -O bench/http1_core.py            # the production mode
    .venv/bin/python bench/http1_core.py --both        # with and without -O, in subprocesses
    .venv/bin/python -O bench/http1_core.py --close    # a new connection per request

Drives one `Http1Session` as the loop shell would on its hot path, with a pooled backend:
request bytes in -> the backend connection the session kept from the previous request is used
again (the first request: CONNECT -> back_connected(reused)) -> the shell sends to_back ->
response bytes in -> the connection is kept -> the shell sends to_front. No sockets: what is
printed is the core's own cost (parsing, routing, header edits, state), in µs of CPU time
per request (process time, so that other load on the machine weighs less). `--close`: each
request on a new session and saying `Connection: close` (the backend connection is taken
from the pool as the shell would hand it over: CONNECT -> back_connected(reused)), the
session done once its response is sent.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import subprocess
import sys
import time
from random import Random

from sozu.command.types import Cluster, HttpListenerConfig, RequestHttpFrontend
from sozu.worker.core.balancing import Backend, LoadBalancingPolicy
from sozu.worker.core.clusters import TcpCluster
from sozu.worker.core.http.request_id import UlidGenerator
from sozu.worker.core.http.router import Router
from sozu.worker.core.http1.actions import CONNECT
from sozu.worker.core.http1.context import ListenerContext, SharedContext
from sozu.worker.core.http1.session import Http1Session

REQUEST = (
    b"GET /index.html HTTP/1.1\r\nHost: web.test\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 13\r\nConnection: keep-alive\r\n\r\nHello, world!"
)


def context(config: HttpListenerConfig) -> ListenerContext:
    """A listener with one frontend, `web.test`, to a one-backend cluster (bench/h2_core.py
    uses it with an HTTPS listener)."""
    cluster = TcpCluster(
        "web", LoadBalancingPolicy.ROUND_ROBIN, [Backend("b1", ("10.0.0.2", 80))], rng=Random(0)
    )
    clusters = {"web": (Cluster(cluster_id="web"), cluster)}
    counter = itertools.count()
    ids = UlidGenerator(lambda: 1_750_000_000_000, lambda n: next(counter).to_bytes(n, "big"))
    shared = SharedContext(clusters.get, ids=ids, time_ns=lambda: 0)
    router = Router()
    router.add(RequestHttpFrontend(address=config.address, hostname="web.test", cluster_id="web"))
    return ListenerContext(config, router, shared)


def session() -> Http1Session:
    ctx = context(HttpListenerConfig(address="127.0.0.1:8080"))
    core = Http1Session(ctx, ("10.0.0.1", 50000))
    core.start(0.0)
    return core


def exchange(core: Http1Session, request: bytes, now: float) -> bool:
    """One request through the core up to its response (CONNECT answered with a pooled
    connection, as the shell would); whether it asked for one."""
    core.front_data(request, now)
    connected = bool(core.actions)
    if connected:
        assert core.actions == CONNECT
        core.actions = 0
        core.back_connected(now, True)
    core.to_back.clear()
    core.sent(now)
    core.back_data(RESPONSE, now)
    return connected


CLOSE_REQUEST = REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")


def run_close(requests: int) -> float:
    """µs per request over `requests` connections of one request each."""
    ctx = context(HttpListenerConfig(address="127.0.0.1:8080"))
    now = 1.0
    gc.collect()
    started = time.process_time()
    for _ in range(requests):
        core = Http1Session(ctx, ("10.0.0.1", 50000))
        core.start(now)
        connected = exchange(core, CLOSE_REQUEST, now)
        assert connected, "the pooled connection is asked for"
        core.actions = 0  # the backend connection back to the pool, the client's closed
        core.to_front.clear()
        core.sent(now)
        assert core.done
    elapsed = time.process_time() - started
    return elapsed / requests * 1e6


def run(requests: int) -> float:
    """µs per request over `requests` keep-alive requests on one connection."""
    core = session()
    now = 1.0
    gc.collect()
    started = time.process_time()
    for _ in range(requests):
        exchange(core, REQUEST, now)  # a CONNECT on the first request only: later ones reuse
        assert core.actions == 0
        assert core.kept is not None
        core.to_front.clear()
        core.sent(now)
    elapsed = time.process_time() - started
    assert core.counters.requests == requests
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--both", action="store_true", help="run with and without -O")
    parser.add_argument("--close", action="store_true", help="a new session per request")
    args = parser.parse_args()
    if args.both:
        for flags in (["-O"], []):
            command = [sys.executable, *flags, __file__, "--requests", str(args.requests)]
            command += ["--close"] if args.close else []
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            print(f"python {' '.join(flags) or '(asserts on)'}: {result.stdout.strip()}")
        return
    measure, kind = (run_close, "new-connection") if args.close else (run, "keep-alive")
    measure(min(args.requests, 5_000))  # warm up
    best = min(measure(args.requests) for _ in range(3))
    print(f"{best:.1f} µs per {kind} request (best of 3 x {args.requests})")


if __name__ == "__main__":
    main()
