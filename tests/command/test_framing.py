"""Frames and envelopes: the sans-io FrameReader, two-stage decoding, and FramedConnection
serving them over a real socketpair (rejected frames answered, garbage closing the connection)."""

from __future__ import annotations

import socket

import msgspec
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sozu.command.channel import FramedConnection, Rejected
from sozu.command.envelope import (
    MAX_ID_LENGTH,
    PROTOCOL_VERSION,
    ProtocolError,
    RejectedRequest,
    decode_request,
    encode_request,
    ok,
    peek_id,
)
from sozu.command.framing import (
    OVERSIZE_HEAD_BYTES,
    PREFIX,
    FrameError,
    FrameReader,
    OversizeFrame,
    encode_frame,
)
from sozu.command.requests import RemoveCluster, Status, request_kind

TIMEOUT = 5


def raw_request(request: object, *, request_id: str = "r1", v: int = PROTOCOL_VERSION) -> bytes:
    """A request payload built by hand, for kinds and fields the typed encoder refuses."""
    return msgspec.msgpack.encode({"v": v, "id": request_id, "request": request})


def big_request(request_id: str, size: int) -> bytes:
    payload = encode_request(request_id, RemoveCluster(cluster_id="x" * size))
    assert len(payload) > size
    return payload


def frames_of(reader: FrameReader) -> list[bytes | OversizeFrame]:
    frames = []
    while (frame := reader.next_frame()) is not None:
        frames.append(frame)
    return frames


def rejection(payload: bytes) -> RejectedRequest:
    with pytest.raises(RejectedRequest) as caught:
        decode_request(payload)
    return caught.value


# -- the sans-io FrameReader and the envelope


def test_two_frames_in_one_read() -> None:
    first, second = encode_request("a", Status()), encode_request("b", Status())
    reader = FrameReader()
    reader.feed(encode_frame(first) + encode_frame(second))
    assert frames_of(reader) == [first, second]
    assert reader.buffered == 0
    reader.check_eof()


def test_frame_split_byte_by_byte() -> None:
    payload = encode_request("split", RemoveCluster(cluster_id="abc"))
    reader = FrameReader()
    frames: list[bytes | OversizeFrame] = []
    for byte in encode_frame(payload):
        reader.feed(bytes([byte]))
        frames += frames_of(reader)
    assert frames == [payload]
    assert decode_request(payload).request == RemoveCluster(cluster_id="abc")


