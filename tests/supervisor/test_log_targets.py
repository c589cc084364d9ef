"""`log_target`: the supervisor's and the workers' logs go where the configuration says
(stdout, stderr, a file, udp://, tcp://, unix://), in the same line format; network sinks
never block and a TCP collector that comes back is reconnected to."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from support.worker_harness import worker

from sozu.command import log_targets
from sozu.command.log_targets import open_line_sink, route_logs
from sozu.supervisor.daemon_io import setup_logging as setup_supervisor_logging
from sozu.worker.main import setup_logging as setup_worker_logging


@pytest.fixture(autouse=True)
def _root_logger() -> Iterator[None]:
    """Each test gets the root logger back as it found it (pytest's handlers included)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_stdout_and_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    for target in ("stdout", "stderr"):
        sink = open_line_sink(target)
        assert sink is not None
        sink(f"to {target}")
        sink.close()
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("to stdout\n", "to stderr\n")


def test_udp_and_unix_datagrams(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5)
        sink = open_line_sink(f"udp://127.0.0.1:{udp.getsockname()[1]}")
        assert sink is not None
        sink("over udp")
        assert udp.recv(100) == b"over udp"
        sink.close()
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
        unix.bind(str(path))
        unix.settimeout(5)
        sink = open_line_sink(f"unix://{path}")
        assert sink is not None
        sink("over unix")
        assert unix.recv(100) == b"over unix"
        unix.close()
        sink("nobody listens: dropped, no error")
        sink.close()


def _read_lines(conn: socket.socket, count: int) -> list[bytes]:
    """The first `count` lines the collector receives."""
    data = b""
    while data.count(b"\n") < count:
        chunk = conn.recv(65536)
        assert chunk, "the collector's connection ended"
        data += chunk
    return data.splitlines()


def test_tcp_lines_and_reconnection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_targets, "TCP_RECONNECT_INTERVAL", 0.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.settimeout(5)
        port = server.getsockname()[1]
        sink = open_line_sink(f"tcp://127.0.0.1:{port}")
        assert sink is not None
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            sink("first")
            sink("second")
            assert _read_lines(conn, 2) == [b"first", b"second"]
        # The collector went away: lines are lost until a new connection is made.
        for index in range(20):
            sink(f"lost or late {index}")
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            sink("after the reconnection")
            data = b""
            while b"after the reconnection\n" not in data:
                chunk = conn.recv(65536)
                assert chunk, "the collector's connection ended"
                data += chunk
        sink.close()


def test_a_tcp_collector_that_is_not_there_is_refused_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert open_line_sink(f"tcp://127.0.0.1:{port}") is None
    assert "log target tcp://" in caplog.text


def test_route_logs_keeps_the_format_and_filters(tmp_path: Path) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s <%(message)s>"))
    handler.addFilter(lambda record: "secret" not in record.getMessage())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    path = tmp_path / "out.log"
    assert route_logs(f"file://{path}")
    logging.getLogger("sozu.test").warning("hello")
    logging.getLogger("sozu.test").warning("a secret")
    assert path.read_text() == "WARNING <hello>\n"
    assert not route_logs("file://relative/not/supported")
    assert path.read_text().count("\n") == 2, "the refusal is logged where logs already go"


def test_the_supervisor_logs_to_its_log_target(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.log"
    setup_supervisor_logging("info", f"file://{path}")
    logging.getLogger("sozu.supervisor").info("supervisor line")
    assert path.read_text().rstrip().endswith("INFO [main] supervisor line")


def test_a_worker_logs_to_the_target_its_server_config_names(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    setup_worker_logging(3, "INFO")

    async def run() -> None:
        async with worker(log_target=f"file://{path}"):
            logging.getLogger("sozu.worker").info("worker line")

    trio.run(run)
    assert path.read_text().rstrip().endswith("INFO [worker 3] worker line")
