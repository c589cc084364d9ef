"""Small TCP backends and clients for end-to-end tests (threads, loopback, bounded).

A `NamedEcho` server greets each connection with its name and a newline, then echoes every
byte back, so a test can tell which backend served a connection and check bytes end to end.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from e2e.support.closing import ClosesOnExit

IO_TIMEOUT = 10.0


class NamedEcho(ClosesOnExit):
    """A threaded echo server on 127.0.0.1 that says its name first; counts connections."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(IO_TIMEOUT)
            conn.sendall(self.name.encode() + b"\n")
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

    def close(self) -> None:
        self._sock.close()


def _read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"connection closed after {line!r}")
        line += chunk
    return line


def exchange(port: int, payload: bytes = b"ping", *, timeout: float = IO_TIMEOUT) -> str:
    """Connect to the proxy, send `payload`, half-close; check the echo; the backend's name."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sender = threading.Thread(target=_send_and_shut, args=(sock, payload), daemon=True)
        sender.start()
        name = _read_line(sock).decode().strip()
        received = bytearray()
        while chunk := sock.recv(1 << 20):
            received += chunk
        sender.join(timeout)
    if bytes(received) != payload:
        raise AssertionError(f"echo of {len(payload)} bytes came back as {len(received)} bytes")
    return name


def _send_and_shut(sock: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
