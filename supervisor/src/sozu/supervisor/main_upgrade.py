"""The supervisor's in-place upgrade (`sozu upgrade`): pre-flight, quiesce, handoff, re-exec.

The supervisor re-executes itself (same pid: its workers stay its children, systemd and the
terminal see no change) with the code now on disk. Before that, a pre-flight run of that code
must succeed, otherwise nothing changes and the answer is a Failure. Everything that must
survive goes into a handoff file and inheritable file descriptors (see `handoff.py`); the new
supervisor adopts the running workers untouched, then upgrades them one at a time.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import trio

from sozu.command.config_default import runtime_dir
from sozu.supervisor.handoff import (
    HANDOFF_VERSION,
    HandedListener,
    HandedSlot,
    HandedWorker,
    Handoff,
    write_handoff,
)
from sozu.supervisor.workers import WorkerPool

log = logging.getLogger("sozu.supervisor")

PREFLIGHT_TIMEOUT = 30.0
QUIESCE_POLL = 0.01


async def preflight(config_path: Path | None, patience: float = PREFLIGHT_TIMEOUT) -> str | None:
    """Run the new code's pre-flight check; None if it passed, else what went wrong."""
    command = [sys.executable, "-m", "sozu.supervisor.preflight", str(HANDOFF_VERSION)]
    command.append(str(config_path) if config_path is not None else "")
    try:
        with trio.fail_after(patience):
            result = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
    except trio.TooSlowError:
        return f"the pre-flight check did not finish in {patience:g} s"
    except OSError as error:
        return f"cannot run the pre-flight check: {error}"
    if result.returncode == 0:
        return None
    output = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
    tail = output[-1] if output else f"exit status {result.returncode}"
    return tail


async def quiesce(pool: WorkerPool, patience: float) -> bool:
    """Wait until no request to a running worker is in flight (at most `patience`)."""
    with trio.move_on_after(patience):
        # Polled: answers complete inside each mux with no event to wait on.
        while any(w.mux.in_flight for w in pool.started_workers()):  # noqa: ASYNC110
            await trio.sleep(QUIESCE_POLL)
        return True
    return False


def build_handoff(
    pool: WorkerPool,
    *,
    boot_generation: int,
    config_path: Path | None,
    state_requests: tuple[object, ...],
    command_socket_fd: int,
    command_socket_path: str,
    command_socket_inode: int,
    metrics_socket_fd: int | None,
    command_counts: tuple[tuple[str, str, int], ...],
    retired_metrics: object,
) -> tuple[Handoff, list[int]]:
    """The handoff of a quiesced pool, and every fd that must survive the exec."""
    fds = [command_socket_fd]
    if metrics_socket_fd is not None:
        fds.append(metrics_socket_fd)
    listeners = []
    for (proxy, address), by_slot in pool.sockets.items():
        for slot, sock in sorted(by_slot.items()):
            listeners.append(HandedListener(proxy, address, slot, sock.fileno()))
            fds.append(sock.fileno())
    workers = []
    for worker in pool.live_workers():
        channel = worker.mux.connection.stream
        assert isinstance(channel, trio.SocketStream)
        channel_fd = channel.socket.fileno()
        scm_fd = worker.scm.fileno()
        fds += [channel_fd, scm_fd]
        workers.append(
            HandedWorker(
                id=worker.id,
                slot=worker.slot,
                pid=worker.pid,
                build_id=worker.build_id,
                state_hash=worker.state_hash,
                channel_fd=channel_fd,
                scm_fd=scm_fd,
                buffered=worker.mux.connection.take_buffered(),
                draining=worker.state == "draining",
            )
        )
    handoff = Handoff(
        boot_generation=boot_generation + 1,
        next_worker_id=pool.next_worker_id,
        config_path=str(config_path) if config_path is not None else None,
        log_level=pool.log_level,
        state=state_requests,  # type: ignore[arg-type]
        command_socket_fd=command_socket_fd,
        command_socket_path=command_socket_path,
        command_socket_inode=command_socket_inode,
        metrics_socket_fd=metrics_socket_fd,
        listeners=tuple(listeners),
        workers=tuple(workers),
        slots=tuple(HandedSlot(s.index, s.restarts) for s in pool.slots),
        dead_slots=tuple(sorted(pool.sockets.dead_slots)),
        command_counts=command_counts,
        retired_metrics=retired_metrics,  # type: ignore[arg-type]
        events=pool.events.kept,
        next_event_seq=pool.events.next_seq,
    )
    return handoff, fds


def exec_with_handoff(handoff: Handoff, fds: list[int]) -> None:
    """Write the handoff and re-execute this process with it; returns only on failure."""
    path = write_handoff(handoff, runtime_dir())
    for fd in fds:
        os.set_inheritable(fd, True)
    argv = [sys.executable, "-m", "sozu.cli", "start", "--handoff", str(path)]
    log.info("re-executing the supervisor (boot generation %d)", handoff.boot_generation)
    for handler in logging.getLogger().handlers:
        handler.flush()
    try:
        os.execv(sys.executable, argv)
    except OSError as error:
        log.error("re-exec failed: %s", error)
        for fd in fds:
            os.set_inheritable(fd, False)
        path.unlink(missing_ok=True)
        raise
