"""Sequenced state changes: validate on the supervisor's state, fan out, answer, one event.

Jobs run one at a time in submission order (the order requests arrived on the command
socket), each under the state lock that worker start-ups also take. A refused request is a
Failure and changes nothing anywhere; an accepted one is Ok, naming any worker that failed
or stayed silent, which is then replaced by a worker launched with the full state. A setting
an accepted request carries that sozu does not implement (a cluster's `http2`, a `load_metric`
other than CONNECTIONS) is logged as a warning naming the field and the cluster.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from sozu.command import requests as rq
from sozu.command.channel import ConnectionLost, PendingCall
from sozu.command.config import ConfigError, LoadedConfig, load_config
from sozu.command.envelope import Response, failure, ok, processing
from sozu.command.log_levels import parse_log_level
from sozu.command.request_checks import unhonoured_cluster_settings
from sozu.command.requests import Request, request_kind
from sozu.command.responses import EventKind
from sozu.command.state import ConfigState
from sozu.command.state_errors import StateError
from sozu.command.statefile import StateFileError, load_requests, read_state_file
from sozu.supervisor.boundaries import ErrorCounts
from sozu.supervisor.events import EventHub
from sozu.supervisor.worker_records import Worker
from sozu.supervisor.workers import WorkerPool

log = logging.getLogger("sozu.supervisor")

Reply = Callable[[Response], Awaitable[bool]]
Job = Callable[[], Awaitable[None]]

# State changes waiting for their turn; one more is refused with a Failure.
MAX_QUEUED_JOBS = 1000
# Requests of one change in flight to one worker at a time.
FAN_OUT_WINDOW = 256
# Requests sent to a worker in one write (an activation always goes alone, after its sockets).
FAN_OUT_BATCH = 64


def _batches(requests: list[Request]) -> Iterator[list[Request]]:
    """`requests` in order, in runs of at most FAN_OUT_BATCH; an ActivateListener alone."""
    batch: list[Request] = []
    for request in requests:
        if isinstance(request, rq.ActivateListener) or len(batch) >= FAN_OUT_BATCH:
            if batch:
                yield batch
            batch = []
        batch.append(request)
        if isinstance(request, rq.ActivateListener):
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(slots=True)
class _Queued:
    """A job, and whom it must answer whatever happens inside it."""

    job: Job
    kind: str
    request_id: str | None
    answered: Callable[[], bool]
    reply: Reply | None


class Answering:
    """A reply that remembers whether the final answer (ok or failure) went out."""

    __slots__ = ("done", "reply")

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.done = False

    async def __call__(self, response: Response) -> bool:
        if response.status != "processing":
            self.done = True
        return await self.reply(response)


_EVENT_KINDS: dict[str, EventKind] = {
    "AddCluster": "CLUSTER_ADDED",
    "RemoveCluster": "CLUSTER_REMOVED",
    "AddBackend": "BACKEND_ADDED",
    "RemoveBackend": "BACKEND_REMOVED",
    "AddCertificate": "CERTIFICATE_ADDED",
    "ReplaceCertificate": "CERTIFICATE_REPLACED",
    "RemoveCertificate": "CERTIFICATE_REMOVED",
    "RemoveListener": "LISTENER_REMOVED",
    "ActivateListener": "LISTENER_ACTIVATED",
    "DeactivateListener": "LISTENER_DEACTIVATED",
    "SetHealthCheck": "HEALTH_CHECK_SET",
    "RemoveHealthCheck": "HEALTH_CHECK_REMOVED",
}


def event_kind(request: Request) -> EventKind:
    kind = request_kind(request)
    if kind in _EVENT_KINDS:
        return _EVENT_KINDS[kind]
    if kind.endswith("Frontend"):
        return "FRONTEND_ADDED" if kind.startswith("Add") else "FRONTEND_REMOVED"
    if kind.startswith("Update"):
        return "LISTENER_UPDATED"
    assert kind.startswith("Add"), kind
    assert kind.endswith("Listener"), kind
    return "LISTENER_ADDED"


def _field(request: Request, name: str) -> str | None:
    """`name` on the request or on the object it carries (cluster, backend, frontend, ...)."""
    for holder in (
        request,
        *(getattr(request, part, None) for part in ("cluster", "backend", "frontend", "listener")),
    ):
        value = getattr(holder, name, None)
        if isinstance(value, str):
            return value
    return None


def unhonoured_settings(request: Request) -> list[str]:
    """One warning per setting the request carries that sozu accepts but does not implement,
    naming the field and the cluster (only AddCluster carries such settings)."""
    if not isinstance(request, rq.AddCluster):
        return []
    cluster = request.cluster
    return [
        f"cluster {cluster.cluster_id!r}: {field}: {message}"
        for field, message in unhonoured_cluster_settings(load_metric=cluster.load_metric)
    ]


def warn_unhonoured(requests: Iterable[Request]) -> None:
    """Log the warnings of `unhonoured_settings` for requests just applied."""
    for request in requests:
        for warning in unhonoured_settings(request):
            log.warning("%s", warning)


class Mutations:
    """The queue of state-changing jobs and the fan-out to workers."""

    def __init__(
        self,
        state: ConfigState,
        state_lock: trio.Lock,
        pool: WorkerPool,
        events: EventHub,
        worker_timeout: float,
    ) -> None:
        self.state = state
        self.state_lock = state_lock
        self.pool = pool
        self.events = events
        self.worker_timeout = worker_timeout
        self._send, self._receive = trio.open_memory_channel[_Queued](MAX_QUEUED_JOBS)
        self.errors = ErrorCounts()
        # Called after each job that changed the state (automatic state save).
        self.on_change: Callable[[], None] | None = None

    def submit(
        self,
        job: Callable[[Answering], Awaitable[None]],
        kind: str,
        request_id: str | None = None,
        reply: Reply | None = None,
    ) -> bool:
        """Queue a job; it runs after every job submitted before it. False when the queue is
        full (the caller answers Failure). The job gets the reply it must use; if it raises
        before answering, the queue answers for it."""
        answering = Answering(reply if reply is not None else _nobody)
        try:
            self._send.send_nowait(
                _Queued(partial(job, answering), kind, request_id, lambda: answering.done, reply)
            )
        except trio.WouldBlock:
            return False
        return True

    async def run(self) -> None:
        async for queued in self._receive:
            async with self.state_lock:
                before = self.state.hash()
                try:
                    await queued.job()
                except Exception as error:
                    self.errors.record("state_change", error)
                    await self._answer_failed_job(queued, before, error)
                if self.on_change is not None and self.state.hash() != before:
                    self.on_change()

    async def _answer_failed_job(self, queued: _Queued, before: str, error: Exception) -> None:
        """Whatever a job raised, its client gets a final answer that tells the truth."""
        what = f"{type(error).__name__}: {error}"
        if self.state.hash() != before:
            # The supervisor's state moved: the workers are brought in line by replacement.
            for worker in self.pool.started_workers():
                self.pool.replace(worker, f"internal error during {queued.kind}")
            message = (
                f"{queued.kind} applied by the supervisor; internal error while sending it to "
                f"the workers ({what}): workers replaced with the full state"
            )
            response = ok(queued.request_id or "", message)
        else:
            response = failure(
                queued.request_id or "", f"internal error in {queued.kind}, nothing changed: {what}"
            )
        if queued.reply is not None and queued.request_id is not None and not queued.answered():
            with trio.move_on_after(self.worker_timeout):
                await queued.reply(response)

    # -- jobs

    async def apply(self, request_id: str, request: Request, reply: Reply) -> None:
        """Validate on the supervisor's state, fan out, answer Ok; or Failure, nothing sent."""
        kind = request_kind(request)
        bound: rq.ActivateListener | None = None
        if isinstance(request, rq.ActivateListener):
            config = self.state.listener(request.proxy, request.address)
            if config is not None and not config.active:
                try:
                    self.pool.sockets.bind(request.proxy, request.address)
                except OSError as error:
                    message = f"cannot bind {request.proxy} listener {request.address}: {error}"
                    await reply(failure(request_id, message))
                    return
                bound = request
        try:
            outcome = self.state.apply(request)
        except StateError as error:
            if bound is not None:
                self.pool.sockets.close(bound.proxy, bound.address)
            await reply(failure(request_id, str(error)))
            return
        if outcome == "unchanged":
            await reply(ok(request_id, f"{kind}: nothing to change"))
            return
        warn_unhonoured((request,))
        workers = self.pool.started_workers()
        await reply(
            processing(request_id, f"{kind} accepted, sending it to {len(workers)} workers")
        )
        problems = await self.fan_out([request], workers)
        self.events.publish(
            event_kind(request),
            cluster_id=_field(request, "cluster_id"),
            backend_id=_field(request, "backend_id"),
            address=_field(request, "address"),
        )
        await reply(ok(request_id, self.summary(kind, len(workers), problems)))

    async def load_state(self, request_id: str, path: str, reply: Reply) -> None:
        """Merge a state file into the state (like upstream), then fan out what changed."""
        try:
            requests = read_state_file(Path(path))
        except StateFileError as error:
            await reply(failure(request_id, str(error)))
            return
        refused: list[str] = []
        bound: list[rq.ActivateListener] = []

        def admit(request: Request) -> bool:
            """An activation is admitted once its sockets are bound (as for ActivateListener
            itself): a listener the daemon cannot own stays inactive, counted as an error."""
            if not isinstance(request, rq.ActivateListener):
                return True
            config = self.state.listener(request.proxy, request.address)
            if (
                config is None
                or config.active
                or (request.proxy, request.address) in self.pool.sockets
            ):
                return True
            try:
                self.pool.sockets.bind(request.proxy, request.address)
            except OSError as error:
                refused.append(f"cannot bind {request.proxy} listener {request.address}: {error}")
                return False
            bound.append(request)
            return True

        report, applied = load_requests(self.state, requests, admit)
        warn_unhonoured(applied)
        for request in bound:
            if request not in applied:
                self.pool.sockets.close(request.proxy, request.address)
        workers = self.pool.started_workers()
        problems: list[str] = []
        if applied:
            await reply(
                processing(request_id, f"sending {len(applied)} requests to {len(workers)} workers")
            )
            problems = await self.fan_out(applied, workers)
        self.events.publish("STATE_LOADED", message=path)
        message = (
            f"loaded {path}: {report.ok} applied, {report.skipped} skipped, "
            f"{report.errors} errors; {self.summary('LoadState', len(workers), problems)}"
        )
        if refused:
            message += "; " + "; ".join(refused)
        await reply(ok(request_id, message, content=report))

    async def reload(self, request_id: str, path: Path | None, reply: Reply) -> None:
        """Converge onto a configuration file: parse it, build its state, apply the diff.

        Nothing changes unless the file is a valid configuration whose state can be reached
        (and whose new listeners can be bound). Only the routing state is reloaded: settings
        such as worker_count keep the values the daemon started with.
        """
        source = str(path) if path is not None else DEFAULT_SOURCE_NAME
        try:
            loaded = load_config(path)
        except ConfigError as error:
            where = f"{source}: {error.path}" if error.path else source
            await reply(failure(request_id, f"{where}: {error.message}"))
            return
        try:
            target = target_state(loaded)
            requests, problems = await self.converge(
                target,
                lambda count, workers: reply(
                    processing(request_id, f"sending {count} requests to {workers} workers")
                ),
            )
        except StateError as error:
            await reply(failure(request_id, f"{source}: {error}"))
            return
        except BindRefused as error:
            await reply(failure(request_id, f"{source}: {error}"))
            return
        workers = self.pool.started_workers()
        self.events.publish("CONFIGURATION_RELOADED", message=source)
        message = (
            f"reloaded {source}: {len(requests)} requests applied; "
            f"{self.summary('ReloadConfiguration', len(workers), problems)}"
        )
        await reply(ok(request_id, message))

    async def converge(
        self,
        target: ConfigState,
        sending: Callable[[int, int], Awaitable[object]] | None = None,
    ) -> tuple[list[Request], list[str]]:
        """Apply `diff(state, target)` to the supervisor's state and every worker; run it as a
        job (under the state lock). Returns the requests and the workers' problems.

        Nothing changes when the target cannot be reached: StateError (a request the state
        refuses) or BindRefused (a listener the target activates cannot be bound).
        """
        requests = self.state.diff(target)
        check = self.state.copy()
        check.max_request_size = self.state.max_request_size
        for request in requests:
            check.apply(request)
        assert check.hash() == target.hash(), "diff does not converge"
        bound: list[rq.ActivateListener] = []
        for request in requests:
            if isinstance(request, rq.ActivateListener):
                key = (request.proxy, request.address)
                if key in self.pool.sockets:
                    continue
                try:
                    self.pool.sockets.bind(*key)
                except OSError as error:
                    for done in bound:
                        self.pool.sockets.close(done.proxy, done.address)
                    raise BindRefused(request.proxy, request.address, error) from None
                bound.append(request)
        for request in requests:
            self.state.apply(request)
        warn_unhonoured(requests)
        workers = self.pool.started_workers()
        problems: list[str] = []
        if requests:
            if sending is not None:
                await sending(len(requests), len(workers))
            problems = await self.fan_out(requests, workers)
        return requests, problems

    async def set_logging(self, request_id: str, level_filter: str, reply: Reply) -> None:
        """Set the log level of the supervisor, every worker and the workers launched later."""
        level = parse_log_level(level_filter)
        if level is None:
            await reply(
                failure(
                    request_id,
                    f"invalid log level {level_filter!r} "
                    "(expected error, warn, info, debug or trace)",
                )
            )
            return
        logging.getLogger().setLevel(level)
        self.pool.log_level = level.lower()
        workers = self.pool.started_workers()
        problems = await self.fan_out([rq.Logging(filter=level_filter)], workers)
        self.events.publish("LOGGING_LEVEL_CHANGED", message=level.lower())
        await reply(ok(request_id, self.summary(f"Logging {level}", len(workers), problems)))

    @staticmethod
    def summary(kind: str, count: int, problems: list[str]) -> str:
        if not problems:
            return f"{kind} applied by the supervisor and {count} workers"
        return (
            f"{kind} applied by the supervisor; {'; '.join(problems)} "
            "(by workers launched with the full state)"
        )

    def _bind_activations(self, requests: list[Request]) -> list[str]:
        """Bind the sockets of listeners `requests` activate; the bind errors."""
        errors = []
        for request in requests:
            if isinstance(request, rq.ActivateListener):
                try:
                    self.pool.sockets.bind(request.proxy, request.address)
                except OSError as error:
                    errors.append(
                        f"cannot bind {request.proxy} listener {request.address}: {error}"
                    )
        return errors

    async def fan_out(self, requests: list[Request], workers: list[Worker]) -> list[str]:
        """Send `requests` in order to each worker; the problems, one per worker that failed.

        A listener's sockets go to each worker before its activation, and the supervisor's
        duplicates are closed after every worker has deactivated or removed it. A worker that
        refuses one or stays silent past `worker_timeout` is replaced.
        """
        problems: list[str] = self._bind_activations(requests)
        timeout = self.worker_timeout

        async def one(worker: Worker) -> None:
            # Up to FAN_OUT_WINDOW requests are in flight to the worker: it answers them in
            # order, and a state of 10,000 clusters does not wait for 20,000 round trips.
            window: collections.deque[tuple[Request, PendingCall]] = collections.deque()

            async def settle_oldest() -> bool:
                """Read the oldest answer; False when the worker is out (resynced, replaced,
                or lost), the calls still in flight then abandoned."""
                request, pending = window.popleft()
                with trio.move_on_after(timeout) as scope:
                    try:
                        response = await pending.answer()
                    except ConnectionLost as error:
                        # The worker died: its slot relaunches it (a crash, with backoff).
                        problems.append(f"worker {worker.id} lost ({error})")
                        return False
                    if response.status != "ok":
                        problem = f"refused {request_kind(request)} ({response.message})"
                        problems.append(f"worker {worker.id} {problem}: resynced")
                        # It answers, so it keeps its connections: a successor replays
                        # the whole state and takes its slot (a worker upgrade).
                        self.pool.resync(worker, problem)
                        return False
                if scope.cancelled_caught:
                    problem = f"no answer to {request_kind(request)} within {timeout:g} s"
                    problems.append(f"worker {worker.id} {problem}: replaced")
                    self.pool.replace(worker, problem)
                    return False
                return True

            try:
                for batch in _batches(requests):
                    if isinstance(batch[0], rq.ActivateListener):
                        request = batch[0]
                        while window:
                            if not await settle_oldest():
                                return
                        try:
                            await self.pool.send_sockets(worker, [(request.proxy, request.address)])
                        except (OSError, trio.TooSlowError, trio.ClosedResourceError) as error:
                            problems.append(f"worker {worker.id} did not get the sockets ({error})")
                            self.pool.replace(worker, "listener sockets not delivered")
                            return
                    while len(window) + len(batch) > FAN_OUT_WINDOW:
                        if not await settle_oldest():
                            return
                    try:
                        pendings = await worker.mux.send_batch(batch)
                    except ConnectionLost as error:
                        problems.append(f"worker {worker.id} lost ({error})")
                        return
                    window.extend(zip(batch, pendings, strict=True))
                while window:
                    if not await settle_oldest():
                        return
            finally:
                for _, pending in window:
                    pending.abandon()

        async with trio.open_nursery() as nursery:
            for worker in workers:
                nursery.start_soon(one, worker)
        for request in requests:
            if isinstance(request, rq.DeactivateListener | rq.RemoveListener):
                # A batch may remove then re-add and activate it (a changed listener).
                listener = self.state.listener(request.proxy, request.address)
                if listener is None or not listener.active:
                    self.pool.sockets.close(request.proxy, request.address)
        return sorted(problems)


DEFAULT_SOURCE_NAME = "<default>"


class BindRefused(Exception):
    """A listener a new state activates cannot be bound."""

    def __init__(self, proxy: str, address: str, error: OSError) -> None:
        super().__init__(f"cannot bind {proxy} listener {address}: {error}")
        self.proxy = proxy
        self.address = address


async def _nobody(response: Response) -> bool:
    return False


def target_state(loaded: LoadedConfig) -> ConfigState:
    """The state a configuration describes; StateError naming the request if refused."""
    state = ConfigState()
    for index, request in enumerate(loaded.requests):
        try:
            state.apply(request)
        except StateError as error:
            raise StateError(
                f"configuration request #{index + 1} ({request_kind(request)}) refused: {error}"
            ) from None
    return state


def is_sequenced(request: Request) -> bool:
    """Requests that go through the mutation queue."""
    return request.ROUTING == "state" or isinstance(
        request, rq.LoadState | rq.SoftStop | rq.HardStop
    )
