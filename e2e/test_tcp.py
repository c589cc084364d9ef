"""TCP proxying through the real daemon: byte-exact relaying, balancing, live backend changes,
listener (de)activation, a killed worker's backlog, and the metrics of it all."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.support.backends import NamedEcho, exchange
from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.net import free_port, scrape

pytestmark = pytest.mark.e2e


def _config(listen: int, backends: list[NamedEcho], metrics_port: int | None = None) -> str:
    lines = []
    if metrics_port is not None:
        lines += ["[metrics]", f'prometheus_address = "127.0.0.1:{metrics_port}"']
    lines += [
        "[[listeners]]",
        'protocol = "tcp"',
        f'address = "127.0.0.1:{listen}"',
        "[clusters.echo]",
        'protocol = "tcp"',
        f'frontends = [{{ address = "127.0.0.1:{listen}" }}]',
        "backends = ["
        + ", ".join(f'{{ address = "{b.address}", backend_id = "{b.name}" }}' for b in backends)
        + "]",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def echoes() -> Iterator[list[NamedEcho]]:
    servers = [NamedEcho(name) for name in ("alpha", "beta", "gamma")]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def _served_by(port: int, count: int) -> list[str]:
    return [exchange(port) for _ in range(count)]


def _counter(text: str, name: str, listener: str) -> float | None:
    match = re.search(rf'^{name}\{{listener="{re.escape(listener)}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


def test_tcp_proxying_balancing_live_backends_and_metrics(
    start_daemon: DaemonFactory, echoes: list[NamedEcho]
) -> None:
    alpha, beta, gamma = echoes
    listen, metrics_port = free_port(), free_port()
    listener = f"127.0.0.1:{listen}"
    daemon = start_daemon(extra=_config(listen, [alpha, beta], metrics_port))
    made = 0

    # Byte-exact, 1 MiB each way.
    payload = random.Random(7).randbytes(1 << 20)
    assert exchange(listen, payload) in ("alpha", "beta")
    made += 1

    # Round robin in each worker: with 8 connections over 2 workers, both backends serve.
    names = _served_by(listen, 8)
    made += 8
    assert set(names) == {"alpha", "beta"}, names

    # A backend added live receives traffic.
    added = daemon.sozu(
        "backend", "add", "-i", "echo", "--backend-id", "gamma", "-a", gamma.address
    )
    assert added.returncode == 0, added.stderr
    names = _served_by(listen, 12)
    made += 12
    assert "gamma" in names, names

    # A removed backend gets no new connection.
    removed = daemon.sozu(
        "backend", "remove", "-i", "echo", "--backend-id", "alpha", "-a", alpha.address
    )
    assert removed.returncode == 0, removed.stderr
    before = alpha.connections
    names = _served_by(listen, 12)
    made += 12
    assert "alpha" not in names, names
    assert alpha.connections == before
    assert {"beta", "gamma"} <= set(names)

    # The Prometheus endpoint and `sozu -j metrics get` count every connection.
    def scraped() -> str | None:
        text = scrape(metrics_port)
        return text if _counter(text, "sozu_tcp_connections_total", listener) == made else None

    text = wait_for(scraped, timeout=5, what=f"sozu_tcp_connections_total == {made}")
    assert _counter(text, "sozu_tcp_bytes_in_total", listener) is not None
    report = daemon.sozu_json("-t", "15000", "metrics", "get")
    main = report["content"]["main"]
    key = f'sozu_tcp_connections_total{{listener="{listener}"}}'
    assert main[key] == {"kind": "counter", "value": made}
    per_worker = daemon.sozu_json("-t", "15000", "metrics", "get", "--workers")["content"][
        "workers"
    ]
    assert sum(values[key]["value"] for values in per_worker.values() if key in values) == made

    # Deactivated: refused. Activated again: served.
    result = daemon.sozu("listener", "tcp", "deactivate", "-a", listener)
    assert result.returncode == 0, result.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", listen), timeout=2).close()
    result = daemon.sozu("listener", "tcp", "activate", "-a", listener)
    assert result.returncode == 0, result.stderr
    assert set(_served_by(listen, 4)) <= {"beta", "gamma"}


def _slot_worker(daemon: Daemon, slot: int) -> dict[str, Any] | None:
    status = daemon.status()
    if status is None:
        return None
    for worker in status["workers"]:
        if worker["slot"] == slot and worker["state"] == "running":
            found: dict[str, Any] = worker
            return found
    return None


def test_killed_worker_backlog_is_served_by_its_replacement(
    start_daemon: DaemonFactory, echoes: list[NamedEcho]
) -> None:
    listen = free_port()
    daemon = start_daemon(extra=_config(listen, echoes[:2]))
    victim = _slot_worker(daemon, 0)
    assert victim is not None
    os.kill(victim["pid"], signal.SIGKILL)
    # Connections opened while slot 0 has no worker: the ones hashed to its socket wait in
    # the supervisor's backlog and are served by the replacement, none is refused or reset.
    sockets = []
    for _ in range(8):
        sock = socket.create_connection(("127.0.0.1", listen), timeout=10)
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        sockets.append(sock)
    started = time.monotonic()
    for sock in sockets:
        with sock:
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            assert received.split(b"\n", 1)[1] == b"hello"
    replacement = wait_for(
        lambda: w if (w := _slot_worker(daemon, 0)) and w["id"] != victim["id"] else None,
        timeout=10,
        what="slot 0 relaunched",
    )
    assert replacement["restarts"] == 1
    assert time.monotonic() - started < 10


def test_bind_failure_is_refused_and_soft_stop_drains_tcp_sessions(
    start_daemon: DaemonFactory, echoes: list[NamedEcho]
) -> None:
    listen = free_port()
    daemon = start_daemon(extra=_config(listen, echoes[:1]))

    # A port held by a socket outside the SO_REUSEPORT group: the activation is a Failure.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        assert daemon.sozu("listener", "tcp", "add", "-a", taken).returncode == 0
        result = daemon.sozu("listener", "tcp", "activate", "-a", taken)
        assert result.returncode != 0
        assert taken in result.stderr + result.stdout
        assert "Address already in use" in result.stderr + result.stdout
    listeners = daemon.sozu_json("listener", "list")["content"]["tcp"]
    assert listeners[taken].get("active", False) is False
    assert daemon.wait_running()

    # Soft stop: an open TCP session keeps flowing until it closes, then the daemon exits.
    session = socket.create_connection(("127.0.0.1", listen), timeout=10)
    with session:
        session.sendall(b"one")
        assert session.recv(100).startswith(b"alpha\n")
        stopper = subprocess.Popen(
            [sys.executable, "-m", "sozu.cli", "-c", str(daemon.config_path), "shutdown"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(1.0)
            assert daemon.process.poll() is None
            session.sendall(b"two")
            echoed = b""
            while b"two" not in echoed:
                echoed += session.recv(100)
        except BaseException:
            stopper.kill()
            raise
    output, _ = stopper.communicate(timeout=15)
    assert stopper.returncode == 0, output
    assert b"Successfully closed 2 workers, 0 errors" in output
    assert daemon.wait_exit(timeout=10) == 0
