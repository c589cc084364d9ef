"""The HTTP/2 frontend session core: one client connection that negotiated `h2`, as a
synchronous sans-io state machine on the `h2` library (framing, HPACK, flow control).

Each request stream becomes an HTTP/1.1 request (translation.py) run by an `Http1Session`
core of its own (routing, policies, answers, edits, access log, metrics as HTTP/1.1); the
response it queues is read back (response_reader.py) into HEADERS and DATA. The shell reads
after every call: `to_front`, `opened` (stream cores to run), `fed` (cores given body bytes),
`cancelled` (cores to end), `deadline` and `done`. No I/O, no clock. LIFECYCLE.md beside it.
"""

from __future__ import annotations

import contextlib
import math

from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from sozu.command.types import HttpListenerConfig, HttpsListenerConfig
from sozu.worker.core.h2.flood import HEADER_LIST_FLOOD, RST_STREAM_FLOOD, FloodGuard, FloodLimits
from sozu.worker.core.h2.library import h2_connection
from sozu.worker.core.h2.response_reader import ResponseReader
from sozu.worker.core.h2.server_connection import ServerConnection
from sozu.worker.core.h2.translation import Refused, translate_known
from sozu.worker.core.http1.context import ListenerContext
from sozu.worker.core.http1.session import Http1Session

INF = math.inf
# Defaults of the listener's h2_* settings used when they are unset (the limits are listed in
# the "Defences" section of LIFECYCLE.md beside this module).
DEFAULT_MAX_CONCURRENT_STREAMS = 100
DEFAULT_MAX_HEADER_LIST_SIZE = 65536
DEFAULT_INITIAL_WINDOW = 1048576
DEFAULT_MAX_RST_STREAM_PER_WINDOW = 100
# Response readers a connection keeps for its next streams.
READERS_KEPT = 128
# Unsent frames past which a connection's stream cores keep their output (`stream_room`).
CONNECTION_OUT = 262144
# The window the rapid reset limit counts over, in seconds (as the other floods: flood.py).
FLOOD_WINDOW = 1.0


class H2Stream:
    """One request stream: its HTTP/1.1 core, the response read back, the body counts."""

    __slots__ = (
        "content_length",
        "detached",
        "ended_in",
        "ended_out",
        "inner",
        "out",
        "paused",
        "reader",
        "received",
        "stalled",
    )

    def __init__(self, inner: Http1Session, reader: ResponseReader, content_length: int) -> None:
        self.inner = inner
        self.reader = reader
        self.content_length = content_length  # -1: none given (chunked to the backend)
        self.received = 0  # request body bytes
        self.ended_in = False  # the client ended the stream
        self.ended_out = False  # the response ended (END_STREAM sent, or reset)
        self.out = bytearray()  # response body not sent yet (flow control)
        self.stalled = INF  # since when `out` waits for a window the client keeps shut
        self.detached = False  # its core ended: only `out` is left to send
        self.paused = False  # its core was refused more output (`stream_room`)


