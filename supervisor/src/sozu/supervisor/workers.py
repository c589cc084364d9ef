"""Worker processes: launch into a slot, start-up handshake, crash detection, relaunch and
upgrade.

Each slot (0..worker_count-1) runs one `run_slot` task for the daemon's lifetime: launch a
worker, wait for the slot's current worker to exit, then relaunch it with the full state, with
backoff and at most `worker_max_restarts_per_minute` relaunches in any minute. An upgrade
starts a successor in the slot, makes it the slot's current worker once Ready, and retires the
old one (stop accepting, drain, exit) beside it. See LIFECYCLE.md.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from sozu.command import requests as rq
from sozu.command.channel import ConnectionLost, FramedConnection, RequestMux
from sozu.command.config_schema import Config
from sozu.command.envelope import PROTOCOL_VERSION, ProtocolError, Response
from sozu.command.fdpass import send_listeners
from sozu.command.metrics import MetricsSnapshot
from sozu.command.requests import Request, request_kind
from sozu.command.responses import (
    Event,
    MetricsReport,
    WorkerHello,
    WorkerInfo,
    WorkerInfos,
    WorkerRunState,
)
from sozu.command.state import ConfigState
from sozu.command.state_replay import describe_request, generate_activate_requests
from sozu.command.takeover import takeover_path
from sozu.supervisor.address_owner import AddressClaims
from sozu.supervisor.adopted_process import AdoptedProcess
from sozu.supervisor.events import EventHub
from sozu.supervisor.handoff import HandedListener, HandedWorker, Handoff
from sozu.supervisor.listener_sockets import ListenerKey, ListenerSockets

log = logging.getLogger("sozu.supervisor")

RESTART_WINDOW = 60.0
# How often an empty slot that failed its replay checks whether the state has moved on.
STATE_POLL = 1.0
BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0
# How long a worker whose channel closed may take to exit before it is killed.
EXIT_GRACE = 1.0
HELLO_TIMEOUT = 10.0


# Worker channel frames may exceed a client's limit by this much: answers such as metrics
# snapshots, and requests the state generates on replay. The state itself refuses requests
# over `max_command_buffer_size` (see ConfigState.max_request_size).
WORKER_CHANNEL_MARGIN = 1 << 20


def worker_frame_limit(config: Config) -> int:
    """The frame limit of the supervisor-to-worker channel, on both of its ends."""
    return config.max_command_buffer_size + WORKER_CHANNEL_MARGIN


class WorkerStartError(Exception):
    """A worker that did not complete its start-up handshake."""


@dataclass(eq=False)
class Worker:
    """One live worker process as the supervisor sees it."""

    id: int
    slot: int
    process: trio.Process | AdoptedProcess
    mux: RequestMux
    scm: trio.socket.SocketType
    state: WorkerRunState = "starting"
    build_id: str = ""
    state_hash: str = ""
    replace_reason: str | None = None
    # The replayed request this worker refused or died on, and the state hash then.
    replay_failure: tuple[str, str] | None = None
    # A resync (replacement by a worker upgrade) is under way.
    resyncing: bool = False
    # Why this worker's state differs from the supervisor's, when known (`sozu status`).
    problem: str | None = None
    # One batch of fds at a time on the SCM socket (its messages must not interleave).
    scm_lock: trio.Lock = field(default_factory=trio.Lock)
    # Set once the process has exited and the supervisor has let go of it.
    exited: trio.Event = field(default_factory=trio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    def name(self) -> str:
        return f"worker {self.id} (pid {self.pid}, slot {self.slot})"


@dataclass(eq=False)
class Slot:
    index: int
    worker: Worker | None = None
    restarts: int = 0
    restart_times: collections.deque[float] = field(default_factory=collections.deque)
    # Old workers of the slot still draining after an upgrade.
    retiring: list[Worker] = field(default_factory=list)
    # The new worker of an upgrade while it starts (listed as "starting").
    successor: Worker | None = None
    upgrading: bool = False
    # Set when the current worker exits or is replaced by an upgrade.
    wakeup: trio.Event = field(default_factory=trio.Event)
    nursery: trio.Nursery | None = None
    # Why the slot has no worker and none is coming now (None: it has, or one is coming).
    empty_reason: str | None = None
    # The worker of another slot accepting on this slot's sockets while it is empty.
    adopter: Worker | None = None
    # Set to refill an empty slot now (LaunchWorker, UpgradeMain).
    refill: trio.Event = field(default_factory=trio.Event)
    # Set once a refill asked by `WorkerPool.refill` has a running worker.
    refilled: trio.Event = field(default_factory=trio.Event)


class UpgradeError(Exception):
    """An upgrade that could not be done; the old worker keeps serving. `replay_failure`
    names the request the new worker could not replay, if that was the cause."""

    def __init__(self, message: str, replay_failure: str | None = None) -> None:
        super().__init__(message)
        self.replay_failure = replay_failure


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class WorkerPool:
    """The worker slots, their processes and the start-up of each worker."""

    def __init__(
        self,
        config: Config,
        state: ConfigState,
        state_lock: trio.Lock,
        events: EventHub,
        *,
        debug: bool,
        build_id: str,
    ) -> None:
        self.config = config
        self.state = state
        self.state_lock = state_lock
        self.events = events
        self.debug = debug
        self.build_id = build_id
        self.slots = [Slot(index) for index in range(config.worker_count)]
        # Given to each worker in its ServerConfig; `sozu logging` changes it.
        self.log_level = config.log_level
        # Runtime settings given to each new worker too (not persisted, as upstream):
        # `sozu connection-limit` and `sozu metrics enable|disable` change them.
        self.max_connections_per_ip = config.max_connections_per_ip
        self.cluster_metrics = not config.disable_cluster_metrics
        # The secret every worker this supervisor starts derives its TLS session-ticket keys
        # from (one set per HTTPS listener, docs/http.md).
        self.tls_ticket_keys = os.urandom(rq.TLS_TICKET_KEY_SIZE)
        instance = str(Path(config.command_socket).absolute())
        self.sockets = ListenerSockets(config.worker_count, AddressClaims(instance))
        self.stopping = False
        self._next_id = 0
        # Workers of a previous supervisor image, by slot, taken over instead of launched.
        self._adopted: dict[int, Worker] = {}
        # Called with each worker whose process has exited (metrics retire it).
        self.on_worker_exit: Callable[[Worker], None] | None = None
        # Called with the metrics a stopping worker sends with its stop answer.
        self.on_final_metrics: Callable[[Worker, MetricsSnapshot], None] | None = None

    @property
    def next_worker_id(self) -> int:
        return self._next_id

    @property
    def upgrading(self) -> bool:
        return any(slot.upgrading for slot in self.slots)

    def adopt(self, handoff: Handoff) -> None:
        """Take over what a previous supervisor image ran: ids, listener sockets, workers."""
        self.log_level = handoff.log_level
        for handed_slot in handoff.slots:
            if handed_slot.index < len(self.slots):
                self.slots[handed_slot.index].restarts = handed_slot.restarts
        self.adopt_processes(
            handoff.next_worker_id, handoff.listeners, handoff.workers, set(handoff.dead_slots)
        )

    def adopt_processes(
        self,
        next_worker_id: int,
        listeners: Iterable[HandedListener],
        workers: Iterable[HandedWorker],
        dead_slots: set[int],
    ) -> None:
        """Take over running workers and the listener sockets they serve (an in-place
        upgrade's handoff, or the workers of a supervisor that died: see orphans.py)."""
        self._next_id = max(self._next_id, next_worker_id)
        sockets = []
        for listener in listeners:
            os.set_inheritable(listener.fd, False)
            sockets.append(
                (
                    (listener.proxy, listener.address),
                    listener.slot,
                    socket.socket(fileno=listener.fd),
                )
            )
        self.sockets.adopt(sockets, dead_slots)
        for handed in workers:
            if handed.slot >= len(self.slots):
                # The configuration now has fewer slots: that worker is stopped.
                log.warning(
                    "worker %d (pid %d) has no slot any more: stopping it", handed.id, handed.pid
                )
                os.kill(handed.pid, signal.SIGKILL)
                os.close(handed.channel_fd)
                os.close(handed.scm_fd)
                continue
            os.set_inheritable(handed.channel_fd, False)
            os.set_inheritable(handed.scm_fd, False)
            connection = FramedConnection.from_socket(
                socket.socket(fileno=handed.channel_fd),
                max_frame_size=worker_frame_limit(self.config),
            )
            connection.prefill(handed.buffered)
            worker_ref: list[Worker] = []
            mux = RequestMux(connection, on_unsolicited=partial(self._unsolicited, worker_ref))
            worker = Worker(
                id=handed.id,
                slot=handed.slot,
                process=AdoptedProcess(handed.pid),
                mux=mux,
                scm=trio.socket.from_stdlib_socket(socket.socket(fileno=handed.scm_fd)),
                state="draining" if handed.draining else "running",
                build_id=handed.build_id,
                state_hash=handed.state_hash,
            )
            worker_ref.append(worker)
            slot = self.slots[handed.slot]
            if handed.draining:
                slot.retiring.append(worker)
            else:
                self._adopted[handed.slot] = worker
            log.info("adopted %s%s", worker.name(), " (draining)" if handed.draining else "")

    # -- queries

    def live_workers(self) -> list[Worker]:
        """Current workers of the slots, upgrade successors still starting, and old workers
        still draining after an upgrade."""
        current = [slot.worker for slot in self.slots if slot.worker is not None]
        starting = [slot.successor for slot in self.slots if slot.successor is not None]
        return current + starting + [w for slot in self.slots for w in slot.retiring]

    def running_workers(self) -> list[Worker]:
        return [w for w in self.live_workers() if w.state == "running"]

    def started_workers(self) -> list[Worker]:
        """Workers past their start-up: every state change goes to each of them."""
        return [w for w in self.live_workers() if w.state in ("running", "not_answering")]

    def info(self, worker: Worker, hash_now: str) -> WorkerInfo:
        return WorkerInfo(
            id=worker.id,
            slot=worker.slot,
            pid=worker.pid,
            state=worker.state,
            restarts=self.slots[worker.slot].restarts,
            build_id=worker.build_id,
            state_hash=worker.state_hash,
            hash_ok=worker.state_hash == hash_now,
        )

    async def refresh(self, worker: Worker, patience: float) -> None:
        """Ask a running worker for its state hash; silence marks it not answering."""
        if worker.state not in ("running", "not_answering"):
            return
        response: Response | None = None
        with trio.move_on_after(patience):
            try:
                response = await worker.mux.call(rq.Status())
            except ConnectionLost:
                return
        if response is None or response.status != "ok":
            worker.state = "not_answering"
            return
        if worker.state == "not_answering":
            worker.state = "running"
        if isinstance(response.content, WorkerInfos) and response.content.workers:
            worker.state_hash = response.content.workers[0].state_hash

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

    # -- launching

    def _command(self, worker_id: int, channel_fd: int, scm_fd: int) -> list[str]:
        command = [sys.executable]
        if not self.debug:
            command.append("-O")
        command += ["-m", "sozu.worker", "--id", str(worker_id)]
        command += ["--fd", str(channel_fd), "--scm", str(scm_fd)]
        command += ["--max-command-buffer-size", str(worker_frame_limit(self.config))]
        return command

    async def _spawn(
        self, slot: int
    ) -> tuple[trio.Process, FramedConnection, trio.socket.SocketType, int]:
        worker_id = self._next_id
        self._next_id += 1
        channel, channel_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        scm, scm_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            channel_child.set_inheritable(True)
            scm_child.set_inheritable(True)
            process = await trio.lowlevel.open_process(
                self._command(worker_id, channel_child.fileno(), scm_child.fileno()),
                stdin=subprocess.DEVNULL,
                pass_fds=(channel_child.fileno(), scm_child.fileno()),
            )
        except BaseException:
            channel.close()
            scm.close()
            raise
        finally:
            channel_child.close()
            scm_child.close()
        connection = FramedConnection.from_socket(
            channel, max_frame_size=worker_frame_limit(self.config)
        )
        return process, connection, trio.socket.from_stdlib_socket(scm), worker_id

    def _server_config(self, worker: Worker) -> rq.ServerConfig:
        config = self.config
        return rq.ServerConfig(
            protocol_version=PROTOCOL_VERSION,
            worker_id=worker.id,
            slot=worker.slot,
            max_connections=config.max_connections,
            buffer_size=config.buffer_size,
            min_buffers=config.min_buffers,
            max_buffers=config.max_buffers,
            drain_timeout=config.drain_timeout,
            log_level=self.log_level,
            access_logs=config.access_logs_target is not None,
            debug=self.debug,
            access_logs_target=config.access_logs_target,
            max_connections_per_ip=self.max_connections_per_ip,
            retry_after=config.retry_after,
            disable_cluster_metrics=not self.cluster_metrics,
            log_target=config.log_target,
            takeover_path=takeover_path(config.command_socket, worker.id),
            tls_ticket_keys=self.tls_ticket_keys,
        )

    async def _expect_ok(self, worker: Worker, request: Request) -> Response:
        with trio.fail_after(self.config.worker_timeout):
            response = await worker.mux.call(request)
        if response.status != "ok":
            raise WorkerStartError(f"{request_kind(request)} refused: {response.message}")
        return response

    async def _replay(self, worker: Worker, request: Request) -> None:
        """One replayed request; the one a worker refuses or dies on is remembered, so that
        its slot is not relaunched in a loop with the same state."""
        try:
            await self._expect_ok(worker, request)
        except (WorkerStartError, ConnectionLost) as error:
            worker.replay_failure = (
                f"{describe_request(request)}: {error}",
                self.state.hash(),
            )
            raise

    async def hand_over_listeners(self, worker: Worker) -> None:
        """Send the slot's listener sockets over the SCM channel, before any activation."""
        await self.send_sockets(worker)

    async def send_sockets(self, worker: Worker, keys: list[ListenerKey] | None = None) -> None:
        """Send the worker's copies of the slot's sockets (of `keys`, default all)."""
        listeners = self.sockets.for_slot(worker.slot, keys)
        if listeners:
            with trio.fail_after(self.config.worker_timeout):
                async with worker.scm_lock:
                    await send_listeners(worker.scm, listeners)

    async def _hello(self, worker: Worker, connection: FramedConnection) -> None:
        hello = await connection.receive_response()
        if hello is None or not isinstance(hello.content, WorkerHello):
            raise WorkerStartError(f"expected a Hello, got {hello!r}")
        if hello.content.protocol_version != PROTOCOL_VERSION:
            raise WorkerStartError(f"worker speaks protocol {hello.content.protocol_version}")
        worker.build_id = hello.content.build_id

    async def _start_up(self, worker: Worker) -> None:
        """ServerConfig, replay with listeners inactive, listener fds, activations, Ready.

        Runs under the state lock, so that no mutation is fanned out while the worker catches
        up with the state (it is not "running" before it is Ready).
        """
        await self._expect_ok(worker, self._server_config(worker))
        for request in self.state.generate_requests():
            if not isinstance(request, rq.ActivateListener):
                await self._replay(worker, request)
        await self.hand_over_listeners(worker)
        for request in generate_activate_requests(self.state):
            await self._replay(worker, request)
        ready = await self._expect_ok(worker, rq.Status())
        if isinstance(ready.content, WorkerInfos) and ready.content.workers:
            worker.state_hash = ready.content.workers[0].state_hash
        worker.state = "running"

    async def _watch_channel(self, worker: Worker) -> None:
        await worker.mux.run()
        if worker.process.returncode is None and not self.stopping and worker.state != "draining":
            log.warning("%s: channel closed (%s)", worker.name(), worker.mux.closed_reason)
        with trio.move_on_after(EXIT_GRACE):
            await worker.process.wait()
        if worker.process.returncode is None:
            worker.process.kill()

    async def _start_worker(self, slot: Slot, *, successor: bool = False) -> Worker:
        """Launch a worker for `slot` and run its start-up; its process is watched by a task
        of the slot's nursery until it exits (then `worker.exited` is set).

        A successor (upgrade) does not become the slot's current worker here. The returned
        worker is "running" when it is ready; otherwise it has been killed.
        """
        assert slot.nursery is not None
        process, connection, scm, worker_id = await self._spawn(slot.index)
        worker_ref: list[Worker] = []
        mux = RequestMux(
            connection, on_unsolicited=lambda response: self._unsolicited(worker_ref, response)
        )
        worker = Worker(id=worker_id, slot=slot.index, process=process, mux=mux, scm=scm)
        worker_ref.append(worker)
        if successor:
            slot.successor = worker
        else:
            slot.worker = worker
        log.info("launched %s%s", worker.name(), " (upgrade)" if successor else "")
        slot.nursery.start_soon(self._lifetime, slot, worker)
        try:
            await self._hello_and_start_up(slot, worker, connection)
        except BaseException:
            process.kill()
            raise
        if worker.state == "running":
            log.info("%s is ready", worker.name())
        elif process.returncode is None:
            process.kill()
        return worker

    async def _hello_and_start_up(
        self, slot: Slot, worker: Worker, connection: FramedConnection
    ) -> None:
        assert slot.nursery is not None
        try:
            # Interpreter start-up and imports come before the Hello.
            with trio.fail_after(max(self.config.worker_timeout, HELLO_TIMEOUT)):
                await self._hello(worker, connection)
            slot.nursery.start_soon(self._watch_channel, worker)
            async with self.state_lock:
                await self._start_up(worker)
        except trio.TooSlowError:
            log.error("%s did not become ready in time", worker.name())
        except (
            WorkerStartError,
            ConnectionLost,
            ProtocolError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as error:
            log.error("%s failed to start: %s", worker.name(), error)

    async def _lifetime(self, slot: Slot, worker: Worker) -> None:
        """Wait for the worker's process to exit, then let go of it."""
        try:
            await worker.process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if worker.process.returncode is None:
                    worker.process.kill()
                    await worker.process.wait()
                await worker.mux.aclose()
                worker.scm.close()
            worker.state = "stopped"
            if worker in slot.retiring:
                slot.retiring.remove(worker)
            self._orphan_adoptions(worker)
            if self.on_worker_exit is not None:
                self.on_worker_exit(worker)
            worker.exited.set()
            slot.wakeup.set()

    async def _current_exit(self, slot: Slot) -> Worker:
        """Wait until the slot's current worker exits (following upgrades); return it."""
        while True:
            current = slot.worker
            assert current is not None
            if current.exited.is_set():
                slot.worker = None
                return current
            slot.wakeup = trio.Event()
            await slot.wakeup.wait()

    # -- upgrades

    def find(self, worker_id: int) -> Worker | None:
        for worker in self.live_workers():
            if worker.id == worker_id:
                return worker
        return None

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

    def _final_metrics(self, worker: Worker, response: Response) -> None:
        content = response.content
        callback = self.on_final_metrics
        if isinstance(content, MetricsReport) and content.snapshot is not None and callback:
            callback(worker, content.snapshot)

    def _unsolicited(self, worker: list[Worker], response: Response) -> None:
        event = response.content
        if isinstance(event, Event) and worker:
            self.events.publish(
                event.kind,
                source=str(worker[0].id),
                cluster_id=event.cluster_id,
                backend_id=event.backend_id,
                address=event.address,
                message=event.message,
            )
            return
        log.debug("unsolicited worker answer %s %s", response.id, response.status)

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
