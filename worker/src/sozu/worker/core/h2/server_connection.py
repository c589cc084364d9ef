"""The `h2` library's server connection with a faster path for the frames every request
stream costs (sans-io): a request's HEADERS frame in, the response's HEADERS and DATA out.

The library turns each frame into objects (a frame buffer, a frame, its flags, padding and
priority parts, a repr for its trace log, events) and checks the stream count by walking
every stream; that is most of what an HTTP/2 request costs sozu. Here a complete request
HEADERS frame (END_HEADERS set, no padding, no priority part, a new stream within the
concurrency limit) is read straight from the bytes, and a response's first HEADERS and its
DATA frames are written straight to the output, each through the same calls into the
library's connection and stream state machines, HPACK coder and flow-control windows the
library makes. The library's state stays exactly what its own path leaves, so every other
frame, error and edge (CONTINUATION, padding, priority, trailers, informational responses,
resets, the preface) still goes through the library, one whole frame at a time between fast
ones (or all the rest of a read, from a frame cut by the read's end or a header block that
goes on in CONTINUATION frames).
tests/h2/test_server_connection.py holds the two paths to the same output.

This reads the library's internals (pinned to h2 4.x in worker/pyproject.toml).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final

from h2 import stream as _library_stream
from h2.connection import (
    AllowedStreamIDs,
    ConnectionInputs,
    ConnectionState,
    H2Connection,
    H2ConnectionStateMachine,
)
from h2.errors import ErrorCodes
from h2.events import Event, RequestReceived, StreamEnded
from h2.exceptions import DenialOfServiceError, ProtocolError
from h2.stream import STREAM_OPEN, H2Stream, StreamClosedBy, StreamInputs, StreamState
from h2.utilities import is_informational_response
from hpack import HPACKError, NeverIndexedHeaderTuple, OversizedHeaderListError

from sozu.worker.core.h2.flood import (
    CONTINUATION,
    DATA,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    HEADER_SIZE,
    HEADERS,
)
from sozu.worker.core.h2.hpack_out import FieldEncoder
from sozu.worker.core.h2.library import GoawayLetsStreamsFinish

# Frame header: length (24 bits, as a byte and a short), type, flags, stream id.
_HEADER: Final = struct.Struct(">BHBBL")
_PADDED: Final = 0x8
_PRIORITY: Final = 0x20
# A request HEADERS frame the fast path reads: END_HEADERS, neither PADDED nor PRIORITY.
_FAST_FLAGS_MASK: Final = FLAG_END_HEADERS | _PADDED | _PRIORITY
_OPEN: Final = STREAM_OPEN  # by stream state: counts against the concurrency limit
# The library's state machine transitions, keyed by the identities of (state, input): its
# inputs are plain Enums, whose hash is a Python call (two per lookup of its own tables).
_STREAM_MOVES: Final[dict[tuple[int, int], Any]] = {
    (id(state), id(move)): to for (state, move), to in _library_stream._transitions.items()
}
_CONNECTION_MOVES: Final[dict[tuple[int, int], Any]] = {
    (id(state), id(move)): to for (state, move), to in H2ConnectionStateMachine._transitions.items()
}
_CLOSED: Final = StreamState.CLOSED
_insert: Final = OrderedDict.__setitem__  # what SizeLimitDict's own __setitem__ calls first
_HALF_CLOSED_REMOTE: Final = StreamState.HALF_CLOSED_REMOTE
# Request header blocks whose reading a connection keeps (`_request_headers`).
KNOWN_REQUESTS: Final = 64
_CONNECTION_OPEN: Final = ConnectionState.SERVER_OPEN
# What a request stream's frames tell an open server connection (by identity): it stays open.
_STAYS_OPEN: Final = (
    ConnectionInputs.RECV_HEADERS,
    ConnectionInputs.SEND_HEADERS,
    ConnectionInputs.SEND_DATA,
)
_STAY_OPEN: Final = frozenset(id(move) for move in _STAYS_OPEN)
assert all(
    H2ConnectionStateMachine._transitions[_CONNECTION_OPEN, move] == (None, _CONNECTION_OPEN)
    for move in _STAYS_OPEN
)


def frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


class LibraryServer(GoawayLetsStreamsFinish):
    """The library's server connection with two corrections, each where the library would
    go against what the connection advertises; the reference the fast path of
    `ServerConnection` is held to (tests/h2/test_server_connection.py).

    * A new client stream past the concurrency limit is refused with RST_STREAM
      REFUSED_STREAM (RFC 9113 §5.1.2; the client may retry it, §8.7), where the library
      ends the connection (TooManyStreamsError: GOAWAY PROTOCOL_ERROR, and the streams within
      the limit lost with it). Its block is decoded all the same, so that HPACK stays in step;
      `refused` counts them for the session's rapid reset defence.
    * The header list limit of the SETTINGS sent is the decoder's from the start: the library
      gives its decoder the limit only when a changed setting is acknowledged, and the
      connection's initial `local_settings` never change.

    A client's GOAWAY with NO_ERROR leaves the connection open (`GoawayLetsStreamsFinish`):
    the session answers with its own GOAWAY and closes once the client's streams are done."""

    refused = 0

    def initiate_connection(self) -> None:
        super().initiate_connection()
        limit = self.local_settings.max_header_list_size
        if limit is not None:
            self.decoder.max_header_list_size = limit

    def _receive_headers_frame(self, frame: Any) -> tuple[list[Any], list[Event]]:
        stream_id = frame.stream_id
        if (
            stream_id in self.streams
            or not stream_id & 1
            or stream_id <= self.highest_inbound_stream_id
            or self.open_inbound_streams < self.local_settings.max_concurrent_streams
        ):
            return super()._receive_headers_frame(frame)
        _decode(self.decoder, frame.data)  # raises the library's errors (an HPACK bomb too)
        events: list[Event] = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._begin_new_stream(stream_id, AllowedStreamIDs.ODD)
        stream.state_machine.process_input(StreamInputs.RECV_HEADERS)  # its event dropped
        frames: list[Any] = stream.reset_stream(ErrorCodes.REFUSED_STREAM)
        self.refused += 1
        return frames, events


