"""Daemon plumbing: logging to `log_target`, sd_notify, the pid file and the metrics socket."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

from sozu.command.addresses import parse_address, to_sockaddr
from sozu.command.log_targets import route_logs


class StartupError(Exception):
    """The supervisor cannot start; the message says why."""


def setup_logging(level: str = "INFO", target: str = "stderr") -> None:
    """One line per record to `target` (`log_target`, checked by the configuration loader);
    journald adds its own timestamps. A target that cannot be opened leaves the logs on
    stderr, with a warning."""
    timestamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{timestamp}%(levelname)s [main] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    try:
        root.setLevel(level.upper())
    except ValueError:
        root.setLevel(logging.INFO)
    if target != "stderr":
        route_logs(target)


def sd_notify(message: str) -> None:
    """Send a datagram to $NOTIFY_SOCKET if set (a leading @ means abstract); never raises."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        logging.getLogger("sozu.supervisor").warning("sd_notify %r failed: %s", message, error)


def bind_metrics_socket(address: str) -> socket.socket:
    """The listening TCP socket of the Prometheus endpoint at `ip:port`."""
    parsed_ip, _port = parse_address(address)
    family = socket.AF_INET6 if parsed_ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(to_sockaddr(address))
        sock.listen(64)
    except OSError as error:
        sock.close()
        raise StartupError(
            f"cannot listen on the metrics address {address}: {error.strerror}"
        ) from None
    return sock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_pid_file(path: Path) -> None:
    """Write our pid atomically; refuse if the file names another live process."""
    try:
        existing = int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        existing = 0
    if existing and existing != os.getpid() and _pid_alive(existing):
        raise StartupError(f"pid file {path} names a running process ({existing})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_pid_file(path: Path) -> None:
    """Unlink the pid file only if it still holds our pid."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()
