"""Routing built entirely from the CLI on a running daemon, then used; refused commands change
nothing (duplicate listener, bad address, unknown cluster)."""

from __future__ import annotations

import pytest

from e2e.support.backends import NamedEcho, exchange
from e2e.support.daemon import DaemonFactory
from e2e.support.net import free_port

pytestmark = pytest.mark.e2e


def _hashes(status: dict[str, object]) -> set[str]:
    supervisor = status["supervisor"]
    workers = status["workers"]
    assert isinstance(supervisor, dict)
    assert isinstance(workers, list)
    return {supervisor["state_hash"], *(w["state_hash"] for w in workers)}


def test_listener_cluster_frontend_and_backends_added_live_then_used(
    start_daemon: DaemonFactory,
) -> None:
    daemon = start_daemon()
    listen = free_port()
    address = f"127.0.0.1:{listen}"
    with NamedEcho("one") as one, NamedEcho("two") as two:
        for command in (
            ("listener", "tcp", "add", "-a", address),
            ("cluster", "add", "-i", "live", "--load-balancing-policy", "round_robin"),
            ("frontend", "tcp", "add", "--id", "live", "-a", address),
            ("backend", "add", "-i", "live", "--backend-id", "one", "-a", one.address),
            ("backend", "add", "-i", "live", "--backend-id", "two", "-a", two.address),
            ("listener", "tcp", "activate", "-a", address),
        ):
            result = daemon.sozu(*command)
            assert result.returncode == 0, (command, result.stderr)
        served = {exchange(listen, b"hello") for _ in range(8)}
        assert served == {"one", "two"}

        status = daemon.wait_running()
        assert len(_hashes(status)) == 1, "every worker agrees with the supervisor"
        before = status["supervisor"]["state_hash"]
        for refused in (
            ("listener", "tcp", "add", "-a", address),  # duplicate listener
            ("backend", "add", "-i", "live", "--backend-id", "x", "-a", "not-an-address"),
            ("cluster", "remove", "-i", "no-such-cluster"),
            ("listener", "udp", "activate", "-a", "127.0.0.1:1"),  # unknown listener
        ):
            result = daemon.sozu(*refused)
            assert result.returncode != 0, refused
            assert result.stderr.strip(), f"{refused} failed without saying why"
        after = daemon.wait_running()
        assert after["supervisor"]["state_hash"] == before
        assert _hashes(after) == {before}
        assert exchange(listen, b"still") in ("one", "two")
