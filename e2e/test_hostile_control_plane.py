"""A hostile control plane beside live traffic: nothing it sends stops, relaunches or desyncs
the daemon, and the data plane does not notice.

A daemon with two workers gets 2,000 requests drawn from the request strategies (every kind
but the lifecycle ones; valid, hostile and wrongly typed; addresses on loopback only; nothing
naming the loops' clusters, listeners or backends) over four command connections, interleaved
with connection resets inside frames, half-written frames, oversize frames (with and without a
readable id), frames in a future protocol version and clients that never read their answers,
and, on the Prometheus endpoint, resets, GETs that never end and readers that never read.
Meanwhile a curl loop (HTTP through an HTTP listener to nginx) and a DNS loop (UDP through a UDP
listener to NSD) run without pause.

Afterwards: the supervisor and both workers run with their original pids (no crash, no
relaunch), every worker's state hash is the supervisor's, every generated request got a final
answer, the loops saw no failure, the daemon answers a plain Status, and the supervisor's
error counters show the hostile clients were seen. Skipped when curl, nginx or nsd is missing,
unless `CI=true`.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.hostile_control import (
    CommandSlowReader,
    CurlLoop,
    DnsLoop,
    PrometheusSlowReader,
    Tally,
    call,
    future_version,
    generated_payloads,
    half_frame_then_close,
    oversize_frame,
    oversize_then_reset,
    prometheus_partial_get,
    prometheus_reset,
    reset_mid_frame,
    send_generated,
)
from e2e.support.http_backends import cluster, listener
from e2e.support.net import Series, free_port, prometheus_series
from e2e.support.nginx import nginx_backends
from e2e.support.nsd import Nsd
from e2e.support.programs import require_program

pytestmark = pytest.mark.e2e

REQUESTS = 2000
CONNECTIONS = 4
STORM_SECONDS = 10.0  # the generated requests are spread over this long
MAX_FRAME = 2_000_000  # the default max_command_buffer_size
WEB, DNS = "loop_web", "loop_dns"
# Reasons a hostile client may leave in sozu_command_errors_total; any other (an exception's
# class name) is a bug the boundaries caught.
PEER_REASONS = {
    "slow_reader",
    "too_many_in_flight",
    "too_many_connections",
    "BrokenResourceError",
    "ClosedResourceError",
    "ProtocolError",
}
PROMETHEUS_REASONS = {"too_many_scrapes", "BrokenResourceError", "ClosedResourceError"}
WHOLE_GET = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _dns_cluster(listen: int, server: Nsd) -> str:
    return f"""
[[listeners]]
protocol = "udp"
address = "127.0.0.1:{listen}"
front_timeout = 5
back_timeout = 5

[clusters.{DNS}]
protocol = "tcp"
frontends = [{{ address = "127.0.0.1:{listen}" }}]
backends = [{{ address = "{server.address}", backend_id = "ns1" }}]

