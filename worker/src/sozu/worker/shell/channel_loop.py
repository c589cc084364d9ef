"""The worker's side of its channel: Hello, then one answer per request, in order.

The worker keeps its own `ConfigState` copy, changed by the same requests as the
supervisor's, and reports its hash in its Status answers. The channel loop runs next to the
proxy tasks (`Proxies`): listener activations start serving the sockets the supervisor sent,
deactivations stop them, and backend events go to the supervisor as unsolicited answers.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass, field

import msgspec
import trio

from sozu.command import requests as rq
from sozu.command import state as state_module
from sozu.command.build import build_id
from sozu.command.channel import FramedConnection, Rejected
from sozu.command.envelope import PROTOCOL_VERSION, Response, failure, ok
from sozu.command.framing import DEFAULT_MAX_FRAME_SIZE
from sozu.command.log_levels import parse_log_level
from sozu.command.log_targets import route_logs
from sozu.command.requests import Request, request_kind
from sozu.command.responses import Event, MetricsReport, WorkerHello, WorkerInfo, WorkerInfos
from sozu.command.state import ConfigState
from sozu.command.state_errors import StateError
from sozu.command.state_queries import QUERY_TYPES, answer_query
from sozu.worker.shell.proxies import Proxies
from sozu.worker.shell.takeover_wait import wait_for_takeover

HELLO_ID = "HELLO"
EVENT_ID = "EVENT"
log = logging.getLogger("sozu.worker")


@dataclass
class WorkerCore:
    """What a worker knows: its identity, its settings and its state."""

    worker_id: int
    slot: int = -1
    state: ConfigState = field(default_factory=ConfigState)
    server_config: rq.ServerConfig | None = None
    stopping: bool = False

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.worker_id,
            slot=self.slot,
            pid=os.getpid(),
            state="draining" if self.stopping else "running",
            build_id=build_id(),
            state_hash=self.state.hash(),
        )

    def handle(self, request_id: str, request: Request) -> Response:
        """The answer to one request; sets `stopping` on a stop request."""
        if isinstance(request, rq.ServerConfig):
            if request.protocol_version > PROTOCOL_VERSION:
                return failure(
                    request_id, f"unsupported protocol version {request.protocol_version}"
                )
            self.server_config = request
            self.slot = request.slot
            if request.debug:
                state_module.FULL_INVARIANT_CHECKS = True
            server_level = parse_log_level(request.log_level)
            if server_level is not None:
                logging.getLogger().setLevel(server_level)
            return ok(request_id)
        if isinstance(request, rq.SoftStop | rq.HardStop):
            self.stopping = True
            return ok(request_id, f"worker {self.worker_id} stopped")
        if self.server_config is None:
            return failure(request_id, "ServerConfig must come first")
        if request.ROUTING == "state":
            try:
                self.state.apply(request)
            except StateError as error:
                return failure(request_id, str(error))
            return ok(request_id)
        if isinstance(request, rq.Status):
            return ok(request_id, content=WorkerInfos(workers=(self.info(),)))
        if isinstance(request, rq.Logging):
            level = parse_log_level(request.filter)
            if level is None:
                return failure(request_id, f"invalid log level {request.filter!r}")
            logging.getLogger().setLevel(level)
            return ok(request_id, f"worker {self.worker_id} logs at {level}")
        if isinstance(request, QUERY_TYPES):
            return answer_query(self.state, request_id, request)
        return failure(request_id, f"{request_kind(request)} is not handled by workers")


_CLUSTER_REQUESTS = (
    rq.AddCluster,
    rq.RemoveCluster,
    rq.AddBackend,
    rq.RemoveBackend,
    rq.AddTcpFrontend,
    rq.RemoveTcpFrontend,
    rq.SetHealthCheck,
    rq.RemoveHealthCheck,
)
_HTTP_FRONT_REQUESTS = (
    rq.AddHttpFrontend,
    rq.RemoveHttpFrontend,
    rq.AddHttpsFrontend,
    rq.RemoveHttpsFrontend,
)
_CERTIFICATE_REQUESTS = (rq.AddCertificate, rq.ReplaceCertificate, rq.RemoveCertificate)
_UDP_REQUESTS = (
    rq.AddCluster,
    rq.RemoveCluster,
    rq.AddBackend,
    rq.RemoveBackend,
    rq.AddUdpFrontend,
    rq.RemoveUdpFrontend,
    rq.UpdateUdpListener,
)


def _cluster_id(request: Request) -> str:
    """The one cluster a cluster-scoped request changes."""
    if isinstance(request, rq.AddCluster):
        return request.cluster.cluster_id
    if isinstance(request, rq.AddBackend):
        return request.backend.cluster_id
    if isinstance(request, rq.AddTcpFrontend | rq.RemoveTcpFrontend):
        return request.frontend.cluster_id
    assert isinstance(
        request, rq.RemoveCluster | rq.RemoveBackend | rq.SetHealthCheck | rq.RemoveHealthCheck
    )
    return request.cluster_id


def _injected_refusal(request: Request) -> str | None:
    """Tests make workers refuse state requests with `SOZU_FAULT_REFUSE=<path>`: while that
    file exists, a request whose JSON contains the file's text is refused, as a worker-side
    bug would refuse it. Unset (production), this costs one dictionary lookup."""
    path = os.environ.get("SOZU_FAULT_REFUSE")
    if path is None or request.ROUTING != "state":
        return None
    try:
        needle = open(path, encoding="utf-8").read().strip()  # noqa: SIM115
    except OSError:
        return None
    if needle and needle in msgspec.json.encode(request).decode():
        return f"fault injection: refusing a request that contains {needle!r}"
    return None


async def handle(core: WorkerCore, proxies: Proxies, request_id: str, request: Request) -> Response:
    """`core.handle` plus what it means for the listeners, clusters and metrics."""
    refusal = _injected_refusal(request)
    if refusal is not None:
        return failure(request_id, refusal)
    if isinstance(request, rq.ActivateListener) and core.server_config is not None:
        key = (request.proxy, request.address)
        config = core.state.listener(*key)
        if config is not None and not config.active:
            try:
                sock = await proxies.take_socket(key)
            except OSError as error:
                return failure(request_id, str(error))
            response = core.handle(request_id, request)
            if response.status == "ok":
                await proxies.start_listener(request.proxy, request.address, sock)
            else:
                sock.close()
            return response
    if isinstance(request, rq.AdoptListeners):
        try:
            count = await proxies.adopt_slot(request.slot, request.count)
        except OSError as error:
            return failure(request_id, str(error))
        return ok(request_id, f"serving {count} listener sockets of slot {request.slot}")
    if isinstance(request, rq.ReleaseListeners):
        proxies.release_slot(request.slot)
        return ok(request_id, f"released the listener sockets of slot {request.slot}")
    if isinstance(request, rq.QueryMetrics):
        return ok(request_id, content=MetricsReport(snapshot=proxies.snapshot()))
    if isinstance(request, rq.ConfigureMetrics):
        if request.config == "CLEAR":
            proxies.clear_metrics()
        else:
            # Upstream's meaning: DISABLED stops the per-cluster and per-backend series.
            proxies.cluster_metrics = request.config == "ENABLED"
        return ok(request_id)
    if isinstance(request, rq.SetMaxConnectionsPerIp):
        proxies.per_ip.configure(request.limit, proxies.per_ip.default_retry_after)
        return ok(request_id, f"at most {request.limit} connections per (cluster, client IP)")
    response = core.handle(request_id, request)
    if isinstance(request, rq.ServerConfig) and response.status == "ok":
        proxies.configure(
            request.max_connections,
            request.buffer_size,
            max_connections_per_ip=request.max_connections_per_ip,
            retry_after=request.retry_after,
            cluster_metrics=not request.disable_cluster_metrics,
            drain_timeout=request.drain_timeout,
        )
        proxies.http.configure_access_logs(request.access_logs_target, core.worker_id)
        proxies.http.tls_ticket_keys = request.tls_ticket_keys
        if request.log_target is not None:
            route_logs(request.log_target)
    if response.status == "ok" and request.ROUTING == "state":
        if isinstance(request, rq.DeactivateListener | rq.RemoveListener):
            await proxies.stop_listener(request.proxy, request.address)
        if isinstance(request, rq.AddTcpFrontend | rq.RemoveTcpFrontend):
            proxies.tcp_frontend_changed(request.frontend.address)
        if isinstance(request, _CLUSTER_REQUESTS):
            proxies.refresh_cluster(_cluster_id(request))
        if isinstance(request, rq.UpdateTcpListener):
            proxies.refresh_listener(request.address)
        if isinstance(request, _HTTP_FRONT_REQUESTS):
            https = isinstance(request, rq.AddHttpsFrontend | rq.RemoveHttpsFrontend)
            added = isinstance(request, rq.AddHttpFrontend | rq.AddHttpsFrontend)
            proxies.http.frontend_changed(request.frontend, https=https, added=added)
            if request.frontend.cluster_id is not None:
                proxies.refresh_cluster(request.frontend.cluster_id)
        if isinstance(request, rq.UpdateHttpListener):  # UpdateHttpsListener too
            proxies.http.refresh_listener(request.address)
        if isinstance(request, _CERTIFICATE_REQUESTS):
            proxies.http.refresh_certificates(request.address)
        if isinstance(request, _UDP_REQUESTS):
            proxies.udp.refresh_clusters()
    return response


async def _forward_events(conn: FramedConnection, events: trio.MemoryReceiveChannel[Event]) -> None:
    async for event in events:
        try:
            await conn.send_response(ok(EVENT_ID, content=event))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def serve_channel(
    core: WorkerCore,
    channel: socket.socket,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    scm: socket.socket | None = None,
) -> int:
    """Run the channel and the proxies until a stop request, or until the supervisor is gone
    and nobody took this worker over (see takeover_wait.py).

    Returns the exit status. Sessions run in their own nursery: a soft stop stops the accept
    loops, waits for sessions (at most `drain_timeout`), then answers; a hard stop answers
    and cancels them.
    """
    events_in, events_out = trio.open_memory_channel[Event](math.inf)
    proxies = Proxies(core.state, events_in.send_nowait)
    try:
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as tasks:
                proxies.start(tasks, handlers)
                hello = True
                while True:
                    status = await _serve_supervisor(
                        core, proxies, channel, scm, events_out, max_frame_size, hello=hello
                    )
                    if status != ORPHANED:
                        break
                    taken = await _orphaned(core, proxies)
                    if taken is None:
                        status = 0
                        break
                    channel, scm = taken
                    hello = False  # the takeover offer said who this worker is
                tasks.cancel_scope.cancel()
            handlers.cancel_scope.cancel()
        return status
    finally:
        proxies.close()


# `_serve_requests`: the channel closed while this worker serves, no stop was asked.
ORPHANED = -1


async def _serve_supervisor(
    core: WorkerCore,
    proxies: Proxies,
    channel: socket.socket,
    scm: socket.socket | None,
    events: trio.MemoryReceiveChannel[Event],
    max_frame_size: int,
    *,
    hello: bool,
) -> int:
    """Serve one supervisor's channel until it ends; the exit status, or ORPHANED."""
    async with FramedConnection.from_socket(channel, max_frame_size=max_frame_size) as conn:
        if hello:
            greeting = WorkerHello(
                protocol_version=PROTOCOL_VERSION, build_id=build_id(), pid=os.getpid()
            )
            await conn.send_response(ok(HELLO_ID, content=greeting))
        async with trio.open_nursery() as link:
            if scm is not None:
                link.start_soon(proxies.receive_sockets, trio.socket.from_stdlib_socket(scm))
            link.start_soon(_forward_events, conn, events)
            status = await _serve_requests(core, proxies, conn)
            link.cancel_scope.cancel()
    return status


