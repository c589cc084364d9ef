"""Hypothesis properties of the state: replay, diff convergence, atomicity, round trips."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.state_strategies import (
    backends,
    clusters,
    http_listeners,
    state_requests,
    states,
    tcp_listeners,
    udp_listeners,
)

from sozu.command import requests as rq
from sozu.command.envelope import RequestEnvelope
from sozu.command.state import ConfigState
from sozu.command.state_errors import StateError
from sozu.command.types import LISTENER_TYPES

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def replay(requests: list[rq.Request], onto: ConfigState | None = None) -> ConfigState:
    state = onto if onto is not None else ConfigState()
    for request in requests:
        state.apply(request)
    return state


@SETTINGS
@given(states)
def test_states_are_large_and_cover_every_listener_type(state: ConfigState) -> None:
    counts = state.counts()
    assert sum(counts.values()) >= 20
    for proxy in LISTENER_TYPES:
        assert state.listener_maps()[proxy], proxy
    assert counts["certificates"] >= 1


@SETTINGS
@given(states)
def test_generate_requests_replay_reproduces_state_and_hash(state: ConfigState) -> None:
    rebuilt = replay(state.generate_requests())
    assert rebuilt == state
    assert rebuilt.hash() == state.hash()
    assert rebuilt.cluster_hashes() == state.cluster_hashes()


@SETTINGS
@given(states, states)
def test_diff_converges(a: ConfigState, b: ConfigState) -> None:
    target_hash = b.hash()
    converged = replay(a.diff(b), onto=a.copy())
    assert converged == b
    assert converged.hash() == target_hash
    for proxy in LISTENER_TYPES:
        for address, listener in b.listener_maps()[proxy].items():
            assert converged.listener_maps()[proxy][address].active == listener.active
    assert b.diff(b) == []
    assert replay(a.diff(a), onto=a.copy()) == a


@SETTINGS
@given(states, st.data())
def test_diff_converges_after_small_changes(a: ConfigState, data: st.DataObject) -> None:
    """Close states: the same state with a few objects changed in place."""
    b = a.copy()
    changes = data.draw(
        st.lists(
            st.one_of(
                http_listeners.map(lambda x: rq.AddHttpListener(listener=x)),
                tcp_listeners.map(lambda x: rq.AddTcpListener(listener=x)),
                udp_listeners.map(lambda x: rq.AddUdpListener(listener=x)),
                clusters.map(lambda c: rq.AddCluster(cluster=c)),
                backends.map(lambda x: rq.AddBackend(backend=x)),
            ),
            min_size=1,
            max_size=4,
        )
    )
    for change in changes:
        listener = getattr(change, "listener", None)
        if listener is not None:
            proxy = {
                rq.AddHttpListener: "HTTP",
                rq.AddTcpListener: "TCP",
                rq.AddUdpListener: "UDP",
            }[type(change)]
            if b.listener(proxy, listener.address) is not None:  # type: ignore[arg-type]
                b.apply(rq.RemoveListener(address=listener.address, proxy=proxy))  # type: ignore[arg-type]
        try:
            b.apply(change)
        except StateError:
            continue
        if listener is not None and listener.active:
            b.apply(rq.ActivateListener(address=listener.address, proxy=proxy))  # type: ignore[arg-type]
    converged = replay(a.diff(b), onto=a.copy())
    assert converged == b
    assert converged.hash() == b.hash()


hostile_requests = st.one_of(
    st.builds(rq.RemoveCluster, cluster_id=st.sampled_from(["nope", "zzz"])),
    st.builds(
        rq.RemoveBackend,
        cluster_id=st.sampled_from(["app", "api", "nope"]),
        backend_id=st.just("missing"),
        address=st.just("127.0.0.1:1"),
    ),
    st.builds(
        rq.RemoveListener, address=st.just("127.0.0.9:9"), proxy=st.sampled_from(LISTENER_TYPES)
    ),
    st.builds(
        rq.ActivateListener, address=st.just("127.0.0.9:9"), proxy=st.sampled_from(LISTENER_TYPES)
    ),
    st.builds(rq.UpdateUdpListener, address=st.just("127.0.0.9:9"), max_flows=st.just(1)),
    st.builds(rq.RemoveCertificate, address=st.just("127.0.2.1:443"), fingerprint=st.just("zz")),
    state_requests().flatmap(lambda requests: st.sampled_from(requests)),
)


@SETTINGS
@given(states, hostile_requests)
def test_failing_apply_leaves_state_and_hash_unchanged(
    state: ConfigState, request: rq.Request
) -> None:
    before, before_hash = state.copy(), state.hash()
    try:
        outcome = state.apply(request)
    except StateError:
        assert state == before
        assert state.hash() == before_hash
    else:
        assert (outcome == "unchanged") == (state.hash() == before_hash)


@SETTINGS
@given(states)
def test_every_generated_request_round_trips_msgpack_and_json(state: ConfigState) -> None:
    for index, request in enumerate(state.generate_requests()):
        envelope = RequestEnvelope(id=f"r{index}", request=request)  # type: ignore[arg-type]
        for codec in (msgspec.msgpack, msgspec.json):
            assert codec.decode(codec.encode(envelope), type=RequestEnvelope) == envelope
