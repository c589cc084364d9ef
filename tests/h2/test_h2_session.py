"""The HTTP/2 frontend session core, driven by an `h2` client in memory: request streams
become HTTP/1.1 requests of their own cores (routed like HTTP/1.1, one connection to several
clusters), responses come back as h2 streams, malformed requests are refused, and a drain
sends GOAWAY with the last stream id and lets open streams finish."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes
from hpack import Encoder
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

from sozu.worker.core.h2.session import H2Session
from sozu.worker.core.http1.actions import CONNECT
from sozu.worker.core.http1.session import Http1Session

NOW = 1000.0


class Client:
    """An h2 client talking to one H2Session, and the stream cores it opened."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.s = H2Session(world.ctx, PEER)
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.c.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.inner: dict[int, Http1Session] = {}
        self.s.start(NOW)
        self.exchange()

    def exchange(self) -> None:
        """Deliver both ways until quiet."""
        for _ in range(10):
            out = self.c.data_to_send()
            if out:
                self.s.front_data(out, NOW)
            for stream_id, inner in self.s.opened:
                self.inner[stream_id] = inner
            self.s.opened.clear()
            back = bytes(self.s.to_front)
            self.s.to_front.clear()
            if back:
                self.events += self.c.receive_data(back)
            if not out and not back:
                break
        self.s.check_invariants()

    def get(self, authority: str, path: str = "/", **extra: str) -> int:
        stream_id = self.c.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", authority)]
        self.c.send_headers(stream_id, [*headers, (":path", path), *extra.items()], end_stream=True)
        self.exchange()
        return stream_id

    def respond(self, stream_id: int, response: bytes) -> None:
        self.s.response_data(stream_id, response, NOW)
        self.exchange()

    def of(self, kind: type, stream_id: int | None = None) -> list[h2.events.Event]:
        return [
            e
            for e in self.events
            if isinstance(e, kind)
            and (stream_id is None or getattr(e, "stream_id", 0) == stream_id)
        ]


def two_clusters() -> World:
    world = World()
    world.cluster("a", [("a1", 8001)])
    world.cluster("b", [("b1", 8002)])
    world.frontend("a.test", "a")
    world.frontend("b.test", "b")
    return world


def test_streams_of_one_connection_go_to_their_own_clusters() -> None:
    world = two_clusters()
    client = Client(world)
    first = client.get("a.test", "/x?y=1")
    second = client.get("b.test", "/z")
    assert set(client.inner) == {first, second}
    for stream_id, cluster_id, line in ((first, "a", b"GET /x?y=1 "), (second, "b", b"GET /z ")):
        inner = client.inner[stream_id]
        assert inner.actions & CONNECT
        assert inner.target is not None
        assert inner.target.cluster_id == cluster_id
        assert inner.request_bytes.startswith(line + b"HTTP/1.1\r\n"), inner.request_bytes
    assert world.ctx.counters.h2_streams == 2
    client.respond(
        second, b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"
    )
    (response,) = client.of(h2.events.ResponseReceived, second)
    assert isinstance(response, h2.events.ResponseReceived)
    assert (b":status", b"200") in response.headers
    assert not any(name == b"connection" for name, _ in response.headers)
    data = client.of(h2.events.DataReceived, second)
    assert b"".join(e.data for e in data if isinstance(e, h2.events.DataReceived)) == b"hello"
    assert client.of(h2.events.StreamEnded, second)
    assert not client.of(h2.events.StreamEnded, first)
    assert client.s.stream_finished(second)
    assert not client.s.stream_finished(first)


