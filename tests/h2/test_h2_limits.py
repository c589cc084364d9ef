"""The listener's h2 limits in the session core: new streams past h2_max_concurrent_streams
are refused (RST_STREAM REFUSED_STREAM) while the streams within it go on and the connection
stays, their header blocks decoded all the same (HPACK in step); h2_max_header_list_size is
the limit the decoder applies, not only the one advertised; a response read whole outlives
its stream core (which ends on its own idle timer while the client reads slowly): it is sent
as the window opens, or reset by the zero-window defence (CANCEL, counted)."""

from __future__ import annotations

from typing import Any

import hpack
from h2.errors import ErrorCodes
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from support.http1_driver import PEER, World

from sozu.worker.core.h2.flood import HEADER_LIST_FLOOD, PREFACE
from sozu.worker.core.h2.session import H2Session

NOW = 1000.0


def connect(settings: dict[int, int] | None = None, **keys: Any) -> tuple[World, H2Session]:
    world = World(**keys)
    world.cluster("a", [("a1", 8001)])
    world.frontend("a.test", "a")
    session = H2Session(world.ctx, PEER)
    session.start(NOW)
    session.front_data(PREFACE + SettingsFrame(0, settings=settings or {}).serialize(), NOW)
    session.to_front.clear()
    return world, session


def request(
    encoder: hpack.Encoder,
    stream_id: int,
    path: bytes,
    *extra: tuple[bytes, bytes],
    end: bool = True,
) -> bytes:
    fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test")]
    block = encoder.encode([*fields, (b":path", path), *extra])
    flags = ["END_HEADERS", "END_STREAM"] if end else ["END_HEADERS"]
    return HeadersFrame(stream_id, data=block, flags=flags).serialize()


def frames(data: bytes) -> list[Frame]:
    out = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        out.append(frame)
        view = view[9 + length :]
    return out


def resets(session: H2Session) -> list[tuple[int, int]]:
    sent = frames(bytes(session.to_front))
    session.to_front.clear()
    return [(f.stream_id, f.error_code) for f in sent if isinstance(f, RstStreamFrame)]


def test_streams_past_the_concurrency_limit_are_refused_and_the_others_go_on() -> None:
    world, session = connect(h2_max_concurrent_streams=2)
    encoder = hpack.Encoder()
    # Each path is a new entry of the dynamic table (literal with incremental indexing).
    session.front_data(b"".join(request(encoder, i, b"/%d" % i) for i in (1, 3, 5, 7)), NOW)
    session.check_invariants()
    assert [stream_id for stream_id, _ in session.opened] == [1, 3]
    refused = int(ErrorCodes.REFUSED_STREAM)
    assert resets(session) == [(5, refused), (7, refused)]
    assert not session.done
    assert not session.goaway_sent
    assert world.ctx.counters.h2_protocol_errors == 0
    # The refused blocks were decoded: both tables hold the same entries.
    table = session.conn.decoder.header_table
    assert list(table.dynamic_entries) == list(encoder.header_table.dynamic_entries)
    # A body on a refused stream is answered on that stream alone (the library: STREAM_CLOSED).
    session.front_data(request(encoder, 9, b"/9", end=False), NOW)
    session.front_data(DataFrame(9, b"body", flags=["END_STREAM"]).serialize(), NOW)
    assert resets(session) == [(9, refused), (9, int(ErrorCodes.STREAM_CLOSED))]
    assert not session.done
    # A slot freed (the client resets stream 1): the next stream is taken.
    session.opened.clear()
    session.front_data(
        RstStreamFrame(1, error_code=8).serialize() + request(encoder, 11, b"/7"), NOW
    )
    session.check_invariants()
    assert [stream_id for stream_id, _ in session.opened] == [11]
    assert resets(session) == []
    assert list(table.dynamic_entries) == list(encoder.header_table.dynamic_entries)


