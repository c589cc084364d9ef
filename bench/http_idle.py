"""Idle HTTP keep-alive clients on one worker: memory, and how fast a new client is served.

Starts a real `sozu start` (one worker, `python -O`) with an HTTP listener in front of a small
keep-alive backend, all on loopback. Opens N client connections (default 10,000), sends one
request on each and reads its answer, so that each stays an idle keep-alive session in the
worker; then prints the worker's RSS growth, and the time a new client (a fresh connection,
one request) takes to be served while those are held, over 50 tries (p50, p99, max).

Run: `uv run python bench/http_idle.py [--connections N]` (needs RLIMIT_NOFILE above N + 100;
asserts nothing about time).
"""

from __future__ import annotations

import argparse
import resource
import selectors
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

REQUEST = b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def backend(stop: threading.Event) -> int:
    """A keep-alive backend answering every request head with ANSWER (one selector thread)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    server.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}

    def run() -> None:
        while not stop.is_set():
            for key, _ in selector.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is server:
                    conn, _ = server.accept()
                    conn.setblocking(False)
                    pending[conn] = b""
                    selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    pending.pop(sock, None)
                    sock.close()
                    continue
                buffered = pending[sock] + data
                while (end := buffered.find(b"\r\n\r\n")) >= 0:
                    buffered = buffered[end + 4 :]
                    sock.sendall(ANSWER)
                pending[sock] = buffered
        server.close()

    threading.Thread(target=run, daemon=True).start()
    port: int = server.getsockname()[1]
    return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def one_request(port: int) -> float:
    """Seconds from connect to the whole answer, on a new connection."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(REQUEST)
        received = b""
        while not received.endswith(b"ok"):
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"connection closed after {received!r}")
            received += chunk
    if not received.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer {received[:40]!r}")
    return time.perf_counter() - started


def open_idle(port: int, count: int) -> list[socket.socket]:
    """`count` connections, each answered once and left open (in batches of 500)."""
    held: list[socket.socket] = []
    while len(held) < count:
        batch = [
            socket.create_connection(("127.0.0.1", port), timeout=10)
            for _ in range(min(500, count - len(held)))
        ]
        for sock in batch:
            sock.sendall(REQUEST)
        for sock in batch:
            received = b""
            while not received.endswith(b"ok"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("an idle connection was closed by the proxy")
                received += chunk
        held += batch
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.connections + 200
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    stop = threading.Event()
    backend_port = backend(stop)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        sock_path = Path(tmp) / "sozu.sock"
        config = Path(tmp) / "sozu.toml"
        config.write_text(
            f'command_socket = "{sock_path}"\nworker_count = 1\n'
            f"max_connections = {args.connections + 1000}\n"
            "front_timeout = 600\n"
            f'[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:{port}"\n'
            '[clusters.idle]\nprotocol = "http"\n'
            f'frontends = [{{ address = "127.0.0.1:{port}", hostname = "idle.test" }}]\n'
            f'backends = [{{ address = "127.0.0.1:{backend_port}" }}]\n'
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "sozu.cli", "-c", str(config), "start"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        held: list[socket.socket] = []
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    one_request(port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            client = CommandClient.connect(str(sock_path), timeout_ms=5000)
            try:
                status = client.call(rq.Status(), timeout_ms=5000)
            finally:
                client.close()
            report = status.content
            assert isinstance(report, StatusReport)
            worker_pid = report.workers[0].pid
            for _ in range(20):
                one_request(port)
            before = rss_kib(worker_pid)
            started = time.perf_counter()
            held = open_idle(port, args.connections)
            opened = time.perf_counter() - started
            time.sleep(1.0)
            after = rss_kib(worker_pid)
            times = sorted(one_request(port) for _ in range(50))
            print(f"idle keep-alive connections: {len(held)} (opened in {opened:.1f} s)")
            print(
                f"worker RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after, "
                f"growth {(after - before) / 1024:.1f} MiB "
                f"({(after - before) * 1024 / len(held):.0f} bytes per connection)"
            )
            print(
                "new client served (connect + request + answer) meanwhile: "
                f"p50 {statistics.median(times) * 1e3:.2f} ms, "
                f"p99 {times[int(len(times) * 0.99) - 1] * 1e3:.2f} ms, "
                f"max {times[-1] * 1e3:.2f} ms"
            )
        finally:
            for sock in held:
                sock.close()
            subprocess.run(
                [sys.executable, "-m", "sozu.cli", "-c", str(config), "shutdown"],
                capture_output=True,
                timeout=30,
            )
            daemon.wait(timeout=30)
            stop.set()


if __name__ == "__main__":
    main()
