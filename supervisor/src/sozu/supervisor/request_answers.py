"""The supervisor's answers to requests that change no state: status, worker lists,
saves, metrics, queries it or every worker answers, and the upgrade or launch of a
worker."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from sozu.command import requests as rq
from sozu.command.channel import ConnectionLost
from sozu.command.config_schema import Config
from sozu.command.envelope import Response, failure, ok
from sozu.command.requests import Request, request_kind
from sozu.command.responses import (
    EmptySlot,
    MaxConnectionsPerIp,
    RequestCounts,
    StatusReport,
    SupervisorInfo,
    WorkerAnswer,
    WorkerInfos,
    WorkerResponses,
)
from sozu.command.state import ConfigState
from sozu.command.state_queries import QUERY_TYPES, answer_query
from sozu.command.statefile import save_state
from sozu.supervisor.events import EventHub
from sozu.supervisor.fleet_sync import FleetSync
from sozu.supervisor.metrics_poll import MetricsCollector
from sozu.supervisor.worker_records import STATUS_PATIENCE, UpgradeError, Worker
from sozu.supervisor.workers import WorkerPool


class RequestAnswers:
    """The answers of a `Supervisor` to requests that change nothing."""

    config: Config
    state: ConfigState
    pool: WorkerPool
    collector: MetricsCollector
    events: EventHub
    fleet: FleetSync | None
    build_id: str
    boot_generation: int
    stopping: bool

    async def answer(self, request_id: str, request: Request) -> Response:
        """The answer to a request that changes nothing."""
        if isinstance(request, rq.Status):
            return ok(request_id, content=await self.status())
        if isinstance(request, rq.ListWorkers):
            state_hash = self.state.hash()
            infos = tuple(self.pool.info(w, state_hash) for w in self.pool.live_workers())
            return ok(request_id, content=WorkerInfos(workers=infos))
        if isinstance(request, rq.SaveState):
            return self.save(request_id, request.path, upstream=request.format == "upstream")
        if isinstance(request, rq.QueryMetrics):
            await self.collector.poll_once()
            if request.list:
                return ok(request_id, content=self.collector.available())
            return ok(request_id, content=self.collector.report(request))
        if isinstance(request, rq.ConfigureMetrics):
            if request.config != "CLEAR":
                self.pool.cluster_metrics = request.config == "ENABLED"
            main = ok(request_id, f"metrics {request.config.lower()}")
            return await self.query_everyone(request_id, request, main)
        if isinstance(request, rq.SetMaxConnectionsPerIp):
            self.pool.max_connections_per_ip = request.limit
            main = ok(request_id, f"connection limit per (cluster, client IP): {request.limit}")
            return await self.query_everyone(request_id, request, main)
        if isinstance(request, rq.QueryMaxConnectionsPerIp):
            limit = MaxConnectionsPerIp(limit=self.pool.max_connections_per_ip)
            return ok(request_id, content=limit)
        if isinstance(request, rq.QueryCertificatesFromWorkers):
            # Each worker answers from the certificates it loaded (its copy of the state).
            query = rq.QueryCertificatesFromTheState(
                domain=request.domain, fingerprint=request.fingerprint
            )
            main = answer_query(self.state, request_id, query)
            return await self.query_everyone(request_id, query, main)
        if isinstance(request, rq.CountRequests):
            return ok(request_id, content=RequestCounts(map=dict(self.state.request_counts)))
        if isinstance(request, rq.UpgradeWorker):
            return await self.upgrade_worker(request_id, request.worker_id, wait=request.wait)
        if isinstance(request, rq.LaunchWorker):
            return await self.launch_worker(request_id, request.slot)
        if isinstance(request, QUERY_TYPES):
            if request.ROUTING == "query":
                return await self.query_everyone(request_id, request)
            return answer_query(self.state, request_id, request)
        kind = request_kind(request)
        if request.ROUTING == "worker":
            return failure(request_id, f"{kind} is only for the supervisor-to-worker channel")
        return failure(request_id, f"{kind} is not implemented yet")

    async def upgrade_worker(self, request_id: str, worker_id: int, *, wait: bool) -> Response:
        if self.stopping:
            return failure(request_id, "the daemon is stopping")
        try:
            new = await self.pool.upgrade_worker(worker_id, wait=wait)
        except UpgradeError as error:
            return failure(request_id, f"upgrade of worker {worker_id} failed: {error}")
        state_hash = self.state.hash()
        drained = "has exited" if wait else "is draining"
        return ok(
            request_id,
            f"worker {worker_id} upgraded: worker {new.id} (pid {new.pid}) serves slot"
            f" {new.slot}; worker {worker_id} {drained}",
            content=WorkerInfos(workers=(self.pool.info(new, state_hash),)),
        )

    async def launch_worker(self, request_id: str, slot: int | None) -> Response:
        """Refill empty slots now; answer once their new workers are running (or not)."""
        if slot is not None and slot >= len(self.pool.slots):
            return failure(request_id, f"no slot {slot} (worker_count {len(self.pool.slots)})")
        asked = self.pool.refill(slot)
        if not asked:
            which = "no slot is empty" if slot is None else f"slot {slot} is not empty"
            return ok(request_id, f"nothing to launch: {which}")
        patience = max(self.config.worker_timeout, 10.0) * 2
        with trio.move_on_after(patience):
            for index in asked:
                await self.pool.slots[index].refilled.wait()
        running = [index for index in asked if self._slot_running(index)]
        report = await self._status_now()
        if len(running) < len(asked):
            still = [index for index in asked if index not in running]
            return failure(request_id, f"slots {still} did not get a running worker")
        return ok(request_id, f"slots {running} refilled", content=report)

    def _slot_running(self, index: int) -> bool:
        worker = self.pool.slots[index].worker
        return worker is not None and worker.state == "running"

    async def status(self) -> StatusReport:
        async with trio.open_nursery() as nursery:
            for worker in self.pool.live_workers():
                nursery.start_soon(
                    self.pool.refresh, worker, min(STATUS_PATIENCE, self.config.worker_timeout)
                )
        return await self._status_now()

    async def _status_now(self) -> StatusReport:
        """The status as last known (no worker is asked)."""
        state_hash = self.state.hash()
        workers = sorted(self.pool.live_workers(), key=lambda w: w.slot)
        return StatusReport(
            supervisor=SupervisorInfo(
                pid=os.getpid(),
                boot_generation=self.boot_generation,
                build_id=self.build_id,
                state_hash=state_hash,
            ),
            workers=tuple(self.pool.info(w, state_hash) for w in workers),
            empty_slots=tuple(
                EmptySlot(
                    slot=slot.index,
                    reason=slot.empty_reason,
                    adopted_by=slot.adopter.id if slot.adopter is not None else None,
                )
                for slot in self.pool.slots
                if slot.empty_reason is not None
            ),
            problems=tuple(
                f"{w.name()}: {w.problem}" for w in workers if w.problem and w.state != "draining"
            ),
            fleet=self.fleet.status() if self.fleet is not None else None,
        )

    def save(self, request_id: str, path: str, *, upstream: bool = False) -> Response:
        try:
            count = save_state(self.state, Path(path), upstream=upstream)
        except (OSError, ValueError) as error:
            return failure(request_id, f"cannot save the state to {path}: {error}")
        self.events.publish("STATE_SAVED", message=path)
        return ok(request_id, f"saved {count} records to {path}")

    async def query_everyone(
        self, request_id: str, request: Request, main_answer: Response | None = None
    ) -> Response:
        """The supervisor's answer and every running worker's, keyed "main" and worker id."""
        if main_answer is None:
            main_answer = answer_query(self.state, request_id, request)
        answers = {"main": _answer_of(main_answer)}

        async def ask(worker: Worker) -> None:
            with trio.move_on_after(self.config.worker_timeout):
                try:
                    answers[str(worker.id)] = _answer_of(await worker.mux.call(request))
                    return
                except ConnectionLost as error:
                    answers[str(worker.id)] = WorkerAnswer(status="failure", message=str(error))
                    return
            answers[str(worker.id)] = WorkerAnswer(status="failure", message="no answer")

        async with trio.open_nursery() as nursery:
            for worker in self.pool.running_workers():
                nursery.start_soon(ask, worker)
        main = answers["main"]
        if main.status == "failure":
            return failure(request_id, main.message)
        return ok(request_id, content=WorkerResponses(map=answers))


def _answer_of(response: Response) -> WorkerAnswer:
    return WorkerAnswer(status=response.status, message=response.message, content=response.content)
