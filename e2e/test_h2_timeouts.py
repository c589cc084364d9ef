"""Timeouts of HTTP/2 streams through the real daemon: the streams of an h2c connection
(nghttp, which speaks h2c with prior knowledge) whose backend reads the request and never
answers get 504 once the listener's back_timeout has passed. A stream's timer is kept by its
connection's sweep until it comes close (shell/h2_connection.py), so this holds the sweep to
the timeout."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from e2e.support.daemon import DaemonFactory
from e2e.support.http_backends import SlowBackend, cluster, listener
from e2e.support.net import free_port
from e2e.support.programs import require_program

pytestmark = pytest.mark.e2e


def test_h2_streams_to_a_silent_backend_get_504_after_back_timeout(
    start_daemon: DaemonFactory,
) -> None:
    nghttp = require_program("nghttp")
    listen = free_port()
    with SlowBackend("slow") as slow:
        config = listener(listen, back_timeout=3)
        config += cluster(
            "slow",
            [{"address": f"127.0.0.1:{listen}", "hostname": "slow.test"}],
            [{"address": slow.address, "backend_id": "slow"}],
        )
        start_daemon(extra=config)
        started = time.monotonic()
        done = subprocess.run(
            [
                nghttp,
                "-v",
                "-H",
                ":authority: slow.test",
                f"http://127.0.0.1:{listen}/a",
                f"http://127.0.0.1:{listen}/b",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    statuses = re.findall(r"recv \(stream_id=\d+\) :status: (\d+)", done.stdout)
    assert statuses == ["504", "504"], done.stdout[-2000:]
    assert len(slow.requests) == 2, "both streams reached the backend"
    assert elapsed >= 2.5, f"answered before back_timeout: {elapsed:.2f} s"
