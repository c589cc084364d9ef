"""Worker processes: the worker pool, crash detection, relaunch and upgrade.

Each slot (0..worker_count-1) runs one `run_slot` task for the daemon's lifetime: launch a
worker, wait for the slot's current worker to exit, then relaunch it with the full state, with
backoff and at most `worker_max_restarts_per_minute` relaunches in any minute. An upgrade
starts a successor in the slot, makes it the slot's current worker once Ready, and retires the
old one (stop accepting, drain, exit) beside it. See LIFECYCLE.md.

`WorkerPool` builds on `WorkerLauncher` (worker_launch.py: launch into a slot, start-up
handshake), `EmptySlots` (empty_slots.py) and `WorkerRegistry` (worker_registry.py: settings,
slots, live workers); `Worker` and `Slot` are in worker_records.py.
"""

from __future__ import annotations

import contextlib
import logging
import os

import trio

from sozu.command import requests as rq
from sozu.command.channel import ConnectionLost
from sozu.command.config_schema import Config
from sozu.supervisor.worker_launch import WorkerLauncher
from sozu.supervisor.worker_records import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    EXIT_GRACE,
    RESTART_WINDOW,
    Slot,
    UpgradeError,
    Worker,
    describe_exit,
)

log = logging.getLogger("sozu.supervisor")


