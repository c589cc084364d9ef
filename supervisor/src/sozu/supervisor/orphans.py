"""Workers left behind by a supervisor of this instance that died: taken over at start.

Before it binds anything, a starting supervisor connects to every worker waiting at its
instance's takeover directory (`sozu.command.takeover`) and takes their channels and
listener sockets: those sockets become its own (nothing queued in a backlog is reset, the
SO_REUSEPORT groups do not change), the workers are adopted as after an in-place upgrade and
then upgraded one at a time onto the state the new supervisor starts with. So a `kill -9`
of the supervisor followed by a restart (systemd's `Restart=always`) refuses no connection.

Per slot, the worker with the highest id is adopted as the slot's worker; any other (an
upgrade's old worker) is adopted as draining. Sockets come labelled with their slot; the
first one of each (listener, slot) is kept, duplicates (fds of the same socket held by two
workers) are closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from sozu.command.takeover import TakenWorker, TakeoverError, take_over, takeover_dir
from sozu.supervisor.handoff import HandedListener, HandedWorker

log = logging.getLogger("sozu.supervisor")

TAKEOVER_PATIENCE = 5.0


@dataclass
class Orphans:
    """What was taken over: workers and listener sockets, as a handoff would carry them."""

    workers: list[HandedWorker] = field(default_factory=list)
    listeners: list[HandedListener] = field(default_factory=list)
    next_worker_id: int = 0

    def __bool__(self) -> bool:
        return bool(self.workers)


def take_over_orphans(command_socket: str | Path, worker_count: int) -> Orphans:
    """Take over every worker waiting in this instance's takeover directory."""
    directory = takeover_dir(command_socket)
    orphans = Orphans()
    if not directory.is_dir():
        return orphans
    taken: list[TakenWorker] = []
    for entry in sorted(directory.iterdir()):
        try:
            taken.append(take_over(entry, TAKEOVER_PATIENCE))
        except TakeoverError as error:
            log.warning("cannot take over the worker at %s: %s", entry, error)
            with contextlib.suppress(OSError):
                entry.unlink()  # nobody listens there any more
    current: dict[int, int] = {}
    for worker in taken:
        offer = worker.offer
        if offer.slot < worker_count and offer.worker_id > current.get(offer.slot, -1):
            current[offer.slot] = offer.worker_id
    seen: set[tuple[str, str, int]] = set()
    for worker in sorted(taken, key=lambda w: w.offer.worker_id):
        offer = worker.offer
        draining = current.get(offer.slot) != offer.worker_id
        orphans.workers.append(
            HandedWorker(
                id=offer.worker_id,
                slot=offer.slot,
                pid=offer.pid,
                build_id=offer.build_id,
                state_hash=offer.state_hash,
                channel_fd=worker.channel_fd,
                scm_fd=worker.scm_fd,
                draining=draining,
            )
        )
        orphans.next_worker_id = max(orphans.next_worker_id, offer.worker_id + 1)
        for received in worker.listeners:
            passed = received.listener
            slot = offer.slot if passed.slot is None else passed.slot
            key = (passed.proxy, passed.address, slot)
            if key in seen or slot >= worker_count:
                received.sock.close()
                continue
            seen.add(key)
            fd = received.sock.detach()
            os.set_inheritable(fd, False)
            orphans.listeners.append(HandedListener(passed.proxy, passed.address, slot, fd))
        log.warning(
            "took over worker %d (pid %d, slot %d%s) of a supervisor that died",
            offer.worker_id,
            offer.pid,
            offer.slot,
            ", draining" if draining else "",
        )
    return orphans
