"""Driving upgrades of a real daemon under load: status checks, worker and supervisor upgrades,
and wrk runs stopped on demand.

`upgrade_worker(daemon, slot)` upgrades the running worker of `slot` with
`sozu -j upgrade --worker ID` and checks what every such upgrade must leave: a new worker (new
pid, higher id) running in the slot, every state hash equal to the supervisor's, the old
worker draining or gone. `upgrade_supervisor(daemon)` runs `sozu -j upgrade` and checks the
supervisor kept its pid, went up one boot generation and runs only new workers. `Wrk` starts
wrk for 300 s (optionally with a Lua script choosing each request) and stops it with SIGINT,
after which wrk prints its summary;
`wrk_requests` and `wrk_socket_errors` read that summary.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.support.daemon import Daemon
from e2e.support.programs import require_program

SUPERVISOR_UPGRADE_TIMEOUT = 120.0


def daemon_status(daemon: Daemon) -> dict[str, Any]:
    """`sozu -j status`, which must answer."""
    status: dict[str, Any] = daemon.sozu_json("status")
    return status


def hashes_agree(status: dict[str, Any]) -> None:
    """Every listed worker's state hash equals the supervisor's."""
    supervisor_hash = status["supervisor"]["state_hash"]
    for worker in status["workers"]:
        assert worker["state_hash"] == supervisor_hash, worker
        assert worker["hash_ok"], worker


def pid_gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def running_in_slot(status: dict[str, Any], slot: int) -> dict[str, Any]:
    """The one running worker of `slot`."""
    found: list[dict[str, Any]] = [
        w for w in status["workers"] if w["slot"] == slot and w["state"] == "running"
    ]
    assert len(found) == 1, status
    return found[0]


@dataclass(frozen=True)
class WorkerUpgrade:
    """One done worker upgrade: the old worker's pid and how long the command took."""

    old_pid: int
    duration: float


def upgrade_worker(daemon: Daemon, slot: int) -> WorkerUpgrade:
    """Upgrade the running worker of `slot` and check the slot's new worker."""
    old = running_in_slot(daemon_status(daemon), slot)
    started = time.monotonic()
    result = daemon.sozu("-j", "upgrade", "--worker", str(old["id"]))
    duration = time.monotonic() - started
    assert result.returncode == 0, result.stderr + result.stdout
    status = daemon_status(daemon)
    new = running_in_slot(status, slot)
    assert new["pid"] != old["pid"]
    assert new["id"] > old["id"]
    hashes_agree(status)
    # The old worker drains: gone, or listed as draining.
    listed = {w["pid"]: w["state"] for w in status["workers"]}
    assert listed.get(old["pid"], "draining") == "draining"
    return WorkerUpgrade(old["pid"], duration)


@dataclass(frozen=True)
class SupervisorUpgrade:
    """One done supervisor upgrade: the status after it and how long the command took."""

    status: dict[str, Any]
    duration: float


def upgrade_supervisor(daemon: Daemon) -> SupervisorUpgrade:
    """`sozu upgrade`: same supervisor pid, boot generation up by one, only new workers."""
    before = daemon_status(daemon)
    old_ids = {w["id"] for w in before["workers"]}
    started = time.monotonic()
    result = daemon.sozu("-j", "upgrade", timeout=SUPERVISOR_UPGRADE_TIMEOUT)
    duration = time.monotonic() - started
    assert result.returncode == 0, result.stderr + result.stdout
    after = daemon_status(daemon)
    assert after["supervisor"]["pid"] == before["supervisor"]["pid"]
    assert after["supervisor"]["boot_generation"] == before["supervisor"]["boot_generation"] + 1
    running = [w for w in after["workers"] if w["state"] == "running"]
    assert len(running) == daemon.worker_count
    assert not {w["id"] for w in running} & old_ids
    hashes_agree(after)
    return SupervisorUpgrade(after, duration)


@dataclass
class Wrk:
    """A wrk run stopped by SIGINT (wrk then prints its summary)."""

    process: subprocess.Popen[str]

    @classmethod
    def start(
        cls,
        port: int,
        *,
        close: bool = False,
        threads: int = 1,
        connections: int = 4,
        host: str = "web.test",
        path: str = "/",
        script: Path | None = None,
    ) -> Wrk:
        wrk = require_program("wrk")
        # A stall is not a failure: wrk's timeout (default 2 s) would count slow requests on
        # a loaded 2-core machine as errors, so it is raised; the longest stall is reported.
        command = [wrk, f"-t{threads}", f"-c{connections}", "-d300s", "--timeout", "10s"]
        command += ["--latency", "-H", f"Host: {host}"]
        if close:
            command += ["-H", "Connection: close"]
        if script is not None:
            command += ["-s", str(script)]
        command.append(f"http://127.0.0.1:{port}{path}")
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        return cls(process)

    def finish(self) -> str:
        assert self.process.poll() is None, "wrk stopped before the upgrades were done"
        self.process.send_signal(signal.SIGINT)
        output, _ = self.process.communicate(timeout=30)
        return output

    def kill(self) -> None:
        """Stop a run whose summary is not wanted (a test that failed early)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=30)


def wrk_requests(output: str) -> int:
    """The request count of a wrk summary."""
    match = re.search(r"(\d+) requests in", output)
    assert match is not None, output
    return int(match.group(1))


def wrk_socket_errors(output: str) -> dict[str, int]:
    """wrk's socket errors by kind (connect, read, write, timeout): all zero when wrk prints
    no `Socket errors` line. A read error is also how wrk counts a connection that ends
    (EOF or reset) while it waits for a response."""
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    kinds = ("connect", "read", "write", "timeout")
    if match is None:
        assert "Socket errors" not in output, output
        return dict.fromkeys(kinds, 0)
    return {kind: int(value) for kind, value in zip(kinds, match.groups(), strict=True)}


def wrk_non_2xx(output: str) -> int:
    """wrk's count of responses whose status is not 2xx or 3xx."""
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return int(match.group(1)) if match is not None else 0
