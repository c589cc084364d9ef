"""Active HTTP health checks through the real daemon: a stopped nginx backend is marked
unhealthy (events on `sozu events`, metrics) and leaves the rotation; removing the check
brings it back as healthy; `cluster health-check list` shows the configured check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from e2e.support.daemon import DaemonFactory, wait_for
from e2e.support.http_backends import cluster, listener
from e2e.support.net import free_port
from e2e.support.nginx import nginx_backends
from e2e.test_http import get

pytestmark = pytest.mark.e2e


def test_unhealthy_backend_leaves_the_rotation(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    listen = free_port()
    with (
        nginx_backends(tmp_path / "one", "one") as one,
        nginx_backends(tmp_path / "two", "two") as two,
    ):
        config = listener(listen) + cluster(
            "checked",
            [{"address": f"127.0.0.1:{listen}", "hostname": "health.test"}],
            [
                {"address": one.address("one"), "backend_id": "one"},
                {"address": two.address("two"), "backend_id": "two"},
            ],
        )
        config += (
            "[clusters.checked.health_check]\n"
            'uri = "/"\ninterval = 1\ntimeout = 1\nhealthy_threshold = 1\n'
            "unhealthy_threshold = 2\n"
        )
        daemon = start_daemon(extra=config)
        listed = daemon.sozu_json("cluster", "health-check", "list")
        assert listed["content"]["map"]["checked"]["uri"] == "/"

        served = {get(listen, "health.test").header("x-backend")[0] for _ in range(8)}
        assert served == {"one", "two"}

        events = daemon.follow_events()
        try:
            one.stop()
            seen: dict[str, set[str]] = {}

            def unhealthy_everywhere() -> bool | None:
                event = events.next_event(timeout=1)
                if event is not None and event["kind"] == "HEALTH_CHECK_UNHEALTHY":
                    assert event["backend_id"] == "one", event
                    seen.setdefault("one", set()).add(str(event.get("source")))
                return len(seen.get("one", ())) == daemon.worker_count or None

            # unhealthy_threshold (2) x interval (1 s), with slack
            wait_for(unhealthy_everywhere, timeout=10, what="one unhealthy in every worker")
        finally:
            events.close()
        # Every request now goes to the healthy backend, on fresh connections too.
        for _ in range(10):
            response = get(listen, "health.test")
            assert response.status == 200
            assert response.header("x-backend") == ["two"]
        metrics: Any = daemon.sozu_json("metrics", "get")
        assert "sozu_http_health_check_healthy" in str(metrics)

        assert daemon.sozu("cluster", "health-check", "remove", "-i", "checked").returncode == 0
        assert daemon.sozu_json("cluster", "health-check", "list")["content"].get("map", {}) == {}
        # Without the check "one" counts as healthy again: its dead address is now tried and
        # backed off by the connect retries, and requests are still answered by "two".
        for _ in range(6):
            assert get(listen, "health.test").status == 200
