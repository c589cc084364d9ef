"""The supervisor: owns the state, its workers and the command socket; routes each request."""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import trio

from sozu.command import requests as rq
from sozu.command.addresses import to_sockaddr
from sozu.command.build import build_id
from sozu.command.config import LoadedConfig
from sozu.command.envelope import RequestEnvelope, Response, failure, ok
from sozu.command.metrics import MetricsAggregator
from sozu.command.requests import Request, request_kind
from sozu.command.state import ConfigState
from sozu.command.state_errors import StateError
from sozu.command.statefile import StateFileError, read_state_file
from sozu.supervisor.boundaries import ErrorCounts, reason_of
from sozu.supervisor.daemon_io import StartupError, sd_notify
from sozu.supervisor.events import EventHub
from sozu.supervisor.fleet_sync import FleetSync
from sozu.supervisor.handoff import Handoff
from sozu.supervisor.main_upgrade import build_handoff, exec_with_handoff, preflight, quiesce
from sozu.supervisor.metrics_poll import MetricsCollector
from sozu.supervisor.mutations import MAX_QUEUED_JOBS, Answering, Mutations, Reply, is_sequenced
from sozu.supervisor.orphans import Orphans
from sozu.supervisor.prometheus_endpoint import serve_prometheus
from sozu.supervisor.request_answers import RequestAnswers
from sozu.supervisor.server import CommandServer, CommandSocket
from sozu.supervisor.state_saver import StateSaver
from sozu.supervisor.statsd import StatsdExporter
from sozu.supervisor.supervisor_metrics import SupervisorMetrics
from sozu.supervisor.worker_records import STATUS_PATIENCE, UpgradeError
from sozu.supervisor.workers import WorkerPool

log = logging.getLogger("sozu.supervisor")


def initial_state(loaded: LoadedConfig) -> ConfigState:
    """The state the configuration describes, or the one `saved_state` holds when that file
    exists (it replaces the configuration's routing: it has every live change); a refused
    request is a startup error."""
    state = ConfigState()
    state.max_request_size = loaded.config.max_command_buffer_size
    for index, request in enumerate(loaded.requests):
        try:
            state.apply(request)
        except StateError as error:
            raise StartupError(
                f"{loaded.source}: configuration request #{index + 1} "
                f"({request_kind(request)}) refused: {error}"
            ) from None
    saved = loaded.config.saved_state
    if saved is None or not Path(saved).exists():
        return state
    try:
        requests = read_state_file(Path(saved))
    except StateFileError as error:
        raise StartupError(f"saved_state: {error}") from None
    state = ConfigState()
    state.max_request_size = loaded.config.max_command_buffer_size
    for index, request in enumerate(requests):
        try:
            state.apply(request)
        except StateError as error:
            raise StartupError(
                f"saved_state {saved}: record #{index + 1} ({request_kind(request)}) refused: "
                f"{error}"
            ) from None
    log.info(
        "routing state from saved_state %s (%d records) replaces the configuration's",
        saved,
        len(requests),
    )
    return state


