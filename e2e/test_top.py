"""`sozu top` in a real terminal (tmux) against a real daemon under a request loop: the
overview shows the requests, the clusters pane lists the cluster, `q` exits 0, SIGTERM, SIGHUP
and SIGINT end it too, and either way the terminal settings are what they were before; closing
the terminal ends it without a traceback."""

from __future__ import annotations

import http.client
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.http_backends import EchoHeaders, cluster, listener
from e2e.support.net import free_port
from e2e.support.programs import require_program

pytestmark = pytest.mark.e2e

HOST = "top.test"


class Tmux:
    """One detached tmux session running a command in a 100x30 terminal."""

    def __init__(self, tmux: str, name: str, command: str) -> None:
        self.tmux, self.name = tmux, name
        subprocess.run(
            [tmux, "new-session", "-d", "-s", name, "-x", "100", "-y", "30", command],
            check=True,
            timeout=10,
        )

    def screen(self) -> str:
        result = subprocess.run(
            [self.tmux, "capture-pane", "-p", "-t", self.name],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return result.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([self.tmux, "send-keys", "-t", self.name, *keys], check=True, timeout=10)

    def close(self) -> None:
        subprocess.run([self.tmux, "kill-session", "-t", self.name], timeout=10, check=False)


@pytest.fixture
def served(start_daemon: DaemonFactory) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    with EchoHeaders("web-1") as web:
        config = listener(port) + cluster(
            "shop", [{"address": f"127.0.0.1:{port}", "hostname": HOST}],
            [{"address": web.address, "backend_id": "web-1"}],
        )  # fmt: skip
        daemon = start_daemon(worker_count=1, extra=config)
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    for _ in range(20):
                        connection.request("GET", "/", headers={"Host": HOST})
                        connection.getresponse().read()
                        time.sleep(0.005)
                except OSError:
                    time.sleep(0.1)
                finally:
                    connection.close()

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        try:
            yield daemon, port
        finally:
            stop.set()
            thread.join(timeout=10)


def _script(daemon: Daemon, directory: Path) -> str:
    """A shell line that records the terminal settings around `sozu top` and its exit code."""
    top = shlex.join([sys.executable, "-m", "sozu.cli", "-c", str(daemon.config_path), "top",
                      "--refresh-ms", "500"])  # fmt: skip
    d = shlex.quote(str(directory))
    return (
        f"stty -g > {d}/before; {top}; echo $? > {d}/rc.tmp; stty -g > {d}/after; "
        f"mv {d}/rc.tmp {d}/rc; sleep 30"
    )


def _requests_per_second(screen: str) -> float | None:
    match = re.search(r"requests/s\s+([0-9.]+)(k?)", screen)
    if match is None:
        return None
    return float(match.group(1)) * (1000 if match.group(2) else 1)


def test_top_shows_the_load_and_quits_on_q(served: tuple[Daemon, int], tmp_path: Path) -> None:
    tmux_path = require_program("tmux")
    daemon, _ = served
    session = Tmux(tmux_path, f"top-{free_port()}", _script(daemon, tmp_path))
    try:
        rate = wait_for(
            lambda: ((r := _requests_per_second(session.screen())) and r > 0 and r) or None,
            timeout=10,
            what="a non-zero request rate on the overview",
        )
        assert rate > 0
        session.keys("c")

        def clusters_pane() -> str | None:
            screen = session.screen()
            return screen if "shop" in screen else None

        screen = wait_for(clusters_pane, timeout=10, what="the cluster in the clusters pane")
        assert "clusters" in screen
        session.keys("q")
        rc = wait_for(
            lambda: (tmp_path / "rc").read_text().strip() if (tmp_path / "rc").exists() else None,
            timeout=10,
            what="sozu top to exit",
        )
        assert rc == "0"
        assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()
    finally:
        session.close()


@pytest.mark.parametrize("signal_name", ["TERM", "HUP", "INT"])
def test_top_ends_on_a_signal_with_the_terminal_restored(
    served: tuple[Daemon, int], tmp_path: Path, signal_name: str
) -> None:
    tmux_path = require_program("tmux")
    daemon, _ = served
    session = Tmux(tmux_path, f"top-{free_port()}", _script(daemon, tmp_path))
    try:
        wait_for(lambda: "requests/s" in session.screen() or None, timeout=10, what="overview")
        found = subprocess.run(
            ["pgrep", "-f", f"^{sys.executable} -m sozu.cli -c {daemon.config_path} top"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        pids = found.stdout.split()
        assert len(pids) == 1, found
        subprocess.run(["kill", f"-{signal_name}", pids[0]], check=True, timeout=10)
        wait_for(lambda: (tmp_path / "rc").exists() or None, timeout=10, what="exit")
        assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()
    finally:
        session.close()


def test_top_ends_quietly_when_its_terminal_goes_away(
    served: tuple[Daemon, int], tmp_path: Path
) -> None:
    """Closing the terminal (the pty hangs up) ends `sozu top` without a traceback: reading
    and leaving the screen on a dead terminal fail, restoring its settings too."""
    tmux_path = require_program("tmux")
    daemon, _ = served
    top = shlex.join([sys.executable, "-m", "sozu.cli", "-c", str(daemon.config_path), "top"])
    stderr = tmp_path / "stderr"
    session = Tmux(tmux_path, f"top-{free_port()}", f"{top} 2> {shlex.quote(str(stderr))}")
    try:
        wait_for(lambda: "requests/s" in session.screen() or None, timeout=10, what="overview")
        found = subprocess.run(
            ["pgrep", "-f", f"^{sys.executable} -m sozu.cli -c {daemon.config_path} top"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        pids = found.stdout.split()
        assert len(pids) == 1, found
    finally:
        session.close()
    wait_for(lambda: not Path(f"/proc/{pids[0]}").exists() or None, timeout=10, what="exit")
    assert stderr.read_text() == ""
