"""Control plane through the real daemon: reload, logging, frontend list, -s, malformed frames,
supervisor metrics and a hard shutdown with a connection open."""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from e2e.support.backends import NamedEcho, exchange
from e2e.support.daemon import Daemon, DaemonFactory, sozu_cli, wait_for
from e2e.support.net import free_port, scrape

pytestmark = pytest.mark.e2e

MAX_FRAME = 2_000_000


def _tcp_cluster(name: str, listen: int, backend: NamedEcho) -> str:
    return (
        "[[listeners]]\n"
        'protocol = "tcp"\n'
        f'address = "127.0.0.1:{listen}"\n'
        f"[clusters.{name}]\n"
        'protocol = "tcp"\n'
        f'frontends = [{{ address = "127.0.0.1:{listen}" }}]\n'
        f'backends = [{{ address = "{backend.address}", backend_id = "{backend.name}" }}]\n'
    )


def _synced(daemon: Daemon) -> dict[str, Any]:
    """The status once every worker runs with the supervisor's state hash."""
    return wait_for(daemon.running_status, timeout=5, what="workers in sync")


@pytest.fixture
def echoes() -> Iterator[tuple[NamedEcho, NamedEcho]]:
    first, second = NamedEcho("old"), NamedEcho("new")
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def test_reload_logging_frontends_socket_metrics_and_hard_stop(
    start_daemon: DaemonFactory, echoes: tuple[NamedEcho, NamedEcho], tmp_path: Path
) -> None:
    old_echo, new_echo = echoes
    old_port, new_port, metrics_port = free_port(), free_port(), free_port()
    metrics = f'[metrics]\nprometheus_address = "127.0.0.1:{metrics_port}"\n'
    daemon = start_daemon(extra=metrics + _tcp_cluster("old", old_port, old_echo))
    assert exchange(old_port) == "old"

    # Reload: cluster "old" and its listener go, cluster "new" on a new listener comes.
    reloaded_file = tmp_path / "reloaded.toml"
    reloaded_file.write_text(_tcp_cluster("new", new_port, new_echo))
    events = daemon.follow_events()
    try:
        result = daemon.sozu("reload", "-f", str(reloaded_file))
        seen = events.drain(quiet=0.3)
    finally:
        events.close()
    assert result.returncode == 0, result.stderr
    assert re.search(r"\d+ requests applied", result.stdout), result.stdout
    assert [e["kind"] for e in seen] == ["CONFIGURATION_RELOADED"]
    listing = daemon.sozu_json("cluster", "list")["content"]["map"]
    assert len(listing) == 3  # main and two workers
    assert all(answer["content"]["map"].keys() == {"new"} for answer in listing.values())
    status = _synced(daemon)
    state_hash = status["supervisor"]["state_hash"]
    assert exchange(new_port) == "new"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", old_port), timeout=2).close()

    # A broken file: exit 1 naming the key path; nothing changed.
    broken = tmp_path / "broken.toml"
    broken.write_text(_tcp_cluster("new", new_port, new_echo).replace(new_echo.address, "x"))
    result = daemon.sozu("reload", "-f", str(broken))
    assert result.returncode == 1
    assert "clusters.new.backends[0].address" in result.stderr
    assert _synced(daemon)["supervisor"]["state_hash"] == state_hash

    # Logging.
    result = daemon.sozu("logging", "DEBUG")
    assert result.returncode == 0, result.stderr
    result = daemon.sozu("logging", "nope")
    assert result.returncode == 1
    assert "nope" in result.stderr

    # Frontends, as JSON.
    fronts = daemon.sozu_json("frontend", "list")["content"]
    assert [(f["cluster_id"], f["address"]) for f in fronts["tcp"]] == [
        ("new", f"127.0.0.1:{new_port}")
    ]

    # `-t 0`: no command timeout (upstream's meaning).
    assert sozu_cli("-t", "0", "-c", str(daemon.config_path), "status").returncode == 0

    # --socket after the subcommand, with a configuration that points elsewhere.
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(f'command_socket = "{tmp_path / "nothing.sock"}"\n')
    assert sozu_cli("-c", str(elsewhere), "status").returncode == 69
    result = sozu_cli("-c", str(elsewhere), "-j", "status", "--socket", str(daemon.socket_path))
    assert result.returncode == 0, result.stderr
    assert msgspec.json.decode(result.stdout)["supervisor"]["state_hash"] == state_hash

    # Oversize and garbage frames leave the daemon answering with the same state.
    assert daemon.socket_path.stat().st_mode & 0o777 == 0o600
    _oversize_then_garbage(daemon.socket_path)
    assert _synced(daemon)["supervisor"]["state_hash"] == state_hash

    # Supervisor metrics.
    text = scrape(metrics_port)
    assert 'sozu_workers{state="running"} 2.0' in text
    assert 'sozu_commands_total{kind="ReloadConfiguration",result="ok"} 1.0' in text
    assert 'sozu_commands_total{kind="ReloadConfiguration",result="failure"} 1.0' in text
    assert 'sozu_commands_total{kind="Logging",result="failure"} 1.0' in text
    assert "sozu_worker_state_hash_ok 2.0" in text
    assert "sozu_worker_restarts_total 0.0" in text
    assert "sozu_configuration_clusters 1.0" in text

    # Reload without -f: back to the boot configuration file.
    result = daemon.sozu("reload")
    assert result.returncode == 0, result.stderr
    listing = daemon.sozu_json("cluster", "list")["content"]["map"]
    assert all(answer["content"]["map"].keys() == {"old"} for answer in listing.values())
    _synced(daemon)
    assert exchange(old_port) == "old"

    # A hard stop exits at once, with a connection open through a listener.
    with socket.create_connection(("127.0.0.1", old_port), timeout=5) as open_conn:
        assert open_conn.recv(16).startswith(b"old")
        started = time.monotonic()
        result = daemon.sozu("shutdown", "--hard")
        assert result.returncode == 0, result.stderr
        assert daemon.wait_exit(timeout=5) == 0
        assert time.monotonic() - started < 5


def _oversize_then_garbage(path: Path) -> None:
    for frame in (
        struct.pack(">I", MAX_FRAME + 1) + b"\x00" * 64,
        struct.pack(">I", 3) + b"\xc1\xc1\xc1",
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(frame)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    if not sock.recv(4096):
                        break
                except (ConnectionResetError, TimeoutError):
                    break
