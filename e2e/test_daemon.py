"""The daemon's process model and command flow, with real processes and the real CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from e2e.support.daemon import Daemon, DaemonFactory, sozu_cli, wait_for
from e2e.support.net import free_port, scrape

pytestmark = pytest.mark.e2e


def _hashes(status: dict[str, Any]) -> tuple[str, list[str]]:
    return status["supervisor"]["state_hash"], [w["state_hash"] for w in status["workers"]]


def test_start_shows_running_workers_metrics_and_survives_malformed_frames(
    start_daemon: DaemonFactory,
) -> None:
    port = free_port()
    daemon = start_daemon(extra=f'[metrics]\nprometheus_address = "127.0.0.1:{port}"')
    status = daemon.status()
    assert status is not None
    assert set(status) == {"supervisor", "workers"}
    assert set(status["supervisor"]) == {"pid", "boot_generation", "build_id", "state_hash"}
    assert status["supervisor"]["pid"] == daemon.process.pid
    workers = status["workers"]
    assert [w["slot"] for w in workers] == [0, 1]
    for worker in workers:
        assert set(worker) == {
            "id",
            "slot",
            "pid",
            "state",
            "restarts",
            "build_id",
            "state_hash",
            "hash_ok",
        }
        assert worker["state"] == "running"
        assert worker["pid"] > 0
        assert worker["pid"] != daemon.process.pid
        assert worker["restarts"] == 0
        assert worker["hash_ok"] is True
        assert worker["state_hash"] == status["supervisor"]["state_hash"]
        assert worker["build_id"] == status["supervisor"]["build_id"]
    assert len({w["pid"] for w in workers}) == 2
    assert os.stat(daemon.socket_path).st_mode & 0o777 == 0o600

    _send_malformed_frames(daemon)
    assert daemon.running_status() is not None
    scraped = scrape(port)
    assert scraped.startswith("HTTP/1.1 200")
    assert "sozu_workers_running 2.0" in scraped


def test_mutations_reach_every_worker_and_refusals_change_nothing(daemon: Daemon) -> None:
    before = daemon.status()
    assert before is not None
    events = daemon.follow_events()
    try:
        added = daemon.sozu("cluster", "add", "-i", "web")
        assert added.returncode == 0, added.stderr
        refused = daemon.sozu("cluster", "remove", "-i", "unknown")
        assert refused.returncode == 1
        seen = events.drain()
    finally:
        events.close()
    assert [(e["kind"], e.get("cluster_id")) for e in seen] == [("CLUSTER_ADDED", "web")]
    backend = daemon.sozu(
        "backend", "add", "-i", "web", "--backend-id", "b1", "-a", "127.0.0.1:9001"
    )
    assert backend.returncode == 0, backend.stderr
    listing = daemon.sozu_json("cluster", "list")
    answers = listing["content"]["map"]
    assert set(answers) == {"main", *(str(w["id"]) for w in before["workers"])}
    assert all(a["content"]["map"].keys() == {"web"} for a in answers.values())
    assert len({a["content"]["map"]["web"] for a in answers.values()}) == 1

    after = daemon.status()
    assert after is not None
    main_hash, worker_hashes = _hashes(after)
    assert main_hash != before["supervisor"]["state_hash"]
    assert worker_hashes == [main_hash, main_hash]

    refused = daemon.sozu("cluster", "remove", "-i", "unknown")
    assert refused.returncode == 1
    assert "unknown" in refused.stderr
    refused_json = daemon.sozu("-j", "cluster", "remove", "-i", "unknown")
    assert refused_json.returncode == 1
    assert msgspec.json.decode(refused_json.stdout)["status"] == "failure"
    unchanged = daemon.status()
    assert unchanged is not None
    assert _hashes(unchanged) == (main_hash, [main_hash, main_hash])


def test_a_killed_worker_is_relaunched_then_sigterm_stops_the_daemon(daemon: Daemon) -> None:
    status = daemon.status()
    assert status is not None
    victim = status["workers"][0]
    added = daemon.sozu("cluster", "add", "-i", "before-crash")
    assert added.returncode == 0
    os.kill(victim["pid"], signal.SIGKILL)

    def relaunched() -> dict[str, Any] | None:
        current = daemon.running_status()
        if current is None:
            return None
        slot0 = current["workers"][0]
        return slot0 if slot0["pid"] != victim["pid"] else None

    replacement = wait_for(relaunched, timeout=10, what="worker relaunched")
    assert replacement["slot"] == 0
    assert replacement["restarts"] == 1
    assert replacement["id"] != victim["id"]
    assert replacement["hash_ok"] is True
    assert "WORKER_KILLED" in daemon.log()
    assert "WORKER_RELAUNCHED" in daemon.log()

    os.kill(daemon.process.pid, signal.SIGTERM)
    assert daemon.wait_exit(timeout=10) == 0
    assert not daemon.socket_path.exists()
    assert "SOZU_STOP_REQUESTED" in daemon.log()


def test_shutdown_stops_everything_and_a_second_daemon_is_refused(daemon: Daemon) -> None:
    status = daemon.status()
    assert status is not None
    worker_pids = [w["pid"] for w in status["workers"]]

    second = Daemon.launch(daemon.config_path, daemon.socket_path, 2)
    try:
        assert second.wait_exit(timeout=10) == 1
    finally:
        second.stop()
    assert "another sozu daemon answers" in second.log()
    assert daemon.status() is not None, "the first daemon must keep its socket"

    result = daemon.sozu("shutdown")
    assert result.returncode == 0, result.stderr
    assert daemon.wait_exit(timeout=10) == 0
    assert not daemon.socket_path.exists()
    for pid in worker_pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    unreachable = daemon.sozu("status")
    assert unreachable.returncode == 69


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_state_save_then_load_into_a_fresh_daemon(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    first = start_daemon(name="first")
    steps = [
        ("cluster", "add", "-i", "api", "--load-balancing-policy", "random"),
        ("backend", "add", "-i", "api", "--backend-id", "api-1", "-a", "127.0.0.1:9100"),
        ("listener", "tcp", "add", "-a", "127.0.0.1:19100"),
        ("frontend", "tcp", "add", "--id", "api", "-a", "127.0.0.1:19100"),
        ("listener", "tcp", "activate", "-a", "127.0.0.1:19100"),
    ]
    for step in steps:
        result = first.sozu(*step)
        assert result.returncode == 0, f"{step}: {result.stderr}"
    state_file = tmp_path / "state.jsonl"
    assert first.sozu("state", "save", "-f", str(state_file)).returncode == 0
    saved = first.status()
    assert saved is not None
    # One owner per listener address: the first daemon gives it up before the second loads it.
    first.stop()

    second = start_daemon(name="second")
    loaded = second.sozu_json("state", "load", "-f", str(state_file))
    assert loaded["content"]["ok"] == len(steps)
    status = second.status()
    assert status is not None
    main_hash, worker_hashes = _hashes(status)
    assert main_hash == saved["supervisor"]["state_hash"]
    assert worker_hashes == [main_hash, main_hash]


def _send_malformed_frames(daemon: Daemon) -> None:
    """An unknown request kind gets a Failure naming it; an unreadable frame closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(daemon.socket_path))
        unknown = msgspec.msgpack.encode({"v": 1, "id": "x1", "request": {"type": "Nope"}})
        sock.sendall(struct.pack(">I", len(unknown)) + unknown)
        length = struct.unpack(">I", _read_exactly(sock, 4))[0]
        answer = msgspec.msgpack.decode(_read_exactly(sock, length))
        assert answer["id"] == "x1"
        assert answer["status"] == "failure"
        assert "Nope" in answer["message"]
        garbage = b"\xc1\xc1\xc1"
        sock.sendall(struct.pack(">I", len(garbage)) + garbage)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sock.recv(4096):
            pass


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def test_the_cli_exits_69_without_a_daemon(tmp_path: Path) -> None:
    config = tmp_path / "sozu.toml"
    config.write_text(f'command_socket = "{tmp_path / "none.sock"}"\n')
    result = sozu_cli("-c", str(config), "status")
    assert result.returncode == 69
    as_json = sozu_cli("-j", "-c", str(config), "cluster", "list")
    assert as_json.returncode == 69
    assert msgspec.json.decode(as_json.stdout)["status"] == "unavailable"


def test_a_silent_worker_is_named_and_replaced(start_daemon: DaemonFactory) -> None:
    daemon = start_daemon(worker_timeout=1)
    status = daemon.status()
    assert status is not None
    silent = status["workers"][1]
    os.kill(silent["pid"], signal.SIGSTOP)
    try:
        result = daemon.sozu("-j", "cluster", "add", "-i", "while-silent")
        assert result.returncode == 0, result.stderr
        message = msgspec.json.decode(result.stdout)["message"]
        assert f"worker {silent['id']} no answer" in message
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(silent["pid"], signal.SIGCONT)

    def replaced() -> dict[str, Any] | None:
        current = daemon.running_status()
        if current is None or current["workers"][1]["pid"] == silent["pid"]:
            return None
        return current

    current = wait_for(replaced, timeout=10, what="silent worker replaced")
    main_hash, worker_hashes = _hashes(current)
    assert worker_hashes == [main_hash, main_hash]
    assert current["workers"][1]["restarts"] == 1
