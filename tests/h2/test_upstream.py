"""The HTTP/2 backend connection core (core/h2/upstream.py, upstream_stream.py), sans-io:
driven against a server-side `h2` connection in the test, bytes moved by hand. HTTP/1.1
requests become h2 streams (pseudo-headers, connection-specific headers dropped, `te:
trailers` kept, chunked bodies unframed), h2 responses become HTTP/1.1 bytes (length or
chunked framing, trailers, interim responses, HEAD/204), flow control holds request bodies
(back pressure) and returns response windows as the session takes bytes; GOAWAY, resets,
EOF, idle timeout and stream-id exhaustion. `check_invariants` runs after every call."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.worker.core.h2.upstream import STREAM_WINDOW, H2Upstream
from sozu.worker.core.h2.upstream_stream import BODY_LIMIT, UpstreamStream


class Pair:
    """An upstream core wired to a server-side h2 connection."""

    def __init__(self, *, max_stream_id: int | None = None, server_window: int = 65535) -> None:
        kwargs = {} if max_stream_id is None else {"max_stream_id": max_stream_id}
        self.up = H2Upstream(**kwargs)
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.server.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: server_window},
        )
        self.server.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.now = 100.0
        self.up.connected(self.now)
        self.check()
        self.move()

    def check(self) -> None:
        self.up.check_invariants()
        for stream in self.up.attached:
            stream.check_invariants()

    def move(self) -> None:
        """Exchange bytes both ways until neither side has anything to send."""
        for _ in range(50):
            moved = False
            if self.up.to_back:
                data = bytes(self.up.to_back)
                self.up.to_back.clear()
                self.events += self.server.receive_data(data)
                moved = True
            out = self.server.data_to_send()
            if out:
                self.up.back_data(out, self.now)
                self.check()
                moved = True
            if not moved:
                return
        raise AssertionError("the two sides kept talking")

    def request(self, raw: bytes) -> UpstreamStream:
        stream = self.up.attach()
        assert self.up.write(stream, raw, self.now) == len(raw)
        self.check()
        self.move()
        return stream

    def received(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def respond(
        self,
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        trailers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.server.send_headers(stream_id, headers, end_stream=not body and trailers is None)
        if body:
            self.server.send_data(stream_id, body, end_stream=trailers is None)
        if trailers is not None:
            self.server.send_headers(stream_id, trailers, end_stream=True)
        self.move()

    def take(self, stream: UpstreamStream) -> bytes:
        data = self.up.take(stream)
        self.check()
        self.move()
        return data


GET = (
    b"GET /a?b=1 HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, x-hop\r\n"
    b"x-hop: 1\r\nUser-Agent: t\r\n\r\n"
)


def test_a_request_becomes_a_stream_without_connection_specific_headers() -> None:
    pair = Pair()
    stream = pair.request(GET)
    (received,) = pair.received(h2.events.RequestReceived)
    assert received.stream_id == stream.stream_id == 1
    assert received.stream_ended is not None  # no body: END_STREAM on the HEADERS
    assert list(received.headers) == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"app.test"),
        (b":path", b"/a?b=1"),
        (b"user-agent", b"t"),
    ]


def test_te_trailers_is_kept_and_other_te_dropped() -> None:
    pair = Pair()
    pair.request(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
    pair.request(b"GET / HTTP/1.1\r\nHost: a\r\nTE: gzip\r\n\r\n")
    first, second = pair.received(h2.events.RequestReceived)
    assert (b"te", b"trailers") in first.headers
    assert not any(name == b"te" for name, _ in second.headers)


def test_an_absolute_form_target_gives_authority_and_path() -> None:
    pair = Pair()
    pair.request(b"GET http://other.test:81/x HTTP/1.1\r\n\r\n")
    # The URI's authority wins over Host (as routing saw it), and a query alone stays.
    pair.request(b"GET http://a.test?q=1 HTTP/1.1\r\nHost: b.test\r\n\r\n")
    first, second = pair.received(h2.events.RequestReceived)
    headers = dict(first.headers)
    assert headers[b":authority"] == b"other.test:81"
    assert headers[b":path"] == b"/x"
    headers = dict(second.headers)
    assert headers[b":authority"] == b"a.test"
    assert headers[b":path"] == b"/?q=1"


def test_a_chunked_body_goes_out_unframed_with_its_trailers() -> None:
    pair = Pair()
    raw = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n"
    )
    stream = pair.up.attach()
    # Byte by byte: the parser keeps its place across writes.
    for index in range(len(raw)):
        assert pair.up.write(stream, raw[index : index + 1], pair.now) == 1
        pair.check()
    pair.move()
    data = b"".join(e.data for e in pair.received(h2.events.DataReceived))
    assert data == b"hello world"
    (trailers,) = pair.received(h2.events.TrailersReceived)
    assert list(trailers.headers) == [(b"x-sum", b"42")]
    assert pair.received(h2.events.StreamEnded)


def test_a_response_with_a_length_is_relayed_as_is() -> None:
    pair = Pair()
    stream = pair.request(GET)
    pair.respond(1, [(b":status", b"200"), (b"content-length", b"5")], b"hello")
    assert pair.take(stream) == (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
    assert stream.ended
    assert not stream.failed


def test_a_response_without_length_is_chunked_and_its_trailers_follow() -> None:
    pair = Pair()
    stream = pair.request(GET)
    pair.respond(
        1,
        [(b":status", b"200"), (b"content-type", b"application/grpc")],
        b"abc",
        trailers=[(b"grpc-status", b"0"), (b"grpc-message", b"ok")],
    )
    assert pair.take(stream) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked"
        b"\r\n\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n"
    )
    assert stream.ended


def test_a_headers_only_response_says_length_zero_and_head_gets_no_framing() -> None:
    pair = Pair()
    stream = pair.request(GET)
    pair.respond(1, [(b":status", b"404"), (b"grpc-status", b"5")])
    assert pair.take(stream) == (
        b"HTTP/1.1 404 Not Found\r\ngrpc-status: 5\r\ncontent-length: 0\r\n\r\n"
    )
    head = pair.request(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    pair.server.send_headers(3, [(b":status", b"200")], end_stream=False)
    pair.server.end_stream(3)
    pair.move()
    assert pair.take(head) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert head.ended


def test_an_interim_response_is_relayed_before_the_final_one() -> None:
    pair = Pair()
    stream = pair.request(GET)
    pair.server.send_headers(1, [(b":status", b"103"), (b"link", b"</s.css>")])
    pair.respond(1, [(b":status", b"204")])
    assert pair.take(stream) == (
        b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    )


def test_a_101_fails_the_stream() -> None:
    pair = Pair()
    stream = pair.request(GET)
    stream.response_head([(b":status", b"101")], ended=False)
    assert stream.failed
    assert not stream.refused
    assert not stream.inbox


@pytest.mark.parametrize("status", [b"0" * 5000 + b"200", b"0200", b"20", b"2x0"])
def test_a_status_that_is_not_three_digits_fails_the_stream(status: bytes) -> None:
    pair = Pair()
    stream = pair.request(GET)
    stream.response_head([(b":status", status)], ended=True)
    assert stream.failed
    assert not stream.inbox


def test_a_request_body_waits_for_the_window_and_the_stream_pushes_back() -> None:
    pair = Pair(server_window=10)
    stream = pair.up.attach()
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n"
    assert pair.up.write(stream, head, pair.now) == len(head)
    body = b"x" * 200000
    taken = pair.up.write(stream, body, pair.now)
    pair.check()
    assert taken == BODY_LIMIT  # the rest stays with the session (back pressure)
    pair.move()
    sent = sum(len(e.data) for e in pair.received(h2.events.DataReceived))
    assert sent == 10
    assert len(stream.body) == BODY_LIMIT - 10
    # Ten bytes went out: room for ten more, then none.
    assert pair.up.write(stream, body[taken:], pair.now) == 10
    taken += 10
    assert pair.up.write(stream, body[taken:], pair.now) == 0
    # The server opens its window: the body flows and the stream has news (room).
    pair.server.increment_flow_control_window(1_000_000, stream_id=1)
    pair.server.increment_flow_control_window(1_000_000)
    stream.news = False
    pair.move()
    assert stream.news
    assert not stream.body
    assert pair.up.write(stream, body[taken:], pair.now) == BODY_LIMIT
    pair.check()


def test_response_windows_return_only_as_the_session_takes_bytes() -> None:
    pair = Pair()
    stream = pair.request(GET)
    pair.server.send_headers(1, [(b":status", b"200")])
    for _ in range(10):
        pair.server.send_data(1, b"y" * 15000)
    pair.move()
    window = pair.server.local_flow_control_window(1)
    assert stream.flow_unacked == 150000
    assert window == STREAM_WINDOW - 150000  # nothing returned while the bytes wait
    pair.take(stream)
    assert stream.flow_unacked == 0
    assert pair.server.local_flow_control_window(1) == STREAM_WINDOW


def test_a_goaway_refuses_the_streams_above_it_and_lets_the_others_finish() -> None:
    pair = Pair()
    first = pair.request(GET)
    second = pair.request(GET)
    pair.server.close_connection(ErrorCodes.NO_ERROR, last_stream_id=1)
    pair.server.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
    pair.move()
    assert second.failed
    assert second.refused
    assert not pair.up.usable
    assert not first.failed
    pair.respond(1, [(b":status", b"200"), (b"content-length", b"2")], b"ok")
    assert pair.take(first).endswith(b"\r\n\r\nok")
    assert first.ended
    pair.up.release(first, pair.now)
    pair.up.release(second, pair.now)
    pair.check()
    assert pair.up.deadline == pair.now  # idle after a GOAWAY: closes at once
    pair.up.on_timer(pair.now)
    assert pair.up.done


def test_an_error_goaway_fails_every_stream() -> None:
    pair = Pair()
    stream = pair.request(GET)
    pair.server.close_connection(ErrorCodes.INTERNAL_ERROR, last_stream_id=1)
    pair.move()
    assert stream.failed
    assert stream.refused
    assert pair.up.done


def test_refused_stream_is_retryable_and_other_resets_are_not() -> None:
    pair = Pair()
    refused = pair.request(GET)
    pair.server.reset_stream(1, ErrorCodes.REFUSED_STREAM)
    pair.move()
    assert refused.failed
    assert refused.refused
    answered = pair.request(GET)
    pair.server.send_headers(3, [(b":status", b"200")])
    pair.server.reset_stream(3, ErrorCodes.INTERNAL_ERROR)
    pair.move()
    assert answered.failed
    assert not answered.refused


def test_eof_fails_the_open_streams() -> None:
    pair = Pair()
    stream = pair.request(GET)
    pair.up.back_eof()
    pair.check()
    assert stream.failed
    assert stream.refused
    assert pair.up.done


def test_release_of_an_unfinished_stream_resets_it() -> None:
    pair = Pair()
    stream = pair.request(GET)
    pair.up.release(stream, pair.now)
    pair.check()
    pair.move()
    (reset,) = pair.received(h2.events.StreamReset)
    assert reset.error_code == ErrorCodes.CANCEL
    assert pair.up.deadline == pair.now + pair.up.idle_timeout


def test_an_idle_connection_closes_with_goaway() -> None:
    pair = Pair()
    stream = pair.request(GET)
    pair.respond(1, [(b":status", b"204")])
    pair.take(stream)
    pair.up.release(stream, pair.now)
    pair.up.on_timer(pair.now + 1)
    assert not pair.up.done
    pair.up.on_timer(pair.up.deadline)
    assert pair.up.done
    pair.events += pair.server.receive_data(bytes(pair.up.to_back))
    assert pair.received(h2.events.ConnectionTerminated)


def test_stream_ids_near_exhaustion_retire_the_connection() -> None:
    pair = Pair(max_stream_id=5)
    streams = [pair.request(GET) for _ in range(3)]
    assert [s.stream_id for s in streams] == [1, 3, 5]
    assert pair.up.retired
    assert not pair.up.usable
    for stream_id, stream in zip((1, 3, 5), streams, strict=True):
        pair.respond(stream_id, [(b":status", b"204")])
        pair.take(stream)
        assert stream.ended
        pair.up.release(stream, pair.now)
    pair.check()
    assert pair.up.deadline == pair.now


def test_capacity_follows_the_backend_setting() -> None:
    pair = Pair()
    pair.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    pair.move()
    pair.up.attach()
    assert pair.up.usable
    pair.up.attach()
    assert not pair.up.usable


def test_a_request_that_is_not_http_fails_its_stream() -> None:
    pair = Pair()
    stream = pair.up.attach()
    pair.up.write(stream, b"\x00\x01 nonsense\r\n\r\n", pair.now)
    pair.check()
    assert stream.failed
    assert not stream.refused


def test_a_dial_failure_refuses_the_waiting_streams() -> None:
    up = H2Upstream()
    stream = up.attach()
    up.connect_failed()
    up.check_invariants()
    assert stream.failed
    assert stream.refused
    assert up.touched == [stream]


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=12),
    size=st.integers(min_value=0, max_value=5000),
    trailers=st.booleans(),
)
def test_responses_split_anywhere_come_out_the_same(
    cuts: list[int], size: int, trailers: bool
) -> None:
    """However the backend's bytes are cut, the session gets the same HTTP/1.1 response."""
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    outputs = []
    for split in (False, True):
        pair = Pair()
        stream = pair.request(GET)
        pair.server.send_headers(1, [(b":status", b"200")])
        if body:
            pair.server.send_data(1, body)
        if trailers:
            pair.server.send_headers(1, [(b"x-t", b"1")], end_stream=True)
        else:
            pair.server.end_stream(1)
        wire = pair.server.data_to_send()
        pieces = [wire]
        if split:
            pieces, start = [], 0
            for cut in sorted(cuts):
                if start < cut < len(wire):
                    pieces.append(wire[start:cut])
                    start = cut
            pieces.append(wire[start:])
        got = b""
        for piece in pieces:
            if piece:
                pair.up.back_data(piece, pair.now)
                pair.check()
                got += pair.take(stream)
        assert stream.ended
        outputs.append(got)
    assert outputs[0] == outputs[1]
    assert outputs[0].endswith(b"0\r\nx-t: 1\r\n\r\n" if trailers else b"0\r\n\r\n")


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_get_no_framing(status: int) -> None:
    pair = Pair()
    stream = pair.request(GET)
    pair.respond(1, [(b":status", str(status).encode())])
    assert b"content-length" not in pair.take(stream)
    assert b"transfer-encoding" not in stream.inbox


