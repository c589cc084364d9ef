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
from collections.abc import Iterable
from typing import Any, Final

from h2.connection import AllowedStreamIDs, ConnectionInputs, H2Connection
from h2.events import Event, RequestReceived, StreamEnded
from h2.exceptions import DenialOfServiceError, ProtocolError
from h2.stream import STREAM_OPEN, StreamInputs, StreamState
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

# Frame header: length (24 bits, as a byte and a short), type, flags, stream id.
_HEADER: Final = struct.Struct(">BHBBL")
_PADDED: Final = 0x8
_PRIORITY: Final = 0x20
# A request HEADERS frame the fast path reads: END_HEADERS, neither PADDED nor PRIORITY.
_FAST_FLAGS_MASK: Final = FLAG_END_HEADERS | _PADDED | _PRIORITY
_OPEN: Final = STREAM_OPEN  # by stream state: counts against the concurrency limit


def frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


class ServerConnection(H2Connection):
    """A server-side `H2Connection` (see the module docstring)."""

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
                fast = open_streams < self.local_settings.max_concurrent_streams
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
        for stream_id in closed:
            stream = self.streams.pop(stream_id)
            self._closed_streams[stream_id] = stream.state_machine.stream_closed_by
        return count

    def _request_headers(self, stream_id: int, block: bytes, end_stream: bool) -> list[Event]:
        """What the library's `_receive_headers_frame` does for a new request stream."""
        headers = _decode(self.decoder, block)
        self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._begin_new_stream(stream_id, AllowedStreamIDs.ODD)
        if is_informational_response(headers):
            # Not a request: the library's stream raises its error for it.
            return stream.receive_headers(headers, end_stream, None)[1]
        machine = stream.state_machine
        events = machine.process_input(StreamInputs.RECV_HEADERS)
        request = events[0]
        assert isinstance(request, RequestReceived), request
        if end_stream:
            ended = machine.process_input(StreamInputs.RECV_END_STREAM)
            assert isinstance(ended[0], StreamEnded), ended
            request.stream_ended = ended[0]
            events += ended
        stream._initialize_content_length(headers)
        request.headers = _joined_cookies(headers)
        return events

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
        block = self.encoder.encode(headers)
        limit = self.max_outbound_frame_size
        out = self._data_to_send
        assert block, "a header list of at least one field"
        # HEADERS, then CONTINUATION frames while the block is longer than a frame; END_STREAM
        # goes on the first frame, END_HEADERS on the last.
        kind, flags = HEADERS, FLAG_END_STREAM if end_stream else 0
        for start in range(0, len(block), limit):
            piece = block[start : start + limit]
            if start + limit >= len(block):
                flags |= FLAG_END_HEADERS
            out += frame_header(len(piece), kind, flags, stream_id)
            out += piece
            kind, flags = CONTINUATION, 0

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
    conn.state_machine.process_input(sent)
    machine = stream.state_machine
    machine.process_input(stream_sent)
    if end_stream:
        machine.process_input(StreamInputs.SEND_END_STREAM)


def _decode(decoder: Any, block: bytes) -> list[tuple[bytes, bytes]]:
    """The library's `_decode_headers`: HPACK errors become the h2 errors it raises."""
    try:
        return list(decoder.decode(block, raw=True))
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
