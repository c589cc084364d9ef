"""Bounded fuzzing of the command protocol: frames, envelopes, the channel, every request kind
in msgpack and JSON, the state file and the state (properties in support/fuzz_checks.py)."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import fuzz_checks as checks
from support.hostile_strategies import hostile_requests, hostile_text, request_data
from support.state_strategies import state_requests

from sozu.command import requests as rq
from sozu.command.envelope import encode_request, encode_response, failure, ok
from sozu.command.framing import PREFIX, encode_frame
from sozu.command.types import Cluster

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cut_points = st.lists(st.integers(0, 5000), max_size=6)
frame_sizes = st.sampled_from([1, 8, 64, 1100, 2_000_000])
SAMPLES = (
    encode_request("r1", rq.Status()),
    encode_request("r2", rq.AddCluster(cluster=Cluster(cluster_id="app"))),
    encode_request("a" * 256, rq.RemoveCluster(cluster_id="app"), version=3),
    encode_response(ok("r1", "done")),
    encode_response(failure("r2", "no")),
)


def _msgpack(value: object) -> bytes:
    try:
        return msgspec.msgpack.encode(value)
    except OverflowError:
        return b"\xc1"  # an integer msgpack cannot carry: a byte msgpack never uses instead


envelope_values = st.fixed_dictionaries(
    {},
    optional={
        "v": st.integers(-(2**63), 2**64 - 1) | st.sampled_from([0, 1, 2]),
        "id": hostile_text | st.binary(max_size=4),
        "request": request_data(wrong_types=True) | request_data(hostile=False),
        "status": st.sampled_from(["ok", "failure", "processing", "OK", ""]),
        "message": hostile_text,
        "content": st.none() | st.fixed_dictionaries({"type": st.sampled_from(["Event", "X"])}),
    },
)


@st.composite
def mutated(draw: st.DrawFn, payloads: st.SearchStrategy[bytes]) -> bytes:
    """A payload truncated, or with a few bytes overwritten."""
    payload = bytearray(draw(payloads))
    for _ in range(draw(st.integers(0, 3))):
        if payload:
            payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
    return bytes(payload[: draw(st.integers(0, len(payload)))])


# Values nested deeper than msgspec may recurse, where the envelope skips or keeps them raw.
nested_payloads = st.builds(
    lambda key, opener, depth: (
        b"\x83\xa1v\x01\xa2id\xa1x" + _msgpack(key) + opener * depth + b"\xc0"
    ),
    st.sampled_from(["request", "zz", "content"]),
    st.sampled_from([b"\x91", b"\x81\xa1a"]),
    st.integers(0, 3000),
)
payloads = st.one_of(
    st.binary(max_size=200),
    envelope_values.map(_msgpack),
    nested_payloads,
    mutated(st.sampled_from(SAMPLES) | envelope_values.map(_msgpack)),
)
frame_streams = st.lists(
    st.one_of(
        payloads.map(encode_frame),
        st.binary(max_size=20),
        # a length prefix that promises more (or less) than follows
        st.builds(lambda n, b: PREFIX.pack(n) + b, st.integers(0, 2**32 - 1), payloads),
    ),
    max_size=5,
).map(b"".join)


@FUZZ
@given(frame_streams, frame_sizes, cut_points)
def test_frame_reader(data: bytes, max_frame_size: int, cuts: list[int]) -> None:
    checks.check_frames(data, max_frame_size, cuts)


@settings(FUZZ, max_examples=400)
@given(payloads)
def test_request_and_response_payloads(payload: bytes) -> None:
    checks.check_request_payload(payload)
    checks.check_response_payload(payload)


@settings(FUZZ, max_examples=80)
@given(frame_streams, frame_sizes, cut_points)
def test_channel(data: bytes, max_frame_size: int, cuts: list[int]) -> None:
    checks.check_channel(data, max_frame_size, cuts)


@settings(FUZZ, max_examples=300)
@given(st.one_of(request_data(hostile=False), request_data(), request_data(wrong_types=True)))
def test_every_request_kind_in_msgpack_and_json(data: dict[str, object]) -> None:
    checks.check_request_data(data)


state_file_lines = st.one_of(
    st.binary(max_size=60),
    st.integers(0, 3000).map(
        lambda depth: (
            b'{"id":"x","zz":' + b"[" * depth + b"]" * depth + b',"request":{"type":"Status"}}'
        )
    ),
    st.builds(
        lambda request: msgspec.json.encode({"id": "x", "request": request}),
        request_data(wrong_types=True),
    ),
)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(state_file_lines, max_size=3).map(
            lambda lines: b"\n".join([checks.STATE_FILE_HEADER.rstrip(), *lines])
        ),
    )
)
def test_state_file(data: bytes) -> None:
    checks.check_state_file(data)


@settings(FUZZ, max_examples=60)
@given(state_requests(), st.lists(hostile_requests, max_size=25))
def test_state_apply_of_hostile_requests(
    base: list[rq.Request], requests: list[rq.Request | None]
) -> None:
    checks.check_state(base, requests)
