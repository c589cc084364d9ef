"""Command frames over trio streams, and answers correlated with requests by id.

`FramedConnection` carries the protocol's frames (a 4-byte length, then a msgpack envelope) on
one trio stream: the command socket's connections and the supervisor's worker channels alike.
Server side, `receive_request()` returns requests, or `Rejected` items to answer with a Failure
(unknown kind, newer version, invalid fields, oversize frame); a frame without a readable id
raises `ProtocolError` after closing the connection. Client side, `receive_response()` returns
answers. `RequestMux` keeps several requests in flight on one connection and hands each answer
to the call waiting for its id; answers matching no call (a worker's "EVENT" pushes) go to a
callback.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Final, Generic, Self, TypeVar

import msgspec
import trio

from sozu.command.envelope import (
    PROTOCOL_VERSION,
    ProtocolError,
    RejectedRequest,
    RequestEnvelope,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
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
from sozu.command.requests import Request, request_kind

RECEIVE_SIZE: Final = 65536

_T = TypeVar("_T")
ResponseCallback = Callable[[Response], object]


class Rejected(msgspec.Struct, frozen=True):
    """A request frame with a readable id that cannot be served; answer it with `failure()`."""

    request_id: str
    message: str

    def failure(self) -> Response:
        return Response(id=self.request_id, status="failure", message=self.message)


class ConnectionLost(Exception):
    """The connection ended before the final answer to a request."""


class _Items(Generic[_T]):
    """Async iterator over `receive()` results, ending at the first None (end of stream).

    A plain class rather than an async generator: leaving an `async for` early then needs no
    generator finalisation.
    """

    __slots__ = ("_receive",)

    def __init__(self, receive: Callable[[], Awaitable[_T | None]]) -> None:
        self._receive = receive

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> _T:
        item = await self._receive()
        if item is None:
            raise StopAsyncIteration
        return item


class FramedConnection:
    """Frames on a trio stream: whole frames from concurrent senders, one reader at a time.

    The connection closes itself when the peer breaks the protocol or a send is interrupted
    part-way (nothing written after a cut frame could be parsed); `error` then says why.
    """

    __slots__ = ("_error", "_max", "_reader", "_send_lock", "_stream")

    def __init__(
        self, stream: trio.abc.Stream, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> None:
        self._stream = stream
        self._max = max_frame_size
        self._reader = FrameReader(max_frame_size)
        self._send_lock = trio.StrictFIFOLock()
        self._error: str | None = None

    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> Self:
        """Wrap a connected SOCK_STREAM socket (an inherited socketpair end, ...); owns it."""
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        return cls(stream, max_frame_size=max_frame_size)

    @classmethod
    async def connect_unix(
        cls, path: str | os.PathLike[str], *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> Self:
        """Connect to a unix command socket."""
        return cls(await trio.open_unix_socket(path), max_frame_size=max_frame_size)

    @property
    def stream(self) -> trio.abc.Stream:
        return self._stream

    @property
    def max_frame_size(self) -> int:
        return self._max

    @property
    def error(self) -> str | None:
        """Why the connection closed itself, if it did."""
        return self._error

    async def aclose(self) -> None:
        await self._stream.aclose()

    def take_buffered(self) -> bytes:
        """Bytes received but not yet returned as a frame (for a supervisor upgrade)."""
        return self._reader.take_buffered()

    def prefill(self, data: bytes) -> None:
        """Bytes the previous owner of this stream had received but not framed yet."""
        self._reader.feed(data)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _close_broken(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
        await trio.aclose_forcefully(self._stream)

    # -- sending

    async def send_payload(self, payload: bytes) -> None:
        """Send one frame (prefix and payload in one write, never interleaved with another)."""
        frame = encode_frame(payload)
        async with self._send_lock:
            # The lock may have been acquired with a cancellation pending: raise it now, while
            # nothing of this frame is written, rather than from the middle of send_all.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                await self._stream.send_all(frame)
            except BaseException as error:
                await self._close_broken(f"send interrupted: {error!r}")
                raise

    async def send_request(
        self, request_id: str, request: Request, *, version: int = PROTOCOL_VERSION
    ) -> None:
        await self.send_payload(encode_request(request_id, request, version))

    async def send_requests(self, calls: list[tuple[str, Request]]) -> None:
        """Send several requests in one write (their frames in order, nothing between)."""
        frames = b"".join(encode_frame(encode_request(rid, request)) for rid, request in calls)
        async with self._send_lock:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                await self._stream.send_all(frames)
            except BaseException as error:
                await self._close_broken(f"send interrupted: {error!r}")
                raise

    async def send_response(self, response: Response) -> None:
        """Send an answer; one over the maximum frame size is replaced by a Failure naming it."""
        payload = encode_response(response)
        if len(payload) > self._max:
            message = f"response of {len(payload)} bytes exceeds the maximum of {self._max} bytes"
            payload = encode_response(failure(response.id, message))
        await self.send_payload(payload)

    # -- receiving

    async def receive_frame(self) -> bytes | OversizeFrame | None:
        """The next frame's payload, an `OversizeFrame` once one was skipped, None at EOF.

        Frames already buffered are returned without a scheduler pass. Raises `ProtocolError`
        (after closing) if the stream ends inside a frame.
        """
        reader = self._reader
        while (frame := reader.next_frame()) is None:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError as error:
                await self._close_broken(f"connection broken: {error.__cause__ or error}")
                raise
            if not data:
                try:
                    reader.check_eof()
                except FrameError as error:
                    await self._close_broken(str(error))
                    raise ProtocolError(str(error)) from None
                return None
            reader.feed(data)
        return frame

    async def _oversize(self, what: str, frame: OversizeFrame) -> tuple[str, str]:
        """The id and message answering an oversize frame; closes the connection and raises
        `ProtocolError` when the frame's head has no readable id."""
        message = f"{what} of {frame.length} bytes exceeds the maximum of {self._max} bytes"
        request_id = peek_id(frame.head)
        if request_id is None:
            message += ", and no request id can be read from it"
            await self._close_broken(message)
            raise ProtocolError(message)
        return request_id, message

    async def receive_request(self) -> RequestEnvelope | Rejected | None:
        """The next request, or a `Rejected` to answer with a Failure; None at EOF.

        Raises `ProtocolError` after closing the connection when a frame has no readable id.
        """
        frame = await self.receive_frame()
        if frame is None:
            return None
        if isinstance(frame, OversizeFrame):
            request_id, message = await self._oversize("frame", frame)
            return Rejected(request_id, message)
        try:
            return decode_request(frame)
        except RejectedRequest as rejected:
            return Rejected(rejected.request_id, rejected.message)
        except ProtocolError as error:
            await self._close_broken(str(error))
            raise

    async def receive_response(self) -> Response | None:
        """The next answer, None at EOF.

        An oversize answer whose id can be read becomes a Failure for that id; an unreadable
        one raises `ProtocolError` after closing the connection.
        """
        frame = await self.receive_frame()
        if frame is None:
            return None
        if isinstance(frame, OversizeFrame):
            request_id, message = await self._oversize("response", frame)
            return failure(request_id, message)
        try:
            return decode_response(frame)
        except ProtocolError as error:
            await self._close_broken(str(error))
            raise

    def requests(self) -> AsyncIterator[RequestEnvelope | Rejected]:
        """`async for item in connection.requests()`: `receive_request()` until EOF."""
        return _Items(self.receive_request)

    def responses(self) -> AsyncIterator[Response]:
        """`async for response in connection.responses()`: `receive_response()` until EOF."""
        return _Items(self.receive_response)