def test_streams_refused_past_the_limit_count_as_client_resets() -> None:
    # Request after request past the limit: each refused, and past the rapid reset limit of
    # one window, GOAWAY ENHANCE_YOUR_CALM (a refusal costs the client nothing otherwise).
    world, session = connect(h2_max_concurrent_streams=1, h2_max_rst_stream_per_window=3)
    encoder = hpack.Encoder()
    session.front_data(request(encoder, 1, b"/", end=False), NOW)
    refused = int(ErrorCodes.REFUSED_STREAM)
    for stream_id in (3, 5, 7):
        session.front_data(request(encoder, stream_id, b"/"), NOW)
        assert resets(session) == [(stream_id, refused)]
        assert not session.done
    session.front_data(request(encoder, 9, b"/"), NOW)
    assert session.done
    assert session.goaway_sent
    assert world.ctx.counters.h2_rapid_resets == 1
    session.check_invariants()


def test_the_configured_header_list_size_is_the_one_applied() -> None:
    padding = (b"x-pad", b"p" * 2000)
    # Under the default limit (65,536 bytes): served.
    world, session = connect()
    session.front_data(request(hpack.Encoder(), 1, b"/", padding), NOW)
    assert [stream_id for stream_id, _ in session.opened] == [1]
    assert not session.done
    # Over a configured 1,024 bytes, whichever decoder reads it: ENHANCE_YOUR_CALM.
    for indexed in (False, True):
        world, session = connect(h2_max_header_list_size=1024)
        encoder = hpack.Encoder()
        if indexed:
            # A block of one-byte references only (hpack_in.py's fast path), once the padding
            # is in the table: the first request stays under the limit.
            small = (b"x-pad", b"p" * 500)
            session.front_data(request(encoder, 1, b"/", small), NOW)
            assert not session.done
            block = request(encoder, 3, b"/", small, small)
        else:
            block = request(encoder, 1, b"/", padding)
        session.front_data(block, NOW)
        session.check_invariants()
        assert session.done, indexed
        goaways = [f for f in frames(bytes(session.to_front)) if isinstance(f, GoAwayFrame)]
        assert [f.error_code for f in goaways] == [int(ErrorCodes.ENHANCE_YOUR_CALM)]
        assert world.ctx.counters.h2_floods == {HEADER_LIST_FLOOD: 1}


def stalled_response(front_timeout: int) -> tuple[World, H2Session]:
    """A client with a zero initial window, and a GET whose response (5 bytes of body) its
    core wrote whole: the HEADERS went out, the body waits for the window."""
    world, session = connect({4: 0}, front_timeout=front_timeout)  # SETTINGS_INITIAL_WINDOW_SIZE
    session.front_data(request(hpack.Encoder(), 1, b"/"), NOW)
    session.response_data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", NOW)
    sent = frames(bytes(session.to_front))
    session.to_front.clear()
    assert [type(f).__name__ for f in sent] == ["HeadersFrame"]
    return world, session


def test_a_response_read_whole_outlives_its_core_until_the_window_opens() -> None:
    world, session = stalled_response(front_timeout=10)
    # The stream core ends on its own (its idle timer, as an HTTP/1.1 keep-alive wait).
    session.stream_closed(1, NOW + 3)
    session.check_invariants()
    assert resets(session) == [], "a complete response was reset"
    session.front_data(WindowUpdateFrame(1, window_increment=100).serialize(), NOW + 4)
    session.check_invariants()
    data = [f for f in frames(bytes(session.to_front)) if isinstance(f, DataFrame)]
    assert [(f.data, "END_STREAM" in f.flags) for f in data] == [(b"hello", True)]
    assert not session.streams
    assert world.ctx.counters.h2_window_stalls == 0


def test_a_response_read_whole_behind_a_shut_window_is_reset_by_the_stall_defence() -> None:
    world, session = stalled_response(front_timeout=10)
    session.stream_closed(1, NOW + 3)
    session.on_timer(NOW + 9)
    assert resets(session) == []
    session.on_timer(NOW + 10)
    session.check_invariants()
    assert resets(session) == [(1, int(ErrorCodes.CANCEL))]
    assert world.ctx.counters.h2_window_stalls == 1
    assert not session.streams
    assert not session.done


def test_a_core_ending_before_its_response_is_read_whole_still_resets_the_stream() -> None:
    _, session = connect()
    session.front_data(request(hpack.Encoder(), 1, b"/"), NOW)
    session.response_data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", NOW)
    session.to_front.clear()
    session.stream_closed(1, NOW)
    assert resets(session) == [(1, int(ErrorCodes.INTERNAL_ERROR))]
