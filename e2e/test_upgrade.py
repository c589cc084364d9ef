"""Zero-downtime upgrades under load: five worker upgrades and one supervisor upgrade while
real clients run, then upgrades that fail and change nothing.

Load during the upgrades: wrk keep-alive and wrk with a new connection per request against
an HTTP listener (nginx behind), one long-lived TCP stream through a TCP listener (echo
backend, checked byte for byte), and a DNS query loop through a UDP listener (NSD behind).
Asserted: no failed HTTP request and no socket error, the TCP stream byte-exact, DNS queries
unanswered within `DNS_LOSS_BOUND`, a new pid in the slot after each worker upgrade and the
old one gone once drained, every worker's state hash equal to the supervisor's, the command
socket answering throughout, the supervisor's pid kept and `boot_generation` up by one.
Failures: with the fault-injection file present (code that cannot start), a worker upgrade
and a supervisor upgrade both answer Failure and the old processes keep serving; two
concurrent upgrades of one worker: exactly one is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import pytest

from e2e.support.backends import NamedEcho
from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.net import free_port
from e2e.support.nginx import nginx_backends
from e2e.support.nsd import Nsd, txt
from e2e.support.upgrades import (
    Wrk,
    daemon_status,
    hashes_agree,
    pid_gone,
    running_in_slot,
    upgrade_supervisor,
    upgrade_worker,
    wrk_requests,
)

pytestmark = pytest.mark.e2e

WORKER_UPGRADES = 5
# Long enough for the TCP stream to outlive every drain: an old worker keeps its sessions.
DRAIN_TIMEOUT = 120
# Datagrams in flight when a flow's worker stops reading can be lost; a handful at most.
DNS_LOSS_BOUND = 5
DNS_TIMEOUT = 3.0
TCP_CHUNK = 64 * 1024


@dataclass
class TcpStream:
    """One long-lived connection through the TCP listener, echoed back by the backend."""

    port: int
    sent: hashlib._Hash = field(default_factory=hashlib.sha256)
    received: hashlib._Hash = field(default_factory=hashlib.sha256)
    bytes_sent: int = 0
    bytes_received: int = 0
    longest_gap: float = 0.0
    error: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                greeting = b""
                while not greeting.endswith(b"\n"):
                    greeting += sock.recv(1)
                reader = threading.Thread(target=self._read, args=(sock,), daemon=True)
                reader.start()
                counter = 0
                while not self.stop.is_set():
                    chunk = (counter.to_bytes(8, "big") * (TCP_CHUNK // 8))[:TCP_CHUNK]
                    sock.sendall(chunk)
                    self.sent.update(chunk)
                    self.bytes_sent += len(chunk)
                    counter += 1
                    time.sleep(0.05)
                sock.shutdown(socket.SHUT_WR)
                reader.join(30)
        except OSError as error:
            self.error = f"{type(error).__name__}: {error}"

    def _read(self, sock: socket.socket) -> None:
        last = time.monotonic()
        try:
            while data := sock.recv(65536):
                now = time.monotonic()
                self.longest_gap = max(self.longest_gap, now - last)
                last = now
                self.received.update(data)
                self.bytes_received += len(data)
        except OSError as error:
            self.error = f"read: {type(error).__name__}: {error}"


@dataclass
class DnsLoop:
    """Queries in a closed loop through the UDP listener."""

    port: int
    sent: int = 0
    answered: int = 0
    slowest: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sent += 1
            started = time.monotonic()
            try:
                if txt(self.port, timeout=DNS_TIMEOUT) == "dns":
                    self.answered += 1
                    self.slowest = max(self.slowest, time.monotonic() - started)
            except dns.exception.Timeout:
                pass
            time.sleep(0.01)


def _config(http: int, tcp: int, udp: int, web: str, echo: str, dns_backend: str) -> str:
    return f"""
drain_timeout = {DRAIN_TIMEOUT}

[[listeners]]
protocol = "http"
address = "127.0.0.1:{http}"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:{tcp}"

[[listeners]]
protocol = "udp"
address = "127.0.0.1:{udp}"

[clusters.web]
protocol = "http"
frontends = [{{ address = "127.0.0.1:{http}", hostname = "web.test" }}]
backends = [{{ address = "{web}", backend_id = "nginx" }}]

