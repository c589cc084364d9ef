"""TCP through the real daemon, the hard cases: a backend removed under a live connection, a
dead backend next to a live one, and per-listener, per-cluster and per-backend metrics that
match the bytes and connections the test made exactly."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest

from e2e.support.backends import NamedEcho, exchange
from e2e.support.daemon import DaemonFactory, wait_for
from e2e.support.net import Series, free_port, prometheus_series

pytestmark = pytest.mark.e2e


def _config(listen: int, backends: list[tuple[str, str]], metrics_port: int | None = None) -> str:
    lines = []
    if metrics_port is not None:
        lines += ["[metrics]", f'prometheus_address = "127.0.0.1:{metrics_port}"']
    lines += [
        "[[listeners]]",
        'protocol = "tcp"',
        f'address = "127.0.0.1:{listen}"',
        "[clusters.echo]",
        'protocol = "tcp"',
        f'frontends = [{{ address = "127.0.0.1:{listen}" }}]',
        "backends = ["
        + ", ".join(
            f'{{ address = "{address}", backend_id = "{name}" }}' for name, address in backends
        )
        + "]",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def echoes() -> Iterator[list[NamedEcho]]:
    servers = [NamedEcho(name) for name in ("alpha", "beta")]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def _read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, f"connection closed after {line!r}"
        line += chunk
    return line


def _echoed(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {received!r}"
        received += chunk
    return received


def test_removed_backend_keeps_its_live_connection_and_gets_no_new_one(
    start_daemon: DaemonFactory, echoes: list[NamedEcho]
) -> None:
    listen = free_port()
    by_name = {echo.name: echo for echo in echoes}
    daemon = start_daemon(extra=_config(listen, [(e.name, e.address) for e in echoes]))

    with socket.create_connection(("127.0.0.1", listen), timeout=10) as session:
        served_by = _read_line(session).decode().strip()
        other = "beta" if served_by == "alpha" else "alpha"
        assert _echoed(session, b"before") == b"before"
        removed = daemon.sozu(
            "backend",
            "remove",
            "-i",
            "echo",
            "--backend-id",
            served_by,
            "-a",
            by_name[served_by].address,
        )
        assert removed.returncode == 0, removed.stderr
        # The connection to the removed backend goes on working...
        assert _echoed(session, b"after the removal") == b"after the removal"
        # ...while new connections only reach the other backend.
        before = by_name[served_by].connections
        names = [exchange(listen, b"new") for _ in range(8)]
        assert set(names) == {other}, names
        assert by_name[served_by].connections == before
        assert _echoed(session, b"still there") == b"still there"
        session.shutdown(socket.SHUT_WR)
        assert session.recv(100) == b""


def test_dead_backend_is_retried_and_byte_counters_are_exact(
    start_daemon: DaemonFactory, echoes: list[NamedEcho]
) -> None:
    alpha = echoes[0]
    listen, metrics_port, dead_port = free_port(), free_port(), free_port()
    listener = f"127.0.0.1:{listen}"
    backends = [("dead", f"127.0.0.1:{dead_port}"), ("alpha", alpha.address)]
    daemon = start_daemon(extra=_config(listen, backends, metrics_port))

    # Every connection is served, by the live backend, whatever the dead one does.
    rng = random.Random(11)
    sent = received = 0
    count = 12
    for index in range(count):
        payload = rng.randbytes(rng.randrange(1, 200_000) if index % 3 else 0)
        assert exchange(listen, payload) == "alpha"
        sent += len(payload)
        received += len(b"alpha\n") + len(payload)

    at_listener = frozenset({("listener", listener)})
    dead = frozenset({("cluster", "echo"), ("backend", "dead")})
    live = frozenset({("cluster", "echo"), ("backend", "alpha")})

    def settled() -> Series | None:
        series = prometheus_series(metrics_port)
        done = (
            series.get(("sozu_tcp_connections_total", at_listener)) == count
            and series.get(("sozu_tcp_active_connections", at_listener)) == 0
            and series.get(("sozu_tcp_bytes_in_total", at_listener)) == sent
            and series.get(("sozu_tcp_bytes_out_total", at_listener)) == received
        )
        return series if done else None

    series = wait_for(settled, timeout=5, what=f"{sent} bytes in, {received} bytes out")
    errors = series[("sozu_backend_connect_errors_total", dead)]
    assert errors >= 1
    # The live backend is always there to retry on: one retry per failed connect.
    assert series[("sozu_tcp_retries_total", at_listener)] == errors
    assert series[("sozu_tcp_refused_total", at_listener)] == 0
    assert series[("sozu_backend_connections_total", live)] == count
    assert series[("sozu_backend_bytes_in_total", live)] == sent
    assert series[("sozu_backend_bytes_out_total", live)] == received
    assert series[("sozu_backend_up", live)] == 1
    assert series[("sozu_backend_active_connections", live)] == 0
    cluster = frozenset({("cluster", "echo")})
    assert series[("sozu_cluster_connections_total", cluster)] == count
    assert series[("sozu_cluster_active_connections", cluster)] == 0
    assert series[("sozu_backend_connect_seconds_count", cluster)] == count

    # `sozu metrics get`: per-cluster and per-backend sections, in JSON and for humans.
    report = daemon.sozu_json("-t", "15000", "metrics", "get")["content"]
    assert report["clusters"]["echo"]["sozu_cluster_connections_total"]["value"] == count
    assert report["backends"]["echo/alpha"]["sozu_backend_bytes_in_total"]["value"] == sent
    assert report["backends"]["echo/dead"]["sozu_backend_connect_errors_total"]["value"] >= 1
    assert report["main"][f'sozu_tcp_bytes_out_total{{listener="{listener}"}}']["value"] == received
    text = daemon.sozu("-t", "15000", "metrics", "get")
    assert text.returncode == 0, text.stderr
    assert "cluster echo:\n  sozu_backend_connect_seconds count" in text.stdout
    assert "backend echo/dead:\n  sozu_backend_active_connections 0" in text.stdout