async def _orphaned(
    core: WorkerCore, proxies: Proxies
) -> tuple[socket.socket, socket.socket] | None:
    """The supervisor is gone: serve on until a new one takes over (its channel), or drain."""
    config = core.server_config
    assert config is not None
    path = config.takeover_path
    taken = None
    if path is not None and not proxies.returned:
        taken = await wait_for_takeover(
            path=path,
            worker_id=core.worker_id,
            slot=core.slot,
            state_hash=core.state.hash(),
            proxies=proxies,
            patience=config.drain_timeout,
        )
    if taken is None:
        proxies.stop_accepting()
        if not await proxies.drain(config.drain_timeout):
            log.info("drain timeout: closing %d sessions", proxies.limit.active)
    return taken


async def _serve_requests(core: WorkerCore, proxies: Proxies, conn: FramedConnection) -> int:
    while True:
        try:
            item = await conn.receive_request()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            item = None
        if item is None:
            if core.server_config is None or core.stopping:
                log.info("channel closed by the supervisor, exiting")
                return 0
            return ORPHANED
        if isinstance(item, Rejected):
            await conn.send_response(item.failure())
            continue
        request = item.request
        if isinstance(request, rq.ReturnListenSockets):
            # An upgrade: the successor serves the slot's sockets; sessions go on here.
            proxies.stop_accepting()
            proxies.returned = True
            await conn.send_response(ok(item.id, "stopped accepting"))
            continue
        if isinstance(request, rq.SoftStop):
            proxies.stop_accepting()
            drain_timeout = core.server_config.drain_timeout if core.server_config else 0
            if not await proxies.drain(drain_timeout):
                log.info("drain timeout: closing %d sessions", proxies.limit.active)
        try:
            response = await handle(core, proxies, item.id, request)
            if isinstance(request, rq.SoftStop | rq.HardStop) and response.status == "ok":
                # What it counted while draining: nobody polls a stopping worker any more.
                snapshot = MetricsReport(snapshot=proxies.snapshot())
                response = ok(response.id, response.message, content=snapshot)
        except Exception as error:
            # A bug in applying one request must not take the worker and its connections down:
            # the supervisor gets a Failure and resyncs this worker.
            log.exception("%s %s failed", request_kind(request), item.id)
            response = failure(item.id, f"worker error: {type(error).__name__}: {error}")
        if response.status == "failure":
            log.warning("%s %s refused: %s", request_kind(request), item.id, response.message)
        await conn.send_response(response)
        if core.stopping:
            log.info("stopping on %s", request_kind(request))
            return 0
