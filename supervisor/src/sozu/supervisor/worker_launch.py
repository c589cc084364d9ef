"""Launching a worker into a slot: its process and channels, the start-up handshake (Hello,
ServerConfig, state replay with listeners inactive, listener sockets, activations, Ready),
then the watch on its channel and on its exit."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

import trio

from sozu.command import requests as rq
from sozu.command.channel import ConnectionLost, FramedConnection, RequestMux
from sozu.command.envelope import PROTOCOL_VERSION, ProtocolError, Response
from sozu.command.fdpass import send_listeners
from sozu.command.requests import Request, request_kind
from sozu.command.responses import WorkerHello, WorkerInfos
from sozu.command.state_replay import describe_request, generate_activate_requests
from sozu.command.takeover import takeover_path
from sozu.supervisor.empty_slots import EmptySlots
from sozu.supervisor.listener_sockets import ListenerKey
from sozu.supervisor.worker_records import (
    EXIT_GRACE,
    HELLO_TIMEOUT,
    Slot,
    Worker,
    WorkerStartError,
    worker_frame_limit,
)

log = logging.getLogger("sozu.supervisor")


class WorkerLauncher(EmptySlots):
    """The launch and start-up of the worker pool's workers."""

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
