"""Loopback helpers shared by the e2e tests: a free port, a Prometheus scrape."""

from __future__ import annotations

import re
import socket


def free_port() -> int:
    """A loopback port nothing uses, for TCP nor for UDP (bound with both, then released):
    callers take it for either, and a port free for TCP may be a UDP socket's."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagrams:
                try:
                    datagrams.bind(("127.0.0.1", port))
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
