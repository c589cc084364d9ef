"""Loopback helpers shared by the e2e tests: a free port, a Prometheus scrape."""

from __future__ import annotations

import random
import re
import socket
from typing import Final


def _ephemeral_start() -> int:
    """The first port the kernel hands to outgoing connections and unbound sockets."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports are handed out below the kernel's ephemeral range, in turn from a random start: a
# client connection or an upstream socket of another test cannot take one between the probe
# and the daemon's bind (as an ephemeral port from the kernel could), and no port is handed
# out twice in one run.
_FIRST: Final = 10000
_LAST: Final = max(_FIRST + 1000, _ephemeral_start()) - 1
_next = _FIRST + random.randrange(_LAST - _FIRST + 1)


def free_port() -> int:
    """A loopback port nothing uses, for TCP nor for UDP (bound with both, then released),
    below the kernel's ephemeral range."""
    global _next
    while True:
        port = _next
        _next = _FIRST if port >= _LAST else port + 1
        with socket.socket() as stream, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
            try:
                stream.bind(("127.0.0.1", port))
                dgram.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def scrape(port: int) -> str:
    """The raw HTTP answer of the Prometheus endpoint on `port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()


Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def prometheus_series(port: int) -> Series:
    """Every sample of the Prometheus endpoint on `port`, by (name, labels)."""
    series: Series = {}
    _, _, body = scrape(port).partition("\r\n\r\n")
    for line in body.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if match is None:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        series[(match.group(1), labels)] = float(match.group(3))
    return series