@given(st.lists(st.binary(max_size=300), max_size=5), st.data())
def test_any_chunking_yields_the_same_frames(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(payload) for payload in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    reader = FrameReader(max_frame_size=300)
    frames = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        reader.feed(stream[start:end])
        frames += frames_of(reader)
    assert frames == payloads
    reader.check_eof()


def test_maximum_size_frame_accepted() -> None:
    payload = big_request("max", 1000)
    reader = FrameReader(max_frame_size=len(payload))
    reader.feed(encode_frame(payload))
    assert frames_of(reader) == [payload]


def test_oversize_frame_skipped_then_next_frame_served() -> None:
    oversize, after = big_request("too-big", 5000), encode_request("next", Status())
    reader = FrameReader(max_frame_size=1000)
    stream = encode_frame(oversize) + encode_frame(after)
    # Fed in small reads: the oversize payload is never held whole.
    frames: list[bytes | OversizeFrame] = []
    for start in range(0, len(stream), 700):
        reader.feed(stream[start : start + 700])
        frames += frames_of(reader)
        assert reader.buffered <= 700
    first, second = frames
    assert isinstance(first, OversizeFrame)
    assert first.length == len(oversize)
    assert first.head == oversize[:OVERSIZE_HEAD_BYTES]
    assert peek_id(first.head) == "too-big"
    assert second == after
    reader.check_eof()


def test_truncated_frame_at_eof() -> None:
    reader = FrameReader()
    reader.feed(encode_frame(encode_request("cut", Status()))[:-3])
    assert frames_of(reader) == []
    with pytest.raises(FrameError, match="inside a frame of"):
        reader.check_eof()


def test_truncated_prefix_and_oversize_at_eof() -> None:
    reader = FrameReader()
    reader.feed(b"\x00\x00")
    with pytest.raises(FrameError, match=r"length prefix \(2 of 4 bytes"):
        reader.check_eof()
    reader = FrameReader(max_frame_size=10)
    reader.feed(PREFIX.pack(100) + b"x" * 30)
    assert frames_of(reader) == []
    with pytest.raises(FrameError, match=r"frame of 100 bytes \(30 bytes of it received\)"):
        reader.check_eof()


@pytest.mark.parametrize(
    "payload",
    [b"\xc1garbage", b"", msgspec.msgpack.encode([1, 2]), msgspec.msgpack.encode({"id": 5})],
)
def test_garbage_without_id(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_request(payload)


def test_unknown_request_kind_names_it() -> None:
    rejected = rejection(raw_request({"type": "LaunchRocket"}, request_id="k1"))
    assert rejected.request_id == "k1"
    assert rejected.message == "unknown request kind 'LaunchRocket'"


def test_future_protocol_version_names_it() -> None:
    rejected = rejection(raw_request({"type": "Status"}, v=PROTOCOL_VERSION + 1))
    assert rejected.request_id == "r1"
    assert f"unsupported protocol version {PROTOCOL_VERSION + 1}" in rejected.message


def test_invalid_fields_name_the_field_path() -> None:
    rejected = rejection(raw_request({"type": "RemoveCluster", "cluster_id": 7}))
    assert rejected.message.startswith("invalid RemoveCluster request")
    assert "$.cluster_id" in rejected.message
    nested = {"type": "AddBackend", "backend": {"cluster_id": "c", "backend_id": "b"}}
    rejected = rejection(raw_request(nested))
    assert "address" in rejected.message
    assert "$.backend" in rejected.message


def test_peek_id_on_heads() -> None:
    payload = encode_request("head-id", Status())
    assert peek_id(payload) == "head-id"
    assert peek_id(payload[:15]) == "head-id"  # map, "v", 1, "id", then the id: 15 bytes
    assert peek_id(payload[:14]) is None  # the id is cut
    assert peek_id(b"") is None
    assert peek_id(msgspec.msgpack.encode([1, "id"])) is None
    # id first, v absent, a str8 id, a map16 header
    assert peek_id(msgspec.msgpack.encode({"id": "first", "v": 1})) == "first"
    assert peek_id(msgspec.msgpack.encode({"id": "i" * 40})) == "i" * 40
    map16 = b"\xde\x00\x02" + msgspec.msgpack.encode({"v": 1, "id": "m16"})[1:]
    assert peek_id(map16) == "m16"
    assert peek_id(msgspec.msgpack.encode({"v": 70000, "id": "big-v"})) == "big-v"
    # anything else before the id, a non-integer v, an id too long
    assert peek_id(msgspec.msgpack.encode({"request": {}, "id": "late"})) is None
    assert peek_id(msgspec.msgpack.encode({"v": "1", "id": "x"})) is None
    assert peek_id(msgspec.msgpack.encode({"id": "i" * (MAX_ID_LENGTH + 1)})) is None


# -- FramedConnection over a real socketpair


def connection_pair(
    max_frame_size: int = 2_000_000,
) -> tuple[trio.SocketStream, FramedConnection, FramedConnection]:
    """The client's stream (to write raw bytes and half-close), the client and the server."""
    left, right = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(left))
    return (
        stream,
        FramedConnection(stream, max_frame_size=max_frame_size),
        FramedConnection.from_socket(right, max_frame_size=max_frame_size),
    )


async def serve(connection: FramedConnection, errors: list[str]) -> None:
    """A minimal server loop: Failure for rejected frames, Ok naming the kind otherwise."""
    async with connection:
        try:
            async for item in connection.requests():
                if isinstance(item, Rejected):
                    await connection.send_response(item.failure())
                else:
                    await connection.send_response(ok(item.id, request_kind(item.request)))
        except ProtocolError as error:
            errors.append(str(error))


async def test_server_answers_failures_and_keeps_serving() -> None:
    raw, client, server = connection_pair(max_frame_size=1000)
    errors: list[str] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery, client:
            nursery.start_soon(serve, server, errors)
            await client.send_payload(raw_request({"type": "LaunchRocket"}, request_id="u"))
            await client.send_payload(raw_request({"type": "Status"}, request_id="v", v=9))
            await client.send_payload(raw_request({"type": "RemoveCluster"}, request_id="f"))
            await raw.send_all(encode_frame(big_request("big", 3000)))
            await client.send_request("s", Status())
            responses = [await client.receive_response() for _ in range(5)]
            await raw.send_eof()
            assert await client.receive_response() is None
    assert [(r.id, r.status) for r in responses if r is not None] == [
        ("u", "failure"),
        ("v", "failure"),
        ("f", "failure"),
        ("big", "failure"),
        ("s", "ok"),
    ]
    messages = [r.message for r in responses if r is not None]
    assert "LaunchRocket" in messages[0]
    assert "version 9" in messages[1]
    assert "cluster_id" in messages[2]
    big = len(big_request("big", 3000))
    assert messages[3] == f"frame of {big} bytes exceeds the maximum of 1000 bytes"
    assert messages[4] == "Status"
    assert errors == []


async def test_garbage_closes_the_connection_without_raising() -> None:
    _, client, server = connection_pair()
    errors: list[str] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery, client:
            nursery.start_soon(serve, server, errors)
            await client.send_request("before", Status())
            # Nothing after the garbage: a unix socket closed with unread data resets the peer.
            await client.send_payload(b"\xc1 not msgpack")
            first = await client.receive_response()
            assert await client.receive_response() is None  # the server closed
    assert first is not None
    assert (first.id, first.status) == ("before", "ok")
    assert len(errors) == 1
    assert "undecodable request envelope" in errors[0]
    assert server.error == errors[0]


async def test_oversize_frame_without_readable_id_closes() -> None:
    raw, client, server = connection_pair(max_frame_size=100)
    errors: list[str] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery, client:
            nursery.start_soon(serve, server, errors)
            await raw.send_all(encode_frame(b"\xff" * 500))
            assert await client.receive_response() is None
    assert errors == [
        "frame of 500 bytes exceeds the maximum of 100 bytes, and no request id can be read from it"
    ]


async def test_truncated_frame_at_eof_over_a_socket() -> None:
    raw, client, server = connection_pair()
    errors: list[str] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery, client:
            nursery.start_soon(serve, server, errors)
            await raw.send_all(encode_frame(encode_request("cut", Status()))[:-2])
            await raw.send_eof()
            assert await client.receive_response() is None
    assert len(errors) == 1
    assert errors[0].startswith("connection closed inside a frame of")


async def test_many_frames_in_one_read_over_a_socket() -> None:
    raw, client, server = connection_pair()
    errors: list[str] = []
    ids = [f"id-{n}" for n in range(50)]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery, client:
            nursery.start_soon(serve, server, errors)
            burst = b"".join(encode_frame(encode_request(i, Status())) for i in ids)
            await raw.send_all(burst)
            responses = [await client.receive_response() for _ in ids]
    assert [r.id for r in responses if r is not None] == ids
    assert errors == []


def test_oversize_frame_longest_id_recovered() -> None:
    request_id = "\U0001f600" * MAX_ID_LENGTH  # the longest id, 4 UTF-8 bytes a character
    oversize = big_request(request_id, 5000)
    assert decode_request(oversize).id == request_id
    reader = FrameReader(max_frame_size=1000)
    reader.feed(encode_frame(oversize))
    (frame,) = frames_of(reader)
    assert isinstance(frame, OversizeFrame)
    assert peek_id(frame.head) == request_id
