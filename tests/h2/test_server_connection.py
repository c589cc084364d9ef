"""ServerConnection (server_connection.py) held to the `h2` library's own H2Connection (with
sozu's two corrections, `LibraryServer`, in the equivalence test): both built by
`h2_connection` with the session's settings and driven by the same client bytes and the same
server calls, they return the same events (or raise the same exception), write the same bytes
and are left in the same state after every step.

Both forget closed streams and count open ones before they admit a stream, and both keep
what follows a frame that failed in the input buffer. The tests at the end hold what a
leftover closed stream would change: the error a response on it raises, and a SETTINGS change
that would overflow its window.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from collections.abc import Callable
from enum import Enum
from functools import partial
from typing import Any, TypeVar

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import Event, RequestReceived, StreamEnded
from h2.settings import SettingCodes, Settings
from hyperframe.frame import Frame
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from sozu.worker.core.h2.hpack_in import FieldDecoder
from sozu.worker.core.h2.hpack_out import FieldEncoder
from sozu.worker.core.h2.library import h2_connection
from sozu.worker.core.h2.server_connection import LibraryServer, ServerConnection

MAX_STREAMS = 100  # session.py's default
MAX_HEADER_LIST = 65536  # session.py's default
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"example.test"),
    (b":path", b"/"),
]
FRAME_HEADER = struct.Struct(">BHBBL")
HEADERS = 0x1
CONTINUATION = 0x9
END_STREAM = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY = 0x20
CONTROL = {0x3, 0x4, 0x6, 0x7, 0x8}  # RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE

Server = TypeVar("Server", bound=H2Connection)


def server(
    kind: type[Server],
    *,
    max_streams: int = MAX_STREAMS,
    max_header_list: int = MAX_HEADER_LIST,
) -> Server:
    """A server connection as session.py sets one up (and the header list limit applied to
    the decoder as well, so that a small one is enforced)."""
    conn = h2_connection(kind, client_side=False)
    conn.local_settings = Settings(
        client=False,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
            SettingCodes.ENABLE_PUSH: 0,
        },
    )
    conn.decoder.max_header_list_size = max_header_list
    return conn


class CountingServer(ServerConnection):
    """ServerConnection counting the requests its fast path reads (the equivalence test would
    prove nothing if none were)."""

    fast_requests = 0

    def _request_headers(self, stream_id: int, block: bytes, end_stream: bool) -> list[Event]:
        self.fast_requests += 1
        return super()._request_headers(stream_id, block, end_stream)


class Client(H2Connection):
    """An h2 client that opens streams past the server's concurrency limit (the server must
    refuse them, both paths alike)."""

    @property
    def open_outbound_streams(self) -> int:
        return 0


def client() -> Client:
    # Outbound validation off: a request may carry a response's `:status` (the server must
    # refuse it). Inbound validation off: the client only makes bytes and reads what comes
    # back to keep its windows and settings in step.
    return Client(
        H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            validate_inbound_headers=False,
        )
    )


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    length = len(payload)
    return FRAME_HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def norm(value: object) -> object:
    """Events, results and state as plain values to compare: objects as their class name and
    attributes, header tuples as (bytes, bytes), buffers as bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Enum):
        return value
    if isinstance(value, tuple):
        return tuple(norm(item) for item in value)
    if isinstance(value, (list, deque)):
        return [norm(item) for item in value]
    if isinstance(value, dict):
        return {norm(key): norm(item) for key, item in value.items()}
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return (type(value).__name__, norm(vars(value)))
    return value


def stream_state(conn: H2Connection) -> dict[int, object]:
    """Each stream's state machine (state, headers/trailers sent and received, closed by),
    windows, frame size and content-length counts."""
    return {
        stream_id: norm({name: item for name, item in vars(stream).items() if name != "config"})
        for stream_id, stream in conn.streams.items()
    }


