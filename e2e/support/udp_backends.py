"""A small UDP backend and client for end-to-end tests (a thread, loopback, bounded).

A `NamedUdpEcho` answers every datagram with `<name>:<payload>`, so a test can tell which
backend served a query. It also listens on TCP on the same port number (accepting and closing),
so the TCP companion health probe sees it alive until `close()`. With `proxy_v2=True` it also
strips and records a leading PROXY protocol v2 header (parsed strictly: a datagram that starts
like one but is not a valid DGRAM header is recorded as an error and not answered).
`prometheus_series(port)` reads the Prometheus endpoint into `{(name, labels): value}`.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from e2e.support.net import prometheus_series
from sozu.worker.core.proxy_protocol import SIGNATURE, ProxyHeader, ProxyProtocolError, parse_v2

IO_TIMEOUT = 5.0
# Byte 13 of a PROXY v2 header: address family (high nibble) and transport (low nibble).
DGRAM_FAMILIES = (0x12, 0x22, 0x00)


class Received:
    """One datagram as a backend saw it: its PROXY header (if any) and the payload after it."""

    __slots__ = ("header", "payload", "peer")

    def __init__(self, header: ProxyHeader | None, payload: bytes, peer: tuple[str, int]) -> None:
        self.header = header
        self.payload = payload
        self.peer = peer


# A datagram `burst:N:...` is answered N times (`name:burst:N:...#0` to `#N-1`).
BURST = b"burst:"


class NamedUdpEcho:
    """A threaded UDP responder on 127.0.0.1, with a TCP listener on the same port."""

    def __init__(self, name: str, *, proxy_v2: bool = False, host: str = "127.0.0.1") -> None:
        self.name = name
        self.datagrams = 0
        self.proxy_v2 = proxy_v2
        self.received: list[Received] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        family = _family(host)
        for _ in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            tcp = socket.socket(family)
            try:
                tcp.bind((host, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        tcp.listen(16)
        self._udp, self._tcp = udp, tcp
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        threading.Thread(target=self._answer, daemon=True).start()
        threading.Thread(target=self._accept, daemon=True).start()

    def _answer(self) -> None:
        while True:
            try:
                payload, peer = self._udp.recvfrom(65535)
                if peer is None:  # shut down by close()
                    return
                header = None
                if self.proxy_v2 and payload.startswith(SIGNATURE[:1]):
                    try:
                        header = _strict_dgram_header(payload)
                    except ProxyProtocolError as error:
                        with self._lock:
                            self.errors.append(f"{error}: {payload!r}")
                        continue
                    payload = payload[header.length :]
                with self._lock:
                    self.datagrams += 1
                    self.received.append(Received(header, payload, (peer[0], peer[1])))
                answer = self.name.encode() + b":" + payload
                if payload.startswith(BURST):
                    # Several replies to one datagram, sent back to back.
                    for index in range(int(payload[len(BURST) :].split(b":")[0])):
                        self._udp.sendto(answer + b"#%d" % index, peer)
                    continue
                self._udp.sendto(answer, peer)
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

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)


def _strict_dgram_header(payload: bytes) -> ProxyHeader:
    """The whole PROXY v2 header at the start of `payload`: a complete PROXY command over a
    datagram transport, or ProxyProtocolError."""
    header = parse_v2(payload)
    if header is None:
        raise ProxyProtocolError("truncated PROXY v2 header")
    if header.command != "PROXY" or payload[13] not in DGRAM_FAMILIES:
        raise ProxyProtocolError(f"not a PROXY/DGRAM header (0x{payload[12]:02x}{payload[13]:02x})")
    return header


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def client(host: str = "127.0.0.1") -> socket.socket:
    """A UDP client socket on loopback (bound to `host`: IPv4 or ::1), with a receive timeout."""
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(IO_TIMEOUT)
    return sock


def query(sock: socket.socket, port: int, payload: bytes) -> str:
    """Send `payload` to the proxy on `port` (127.0.0.1, or ::1 for an IPv6 socket); the name
    of the backend that answered."""
    sock.sendto(payload, ("::1" if sock.family == socket.AF_INET6 else "127.0.0.1", port))
    answer, _ = sock.recvfrom(65535)
    name, _, echoed = answer.partition(b":")
    if echoed != payload:
        raise AssertionError(f"{payload!r} came back as {answer!r}")
    return name.decode()


def listener_value(port: int, name: str, listener: str, **labels: str) -> float:
    """One listener-scoped series (0 when absent)."""
    key = frozenset({("listener", listener), *labels.items()})
    return prometheus_series(port).get((name, key), 0.0)
