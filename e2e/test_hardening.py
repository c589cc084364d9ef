"""No input from outside stops the daemon: each defect found by a hostile client or a
careless operator, reproduced against the real daemon, and what it must do instead."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from e2e.support.daemon import Daemon, DaemonFactory, sozu_cli, wait_for
from e2e.support.net import free_port, scrape

pytestmark = pytest.mark.e2e


def _pids(daemon: Daemon) -> tuple[int, set[int]]:
    status = daemon.running_status()
    assert status is not None, daemon.log()[-3000:]
    return status["supervisor"]["pid"], {w["pid"] for w in status["workers"]}


def _call_raw(daemon: Daemon, payload: bytes, timeout: float = 5.0) -> dict[str, Any]:
    """Send one frame on the command socket; the first final answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(daemon.socket_path))
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        while True:
            length = struct.unpack(">I", _read_exactly(sock, 4))[0]
            answer: dict[str, Any] = msgspec.msgpack.decode(_read_exactly(sock, length))
            if answer["status"] != "processing":
                return answer


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def _request(request: dict[str, Any], request_id: str = "r1") -> bytes:
    return msgspec.msgpack.encode({"v": 1, "id": request_id, "request": request})


def test_a_reset_on_the_metrics_port_does_not_stop_the_daemon(
    start_daemon: DaemonFactory,
) -> None:
    port = free_port()
    daemon = start_daemon(extra=f'[metrics]\nprometheus_address = "127.0.0.1:{port}"')
    before = _pids(daemon)
    for _ in range(20):
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sendall(b"GET /metr")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    time.sleep(0.5)
    assert daemon.process.poll() is None, daemon.log()[-3000:]
    assert _pids(daemon) == before
    scraped = scrape(port)
    assert scraped.startswith("HTTP/1.1 200")
    assert "sozu_prometheus_errors_total" in scraped


def test_paths_with_a_nul_byte_are_refused_promptly(daemon: Daemon) -> None:
    before = _pids(daemon)
    for kind in ("SaveState", "LoadState", "ReloadConfiguration"):
        started = time.monotonic()
        answer = _call_raw(daemon, _request({"type": kind, "path": "/tmp/a\x00b"}))
        assert answer["status"] == "failure", answer
        assert "path" in answer["message"]
        assert time.monotonic() - started < 3
    assert _pids(daemon) == before


def test_a_hostname_no_worker_could_route_is_refused_by_name(daemon: Daemon) -> None:
    before = _pids(daemon)
    port = free_port()
    added = daemon.sozu("listener", "http", "add", "-a", f"127.0.0.1:{port}")
    assert added.returncode == 0, added.stderr
    for hostname in ("/(/.example.com", "a..b", "*.x./y/"):
        result = daemon.sozu(
            "frontend", "http", "add", "-a", f"127.0.0.1:{port}", "--hostname", hostname,
            "--id", "web",
        )  # fmt: skip
        assert result.returncode == 1, (hostname, result.stdout)
        assert "hostname" in (result.stderr + result.stdout)
    status = daemon.running_status()
    assert status is not None
    assert _pids(daemon) == before


def test_a_config_file_with_a_bad_hostname_fails_check_and_start(tmp_path: Path) -> None:
    config = tmp_path / "sozu.toml"
    port = free_port()
    config.write_text(
        f'command_socket = "{tmp_path / "s.sock"}"\n'
        "[[listeners]]\n"
        'protocol = "http"\n'
        f'address = "127.0.0.1:{port}"\n'
        "[clusters.web]\n"
        'protocol = "http"\n'
        f'frontends = [{{ address = "127.0.0.1:{port}", hostname = "/(/.example.com" }}]\n'
    )
    checked = sozu_cli("config", "check", "-c", str(config))
    assert checked.returncode == 1
    assert "hostname" in checked.stderr
    started = sozu_cli("start", "-c", str(config), timeout=30)
    assert started.returncode == 1
    assert "hostname" in started.stdout + started.stderr


def test_a_frame_of_exactly_the_maximum_size_changes_nothing(start_daemon: DaemonFactory) -> None:
    limit = 16384
    daemon = start_daemon(extra=f"max_command_buffer_size = {limit}")
    before = _pids(daemon)
    status = daemon.running_status()
    assert status is not None
    state_hash = status["supervisor"]["state_hash"]
    cluster: dict[str, Any] = {"cluster_id": "big", "answers": {"503": ""}}
    request = {"type": "AddCluster", "cluster": cluster}
    # Pad the answer so that the frame's payload is exactly `limit` bytes (the empty string's
    # 1-byte msgpack header becomes a 3-byte str16 header once it is this long).
    cluster["answers"]["503"] = "y" * (limit - len(_request(request, "x")) - 2)
    payload = _request(request, "x")
    assert len(payload) == limit
    answer = _call_raw(daemon, payload)
    assert answer["status"] == "failure", answer
    assert "max_command_buffer_size" in answer["message"]
    time.sleep(0.5)
    after = daemon.running_status()
    assert after is not None
    assert after["supervisor"]["state_hash"] == state_hash
    assert _pids(daemon) == before
    # A smaller change still works, and reaches every worker.
    added = daemon.sozu("cluster", "add", "-i", "small")
    assert added.returncode == 0, added.stderr
    assert daemon.running_status() is not None


