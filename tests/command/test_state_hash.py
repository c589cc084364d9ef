"""State hashes: every single-field change of every object kind changes the hash."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from support.certs import certificate

from sozu.command import requests as rq
from sozu.command.state import ConfigState
from sozu.command.types import (
    Backend,
    Cluster,
    Header,
    HealthCheckConfig,
    HstsConfig,
    HttpListenerConfig,
    HttpsListenerConfig,
    LoadBalancingParams,
    PathRule,
    RequestHttpFrontend,
    RequestTcpFrontend,
    RequestUdpFrontend,
    TcpListenerConfig,
    UdpClusterConfig,
    UdpHealthConfig,
    UdpListenerConfig,
)

# Values for fields whose default gives no hint of a valid other value.
ALTERNATIVES: dict[str, object] = {
    "address": "127.0.0.1:9999",
    "public_address": "[::1]:443",
    "health_check": HealthCheckConfig(uri="/health"),
    "udp": UdpClusterConfig(responses=1),
    "health": UdpHealthConfig(rise=4),
    "hsts": HstsConfig(enabled=True),
    "load_balancing_parameters": LoadBalancingParams(weight=3),
    "path": PathRule(kind="EQUALS", value="/x"),
    "headers": (Header(position="REQUEST", key="x", val="y"),),
    "uri": "/other",
    "alpn_protocols": ("http/1.1",),
    "hostname": "other.example.com",
    "udp_probe_payload": "PING",
    "names": ("renamed.test",),
    "certificate_chain": (certificate("example.com").cert_pem,),
    # Real PEM texts: an HTTPS listener's own certificate and key are checked when applied.
    "certificate": certificate("other.example.org").cert_pem,
    "key": certificate("other.example.org").key_pem,
    "expected_status": 204,
    "versions": ("TLS_V1_3",),
}


def _literal_other(value: object, annotation: Any) -> object:
    for option in typing.get_args(annotation):
        if typing.get_origin(option) is typing.Literal:
            for literal in typing.get_args(option):
                if literal != value:
                    return literal
    if typing.get_origin(annotation) is typing.Literal:
        return next(v for v in typing.get_args(annotation) if v != value)
    raise LookupError


def changed_value(name: str, value: object, annotation: Any) -> object:
    """A valid value for the field that differs from `value`."""
    if name in ALTERNATIVES and ALTERNATIVES[name] != value:
        return ALTERNATIVES[name]
    try:
        return _literal_other(value, annotation)
    except LookupError:
        pass
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if value is None and "bool" in str(annotation):
        return True
    if value is None and "int" in str(annotation):
        return 7
    if isinstance(value, str) or (value is None and "str" in str(annotation)):
        return (value or "") + "x"
    if isinstance(value, tuple):
        return (*value, "x")
    if isinstance(value, dict):
        return {**value, "404": "x"}
    raise AssertionError(f"no alternative for field {name}={value!r} ({annotation})")


def single_field_changes(base: msgspec.Struct) -> list[tuple[str, msgspec.Struct]]:
    hints = typing.get_type_hints(type(base), include_extras=True)
    changes = []
    for field in msgspec.structs.fields(base):
        if field.name == "active":
            continue  # set by the activation lifecycle only: see the test below
        value = getattr(base, field.name)
        new = changed_value(field.name, value, hints[field.name])
        changes.append((field.name, msgspec.structs.replace(base, **{field.name: new})))
    return changes


def state_of(make_request: Callable[[Any], rq.Request], obj: msgspec.Struct) -> ConfigState:
    state = ConfigState()
    state.apply(make_request(obj))
    return state


CASES: list[tuple[str, msgspec.Struct, Callable[[Any], rq.Request]]] = [
    ("cluster", Cluster(cluster_id="c"), lambda o: rq.AddCluster(cluster=o)),
    (
        "backend",
        Backend(cluster_id="c", backend_id="b", address="127.0.0.1:9000"),
        lambda o: rq.AddBackend(backend=o),
    ),
    (
        "http listener",
        HttpListenerConfig(address="127.0.0.1:80"),
        lambda o: rq.AddHttpListener(listener=o),
    ),
    (
        "https listener",
        HttpsListenerConfig(address="127.0.0.1:443", alpn_protocols=("h2",)),
        lambda o: rq.AddHttpsListener(listener=o),
    ),
    (
        "tcp listener",
        TcpListenerConfig(address="127.0.0.1:1234"),
        lambda o: rq.AddTcpListener(listener=o),
    ),
    (
        "udp listener",
        UdpListenerConfig(address="127.0.0.1:53"),
        lambda o: rq.AddUdpListener(listener=o),
    ),
    (
        "http frontend",
        RequestHttpFrontend(address="127.0.0.1:80", hostname="example.com", cluster_id="c"),
        lambda o: rq.AddHttpFrontend(frontend=o),
    ),
    (
        "https frontend",
        RequestHttpFrontend(address="127.0.0.1:443", hostname="example.com"),
        lambda o: rq.AddHttpsFrontend(frontend=o),
    ),
    (
        "tcp frontend",
        RequestTcpFrontend(cluster_id="c", address="127.0.0.1:1234"),
        lambda o: rq.AddTcpFrontend(frontend=o),
    ),
    (
        "udp frontend",
        RequestUdpFrontend(cluster_id="c", address="127.0.0.1:53"),
        lambda o: rq.AddUdpFrontend(frontend=o),
    ),
    (
        "udp cluster options",
        UdpClusterConfig(),
        lambda o: rq.AddCluster(cluster=Cluster(cluster_id="c", udp=o)),
    ),
    (
        "udp health",
        UdpHealthConfig(),
        lambda o: rq.AddCluster(cluster=Cluster(cluster_id="c", udp=UdpClusterConfig(health=o))),
    ),
    (
        "health check",
        HealthCheckConfig(uri="/h"),
        lambda o: rq.AddCluster(cluster=Cluster(cluster_id="c", health_check=o)),
    ),
]


@pytest.mark.parametrize(("kind", "base", "make"), CASES, ids=[c[0] for c in CASES])
def test_any_single_field_change_changes_the_hash(
    kind: str, base: msgspec.Struct, make: Callable[[Any], rq.Request]
) -> None:
    reference = state_of(make, base)
    seen = {reference.hash(): "base"}
    changes = single_field_changes(base)
    assert len(changes) >= 2
    for field, changed in changes:
        digest = state_of(make, changed).hash()
        assert digest not in seen, f"{kind}: changing {field} collides with {seen.get(digest)}"
        seen[digest] = field


def test_listener_activation_changes_the_hash() -> None:
    state = state_of(
        lambda o: rq.AddUdpListener(listener=o), UdpListenerConfig(address="127.0.0.1:53")
    )
    before = state.hash()
    state.apply(rq.ActivateListener(address="127.0.0.1:53", proxy="UDP"))
    assert state.hash() != before
    state.apply(rq.DeactivateListener(address="127.0.0.1:53", proxy="UDP"))
    assert state.hash() == before


def test_certificate_fields_change_the_hash() -> None:
    cert = certificate("example.com")
    base = rq.AddCertificate(address="127.0.0.1:443", certificate=cert.as_request_payload())
    variants = [
        base,
        msgspec.structs.replace(base, expired_at=12345),
        msgspec.structs.replace(base, address="127.0.0.1:8443"),
        msgspec.structs.replace(
            base,
            certificate=msgspec.structs.replace(base.certificate, names=("other.test",)),
        ),
        msgspec.structs.replace(
            base,
            certificate=msgspec.structs.replace(
                base.certificate, certificate_chain=(certificate("api.example.net").cert_pem,)
            ),
        ),
        msgspec.structs.replace(
            base, certificate=msgspec.structs.replace(base.certificate, versions=("TLS_V1_3",))
        ),
        rq.AddCertificate(
            address="127.0.0.1:443",
            certificate=certificate("api.example.net").as_request_payload(),
        ),
    ]
    hashes = {state_of(lambda o: o, v).hash() for v in variants}
    assert len(hashes) == len(variants)


def test_equal_states_hash_equal_whatever_the_insertion_order() -> None:
    requests: list[rq.Request] = [
        rq.AddCluster(cluster=Cluster(cluster_id="a")),
        rq.AddCluster(cluster=Cluster(cluster_id="b", answers={"503": "x", "404": "y"})),
        rq.AddBackend(backend=Backend(cluster_id="a", backend_id="1", address="127.0.0.1:1")),
        rq.AddBackend(backend=Backend(cluster_id="a", backend_id="2", address="127.0.0.1:2")),
        rq.AddUdpListener(listener=UdpListenerConfig(address="127.0.0.1:53")),
    ]
    forward, backward = ConfigState(), ConfigState()
    for request in requests:
        forward.apply(request)
    for request in reversed(requests):
        backward.apply(request)
    # dict fields in another key order are the same object
    backward.apply(rq.AddCluster(cluster=Cluster(cluster_id="b", answers={"404": "y", "503": "x"})))
    assert forward == backward
    assert forward.hash() == backward.hash()
    assert forward.cluster_hashes() == backward.cluster_hashes()


def test_a_new_backend_changes_only_its_cluster_hash() -> None:
    state = ConfigState()
    for cluster_id in ("a", "b"):
        state.apply(rq.AddCluster(cluster=Cluster(cluster_id=cluster_id)))
    before = state.cluster_hashes()
    state.apply(
        rq.AddBackend(backend=Backend(cluster_id="a", backend_id="1", address="127.0.0.1:1"))
    )
    after = state.cluster_hashes()
    assert after["a"] != before["a"]
    assert after["b"] == before["b"]


def test_diff_of_a_state_with_itself_is_empty() -> None:
    state = ConfigState()
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="a")))
    state.apply(rq.AddTcpListener(listener=TcpListenerConfig(address="127.0.0.1:1")))
    state.apply(rq.ActivateListener(address="127.0.0.1:1", proxy="TCP"))
    assert state.diff(state) == []
    assert state.diff(state.copy()) == []


def test_removing_everything_returns_to_the_empty_hash() -> None:
    state = ConfigState()
    empty = state.hash()
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="a")))
    state.apply(
        rq.AddBackend(backend=Backend(cluster_id="a", backend_id="1", address="127.0.0.1:1"))
    )
    assert state.hash() != empty
    state.apply(rq.RemoveBackend(cluster_id="a", backend_id="1", address="127.0.0.1:1"))
    state.apply(rq.RemoveCluster(cluster_id="a"))
    assert state.hash() == empty


def test_equal_objects_hash_the_same_whether_defaults_are_given_or_not() -> None:
    from sozu.command.types import HttpsListenerConfig

    implicit, explicit = ConfigState(), ConfigState()
    implicit.apply(rq.AddHttpsListener(listener=HttpsListenerConfig(address="127.0.0.1:443")))
    given = HttpsListenerConfig(
        address="127.0.0.1:443",
        alpn_protocols=tuple(["h2", "http/1.1"]),  # equal to the default, another object
        versions=tuple(["TLS_V1_2", "TLS_V1_3"]),
        sticky_name="".join(["SOZU", "BALANCEID"]),
    )
    explicit.apply(rq.AddHttpsListener(listener=given))
    assert implicit == explicit
    assert implicit.hash() == explicit.hash()
