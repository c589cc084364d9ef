"""The worker's readiness loop under saturation still serves the supervisor channel."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from e2e.support.daemon import DaemonFactory
from e2e.support.http_backends import cluster, listener
from e2e.support.net import free_port
from e2e.support.nginx import nginx_backends
from e2e.support.programs import require_program

pytestmark = pytest.mark.e2e


def test_status_is_answered_while_the_loop_is_saturated(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    wrk = require_program("wrk")
    port = free_port()
    with nginx_backends(tmp_path / "nginx", "app") as nginx:
        daemon = start_daemon(
            worker_count=1,
            extra=listener(port)
            + cluster(
                "app",
                [{"address": f"127.0.0.1:{port}", "hostname": "app.test"}],
                [{"address": nginx.address("app"), "backend_id": "app-1"}],
            ),
        )
        load = subprocess.Popen(
            [wrk, "-t2", "-c64", "-d6s", "-H", "Host: app.test", f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE,
            text=True,
        )
        states = []
        try:
            for _ in range(8):
                status = daemon.status()
                assert status is not None
                states += [w["state"] for w in status["workers"]]
        finally:
            output, _ = load.communicate(timeout=30)
    # Every Status the supervisor sent the worker (with its 2 s patience) was answered.
    assert states == ["running"] * 8, states
    assert re.search(r"Requests/sec:\s+[0-9.]+", output), output
