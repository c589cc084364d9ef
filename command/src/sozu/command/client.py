"""Blocking command client for the CLI: one unix-socket connection to the supervisor.

Sends a request with a generated id and iterates its answers (`processing` ones, then the
final `ok` or `failure`) under an overall timeout, or follows an event subscription with no
timeout. Kept free of trio so that the CLI starts fast. Failures are typed: `DaemonUnavailable`
(no socket, refused, or the daemon went away: the CLI exits 69), `CommandTimeout`, and
`ProtocolError` for bytes that are not the protocol.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Final, Self

from sozu.command.envelope import (
    ProtocolError,
    Response,
    decode_response,
    encode_request,
    failure,
    peek_id,
)
from sozu.command.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameError,
    FrameReader,
    OversizeFrame,
    encode_frame,
)
from sozu.command.requests import Request, SubscribeEvents

DEFAULT_CONNECT_TIMEOUT_MS: Final = 5_000
RECEIVE_SIZE: Final = 65536


class DaemonUnavailable(Exception):
    """The command socket cannot be reached, or the daemon closed the connection."""


class CommandTimeout(Exception):
    """No final answer within the timeout."""


def new_request_id() -> str:
    """A random request id, unique enough for one CLI connection."""
    return f"cli-{secrets.token_hex(6)}"


class _Deadline:
    __slots__ = ("_at", "_timeout_ms")

    def __init__(self, timeout_ms: int | None) -> None:
        self._timeout_ms = timeout_ms
        self._at = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000

    def seconds_left(self) -> float | None:
        """Seconds until the deadline (None: no deadline); raises CommandTimeout once past."""
        if self._at is None:
            return None
        left = self._at - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> CommandTimeout:
        return CommandTimeout(f"no answer from the daemon within {self._timeout_ms} ms")


class CommandClient:
    """A blocking connection to the command socket.

    After a `CommandTimeout` the connection is in an unknown state: close it.
    """

    __slots__ = ("_buffer", "_max", "_reader", "_sock")

    def __init__(
        self, sock: socket.socket, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> None:
        self._sock = sock
        self._max = max_frame_size
        self._reader = FrameReader(max_frame_size)
        self._buffer = bytearray(RECEIVE_SIZE)

    @classmethod
    def connect(
        cls,
        path: str | os.PathLike[str],
        *,
        timeout_ms: int | None = DEFAULT_CONNECT_TIMEOUT_MS,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> Self:
        """Connect to the command socket at `path`; `DaemonUnavailable` if that fails."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(None if timeout_ms is None else timeout_ms / 1000)
            sock.connect(os.fspath(path))
        except OSError as error:
            sock.close()
            reason = "timed out" if isinstance(error, TimeoutError) else error.strerror or error
            if isinstance(error, ConnectionRefusedError):
                reason = f"{reason} (a socket file left by a daemon that is not running)"
            elif isinstance(error, FileNotFoundError):
                reason = f"{reason} (the daemon is not running, or uses another socket)"
            raise DaemonUnavailable(
                f"cannot connect to the command socket {os.fspath(path)}: {reason}"
            ) from error
        return cls(sock, max_frame_size=max_frame_size)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def request(
        self,
        request: Request,
        *,
        timeout_ms: int | None = None,
        request_id: str | None = None,
    ) -> Iterator[Response]:
        """Send `request` now; iterate its answers, the final one last, within `timeout_ms`.

        Raises `CommandTimeout` when the timeout (counted from this call) passes first, and
        `DaemonUnavailable` if the daemon closes the connection before the final answer.
        """
        deadline = _Deadline(timeout_ms)
        if request_id is None:
            request_id = new_request_id()
        self._send(encode_request(request_id, request), deadline)
        return self._answers(request_id, deadline)

    def call(
        self,
        request: Request,
        *,
        timeout_ms: int | None = None,
        on_processing: Callable[[Response], object] | None = None,
    ) -> Response:
        """Send `request` and return its final answer; `processing` ones go to the callback."""
        for response in self.request(request, timeout_ms=timeout_ms):
            if response.status != "processing":
                return response
            if on_processing is not None:
                on_processing(response)
        raise AssertionError("answers end with a final one")  # pragma: no cover

    def subscribe(self, request: Request | None = None) -> Iterator[Response]:
        """Send SubscribeEvents (or `request`) and yield every answer as it comes, no timeout.

        Events are `processing` answers, whatever their id. The iteration ends after a final
        answer to the subscription itself (a refusal, say), which it yields last; it raises
        `DaemonUnavailable` when the daemon closes the connection.
        """
        deadline = _Deadline(None)
        request_id = new_request_id()
        self._send(encode_request(request_id, request or SubscribeEvents()), deadline)
        return self._events(request_id, deadline)

    def _answers(self, request_id: str, deadline: _Deadline) -> Iterator[Response]:
        while True:
            response = self._receive(deadline)
            if response.id != request_id:
                continue  # not ours: a late answer to an earlier request of this connection
            yield response
            if response.status != "processing":
                return

    def _events(self, request_id: str, deadline: _Deadline) -> Iterator[Response]:
        while True:
            response = self._receive(deadline)
            yield response
            if response.id == request_id and response.status != "processing":
                return

    def _send(self, payload: bytes, deadline: _Deadline) -> None:
        try:
            self._sock.settimeout(deadline.seconds_left())
            self._sock.sendall(encode_frame(payload))
        except TimeoutError:
            raise deadline.expired() from None
        except OSError as error:
            raise DaemonUnavailable(f"cannot send to the daemon: {error}") from error

    def _receive(self, deadline: _Deadline) -> Response:
        reader = self._reader
        while (frame := reader.next_frame()) is None:
            try:
                self._sock.settimeout(deadline.seconds_left())
                received = self._sock.recv_into(self._buffer)
            except TimeoutError:
                raise deadline.expired() from None
            except OSError as error:
                raise DaemonUnavailable(f"connection to the daemon lost: {error}") from error
            if not received:
                try:
                    reader.check_eof()
                except FrameError as error:
                    raise ProtocolError(str(error)) from None
                raise DaemonUnavailable("the daemon closed the connection")
            reader.feed(memoryview(self._buffer)[:received])
        if isinstance(frame, OversizeFrame):
            message = f"response of {frame.length} bytes exceeds the maximum of {self._max} bytes"
            request_id = peek_id(frame.head)
            if request_id is None:
                raise ProtocolError(f"{message}, and no request id can be read from it")
            return failure(request_id, message)
        return decode_response(frame)


__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_MS",
    "CommandClient",
    "CommandTimeout",
    "DaemonUnavailable",
    "ProtocolError",
    "new_request_id",
]
