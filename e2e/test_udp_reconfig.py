"""Hot UDP reconfiguration under a continuous query loop, through the real daemon and CLI.

A client thread sends queries without pause (a fresh client socket each, so each is a new flow
and `responses = 1` closes it after the answer; 250 ms per query) while the test adds and
removes backends, changes the listener's timeouts, switches the cluster to Maglev, and
deactivates then reactivates the listener. The daemon never crashes (workers keep their pid,
no restart), every worker's state hash agrees with the supervisor's, an added backend gets new
flows and a removed one none, nothing sent while the listener is inactive is answered before
it is active again, and the counts agree: each query reaches a backend at most once
(answered <= received by the backends <= sent), and the proxy's datagram counters agree.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.net import free_port
from e2e.support.udp_backends import NamedUdpEcho, listener_value

pytestmark = pytest.mark.e2e

QUERY_TIMEOUT = 0.25
PACE = 0.003  # between queries: leaves CPU to the daemon on a small machine


@dataclass
class Outcome:
    sent_at: float
    answered_at: float | None = None
    backend: str | None = None


class QueryLoop:
    """Queries `127.0.0.1:port` from a thread until stopped; one `Outcome` per query."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.outcomes: list[Outcome] = []
        self.foreign: list[bytes] = []  # answers that match no query of their socket
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> QueryLoop:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            payload = f"q{seq}".encode()
            outcome = Outcome(time.monotonic())
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                sock.sendto(payload, ("127.0.0.1", self.port))
                deadline = outcome.sent_at + QUERY_TIMEOUT
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    try:
                        answer = sock.recv(65535)
                    except (TimeoutError, OSError):
                        break
                    name, _, echoed = answer.partition(b":")
                    if echoed == payload:
                        outcome.answered_at = time.monotonic()
                        outcome.backend = name.decode()
                        break
                    with self._lock:
                        self.foreign.append(answer)
            with self._lock:
                self.outcomes.append(outcome)
            time.sleep(PACE)

    def since(self, start: float) -> list[Outcome]:
        """The finished queries sent at or after `start`."""
        with self._lock:
            return [o for o in self.outcomes if o.sent_at >= start]

    def wait_answers(self, start: float, count: int, what: str, timeout: float = 10.0) -> None:
        """`count` queries sent since `start` are answered within `timeout` s."""
        wait_for(
            lambda: (
                True if sum(o.answered_at is not None for o in self.since(start)) >= count else None
            ),
            timeout=timeout,
            what=what,
        )


@pytest.fixture
def echoes() -> Iterator[list[NamedUdpEcho]]:
    servers = [NamedUdpEcho(name) for name in ("b1", "b2", "b3")]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def _config(listen: int, metrics_port: int, backends: list[NamedUdpEcho]) -> str:
    entries = ", ".join(f'{{ address = "{b.address}", backend_id = "{b.name}" }}' for b in backends)
    return f"""
[metrics]
prometheus_address = "127.0.0.1:{metrics_port}"

[[listeners]]
protocol = "udp"
address = "127.0.0.1:{listen}"
front_timeout = 2
back_timeout = 2

[clusters.hot]
protocol = "tcp"
frontends = [{{ address = "127.0.0.1:{listen}" }}]
backends = [{entries}]

[clusters.hot.udp]
affinity_key = "SOURCE_IP_PORT"
responses = 1
"""


def _cli(daemon: Daemon, *args: str) -> float:
    """Run a CLI command that must succeed; the time it returned."""
    result = daemon.sozu(*args)
    assert result.returncode == 0, (args, result.stderr, result.stdout)
    return time.monotonic()


