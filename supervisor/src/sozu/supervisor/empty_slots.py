"""Empty slots: a slot with no worker and none coming waits until it may be relaunched,
while a running worker of another slot accepts on its listener sockets (or they are
closed); its own worker back, that worker stops accepting on them. See LIFECYCLE.md."""

from __future__ import annotations

import contextlib
import logging
import math

import trio

from sozu.command import requests as rq
from sozu.command.channel import ConnectionLost
from sozu.command.fdpass import send_listeners
from sozu.supervisor.worker_records import RESTART_WINDOW, STATE_POLL, Slot, Worker
from sozu.supervisor.worker_registry import WorkerRegistry

log = logging.getLogger("sozu.supervisor")


class EmptySlots(WorkerRegistry):
    """The worker pool's empty slots and the adoption of their listener sockets."""

    async def _stay_empty(
        self,
        slot: Slot,
        reason: str,
        *,
        retry: bool = True,
        until_state_moves_from: str | None = None,
    ) -> None:
        """Keep `slot` empty until it may be relaunched: the restart window has passed (when
        `retry`), the state has moved on (after a replay failure), or a refill was asked
        (LaunchWorker, a supervisor upgrade). Meanwhile a running worker of another slot
        accepts on its sockets; with none, they are closed."""
        slot.empty_reason = reason
        slot.refill = trio.Event()
        self.sockets.mark_empty(slot.index)
        log.error("slot %d stays empty: %s", slot.index, reason)
        self.events.publish("WORKER_SLOT_EMPTY", message=f"slot {slot.index}: {reason}")
        await self._adopt(slot)
        deadline = math.inf
        if until_state_moves_from is None and retry and slot.restart_times:
            deadline = slot.restart_times[0] + RESTART_WINDOW
        with trio.move_on_at(deadline):
            while not slot.refill.is_set():
                with trio.move_on_after(STATE_POLL):
                    await slot.refill.wait()
                if self.stopping:
                    break
                if (
                    until_state_moves_from is not None
                    and self.state.hash() != until_state_moves_from
                ):
                    break
        slot.empty_reason = None
        if not self.stopping:
            log.info("slot %d: launching a worker again", slot.index)

    async def _adopt(self, slot: Slot) -> None:
        """Hand an empty slot's sockets to a running worker of another slot (the one adopting
        the fewest), or close them when there is none."""
        slot.adopter = None
        if not self.sockets.for_slot(slot.index):
            return
        candidates = [w for w in self.running_workers() if w.slot != slot.index]
        candidates.sort(key=lambda w: sum(s.adopter is w for s in self.slots))
        for worker in candidates:
            sockets = self.sockets.for_slot(slot.index, foreign=True)
            try:
                with trio.fail_after(self.config.worker_timeout):
                    async with worker.scm_lock:
                        await send_listeners(worker.scm, sockets)
                    response = await worker.mux.call(
                        rq.AdoptListeners(slot=slot.index, count=len(sockets))
                    )
            except (OSError, trio.TooSlowError, ConnectionLost) as error:
                log.warning("%s cannot adopt slot %d: %s", worker.name(), slot.index, error)
                continue
            if response.status == "ok":
                slot.adopter = worker
                log.info("%s accepts on the sockets of empty slot %d", worker.name(), slot.index)
                return
            log.warning("%s refused slot %d: %s", worker.name(), slot.index, response.message)
        log.warning("slot %d: no worker to adopt its sockets; closing them", slot.index)
        self.sockets.close_slot(slot.index)

    def _orphan_adoptions(self, worker: Worker) -> None:
        """`worker` no longer accepts (exited, retired): its adopted slots need another."""
        for slot in self.slots:
            if slot.adopter is worker:
                slot.adopter = None
        self._adopt_orphans()

    def _adopt_orphans(self) -> None:
        for slot in self.slots:
            if (
                slot.empty_reason is not None
                and slot.adopter is None
                and slot.nursery is not None
                and not self.stopping
                and self.sockets.for_slot(slot.index)
            ):
                slot.nursery.start_soon(self._adopt, slot)

    async def _release_adopted(self, slot: Slot) -> None:
        """The slot's own worker is back: whoever accepted on its sockets stops (every
        running worker is told: after a supervisor upgrade the adopter is not known)."""
        slot.adopter = None
        for worker in self.running_workers():
            if worker.slot == slot.index:
                continue
            with (
                trio.move_on_after(self.config.worker_timeout),
                contextlib.suppress(ConnectionLost),
            ):
                await worker.mux.call(rq.ReleaseListeners(slot=slot.index))

    def refill(self, index: int | None) -> list[int]:
        """Ask empty slots (`index`, or all) to launch a worker now; the slots asked."""
        asked = []
        for slot in self.slots:
            if (index is None or slot.index == index) and slot.empty_reason is not None:
                slot.refilled = trio.Event()
                slot.refill.set()
                asked.append(slot.index)
        return asked
