"""HTTP/2 attacks against the real daemon (an HTTPS listener serving h2 by ALPN, one worker,
nginx behind it), each class the h2 core's unit tests cover in memory: rapid reset
(CVE-2023-44487), an HPACK bomb, a zero-window stall, stream-id abuse, and the listener's
h2_* limits. For each: the answer the core gives (GOAWAY or RST_STREAM with its code, read
from raw frames), a curl loop on other connections served throughout without a failure, the
worker's resident memory and CPU time bounded across the attack (and its CPU idle after
it: no spinning), the same worker still running, and the defence's metric moving. Also, a
client's GOAWAY NO_ERROR: the streams it opened before are answered."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hpack
import pytest

from e2e.support.daemon import Daemon, wait_for
from e2e.support.h2_attacks import (
    CANCEL,
    DEFAULT_WINDOW,
    ENABLE_PUSH,
    ENHANCE_YOUR_CALM,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    CurlLoop,
    RawH2,
    WorkerProbe,
    idle_cpu,
    metric_total,
    request_headers,
)
from e2e.support.net import free_port
from e2e.support.nginx import nginx_backends
from e2e.support.tls_site import alpha_beta_https

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 10.0
# The listener's limits (each differs from its default, so that the test sees it applied).
FRONT_TIMEOUT = 2  # seconds (default 60)
MAX_STREAMS = 8  # h2_max_concurrent_streams (default 100)
MAX_RESETS = 50  # h2_max_rst_stream_per_window (default 100)
MAX_HEADER_LIST = 32768  # h2_max_header_list_size (default 65,536)
CONNECTION_WINDOW = 2 * 1024 * 1024  # h2_initial_connection_window (default 1 MiB)
# Bounds on the worker across one attack.
RSS_BOUND = 64 * 1024 * 1024  # growth of its peak resident size
HELD_BOUND = 32 * 1024 * 1024  # what streams behind shut windows may make it hold
CPU_TICKS = 0.05  # CPU times are counted in clock ticks (10 ms): slack for short attacks
IDLE_WINDOW = 0.5  # seconds measured once the attack and the curl loop are over...
IDLE_CPU = 0.2  # ...in which it may use this much CPU (a spinning loop would use it all)


@dataclass
class Site:
    port: int
    ca_file: Path
    metrics_port: int
    daemon: Daemon

    def worker_pid(self) -> int:
        status = self.daemon.running_status()
        assert status is not None, "the worker is not running"
        (worker,) = status["workers"]
        pid: int = worker["pid"]
        return pid

    def connect(self, settings: dict[int, int] | None = None) -> RawH2:
        return RawH2(self.port, self.ca_file, settings=settings, timeout=IO_TIMEOUT)

    def metric(self, name: str, **labels: str) -> float:
        return metric_total(self.metrics_port, name, **labels)

    def wait_metric(self, name: str, at_least: float, **labels: str) -> None:
        """Until the supervisor's series (a snapshot about every second) reach `at_least`."""

        def reached() -> bool | None:
            return True if self.metric(name, **labels) >= at_least else None

        wait_for(reached, timeout=10, what=f"{name}{labels} at {at_least}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One daemon with one worker (every connection, attacker's or not, reaches it) and an
    HTTPS listener with short, non-default h2 limits, for `alpha.test` and `beta.test`."""
    tmp = tmp_path_factory.mktemp("h2-attacks")
    listen, metrics_port = free_port(), free_port()
    with nginx_backends(tmp / "nginx", "alpha", "beta") as nginx:
        config, ca_file, _ = alpha_beta_https(
            tmp,
            listen,
            metrics_port,
            nginx,
            front_timeout=FRONT_TIMEOUT,
            h2_max_concurrent_streams=MAX_STREAMS,
            h2_max_rst_stream_per_window=MAX_RESETS,
            h2_max_header_list_size=MAX_HEADER_LIST,
            h2_initial_connection_window=CONNECTION_WINDOW,
        )
        directory = tmp / "daemon"
        directory.mkdir()
        daemon = Daemon.start(directory, worker_count=1, extra=config)
        try:
            yield Site(listen, ca_file, metrics_port, daemon)
        finally:
            daemon.stop()


@contextlib.contextmanager
def attacked(site: Site, *, cpu_share: float = 1.0) -> Iterator[WorkerProbe]:
    """Run the attack in the block while a curl loop is served on other connections; then
    check that every curl succeeded, that the worker's peak resident size grew by less than
    RSS_BOUND and its CPU time stayed under `cpu_share` of the block's wall time (it cannot
    have spun through it), that it is idle once it is over, and that it is the same
    worker."""
    pid = site.worker_pid()
    with CurlLoop(site.port, site.ca_file) as loop:
        with WorkerProbe(pid) as probe:
            yield probe
        loop.stop(at_least=2)
    assert not loop.failures, loop.failures
    assert loop.served >= 2, "the curl loop was not served"
    assert probe.growth < RSS_BOUND, str(probe)
    assert probe.cpu < cpu_share * probe.wall + CPU_TICKS, str(probe)
    idle = idle_cpu(pid, IDLE_WINDOW)
    print(f"worker {pid}: {probe}; idle cpu {idle:.3f} s; curl served {loop.served}")
    assert idle < IDLE_CPU, f"{idle:.3f} s of CPU in {IDLE_WINDOW} s after the attack: spinning"
    assert site.worker_pid() == pid, "the worker was replaced"


def test_rapid_reset_ends_the_connection_with_enhance_your_calm(site: Site) -> None:
    """CVE-2023-44487: streams opened and reset at once. As many resets as the listener's
    h2_max_rst_stream_per_window are allowed within a second (the connection answers a PING
    after them); one more ends it with GOAWAY ENHANCE_YOUR_CALM naming the last stream."""
    rapid = site.metric("sozu_h2_rapid_reset_total")
    floods = site.metric("sozu_h2_flood_violations_total", kind="rst_stream")
    last = 2 * MAX_RESETS + 1
    with attacked(site), site.connect() as client:
        assert client.wait(lambda: client.settings is not None, IO_TIMEOUT)
        burst = b"".join(client.request(i) + client.rst(i) for i in range(1, last, 2))
        started = time.monotonic()
        client.send(burst + client.ping(b"at-limit"))
        assert client.wait(lambda: bool(client.ping_acks) or client.closed, IO_TIMEOUT)
        assert client.goaway is None, f"{MAX_RESETS} resets, the limit, ended the connection"
        assert client.ping_acks == [b"at-limit"]
        assert time.monotonic() - started < 0.9, "the resets would not fall in one window"
        client.send(client.request(last) + client.rst(last))
        assert client.wait_closed(IO_TIMEOUT), "the connection outlived the rapid reset"
        assert client.goaway == (ENHANCE_YOUR_CALM, last)
        assert not any(seen.headers for seen in client.streams.values()), "a reset was answered"
    site.wait_metric("sozu_h2_rapid_reset_total", rapid + 1)
    site.wait_metric("sozu_h2_flood_violations_total", floods + 1, kind="rst_stream")


def test_an_hpack_bomb_ends_the_connection_with_enhance_your_calm(site: Site) -> None:
    """A 4,000-byte header indexed by a first request, then a block of 16,000 one-byte
    references to it (64 MB once decoded: the limit is 32 KiB) on a second stream: GOAWAY
    ENHANCE_YOUR_CALM naming the first stream, whether the block is indexed-only (sozu's
    own decoder) or holds a literal too (the hpack library's); the first was answered."""
    floods = site.metric("sozu_h2_flood_violations_total", kind="header_list")
    errors = site.metric("sozu_h2_protocol_errors_total")
    bomb = ("x-bomb", "a" * 4000)
    with attacked(site):
        for literal in (False, True):
            with site.connect() as client:
                first = request_headers("alpha.test", "/", bomb)
                client.send(client.headers_frame(1, first))
                assert client.wait(lambda: client.stream(1).finished, IO_TIMEOUT)
                assert client.stream(1).status == b"200"
                fields: list[Any] = request_headers("alpha.test", "/")
                if literal:
                    fields.append(hpack.NeverIndexedHeaderTuple(b"x-literal", b"1"))
                head = client.encoder.encode(fields)
                # One byte: the table entry the first request added (this changes no entry).
                reference = client.encoder.encode([(bomb[0].encode(), bomb[1].encode())])
                assert len(reference) == 1, reference
                client.send(client.block_frames(3, head + reference * 16000))
                assert client.wait_closed(IO_TIMEOUT), "the connection outlived the bomb"
                assert client.goaway == (ENHANCE_YOUR_CALM, 1), literal
                assert client.stream(3).status is None
    site.wait_metric("sozu_h2_flood_violations_total", floods + 2, kind="header_list")
    assert site.metric("sozu_h2_protocol_errors_total") == errors


def test_a_shut_window_resets_the_stream_after_front_timeout(site: Site) -> None:
    """A client advertising SETTINGS_INITIAL_WINDOW_SIZE 0 gets its response's HEADERS and
    no DATA; the stream is reset with CANCEL once front_timeout has passed, the worker idle
    meanwhile; the connection stays and serves a stream whose window is opened."""
    stalls = site.metric("sozu_h2_window_stalls_total")
    with attacked(site, cpu_share=0.5), site.connect({INITIAL_WINDOW_SIZE: 0}) as client:
        client.send(client.request(1))
        stalled = client.stream(1)
        assert client.wait(lambda: bool(stalled.headers) or client.closed, IO_TIMEOUT)
        assert stalled.status == b"200"
        assert client.wait(lambda: stalled.finished, 3 * FRONT_TIMEOUT), "never reset"
        assert stalled.reset == CANCEL
        assert not stalled.body, "data sent past a zero window"
        waited = stalled.reset_at - stalled.head_at
        assert FRONT_TIMEOUT * 0.9 <= waited <= FRONT_TIMEOUT * 2.5, waited
        assert client.goaway is None
        assert not client.closed
        client.send(client.request(3) + client.window_update(3, DEFAULT_WINDOW))
        assert client.wait(lambda: client.stream(3).finished, IO_TIMEOUT)
        assert client.stream(3).ended
        assert bytes(client.stream(3).body) == b"alpha\n"
    site.wait_metric("sozu_h2_window_stalls_total", stalls + 1)


def test_a_clients_goaway_lets_the_streams_it_opened_finish(site: Site) -> None:
    """RFC 9113 §6.8: two requests and a GOAWAY NO_ERROR in one write. Both streams are
    answered; the server's own GOAWAY (NO_ERROR, naming the last stream) comes before the
    end of the connection, which follows the last response."""
    with site.connect() as client:
        client.send(client.request(1) + client.request(3, "/second") + client.goaway_frame(0))
        assert client.wait_closed(IO_TIMEOUT)
        for stream_id in (1, 3):
            seen = client.stream(stream_id)
            assert seen.ended, f"stream {stream_id} not answered"
            assert seen.status == b"200"
            assert bytes(seen.body) == b"alpha\n"
        assert client.goaway == (NO_ERROR, 3)


def test_stream_id_abuse_is_a_connection_error(site: Site) -> None:
    """RFC 9113 §5.1.1: a client stream on an even id, or on an id lower than one it already
    opened, is a connection error PROTOCOL_ERROR; reopening a stream it ended is one of type
    STREAM_CLOSED (§5.1, "closed"). The GOAWAY names the last stream processed."""
    errors = site.metric("sozu_h2_protocol_errors_total")
    with attacked(site):
        with site.connect() as client:
            client.send(client.request(2))
            assert client.wait_closed(IO_TIMEOUT)
            assert client.goaway == (PROTOCOL_ERROR, 0)
        with site.connect() as client:
            client.send(client.request(5))
            assert client.wait(lambda: client.stream(5).finished, IO_TIMEOUT)
            assert client.stream(5).status == b"200"
            client.send(client.request(3))
            assert client.wait_closed(IO_TIMEOUT)
            assert client.goaway == (PROTOCOL_ERROR, 5)
            assert client.stream(3).status is None
        with site.connect() as client:
            client.send(client.request(1))
            assert client.wait(lambda: client.stream(1).finished, IO_TIMEOUT)
            assert client.stream(1).status == b"200"
            client.send(client.request(1))
            assert client.wait_closed(IO_TIMEOUT)
            assert client.goaway == (STREAM_CLOSED, 1)
    site.wait_metric("sozu_h2_protocol_errors_total", errors + 3)


def test_the_listener_h2_limits_are_advertised_and_applied(site: Site) -> None:
    """SETTINGS carries h2_max_concurrent_streams and h2_max_header_list_size (and no push);
    the connection window is raised to h2_initial_connection_window. Of more streams than
    allowed at once, those past the limit are refused (RST_STREAM REFUSED_STREAM, RFC 9113
    §5.1.2: the client may retry them) while the others are answered; their header blocks
    were decoded all the same (a retry referring to a refused block's table entry is read
    right). A header list under the limit is served; one over it (under the default limit)
    ends the connection with GOAWAY ENHANCE_YOUR_CALM."""
    errors = site.metric("sozu_h2_protocol_errors_total")
    floods = site.metric("sozu_h2_flood_violations_total", kind="header_list")
    with attacked(site):
        with site.connect() as client:
            raised = (0, CONNECTION_WINDOW - DEFAULT_WINDOW)
            assert client.wait(
                lambda: client.settings is not None and raised in client.window_updates,
                IO_TIMEOUT,
            )
            assert client.settings is not None
            assert client.settings.get(MAX_CONCURRENT_STREAMS) == MAX_STREAMS
            assert client.settings.get(MAX_HEADER_LIST_SIZE) == MAX_HEADER_LIST
            assert client.settings.get(ENABLE_PUSH) == 0
            ids = list(range(1, 2 * (MAX_STREAMS + 4), 2))
            # Each path is a new table entry (literal with incremental indexing).
            client.send(b"".join(client.request(i, f"/headers?n={i}") for i in ids))
            assert client.wait(
                lambda: all(client.stream(i).finished for i in ids) or client.closed, IO_TIMEOUT
            )
            assert client.goaway is None, client.goaway
            answered, over = ids[:MAX_STREAMS], ids[MAX_STREAMS:]
            for i in answered:
                seen = client.stream(i)
                assert seen.ended, (i, seen)
                assert seen.status == b"200", (i, seen)
                assert f"request: GET /headers?n={i} HTTP/1.1" in seen.body.decode(), i
            for i in over:
                assert client.stream(i).reset == REFUSED_STREAM, (i, client.stream(i))
                assert not client.stream(i).headers
            retry = 2 * (MAX_STREAMS + 4) + 1
            client.send(client.request(retry, f"/headers?n={over[-1]}"))  # an indexed field
            assert client.wait(lambda: client.stream(retry).finished, IO_TIMEOUT)
            body = client.stream(retry).body.decode()
            assert f"request: GET /headers?n={over[-1]} HTTP/1.1" in body, body
        pads = [(f"x-pad-{i}", "a" * 4000) for i in range(10)]
        with site.connect() as client:
            under = request_headers("alpha.test", "/", *pads[:4])  # about 16 KB
            client.send(client.headers_frame(1, under))
            assert client.wait(lambda: client.stream(1).finished or client.closed, IO_TIMEOUT)
            assert client.stream(1).status is not None, client.stream(1)
            over_limit = request_headers("alpha.test", "/", *pads)  # about 40 KB
            client.send(client.headers_frame(3, over_limit))
            assert client.wait_closed(IO_TIMEOUT), "a header list over the limit was accepted"
            assert client.goaway == (ENHANCE_YOUR_CALM, 1), client.stream(3)
    # Refusals for the concurrency limit have no series of their own: no protocol error.
    site.wait_metric("sozu_h2_flood_violations_total", floods + 1, kind="header_list")
    assert site.metric("sozu_h2_protocol_errors_total") == errors


def test_a_shut_window_does_not_make_the_worker_hold_whole_responses(site: Site) -> None:
    """Streams whose client keeps its window shut, each asking for a 10 MiB file (80 MiB in
    all): what the worker holds for them until front_timeout resets them stays bounded (a
    buffer per stream: each stream's core stops reading its backend), not the files."""
    pid = site.worker_pid()
    ids = list(range(1, 2 * MAX_STREAMS, 2))
    with WorkerProbe(pid) as probe, site.connect({INITIAL_WINDOW_SIZE: 0}) as client:
        client.send(b"".join(client.request(i, "/files/big.bin") for i in ids))
        assert client.wait(
            lambda: all(client.stream(i).finished for i in ids) or client.closed,
            3 * FRONT_TIMEOUT,
        )
        assert [client.stream(i).reset for i in ids] == [CANCEL] * len(ids)
    print(f"worker {pid}: {probe}")
    assert probe.growth < HELD_BOUND, probe
