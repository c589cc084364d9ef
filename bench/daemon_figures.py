"""Daemon figures: command round trips, worker memory with idle connections, short connections.

Starts a real `sozu start` (one worker, production mode: `python -O` workers) with a TCP
listener in front of a local backend, all on loopback, and prints:
- round trip p50/p99 of 1,000 `Status` and 1,000 `AddBackend` requests over the command socket
  (the blocking client library, one request at a time; the CLI adds its own start-up);
- the worker's RSS before and after 1,000 idle connections are proxied (and held open).
Connection rates need a client and a backend faster than Python: measure them with wrk and
nginx (bench/tcp_short.sh does, for short TCP connections), not here.

Run: `uv run python bench/daemon_figures.py` (asserts nothing about time).
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sozu.command import requests as rq
from sozu.command.client import CommandClient
from sozu.command.responses import StatusReport
from sozu.command.types import Backend

IDLE_CONNECTIONS = 1000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def echo_backend(stop: threading.Event) -> tuple[int, threading.Thread]:
    """A selector-free echo backend: one thread per connection is enough for these loads."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    server.settimeout(0.2)

    def serve_one(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()
        server.close()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    return server.getsockname()[1], thread


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return f"p50 {p50 * 1e3:.3f} ms  p99 {p99 * 1e3:.3f} ms"


def main() -> None:
    stop = threading.Event()
    backend_port, _ = echo_backend(stop)
    listen_port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        socket_path = Path(directory) / "sozu.sock"
        config = Path(directory) / "sozu.toml"
        config.write_text(
            f'command_socket = "{socket_path}"\nworker_count = 1\nlog_level = "error"\n'
            f"max_connections = 20000\n"
            f'[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:{listen_port}"\n'
            f'[clusters.echo]\nprotocol = "tcp"\n'
            f'frontends = [{{ address = "127.0.0.1:{listen_port}" }}]\n'
            f'backends = [{{ address = "127.0.0.1:{backend_port}" }}]\n'
        )
        sozu = Path(sys.executable).with_name("sozu")
        daemon = subprocess.Popen([str(sozu), "start", "-c", str(config)])
        try:
            for _ in range(100):
                if socket_path.exists():
                    break
                time.sleep(0.1)
            time.sleep(1.0)
            client = CommandClient.connect(str(socket_path), timeout_ms=5000)
            status = client.call(rq.Status(), timeout_ms=5000)
            assert isinstance(status.content, StatusReport)
            worker_pid = status.content.workers[0].pid

            samples = []
            for _ in range(1000):
                start = time.perf_counter()
                client.call(rq.Status(), timeout_ms=5000)
                samples.append(time.perf_counter() - start)
            print(f"Status round trip (1,000, one worker):      {percentiles(samples)}")
            samples = []
            for index in range(1000):
                backend = Backend(
                    cluster_id="bench", backend_id=f"b{index}", address=f"127.0.1.1:{10000 + index}"
                )
                start = time.perf_counter()
                client.call(rq.AddBackend(backend=backend), timeout_ms=5000)
                samples.append(time.perf_counter() - start)
            print(f"AddBackend round trip (1,000, one worker):  {percentiles(samples)}")

            before = rss_kib(worker_pid)
            held = []
            for _ in range(IDLE_CONNECTIONS):
                conn = socket.create_connection(("127.0.0.1", listen_port))
                conn.sendall(b"x")
                assert conn.recv(1) == b"x"
                held.append(conn)
            time.sleep(0.5)
            after = rss_kib(worker_pid)
            per_connection = (after - before) * 1024 / IDLE_CONNECTIONS
            print(
                f"worker RSS: {before / 1024:.1f} MiB idle, {after / 1024:.1f} MiB with "
                f"{IDLE_CONNECTIONS} proxied idle connections ({per_connection:,.0f} B each)"
            )
            for conn in held:
                conn.close()
            time.sleep(0.5)

            client.close()
        finally:
            daemon.terminate()
            daemon.wait(timeout=15)
            stop.set()


if __name__ == "__main__":
    main()