class WorkerPool(WorkerLauncher):
    """The worker slots over their lifetime: relaunch after a crash, resync, upgrades and stops
    (start-up is `WorkerLauncher`'s, worker_launch.py)."""

    def resync(self, worker: Worker, reason: str) -> None:
        """A worker refused an accepted change: replace it by a worker upgrade once the
        current state change is done (a successor replays the whole state, the old one
        drains), so that no connection is cut. If the successor cannot replay the state
        either, the old worker keeps serving and the failing request is reported."""
        if worker.resyncing or worker.state != "running":
            return
        worker.resyncing = True
        log.warning("resyncing %s: %s", worker.name(), reason)
        slot = self.slots[worker.slot]
        assert slot.nursery is not None
        slot.nursery.start_soon(self._resync, worker, reason)

    async def _resync(self, worker: Worker, reason: str) -> None:
        try:
            await self.upgrade_worker(worker.id)
        except UpgradeError as error:
            worker.resyncing = False
            if error.replay_failure is not None:
                worker.problem = f"a new worker could not replay {error.replay_failure}"
                self.events.publish(
                    "WORKER_REPLAY_FAILED",
                    message=f"slot {worker.slot}: {error.replay_failure}; {worker.name()} "
                    "keeps serving with a state that differs",
                )
                return
            self.replace(worker, f"{reason}; resync failed: {error}")

    def replace(self, worker: Worker, reason: str) -> None:
        """Kill a worker so that its slot relaunches it with the full state."""
        if worker.replace_reason is None:
            worker.replace_reason = reason
            log.warning("replacing %s: %s", worker.name(), reason)
        if worker.process.returncode is None:
            worker.process.kill()

    # -- upgrades

    async def upgrade_worker(self, worker_id: int, *, wait: bool = False) -> Worker:
        """Replace a running worker by a new one in its slot; returns the new worker.

        The new worker adopts the slot's listener sockets and replays the state; once it is
        Ready it becomes the slot's worker and the old one stops accepting and drains (it
        exits by itself, at most `drain_timeout` later). UpgradeError leaves the old one
        serving.
        """
        old = self.find(worker_id)
        if old is None:
            raise UpgradeError(f"no live worker with id {worker_id}")
        slot = self.slots[old.slot]
        if old is not slot.worker or old.state != "running":
            raise UpgradeError(
                f"worker {worker_id} is {old.state}, not the running worker of its slot"
            )
        if slot.upgrading:
            raise UpgradeError(f"slot {slot.index} is already being upgraded")
        if self.stopping:
            raise UpgradeError("the daemon is stopping")
        slot.upgrading = True
        try:
            try:
                new = await self._start_worker(slot, successor=True)
            except OSError as error:
                raise UpgradeError(f"cannot launch a new worker: {error}") from None
            if new.state != "running":
                failed = new.replay_failure[0] if new.replay_failure is not None else None
                raise UpgradeError(
                    f"the new worker {new.id} failed to start"
                    + (f" (replay: {failed})" if failed else "")
                    + f"; worker {old.id} keeps serving",
                    replay_failure=failed,
                )
            if old.exited.is_set() or slot.worker is not old:
                # The old worker died while its successor started: the slot relaunches as
                # after any crash, and the successor is not needed.
                new.process.kill()
                raise UpgradeError(
                    f"worker {old.id} exited during its upgrade; its slot is relaunched"
                )
            slot.worker = new
            slot.retiring.append(old)
            slot.wakeup.set()
            old.state = "draining"
            await self._retire_begin(old)
            self._orphan_adoptions(old)
            assert slot.nursery is not None
            slot.nursery.start_soon(self._retire, old)
            self.events.publish("WORKER_UPGRADED", message=f"{new.name()} replaces {old.name()}")
        finally:
            slot.upgrading = False
            slot.successor = None
        if wait:
            await old.exited.wait()
        return new

    async def _retire_begin(self, worker: Worker) -> None:
        """Make an old worker stop accepting (it keeps its sessions)."""
        with trio.move_on_after(self.config.worker_timeout):
            try:
                response = await worker.mux.call(rq.ReturnListenSockets())
            except ConnectionLost:
                return
            if response.status == "ok":
                return
        log.warning("%s did not stop accepting; killing it", worker.name())
        worker.process.kill()

    async def _retire(self, worker: Worker) -> None:
        """Drain an old worker: SoftStop, then its exit (killed past its drain time)."""
        patience = self.config.worker_timeout + self.config.drain_timeout
        with trio.move_on_after(patience):
            with contextlib.suppress(ConnectionLost):
                self._final_metrics(worker, await worker.mux.call(rq.SoftStop()))
            with trio.move_on_after(EXIT_GRACE):
                await worker.exited.wait()
        if not worker.exited.is_set() and worker.process.returncode is None:
            log.warning("%s did not finish draining; killing it", worker.name())
            worker.process.kill()
        await worker.exited.wait()
        log.info("%s retired", worker.name())

    def _backoff(self, slot: Slot) -> float | None:
        """Seconds to wait before relaunching into `slot`, or None past the restart limit."""
        now = trio.current_time()
        times = slot.restart_times
        while times and now - times[0] > RESTART_WINDOW:
            times.popleft()
        if len(times) >= self.config.worker_max_restarts_per_minute:
            return None
        times.append(now)
        return min(BACKOFF_BASE * 2.0 ** (len(times) - 1), BACKOFF_MAX)

    async def run_slot(self, index: int, started: trio.Event) -> None:
        """Keep a worker in slot `index` until the daemon stops or the restart limit is hit.

        Sets `started` once the first worker is ready or has failed to start.
        """
        slot = self.slots[index]
        try:
            async with trio.open_nursery() as nursery:
                slot.nursery = nursery
                await self._keep_slot(slot, started)
                # Old workers still draining are waited for; the daemon is stopping.
                nursery.cancel_scope.deadline = (
                    trio.current_time()
                    + EXIT_GRACE
                    + (self.config.worker_timeout + self.config.drain_timeout)
                )
        finally:
            started.set()
            # No replacement is coming: clients must not wait in a queue nobody serves.
            self.sockets.close_slot(index)

    async def _keep_slot(self, slot: Slot, started: trio.Event) -> None:
        previous: Worker | None = None
        assert slot.nursery is not None
        for old in slot.retiring:
            slot.nursery.start_soon(self._lifetime, slot, old)
            slot.nursery.start_soon(self._watch_channel, old)
            slot.nursery.start_soon(self._retire, old)
        adopted = self._adopted.pop(slot.index, None)
        revived = False
        while not self.stopping:
            try:
                if adopted is not None:
                    worker, adopted = adopted, None
                    slot.worker = worker
                    slot.nursery.start_soon(self._lifetime, slot, worker)
                    slot.nursery.start_soon(self._watch_channel, worker)
                else:
                    if self.sockets.is_empty(slot.index):
                        revived = True
                        active = self.state.active_listener_keys()
                        for problem in self.sockets.revive_slot(slot.index, active):
                            log.error("slot %d: %s", slot.index, problem)
                    worker = await self._start_worker(slot)
            except OSError as error:
                log.error("slot %d: cannot launch a worker: %s", slot.index, error)
                started.set()
                launch_delay = self._backoff(slot)
                if launch_delay is None:
                    await self._stay_empty(slot, f"cannot launch a worker: {error}")
                    continue
                await trio.sleep(launch_delay)
                continue
            started.set()
            if worker.state == "running":
                slot.refilled.set()
                if revived:
                    revived = False
                    await self._release_adopted(slot)
                if previous is not None:
                    self.events.publish(
                        "WORKER_RELAUNCHED",
                        message=f"{worker.name()} replaces worker {previous.id}",
                    )
                self._adopt_orphans()
            previous = await self._current_exit(slot)
            if self.stopping:
                return
            reason = describe_exit(previous.process.returncode or 0)
            if previous.replace_reason is not None:
                reason = f"replaced: {previous.replace_reason}"
            self.events.publish("WORKER_KILLED", message=f"{previous.name()} {reason}")
            if previous.replay_failure is not None:
                failed, failed_hash = previous.replay_failure
                self.events.publish("WORKER_REPLAY_FAILED", message=f"slot {slot.index}: {failed}")
                await self._stay_empty(
                    slot, f"replay failed: {failed}", until_state_moves_from=failed_hash
                )
                continue
            if not self.config.worker_automatic_restart:
                await self._stay_empty(slot, "worker_automatic_restart is off", retry=False)
                continue
            delay = 0.0 if previous.replace_reason is not None else self._backoff(slot)
            if delay is None:
                await self._stay_empty(
                    slot,
                    f"{len(slot.restart_times)} relaunches in the last minute already"
                    " (worker_max_restarts_per_minute)",
                )
                continue
            await trio.sleep(delay)
            slot.restarts += 1

    async def stop_all(self, hard: bool) -> tuple[int, int]:
        """Send SoftStop/HardStop to every live worker and wait for them to exit.

        Returns (stopped cleanly, errors); workers that do not answer in time are killed.
        """
        self.stopping = True
        workers = self.live_workers()
        timeout = self.config.worker_timeout
        if not hard:
            timeout += self.config.drain_timeout
        outcomes: list[bool] = []

        async def stop_one(worker: Worker) -> None:
            if worker.state == "draining":
                # An old worker of an upgrade is soft-stopping already.
                if not hard:
                    with trio.move_on_after(timeout + EXIT_GRACE):
                        await worker.exited.wait()
                clean = worker.process.returncode == 0
                if worker.process.returncode is None:
                    worker.process.kill()
                outcomes.append(clean)
                return
            answered = False
            with trio.move_on_after(timeout):
                try:
                    response = await worker.mux.call(rq.HardStop() if hard else rq.SoftStop())
                    answered = response.status == "ok"
                    self._final_metrics(worker, response)
                except ConnectionLost:
                    pass
            with trio.move_on_after(EXIT_GRACE if answered else 0):
                await worker.process.wait()
            if worker.process.returncode is None:
                worker.process.kill()
                answered = False
            outcomes.append(answered)

        async with trio.open_nursery() as nursery:
            for worker in workers:
                nursery.start_soon(stop_one, worker)
        return sum(outcomes), len(outcomes) - sum(outcomes)

    def kill_all(self) -> None:
        self.stopping = True
        for worker in self.live_workers():
            if worker.process.returncode is None:
                worker.process.kill()


def default_debug(config: Config) -> bool:
    return config.debug or os.environ.get("SOZU_DEBUG") == "1"