[clusters.stream]
protocol = "tcp"
frontends = [{{ address = "127.0.0.1:{tcp}" }}]
backends = [{{ address = "{echo}", backend_id = "echo" }}]

[clusters.dns]
protocol = "tcp"
frontends = [{{ address = "127.0.0.1:{udp}" }}]
backends = [{{ address = "{dns_backend}", backend_id = "nsd" }}]

[clusters.dns.udp]
responses = 1
"""


def test_upgrades_under_load_lose_nothing(
    start_daemon: DaemonFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = tmp_path / "bad-code"
    monkeypatch.setenv("SOZU_FAULT_INJECTION", str(fault))
    http, tcp, udp = free_port(), free_port(), free_port()
    nsd = Nsd(tmp_path, "dns")
    try:
        with nginx_backends(tmp_path / "nginx", "web") as nginx, NamedEcho("echo") as echo:
            daemon = start_daemon(
                extra=_config(http, tcp, udp, nginx.address("web"), echo.address, nsd.address)
            )
            _run_scenario(daemon, http, tcp, udp, fault)
    finally:
        nsd.stop()


def _run_scenario(daemon: Daemon, http: int, tcp: int, udp: int, fault: Path) -> None:
    before = daemon_status(daemon)
    supervisor_pid = before["supervisor"]["pid"]
    generation = before["supervisor"]["boot_generation"]
    hashes_agree(before)

    stream = TcpStream(tcp)
    dns_loop = DnsLoop(udp)
    threads = [threading.Thread(target=t.run, daemon=True) for t in (stream, dns_loop)]
    for thread in threads:
        thread.start()
    keep_alive = Wrk.start(http, close=False)
    per_request = Wrk.start(http, close=True)
    durations: list[float] = []
    old_pids: list[int] = []
    try:
        # Some traffic before the first upgrade.
        wait_for(lambda: dns_loop.answered > 20 or None, timeout=10, what="DNS answers")
        for round_ in range(WORKER_UPGRADES):
            # Checked: the old worker drains, gone or listed as draining (the TCP stream it
            # carries keeps it until the stream ends).
            done = upgrade_worker(daemon, round_ % 2)
            durations.append(done.duration)
            old_pids.append(done.old_pid)

        upgraded = upgrade_supervisor(daemon)
        main_duration = upgraded.duration
        assert upgraded.status["supervisor"]["pid"] == supervisor_pid
        assert upgraded.status["supervisor"]["boot_generation"] == generation + 1
        # Traffic after the last upgrade, through the new processes.
        answered = dns_loop.answered
        wait_for(lambda: dns_loop.answered > answered + 20 or None, timeout=10, what="DNS")
    finally:
        stream.stop.set()
        dns_loop.stop.set()
        outputs = [wrk.finish() for wrk in (keep_alive, per_request)]
        for thread in threads:
            thread.join(30)

    for output in outputs:
        assert wrk_requests(output) > 0, output
        assert "Socket errors" not in output, output
        assert "Non-2xx" not in output, output
    assert stream.error is None, stream.error
    assert stream.bytes_sent > 0
    assert stream.bytes_received == stream.bytes_sent
    assert stream.received.hexdigest() == stream.sent.hexdigest()

    def old_workers_gone() -> bool | None:
        return all(pid_gone(pid) for pid in old_pids) or None

    # With the stream closed and wrk stopped, every old worker finishes draining.
    wait_for(old_workers_gone, timeout=30, what="old workers gone")
    still_listed = {w["pid"] for w in daemon_status(daemon)["workers"]}
    assert not still_listed & set(old_pids)
    lost = dns_loop.sent - dns_loop.answered
    assert lost <= DNS_LOSS_BOUND, f"{lost} of {dns_loop.sent} DNS queries unanswered"
    print(
        f"\nupgrade figures: worker upgrades {', '.join(f'{d:.2f}' for d in durations)} s, "
        f"supervisor upgrade {main_duration:.2f} s; DNS {dns_loop.sent} sent, {lost} lost, "
        f"slowest {dns_loop.slowest * 1000:.0f} ms; TCP {stream.bytes_sent} bytes, longest gap "
        f"{stream.longest_gap * 1000:.0f} ms"
    )
    for name, output in zip(("keep-alive", "new connection"), outputs, strict=True):
        maximum = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output)
        print(f"wrk {name}: {wrk_requests(output)} requests, max latency {maximum and maximum[1]}")

    _failed_upgrades(daemon, fault, generation + 1)


def _failed_upgrades(daemon: Daemon, fault: Path, generation: int) -> None:
    status = daemon_status(daemon)
    target = running_in_slot(status, 0)
    fault.write_text("simulated bad code on disk\n")
    try:
        result = daemon.sozu("upgrade", "--worker", str(target["id"]))
        assert result.returncode == 1
        assert "failed to start" in result.stderr
        result = daemon.sozu("upgrade", timeout=60)
        assert result.returncode == 1
        assert "pre-flight" in result.stderr
        after = daemon_status(daemon)
        assert running_in_slot(after, 0)["pid"] == target["pid"]
        assert after["supervisor"]["boot_generation"] == generation
        assert after["supervisor"]["pid"] == status["supervisor"]["pid"]
        hashes_agree(after)
    finally:
        fault.unlink()
    # Two upgrades of the same worker at once: one goes through, the other is refused.
    target = running_in_slot(daemon_status(daemon), 1)
    command = [
        sys.executable,
        "-m",
        "sozu.cli",
        "-c",
        str(daemon.config_path),
        "upgrade",
        "--worker",
        str(target["id"]),
    ]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outcomes = [(*p.communicate(timeout=60), p.returncode) for p in (first, second)]
    codes = sorted(code for _, _, code in outcomes)
    assert codes == [0, 1], outcomes
    refused = next(err for _, err, code in outcomes if code == 1)
    assert "already being upgraded" in refused or "not the running worker" in refused, refused
    hashes_agree(daemon_status(daemon))
    assert os.path.exists(f"/proc/{running_in_slot(daemon_status(daemon), 1)['pid']}")


def test_upgrades_racing_commands_and_a_crash_end_consistent(start_daemon: DaemonFactory) -> None:
    """A worker upgrade while state changes are sent, and one whose old worker is killed
    meanwhile: every worker ends in line with the supervisor, one running worker per slot."""
    listen = free_port()
    daemon = start_daemon(
        extra=f"""