class ServerConnection(LibraryServer):
    """A server-side `H2Connection` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Request blocks read by `_request_headers`: the decoded list, its content-length
        # (None: none) and its list with cookies joined.
        self._requests: dict[
            bytes, tuple[list[tuple[bytes, bytes]], int | None, list[tuple[bytes, bytes]]]
        ] = {}

    def receive_data(self, data: Any) -> list[Event]:
        buffer = self.incoming_buffer
        if buffer._preamble_len or buffer._data or buffer._headers_buffer:
            return super().receive_data(data)
        events: list[Event] = []
        position = 0
        size = len(data)
        unpack = _HEADER.unpack_from
        # Open inbound streams, once closed ones are forgotten as the library does before it
        # admits a stream: counted at the first request of a read and after any frame the
        # library handles; between two requests read here nothing else can close a stream.
        open_streams = -1
        limit = 0  # the concurrency limit, read with each count (a library frame may change it)
        while size - position >= HEADER_SIZE:
            high, low, kind, flags, stream_id = unpack(data, position)
            end = position + HEADER_SIZE + (high << 16 | low)
            if end > size or end - position - HEADER_SIZE > self.max_inbound_frame_size:
                break
            stream_id &= 0x7FFFFFFF
            fast = (
                kind == HEADERS
                and flags & _FAST_FLAGS_MASK == FLAG_END_HEADERS
                and stream_id & 1 == 1
                and stream_id > self.highest_inbound_stream_id
            )
            if fast:
                if open_streams < 0:
                    open_streams = self._sweep()
                    limit = self.local_settings.max_concurrent_streams
                fast = open_streams < limit
            try:
                if fast:
                    events += self._request_headers(
                        stream_id, data[position + HEADER_SIZE : end], bool(flags & FLAG_END_STREAM)
                    )
                    open_streams += 1
                else:
                    # One whole frame through the library, which raises its own errors.
                    open_streams = -1
                    events += super().receive_data(data[position:end])
            except ProtocolError as error:
                buffer._data += data[end:]  # what the library leaves unread after an error
                if fast:
                    self._terminate_connection(error.error_code)
                raise
            position = end
            if buffer._headers_buffer:
                break  # a header block goes on in CONTINUATION frames
        if position < size:
            events += super().receive_data(data[position:] if position else data)
        return events

    def _sweep(self) -> int:
        """The library's `open_inbound_streams`: closed streams forgotten, open inbound ones
        counted (without its per-stream property calls)."""
        count = 0
        closed = []
        for stream_id, stream in self.streams.items():
            state = stream.state_machine.state
            if _OPEN[state]:
                count += stream_id & 1
            elif state is StreamState.CLOSED:
                closed.append(stream_id)
        if closed:
            # The library's SizeLimitDict trims to its limit after each insertion, oldest
            # first: trimming once after all of them leaves the same entries.
            forgotten: Any = self._closed_streams  # a SizeLimitDict
            for stream_id in closed:
                stream = self.streams.pop(stream_id)
                _insert(forgotten, stream_id, stream.state_machine.stream_closed_by)
            limit = forgotten._size_limit
            if limit is not None:
                while len(forgotten) > limit:
                    forgotten.popitem(last=False)
        return count

    def _request_headers(self, stream_id: int, block: bytes, end_stream: bool) -> list[Event]:
        """What the library's `_receive_headers_frame` does for a new request stream."""
        headers = _decode(self.decoder, block)
        # The same block decoded to the same list (hpack_in.py keeps them while the table
        # stays): what the library reads from that list is read once.
        known = self._requests.get(block)
        if known is not None and known[0] is not headers:
            known = None
        _connection_input(self.state_machine, ConnectionInputs.RECV_HEADERS)
        stream = self._begin_stream(stream_id)
        if known is None and is_informational_response(headers):
            # Not a request: the library's stream raises its error for it.
            return stream.receive_headers(list(headers), end_stream, None)[1]
        machine = stream.state_machine
        events = _stream_input(machine, StreamInputs.RECV_HEADERS)
        request = events[0]
        assert isinstance(request, RequestReceived), request
        if end_stream:
            ended = _stream_input(machine, StreamInputs.RECV_END_STREAM)
            assert isinstance(ended[0], StreamEnded), ended
            request.stream_ended = ended[0]
            events += ended
        if known is None:
            stream._initialize_content_length(headers)  # raises the library's errors
            joined = _joined_cookies(headers)
            requests = self._requests
            if len(requests) >= KNOWN_REQUESTS:
                requests.clear()
            requests[block] = (headers, stream._expected_content_length, joined)
        else:
            stream._expected_content_length = known[1]
            joined = known[2]
        request.headers = joined
        return events

    def _begin_stream(self, stream_id: int) -> H2Stream:
        """The library's `_begin_new_stream` for a client stream whose id the caller checked
        (odd, above every earlier one), without its debug log calls."""
        assert stream_id & 1
        assert stream_id > self.highest_inbound_stream_id
        stream = H2Stream(
            stream_id,
            config=self.config,
            inbound_window_size=self.local_settings.initial_window_size,
            outbound_window_size=self.remote_settings.initial_window_size,
        )
        stream.max_outbound_frame_size = self.max_outbound_frame_size
        self.streams[stream_id] = stream
        self.highest_inbound_stream_id = stream_id
        return stream

    def send_headers(
        self,
        stream_id: int,
        headers: Iterable[Any],
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        stream = self.streams.get(stream_id)
        if (
            stream is None
            or stream.state_machine.headers_sent
            or priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
            or not isinstance(headers, list)
            or not headers
            or type(headers[0][0]) is not bytes  # the library encodes text; sozu sends bytes
            or is_informational_response(headers)
        ):
            super().send_headers(
                stream_id,
                headers,
                end_stream,
                priority_weight,
                priority_depends_on,
                priority_exclusive,
            )
            return
        _advance(self, stream, ConnectionInputs.SEND_HEADERS, StreamInputs.SEND_HEADERS, end_stream)
        self._write_block(stream_id, self.encoder.encode(headers), end_stream)

    def _write_block(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        """HEADERS, then CONTINUATION frames while the block is longer than a frame;
        END_STREAM goes on the first frame, END_HEADERS on the last."""
        limit = self.max_outbound_frame_size
        out = self._data_to_send
        assert block, "a header list of at least one field"
        kind, flags = HEADERS, FLAG_END_STREAM if end_stream else 0
        for start in range(0, len(block), limit):
            piece = block[start : start + limit]
            if start + limit >= len(block):
                flags |= FLAG_END_HEADERS
            out += frame_header(len(piece), kind, flags, stream_id)
            out += piece
            kind, flags = CONTINUATION, 0

    def send_response(
        self,
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes | bytearray,
        stem: tuple[tuple[bytes, bytes], ...] | None = None,
    ) -> bool:
        """`send_headers(headers)` then `send_data(body, end_stream=True)` (the headers alone
        end the stream when there is no body), in one call, for a whole final response on a
        stream whose request is complete and on which nothing was sent, when the body fits
        the windows and one frame. False, with nothing done, for anything else: the caller
        goes the usual way. `stem`: the fields `headers` starts with, shared by other
        responses (hpack_out.py's `encode_after`)."""
        stream = self.streams.get(stream_id)
        size = len(body)
        if (
            stream is None
            or self.state_machine.state is not _CONNECTION_OPEN
            or size > self.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
            or size > self.max_outbound_frame_size
            or not headers
            or type(headers[0][0]) is not bytes
            or is_informational_response(headers)
        ):
            return False
        machine = stream.state_machine
        if (
            machine.state is not _HALF_CLOSED_REMOTE
            or machine.headers_sent
            or machine.client is not False
        ):
            return False
        # The library's moves: SEND_HEADERS (`response_sent`), SEND_DATA (nothing), then
        # SEND_END_STREAM (`send_end_stream`), each from the half-closed state.
        machine.headers_sent = True
        machine.state = _CLOSED
        machine.stream_closed_by = StreamClosedBy.SEND_END_STREAM
        encoder = self.encoder
        if stem is None or not isinstance(encoder, FieldEncoder):
            block = encoder.encode(headers)
        else:
            assert tuple(headers[: len(stem)]) == stem
            block = encoder.encode_after(stem, headers)
        self._write_block(stream_id, block, not size)
        if size:
            stream.outbound_flow_control_window -= size
            self.outbound_flow_control_window -= size
            out = self._data_to_send
            out += frame_header(size, DATA, FLAG_END_STREAM, stream_id)
            out += body
        return True

    def send_data(
        self,
        stream_id: int,
        data: bytes | memoryview,
        end_stream: bool = False,
        pad_length: Any = None,
    ) -> None:
        stream = self.streams.get(stream_id)
        size = len(data)
        if (
            stream is None
            or pad_length is not None
            or not isinstance(data, bytes)
            or size > self.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
            or size > self.max_outbound_frame_size
        ):
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        _advance(self, stream, ConnectionInputs.SEND_DATA, StreamInputs.SEND_DATA, end_stream)
        stream.outbound_flow_control_window -= size
        out = self._data_to_send
        out += frame_header(size, DATA, FLAG_END_STREAM if end_stream else 0, stream_id)
        out += data
        self.outbound_flow_control_window -= size


def _advance(
    conn: H2Connection,
    stream: Any,
    sent: ConnectionInputs,
    stream_sent: StreamInputs,
    end_stream: bool,
) -> None:
    """The connection's and the stream's state machines told what is sent, as the library's
    own send calls tell them."""
    _connection_input(conn.state_machine, sent)
    machine = stream.state_machine
    _stream_input(machine, stream_sent)
    if end_stream:
        _stream_input(machine, StreamInputs.SEND_END_STREAM)


def _connection_input(machine: H2ConnectionStateMachine, move: ConnectionInputs) -> None:
    """The library's `H2ConnectionStateMachine.process_input` (whose transitions call
    nothing), from the identity-keyed table; nothing at all for the inputs that leave an
    open connection open."""
    if machine.state is _CONNECTION_OPEN and id(move) in _STAY_OPEN:
        return
    found = _CONNECTION_MOVES.get((id(machine.state), id(move)))
    if found is None or found[0] is not None:
        machine.process_input(move)  # the library's error, and its CLOSED state
        return
    machine.state = found[1]


def _stream_input(machine: Any, move: StreamInputs) -> list[Event]:
    """The library's `H2StreamStateMachine.process_input`, from the identity-keyed table."""
    state = machine.state
    found = _STREAM_MOVES.get((id(state), id(move)))
    if found is None:
        return machine.process_input(move)  # type: ignore[no-any-return]
    func, machine.state = found
    if func is None:
        return []
    try:
        return func(machine, state)  # type: ignore[no-any-return]
    except ProtocolError:
        machine.state = _CLOSED
        raise


def _decode(decoder: Any, block: bytes) -> list[tuple[bytes, bytes]]:
    """The library's `_decode_headers`: HPACK errors become the h2 errors it raises. The
    list is the decoder's own (hpack_in.py gives the same one for the same block): never
    changed by its readers."""
    try:
        headers = decoder.decode(block, raw=True)
        return headers if type(headers) is list else list(headers)
    except OversizedHeaderListError as error:
        raise DenialOfServiceError(f"Oversized header block: {error}") from error
    except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as error:
        raise ProtocolError(f"Error decoding header block: {error}") from error


def _joined_cookies(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Split cookie fields joined into one, last, as the library normalises them."""
    cookies = [value for name, value in headers if name == b"cookie"]
    if not cookies:
        return headers
    joined = [field for field in headers if field[0] != b"cookie"]
    joined.append(NeverIndexedHeaderTuple(b"cookie", b"; ".join(cookies)))
    return joined
