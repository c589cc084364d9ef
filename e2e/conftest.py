"""End-to-end fixtures: real daemons on loopback, always stopped after the test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # So that `e2e.support` imports (appended: never shadows an installed package).
    sys.path.append(str(ROOT))

from e2e.support.daemon import Daemon, DaemonFactory  # noqa: E402
from e2e.support.etcd import EtcdMember  # noqa: E402


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    """`start_daemon(worker_count=2, worker_timeout=5, extra="", name="a")`: a daemon in a dir."""
    daemons: list[Daemon] = []

    def start(
        *, worker_count: int = 2, worker_timeout: int = 5, extra: str = "", name: str = "a"
    ) -> Daemon:
        directory = tmp_path / name
        directory.mkdir()
        daemon = Daemon.start(
            directory, worker_count=worker_count, worker_timeout=worker_timeout, extra=extra
        )
        daemons.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in daemons:
            daemon.stop()


@pytest.fixture
def daemon(start_daemon: DaemonFactory) -> Daemon:
    """A running daemon with two workers."""
    return start_daemon()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdMember]:
    """A real etcd member on loopback (no TLS, no authentication), removed after the test."""
    member = EtcdMember.start(tmp_path / "etcd")
    try:
        yield member
    finally:
        member.remove()