def test_a_chunked_response_loses_its_framing() -> None:
    world = two_clusters()
    client = Client(world)
    stream = client.get("a.test")
    client.respond(stream, b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.respond(stream, b"3\r\nabc\r\n0\r\n\r\n")
    (response,) = client.of(h2.events.ResponseReceived, stream)
    assert isinstance(response, h2.events.ResponseReceived)
    assert (b":status", b"404") in response.headers
    assert not any(name == b"transfer-encoding" for name, _ in response.headers)
    data = client.of(h2.events.DataReceived, stream)
    assert b"".join(e.data for e in data if isinstance(e, h2.events.DataReceived)) == b"abc"
    assert client.of(h2.events.StreamEnded, stream)


def test_a_connection_specific_header_resets_the_stream_alone() -> None:
    world = two_clusters()
    client = Client(world)
    # The client library refuses to send it: its own header checks are turned off.
    client.c.config.validate_outbound_headers = False
    client.c.config.normalize_outbound_headers = False
    bad = client.get("a.test", **{"transfer-encoding": "chunked"})
    good = client.get("b.test")
    resets = client.of(h2.events.StreamReset, bad)
    assert [e.error_code for e in resets if isinstance(e, h2.events.StreamReset)] == [
        ErrorCodes.PROTOCOL_ERROR
    ]
    assert bad not in client.inner
    assert good in client.inner
    assert world.ctx.counters.h2_refused_streams == 1


def test_a_body_longer_than_its_content_length_ends_the_connection() -> None:
    world = two_clusters()
    client = Client(world)
    stream_id = client.c.get_next_available_stream_id()
    headers = [(":method", "POST"), (":scheme", "https"), (":authority", "a.test")]
    client.c.send_headers(stream_id, [*headers, (":path", "/"), ("content-length", "2")])
    client.exchange()
    client.c.send_data(stream_id, b"0123456789", end_stream=True)
    client.exchange()
    inner = client.inner[stream_id]
    # Only the head went to the stream's core: never the body past the declared length.
    assert inner.fbuf == b"" or len(inner.fbuf) <= 2
    terminated = client.of(h2.events.ConnectionTerminated)
    assert [e.error_code for e in terminated if isinstance(e, h2.events.ConnectionTerminated)] == [
        ErrorCodes.PROTOCOL_ERROR
    ]
    assert client.s.done
    assert client.s.cancelled == [stream_id]
    assert world.ctx.counters.h2_protocol_errors == 1


def frames(data: bytes) -> list[Frame]:
    """The frames of raw server output (read without a client state machine: the client
    library treats a GOAWAY as the end of the connection)."""
    found: list[Frame] = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        found.append(frame)
        data = data[9 + length :]
    return found


def goaway_names(client: Client, stream: int) -> None:
    """The session's GOAWAY NO_ERROR names `stream`, still open."""
    (goaway,) = frames(bytes(client.s.to_front))
    client.s.to_front.clear()
    assert isinstance(goaway, GoAwayFrame)
    assert goaway.error_code == ErrorCodes.NO_ERROR
    assert goaway.last_stream_id == stream
    assert client.s.deadline == float("inf")  # a stream is still open


def answered_then_done(client: Client, stream: int) -> None:
    """`stream` gets its response whole, then the draining connection ends."""
    client.s.response_data(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", NOW)
    client.s.check_invariants()
    headers, data = frames(bytes(client.s.to_front))
    assert isinstance(headers, HeadersFrame)
    assert headers.stream_id == stream
    assert isinstance(data, DataFrame)
    assert data.data == b"ok"
    assert "END_STREAM" in data.flags
    assert client.s.stream_finished(stream)
    client.s.stream_closed(stream, NOW)
    assert client.s.deadline == NOW
    client.s.on_timer(NOW)
    assert client.s.done


def test_drain_sends_goaway_with_the_last_stream_and_finishes_open_streams() -> None:
    world = two_clusters()
    client = Client(world)
    stream = client.get("a.test")
    client.s.drain(NOW)
    goaway_names(client, stream)
    answered_then_done(client, stream)


def test_a_request_sent_with_the_clients_goaway_is_answered_then_the_connection_ends() -> None:
    """RFC 9113 §6.8: a GOAWAY NO_ERROR from the client stops new streams, not those it
    opened: the request in the same read is answered, then the connection drains."""
    world = two_clusters()
    client = Client(world)
    stream = client.c.get_next_available_stream_id()
    request = [(":method", "GET"), (":scheme", "https"), (":authority", "a.test"), (":path", "/")]
    client.c.send_headers(stream, request, end_stream=True)
    goaway = GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR).serialize()
    client.s.front_data(client.c.data_to_send() + goaway, NOW)
    client.s.check_invariants()
    assert not client.s.done
    ((opened, inner),) = client.s.opened
    assert opened == stream
    assert inner.actions & CONNECT
    goaway_names(client, stream)  # the session's own GOAWAY, as in a drain
    answered_then_done(client, stream)


def test_a_clients_goaway_with_an_error_ends_its_streams_at_once() -> None:
    world = two_clusters()
    client = Client(world)
    stream = client.get("a.test")
    assert stream in client.inner
    goaway = GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.PROTOCOL_ERROR).serialize()
    client.s.front_data(goaway, NOW)
    assert client.s.done
    assert stream in client.s.cancelled
    assert not client.s.to_front  # nothing more to say to a client that failed