def snapshot(conn: H2Connection) -> dict[str, object]:
    decoder = conn.decoder
    assert isinstance(decoder, FieldDecoder)
    encoder: object = conn.encoder
    assert isinstance(encoder, FieldEncoder)
    buffer = conn.incoming_buffer
    return {
        "state": conn.state_machine.state,
        "highest_inbound_stream_id": conn.highest_inbound_stream_id,
        "highest_outbound_stream_id": conn.highest_outbound_stream_id,
        "inbound_window": norm(conn._inbound_flow_control_window_manager),
        "outbound_window": conn.outbound_flow_control_window,
        "max_inbound_frame_size": conn.max_inbound_frame_size,
        "max_outbound_frame_size": conn.max_outbound_frame_size,
        "local_settings": norm(conn.local_settings),
        "remote_settings": norm(conn.remote_settings),
        "streams": stream_state(conn),
        "closed_streams": dict(conn._closed_streams),
        "decoder": (
            list(decoder.header_table.dynamic_entries),
            decoder.header_table_size,
            decoder.max_allowed_table_size,
            decoder.max_header_list_size,
            sorted(decoder._blocks),
        ),
        "encoder": encoder._size_update,
        "buffer": (bytes(buffer._data), buffer._preamble_len, norm(buffer._headers_buffer)),
    }


class Pair:
    """The library's connection and the fast one, called alike and compared."""

    def __init__(self, *, max_streams: int, max_header_list: int) -> None:
        # The library with sozu's corrections (streams past the limit refused, not a
        # connection error): the fast path goes through them too.
        self.lib = server(LibraryServer, max_streams=max_streams, max_header_list=max_header_list)
        self.fast = server(CountingServer, max_streams=max_streams, max_header_list=max_header_list)

    def call(self, name: str, *args: Any, **kwargs: Any) -> bool:
        """Call `name` on both: the same events or result, or the same exception (its type).
        Whether it raised."""
        outcomes: list[tuple[str, object]] = []
        for conn in (self.lib, self.fast):
            fresh = [list(arg) if isinstance(arg, list) else arg for arg in args]
            try:
                result = getattr(conn, name)(*fresh, **kwargs)
            except Exception as error:
                outcomes.append(("raised", type(error).__name__))
            else:
                outcomes.append(("returned", norm(result)))
        library, fast = outcomes
        assert fast == library, f"{name}{args!r}{kwargs!r}"
        return library[0] == "raised"

    def flush(self) -> bytes:
        """The same bytes to send, and the same state (after a connection error too); those
        bytes."""
        out = self.lib.data_to_send()
        assert self.fast.data_to_send() == out
        assert snapshot(self.fast) == snapshot(self.lib)
        return out


# -- the scenario: client actions, deliveries (split anywhere) and server actions, interleaved

EXTRA_FIELDS = [
    (b"user-agent", b"test/1.0"),
    (b"accept", b"*/*"),
    (b"x-empty", b""),
    (b"x-long", b"v" * 300),
]
COOKIES = [b"a=1", b"session=0123456789abcdefghij", b"b=2; c=3"]


