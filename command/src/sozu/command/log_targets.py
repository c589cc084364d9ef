"""Where log lines go: access logs (`access_logs_target`) and the processes' own logs
(`log_target`).

A target is `stdout`, `stderr`, a file (`file:///path`, or a bare absolute path for access
logs), a UDP collector (`udp://ip:port`, one datagram per line), a TCP collector
(`tcp://ip:port`, newline-separated lines on one connection) or a unix datagram socket
(`unix:///path`, one datagram per line). Network sinks never block the proxy: a datagram that
cannot be sent and lines a TCP collector is too slow to take are lost, and a TCP collector that
went away is reconnected to at most once a second. `route_logs` points the root logger of the
process at a target, keeping its format.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import time
from collections.abc import Callable

from sozu.command.addresses import to_sockaddr

log = logging.getLogger("sozu.worker")

LineSink = Callable[[str], None]

TCP_CONNECT_TIMEOUT = 1.0
TCP_RECONNECT_INTERVAL = 1.0
TCP_MAX_PENDING = 1 << 20


class Sink:
    """Writes one line to a target (call it); `close` releases the file or socket."""

    def __call__(self, line: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def open_line_sink(target: str) -> Sink | None:
    """A sink writing one line to `target`; None (with a warning) when it cannot be used."""
    if target in ("stdout", "stderr"):
        return _StreamSink(target)
    for scheme in ("udp://", "tcp://"):
        if target.startswith(scheme):
            try:
                address = to_sockaddr(target[len(scheme) :])
            except ValueError as error:
                log.warning("log target %s: %s", target, error)
                return None
            if scheme == "udp://":
                return _DatagramSink(_family(address), address)
            return _TcpSink.connect(address, target)
    if target.startswith("unix://"):
        path = target[len("unix://") :]
        if not path:
            log.warning("log target %r: no socket path", target)
            return None
        return _DatagramSink(socket.AF_UNIX, path)
    path = target[len("file://") :] if target.startswith("file://") else target
    if not path.startswith("/"):
        log.warning("log target %r is not supported (stdout, stderr, file, udp, tcp, unix)", target)
        return None
    try:
        return _FileSink(path)
    except OSError as error:
        log.warning("log target %s: %s", target, error)
        return None


def _family(address: tuple[str, int]) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


class _StreamSink(Sink):
    """stdout or stderr, looked up at each line (tests and daemons may replace them)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, line: str) -> None:
        stream = sys.stdout if self.name == "stdout" else sys.stderr
        stream.write(line + "\n")
        stream.flush()


class _FileSink(Sink):
    def __init__(self, path: str) -> None:
        self.handle = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (kept open)

    def __call__(self, line: str) -> None:
        self.handle.write(line + "\n")

    def close(self) -> None:
        self.handle.close()


class _DatagramSink(Sink):
    """One datagram per line (UDP or unix); a collector that is away or slow loses lines,
    never the proxy."""

    def __init__(self, family: socket.AddressFamily, address: tuple[str, int] | str) -> None:
        self.address = address
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def __call__(self, line: str) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(line.encode(), self.address)

    def close(self) -> None:
        self.sock.close()


class _TcpSink(Sink):
    """Lines on one TCP connection, written without blocking."""

    def __init__(self, address: tuple[str, int], sock: socket.socket) -> None:
        self.address = address
        self.sock: socket.socket | None = sock
        self.pending = bytearray()
        self.last_attempt = 0.0

    @classmethod
    def connect(cls, address: tuple[str, int], target: str) -> _TcpSink | None:
        """The sink, once a first connection succeeded; None (with a warning) if it fails."""
        sock = socket.socket(_family(address), socket.SOCK_STREAM)
        sock.settimeout(TCP_CONNECT_TIMEOUT)
        try:
            sock.connect(address)
        except OSError as error:
            sock.close()
            log.warning("log target %s: %s", target, error)
            return None
        sock.setblocking(False)
        return cls(address, sock)

    def _reconnect(self) -> None:
        now = time.monotonic()
        if now - self.last_attempt < TCP_RECONNECT_INTERVAL:
            return
        self.last_attempt = now
        sock = socket.socket(_family(self.address), socket.SOCK_STREAM)
        sock.setblocking(False)
        # In progress: sends fail with BlockingIOError until it completes.
        sock.connect_ex(self.address)
        self.sock = sock

    def __call__(self, line: str) -> None:
        data = line.encode() + b"\n"
        if len(self.pending) + len(data) > TCP_MAX_PENDING:
            return
        self.pending += data
        if self.sock is None:
            self._reconnect()
        sock = self.sock
        if sock is None:
            return
        try:
            sent = sock.send(self.pending)
        except BlockingIOError:
            return
        except OSError:
            sock.close()
            self.sock = None
            return
        del self.pending[:sent]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class LineSinkHandler(logging.Handler):
    """A logging handler writing each formatted record as one line to a `Sink`."""

    def __init__(self, sink: Sink, target: str) -> None:
        super().__init__()
        self.sink = sink
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink(self.format(record))
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sink.close()
        super().close()


def route_logs(target: str) -> bool:
    """Send the process's logs to `target`, with the format and filters of the current
    handler; False (logged, nothing changed) when the target cannot be opened."""
    root = logging.getLogger()
    current = root.handlers[0] if root.handlers else None
    if isinstance(current, LineSinkHandler) and current.target == target:
        return True
    sink = open_line_sink(target)
    if sink is None:
        return False
    handler = LineSinkHandler(sink, target)
    if current is not None:
        handler.setFormatter(current.formatter)
        for log_filter in current.filters:
            handler.addFilter(log_filter)
    root.handlers[:] = [handler]
    if isinstance(current, LineSinkHandler):
        current.close()
    return True