def test_a_stream_opened_after_goaway_is_refused() -> None:
    world = two_clusters()
    client = Client(world)
    first = client.get("a.test")
    client.s.drain(NOW)
    client.s.to_front.clear()  # the GOAWAY: this client goes on as if it were in flight
    later = client.get("b.test")
    assert later > first
    assert later not in client.inner
    resets = [e for e in client.of(h2.events.StreamReset) if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(later, ErrorCodes.REFUSED_STREAM)]


def test_rapid_reset_ends_the_connection_with_enhance_your_calm() -> None:
    world = World(h2_max_rst_stream_per_window=3)
    world.cluster("a", [("a1", 8001)])
    world.frontend("a.test", "a")
    client = Client(world)
    for _ in range(4):
        stream = client.get("a.test")
        client.c.reset_stream(stream)
        client.exchange()
        if client.s.done:
            break
    assert client.s.done
    terminated = client.of(h2.events.ConnectionTerminated)
    assert [e.error_code for e in terminated if isinstance(e, h2.events.ConnectionTerminated)] == [
        ErrorCodes.ENHANCE_YOUR_CALM
    ]
    assert world.ctx.counters.h2_rapid_resets == 1
    assert len(client.inner) == 4  # the fourth reset was the one over the limit


def test_resets_spread_over_windows_are_allowed() -> None:
    world = World(h2_max_rst_stream_per_window=3)
    world.cluster("a", [("a1", 8001)])
    world.frontend("a.test", "a")
    client = Client(world)
    global NOW
    start = NOW
    try:
        for _ in range(6):
            stream = client.get("a.test")
            client.c.reset_stream(stream)
            client.exchange()
            NOW += 0.6  # two resets per window at most
    finally:
        NOW = start
    assert not client.s.done
    assert world.ctx.counters.h2_rapid_resets == 0


def test_stream_requests_are_counted_per_cluster_as_h2() -> None:
    world = two_clusters()
    client = Client(world)
    stream = client.get("a.test")
    inner = client.inner[stream]
    assert inner.actions & CONNECT
    inner.actions = 0
    inner.back_connected(NOW, False)
    assert world.ctx.counters.cluster_requests == {("a", "h2"): 1}
    assert not inner.keeps_back, "a stream core never keeps its backend connection"


def test_chunked_trailers_end_the_stream_as_headers() -> None:
    world = two_clusters()
    client = Client(world)
    stream = client.get("a.test", te="trailers")
    client.respond(
        stream,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n"
        b"2\r\nok\r\n0\r\ngrpc-status: 0\r\nGrpc-Message:  done \r\n\r\n",
    )
    (trailers,) = client.of(h2.events.TrailersReceived, stream)
    assert isinstance(trailers, h2.events.TrailersReceived)
    assert list(trailers.headers) == [(b"grpc-status", b"0"), (b"grpc-message", b"done")]
    assert client.of(h2.events.StreamEnded, stream)
    (response,) = client.of(h2.events.ResponseReceived, stream)
    assert isinstance(response, h2.events.ResponseReceived)
    assert not any(name == b"trailer" for name, _ in response.headers)


