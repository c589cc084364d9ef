"""Process-wide configuration keys through the real daemon: the global
`max_connections_per_ip` limits HTTP (429 + Retry-After) and TCP (closed) connections per
client IP, and `log_target` takes the supervisor's and the workers' logs to a file."""

from __future__ import annotations

import socket

import pytest

from e2e.support.backends import NamedEcho
from e2e.support.daemon import DaemonFactory, wait_for
from e2e.support.http_backends import (
    EchoHeaders,
    Reader,
    cluster,
    listener,
    read_response,
)
from e2e.support.net import free_port

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 10.0


def test_global_max_connections_per_ip_limits_http_and_tcp(start_daemon: DaemonFactory) -> None:
    http_port, tcp_port = free_port(), free_port()
    with EchoHeaders("web") as web, NamedEcho("db") as db:
        config = "max_connections_per_ip = 1\n"
        config += listener(http_port)
        config += listener(tcp_port, "tcp")
        config += cluster(
            "web",
            [{"address": f"127.0.0.1:{http_port}", "hostname": "web.test"}],
            [{"address": web.address, "backend_id": "web"}],
        )
        config += (
            '[clusters.db]\nprotocol = "tcp"\n'
            f'frontends = [{{ address = "127.0.0.1:{tcp_port}" }}]\n'
            f'backends = [{{ address = "{db.address}", backend_id = "db" }}]\n'
        )
        # One worker: the count is per worker, as upstream's.
        start_daemon(worker_count=1, extra=config)
        request = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"
        with socket.create_connection(("127.0.0.1", http_port), timeout=IO_TIMEOUT) as first:
            first.sendall(request)
            response = read_response(Reader(first))
            assert response is not None
            assert response.status == 200
            # The first connection stays open (keep-alive): the second one is refused.
            with socket.create_connection(("127.0.0.1", http_port), timeout=IO_TIMEOUT) as second:
                second.sendall(request)
                reader = Reader(second)
                refused = read_response(reader)
                assert refused is not None
                assert refused.status == 429
                assert refused.header("retry-after") == ["60"]
                assert reader.rest() == b""
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=IO_TIMEOUT) as first:
            assert first.recv(100) == b"db\n"
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=IO_TIMEOUT) as second:
                assert second.recv(100) == b"", "closed before any backend was reached"
        assert db.connections == 1


def test_log_target_takes_every_process_log_to_a_file(start_daemon: DaemonFactory) -> None:
    # Workers log when they start serving the listener.
    config = 'log_target = "file://logs.txt"\n' + listener(free_port())
    daemon = start_daemon(extra=config)
    # Relative to the configuration file's directory.
    path = daemon.config_path.parent / "logs.txt"

    def both_logged() -> str | None:
        text = path.read_text() if path.exists() else ""
        return text if "[main]" in text and "[worker " in text else None

    wait_for(both_logged, timeout=5, what="supervisor and worker lines in the log file")
    assert "[main]" not in daemon.log()


def _second_connection_status(port: int) -> int:
    """The status a second connection gets while a first keep-alive one stays open."""
    request = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as first:
        first.sendall(request)
        response = read_response(Reader(first))
        assert response is not None
        assert response.status == 200
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as second:
            second.sendall(request)
            answer = read_response(Reader(second))
            assert answer is not None
            return answer.status


def test_connection_limit_set_at_runtime_holds_for_new_workers(
    start_daemon: DaemonFactory,
) -> None:
    http_port = free_port()
    with EchoHeaders("web") as web:
        config = listener(http_port) + cluster(
            "web",
            [{"address": f"127.0.0.1:{http_port}", "hostname": "web.test"}],
            [{"address": web.address, "backend_id": "web"}],
        )
        daemon = start_daemon(worker_count=1, extra=config)
        assert _second_connection_status(http_port) == 200
        assert daemon.sozu("connection-limit", "set", "1").returncode == 0
        assert _second_connection_status(http_port) == 429
        # A worker launched afterwards (an upgrade) gets the runtime limit, not the file's.
        (worker,) = daemon.sozu_json("status")["workers"]
        upgraded = daemon.sozu("upgrade", "--worker", str(worker["id"]), timeout=60)
        assert upgraded.returncode == 0, upgraded.stderr
        daemon.wait_running()
        assert _second_connection_status(http_port) == 429
        assert daemon.sozu("connection-limit", "remove").returncode == 0
        assert _second_connection_status(http_port) == 200


def test_metrics_disable_drops_the_per_cluster_series_until_enabled(
    start_daemon: DaemonFactory,
) -> None:
    http_port = free_port()
    with EchoHeaders("web") as web:
        config = listener(http_port) + cluster(
            "web",
            [{"address": f"127.0.0.1:{http_port}", "hostname": "web.test"}],
            [{"address": web.address, "backend_id": "web"}],
        )
        daemon = start_daemon(worker_count=1, extra=config)

        def clusters() -> dict[str, object]:
            report = daemon.sozu_json("metrics", "get", "-k", "web", "-b", "web")["content"]
            assert report.get("main", {}) == {}  # the filters leave out process-wide series
            return {**report.get("clusters", {}), **report.get("backends", {})}

        assert _second_connection_status(http_port) == 200
        wait_for(lambda: clusters() or None, timeout=5, what="per-cluster series")
        assert daemon.sozu("metrics", "disable").returncode == 0
        wait_for(lambda: not clusters() or None, timeout=5, what="no per-cluster series")
        assert daemon.sozu("metrics", "enable").returncode == 0
        assert _second_connection_status(http_port) == 200
        wait_for(lambda: clusters() or None, timeout=5, what="per-cluster series again")