@st.composite
def request_headers(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD"]))
    path = draw(st.sampled_from([b"/", b"/a", b"/index.html"]))
    headers = [(b":method", method), (b":scheme", b"https"), (b":authority", b"example.test")]
    headers.append((b":path", path))
    headers += draw(st.lists(st.sampled_from(EXTRA_FIELDS), max_size=2))
    headers += [
        (b"cookie", value) for value in draw(st.lists(st.sampled_from(COOKIES), max_size=3))
    ]
    length = draw(st.sampled_from([None, None, None, 0, 10, 40]))
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    return headers


def frame_boundaries(blob: bytes, start: int) -> list[int]:
    """The offsets in `blob` where a frame starts (after the first), from `start`."""
    offsets = []
    offset = start
    while offset + 9 <= len(blob):
        high, low, _, _, _ = FRAME_HEADER.unpack_from(blob, offset)
        offset += 9 + (high << 16 | low)
        if 0 < offset < len(blob):
            offsets.append(offset)
    return offsets


def control_frames(out: bytes) -> bytes:
    """The frames of `out` (whole frames) but HEADERS, CONTINUATION and DATA ones."""
    kept = bytearray()
    offset = 0
    while offset < len(out):
        high, low, kind, _, _ = FRAME_HEADER.unpack_from(out, offset)
        end = offset + 9 + (high << 16 | low)
        if kind in CONTROL:
            kept += out[offset:end]
        offset = end
    return bytes(kept)


class World:
    def __init__(self, data: st.DataObject) -> None:
        self.draw = data.draw
        self.pair = Pair(
            max_streams=self.draw(
                st.sampled_from([MAX_STREAMS, MAX_STREAMS, MAX_STREAMS, 4]), label="max streams"
            ),
            max_header_list=self.draw(
                st.sampled_from([MAX_HEADER_LIST, MAX_HEADER_LIST, MAX_HEADER_LIST, 700]),
                label="max header list",
            ),
        )
        self.client = client()
        self.client.initiate_connection()
        self.pending = bytearray(self.client.data_to_send())
        self.preface = True
        self.over = False
        self.server("initiate_connection")
        if self.draw(st.booleans(), label="connection window"):
            self.server("increment_flow_control_window", 1 << 20)

    # -- plumbing

    def server(self, name: str, *args: Any, **kwargs: Any) -> bool:
        raised = self.pair.call(name, *args, **kwargs)
        self.to_client(self.pair.flush())
        return raised

    def to_client(self, out: bytes) -> None:
        """The server's control frames to the client: its SETTINGS, PING, WINDOW_UPDATE,
        RST_STREAM and GOAWAY frames (responses would only end the client, on the odd ones
        the server actions make: DATA before HEADERS, past a content-length)."""
        control = control_frames(out)
        if control and not self.over:
            try:
                self.client.receive_data(control)
            except Exception:
                self.over = True  # the client gave up: nothing more to drive it with
            self.pending += self.client.data_to_send()

    def client_does(self, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as error:
            note_event(f"client refused: {type(error).__name__} {error}"[:90])
        self.pending += self.client.data_to_send()

    def stream(self) -> int:
        """A stream id for an action: one in use, one closed, or one never seen (odd: a server
        that started a stream of its own would lose its client)."""
        known = sorted(set(self.pair.lib.streams) | set(self.client.streams) | {1})
        odd = st.integers(0, 6).map(lambda n: 2 * n + 1)
        return self.draw(st.sampled_from(known) | odd, label="stream")

    # -- deliveries

    def deliver(self) -> None:
        blob = bytes(self.pending)
        self.pending.clear()
        if not blob:
            return
        mode = self.draw(st.sampled_from(["whole", "frames", "anywhere"]), label="split")
        cuts: list[int] = []
        boundaries = frame_boundaries(blob, len(PREFACE) if self.preface else 0)
        if mode == "frames" and boundaries:
            cuts = self.draw(st.lists(st.sampled_from(boundaries), max_size=8), label="cuts")
        elif mode == "anywhere" and len(blob) > 1:
            cuts = self.draw(st.lists(st.integers(1, len(blob) - 1), max_size=6), label="cuts")
        self.preface = False
        edges = [0, *sorted(set(cuts)), len(blob)]
        for start, end in itertools.pairwise(edges):
            if self.server("receive_data", blob[start:end]):
                self.over = True  # a connection error: the GOAWAY bytes were compared
                return

    # -- client actions

    def c_request(self) -> None:
        headers = self.draw(request_headers(), label="request")
        end = self.draw(st.booleans(), label="end")
        weight = self.draw(st.none() | st.none() | st.integers(1, 256), label="priority")
        stream_id = self.client.get_next_available_stream_id()
        self.client_does(
            lambda: self.client.send_headers(
                stream_id, headers, end_stream=end, priority_weight=weight
            )
        )
        if not end:
            self.c_body(stream_id)

    def c_body(self, stream_id: int) -> None:
        chunks = self.draw(st.lists(st.integers(0, 3000), max_size=3), label="body")
        end = self.draw(st.booleans(), label="end")
        for index, size in enumerate(chunks):
            pad = self.draw(st.none() | st.integers(0, 40), label="pad")
            last = end and index == len(chunks) - 1
            self.client_does(
                partial(self.client.send_data, stream_id, b"b" * size, last, pad_length=pad)
            )

    def c_burst(self) -> None:
        """Identical requests: indexed-only blocks after the first, and past the limit."""
        count = self.draw(
            st.sampled_from([1, 2, 3, 5, 8, MAX_STREAMS - 1, MAX_STREAMS + 2]),
            label="burst",
        )
        headers = self.draw(request_headers(), label="request")
        end = self.draw(st.booleans(), label="end")
        for _ in range(count):
            stream_id = self.client.get_next_available_stream_id()
            self.client_does(partial(self.client.send_headers, stream_id, headers, end))

    def c_data(self) -> None:
        self.c_body(self.stream())

    def c_reset(self) -> None:
        stream_id = self.stream()
        self.client_does(lambda: self.client.reset_stream(stream_id, ErrorCodes.CANCEL))

    def c_window(self) -> None:
        if self.draw(st.booleans(), label="on connection"):
            increment = self.draw(st.integers(1, 1 << 31), label="increment")
            self.client_does(lambda: self.client.increment_flow_control_window(increment))
        else:
            stream_id = self.stream()
            increment = self.draw(st.integers(1, 1 << 31), label="increment")
            self.client_does(
                lambda: self.client.increment_flow_control_window(increment, stream_id)
            )

    def c_ping(self) -> None:
        self.client_does(lambda: self.client.ping(b"12345678"))

    def c_settings(self) -> None:
        setting = self.draw(
            st.sampled_from(
                [
                    (SettingCodes.HEADER_TABLE_SIZE, 0),
                    (SettingCodes.HEADER_TABLE_SIZE, 100),
                    (SettingCodes.MAX_FRAME_SIZE, 16385),
                    (SettingCodes.MAX_FRAME_SIZE, 1 << 20),
                    (SettingCodes.INITIAL_WINDOW_SIZE, 0),
                    (SettingCodes.INITIAL_WINDOW_SIZE, 10),
                    (SettingCodes.INITIAL_WINDOW_SIZE, 1 << 20),
                ]
            ),
            label="setting",
        )
        self.client_does(lambda: self.client.update_settings(dict([setting])))

    def c_priority(self) -> None:
        stream_id = self.stream()
        self.client_does(lambda: self.client.prioritize(stream_id, weight=32))

    def c_goaway(self) -> None:
        self.client_does(lambda: self.client.close_connection())

    def c_raw_request(self) -> None:
        """A request HEADERS frame the h2 client does not make: padded, with a priority part,
        in pieces over CONTINUATION frames, with undefined flags or the reserved bit set."""
        headers = self.draw(request_headers(), label="request")
        stream_id = self.client.get_next_available_stream_id()
        self.client.highest_outbound_stream_id = stream_id  # the client skips it from now on
        block = self.client.encoder.encode(headers)
        flags = END_STREAM if self.draw(st.booleans(), label="end") else 0
        flags |= self.draw(st.sampled_from([0, 0x2, 0x10, 0x40, 0x80, 0xD2]), label="undefined")
        parts = self.draw(st.integers(1, 3), label="pieces")
        size = -(-len(block) // parts) or 1
        pieces = [block[start : start + size] for start in range(0, len(block), size)] or [b""]
        payload = pieces[0]
        if self.draw(st.booleans(), label="priority part"):
            depends_on = self.draw(st.sampled_from([0, 1, stream_id]), label="depends on")
            payload = struct.pack(">LB", depends_on, 15) + payload
            flags |= PRIORITY
        padding = self.draw(st.none() | st.integers(0, 20), label="padding")
        if padding is not None:
            payload = bytes((padding,)) + payload + b"\0" * padding
            flags |= PADDED
        reserved = 1 << 31 if self.draw(st.booleans(), label="reserved bit") else 0
        last = len(pieces) == 1
        self.pending += frame(
            HEADERS, flags | (END_HEADERS if last else 0), stream_id | reserved, payload
        )
        for index, piece in enumerate(pieces[1:], start=2):
            last = index == len(pieces)
            self.pending += frame(CONTINUATION, END_HEADERS if last else 0, stream_id, piece)

    def c_invalid(self) -> None:
        """A request on stream 0, on an even stream, on a stream not above the highest, or
        with a response's `:status` (informational or not)."""
        kind = self.draw(st.sampled_from(["zero", "even", "lower", "status"]), label="invalid")
        highest = self.client.highest_outbound_stream_id or 0
        headers = REQUEST
        flags = END_HEADERS | END_STREAM
        if kind == "status":
            status = self.draw(st.sampled_from([b"100", b"103", b"200"]), label="status")
            headers = [(b":status", status), *REQUEST]
            if status == b"200":  # the client sends that one
                stream_id = self.client.get_next_available_stream_id()
                self.client_does(
                    lambda: self.client.send_headers(stream_id, headers, end_stream=True)
                )
                return
            if not self.draw(st.booleans(), label="end"):
                flags = END_HEADERS
        stream_id = {
            "zero": 0,
            "even": highest + 1 if highest % 2 else highest + 2,
            "lower": max(highest - 2, 1),
            "status": highest + 2 if highest % 2 else highest + 1,
        }[kind]
        block = self.client.encoder.encode(headers)
        self.pending += frame(HEADERS, flags, stream_id, block)

    # -- server actions

    def s_respond(self) -> None:
        stream_id = self.stream()
        status = self.draw(st.sampled_from([b"200", b"204", b"404"]), label="status")
        headers = [(b":status", status)]
        length = self.draw(st.none() | st.integers(0, 70000), label="content-length")
        if length is not None:
            headers.append((b"content-length", b"%d" % length))
        headers += self.draw(
            st.lists(st.sampled_from([(b"server", b"sozu"), (b"x-empty", b"")]), max_size=2)
        )
        end = self.draw(st.booleans(), label="end")
        self.server("send_headers", stream_id, headers, end_stream=end)

    def s_whole_response(self) -> None:
        """`send_response`: when the fast connection takes the whole response, the library
        is given it as HEADERS then DATA ending the stream (or the HEADERS alone ending it);
        when it does not, neither connection changes (the snapshots compare)."""
        stream_id = self.stream()
        status = self.draw(st.sampled_from([b"200", b"204", b"404", b"103"]), label="status")
        headers = [(b":status", status)]
        headers += self.draw(
            st.lists(st.sampled_from([(b"server", b"sozu"), (b"x-big", b"v" * 20000)]), max_size=2)
        )
        size = self.draw(st.integers(0, 2000) | st.integers(2000, 70000), label="size")
        body = b"r" * size
        fast = self.pair.fast
        assert isinstance(fast, ServerConnection)
        cut = self.draw(st.none() | st.integers(0, len(headers)), label="stem")
        stem = None if cut is None else tuple(headers[:cut])
        taken = fast.send_response(stream_id, list(headers), body, stem)
        note_event(f"whole response taken: {taken}")
        if taken:
            lib = self.pair.lib
            lib.send_headers(stream_id, headers, end_stream=not size)
            if size:
                lib.send_data(stream_id, body, end_stream=True)
        self.to_client(self.pair.flush())

    def s_informational(self) -> None:
        stream_id = self.stream()
        end = self.draw(st.booleans(), label="end")
        self.server("send_headers", stream_id, [(b":status", b"103")], end_stream=end)

    def s_big_headers(self) -> None:
        """A block past the peer's frame size: HEADERS and CONTINUATION frames."""
        stream_id = self.stream()
        size = self.draw(st.integers(16000, 40000), label="size")
        headers = [(b":status", b"200"), (b"x-big", b"v" * size)]
        end = self.draw(st.booleans(), label="end")
        self.server("send_headers", stream_id, headers, end_stream=end)

    def s_data(self) -> None:
        stream_id = self.stream()
        size = self.draw(st.integers(0, 2000) | st.integers(2000, 70000), label="size")
        end = self.draw(st.booleans(), label="end")
        body: bytes | memoryview = b"d" * size
        if self.draw(st.booleans(), label="memoryview"):
            body = memoryview(body)
        self.server("send_data", stream_id, body, end_stream=end)

    def s_trailers(self) -> None:
        stream_id = self.stream()
        end = self.draw(st.booleans(), label="end")
        self.server("send_headers", stream_id, [(b"grpc-status", b"0")], end_stream=end)

    def s_reset(self) -> None:
        stream_id = self.stream()
        self.server("reset_stream", stream_id, ErrorCodes.INTERNAL_ERROR)

    def s_end(self) -> None:
        self.server("end_stream", self.stream())

    def s_acknowledge(self) -> None:
        size = self.draw(st.integers(0, 70000), label="size")
        self.server("acknowledge_received_data", size, self.stream())

    def s_settings(self) -> None:
        size = self.draw(st.sampled_from([0, 64, 4096]), label="table size")
        self.server("update_settings", {SettingCodes.HEADER_TABLE_SIZE: size})

    def s_finish_all(self) -> None:
        """A complete response on every stream that has its request: streams close."""
        for stream_id in sorted(self.pair.lib.streams):
            self.pair.call("send_headers", stream_id, [(b":status", b"204")], end_stream=True)
        self.to_client(self.pair.flush())

    def run(self) -> None:
        actions: list[Callable[[], None]] = [
            *[self.deliver] * 5,
            *[self.c_request] * 4,
            self.c_raw_request,
            *[self.c_burst] * 2,
            self.c_data,
            self.c_reset,
            self.c_window,
            self.c_ping,
            self.c_settings,
            self.c_priority,
            self.c_invalid,
            *[self.s_respond] * 3,
            *[self.s_whole_response] * 2,
            self.s_informational,
            self.s_big_headers,
            *[self.s_data] * 2,
            self.s_trailers,
            self.s_reset,
            self.s_end,
            self.s_acknowledge,
            self.s_settings,
            self.s_finish_all,
        ]
        if self.draw(st.sampled_from([True, True, False]), label="preface alone"):
            self.deliver()
        if self.draw(st.integers(0, 9), label="client goaway") == 0:
            actions.append(self.c_goaway)
        for _ in range(self.draw(st.integers(5, 40), label="steps")):
            if self.over:
                break
            action = self.draw(st.sampled_from(actions), label="action")
            if action.__name__.startswith("s_") and not self.pair.lib.highest_inbound_stream_id:
                continue  # a server that acts before any request closes its connection
            action()
        if not self.over:
            self.deliver()
        fast = self.pair.fast
        assert isinstance(fast, CountingServer)
        note_event(f"fast requests: {min(fast.fast_requests, 10)}")


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_fast_path_matches_library(data: st.DataObject) -> None:
    World(data).run()


# -- the fast paths are taken


class FrameCounting(CountingServer):
    """Counts the frames the library parses and the frames it serializes."""

    frames_in = 0
    writes = 0

    def _receive_frame(self, frame: Frame) -> list[Event]:
        self.frames_in += 1
        return super()._receive_frame(frame)

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        self.writes += 1
        super()._prepare_for_sending(frames)


def opened(kind: type[Server]) -> tuple[Server, Client]:
    """A server past the preface and SETTINGS exchange, and its client."""
    conn = server(kind)
    conn.initiate_connection()
    peer = client()
    peer.initiate_connection()
    conn.receive_data(peer.data_to_send())
    peer.receive_data(conn.data_to_send())
    conn.receive_data(peer.data_to_send())
    conn.data_to_send()
    return conn, peer


def test_request_headers_skip_the_library_frame_path() -> None:
    fast, peer = opened(FrameCounting)
    lib, _ = opened(H2Connection)
    for stream_id in (1, 3, 5):  # the first block indexes, the next ones are indexed-only
        peer.send_headers(stream_id, REQUEST, end_stream=stream_id != 3)
    peer.send_data(3, b"body", end_stream=True)
    peer.send_headers(7, REQUEST, end_stream=True, priority_weight=16)
    requests = peer.data_to_send()
    before = fast.frames_in
    events = fast.receive_data(requests)
    assert norm(events) == norm(lib.receive_data(requests))
    assert fast.fast_requests == 3
    assert fast.frames_in == before + 2  # the DATA frame, then the HEADERS with priority
    assert [type(event) for event in events[:5]] == [
        RequestReceived,
        StreamEnded,
        RequestReceived,
        RequestReceived,
        StreamEnded,
    ]
    assert snapshot(fast) == snapshot(lib)


def test_undefined_flags_and_reserved_bit_take_the_fast_path() -> None:
    fast, peer = opened(FrameCounting)
    lib, _ = opened(H2Connection)
    block = peer.encoder.encode(REQUEST)
    request = frame(HEADERS, END_HEADERS | END_STREAM | 0xD2, 1 | 1 << 31, block)
    before = fast.frames_in
    assert norm(fast.receive_data(request)) == norm(lib.receive_data(request))
    assert fast.fast_requests == 1
    assert fast.frames_in == before
    assert snapshot(fast) == snapshot(lib)


def test_response_headers_and_data_are_written_directly() -> None:
    fast, peer = opened(FrameCounting)
    lib, _ = opened(H2Connection)
    peer.send_headers(1, REQUEST, end_stream=True)
    requests = peer.data_to_send()
    fast.receive_data(requests)
    lib.receive_data(requests)
    before = fast.writes
    for conn in (fast, lib):
        conn.send_headers(1, [(b":status", b"200"), (b"content-length", b"5")])
        conn.send_data(1, b"hello", end_stream=True)
    assert fast.writes == before
    assert fast.data_to_send() == lib.data_to_send()
    assert snapshot(fast) == snapshot(lib)


# -- closed streams are forgotten before a stream is admitted, on both paths


def closed_then_new(kind: type[Server]) -> tuple[Server, Client]:
    """Stream 1 reset by the client, then stream 3 opened (in a read of its own)."""
    conn, peer = opened(kind)
    peer.send_headers(1, REQUEST, end_stream=True)
    peer.reset_stream(1)
    conn.receive_data(peer.data_to_send())
    peer.send_headers(3, REQUEST, end_stream=True)
    conn.receive_data(peer.data_to_send())
    return conn, peer


def test_closed_streams_are_swept_when_a_request_opens() -> None:
    assert sorted(closed_then_new(H2Connection)[0].streams) == [3]
    assert sorted(closed_then_new(ServerConnection)[0].streams) == [3]


def send_headers_error(conn: H2Connection) -> str:
    try:
        conn.send_headers(1, [(b":status", b"200")])
    except Exception as error:
        return type(error).__name__
    return "none"


def test_response_on_a_swept_stream_raises_alike() -> None:
    lib = send_headers_error(closed_then_new(H2Connection)[0])
    assert lib == "StreamIDTooLowError"
    assert send_headers_error(closed_then_new(ServerConnection)[0]) == lib


def initial_window_error(kind: type[H2Connection]) -> str:
    """Stream 1's window raised to the limit, stream 1 complete, stream 3 opened: SETTINGS
    then raises the initial window by one."""
    conn, peer = opened(kind)
    peer.send_headers(1, REQUEST, end_stream=True)
    peer.increment_flow_control_window((1 << 31) - 1 - 65535, stream_id=1)
    conn.receive_data(peer.data_to_send())
    conn.send_headers(1, [(b":status", b"204")], end_stream=True)
    peer.receive_data(conn.data_to_send())
    peer.send_headers(3, REQUEST, end_stream=True)
    conn.receive_data(peer.data_to_send())
    peer.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65536})
    try:
        conn.receive_data(peer.data_to_send())
    except Exception as error:
        return type(error).__name__
    return "none"


def test_initial_window_change_ignores_closed_streams() -> None:
    assert initial_window_error(H2Connection) == "none"
    assert initial_window_error(ServerConnection) == "none"


def test_a_whole_response_is_the_library_headers_and_data() -> None:
    fast, peer = opened(ServerConnection)
    lib, _ = opened(H2Connection)
    peer.send_headers(1, REQUEST, end_stream=True)
    peer.send_headers(3, REQUEST, end_stream=False)
    requests = peer.data_to_send()
    assert norm(fast.receive_data(requests)) == norm(lib.receive_data(requests))
    head = [(b":status", b"200"), (b"content-length", b"5")]
    assert fast.send_response(1, list(head), b"hello")
    lib.send_headers(1, head)
    lib.send_data(1, b"hello", end_stream=True)
    assert fast.data_to_send() == lib.data_to_send()
    assert snapshot(fast) == snapshot(lib)
    # Not taken (nothing changes): a request still open, a stream already answered.
    assert not fast.send_response(3, list(head), b"hello")
    assert not fast.send_response(1, list(head), b"hello")
    assert fast.data_to_send() == b""
    assert snapshot(fast) == snapshot(lib)


def test_forgotten_streams_are_trimmed_alike() -> None:
    """Past the library's bound on the closed streams it remembers (2**16; 3 here), both
    keep the same last ones, in the same order."""
    fast, peer = opened(ServerConnection)
    lib, _ = opened(H2Connection)
    for conn in (fast, lib):
        conn._closed_streams._size_limit = 3  # type: ignore[attr-defined]
    for first in range(1, 40, 10):
        ids = range(first, first + 10, 2)
        for stream_id in ids:
            peer.send_headers(stream_id, REQUEST, end_stream=True)
        requests = peer.data_to_send()
        assert norm(fast.receive_data(requests)) == norm(lib.receive_data(requests))
        for conn in (fast, lib):
            for stream_id in ids:
                conn.send_headers(stream_id, [(b":status", b"204")], end_stream=True)
        assert fast.data_to_send() == lib.data_to_send()
    peer.send_headers(41, REQUEST, end_stream=True)
    requests = peer.data_to_send()
    assert norm(fast.receive_data(requests)) == norm(lib.receive_data(requests))
    assert list(fast._closed_streams.items()) == list(lib._closed_streams.items())
    assert len(lib._closed_streams) == 3
