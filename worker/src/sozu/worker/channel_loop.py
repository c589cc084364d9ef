"""The worker's side of its channel: Hello, then one answer per request, in order.

The worker keeps its own `ConfigState` copy, changed by the same requests as the
supervisor's, and reports its hash in its Status answers. No proxying yet: listener
activations only change that state.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field

import trio

from sozu.command import requests as rq
from sozu.command import state as state_module
from sozu.command.channel import FramedConnection, Rejected
from sozu.command.envelope import PROTOCOL_VERSION, Response, failure, ok
from sozu.command.framing import DEFAULT_MAX_FRAME_SIZE
from sozu.command.requests import Request, request_kind
from sozu.command.responses import WorkerHello, WorkerInfo, WorkerInfos
from sozu.command.state import ConfigState
from sozu.command.state_errors import StateError
from sozu.worker.build import build_id
from sozu.worker.state_queries import QUERY_TYPES, answer_query

HELLO_ID = "HELLO"
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
            level = logging.getLevelName(request.log_level.upper())
            if isinstance(level, int):
                logging.getLogger().setLevel(level)
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
        if isinstance(request, QUERY_TYPES):
            return answer_query(self.state, request_id, request)
        return failure(request_id, f"{request_kind(request)} is not handled by workers")


async def serve_channel(
    core: WorkerCore, channel: socket.socket, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> int:
    """Run the channel until a stop request or the supervisor goes away; the exit status."""
    async with FramedConnection.from_socket(channel, max_frame_size=max_frame_size) as conn:
        hello = WorkerHello(protocol_version=PROTOCOL_VERSION, build_id=build_id(), pid=os.getpid())
        await conn.send_response(ok(HELLO_ID, content=hello))
        while True:
            try:
                item = await conn.receive_request()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                item = None
            if item is None:
                log.info("channel closed by the supervisor, exiting")
                return 0
            if isinstance(item, Rejected):
                await conn.send_response(item.failure())
                continue
            response = core.handle(item.id, item.request)
            if response.status == "failure":
                log.warning(
                    "%s %s refused: %s", request_kind(item.request), item.id, response.message
                )
            await conn.send_response(response)
            if core.stopping:
                log.info("stopping on %s", request_kind(item.request))
                return 0