[[listeners]]
protocol = "tcp"
address = "127.0.0.1:{listen}"

[clusters.c]
protocol = "tcp"
frontends = [{{ address = "127.0.0.1:{listen}" }}]
"""
    )
    target = running_in_slot(daemon_status(daemon), 0)
    results: list[subprocess.CompletedProcess[str]] = []

    def add_backends() -> None:
        for index in range(8):
            results.append(
                daemon.sozu(
                    "backend",
                    "add",
                    "-i",
                    "c",
                    "--backend-id",
                    f"b{index}",
                    "-a",
                    f"127.0.0.1:{20000 + index}",
                )
            )

    adder = threading.Thread(target=add_backends)
    adder.start()
    upgrade = daemon.sozu("upgrade", "--worker", str(target["id"]), timeout=60)
    adder.join(60)
    assert upgrade.returncode == 0, upgrade.stderr
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    status = daemon_status(daemon)
    hashes_agree(status)
    assert running_in_slot(status, 0)["pid"] != target["pid"]

    # The old worker dies while its successor starts: the upgrade is refused or done, and
    # either way the slot ends with one running worker in line with the supervisor.
    victim = running_in_slot(daemon_status(daemon), 1)
    command = [sys.executable, "-m", "sozu.cli", "-c", str(daemon.config_path)]
    racing = subprocess.Popen(
        [*command, "upgrade", "--worker", str(victim["id"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    launched = daemon.log().count("(upgrade)")

    def successor_launched() -> bool | None:
        return daemon.log().count("(upgrade)") > launched or None

    wait_for(successor_launched, timeout=30, what="the successor launched")
    os.kill(victim["pid"], signal.SIGKILL)
    racing.communicate(timeout=60)

    def settled() -> dict[str, Any] | None:
        current = daemon.status()
        if current is None:
            return None
        running = [w for w in current["workers"] if w["state"] == "running"]
        if len(running) != 2 or any(w["pid"] == victim["pid"] for w in current["workers"]):
            return None
        supervisor_hash = current["supervisor"]["state_hash"]
        return current if all(w["state_hash"] == supervisor_hash for w in running) else None

    final = wait_for(settled, timeout=30, what="one running worker per slot, in line")
    assert {w["slot"] for w in final["workers"] if w["state"] == "running"} == {0, 1}