[clusters.{DNS}.udp]
affinity_key = "SOURCE_IP_PORT"
responses = 1
"""


@pytest.fixture
def nsd(tmp_path: Path) -> Iterator[Nsd]:
    server = Nsd(tmp_path, "ns1")
    try:
        yield server
    finally:
        server.stop()


def _errors(series: Series, family: str) -> dict[str, float]:
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in series.items()
        if name == f"sozu_{family}_errors_total"
    }


def _scraped(port: int) -> Series | None:
    """A scrape, or None when the endpoint cannot be read just now (poll again)."""
    with contextlib.suppress(OSError):
        return prometheus_series(port)
    return None


def _slow_reader_dropped(port: int) -> bool | None:
    series = _scraped(port)
    dropped = series is not None and _errors(series, "command").get("slow_reader", 0) >= 1
    return True if dropped else None


def _identity(status: dict[str, Any]) -> tuple[int, list[tuple[int, int, int]]]:
    workers = sorted((w["id"], w["slot"], w["pid"]) for w in status["workers"])
    return status["supervisor"]["pid"], workers


def _first_success(loop: CurlLoop | DnsLoop, what: str) -> None:
    problems: list[str] = []

    def succeeded() -> bool | None:
        problem = loop.once()
        if problem is None:
            return True
        problems.append(problem)
        return None

    try:
        wait_for(succeeded, what=what)
    except TimeoutError:
        raise AssertionError(f"{what}: {problems[-3:]}") from None


class _Hostile:
    """Frame and scrape abuse, one action after the other (oversize frames every few rounds),
    until told to stop."""

    PAUSE = 0.01  # between two actions

    def __init__(self, daemon: Daemon, metrics_port: int) -> None:
        self.path = daemon.socket_path
        self.port = metrics_port
        self.done: dict[str, int] = {}
        self.problems: list[str] = []
        self.held: list[socket.socket] = []
        path, port = self.path, self.port
        # (name, every how many rounds, action of the round number)
        self.actions: list[tuple[str, int, Callable[[int], object]]] = [
            ("reset mid-frame", 1, lambda _: reset_mid_frame(path)),
            ("half-written frame", 1, lambda n: half_frame_then_close(path, n * 7 + 1)),
            ("future version", 1, self._future_version),
            ("oversize with id", 4, self._oversize),
            ("oversize without id", 4, self._oversize_without_id),
            ("oversize then reset", 4, lambda _: oversize_then_reset(path)),
            ("metrics reset in request", 1, lambda _: prometheus_reset(port, b"GET /metr")),
            ("metrics reset after request", 1, lambda _: prometheus_reset(port, WHOLE_GET)),
            ("metrics partial GET", 1, self._partial_get),
        ]

    def _future_version(self, round_: int) -> None:
        answer = future_version(self.path, 2 + round_ % 3 * 1000)
        if answer["status"] != "failure" or "protocol version" not in answer["message"]:
            self.problems.append(f"future version answered {answer}")

    def _oversize(self, _: int) -> None:
        answer = oversize_frame(self.path, MAX_FRAME, readable_id=True)
        if answer is None or "exceeds the maximum" not in answer["message"]:
            self.problems.append(f"oversize frame answered {answer}")

    def _oversize_without_id(self, _: int) -> None:
        oversize_frame(self.path, MAX_FRAME, readable_id=False)

    def _partial_get(self, _: int) -> None:
        # Up to 10 held at once: more than the endpoint serves together (8).
        if len(self.held) >= 10:
            self.held.pop(0).close()
        self.held.append(prometheus_partial_get(self.port))

    def run(self, until: threading.Event) -> None:
        for round_ in itertools.count():
            for name, every, action in self.actions:
                if until.wait(self.PAUSE):
                    return
                if round_ % every:
                    continue
                try:
                    action(round_)
                except Exception as error:
                    self.problems.append(f"{name}: {error!r}")
                self.done[name] = self.done.get(name, 0) + 1

    def close(self) -> None:
        for sock in self.held:
            sock.close()
        self.held.clear()


def test_a_hostile_control_plane_beside_live_traffic(
    start_daemon: DaemonFactory, nsd: Nsd, tmp_path: Path
) -> None:
    started = time.monotonic()
    curl = require_program("curl")
    with nginx_backends(tmp_path / "nginx", "web") as nginx:
        http_port, udp_port, metrics_port = free_port(), free_port(), free_port()
        daemon = start_daemon(
            extra=f'[metrics]\nprometheus_address = "127.0.0.1:{metrics_port}"\n'
            + listener(http_port)
            + cluster(
                WEB,
                [{"address": f"127.0.0.1:{http_port}", "hostname": "web.test"}],
                [{"address": nginx.address("web"), "backend_id": "nginx"}],
            )
            + _dns_cluster(udp_port, nsd)
        )
        protected = {WEB, DNS, nginx.address("web"), nsd.address}
        protected |= {f"127.0.0.1:{port}" for port in (http_port, udp_port, metrics_port)}
        payloads = generated_payloads(REQUESTS, protected)

        before = daemon.wait_running()
        curl_loop = CurlLoop(curl, http_port, "web.test", "web\n")
        dns_loop = DnsLoop(udp_port, "ns1")
        # Both paths answer before the storm starts.
        _first_success(curl_loop, "HTTP through sozu")
        _first_success(dns_loop, "DNS through sozu")
        errors_before = prometheus_series(metrics_port)
        curl_loop.start()
        dns_loop.start()

        tally = Tally()
        hostile = _Hostile(daemon, metrics_port)
        slow = [CommandSlowReader(daemon.socket_path, 400) for _ in range(2)]
        slow_scrapes = [PrometheusSlowReader(metrics_port) for _ in range(3)]
        pace = STORM_SECONDS * CONNECTIONS / REQUESTS
        senders = [
            threading.Thread(
                target=send_generated,
                args=(daemon.socket_path, payloads[index::CONNECTIONS], tally),
                kwargs={"pace": pace},
                daemon=True,
            )
            for index in range(CONNECTIONS)
        ]
        finished = threading.Event()
        abuser = threading.Thread(target=hostile.run, args=(finished,), daemon=True)
        storm_started = time.monotonic()
        try:
            for sender in senders:
                sender.start()
            abuser.start()
            for sender in senders:
                sender.join(STORM_SECONDS * 6)
                assert not sender.is_alive(), "generated requests still unanswered"
            storm = time.monotonic() - storm_started
            finished.set()
            abuser.join(60)
            hostile.close()
            # The command slow readers are dropped SEND_TIMEOUT (10 s) after their answers
            # stopped flowing, which the storm outlasts: no wait in the usual case.
            wait_for(
                lambda: _slow_reader_dropped(metrics_port),
                timeout=30,
                what="a command slow reader dropped",
            )
        finally:
            finished.set()
            abuser.join(60)
            hostile.close()
            for reader in slow:
                reader.close()
            for scrape in slow_scrapes:
                scrape.close()
            curl_loop.stop()
            dns_loop.stop()

        # Every generated request was answered, ok or failure; every hostile client got what
        # it should have.
        assert tally.problems == []
        assert sum(tally.answers.values()) == REQUESTS, tally.answers
        assert tally.answers["ok"] > 0, tally.answers
        assert tally.answers["failure"] > 0, tally.answers
        assert not abuser.is_alive()
        assert hostile.problems == []
        assert all(count > 0 for count in hostile.done.values()), hostile.done
        assert len(hostile.done) == len(hostile.actions), hostile.done

        # The data plane never noticed.
        assert curl_loop.failures == [], curl_loop.failures[:5]
        assert dns_loop.failures == [], dns_loop.failures[:5]
        assert curl_loop.successes > 0
        assert dns_loop.successes > 0

        # Same supervisor, same workers, all in sync.
        assert daemon.process.poll() is None, daemon.log()[-3000:]
        after = wait_for(daemon.running_status, timeout=20, what="every worker in sync")
        assert _identity(after) == _identity(before), (before, after)
        assert [w["restarts"] for w in after["workers"]] == [0] * len(after["workers"])
        state_hash = after["supervisor"]["state_hash"]
        for worker in after["workers"]:
            assert worker["state_hash"] == state_hash, (worker, state_hash)
            assert worker["hash_ok"], worker
        status = call(daemon.socket_path, {"type": "Status"})
        assert status["status"] == "ok", status

        # The hostile clients were seen, and counted as what they were, never as a bug.
        series = wait_for(lambda: _scraped(metrics_port), what="a scrape after the storm")
        command = _errors(series, "command")
        prometheus = _errors(series, "prometheus")
        # Readers that never read, resets inside frames, frames cut short or without an id.
        for reason in ("slow_reader", "BrokenResourceError", "ProtocolError"):
            assert command.get(reason, 0) >= 1, (reason, command)
        assert set(command) <= PEER_REASONS, command
        assert set(prometheus) <= PROMETHEUS_REASONS, prometheus
        assert sum(prometheus.values()) > sum(_errors(errors_before, "prometheus").values())
        assert _errors(series, "state_change") == {}
        assert series[("sozu_worker_restarts_total", frozenset())] == 0
        assert "Traceback" not in daemon.log(), daemon.log()[-5000:]

    elapsed = time.monotonic() - started
    print(
        f"storm {storm:.1f} s, total {elapsed:.1f} s; answers {dict(tally.answers)}; "
        f"curl {curl_loop.successes}, dns {dns_loop.successes}; hostile {hostile.done}; "
        f"command errors {command}; prometheus errors {prometheus}"
    )
