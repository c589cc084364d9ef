"""A small UDP backend and client for end-to-end tests (a thread, loopback, bounded).

A `NamedUdpEcho` answers every datagram with `<name>:<payload>`, so a test can tell which
backend served a query. It also listens on TCP on the same port number (accepting and closing),
so the TCP companion health probe sees it alive until `close()`.
"""

from __future__ import annotations

import contextlib
import socket
import threading

IO_TIMEOUT = 5.0


class NamedUdpEcho:
    """A threaded UDP responder on 127.0.0.1, with a TCP listener on the same port."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.datagrams = 0
        self._lock = threading.Lock()
        for _ in range(20):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            tcp = socket.socket()
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        tcp.listen(16)
        self._udp, self._tcp = udp, tcp
        self.port = port
        self.address = f"127.0.0.1:{port}"
        threading.Thread(target=self._answer, daemon=True).start()
        threading.Thread(target=self._accept, daemon=True).start()

    def _answer(self) -> None:
        while True:
            try:
                payload, peer = self._udp.recvfrom(65535)
                if peer is None:  # shut down by close()
                    return
                with self._lock:
                    self.datagrams += 1
                self._udp.sendto(self.name.encode() + b":" + payload, peer)
            except OSError:
                return

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._tcp.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        for sock in (self._udp, self._tcp):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def client() -> socket.socket:
    """A UDP client socket on loopback, with a receive timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(IO_TIMEOUT)
    return sock


def query(sock: socket.socket, port: int, payload: bytes) -> str:
    """Send `payload` to the proxy on `port`; the name of the backend that answered."""
    sock.sendto(payload, ("127.0.0.1", port))
    answer, _ = sock.recvfrom(65535)
    name, _, echoed = answer.partition(b":")
    if echoed != payload:
        raise AssertionError(f"{payload!r} came back as {answer!r}")
    return name.decode()