def test_a_second_instance_on_the_same_address_is_refused(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    port = free_port()
    listener = f'[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:{port}"\n'
    daemon = start_daemon(extra=listener)
    directory = tmp_path / "second"
    directory.mkdir()
    config, second_socket = Daemon.write_config(directory, extra=listener)
    try:
        second = sozu_cli("start", "-c", str(config), timeout=30)
    finally:
        shutil.rmtree(second_socket.parent, ignore_errors=True)
    assert second.returncode == 1
    output = second.stdout + second.stderr
    assert "owned by another sozu instance" in output
    assert str(daemon.socket_path) in output
    # A state file that activates the address, loaded into another daemon: the listener
    # stays inactive there (counted as an error), and its workers are unharmed.
    state_file = tmp_path / "state.jsonl"
    assert daemon.sozu("state", "save", "-f", str(state_file)).returncode == 0
    other_daemon = start_daemon(name="b")
    loaded = other_daemon.sozu_json("state", "load", "-f", str(state_file))
    assert loaded["content"]["errors"] == 1, loaded
    assert "owned by another sozu instance" in loaded["message"]
    assert other_daemon.running_status() is not None
    # Live activation on an address another program holds is refused the same way.
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen(8)
    taken = f"127.0.0.1:{other.getsockname()[1]}"
    try:
        assert daemon.sozu("listener", "tcp", "add", "-a", taken).returncode == 0
        activated = daemon.sozu("listener", "tcp", "activate", "-a", taken)
        assert activated.returncode == 1
        assert "in use by another program" in activated.stderr + activated.stdout
    finally:
        other.close()


class _SlowAccepter:
    """A backend with a backlog of 1 that accepts one connection every 0.25 s."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.25)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(2)
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except OSError:
                pass
            finally:
                conn.close()
            self._stop.wait(0.25)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def slow_backend() -> Iterator[_SlowAccepter]:
    backend = _SlowAccepter()
    try:
        yield backend
    finally:
        backend.close()


def test_a_backend_that_accepts_slowly_crashes_no_worker(
    start_daemon: DaemonFactory, slow_backend: _SlowAccepter
) -> None:
    """Connects time out while others to the same backend succeed: the cluster's back-off
    bookkeeping used to raise KeyError and take the worker down with all its connections."""
    port = free_port()
    backend = f"127.0.0.1:{slow_backend.port}"
    daemon = start_daemon(
        extra=(
            "connect_timeout = 1\n"
            "[[listeners]]\n"
            'protocol = "http"\n'
            f'address = "127.0.0.1:{port}"\n'
            "[clusters.slow]\n"
            'protocol = "http"\n'
            f'frontends = [{{ address = "127.0.0.1:{port}", hostname = "slow.test" }}]\n'
            f'backends = [{{ address = "{backend}", backend_id = "b" }}]\n'
        )
    )
    before = _pids(daemon)
    command = ["curl", "-s", "-o", "/dev/null", "-m", "8", "-H", "Host: slow.test"]
    url = f"http://127.0.0.1:{port}/"
    curls = []
    for _ in range(160):  # 160 requests over 8 s
        curls.append(
            subprocess.Popen([*command, url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        time.sleep(0.05)
    for curl in curls:
        curl.wait(timeout=30)
    assert daemon.process.poll() is None
    assert _pids(daemon) == before, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()


def test_clients_resetting_while_their_backend_is_dialled_leave_no_count_behind(
    start_daemon: DaemonFactory,
) -> None:
    """A client's reset and its backend's connect completing in one batch of events, the
    client's handled first: the late connect result was counted as an open backend connection
    that never closed (LEAST_LOADED then avoided that backend for good), or, refused, raised
    in a request already let go."""
    port = free_port()
    with socket.socket() as backend, socket.socket() as closed_port:
        backend.bind(("127.0.0.1", 0))
        backend.listen(256)
        closed_port.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
        daemon = start_daemon(
            worker_count=1,
            extra=(
                "[[listeners]]\n"
                'protocol = "http"\n'
                f'address = "127.0.0.1:{port}"\n'
                "[clusters.web]\n"
                'protocol = "http"\n'
                'load_balancing = "LEAST_LOADED"\n'
                f'frontends = [{{ address = "127.0.0.1:{port}", hostname = "web.test" }}]\n'
                f'backends = [{{ address = "127.0.0.1:{backend.getsockname()[1]}",'
                ' backend_id = "up" }]\n'
                "[clusters.gone]\n"
                'protocol = "http"\n'
                f'frontends = [{{ address = "127.0.0.1:{port}", hostname = "gone.test" }}]\n'
                f'backends = [{{ address = "127.0.0.1:{closed_port.getsockname()[1]}",'
                ' backend_id = "down" }]\n'
            ),
        )
        for host in (b"web.test", b"gone.test") * 20:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            time.sleep(0.02)

        def settled() -> bool | None:
            report = daemon.sozu_json("metrics", "get")["content"]
            value = report["clusters"]["web"]["sozu_cluster_active_connections"]["value"]
            return True if value == 0 else None

        wait_for(settled, timeout=5, what="the web cluster's active connections back to 0")
    log = daemon.log()
    assert "internal error" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
