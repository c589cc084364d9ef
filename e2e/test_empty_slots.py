"""Capacity is never silently lost: an empty worker slot's sockets are served by another
worker until the slot is refilled (by `sozu relaunch`, a supervisor upgrade, or once the
restart window has passed), and a worker that cannot replay the state is not relaunched in a
loop."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.support.backends import NamedEcho, exchange
from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.net import free_port

pytestmark = pytest.mark.e2e

CONNECTIONS = 40


@pytest.fixture
def echo() -> Iterator[NamedEcho]:
    server = NamedEcho("alpha")
    try:
        yield server
    finally:
        server.close()


def _config(listen: int, backend: NamedEcho) -> str:
    return (
        "worker_max_restarts_per_minute = 1\n"
        "[[listeners]]\n"
        'protocol = "tcp"\n'
        f'address = "127.0.0.1:{listen}"\n'
        "[clusters.echo]\n"
        'protocol = "tcp"\n'
        f'frontends = [{{ address = "127.0.0.1:{listen}" }}]\n'
        f'backends = [{{ address = "{backend.address}", backend_id = "alpha" }}]\n'
    )


def _worker_of(status: dict[str, Any], slot: int) -> dict[str, Any] | None:
    return next((w for w in status["workers"] if w["slot"] == slot), None)


def _empty_slot(daemon: Daemon, slot: int) -> dict[str, Any] | None:
    status = daemon.status()
    if status is None:
        return None
    for empty in status.get("empty_slots", []):
        if empty["slot"] == slot and empty["adopted_by"] is not None:
            return status
    return None


def _all_served(port: int) -> None:
    """Every connection gets the backend's greeting and its echo: none waits in a queue
    nobody serves (each would time out in `exchange`)."""
    for _ in range(CONNECTIONS):
        assert exchange(port, b"ping") == "alpha"


def _kill_slot(daemon: Daemon, slot: int) -> int:
    status = daemon.status()
    assert status is not None
    worker = _worker_of(status, slot)
    assert worker is not None
    os.kill(worker["pid"], signal.SIGKILL)
    return int(worker["id"])


def test_an_empty_slot_is_served_by_another_worker_then_refilled(
    start_daemon: DaemonFactory, echo: NamedEcho
) -> None:
    listen = free_port()
    daemon = start_daemon(extra=_config(listen, echo))
    _all_served(listen)

    # Two crashes in a minute with worker_max_restarts_per_minute = 1: slot 1 stays empty.
    first = _kill_slot(daemon, 1)
    wait_for(
        lambda: (s := daemon.running_status()) and _worker_of(s, 1)["id"] != first,  # type: ignore[index]
        what="slot 1 relaunched once",
    )
    _kill_slot(daemon, 1)
    status = wait_for(lambda: _empty_slot(daemon, 1), what="slot 1 empty and adopted")
    adopter = _worker_of(status, 0)
    assert adopter is not None
    empty = status["empty_slots"][0]
    assert empty["adopted_by"] == adopter["id"]
    assert "worker_max_restarts_per_minute" in empty["reason"]
    assert [w["slot"] for w in status["workers"]] == [0]
    text = daemon.sozu("status")
    assert "slot 1 EMPTY" in text.stdout

    # Both SO_REUSEPORT sockets are accepted on: the kernel sends about half of the new
    # connections to slot 1's socket, and every one of them is served.
    _all_served(listen)

    # `sozu relaunch` refills the slot with the very same socket; the adopter lets go of it.
    relaunched = daemon.sozu("relaunch")
    assert relaunched.returncode == 0, relaunched.stderr + relaunched.stdout
    status = daemon.wait_running()
    assert "empty_slots" not in status
    assert {w["slot"] for w in status["workers"]} == {0, 1}
    _all_served(listen)


def test_no_live_worker_closes_the_sockets_and_an_upgrade_refills_every_slot(
    start_daemon: DaemonFactory, echo: NamedEcho
) -> None:
    listen = free_port()
    daemon = start_daemon(worker_count=1, extra=_config(listen, echo))
    first = _kill_slot(daemon, 0)
    wait_for(
        lambda: (s := daemon.running_status()) and _worker_of(s, 0)["id"] != first,  # type: ignore[index]
        what="slot 0 relaunched once",
    )
    _kill_slot(daemon, 0)

    def empty_without_adopter() -> dict[str, Any] | None:
        status = daemon.status()
        if status is None or not status.get("empty_slots"):
            return None
        return status

    status = wait_for(empty_without_adopter, what="slot 0 empty")
    assert status["empty_slots"][0]["adopted_by"] is None
    assert status["workers"] == []
    # No worker at all: the socket is closed, so clients are refused rather than left waiting.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", listen), timeout=5).close()

    # A supervisor upgrade refills it (binding the listener again): it used to fail with
    # "no socket received" and leave the slot empty.
    upgraded = daemon.sozu("upgrade", timeout=90)
    assert upgraded.returncode == 0, upgraded.stderr + upgraded.stdout
    status = daemon.wait_running(timeout=30)
    assert "empty_slots" not in status
    _all_served(listen)
