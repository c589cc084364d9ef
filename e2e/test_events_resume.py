"""`sozu events` across a supervisor upgrade: the stream resumes where it stopped, so a
follower sees MAIN_UPGRADED and every WORKER_UPGRADED, numbered without a gap."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.support.daemon import Daemon, wait_for

pytestmark = pytest.mark.e2e


def test_events_follow_a_supervisor_upgrade(daemon: Daemon) -> None:
    follower = daemon.follow_events()
    seen: list[dict[str, Any]] = []
    try:
        upgraded = daemon.sozu("upgrade", timeout=120)
        assert upgraded.returncode == 0, upgraded.stderr + upgraded.stdout

        def complete() -> list[dict[str, Any]] | None:
            event = follower.next_event(timeout=0.5)
            if event is not None:
                seen.append(event)
            kinds = [e["kind"] for e in seen]
            done = "MAIN_UPGRADED" in kinds and kinds.count("WORKER_UPGRADED") == 2
            return seen if done else None

        wait_for(complete, timeout=60, what="MAIN_UPGRADED and two WORKER_UPGRADED")
        assert follower.process.poll() is None, "sozu events ended during the upgrade"
    finally:
        follower.close()
    kinds = [e["kind"] for e in seen]
    assert kinds.index("MAIN_UPGRADED") < kinds.index("WORKER_UPGRADED")
    numbers = [e["seq"] for e in seen]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == len(numbers), "an event was shown twice"
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a gap"
