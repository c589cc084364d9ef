"""The command socket: a unix stream socket (0600), one task per client connection.

Each connection may have several requests in flight; answers carry their request's id. A
frame that cannot be served gets a Failure; one without a readable id closes the connection.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import trio

from sozu.command.channel import FramedConnection, Rejected
from sozu.command.envelope import ProtocolError, RequestEnvelope, Response, failure
from sozu.supervisor.boundaries import ErrorCounts
from sozu.supervisor.daemon_io import StartupError
from sozu.supervisor.mutations import Reply

log = logging.getLogger("sozu.supervisor")

Dispatch = Callable[[RequestEnvelope, Reply, trio.Nursery], None]

MAX_CONNECTIONS = 256
MAX_IN_FLIGHT = 64
SEND_TIMEOUT = 10.0


def _answers(path: Path) -> bool:
    """Whether a daemon accepts connections on the unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError as error:
            if error.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise StartupError(f"cannot probe the command socket {path}: {error}") from None
    return True


class CommandSocket:
    """The bound command socket and the inode of its file, to unlink only our own."""

    def __init__(self, path: Path) -> None:
        """Bind and listen (0600); refuse if a live daemon answers, replace a stale socket."""
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise StartupError(f"{path} exists and is not a socket")
            if _answers(path):
                raise StartupError(f"another sozu daemon answers on {path}")
            log.info("removing stale command socket %s", path)
            path.unlink()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        except OSError as error:
            sock.close()
            raise StartupError(f"cannot bind the command socket {path}: {error.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(128)
        self.path = path
        self.sock = sock
        self.inode = path.stat().st_ino

    @classmethod
    def adopt(cls, fd: int, path: Path, inode: int) -> CommandSocket:
        """The command socket a previous supervisor image was serving (upgrade)."""
        os.set_inheritable(fd, False)
        adopted = cls.__new__(cls)
        adopted.path = path
        adopted.sock = socket.socket(fileno=fd)
        adopted.inode = inode
        return adopted

    def remove(self) -> None:
        """Unlink the socket file if it is still ours."""
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self.inode:
                self.path.unlink()


def _peer_uid(stream: trio.SocketStream) -> int | None:
    try:
        creds = stream.socket.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class CommandServer:
    """Accepts client connections and hands each request to `dispatch`.

    Each connection runs behind an exception boundary; at most MAX_CONNECTIONS are served at
    once (others are closed at once) and each may have MAX_IN_FLIGHT requests unanswered
    (more get a Failure). An answer the client does not read within SEND_TIMEOUT closes its
    connection, so a client that stops reading never holds up a state change. A connection
    closed on a protocol error or reset by its client is counted too.
    """

    def __init__(
        self,
        sock: socket.socket,
        dispatch: Dispatch,
        *,
        max_frame_size: int,
        allowed_uids: tuple[int, ...] | None,
        errors: ErrorCounts | None = None,
    ) -> None:
        self.listener = trio.socket.from_stdlib_socket(sock)
        self.dispatch = dispatch
        self.max_frame_size = max_frame_size
        self.allowed_uids = allowed_uids
        self.errors = errors if errors is not None else ErrorCounts()
        self.connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        serve_client = self.errors.guarded("command", self._serve_client)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    client, _ = await self.listener.accept()
                except OSError as error:
                    # EMFILE and friends: out of resources for a moment.
                    self.errors.record("command", error)
                    await trio.sleep(0.1)
                    continue
                if self.connections >= MAX_CONNECTIONS:
                    self.errors.counts[("command", "too_many_connections")] += 1
                    client.close()
                    continue
                nursery.start_soon(serve_client, trio.SocketStream(client))

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await self._serve_connection(stream)
        finally:
            self.connections -= 1

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        connection = FramedConnection(stream, max_frame_size=self.max_frame_size)
        uid = _peer_uid(stream)
        refused: str | None = None
        if self.allowed_uids is not None and uid not in self.allowed_uids:
            refused = f"unauthorized: actor UID {uid} not in command_allowed_uids"
        in_flight: set[str] = set()

        async def reply(response: Response) -> bool:
            if response.status != "processing":
                in_flight.discard(response.id)
            with trio.move_on_after(SEND_TIMEOUT) as scope:
                try:
                    await connection.send_response(response)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False
            if scope.cancelled_caught:
                # Not reading its answers: the client loses its connection, not the daemon.
                self.errors.counts[("command", "slow_reader")] += 1
                await trio.aclose_forcefully(stream)
                return False
            return True

        async with connection, trio.open_nursery() as nursery:
            while True:
                try:
                    item = await connection.receive_request()
                except ProtocolError as error:
                    self.errors.counts[("command", "ProtocolError")] += 1
                    log.warning("command connection closed: %s", error)
                    break
                except trio.BrokenResourceError as error:
                    # Reset by the client (it left with answers unread, or inside a frame).
                    self.errors.record("command", error)
                    break
                except trio.ClosedResourceError:
                    break  # closed on our side (a slow reader): counted there
                if item is None:
                    break
                if isinstance(item, Rejected):
                    nursery.start_soon(reply, item.failure())
                elif refused is not None:
                    nursery.start_soon(reply, failure(item.id, refused))
                elif len(in_flight) >= MAX_IN_FLIGHT or item.id in in_flight:
                    self.errors.counts[("command", "too_many_in_flight")] += 1
                    message = (
                        f"request id {item.id!r} is already in flight on this connection"
                        if item.id in in_flight
                        else f"more than {MAX_IN_FLIGHT} requests in flight on this connection"
                    )
                    nursery.start_soon(reply, failure(item.id, message))
                else:
                    in_flight.add(item.id)
                    self.dispatch(item, reply, nursery)
            # The client is gone: event followers and queries for it end; queued state
            # changes still run (they were accepted when they arrived).
            nursery.cancel_scope.cancel()
