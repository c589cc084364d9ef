"""The HTTP/2 flood defences: the frame guard on raw frames (split at every byte, across
reads), and the session ending a flooding connection with GOAWAY ENHANCE_YOUR_CALM, counted
by kind, while a client within the limits keeps its connection. A response held behind a
window the client keeps shut is reset after front_timeout."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from support.http1_driver import PEER, World

from sozu.worker.core.h2.flood import (
    CONTINUATION_FLOOD,
    EMPTY_DATA_FLOOD,
    FLOOD_WINDOW,
    FRAME_NAMES,
    HEADER_LIST_FLOOD,
    PING_FLOOD,
    PREFACE,
    PRIORITY_FLOOD,
    SETTINGS_FLOOD,
    WINDOW_UPDATE_FLOOD,
    FloodGuard,
    FloodLimits,
)
from sozu.worker.core.h2.session import CONNECTION_OUT, H2Session
from sozu.worker.core.http1.counters import HttpCounters

NOW = 1000.0
LIMITS = FloodLimits(
    ping=3, settings=3, empty_data=3, window_update_stream0=3, priority=3, continuation=2
)


def frames_of(kind: str, count: int) -> bytes:
    """`count` frames of one flood kind, serialized."""
    out = b""
    for index in range(count):
        if kind == PING_FLOOD:
            out += PingFrame(0, opaque_data=index.to_bytes(8, "big")).serialize()
        elif kind == SETTINGS_FLOOD:
            out += SettingsFrame(0, settings={4: 65535}).serialize()
        elif kind == EMPTY_DATA_FLOOD:
            out += DataFrame(1, b"").serialize()
        elif kind == WINDOW_UPDATE_FLOOD:
            out += WindowUpdateFrame(0, window_increment=1).serialize()
        elif kind == PRIORITY_FLOOD:
            out += PriorityFrame(3 + 2 * index, depends_on=0, stream_weight=15).serialize()
        else:
            raise AssertionError(kind)
    return out


def header_block(continuations: int) -> bytes:
    """A HEADERS frame without END_HEADERS followed by `continuations` CONTINUATION frames,
    the last one ending the block."""
    out = HeadersFrame(1, data=b"\x82").serialize()
    for index in range(continuations):
        frame = ContinuationFrame(1, data=b"\x84")
        if index == continuations - 1:
            frame.flags.add("END_HEADERS")
        out += frame.serialize()
    return out


def feed_split(guard: FloodGuard, data: bytes, step: int) -> str | None:
    for start in range(0, len(data), step):
        flood = guard.feed(data[start : start + step], NOW)
        guard.check_invariants()
        if flood is not None:
            return flood
    return None


@pytest.mark.parametrize(
    "kind", [PING_FLOOD, SETTINGS_FLOOD, EMPTY_DATA_FLOOD, WINDOW_UPDATE_FLOOD, PRIORITY_FLOOD]
)
@pytest.mark.parametrize("step", [1, 2, 7, 9, 10, 4096])
def test_each_flood_is_found_one_frame_past_its_limit(kind: str, step: int) -> None:
    counters = HttpCounters()
    guard = FloodGuard(LIMITS, counters)
    assert feed_split(guard, PREFACE + frames_of(kind, 3), step) is None
    assert feed_split(guard, frames_of(kind, 1), step) == kind
    assert sum(counters.h2_frames) == 4


@pytest.mark.parametrize("step", [1, 3, 9, 4096])
def test_continuation_frames_are_counted_per_header_block(step: int) -> None:
    guard = FloodGuard(LIMITS, HttpCounters())
    # Two blocks at the limit each: no flood, the count starts again with each HEADERS.
    assert feed_split(guard, PREFACE + header_block(2) + header_block(2), step) is None
    assert feed_split(guard, header_block(3), step) == CONTINUATION_FLOOD


def test_acks_and_frames_that_carry_work_are_not_counted() -> None:
    counters = HttpCounters()
    guard = FloodGuard(LIMITS, counters)
    quiet = b"".join(
        (
            PREFACE,
            *(PingFrame(0, flags=["ACK"]).serialize() for _ in range(10)),
            *(SettingsFrame(0, flags=["ACK"]).serialize() for _ in range(10)),
            *(DataFrame(1, b"x" * 100).serialize() for _ in range(10)),
            *(DataFrame(1, b"", flags=["END_STREAM"]).serialize() for _ in range(10)),
            *(WindowUpdateFrame(1, window_increment=1).serialize() for _ in range(10)),
        )
    )
    assert feed_split(guard, quiet, 5) is None
    frames = dict(zip(FRAME_NAMES, counters.h2_frames, strict=False))
    assert frames["ping"] == frames["settings"] == frames["window_update"] == 10
    assert frames["data"] == 20


def test_the_counts_start_again_with_each_window() -> None:
    guard = FloodGuard(LIMITS, HttpCounters())
    guard.feed(PREFACE, NOW)
    for second in range(5):
        assert guard.feed(frames_of(PING_FLOOD, 3), NOW + second * FLOOD_WINDOW) is None
    assert guard.feed(frames_of(PING_FLOOD, 1), NOW + 4 * FLOOD_WINDOW) == PING_FLOOD


def test_unknown_frame_types_are_counted_and_passed_over() -> None:
    counters = HttpCounters()
    guard = FloodGuard(LIMITS, counters)
    unknown = (5).to_bytes(3, "big") + bytes([0xFA, 0, 0, 0, 0, 0]) + b"hello"
    assert guard.feed(PREFACE + unknown + frames_of(PING_FLOOD, 3), NOW) is None
    assert counters.h2_frames[-1] == 1
    assert counters.h2_frames[FRAME_NAMES.index("ping")] == 3


# -- the session


def world(**keys: Any) -> World:
    w = World(**keys)
    w.cluster("a", [("a1", 8001)])
    w.frontend("a.test", "a")
    return w


def connect(
    w: World, settings: dict[int, int] | None = None
) -> tuple[H2Session, h2.connection.H2Connection]:
    session = H2Session(w.ctx, PEER)
    session.start(NOW)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    if settings:
        client.update_settings(settings)
    session.front_data(client.data_to_send(), NOW)
    client.receive_data(bytes(session.to_front))
    session.to_front.clear()
    session.front_data(client.data_to_send(), NOW)  # the client's ACK
    session.to_front.clear()
    session.check_invariants()
    return session, client


def send_get(session: H2Session, client: h2.connection.H2Connection) -> None:
    """A GET of `/` on stream 1, delivered."""
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", "a.test"), (":path", "/")]
    client.send_headers(1, headers, end_stream=True)
    session.front_data(client.data_to_send(), NOW)


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        (PING_FLOOD, "h2_max_ping_per_window"),
        (SETTINGS_FLOOD, "h2_max_settings_per_window"),
        (EMPTY_DATA_FLOOD, "h2_max_empty_data_per_window"),
        (WINDOW_UPDATE_FLOOD, "h2_max_window_update_stream0_per_window"),
    ],
)
def test_a_flooding_client_gets_goaway_enhance_your_calm(kind: str, key: str) -> None:
    w = world(**{key: 5})
    session, client = connect(w)
    if kind == EMPTY_DATA_FLOOD:
        client.send_headers(
            1, [(":method", "POST"), (":scheme", "https"), (":authority", "a.test"), (":path", "/")]
        )
        session.front_data(client.data_to_send(), NOW)
        session.to_front.clear()
    # The client's own SETTINGS at the start counts within the same window.
    session.front_data(frames_of(kind, 4 if kind == SETTINGS_FLOOD else 5), NOW)
    assert not session.done, "at the limit the connection stays"
    session.front_data(frames_of(kind, 1), NOW)
    session.check_invariants()
    assert session.done
    events = client.receive_data(bytes(session.to_front))
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert [e.error_code for e in terminated] == [ErrorCodes.ENHANCE_YOUR_CALM]
    assert w.ctx.counters.h2_floods == {kind: 1}


def test_a_continuation_flood_ends_the_connection() -> None:
    w = world(h2_max_continuation_frames=4)
    session, _ = connect(w)
    session.front_data(header_block(4)[: -len(ContinuationFrame(1, data=b"x").serialize())], NOW)
    assert not session.done
    session.front_data(header_block(6), NOW)
    assert session.done
    assert w.ctx.counters.h2_floods == {CONTINUATION_FLOOD: 1}


def test_a_shut_window_resets_the_stream_after_front_timeout() -> None:
    w = world(front_timeout=10)
    session, client = connect(w, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    send_get(session, client)
    session.response_data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", NOW)
    session.check_invariants()
    assert session.deadline == NOW + 10
    events = client.receive_data(bytes(session.to_front))
    session.to_front.clear()
    assert any(isinstance(e, h2.events.ResponseReceived) for e in events)
    assert not any(isinstance(e, h2.events.DataReceived) for e in events), "no window, no data"
    session.on_timer(NOW + 5)  # early: nothing changes
    assert not session.cancelled
    session.on_timer(NOW + 10)
    session.check_invariants()
    assert session.cancelled == [1]
    events = client.receive_data(bytes(session.to_front))
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(1, ErrorCodes.CANCEL)]
    assert w.ctx.counters.h2_window_stalls == 1
    assert not session.done, "the connection stays for its other streams"


def test_a_window_opened_in_time_lets_the_response_through() -> None:
    w = world(front_timeout=10)
    session, client = connect(w, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    send_get(session, client)
    session.response_data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", NOW)
    client.receive_data(bytes(session.to_front))
    session.to_front.clear()
    client.increment_flow_control_window(100, stream_id=1)
    session.front_data(client.data_to_send(), NOW + 9)
    session.check_invariants()
    assert session.deadline == float("inf")
    events = client.receive_data(bytes(session.to_front))
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data == b"hello"
    assert w.ctx.counters.h2_window_stalls == 0


def test_a_shut_window_pauses_the_stream_s_core_until_the_client_reads() -> None:
    # With unsent body waiting, a stream's core may hand over only up to the buffer limit of
    # it (short of what it holds: paused); the window opening resumes it, once.
    w = world(front_timeout=10)
    session, client = connect(w, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    send_get(session, client)
    limit = w.ctx.buffer_limit
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (3 * limit)
    assert session.stream_room(1, 10**6) == 10**6, "nothing waits: all of it"
    session.response_data(1, head + b"a" * (limit - 10), NOW)
    assert session.stream_room(1, 4) == 4
    assert session.paused == 0
    assert session.stream_room(1, 50) == 10, "up to the limit"
    assert session.paused == 1
    session.response_data(1, b"b" * 10, NOW)
    assert session.stream_room(1, 50) == 0
    assert session.stream_room(1, 50) == 0, "asked twice, paused once"
    session.check_invariants()
    assert session.paused == 1
    assert session.take_resumed() == [], "the window is still shut"
    client.receive_data(bytes(session.to_front))
    session.to_front.clear()
    client.increment_flow_control_window(100, stream_id=1)
    session.front_data(client.data_to_send(), NOW + 1)
    assert session.take_resumed() == [1]
    assert session.take_resumed() == [], "resumed once"
    assert session.stream_room(1, 40) == 40
    session.check_invariants()
    assert session.paused == 0
    events = client.receive_data(bytes(session.to_front))
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data == b"a" * 100


def test_a_core_ending_while_paused_is_a_stall_not_a_complete_response() -> None:
    # Its core asked for a lingering close after the whole response, but still held bytes
    # the client never took: not complete (no clean END_STREAM on a short body).
    w = world(front_timeout=10)
    session, client = connect(w, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    send_get(session, client)
    limit = w.ctx.buffer_limit
    session.response_data(1, b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * (limit + 1), NOW)
    assert session.stream_room(1, 5) == 0
    session.stream_closed(1, NOW + 10, complete=True)
    session.check_invariants()
    events = client.receive_data(bytes(session.to_front))
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(1, ErrorCodes.CANCEL)]
    assert not any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert w.ctx.counters.h2_window_stalls == 1
    assert session.paused == 0


def test_unread_frames_of_the_connection_pause_its_streams() -> None:
    w = world()
    session, client = connect(w)
    send_get(session, client)
    session.response_data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhel", NOW)
    session.to_front += b"\0" * CONNECTION_OUT  # as if the client had read none of it
    assert session.stream_room(1, 6) == 0
    assert session.take_resumed() == []
    del session.to_front[:CONNECTION_OUT]
    assert session.take_resumed() == [1]
    assert session.stream_room(1, 6) == 6
    session.check_invariants()


def test_an_hpack_bomb_ends_the_connection_without_decoding_it_whole() -> None:
    # One 4,000-byte value in the dynamic table, then a block of 2,000 one-byte references
    # to it: 8 MB once decoded, far past the 65,536-byte header list limit.
    w = world()
    session, client = connect(w)
    encoder = hpack.Encoder()
    request = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test")]
    request.append((b":path", b"/"))
    first = encoder.encode([*request, (b"x-bomb", b"a" * 4000)])
    session.front_data(
        HeadersFrame(1, data=first, flags=["END_HEADERS", "END_STREAM"]).serialize(), NOW
    )
    assert not session.done
    bomb = encoder.encode([*request, *[(b"x-bomb", b"a" * 4000)] * 2000])
    assert len(bomb) < 16384
    session.front_data(
        HeadersFrame(3, data=bomb, flags=["END_HEADERS", "END_STREAM"]).serialize(), NOW
    )
    session.check_invariants()
    assert session.done
    events = client.receive_data(bytes(session.to_front))
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert [e.error_code for e in terminated] == [ErrorCodes.ENHANCE_YOUR_CALM]
    assert w.ctx.counters.h2_floods == {HEADER_LIST_FLOOD: 1}
    assert w.ctx.counters.h2_protocol_errors == 0


def test_window_updates_returning_what_was_sent_are_no_flood() -> None:
    # A client reading a large response returns connection window for each DATA frame it
    # reads: as many stream-0 WINDOW_UPDATEs as DATA frames sent are no flood.
    guard = FloodGuard(LIMITS, HttpCounters())
    guard.feed(PREFACE, NOW)
    guard.credit += 50
    assert guard.feed(frames_of(WINDOW_UPDATE_FLOOD, 53), NOW) is None
    assert guard.feed(frames_of(WINDOW_UPDATE_FLOOD, 1), NOW) == WINDOW_UPDATE_FLOOD
    guard.check_invariants()


def test_a_client_reading_a_large_response_keeps_its_connection() -> None:
    w = world(h2_max_window_update_stream0_per_window=2)
    session, client = connect(w)
    send_get(session, client)
    body = b"x" * (1 << 20)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    session.response_data(1, head, NOW)
    received = 0
    for start in range(0, len(body), 16384):
        session.response_data(1, body[start : start + 16384], NOW)
        for event in client.receive_data(bytes(session.to_front)):
            if isinstance(event, h2.events.DataReceived):
                received += len(event.data)
                # The window given back as the client reads (the h2 library sends a
                # WINDOW_UPDATE on stream 0 once half the connection window is used).
                client.acknowledge_received_data(event.flow_controlled_length, 1)
        session.to_front.clear()
        out = client.data_to_send()
        if out:
            session.front_data(out, NOW)
        session.check_invariants()
        assert not session.done, w.ctx.counters.h2_floods
    assert w.ctx.counters.h2_frames[FRAME_NAMES.index("window_update")] > 2
    assert not w.ctx.counters.h2_floods
