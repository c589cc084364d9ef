"""The base of the worker pool: its settings, its slots and their workers, the workers and
listener sockets a previous supervisor hands over, queries on the live workers, what a worker
sends unasked (events), and the metrics a stopping worker answers with (`_final_metrics`)."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import trio

from sozu.command import requests as rq
from sozu.command.channel import ConnectionLost, FramedConnection, RequestMux
from sozu.command.config_schema import Config
from sozu.command.envelope import Response
from sozu.command.metrics import MetricsSnapshot
from sozu.command.responses import Event, MetricsReport, WorkerInfo, WorkerInfos
from sozu.command.state import ConfigState
from sozu.supervisor.address_owner import AddressClaims
from sozu.supervisor.adopted_process import AdoptedProcess
from sozu.supervisor.events import EventHub
from sozu.supervisor.handoff import HandedListener, HandedWorker, Handoff
from sozu.supervisor.listener_sockets import ListenerSockets
from sozu.supervisor.worker_records import Slot, Worker, worker_frame_limit

log = logging.getLogger("sozu.supervisor")


class WorkerRegistry:
    """The settings, slots and live workers of a `WorkerPool`."""

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

    def find(self, worker_id: int) -> Worker | None:
        for worker in self.live_workers():
            if worker.id == worker_id:
                return worker
        return None

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