def test_reconfiguration_under_a_query_loop(
    start_daemon: DaemonFactory, echoes: list[NamedUdpEcho]
) -> None:
    b1, b2, b3 = echoes
    listen, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{listen}"
    daemon = start_daemon(extra=_config(listen, metrics_port, [b1, b2]))
    pids = {w["id"]: w["pid"] for w in daemon.wait_running()["workers"]}

    with QueryLoop(listen) as loop:
        start = time.monotonic()
        loop.wait_answers(start, 30, "30 answers at start")

        added = _cli(daemon, "backend", "add", "-i", "hot", "--backend-id", "b3", "-a", b3.address)
        wait_for(
            lambda: True if any(o.backend == "b3" for o in loop.since(added)) else None,
            timeout=5,
            what="an answer from the added backend",
        )

        removed = _cli(
            daemon, "backend", "remove", "-i", "hot", "--backend-id", "b1", "-a", b1.address
        )
        loop.wait_answers(removed, 60, "60 answers after removing b1")
        after_removal = {o.backend for o in loop.since(removed) if o.backend is not None}
        assert after_removal == {"b2", "b3"}, after_removal

        updated = _cli(
            daemon, "listener", "udp", "update", "-a", address,
            "--front-timeout", "1", "--back-timeout", "3",
        )  # fmt: skip
        listeners = daemon.sozu("-j", "listener", "list").stdout
        assert '"front_timeout":1' in listeners.replace(" ", ""), listeners
        assert '"back_timeout":3' in listeners.replace(" ", ""), listeners
        loop.wait_answers(updated, 30, "30 answers after the timeouts changed")

        switched = _cli(
            daemon, "cluster", "add", "-i", "hot", "--load-balancing-policy", "maglev",
            "--udp-affinity", "source_ip_port", "--udp-responses", "1",
        )  # fmt: skip
        loop.wait_answers(switched, 30, "30 answers after switching to Maglev")
        after_switch = {o.backend for o in loop.since(switched) if o.backend is not None}
        assert after_switch <= {"b2", "b3"}, after_switch

        inactive = _cli(daemon, "listener", "udp", "deactivate", "-a", address)
        wait_for(
            lambda: True if len(loop.since(inactive)) >= 10 else None,
            timeout=10,
            what="10 queries sent to the inactive listener",
        )
        reactivating = time.monotonic()
        active = _cli(daemon, "listener", "udp", "activate", "-a", address)
        loop.wait_answers(active, 30, "30 answers after reactivation")
        end = time.monotonic()

    outcomes = loop.since(0.0)
    sent = len(outcomes)
    answered = [o for o in outcomes if o.answered_at is not None]
    unanswered = sent - len(answered)
    assert loop.foreign == []
    # Sent while inactive: not answered before the listener was being activated again.
    while_inactive = [o for o in outcomes if inactive <= o.sent_at < reactivating]
    assert len(while_inactive) >= 10
    early = [
        o for o in while_inactive if o.answered_at is not None and o.answered_at < reactivating
    ]
    assert early == [], early
    # Answered in every active phase (checked above); outside the inactive window, nearly all.
    assert unanswered <= len(while_inactive) + 0.1 * sent, (sent, len(answered))
    assert end > start

    status = daemon.wait_running()
    supervisor_hash = status["supervisor"]["state_hash"]
    for worker in status["workers"]:
        assert worker["restarts"] == 0, worker
        assert worker["state_hash"] == supervisor_hash, status
        assert pids[worker["id"]] == worker["pid"], (pids, worker)
    assert daemon.process.poll() is None

    # Each query reached a backend at most once and every answer came from one: answered <=
    # received by the backends <= sent; the proxy's counters sit in the same bounds (the
    # queries lost to the inactive listener were never read, so never counted).
    metrics: dict[str, float] = {}

    def counters_settled() -> bool | None:
        metrics.update(
            (name, listener_value(metrics_port, f"sozu_udp_{name}", address))
            for name in ("datagrams_in_total", "datagrams_out_total", "flows_evicted_total")
        )
        metrics["at_backends"] = sum(echo.datagrams for echo in echoes)
        return (
            True
            if len(answered) <= metrics["at_backends"] <= sent
            and metrics["datagrams_in_total"] == metrics["at_backends"]
            and len(answered) <= metrics["datagrams_out_total"] <= metrics["at_backends"]
            and metrics["flows_evicted_total"] >= metrics["datagrams_out_total"]
            else None
        )

    try:
        wait_for(counters_settled, timeout=5, what="counters between answers and sends")
    except TimeoutError:
        raise AssertionError((metrics, len(answered), sent)) from None
