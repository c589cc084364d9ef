"""An HTTP/2 backend connection (h2c, prior knowledge) multiplexing session cores' requests,
as a synchronous sans-io state machine on the `h2` library.

The shell dials the backend, calls `connected`, and from then on feeds it the bytes it reads
(`back_data`) and its end (`back_eof`); it sends `to_back`. Session cores get a stream with
`attach`, write their HTTP/1.1 request bytes with `write` (as much as the stream takes: back
pressure) and let go with `release`. After each call the shell reads `touched` (streams with
`news` to deliver), `deadline` and `done`. Nothing here does I/O or reads a clock.

A connection takes new streams while `usable`: up to the backend's SETTINGS_MAX_CONCURRENT_
STREAMS, not after a GOAWAY, and not once its stream ids near 2^31 (stream-id exhaustion: it
is retired, its streams finish, the next requests get a new connection). A GOAWAY with
NO_ERROR lets the streams it covers finish; those above its last stream id are `refused` (the
session core sends the request again on a new connection when it can). LIFECYCLE.md beside it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Final

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings

from sozu.worker.core.h2.library import GoawayLetsStreamsFinish, h2_connection
from sozu.worker.core.h2.upstream_stream import BODY_LIMIT, P_BODY, P_HEAD, P_SENT, UpstreamStream

INF: Final = math.inf
# The highest stream id a client may use is 2^31 - 1; a connection is retired before it.
MAX_STREAM_ID: Final = 2**31 - 1 - 2**16
# What this side lets a backend send before its reads are acknowledged.
STREAM_WINDOW: Final = 262144
CONNECTION_WINDOW: Final = 4194304
# Streams on one connection at most, whatever the backend allows (h2's default is no limit).
MAX_STREAMS: Final = 256
# An idle connection (no stream) is closed after this long.
IDLE_TIMEOUT: Final = 60.0

# Connection phases.
C_CONNECTING: Final = 0
C_OPEN: Final = 1
C_CLOSED: Final = 2


class H2Upstream:
    """One h2c connection to a backend. See the module docstring for the calls."""

    def __init__(
        self,
        *,
        max_stream_id: int = MAX_STREAM_ID,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.conn = h2_connection(GoawayLetsStreamsFinish, client_side=True)  # library.py
        self.max_stream_id = max_stream_id
        self.idle_timeout = idle_timeout
        self.phase = C_CONNECTING
        # -- read by the shell
        self.to_back = bytearray()
        self.touched: list[UpstreamStream] = []
        self.deadline = INF
        self.done = False
        # -- streams
        self.attached: set[UpstreamStream] = set()
        self.by_id: dict[int, UpstreamStream] = {}
        self.going_away = False
        self.retired = False  # stream ids near exhaustion
        self.goaway_last = -1
        self.streams_opened = 0

    # -- what the pool reads

    @property
    def usable(self) -> bool:
        """It takes a new stream."""
        return (
            self.phase != C_CLOSED
            and not self.going_away
            and not self.retired
            and len(self.attached) < self._max_streams()
        )

    @property
    def ready(self) -> bool:
        return self.phase == C_OPEN

    @property
    def load(self) -> int:
        return len(self.attached)

    def _max_streams(self) -> int:
        if self.phase != C_OPEN:
            return 100  # what most servers allow, until their SETTINGS say
        limit: int = self.conn.remote_settings.max_concurrent_streams
        return min(limit, MAX_STREAMS)

    # -- inputs

    def connected(self, now: float) -> None:
        """The dial succeeded: the connection preface and SETTINGS go out."""
        assert self.phase == C_CONNECTING
        self.phase = C_OPEN
        conn = self.conn
        conn.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        conn.initiate_connection()
        extra = CONNECTION_WINDOW - conn.inbound_flow_control_window
        if extra > 0:
            conn.increment_flow_control_window(extra)
        self._flush()
        self._idle(now)
        for stream in self.attached:
            stream.news = True
            self.touched.append(stream)

    def connect_failed(self) -> None:
        """The dial failed: every attached stream is refused."""
        self._close(refused=True)

    def attach(self) -> UpstreamStream:
        """A new stream for a session core's request (while `usable`)."""
        assert self.usable
        stream = UpstreamStream()
        self.attached.add(stream)
        self.deadline = INF
        return stream

    def write(self, stream: UpstreamStream, data: bytes | bytearray, now: float) -> int:
        """Request bytes of `stream`; how many it took (fewer while its body waits for the
        backend's window)."""
        assert stream in self.attached
        if stream.failed or stream.request_done or stream.ended or self.phase != C_OPEN:
            # Nothing more to send: a reset stream, or one whose response is complete (on a
            # connection that may be gone since), discards the rest of its request.
            return len(data)
        room = BODY_LIMIT - len(stream.body) if stream.phase != P_HEAD else len(data)
        if room <= 0:
            return 0
        chunk = data[:room] if room < len(data) else data
        if not stream.feed(chunk):
            stream.fail()
            self._reset(stream, ErrorCodes.CANCEL)
            self.touched.append(stream)
        else:
            self._send(stream)
        self._flush()
        return len(chunk)

    def back_data(self, data: bytes, now: float) -> None:
        """Bytes read from the backend."""
        assert data
        if self.phase != C_OPEN:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self._flush()
            self._close(refused=False)
            return
        for event in events:
            if isinstance(event, DataReceived):
                stream = self.by_id.get(event.stream_id)
                if stream is None or stream.failed or stream.ended:
                    # Nobody will take these bytes: their window goes back at once.
                    with contextlib.suppress(ProtocolError, StreamClosedError):
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                else:
                    stream.response_data(event.data, event.flow_controlled_length)
                    self.touched.append(stream)
            elif isinstance(event, ResponseReceived):
                self._head(event.stream_id, event.headers, event.stream_ended is not None)
            elif isinstance(event, InformationalResponseReceived):
                self._head(event.stream_id, event.headers, False)
            elif isinstance(event, TrailersReceived):
                stream = self.by_id.get(event.stream_id)
                if stream is not None:
                    stream.response_trailers(event.headers)
                    self._settled(stream)
            elif isinstance(event, StreamEnded):
                stream = self.by_id.get(event.stream_id)
                if stream is not None:
                    stream.end()
                    self._settled(stream)
            elif isinstance(event, StreamReset):
                stream = self.by_id.get(event.stream_id)
                if stream is not None:
                    stream.fail(refused=event.error_code == ErrorCodes.REFUSED_STREAM)
                    self._settled(stream)
            elif isinstance(event, (WindowUpdated, RemoteSettingsChanged)):
                for stream in self.attached:
                    if stream.body or (stream.phase == P_BODY and stream.request_done):
                        self._send(stream)
                        stream.news = True
                        self.touched.append(stream)
            elif isinstance(event, ConnectionTerminated):
                self._goaway(event.error_code or 0, event.last_stream_id or 0)
                if self.phase == C_CLOSED:
                    return
        self._flush()
        self._idle(now)

    def back_eof(self) -> None:
        """The backend closed the connection (or it failed): streams without a complete
        response fail; those it never answered are `refused`."""
        self._close(refused=True)

    def take(self, stream: UpstreamStream) -> bytes:
        """The response bytes for `stream`'s session, their window returned to the backend."""
        data = stream.take()
        unacked = stream.flow_unacked
        if unacked and self.phase == C_OPEN and stream.stream_id in self.by_id:
            stream.flow_unacked = 0
            with contextlib.suppress(ProtocolError, StreamClosedError):
                self.conn.acknowledge_received_data(unacked, stream.stream_id)
            self._flush()
        return data

    def release(self, stream: UpstreamStream, now: float) -> None:
        """The session core let go of its stream: done with it, or cancelled (reset)."""
        assert stream in self.attached
        self.attached.discard(stream)
        if stream.stream_id:
            self.by_id.pop(stream.stream_id, None)
            if stream.flow_unacked and self.phase == C_OPEN:
                # The connection window counts bytes the session never took: returned
                # whatever the stream's state, or each cancelled stream would shrink it.
                with contextlib.suppress(ProtocolError, StreamClosedError):
                    self.conn.acknowledge_received_data(stream.flow_unacked, stream.stream_id)
            if not (stream.ended and stream.phase == P_SENT and not stream.body):
                self._reset(stream, ErrorCodes.CANCEL)
        stream.flow_unacked = 0
        self._flush()
        self._idle(now)

    def on_timer(self, now: float) -> None:
        """Idle with no stream for idle_timeout: GOAWAY and close."""
        if self.done or now < self.deadline:
            return
        if self.attached:
            self.deadline = INF
            return
        if self.phase == C_OPEN:
            with contextlib.suppress(ProtocolError):
                self.conn.close_connection()
            self._flush()
        self._close(refused=True)

    def close(self) -> None:
        """The worker lets go of the connection (its stop)."""
        self._close(refused=False)

    # -- streams

    def _send(self, stream: UpstreamStream) -> None:
        """Send what the stream has: its HEADERS once the head is read, body as the window
        allows, then trailers or END_STREAM."""
        conn = self.conn
        try:
            if stream.phase == P_HEAD:
                if not stream.head_ready():
                    return
                stream_id = conn.get_next_available_stream_id()
                stream.stream_id = stream_id
                self.by_id[stream_id] = stream
                self.streams_opened += 1
                if stream_id >= self.max_stream_id:
                    self.retired = True
                end = stream.request_done and not stream.body and not stream.trailers
                conn.send_headers(stream_id, stream.request_headers(scheme=b"http"), end_stream=end)
                stream.phase = P_SENT if end else P_BODY
                if end:
                    return
            if stream.phase != P_BODY:
                return
            stream_id = stream.stream_id
            body = stream.body
            while body:
                size = min(
                    conn.local_flow_control_window(stream_id),
                    conn.max_outbound_frame_size,
                    len(body),
                )
                if size <= 0:
                    return
                last = size == len(body) and stream.request_done and not stream.trailers
                conn.send_data(stream_id, bytes(body[:size]), end_stream=last)
                del body[:size]
                if last:
                    stream.phase = P_SENT
                    return
            if stream.request_done:
                if stream.trailers:
                    conn.send_headers(stream_id, stream.trailers, end_stream=True)
                else:
                    conn.end_stream(stream_id)
                stream.phase = P_SENT
        except (ProtocolError, StreamClosedError):
            stream.fail()
            self._settled(stream)

    def _head(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        stream = self.by_id.get(stream_id)
        if stream is None:
            return
        stream.response_head(headers, ended=ended)
        self._settled(stream)

    def _settled(self, stream: UpstreamStream) -> None:
        if stream.failed and stream.stream_id:
            self._reset(stream, ErrorCodes.CANCEL)
        self.touched.append(stream)

    def _reset(self, stream: UpstreamStream, code: ErrorCodes) -> None:
        if stream.stream_id and self.phase == C_OPEN:
            with contextlib.suppress(ProtocolError, StreamClosedError):
                self.conn.reset_stream(stream.stream_id, code)

    def _goaway(self, code: ErrorCodes | int, last_stream_id: int) -> None:
        """The backend's GOAWAY: no new stream; those above its last id were never
        processed. Any error code ends every stream."""
        self.going_away = True
        self.goaway_last = last_stream_id
        if code != ErrorCodes.NO_ERROR:
            self._close(refused=True)
            return
        for stream in self.attached:
            if stream.stream_id > last_stream_id or stream.stream_id == 0:
                stream.fail(refused=True)
                self.touched.append(stream)

    def _idle(self, now: float) -> None:
        if self.attached or self.phase != C_OPEN:
            self.deadline = INF
        elif self.going_away or self.retired:
            self.deadline = now
        else:
            self.deadline = now + self.idle_timeout

    def _close(self, *, refused: bool) -> None:
        if self.phase == C_CLOSED:
            return
        self.phase = C_CLOSED
        self.done = True
        self.deadline = INF
        for stream in self.attached:
            stream.fail(refused=refused)
            self.touched.append(stream)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.to_back += data

    def check_invariants(self) -> None:
        assert self.done == (self.phase == C_CLOSED)
        assert set(self.by_id.values()) <= self.attached
        for stream_id, stream in self.by_id.items():
            assert stream.stream_id == stream_id
            stream.check_invariants()
        for stream in self.attached:
            assert stream.stream_id == 0 or stream.stream_id in self.by_id
            assert self.phase != C_CLOSED or stream.failed or stream.ended
        assert self.phase == C_OPEN or not self.by_id or self.done
        assert not self.attached or self.deadline == INF
