"""Fuzz targets of the command library: frames, envelopes, the channel, requests in msgpack
and JSON, the state file and the state."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from support import fuzz_checks as checks
from support.hostile_strategies import hostile_requests, request_data
from support.state_strategies import state_requests

from fuzz.inputs import (
    FUZZ_SETTINGS,
    LONG_INPUTS,
    Target,
    hypothesis_target,
    pack,
    random_seeds,
    unpack,
)
from sozu.command import requests as rq
from sozu.command.envelope import encode_request, encode_response, failure, ok
from sozu.command.framing import encode_frame
from sozu.command.responses import Event
from sozu.command.state import ConfigState
from sozu.command.statefile import dump_state
from sozu.command.types import Backend, Cluster

# Small maxima reach the oversize path with small inputs; the last one is the default's size.
MAX_FRAME_SIZES = (1, 8, 64, 1100, 4096, 2_000_000)


def _frame_size(parameter: int) -> int:
    return MAX_FRAME_SIZES[parameter % len(MAX_FRAME_SIZES)]


def _sample_requests() -> list[bytes]:
    return [
        encode_request("r1", rq.Status()),
        encode_request("r2", rq.AddCluster(cluster=Cluster(cluster_id="app"))),
        encode_request(
            "a" * 256,
            rq.AddBackend(
                backend=Backend(cluster_id="app", backend_id="b", address="127.0.0.1:80")
            ),
        ),
        encode_request("r3", rq.QueryMetrics(cluster_ids=("app",)), version=2),
        # {"v": 1, "id": "x", "request": [[[...]]]}, deeper than msgspec may recurse
        b"\x83\xa1v\x01\xa2id\xa1x\xa7request" + b"\x91" * 1500 + b"\xc0",
    ]


def _sample_responses() -> list[bytes]:
    return [
        encode_response(ok("r1", "done")),
        encode_response(failure("r2", "no")),
        encode_response(ok("EVENT", content=Event(kind="BACKEND_UP", cluster_id="app"))),
    ]


def framing(data: bytes) -> None:
    parameter, cuts, payload = unpack(data)
    checks.check_frames(payload, _frame_size(parameter), cuts)


def _frame_seeds() -> list[bytes]:
    stream = b"".join(encode_frame(p) for p in _sample_requests())
    return [pack(stream, parameter, 7) for parameter in range(len(MAX_FRAME_SIZES))]


def envelope(data: bytes) -> None:
    checks.check_request_payload(data)
    checks.check_response_payload(data)


def channel(data: bytes) -> None:
    parameter, cuts, payload = unpack(data)
    checks.check_channel(payload, _frame_size(parameter), cuts)


def _channel_seeds() -> list[bytes]:
    requests = b"".join(encode_frame(p) for p in _sample_requests())
    responses = b"".join(encode_frame(p) for p in _sample_responses())
    return [pack(requests, 2, 3), pack(requests, 5, 1), pack(responses, 5, 2)]


@FUZZ_SETTINGS
@given(st.one_of(request_data(hostile=False), request_data(), request_data(wrong_types=True)))
def _request_data(data: dict[str, object]) -> None:
    checks.check_request_data(data)


def statefile(data: bytes) -> None:
    checks.check_state_file(data)


def _statefile_seeds() -> list[bytes]:
    state = ConfigState()
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="app")))
    state.apply(
        rq.AddBackend(backend=Backend(cluster_id="app", backend_id="b", address="[::1]:80"))
    )
    return [dump_state(state), dump_state(ConfigState())]


@FUZZ_SETTINGS
@given(state_requests(), st.lists(hostile_requests, max_size=30))
def _state(base: list[rq.Request], requests: list[rq.Request | None]) -> None:
    checks.check_state(base, requests)


TARGETS: tuple[Target, ...] = (
    Target("framing", framing, _frame_seeds, "FrameReader against a simple reading, split"),
    Target(
        "envelope",
        envelope,
        lambda: _sample_requests() + _sample_responses(),
        "decode_request, decode_response and peek_id of any payload",
    ),
    Target("channel", channel, _channel_seeds, "FramedConnection server side and RequestMux"),
    Target(
        "requests",
        hypothesis_target(_request_data),
        list,
        "every request kind, hostile values, through msgpack and a JSON state file",
    ),
    Target("statefile", statefile, _statefile_seeds, "parse_state and load_requests of any bytes"),
    # A whole state takes a few kilobytes of choices: shorter inputs would run nothing.
    Target(
        "state",
        hypothesis_target(_state),
        lambda: random_seeds("state"),
        "ConfigState.apply of hostile requests: atomic, invariants kept, replayable",
        LONG_INPUTS,
    ),
)
