"""`sozu top` on the command line without a daemon: what it says and its exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _sozu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sozu.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_snapshot_without_a_daemon_exits_69_without_a_traceback(tmp_path: Path) -> None:
    result = _sozu("--socket", str(tmp_path / "none.sock"), "top", "--snapshot", "1")
    assert result.returncode == 69
    assert result.stderr.startswith("error: cannot connect to the command socket")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_the_live_view_needs_a_terminal(tmp_path: Path) -> None:
    result = _sozu("--socket", str(tmp_path / "none.sock"), "top")
    assert result.returncode == 2
    assert "needs a terminal (or --snapshot N)" in result.stderr
