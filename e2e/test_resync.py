"""A worker that refuses an accepted change is resynced, not killed; a worker that cannot
replay the state is reported, not relaunched in a loop.

`SOZU_FAULT_REFUSE=<file>` makes workers refuse state requests containing the file's text,
as a worker-side bug would (the supervisor's own state accepts them).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.support.backends import NamedEcho
from e2e.support.daemon import DaemonFactory, EventFollower, wait_for
from e2e.support.net import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def echo() -> Iterator[NamedEcho]:
    server = NamedEcho("alpha")
    try:
        yield server
    finally:
        server.close()


def _config(listen: int, backend: NamedEcho) -> str:
    return (
        "drain_timeout = 30\n"
        "[[listeners]]\n"
        'protocol = "tcp"\n'
        f'address = "127.0.0.1:{listen}"\n'
        "[clusters.echo]\n"
        'protocol = "tcp"\n'
        f'frontends = [{{ address = "127.0.0.1:{listen}" }}]\n'
        f'backends = [{{ address = "{backend.address}", backend_id = "alpha" }}]\n'
    )


def _events(follower: EventFollower, kind: str, count: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def probe() -> list[dict[str, Any]] | None:
        event = follower.next_event(timeout=0.2)
        if event is not None and event["kind"] == kind:
            seen.append(event)
        return seen if len(seen) >= count else None

    return wait_for(probe, timeout=30, what=f"{count} {kind} events")


def _held_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert sock.recv(64) == b"alpha\n"
    return sock


def _echoes(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "the held connection was closed"
        received += chunk
    assert received == payload


def test_a_refusing_worker_keeps_its_connections_and_is_resynced(
    start_daemon: DaemonFactory,
    echo: NamedEcho,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fault = tmp_path / "refuse"
    monkeypatch.setenv("SOZU_FAULT_REFUSE", str(fault))
    listen = free_port()
    daemon = start_daemon(extra=_config(listen, echo))
    before = daemon.wait_running()
    pids = {w["pid"] for w in before["workers"]}
    held = [_held_connection(listen) for _ in range(6)]  # both workers hold some
    follower = daemon.follow_events()
    try:
        fault.write_text("evil-backend")
        added = daemon.sozu(
            "backend", "add", "-i", "echo", "--backend-id", "evil-backend", "-a", "127.0.0.1:9"
        )
        # Accepted by the supervisor: Ok, naming the workers that refused it.
        assert added.returncode == 0, added.stderr
        assert "resynced" in added.stdout
        # Each worker's successor fails to replay the same request: reported, and the old
        # worker keeps serving (no kill, no relaunch loop).
        failed = _events(follower, "WORKER_REPLAY_FAILED", 2)
        assert all("evil-backend" in e["message"] for e in failed)
        status = daemon.status()
        assert status is not None
        assert {w["pid"] for w in status["workers"]} == pids
        assert len(status["problems"]) == 2
        assert all("evil-backend" in problem for problem in status["problems"])
        assert not any(w["hash_ok"] for w in status["workers"])
        for sock in held:
            _echoes(sock, b"still here")

        # Removing it moves the state on: the workers (which never had it) refuse again and
        # are resynced; this time the successors replay the state and take over.
        removed = daemon.sozu(
            "backend", "remove", "-i", "echo", "--backend-id", "evil-backend", "-a", "127.0.0.1:9"
        )
        assert removed.returncode == 0, removed.stderr
        _events(follower, "WORKER_UPGRADED", 2)

        def resynced() -> dict[str, Any] | None:
            current = daemon.status()
            if current is None or "problems" in current:
                return None
            running = [w for w in current["workers"] if w["state"] == "running"]
            return current if len(running) == 2 and all(w["hash_ok"] for w in running) else None

        status = wait_for(resynced, timeout=30, what="both workers resynced")
        running = {w["pid"] for w in status["workers"] if w["state"] == "running"}
        assert not (running & pids)
        assert {w["pid"] for w in status["workers"] if w["state"] == "draining"} <= pids
        # The old workers drain: their connections keep flowing.
        for sock in held:
            _echoes(sock, b"after the resync")
            sock.close()
    finally:
        follower.close()


def test_a_slot_whose_worker_cannot_replay_stays_empty_until_the_state_moves(
    start_daemon: DaemonFactory,
    echo: NamedEcho,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fault = tmp_path / "refuse"
    monkeypatch.setenv("SOZU_FAULT_REFUSE", str(fault))
    listen = free_port()
    daemon = start_daemon(extra=_config(listen, echo))
    fault.write_text("evil-cluster")
    added = daemon.sozu("cluster", "add", "-i", "evil-cluster")
    assert added.returncode == 0, added.stderr
    status = wait_for(
        lambda: ((s := daemon.status()) and len(s.get("problems", [])) == 2 and s) or None,
        timeout=30,
        what="both workers reported",
    )
    victim = next(w for w in status["workers"] if w["slot"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)

    def empty() -> dict[str, Any] | None:
        current = daemon.status()
        slots = current.get("empty_slots", []) if current else []
        return current if slots and slots[0]["adopted_by"] is not None else None

    status = wait_for(empty, timeout=30, what="slot 1 empty")
    reason = status["empty_slots"][0]["reason"]
    assert "replay failed" in reason
    assert "evil-cluster" in reason
    # Not relaunched in a loop: a few seconds later (relaunch backoffs are 0.1 s to 5 s), no
    # worker was launched and the slot is still empty.
    launched = daemon.log().count("launched worker")
    time.sleep(4)
    later = daemon.status()
    assert later is not None
    assert later.get("empty_slots")
    assert daemon.log().count("launched worker") == launched

    # The state moves on (the offending cluster is removed): the slot is launched again.
    fault.unlink()
    removed = daemon.sozu("cluster", "remove", "-i", "evil-cluster")
    assert removed.returncode == 0, removed.stderr
    final = wait_for(
        lambda: ((s := daemon.running_status()) and "empty_slots" not in s and s) or None,
        timeout=30,
        what="slot 1 back",
    )
    assert {w["slot"] for w in final["workers"]} == {0, 1}