def test_a_write_after_the_connection_closed_is_discarded() -> None:
    pair = Pair()
    stream = pair.up.attach()
    pair.up.write(stream, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", pair.now)
    pair.up.back_eof()
    pair.check()
    assert stream.failed
    assert pair.up.write(stream, b"hello", pair.now) == 5
    pair.check()


@pytest.mark.parametrize(
    "field",
    [(b"x-a", b"1\r\nx-injected: 2"), (b"x-a\r\nb", b"1"), (b"x-a", b"\x00")],
)
def test_response_fields_that_would_split_the_http1_head_fail_the_stream(
    field: tuple[bytes, bytes],
) -> None:
    pair = Pair()
    stream = pair.request(GET)
    stream.response_head([(b":status", b"200"), field], ended=False)
    assert stream.failed
    assert not stream.inbox
    trailered = pair.request(GET)
    trailered.response_head([(b":status", b"200")], ended=False)
    trailered.response_trailers([field])
    assert trailered.failed
    assert b"injected" not in trailered.inbox


def test_releasing_a_stream_returns_the_window_of_bytes_it_never_took() -> None:
    """Whatever state a released stream is in, the connection window it held comes back:
    otherwise each cancelled stream would shrink the connection's for good. Ten streams
    leave 2.25 MB untaken, past half the 4 MiB connection window: it is whole again."""
    pair = Pair()
    window = pair.up.conn.inbound_flow_control_window
    for index in range(10):
        stream = pair.request(GET)
        stream_id = stream.stream_id
        pair.server.send_headers(stream_id, [(b":status", b"200")])
        for _ in range(15):
            pair.server.send_data(stream_id, b"z" * 15000)
        pair.move()
        assert stream.flow_unacked == 225000, index
        pair.up.release(stream, pair.now)  # the client went away: reset, nothing taken
        pair.check()
        pair.move()
    assert pair.up.conn.inbound_flow_control_window == window


def test_a_write_after_a_complete_response_on_a_closed_connection_is_discarded() -> None:
    pair = Pair()
    stream = pair.up.attach()
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345"
    pair.up.write(stream, head, pair.now)
    pair.move()
    pair.respond(1, [(b":status", b"200"), (b"content-length", b"2")], b"ok")
    assert stream.ended
    pair.up.back_eof()
    pair.check()
    assert pair.up.write(stream, b"67890", pair.now) == 5