class Supervisor(RequestAnswers, SupervisorMetrics):
    """One daemon run: `await Supervisor(...).run()` returns when the daemon has stopped."""

    def __init__(
        self,
        loaded: LoadedConfig,
        state: ConfigState,
        command_socket: CommandSocket,
        *,
        metrics_socket: socket.socket | None = None,
        debug: bool,
        on_ready: Callable[[], None] | None = None,
        handoff: Handoff | None = None,
        orphans: Orphans | None = None,
    ) -> None:
        config = loaded.config
        self.config = config
        self.config_path = loaded.path
        self.state = state
        # Answers sent per request kind and result (ok | failure), for Prometheus.
        self.command_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.command_socket = command_socket
        self.metrics_socket = metrics_socket
        self.metrics = MetricsAggregator()
        self.on_ready = on_ready
        self.build_id = build_id()
        self.boot_generation = 0
        self.events = (
            EventHub(handoff.events, handoff.next_event_seq) if handoff is not None else EventHub()
        )
        self.state_lock = trio.Lock()
        self.pool = WorkerPool(
            config, state, self.state_lock, self.events, debug=debug, build_id=self.build_id
        )
        self.mutations = Mutations(
            state, self.state_lock, self.pool, self.events, config.worker_timeout
        )
        self.collector = MetricsCollector(
            self.pool, self.metrics, min(STATUS_PATIENCE, config.worker_timeout)
        )
        self.saver: StateSaver | None = None
        self.statsd: StatsdExporter | None = None
        if config.automatic_state_save and config.saved_state is not None:
            self.saver = StateSaver(state, Path(config.saved_state))
            self.mutations.on_change = self.saver.mark_dirty
        self.stopping = False
        # Errors caught at the boundaries (command connections, jobs, scrapes), by reason.
        self.errors = ErrorCounts()
        self.mutations.errors = self.errors
        self.handoff = handoff
        self.main_upgrading = False
        self.orphans = orphans
        if orphans:
            adopted_slots = {w.slot for w in orphans.workers if not w.draining}
            empty = set(range(config.worker_count)) - adopted_slots
            self.pool.adopt_processes(
                orphans.next_worker_id, orphans.listeners, orphans.workers, empty
            )
        if handoff is not None:
            self.boot_generation = handoff.boot_generation
            self.pool.adopt(handoff)
            self.metrics.restore_retired(handoff.retired_metrics)
            for kind, result, count in handoff.command_counts:
                self.command_counts[(kind, result)] = count
        self.fleet: FleetSync | None = None
        if config.etcd is not None:
            self.fleet = FleetSync(
                config.etcd,
                self.mutations,
                config.max_command_buffer_size,
                version=self.build_id,
            )
        self.done = trio.Event()
        self._root: trio.Nursery | None = None

    def bind_active_listeners(self) -> None:
        """Bind the sockets of the listeners the configuration activates."""
        for proxy, listeners in self.state.listener_maps().items():
            for address in sorted(listeners):
                if listeners[address].active:
                    try:
                        self.pool.sockets.bind(proxy, address)
                    except OSError as error:
                        raise StartupError(
                            f"cannot bind {proxy} listener {address}: {error}"
                        ) from None

    async def run(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            try:
                if self.handoff is None:
                    self.bind_active_listeners()
                if self.orphans:
                    # The adopted workers' successors need a socket of every active listener.
                    active = self.state.active_listener_keys()
                    for slot in {w.slot for w in self.orphans.workers if not w.draining}:
                        for problem in self.pool.sockets.revive_slot(slot, active):
                            log.error("slot %d: %s", slot, problem)
                async with trio.open_nursery() as root:
                    self._root = root
                    root.start_soon(self._watch_signals, signals)
                    root.start_soon(self.mutations.run)
                    launched = [trio.Event() for _ in range(self.config.worker_count)]
                    for index, started in enumerate(launched):
                        root.start_soon(self.pool.run_slot, index, started)
                    for started in launched:
                        await started.wait()
                    server = CommandServer(
                        self.command_socket.sock,
                        self.dispatch,
                        max_frame_size=self.config.max_command_buffer_size,
                        allowed_uids=self.config.command_allowed_uids,
                        errors=self.errors,
                    )
                    await root.start(server.serve)
                    if self.metrics_socket is not None:
                        await root.start(
                            serve_prometheus, self.metrics_socket, self._registry(), self.errors
                        )
                    running = len(self.pool.running_workers())
                    log.info(
                        "ready: %d of %d workers running, command socket %s",
                        running,
                        self.config.worker_count,
                        self.command_socket.path,
                    )
                    root.start_soon(self.collector.run)
                    if self.fleet is not None:
                        root.start_soon(self.fleet.run)
                        root.start_soon(self.fleet.report)
                    statsd = self.config.metrics
                    if statsd.address is not None:
                        self.statsd = StatsdExporter(
                            self._statsd_totals,
                            to_sockaddr(statsd.address),
                            prefix=statsd.prefix,
                            tagged=statsd.tagged_metrics,
                            detail=statsd.detail,
                        )
                        root.start_soon(self.statsd.run)
                    if self.saver is not None:
                        await self.saver.save_now()
                        root.start_soon(self.saver.run)
                    if self.handoff is not None:
                        self.events.publish(
                            "MAIN_UPGRADED",
                            message=f"supervisor boot generation {self.boot_generation}",
                        )
                        if self.handoff.upgrade_workers:
                            root.start_soon(self._upgrade_every_worker)
                    if self.orphans:
                        # They serve the state they had: replaced, one at a time, by workers
                        # replaying this supervisor's.
                        root.start_soon(self._upgrade_every_worker)
                    sd_notify("READY=1")
                    if self.on_ready is not None:
                        self.on_ready()
                    await self.done.wait()
                    root.cancel_scope.cancel()
            finally:
                self.pool.kill_all()
                self.pool.sockets.close_all()

    def _counted(self, kind: str, reply: Reply) -> Reply:
        """`reply` that counts final answers (ok or failure) in `command_counts`."""

        async def send(response: Response) -> bool:
            if response.status != "processing":
                self.command_counts[(kind, response.status)] += 1
            return await reply(response)

        return send

    # -- routing

    def dispatch(self, envelope: RequestEnvelope, reply: Reply, nursery: trio.Nursery) -> None:
        """Route one client request; never blocks (answers are sent by tasks or jobs).

        Every task and job started here answers its request whatever happens inside it: an
        exception becomes a Failure (or, for a state change that moved the state, an Ok that
        says so) and is counted, never a silent client or a dead daemon.
        """
        request_id, request = envelope.id, envelope.request
        root = self._root
        assert root is not None
        kind = request_kind(request)
        reply = self._counted(kind, reply)

        def queue(job: Callable[[Reply], Awaitable[None]]) -> None:
            if not self.mutations.submit(job, kind, request_id, reply):
                message = f"{MAX_QUEUED_JOBS} state changes are already queued; try again"
                nursery.start_soon(reply, failure(request_id, message))

        def task(where: trio.Nursery, job: Callable[[Reply], Awaitable[None]]) -> None:
            where.start_soon(self._answered, request_id, kind, reply, job)

        if self.stopping and not isinstance(request, rq.Status | rq.ListWorkers):
            nursery.start_soon(reply, failure(request_id, "the daemon is stopping"))
        elif isinstance(request, rq.HardStop):
            task(root, partial(self.stop, True, request_id))
        elif self.fleet is not None and (
            isinstance(request, rq.LoadState | rq.ReloadConfiguration)
            or (is_sequenced(request) and not isinstance(request, rq.SoftStop))
        ):
            message = (
                f"{kind} refused: this instance follows the desired state in etcd "
                f"(prefix {self.fleet.prefix}); change it there (sozu fleet push, etcdctl put)"
            )
            nursery.start_soon(reply, failure(request_id, message))
        elif isinstance(request, rq.SoftStop):
            queue(partial(self.stop, False, request_id))
        elif isinstance(request, rq.LoadState):
            queue(partial(self.mutations.load_state, request_id, request.path))
        elif isinstance(request, rq.ReloadConfiguration):
            path = Path(request.path) if request.path else self.config_path
            queue(partial(self.mutations.reload, request_id, path))
        elif isinstance(request, rq.Logging):
            queue(partial(self.mutations.set_logging, request_id, request.filter))
        elif is_sequenced(request):
            queue(partial(self.mutations.apply, request_id, request))
        elif isinstance(request, rq.UpgradeMain):
            task(root, partial(self.upgrade_main, request_id))
        elif isinstance(request, rq.UpgradeWorker):
            # In the daemon's nursery: a client that goes away does not cut an upgrade short.
            task(root, partial(self._answer, request_id, request))
        elif isinstance(request, rq.SubscribeEvents):
            task(nursery, partial(self.events.follow, request_id, request.since))
        else:
            task(nursery, partial(self._answer, request_id, request))

    async def _answered(
        self, request_id: str, kind: str, reply: Reply, job: Callable[[Reply], Awaitable[None]]
    ) -> None:
        """Run `job(reply)`; if it raises before its final answer, answer Failure for it."""
        answering = Answering(reply)
        try:
            await job(answering)
        except Exception as error:
            self.errors.record("command", error)
            if not answering.done:
                with trio.move_on_after(self.config.worker_timeout):
                    await reply(
                        failure(
                            request_id, f"internal error in {kind}: {reason_of(error)}: {error}"
                        )
                    )

    async def _answer(self, request_id: str, request: Request, reply: Reply) -> None:
        await reply(await self.answer(request_id, request))

    async def upgrade_main(self, request_id: str, reply: Reply) -> None:
        """Re-execute the supervisor in place with the code on disk (see main_upgrade.py)."""
        if self.main_upgrading or self.pool.upgrading:
            await reply(failure(request_id, "an upgrade is already running"))
            return
        self.main_upgrading = True
        try:
            unsettled = [
                w.name() for w in self.pool.live_workers() if w.state not in ("running", "draining")
            ]
            if unsettled:
                await reply(failure(request_id, f"workers are not settled: {', '.join(unsettled)}"))
                return
            problem = await preflight(self.config_path)
            if problem is not None:
                await reply(
                    failure(
                        request_id,
                        f"pre-flight of the new code failed, the supervisor keeps running: "
                        f"{problem}",
                    )
                )
                return
            async with self.state_lock:
                self.collector.paused = True
                try:
                    if not await quiesce(self.pool, self.config.worker_timeout):
                        await reply(
                            failure(request_id, "workers kept requests in flight; try again")
                        )
                        return
                    report = await self._status_now()
                    await reply(
                        ok(
                            request_id,
                            f"supervisor pid {os.getpid()} re-executing as boot generation "
                            f"{self.boot_generation + 1}; then every worker is upgraded",
                            content=report,
                        )
                    )
                    # From here to the exec there is no checkpoint: no byte can be read from a
                    # worker channel after its buffered bytes are taken.
                    handoff, fds = build_handoff(
                        self.pool,
                        boot_generation=self.boot_generation,
                        config_path=self.config_path,
                        state_requests=tuple(self.state.generate_requests()),
                        command_socket_fd=self.command_socket.sock.fileno(),
                        command_socket_path=str(self.command_socket.path),
                        command_socket_inode=self.command_socket.inode,
                        metrics_socket_fd=(
                            self.metrics_socket.fileno() if self.metrics_socket else None
                        ),
                        command_counts=tuple(
                            (kind, result, count)
                            for (kind, result), count in self.command_counts.items()
                        ),
                        retired_metrics=self.metrics.retired(),
                    )
                    try:
                        exec_with_handoff(handoff, fds)
                    except OSError:
                        live = self.pool.live_workers()
                        for worker, handed in zip(live, handoff.workers, strict=True):
                            worker.mux.connection.prefill(handed.buffered)
                finally:
                    self.collector.paused = False
        finally:
            self.main_upgrading = False

    async def _upgrade_every_worker(self) -> None:
        """After an in-place re-exec: each adopted worker is replaced, one at a time."""
        for slot in self.pool.slots:
            worker = slot.worker
            if worker is None or self.stopping:
                continue
            try:
                await self.pool.upgrade_worker(worker.id)
            except UpgradeError as error:
                log.error("upgrade of %s after the supervisor upgrade: %s", worker.name(), error)

    # -- stopping

    async def stop(
        self, hard: bool, request_id: str | None = None, reply: Reply | None = None
    ) -> None:
        if self.stopping:
            return
        self.stopping = True
        sd_notify("STOPPING=1")
        self.events.publish("SOZU_STOP_REQUESTED", message="hard" if hard else "soft")
        log.info(
            "%s stop: stopping %d workers",
            "hard" if hard else "soft",
            len(self.pool.live_workers()),
        )
        if self.saver is not None:
            await self.saver.save_now()
        closed, errors = await self.pool.stop_all(hard)
        if reply is not None and request_id is not None:
            message = (
                f"Successfully closed {closed} workers, {errors} errors, "
                "stopping the main process..."
            )
            await reply(ok(request_id, message))
        self.done.set()

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        root = self._root
        assert root is not None
        async for signum in signals:
            if signum == signal.SIGTERM and not self.stopping:
                log.info("SIGTERM: soft stop")
                if not self.mutations.submit(partial(self.stop, False, None), "SoftStop"):
                    root.start_soon(self.stop, False)
            elif not self.stopping:
                log.info("SIGINT: hard stop")
                root.start_soon(self.stop, True)
            elif signum == signal.SIGINT:
                log.info("SIGINT while stopping: killing the workers")
                self.pool.kill_all()
                self.done.set()
