"""The fleet's key layout: state -> keys -> state round trips, and bad keys are refused by name."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from support.state_strategies import states

from sozu.command import requests as rq
from sozu.command.fleet_layout import (
    GENERATION,
    Generation,
    LayoutError,
    build_target,
    decode_generation,
    encode_generation,
    encode_value,
    normalize_prefix,
    relative_kvs,
    state_to_kv,
    target_requests,
)
from sozu.command.state import ConfigState
from sozu.command.types import Backend, Cluster, HealthCheckConfig, RequestTcpFrontend

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(states)
def test_state_to_keys_to_state_keeps_the_hash(state: ConfigState) -> None:
    kvs = state_to_kv(state)
    assert all(key.startswith("state/") for key in kvs)
    rebuilt = build_target(kvs)
    assert rebuilt.hash() == state.hash()
    assert rebuilt == state
    assert state_to_kv(rebuilt) == kvs


@SETTINGS
@given(states, states)
def test_diff_onto_a_target_read_from_keys_converges(
    current: ConfigState, wanted: ConfigState
) -> None:
    target = build_target(state_to_kv(wanted))
    moved = current.copy()
    for request in current.diff(target):
        moved.apply(request)
    assert moved.hash() == wanted.hash()


def _small_state() -> ConfigState:
    state = ConfigState()
    state.apply(
        rq.AddCluster(
            cluster=Cluster(cluster_id="a/b", health_check=HealthCheckConfig(uri="/health"))
        )
    )
    state.apply(
        rq.AddBackend(backend=Backend(cluster_id="a/b", backend_id="b1", address="127.0.0.1:9"))
    )
    for tags in ({}, {"k": "v"}):
        state.apply(
            rq.AddTcpFrontend(
                frontend=RequestTcpFrontend(cluster_id="a/b", address="127.0.0.1:7000", tags=tags)
            )
        )
    return state


def test_keys_are_readable_and_one_per_object() -> None:
    kvs = state_to_kv(_small_state())
    assert sorted(kvs) == [
        "state/backends/a%2Fb/b1",
        "state/clusters/a%2Fb",
        "state/frontends/tcp/a%2Fb/127.0.0.1:7000",
        "state/frontends/tcp/a%2Fb/127.0.0.1:7000%232",
        "state/health_checks/a%2Fb",
    ]
    value = msgspec.json.decode(kvs["state/backends/a%2Fb/b1"])
    assert value["type"] == "AddBackend"
    assert value["backend"]["address"] == "127.0.0.1:9"


def test_a_value_that_does_not_match_its_key_is_refused_naming_the_key() -> None:
    kvs = state_to_kv(_small_state())
    kvs["state/backends/a%2Fb/other"] = kvs["state/backends/a%2Fb/b1"]
    with pytest.raises(LayoutError) as caught:
        build_target(kvs)
    assert caught.value.key == "state/backends/a%2Fb/other"
    assert "backend_id" in caught.value.message


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("state/clusters/x", b"{not json", "invalid value"),
        ("state/clusters/x", b'{"type": "AddBackend"}', "invalid value"),
        ("state/clusters/x", encode_value(rq.RemoveCluster(cluster_id="x")), "holds AddCluster"),
        ("state/widgets/x", b"{}", "unknown object kind"),
        (
            "state/listeners/quic/127.0.0.1:1",
            encode_value(rq.RemoveCluster(cluster_id="x")),
            "unknown listener protocol",
        ),
        (
            "state/backends/c/b",
            b'{"type":"AddBackend","backend":{"cluster_id":"c","backend_id":"b",'
            b'"address":"999.0.0.1:80"}}',
            "invalid value",
        ),
    ],
)
def test_malformed_keys_are_refused(key: str, value: bytes, says: str) -> None:
    with pytest.raises(LayoutError) as caught:
        target_requests({key: value})
    assert caught.value.key == key
    assert says in caught.value.message


def test_a_request_the_state_refuses_names_its_key() -> None:
    bad = rq.SetHealthCheck(cluster_id="ghost", health_check=HealthCheckConfig(uri="/h"))
    with pytest.raises(LayoutError) as caught:
        build_target({"state/health_checks/ghost": encode_value(bad)})
    assert caught.value.key == "state/health_checks/ghost"
    assert "SetHealthCheck refused" in caught.value.message


def test_generation_and_foreign_keys_are_not_objects() -> None:
    kvs = state_to_kv(_small_state())
    kvs[GENERATION] = encode_generation(Generation(generation=3, complete=True))
    kvs["instances/host-1"] = b"{}"
    assert build_target(kvs).hash() == _small_state().hash()
    assert decode_generation(GENERATION, kvs[GENERATION]) == Generation(generation=3, complete=True)
    with pytest.raises(LayoutError):
        decode_generation(GENERATION, b"3")


def test_prefixes() -> None:
    assert normalize_prefix("sozu") == "/sozu/"
    assert normalize_prefix("/fleet/a/") == "/fleet/a/"
    assert relative_kvs("/p/", [(b"/p/state/x", b"1"), (b"/q/state/y", b"2")]) == {"state/x": b"1"}


def test_an_address_map_moves_listeners_and_what_uses_them() -> None:
    from support.state_strategies import build_state

    from sozu.command.types import HttpListenerConfig, PathRule, RequestHttpFrontend

    desired = build_state(
        [
            rq.AddHttpListener(listener=HttpListenerConfig(address="0.0.0.0:80")),
            rq.ActivateListener(address="0.0.0.0:80", proxy="HTTP"),
            rq.AddHttpFrontend(
                frontend=RequestHttpFrontend(
                    address="0.0.0.0:80", hostname="a.example", path=PathRule(value="/")
                )
            ),
        ]
    )
    kvs = state_to_kv(desired)
    local = build_target(kvs, address_map={"0.0.0.0:80": "127.0.0.2:8080"})
    assert list(local.http_listeners) == ["127.0.0.2:8080"]
    assert local.http_listeners["127.0.0.2:8080"].active
    assert [f.address for f in local.http_fronts.values()] == ["127.0.0.2:8080"]
    assert build_target(kvs, address_map={"10.0.0.1:1": "10.0.0.2:1"}) == desired