class H2Session:
    """One h2 client connection. The shell reads `to_front`, `opened`, `cancelled`,
    `deadline` and `done` after each input call."""

    def __init__(
        self,
        ctx: ListenerContext,
        peer: tuple[str, int],
        *,
        served_names: tuple[str, ...] = (),
        sni: str | None = None,
        default_cert: bool = False,
    ) -> None:
        self.ctx = ctx
        self.counters = ctx.counters
        self.peer = peer
        self.served_names = served_names
        self.sni = sni
        self.default_cert = default_cert
        config = ctx.config
        self.max_streams = config.h2_max_concurrent_streams or DEFAULT_MAX_CONCURRENT_STREAMS
        self.conn = h2_connection(ServerConnection, client_side=False)  # server_connection.py
        self.conn.local_settings = _settings(
            self.max_streams,
            config.h2_max_header_list_size or DEFAULT_MAX_HEADER_LIST_SIZE,
        )
        self.connection_window = config.h2_initial_connection_window or DEFAULT_INITIAL_WINDOW
        self.max_resets = config.h2_max_rst_stream_per_window or DEFAULT_MAX_RST_STREAM_PER_WINDOW
        self.guard = FloodGuard(flood_limits(config), self.counters)
        # Rapid reset (CVE-2023-44487): client resets counted per FLOOD_WINDOW.
        self.resets = 0
        self.resets_since = -INF
        # -- read by the shell
        self.to_front = bytearray()
        self.opened: list[tuple[int, Http1Session]] = []
        self.fed: list[int] = []  # streams whose core was given request body bytes
        self.cancelled: list[int] = []
        self.deadline = INF
        self.done = False
        # -- the connection
        self.streams: dict[int, H2Stream] = {}
        # Shared by the stream cores: the forwarding headers, and the
        # per-IP slots this connection holds (by cluster id, until it ends: routing.py).
        self.per_ip_held: set[str] = set()
        self.forwarding: bytes | None = None
        # Response readers of ended streams, ready again (response_reader.py).
        self.readers: list[ResponseReader] = []
        self.stalls = 0  # streams whose `stalled` is set
        self.paused = 0  # streams whose `paused` is set
        self.draining = False
        self.goaway_sent = False
        self.goaway_last = 0  # streams above it are refused once GOAWAY went out
        self.last_stream = 0

    # -- inputs

    def start(self, now: float) -> None:
        """The TLS handshake chose h2: send our SETTINGS."""
        self.counters.h2_connections += 1
        self.conn.initiate_connection()
        extra = self.connection_window - self.conn.inbound_flow_control_window
        if extra > 0:
            self.conn.increment_flow_control_window(extra)
        self.deadline = now + self.ctx.front_timeout
        if self.ctx.shared.draining:
            self.drain(now)
        self._flush()

    def front_data(self, data: bytes, now: float) -> None:
        """Bytes read from the client (ignored once the connection is done: its last frames
        may still be going out, but no stream starts)."""
        assert data
        if self.done:
            return
        self.counters.bytes_in += len(data)
        flood = self.guard.feed(data, now)
        if flood is not None:
            self._calm(flood)
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as error:
            # The library has queued its GOAWAY (with the error's code) already.
            if isinstance(error, DenialOfServiceError):
                # A header list past its limit once decoded (an HPACK bomb): the library
                # stopped decoding at the limit and answers ENHANCE_YOUR_CALM.
                floods = self.counters.h2_floods
                floods[HEADER_LIST_FLOOD] = floods.get(HEADER_LIST_FLOOD, 0) + 1
            else:
                self.counters.h2_protocol_errors += 1
            self.goaway_sent = True
            self._flush()
            self._finish()
            return
        while self.conn.refused:  # streams refused past the concurrency limit: resets too
            self.conn.refused -= 1
            if self._rapid_reset(now):
                return
        for event in events:
            if isinstance(event, RequestReceived):
                self._request(event.stream_id, event.headers, event.stream_ended is not None, now)
            elif isinstance(event, DataReceived):
                self._data(event.stream_id, event.data, event.flow_controlled_length, now)
            elif isinstance(event, StreamEnded):
                self._end_in(event.stream_id, now)
            elif isinstance(event, StreamReset):
                self._cancel(event.stream_id)
                if self._rapid_reset(now):
                    return
            elif isinstance(event, (WindowUpdated, RemoteSettingsChanged)):
                for stream_id in list(self.streams):
                    self._pump(stream_id, now)
            elif isinstance(event, ConnectionTerminated):
                if self.conn.state_machine.state is ConnectionState.CLOSED:
                    self._finish()  # a GOAWAY with an error code
                    return
                self.drain(now)  # NO_ERROR: its streams finish first (library.py)
        self._idle(now)
        self._flush()

    def front_eof(self, now: float) -> None:
        """The client closed (or the connection failed): every stream ends."""
        self._finish()

    def on_timer(self, now: float) -> None:
        """The idle timeout (no stream open for front_timeout), the drain deadline, or streams
        whose client kept their window shut for front_timeout (reset with CANCEL)."""
        if self.done or now < self.deadline:
            return
        if self.streams:
            limit = now - self.ctx.front_timeout
            for stream_id, stream in list(self.streams.items()):
                if stream.stalled <= limit and not stream.ended_out:
                    self.counters.h2_window_stalls += 1
                    stream.stalled = INF
                    self.stalls -= 1
                    self._reset(stream_id, ErrorCodes.CANCEL)
            self._idle(now)
            self._flush()
            return
        if not self.done:
            if not self.goaway_sent:
                self._goaway()
                self._flush()
            self._finish()

    def drain(self, now: float) -> None:
        """The worker drains: GOAWAY with the last stream id, open streams finish."""
        self.draining = True
        if not self.goaway_sent:
            self._goaway()
        self._idle(now)
        self._flush()

    def response_data(self, stream_id: int, data: bytes, now: float) -> None:
        """The HTTP/1.1 response bytes a stream's core queued for its client."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended_out:
            return
        reader = stream.reader
        had_head = reader.head is not None
        reader.feed(data)
        if reader.failed:
            self._reset(stream_id, ErrorCodes.INTERNAL_ERROR)
        else:
            if not had_head and reader.head is not None:
                if (
                    reader.complete
                    and not reader.trailers
                    and self.conn.send_response(
                        stream_id, reader.head, reader.body, reader.head_stem
                    )
                ):
                    # The whole response went in one call (the common small one).
                    if reader.body:
                        self.guard.credit += 1  # its DATA frame's window (flood.py)
                        reader.body.clear()
                    stream.ended_out = True
                    self._idle(now)
                    self._flush()
                    return
                end = reader.complete and not reader.body and not reader.trailers
                self.conn.send_headers(stream_id, reader.head, end_stream=end)
                stream.ended_out = end
            if reader.body:
                stream.out += reader.body
                reader.body.clear()
            self._pump(stream_id, now)
        self._idle(now)
        self._flush()

    def stream_closed(self, stream_id: int, now: float, *, complete: bool = False) -> None:
        """A stream's core ended (its shell let go of it); `complete`: after a complete
        response (for a body delimited by the backend's close, its end). The rest of such a
        body, or of any response read whole, may still wait for the client's window: the
        stream stays until it is sent (or stalls: `on_timer`). Any other end resets it."""
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.ended_out:
            reader = stream.reader
            if stream.paused:  # its core ended holding bytes the client did not take
                self.counters.h2_window_stalls += 1
                self._reset(stream_id, ErrorCodes.CANCEL)
            elif (complete or reader.complete) and reader.head is not None and not reader.failed:
                reader.complete = True
                stream.detached = True
                self._pump(stream_id, now)
                if not stream.ended_out:
                    self._idle(now)
                    self._flush()
                    return
            else:
                self._reset(stream_id, ErrorCodes.INTERNAL_ERROR)
        self._forget(stream_id)
        self._idle(now)
        self._flush()

    def stream_finished(self, stream_id: int) -> bool:
        """The stream's response is complete and sent: its core may end."""
        stream = self.streams.get(stream_id)
        return stream is None or stream.ended_out

    def stream_room(self, stream_id: int, wanted: int) -> int:
        """How many of `wanted` response bytes a stream's core may hand over (LIFECYCLE.md,
        back pressure); short of `wanted`, the stream is paused until `take_resumed`."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return wanted
        room = wanted
        if len(self.to_front) > CONNECTION_OUT:
            room = 0
        elif stream.out:
            room = min(wanted, max(0, self.ctx.buffer_limit - len(stream.out)))
        if (room < wanted) is not stream.paused:
            stream.paused = room < wanted
            self.paused += 1 if stream.paused else -1
        return room

    def take_resumed(self) -> list[int]:
        """The paused streams that have room again (no longer paused)."""
        resumed: list[int] = []
        limit = self.ctx.buffer_limit if len(self.to_front) <= CONNECTION_OUT else -1
        for stream_id, stream in self.streams.items():
            if stream.paused and len(stream.out) < limit:
                stream.paused = False
                self.paused -= 1
                resumed.append(stream_id)
        return resumed

    # -- streams

    def _request(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool, now: float
    ) -> None:
        if self.goaway_sent and stream_id > self.goaway_last:
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.last_stream = max(self.last_stream, stream_id)
        try:
            translated = translate_known(headers, ended)
        except Refused:
            translated = None
        if translated is None or (ended and translated.content_length > 0):
            # Malformed, or a declared body that never comes (END_STREAM on the HEADERS):
            # refused before any core exists, so nothing is routed, held or left behind.
            self.counters.h2_refused_streams += 1
            self._reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        self.counters.h2_streams += 1
        inner = Http1Session(
            self.ctx,
            self.peer,
            served_names=self.served_names,
            sni=self.sni,
            default_cert=self.default_cert,
            h2_stream=True,
        )
        readers = self.readers
        if readers:
            reader = readers.pop()
            reader.reset(translated.method)
        else:
            reader = ResponseReader(translated.method)
        stream = H2Stream(inner, reader, translated.content_length)
        stream.ended_in = ended
        self.streams[stream_id] = stream
        self.counters.h2_streams_active += 1
        inner.per_ip_held = self.per_ip_held
        inner.forwarding = self.forwarding
        inner.start_with_head(translated.request, now)
        self.forwarding = inner.forwarding
        self.opened.append((stream_id, inner))

    def _data(self, stream_id: int, data: bytes, flow: int, now: float) -> None:
        self.conn.acknowledge_received_data(flow, stream_id)
        stream = self.streams.get(stream_id)
        if stream is None or not data:
            return
        stream.received += len(data)
        if 0 <= stream.content_length < stream.received:
            self._refuse(stream_id)
            return
        if stream.content_length < 0:
            stream.inner.front_data(b"%x\r\n%b\r\n" % (len(data), data), now)
        else:
            stream.inner.front_data(data, now)
        self.fed.append(stream_id)

    def _end_in(self, stream_id: int, now: float) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended_in:
            return
        stream.ended_in = True
        if stream.content_length < 0:
            stream.inner.front_data(b"0\r\n\r\n", now)
            self.fed.append(stream_id)
        elif stream.received != stream.content_length:
            self._refuse(stream_id)

    def _refuse(self, stream_id: int) -> None:
        """A body that contradicts its content-length: the stream is reset, never relayed
        whole."""
        self.counters.h2_refused_streams += 1
        self._reset(stream_id, ErrorCodes.PROTOCOL_ERROR)

    def _reset(self, stream_id: int, code: ErrorCodes) -> None:
        self._cancel(stream_id)
        with contextlib.suppress(ProtocolError, StreamClosedError):
            self.conn.reset_stream(stream_id, code)

    def _cancel(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.ended_out = True
            if stream.detached:
                self._forget(stream_id)  # no core left to cancel
            else:
                self.cancelled.append(stream_id)

    def _pump(self, stream_id: int, now: float) -> None:
        """Send what flow control allows of a stream's response body; a stream that cannot
        is `stalled` from now until the client opens its window."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended_out or stream.reader.head is None:
            return
        conn = self.conn
        out = stream.out
        try:
            while out:
                size = min(
                    conn.local_flow_control_window(stream_id),
                    conn.max_outbound_frame_size,
                    len(out),
                )
                if size <= 0:
                    if stream.stalled == INF:
                        stream.stalled = now
                        self.stalls += 1
                    return
                if stream.stalled != INF:
                    stream.stalled = INF
                    self.stalls -= 1
                last = size == len(out) and stream.reader.complete and not stream.reader.trailers
                conn.send_data(stream_id, bytes(out[:size]), end_stream=last)
                self.guard.credit += 1  # the client may return this window (flood.py)
                del out[:size]
                if last:
                    stream.ended_out = True
                    if stream.detached:
                        self._forget(stream_id)
                    return
            if stream.reader.complete:
                if stream.reader.trailers:
                    conn.send_headers(stream_id, stream.reader.trailers, end_stream=True)
                else:
                    conn.end_stream(stream_id)
                stream.ended_out = True
                if stream.detached:
                    self._forget(stream_id)
        except (ProtocolError, StreamClosedError):
            self._cancel(stream_id)

    def _rapid_reset(self, now: float) -> bool:
        """Count a client reset; past the listener's limit in one window the connection
        ends with GOAWAY ENHANCE_YOUR_CALM (True)."""
        if now - self.resets_since >= FLOOD_WINDOW:
            self.resets_since = now
            self.resets = 0
        self.resets += 1
        if self.resets <= self.max_resets:
            return False
        self.counters.h2_rapid_resets += 1
        self._calm(RST_STREAM_FLOOD)
        return True

    def _calm(self, flood: str) -> None:
        """A flood defence ends the connection: GOAWAY ENHANCE_YOUR_CALM with the last stream
        id, counted by kind."""
        floods = self.counters.h2_floods
        floods[flood] = floods.get(flood, 0) + 1
        self.goaway_sent = True
        with contextlib.suppress(ProtocolError):
            self.conn.close_connection(
                ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self.last_stream
            )
        self._flush()
        self._finish()

    def _forget(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.counters.h2_streams_active -= 1
        if stream.stalled != INF:
            self.stalls -= 1
        if stream.paused:
            self.paused -= 1
        if stream.reader.reusable and len(self.readers) < READERS_KEPT:
            self.readers.append(stream.reader)

    # -- the connection

    def _goaway(self) -> None:
        """GOAWAY NO_ERROR with the last stream id, written here rather than by the library
        (whose close_connection would stop the open streams from finishing)."""
        self._flush()
        self.goaway_sent = True
        self.goaway_last = self.last_stream
        frame = GoAwayFrame(0, last_stream_id=self.last_stream, error_code=ErrorCodes.NO_ERROR)
        self.to_front += frame.serialize()

    def _idle(self, now: float) -> None:
        """The connection's timer: front_timeout once no stream is open; when draining,
        the drain ends with the last stream."""
        if self.stalls:
            stalled = min(stream.stalled for stream in self.streams.values())
            self.deadline = stalled + self.ctx.front_timeout
        elif self.streams:
            self.deadline = INF
        elif self.draining:
            self.deadline = now
        else:
            self.deadline = now + self.ctx.front_timeout

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.cancelled.extend(self.streams)
            for stream in self.streams.values():
                stream.ended_out = True
        self.ended()

    def ended(self) -> None:
        """The connection ended (the core finished, or the shell closed the socket): the
        streams still held (their cores cancelled, or a detached body left unsent) are let
        go, so no longer counted in `h2_streams_active`, and the per-IP slots given back."""
        if self.streams:
            self.counters.h2_streams_active -= len(self.streams)
            self.streams.clear()
            self.stalls = self.paused = 0
        self.release_slots()

    def release_slots(self) -> None:
        """The connection ended: the per-IP slots its streams took are given back."""
        per_ip = self.ctx.shared.per_ip
        for cluster_id in self.per_ip_held:
            per_ip.give(cluster_id, self.peer[0])
        self.per_ip_held.clear()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.counters.bytes_out += len(data)
            self.to_front += data

    def check_invariants(self) -> None:
        self.guard.check_invariants()
        # Live streams: cancelled ones wait for the shell's next settle to end their links.
        live = sum(not stream.ended_out for stream in self.streams.values())
        assert live <= self.max_streams + 1, live
        assert self.stalls == sum(s.stalled != INF for s in self.streams.values())
        assert self.paused == sum(s.paused for s in self.streams.values())
        assert not self.done or all(s.ended_out for s in self.streams.values())
        assert not self.done or not self.per_ip_held
        for cluster_id in self.per_ip_held:
            assert self.ctx.shared.per_ip.held(cluster_id, self.peer[0]) >= 1
        assert self.done or all(not s.ended_out for s in self.streams.values() if s.detached)
        for stream_id, stream in self.streams.items():
            assert stream_id % 2 == 1, stream_id
            assert stream.content_length < 0 or stream.received <= stream.content_length


def flood_limits(config: HttpListenerConfig | HttpsListenerConfig) -> FloodLimits:
    """The listener's h2_max_* flood limits, upstream's defaults for those unset."""
    defaults = FloodLimits()
    return FloodLimits(
        ping=config.h2_max_ping_per_window or defaults.ping,
        settings=config.h2_max_settings_per_window or defaults.settings,
        empty_data=config.h2_max_empty_data_per_window or defaults.empty_data,
        window_update_stream0=(
            config.h2_max_window_update_stream0_per_window or defaults.window_update_stream0
        ),
        continuation=config.h2_max_continuation_frames or defaults.continuation,
    )


def _settings(max_streams: int, max_header_list: int) -> Settings:
    return Settings(
        client=False,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
            SettingCodes.ENABLE_PUSH: 0,
        },
    )
