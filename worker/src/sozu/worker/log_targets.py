"""Where access logs go: `stdout`, `stderr`, a file (`file:///path` or `/path`), or a UDP
syslog-style collector (`udp://host:port`, one datagram per line, dropped when it would block).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Callable

from sozu.command.addresses import to_sockaddr

log = logging.getLogger("sozu.worker")

LineSink = Callable[[str], None]


def open_line_sink(target: str) -> LineSink | None:
    """A function writing one line to `target`; None (with a warning) when it cannot be used."""
    if target in ("stdout", "stderr"):
        stream = sys.stdout if target == "stdout" else sys.stderr

        def write_stream(line: str) -> None:
            stream.write(line + "\n")
            stream.flush()

        return write_stream
    if target.startswith("udp://"):
        try:
            address = to_sockaddr(target[len("udp://") :])
        except ValueError as error:
            log.warning("access log target %s: %s", target, error)
            return None
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)

        def write_datagram(line: str) -> None:
            # A collector that is away or slow loses lines, never the proxy.
            with contextlib.suppress(OSError):
                sock.sendto(line.encode(), address)

        return write_datagram
    path = target[len("file://") :] if target.startswith("file://") else target
    if not path.startswith("/"):
        log.warning("access log target %r is not supported (stdout, stderr, file, udp)", target)
        return None
    try:
        handle = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (kept open)
    except OSError as error:
        log.warning("access log target %s: %s", target, error)
        return None

    def write_file(line: str) -> None:
        handle.write(line + "\n")

    return write_file
