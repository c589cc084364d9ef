"""What a supervisor hands to the code that replaces it in place (`sozu upgrade`).

The handoff file (msgpack, 0600, removed by the new supervisor once read) carries the state
as the requests that rebuild it, the counters that must not go back (boot generation, worker
ids, restarts, command counts, metrics totals of exited workers) and the numbers of the file
descriptors that survive the exec: the command socket, the Prometheus socket, every listener
socket per slot, and each worker's two channel sockets with the bytes already read from its
stream but not yet framed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import msgspec

from sozu.command.metrics import MetricsSnapshot
from sozu.command.requests import AnyRequest
from sozu.command.responses import Event
from sozu.command.types import ListenerType

HANDOFF_VERSION = 1


class HandedListener(msgspec.Struct, frozen=True):
    proxy: ListenerType
    address: str
    slot: int
    fd: int


class HandedWorker(msgspec.Struct, frozen=True):
    id: int
    slot: int
    pid: int
    build_id: str
    state_hash: str
    channel_fd: int
    scm_fd: int
    buffered: bytes = b""
    draining: bool = False


class HandedSlot(msgspec.Struct, frozen=True):
    index: int
    restarts: int


class Handoff(msgspec.Struct, frozen=True, kw_only=True):
    version: int = HANDOFF_VERSION
    boot_generation: int
    next_worker_id: int
    config_path: str | None
    log_level: str
    state: tuple[AnyRequest, ...]
    command_socket_fd: int
    command_socket_path: str
    command_socket_inode: int
    metrics_socket_fd: int | None
    listeners: tuple[HandedListener, ...]
    workers: tuple[HandedWorker, ...]
    slots: tuple[HandedSlot, ...]
    dead_slots: tuple[int, ...] = ()
    command_counts: tuple[tuple[str, str, int], ...] = ()
    retired_metrics: MetricsSnapshot = MetricsSnapshot()
    # Upgrade every worker, one at a time, once the new supervisor runs.
    upgrade_workers: bool = True
    # The last events and the next event number, so that followers resume without a gap.
    events: tuple[Event, ...] = ()
    next_event_seq: int = 1


def write_handoff(handoff: Handoff, directory: Path) -> Path:
    """Write the handoff atomically into `directory` (mode 0600); its path."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="sozu-handoff-", suffix=".msgpack", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(msgspec.msgpack.encode(handoff))
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def read_handoff(path: Path) -> Handoff:
    """Read and remove a handoff file; ValueError if it is not one this code understands."""
    data = path.read_bytes()
    path.unlink()
    try:
        handoff = msgspec.msgpack.decode(data, type=Handoff)
    except (msgspec.DecodeError, ValueError, RecursionError) as error:
        raise ValueError(f"handoff file {path}: {error}") from None
    if handoff.version != HANDOFF_VERSION:
        raise ValueError(f"handoff file {path}: version {handoff.version} is not supported")
    return handoff