def test_response_readers_are_reused_only_after_a_keep_alive_message() -> None:
    world = two_clusters()
    client = Client(world)
    first = client.get("a.test")
    client.respond(first, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    client.s.stream_closed(first, NOW)
    assert len(client.s.readers) == 1
    reader = client.s.readers[0]
    second = client.get("a.test", "/again")
    assert client.s.streams[second].reader is reader
    assert not client.s.readers
    client.respond(second, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbye")
    assert not client.of(h2.events.StreamEnded, second)
    # The backend closed: the stream core ends after a complete response, so does the stream.
    client.s.stream_closed(second, NOW, complete=True)
    client.exchange()
    assert client.of(h2.events.StreamEnded, second)
    assert not client.of(h2.events.StreamReset, second)
    head = client.get("a.test", "/h")
    client.s.streams[head].reader.reset(b"HEAD")  # as for a HEAD request
    client.respond(head, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.s.stream_closed(head, NOW)
    # Neither a close-delimited response nor a HEAD's leaves its parser at a message boundary.
    assert not client.s.readers
    direct = client.get("a.test", "/h2")
    client.s.streams[direct].reader.reset(b"HEAD")
    client.respond(direct, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    client.s.stream_closed(direct, NOW)
    # A head with a length is read without the parser, which stays where it was.
    assert len(client.s.readers) == 1
    bodies = [
        b"".join(e.data for e in client.of(h2.events.DataReceived, s))  # type: ignore[attr-defined]
        for s in (first, second)
    ]
    assert bodies == [b"ok", b"bye"]


def test_a_stream_core_ending_before_its_response_resets_the_stream() -> None:
    world = two_clusters()
    client = Client(world)
    stream = client.get("a.test")
    client.respond(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    client.s.stream_closed(stream, NOW, complete=False)
    client.exchange()
    (reset,) = client.of(h2.events.StreamReset, stream)
    assert isinstance(reset, h2.events.StreamReset)
    assert reset.error_code == ErrorCodes.INTERNAL_ERROR
    assert stream not in client.s.streams


def test_streams_given_body_bytes_are_named_for_the_shell_to_run() -> None:
    client = Client(two_clusters())
    sized = client.c.get_next_available_stream_id()
    headers = [(":method", "POST"), (":scheme", "https"), (":authority", "a.test")]
    client.c.send_headers(sized, [*headers, (":path", "/"), ("content-length", "4")])
    chunked = sized + 2
    client.c.send_headers(chunked, [*headers, (":path", "/c")])
    client.exchange()
    assert client.s.fed == []  # heads alone go through `opened`
    client.c.send_data(sized, b"body", end_stream=True)
    client.c.end_stream(chunked)
    client.exchange()
    # Each stream once per input that gave its core bytes: the body, and the chunked end.
    assert client.s.fed == [sized, chunked]


def test_streams_share_their_connection_s_per_ip_slot() -> None:
    """max_connections_per_ip counts connections: the concurrent streams of one h2
    connection hold one slot of their cluster between them (until the connection ends), a
    second connection from the same address is over the limit."""
    world = World()
    world.cluster("web", [("b1", 8001)], max_connections_per_ip=1, retry_after=7)
    world.frontend("web.test", "web")
    first = Client(world)
    streams = [first.get("web.test", f"/{n}") for n in range(3)]
    for stream_id in streams:
        assert first.inner[stream_id].actions & CONNECT, "routed, not refused"
    assert world.shared.per_ip.held("web", PEER[0]) == 1
    assert first.s.per_ip_held == {"web"}
    second = Client(world)
    refused = second.get("web.test")
    answered = second.inner[refused]
    assert not answered.actions & CONNECT
    second.respond(refused, bytes(answered.to_front))  # as the shell hands it on
    (head,) = second.of(h2.events.ResponseReceived, refused)
    assert isinstance(head, h2.events.ResponseReceived)
    assert (b":status", b"429") in head.headers
    assert (b"retry-after", b"7") in head.headers
    assert world.ctx.counters.rejected_per_ip == 1
    first.respond(streams[0], b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert world.shared.per_ip.held("web", PEER[0]) == 1, "held while the connection lasts"
    first.s.front_eof(NOW)
    first.s.check_invariants()
    second.s.front_eof(NOW)
    assert world.shared.per_ip.held("web", PEER[0]) == 0
    third = Client(world)
    assert third.inner[third.get("web.test")].actions & CONNECT


def test_input_after_the_connection_is_done_starts_nothing() -> None:
    world = World()
    world.cluster("web", [("b1", 8001)], max_connections_per_ip=1)
    world.frontend("web.test", "web")
    client = Client(world)
    client.s.front_eof(NOW)
    assert client.s.done
    late = client.get("web.test")
    assert late not in client.inner
    assert not client.s.per_ip_held
    assert world.shared.per_ip.held("web", PEER[0]) == 0


def test_open_streams_are_counted_active_until_each_is_let_go() -> None:
    """`h2_streams_active` (the listener's `sozu_h2_streams_active` gauge): a stream counts
    from its HEADERS until it is forgotten: its response sent, its client's reset, or its
    connection's end, whatever its streams were doing."""
    world = two_clusters()
    counters = world.ctx.counters
    client = Client(world)
    answered = client.get("a.test")
    reset = client.get("b.test", "/reset")
    held = client.get("a.test", "/held")
    assert counters.h2_streams_active == 3
    client.respond(answered, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert counters.h2_streams_active == 3, "until the shell lets go of its core"
    client.s.stream_closed(answered, NOW)
    assert counters.h2_streams_active == 2
    client.c.reset_stream(reset)
    client.exchange()
    assert reset in client.s.cancelled
    client.s.stream_closed(reset, NOW)  # as the shell does for a cancelled core
    assert counters.h2_streams_active == 1
    # A second connection's streams count on the same listener.
    other = Client(world)
    other.get("b.test")
    assert counters.h2_streams_active == 2
    other.s.front_eof(NOW)  # its stream's core never said anything: the connection's end
    assert counters.h2_streams_active == 1
    # Cleared metrics keep the gauge (it counts what is open, not what happened).
    counters.clear()
    assert counters.h2_streams_active == 1
    assert held in client.s.streams
    client.s.ended()  # the shell closed the socket
    assert counters.h2_streams_active == 0
    assert not client.s.streams
    client.s.check_invariants()
    counters.check_invariants()


def test_a_declared_body_ended_on_its_headers_is_refused_before_any_core() -> None:
    """END_STREAM on the HEADERS of a request declaring a body: that stream alone is reset
    (PROTOCOL_ERROR) and nothing is left behind for it (no core routed, no stream held, so
    the connection still times out idle); a DATA frame ending the body short of its length
    is a connection error (the library's, GOAWAY PROTOCOL_ERROR)."""
    world = two_clusters()
    counters = world.ctx.counters
    client = Client(world)
    post = [(":method", "POST"), (":scheme", "https"), (":authority", "a.test")]
    empty = client.c.get_next_available_stream_id()
    client.c.send_headers(empty, [*post, (":path", "/"), ("content-length", "5")], end_stream=True)
    client.exchange()
    resets = client.of(h2.events.StreamReset, empty)
    assert [e.error_code for e in resets if isinstance(e, h2.events.StreamReset)] == [
        ErrorCodes.PROTOCOL_ERROR
    ]
    assert empty not in client.inner
    assert empty not in client.s.streams
    assert (counters.h2_refused_streams, counters.h2_streams, counters.h2_streams_active) == (
        1,
        0,
        0,
    )
    assert client.s.deadline == NOW + world.ctx.front_timeout, "idle: no stream held"
    # The connection goes on.
    served = client.get("b.test")
    assert served in client.inner
    client.respond(served, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.of(h2.events.StreamEnded, served)
    client.s.stream_closed(served, NOW)
    short = client.c.get_next_available_stream_id()
    client.c.send_headers(short, [*post, (":path", "/"), ("content-length", "5")])
    client.exchange()
    assert counters.h2_streams_active == 1
    client.c.send_data(short, b"abc", end_stream=True)
    client.exchange()
    terminated = client.of(h2.events.ConnectionTerminated)
    assert [e.error_code for e in terminated if isinstance(e, h2.events.ConnectionTerminated)] == [
        ErrorCodes.PROTOCOL_ERROR
    ]
    assert client.s.done
    assert client.s.cancelled == [short]
    assert counters.h2_streams_active == 0
    assert len(client.inner[short].fbuf) <= 3, "never more than what came"


# -- frames of one read that close a stream before its HEADERS are handled

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()


def _headers(stream_id: int, *, path: bytes | None = b"/", end: bool = True) -> bytes:
    fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test")]
    if path is not None:
        fields.append((b":path", path))
    flags = ["END_HEADERS", "END_STREAM"] if end else ["END_HEADERS"]
    return HeadersFrame(stream_id, Encoder().encode(fields), flags=flags).serialize()


def test_a_refused_stream_closed_later_in_the_same_read_is_let_go() -> None:
    # The refusal's reset hit a stream the client's RST_STREAM (or the library's own reset of
    # a window overflow) had closed: StreamClosedError escaped the core.
    for after, end in (
        (RstStreamFrame(1, error_code=8).serialize(), True),
        (WindowUpdateFrame(1, window_increment=2**31 - 1).serialize(), False),
    ):
        world = two_clusters()
        session = H2Session(world.ctx, PEER)
        session.start(NOW)
        session.front_data(PREFACE + _headers(1, path=None, end=end) + after, NOW)
        session.check_invariants()
        assert not session.done
        assert world.ctx.counters.h2_refused_streams == 1
        session.front_data(_headers(3), NOW)
        assert [stream_id for stream_id, _ in session.opened] == [3]
        session.check_invariants()


def test_a_stream_past_the_goaway_reset_in_the_same_read_is_let_go() -> None:
    session = H2Session(two_clusters().ctx, PEER)
    session.start(NOW)
    session.front_data(PREFACE, NOW)
    session.drain(NOW)
    session.front_data(_headers(1) + RstStreamFrame(1, error_code=8).serialize(), NOW)
    session.check_invariants()
    assert not session.opened


def test_streams_reset_and_opened_again_in_one_read_keep_the_live_bound() -> None:
    session = H2Session(two_clusters().ctx, PEER)
    session.start(NOW)
    data = PREFACE + b"".join(_headers(i) for i in range(1, 201, 2))
    data += b"".join(RstStreamFrame(i, error_code=8).serialize() for i in range(1, 201, 2))
    data += b"".join(_headers(i) for i in range(201, 401, 2))
    session.front_data(data, NOW)
    session.check_invariants()
    assert not session.done
    assert set(session.cancelled) == set(range(1, 201, 2))
