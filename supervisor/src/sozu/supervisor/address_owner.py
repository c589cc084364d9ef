"""One owner per listener address, although listener sockets use SO_REUSEPORT.

SO_REUSEPORT lets any process of the same user bind an address sozu already listens on, and
the kernel then splits new connections between them: a second sozu started by mistake on the
same address would silently take half the traffic. So before binding a listener address the
supervisor claims it:

1. an exclusive `flock` on `<runtime dir>/<tcp|udp>-<host>-<port>.lock` (HTTP, HTTPS and
   TCP listeners share the TCP address space), taken without waiting: held means another
   sozu instance (or this instance's own workers left behind by a supervisor that died)
   owns the address; the file names its owner;
2. a probe bind of the address with SO_REUSEADDR but without SO_REUSEPORT (a connection in
   TIME_WAIT is no owner): any socket bound there, by sozu or any other program, refuses it.

The supervisor holds the lock until the listener is removed (and re-takes it, without the
probe, after an in-place upgrade: the sockets bound there are its own). The runtime
directory is `$SOZU_RUNTIME_DIR`, else `/run/sozu` for root, else `/tmp/sozu-<uid>`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from sozu.command.addresses import to_sockaddr
from sozu.command.types import ListenerType

ListenerKey = tuple[ListenerType, str]


class AddressOwned(OSError):
    """The address belongs to another sozu instance or another program."""


def runtime_dir() -> Path:
    configured = os.environ.get("SOZU_RUNTIME_DIR")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/run/sozu")
    return Path(f"/tmp/sozu-{os.geteuid()}")


def lock_path(proxy: ListenerType, address: str, directory: Path | None = None) -> Path:
    host, port = to_sockaddr(address)
    space = "udp" if proxy == "UDP" else "tcp"
    safe_host = host.replace(":", "_")
    return (directory or runtime_dir()) / f"{space}-{safe_host}-{port}.lock"


def probe_bind(proxy: ListenerType, address: str) -> None:
    """Bind the address the way nobody sharing it could: OSError (EADDRINUSE) if anything,
    sozu or not, has a socket bound there."""
    host, port = to_sockaddr(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if proxy == "UDP" else socket.SOCK_STREAM
    with socket.socket(family, kind | socket.SOCK_CLOEXEC) as probe:
        if kind == socket.SOCK_STREAM:
            # TIME_WAIT is no owner; UDP has none, and SO_REUSEADDR would let a UDP bind share.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((host, port))


class AddressClaims:
    """The listener addresses this instance owns, each with its open lock file."""

    def __init__(self, instance: str, directory: Path | None = None) -> None:
        self.instance = instance
        self.directory = directory
        self._held: dict[tuple[str, str], int] = {}

    def _key(self, proxy: ListenerType, address: str) -> tuple[str, str]:
        return ("udp" if proxy == "UDP" else "tcp", address)

    def __contains__(self, key: ListenerKey) -> bool:
        return self._key(*key) in self._held

    def claim(self, proxy: ListenerType, address: str, *, probe: bool = True) -> None:
        """Own `address` for this instance; AddressOwned (nothing held) if another does.

        `probe` is off when this instance already has sockets bound there (an adopted
        handoff), which the probe would take for another owner.
        """
        key = self._key(proxy, address)
        if key in self._held:
            return
        path = lock_path(proxy, address, self.directory)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AddressOwned(
                    errno.EADDRINUSE,
                    f"{address} is owned by another sozu instance ({_describe_owner(path)})",
                ) from None
            if probe:
                try:
                    probe_bind(proxy, address)
                except OSError as error:
                    if error.errno != errno.EADDRINUSE:
                        raise
                    raise AddressOwned(
                        errno.EADDRINUSE,
                        f"{address} is already in use by another program (or a sozu instance "
                        f"that does not use {path.parent}): {error.strerror}",
                    ) from None
            owner = {"pid": os.getpid(), "instance": self.instance, "since": int(time.time())}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(owner).encode() + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
        self._held[key] = fd

    def release(self, proxy: ListenerType, address: str) -> None:
        fd = self._held.pop(self._key(proxy, address), None)
        if fd is not None:
            os.close(fd)

    def release_all(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()


def _describe_owner(path: Path) -> str:
    try:
        owner = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return f"lock {path}"
    return f"pid {owner.get('pid')}, command socket {owner.get('instance')}, lock {path}"
