"""The daemon tells systemd it is ready (READY=1 on $NOTIFY_SOCKET) only once every worker
runs, and the unit file shipped in packaging/ says what that relies on."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from e2e.support.daemon import Daemon

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def test_ready_is_sent_once_every_worker_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    config, socket_path = Daemon.write_config(tmp_path, worker_count=3)
    daemon = Daemon.launch(config, socket_path, 3)
    try:
        message = notify.recv(4096).decode()
        assert message == "READY=1"
        # At the moment it said so, every worker runs with the supervisor's state.
        status = daemon.running_status()
        assert status is not None, daemon.log()[-2000:]
        assert len(status["workers"]) == 3
        daemon.sozu("shutdown")
        assert notify.recv(4096).decode() == "STOPPING=1"
        assert daemon.wait_exit(timeout=30) == 0
    finally:
        daemon.stop()
        notify.close()
        shutil.rmtree(socket_path.parent, ignore_errors=True)


def test_the_unit_file_keeps_workers_alive_across_a_supervisor_restart() -> None:
    unit = (ROOT / "packaging" / "sozu.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["Type"] == "notify"
    assert settings["KillMode"] == "process"
    assert settings["Restart"] == "always"
    assert " reload" in settings["ExecReload"]
    assert " start" in settings["ExecStart"]
