"""A supervisor killed with `kill -9` loses nothing: its workers serve on, the next
`sozu start` with the same configuration takes them over (their listener sockets become its
own) and comes back with every live change, from `saved_state` (`automatic_state_save`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.support.backends import NamedEcho
from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.http_backends import cluster, listener
from e2e.support.net import free_port
from e2e.support.nginx import nginx_backends

pytestmark = pytest.mark.e2e


class CurlLoop:
    """curl, one request after the other, until stopped; counts failures."""

    def __init__(self, url: str, host: str) -> None:
        self.url, self.host = url, host
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            result = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10",
                 "-H", f"Host: {self.host}", self.url],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if result.returncode != 0 or result.stdout != "200":
                self.failures.append(f"exit {result.returncode}, status {result.stdout!r}")
            self.done += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class TcpStream:
    """One long-lived connection through a TCP listener to an echo backend: chunks sent one
    after the other, every echo checked against a running digest."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        greeting = b""
        while not greeting.endswith(b"\n"):
            greeting += self.sock.recv(1)
        self.sent = hashlib.sha256()
        self.received = hashlib.sha256()
        self.count = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        chunk = os.urandom(32768)
        try:
            while not self._stop.is_set():
                self.sock.sendall(chunk)
                self.sent.update(chunk)
                got = 0
                while got < len(chunk):
                    data = self.sock.recv(len(chunk) - got)
                    if not data:
                        raise ConnectionError("the stream was closed")
                    self.received.update(data)
                    got += len(data)
                self.count += len(chunk)
        except OSError as error:
            self.error = str(error)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[NamedEcho]:
    server = NamedEcho("alpha")
    try:
        yield server
    finally:
        server.close()


def _orphans(status_before: dict[str, Any]) -> list[int]:
    return [w["pid"] for w in status_before["workers"]]


def test_kill_9_then_start_again_loses_nothing(
    start_daemon: DaemonFactory, echo: NamedEcho, tmp_path: Path
) -> None:
    http_port, tcp_port = free_port(), free_port()
    saved = tmp_path / "state" / "saved.jsonl"
    with nginx_backends(tmp_path / "nginx", "app") as nginx:
        extra = (
            f'saved_state = "{saved}"\n'
            "automatic_state_save = true\n"
            "drain_timeout = 20\n"
            + listener(http_port)
            + cluster("app", [{"address": f"127.0.0.1:{http_port}", "hostname": "app.test"}],
                      [{"address": nginx.address("app"), "backend_id": "app-1"}])
            + "[[listeners]]\n"
            'protocol = "tcp"\n'
            f'address = "127.0.0.1:{tcp_port}"\n'
            "[clusters.echo]\n"
            'protocol = "tcp"\n'
            f'frontends = [{{ address = "127.0.0.1:{tcp_port}" }}]\n'
            f'backends = [{{ address = "{echo.address}", backend_id = "alpha" }}]\n'
        )  # fmt: skip
        daemon = start_daemon(extra=extra)
        # Live changes: one route added, one backend removed.
        for step in (
            ("cluster", "add", "-i", "live"),
            ("frontend", "http", "add", "-a", f"127.0.0.1:{http_port}", "--hostname",
             "live.test", "--id", "live"),
            ("backend", "add", "-i", "live", "--backend-id", "live-1", "-a",
             nginx.address("app")),
            ("backend", "add", "-i", "app", "--backend-id", "app-2", "-a", "127.0.0.1:9"),
            ("backend", "remove", "-i", "app", "--backend-id", "app-2", "-a", "127.0.0.1:9"),
        ):  # fmt: skip
            result = daemon.sozu(*step)
            assert result.returncode == 0, (step, result.stderr)
        before = daemon.running_status()
        assert before is not None
        state_hash = before["supervisor"]["state_hash"]
        wait_for(lambda: saved.exists() or None, what="the state saved")
        time.sleep(0.5)  # the last change is written within COALESCE (0.1 s)

        url = f"http://127.0.0.1:{http_port}/"
        curls = [CurlLoop(url, "app.test"), CurlLoop(url, "live.test")]
        stream = TcpStream(tcp_port)
        orphan_pids = _orphans(before)
        try:
            time.sleep(1)
            os.kill(daemon.process.pid, signal.SIGKILL)
            daemon.process.wait(timeout=10)
            time.sleep(2)  # the workers serve on, alone
            assert all(_alive(pid) for pid in orphan_pids)
            restarted = Daemon.launch(daemon.config_path, daemon.socket_path, 2)
            try:
                status = wait_for(
                    lambda: _converged(restarted, orphan_pids), timeout=60, what="taken over"
                )
                assert status["supervisor"]["state_hash"] == state_hash
                time.sleep(1)
            finally:
                for loop in curls:
                    loop.stop()
                stream.stop()
                # The orphans drained and exited; the test leaves nothing behind.
                wait_for(
                    lambda: None if any(_alive(pid) for pid in orphan_pids) else True,
                    timeout=30,
                    what="the orphans gone",
                )
                restarted.stop()
        finally:
            for pid in orphan_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for loop in curls:
            assert loop.done > 5
            assert loop.failures == [], loop.failures[:5]
        assert stream.error is None, stream.error
        assert stream.count > 0
        assert stream.sent.digest() == stream.received.digest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _converged(daemon: Daemon, old_pids: list[int]) -> dict[str, Any] | None:
    status = daemon.status()
    if status is None:
        return None
    running = [w for w in status["workers"] if w["state"] == "running"]
    fresh = [w for w in running if w["pid"] not in old_pids and w["hash_ok"]]
    return status if len(fresh) == 2 else None