class RequestMux:
    """Several requests in flight on one connection, each answer routed to its caller by id.

    Start `run()` in a nursery: it reads answers until the connection ends, then fails every
    call still waiting with `ConnectionLost` and closes the connection. It owns the connection.
    Answers whose id matches no call in flight (events pushed by a worker as "EVENT", late
    answers to abandoned calls, a worker's Hello) go to `on_unsolicited`, which runs in the
    reader task: it must not block, and an exception from it ends `run()` with it.
    """

    __slots__ = ("_closed", "_closing", "_connection", "_ids", "_on_unsolicited", "_pending")

    def __init__(
        self, connection: FramedConnection, *, on_unsolicited: ResponseCallback | None = None
    ) -> None:
        self._connection = connection
        self._on_unsolicited = on_unsolicited
        self._pending: dict[str, trio.MemorySendChannel[Response]] = {}
        self._ids = itertools.count(1)
        self._closed: str | None = None
        self._closing = False

    @property
    def connection(self) -> FramedConnection:
        return self._connection

    @property
    def closed_reason(self) -> str | None:
        """Why `run()` ended; None while it runs (or before it started)."""
        return self._closed

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def aclose(self) -> None:
        """Close the connection; `run()` then ends and waiting calls raise `ConnectionLost`."""
        self._closing = True
        await self._connection.aclose()

    async def run(self) -> None:
        """Route answers until the connection ends; a misbehaving peer never makes it raise."""
        reason = "reader stopped"
        try:
            while (response := await self._connection.receive_response()) is not None:
                self._dispatch(response)
            reason = "connection closed by the peer"
        except ProtocolError as error:
            reason = f"protocol error: {error}"
        except trio.BrokenResourceError:
            reason = self._connection.error or "connection broken"
        except trio.ClosedResourceError:
            if self._closing:
                reason = "connection closed locally"
            else:
                reason = self._connection.error or "connection closed"
        finally:
            self._closed = reason
            for channel in self._pending.values():
                channel.close()
            self._pending.clear()
            await trio.aclose_forcefully(self._connection.stream)

    def _dispatch(self, response: Response) -> None:
        channel = self._pending.get(response.id)
        if channel is None:
            if self._on_unsolicited is not None:
                self._on_unsolicited(response)
            return
        channel.send_nowait(response)
        if response.status != "processing":
            del self._pending[response.id]
            channel.close()

    def new_request_id(self, request: Request) -> str:
        """A fresh id naming the request's kind, e.g. `AddCluster-12`."""
        return f"{request_kind(request)}-{next(self._ids)}"

    async def call(
        self,
        request: Request,
        *,
        on_processing: ResponseCallback | None = None,
        request_id: str | None = None,
    ) -> Response:
        """Send `request` and return its final answer (`ok` or `failure`).

        `processing` answers that come first are passed to `on_processing`, in order, in this
        task. Raises `ConnectionLost` if the connection ends before the final answer, and
        `ValueError` if `request_id` is already in flight. Cancelling a call abandons it: a
        late answer then goes to `on_unsolicited`.
        """
        pending = await self.send(request, request_id=request_id)
        return await pending.answer(on_processing=on_processing)

    async def send(self, request: Request, *, request_id: str | None = None) -> PendingCall:
        """Send `request` now; its answer is awaited later with `PendingCall.answer()` (calls
        sent one after the other from one task reach the peer in that order). A pending call
        that is not awaited must be `abandon()`ed."""
        if request_id is None:
            request_id = self.new_request_id(request)
        if self._closed is not None:
            raise ConnectionLost(f"cannot send {request_id}: {self._closed}")
        if request_id in self._pending:
            raise ValueError(f"request id {request_id!r} is already in flight")
        # Unbounded, so that the reader never waits on one slow caller; the peer only sends
        # what this call asked for.
        send, receive = trio.open_memory_channel[Response](math.inf)
        self._pending[request_id] = send
        pending = PendingCall(self, request_id, send, receive)
        try:
            await self._connection.send_request(request_id, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            pending.abandon()
            reason = self._closed or self._connection.error or repr(error)
            raise ConnectionLost(f"cannot send {request_id}: {reason}") from error
        except BaseException:
            pending.abandon()
            raise
        return pending

    async def send_batch(self, requests: list[Request]) -> list[PendingCall]:
        """`send` for several requests at once, in one write: their answers are awaited later,
        in order, with each `PendingCall.answer()`."""
        if self._closed is not None:
            raise ConnectionLost(f"cannot send: {self._closed}")
        calls: list[tuple[str, Request]] = []
        pendings: list[PendingCall] = []
        for request in requests:
            request_id = self.new_request_id(request)
            assert request_id not in self._pending
            send, receive = trio.open_memory_channel[Response](math.inf)
            self._pending[request_id] = send
            pendings.append(PendingCall(self, request_id, send, receive))
            calls.append((request_id, request))
        try:
            await self._connection.send_requests(calls)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            for pending in pendings:
                pending.abandon()
            reason = self._closed or self._connection.error or repr(error)
            raise ConnectionLost(f"cannot send: {reason}") from error
        except BaseException:
            for pending in pendings:
                pending.abandon()
            raise
        return pendings


class PendingCall:
    """A request sent through a `RequestMux` whose final answer is still to be read."""

    __slots__ = ("_mux", "_receive", "_send", "request_id")

    def __init__(
        self,
        mux: RequestMux,
        request_id: str,
        send: trio.MemorySendChannel[Response],
        receive: trio.MemoryReceiveChannel[Response],
    ) -> None:
        self._mux = mux
        self.request_id = request_id
        self._send = send
        self._receive = receive

    async def answer(self, *, on_processing: ResponseCallback | None = None) -> Response:
        """The final answer; `ConnectionLost` if the connection ends first. Abandoned when
        this returns, raises or is cancelled (a late answer goes to `on_unsolicited`)."""
        try:
            async for response in self._receive:
                if response.status != "processing":
                    return response
                if on_processing is not None:
                    on_processing(response)
            raise ConnectionLost(f"no answer to {self.request_id}: {self._mux._closed}")
        finally:
            self.abandon()

    def abandon(self) -> None:
        if self._mux._pending.get(self.request_id) is self._send:
            del self._mux._pending[self.request_id]
        self._send.close()
        self._receive.close()


__all__ = [
    "RECEIVE_SIZE",
    "ConnectionLost",
    "FramedConnection",
    "PendingCall",
    "Rejected",
    "RequestMux",
    "ResponseCallback",
]
