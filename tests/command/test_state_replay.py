"""generate_requests order, the listener_diff cases of upstream 2.1.0, and diff rules."""

from __future__ import annotations

import msgspec
from support.certs import certificate

from sozu.command import requests as rq
from sozu.command.requests import request_kind
from sozu.command.state import ConfigState
from sozu.command.state_replay import generate_activate_requests
from sozu.command.types import (
    Backend,
    Cluster,
    HttpListenerConfig,
    HttpsListenerConfig,
    RequestHttpFrontend,
    RequestTcpFrontend,
    RequestUdpFrontend,
    TcpListenerConfig,
    UdpListenerConfig,
)


def apply_all(state: ConfigState, requests: list[rq.Request]) -> ConfigState:
    for request in requests:
        state.apply(request)
    return state


def kinds(requests: list[rq.Request]) -> list[str]:
    return [request_kind(r) for r in requests]


def full_state() -> ConfigState:
    cert = certificate("example.com")
    return apply_all(
        ConfigState(),
        [
            rq.AddUdpListener(listener=UdpListenerConfig(address="127.0.0.1:53")),
            rq.AddTcpListener(listener=TcpListenerConfig(address="127.0.0.1:1234")),
            rq.AddHttpsListener(listener=HttpsListenerConfig(address="127.0.0.1:8443")),
            rq.AddHttpListener(listener=HttpListenerConfig(address="127.0.0.1:8080")),
            rq.ActivateListener(address="127.0.0.1:8080", proxy="HTTP"),
            rq.ActivateListener(address="127.0.0.1:53", proxy="UDP"),
            rq.AddBackend(
                backend=Backend(cluster_id="app", backend_id="b", address="127.0.0.1:9000")
            ),
            rq.AddUdpFrontend(
                frontend=RequestUdpFrontend(cluster_id="dns", address="127.0.0.1:53")
            ),
            rq.AddTcpFrontend(
                frontend=RequestTcpFrontend(cluster_id="db", address="127.0.0.1:1234")
            ),
            rq.AddHttpsFrontend(
                frontend=RequestHttpFrontend(
                    address="127.0.0.1:8443", hostname="example.com", cluster_id="app"
                )
            ),
            rq.AddCertificate(address="127.0.0.1:8443", certificate=cert.as_request_payload()),
            rq.AddHttpFrontend(
                frontend=RequestHttpFrontend(
                    address="127.0.0.1:8080", hostname="example.com", cluster_id="app"
                )
            ),
            rq.AddCluster(cluster=Cluster(cluster_id="app")),
        ],
    )


def test_generate_requests_follows_upstream_order() -> None:
    requests = full_state().generate_requests()
    assert kinds(requests) == [
        "AddHttpListener",
        "ActivateListener",
        "AddHttpsListener",
        "AddTcpListener",
        "AddUdpListener",
        "ActivateListener",
        "AddCluster",
        "AddHttpFrontend",
        "AddCertificate",
        "AddHttpsFrontend",
        "AddTcpFrontend",
        "AddUdpFrontend",
        "AddBackend",
    ]
    # listeners are always added inactive; activation is a separate request
    for request in requests:
        listener = getattr(request, "listener", None)
        if listener is not None:
            assert listener.active is False


def test_generate_activate_requests() -> None:
    activations = generate_activate_requests(full_state())
    assert [(a.address, a.proxy) for a in activations] == [  # type: ignore[attr-defined]
        ("127.0.0.1:8080", "HTTP"),
        ("127.0.0.1:53", "UDP"),
    ]


def test_replay_into_empty_state_is_identical_with_counts_aside() -> None:
    original = full_state()
    rebuilt = apply_all(ConfigState(), original.generate_requests())
    assert rebuilt == original
    assert rebuilt.hash() == original.hash()


def test_diff_between_empty_and_full() -> None:
    full = full_state()
    assert apply_all(ConfigState(), ConfigState().diff(full)) == full
    emptied = apply_all(full.copy(), full.diff(ConfigState()))
    assert emptied == ConfigState()
    assert emptied.counts() == {
        "listeners": 0,
        "clusters": 0,
        "frontends": 0,
        "backends": 0,
        "certificates": 0,
    }


# -- the three listener_diff cases of upstream 2.1.0 (docs/command-protocol.md, Diff) -----------


def listener_pair() -> tuple[ConfigState, ConfigState]:
    current = apply_all(
        ConfigState(),
        [
            rq.AddTcpListener(listener=TcpListenerConfig(address="127.0.0.1:1234")),
            rq.ActivateListener(address="127.0.0.1:1234", proxy="TCP"),
            rq.AddHttpListener(listener=HttpListenerConfig(address="127.0.0.1:8080")),
            rq.AddHttpsListener(listener=HttpsListenerConfig(address="127.0.0.1:8443")),
            rq.ActivateListener(address="127.0.0.1:8443", proxy="HTTPS"),
        ],
    )
    target = apply_all(
        ConfigState(),
        [
            rq.AddTcpListener(
                listener=TcpListenerConfig(address="127.0.0.1:1234", expect_proxy=True)
            ),
            rq.AddHttpListener(
                listener=HttpListenerConfig(address="127.0.0.1:8080", answers={"404": "gone"})
            ),
            rq.ActivateListener(address="127.0.0.1:8080", proxy="HTTP"),
            rq.AddHttpsListener(
                listener=HttpsListenerConfig(address="127.0.0.1:8443", answers={"503": "busy"})
            ),
            rq.ActivateListener(address="127.0.0.1:8443", proxy="HTTPS"),
        ],
    )
    return current, target


def for_address(requests: list[rq.Request], address: str) -> list[rq.Request]:
    return [
        r
        for r in requests
        if getattr(r, "address", None) == address
        or (getattr(getattr(r, "listener", None), "address", None) == address)
    ]


def test_listener_diff_tcp_active_to_inactive_with_change() -> None:
    current, target = listener_pair()
    steps = for_address(current.diff(target), "127.0.0.1:1234")
    assert kinds(steps) == ["RemoveListener", "AddTcpListener", "DeactivateListener"]
    assert steps[1].listener.expect_proxy is True  # type: ignore[attr-defined]
    assert steps[1].listener.active is False  # type: ignore[attr-defined]


def test_listener_diff_http_inactive_to_active_with_change() -> None:
    current, target = listener_pair()
    steps = for_address(current.diff(target), "127.0.0.1:8080")
    assert kinds(steps) == ["RemoveListener", "AddHttpListener", "ActivateListener"]
    assert steps[1].listener.answers == {"404": "gone"}  # type: ignore[attr-defined]


def test_listener_diff_https_active_in_both_with_change_stays_active() -> None:
    current, target = listener_pair()
    steps = for_address(current.diff(target), "127.0.0.1:8443")
    assert kinds(steps) == ["RemoveListener", "AddHttpsListener", "ActivateListener"]
    assert steps[1].listener.active is False  # type: ignore[attr-defined]
    converged = apply_all(current.copy(), current.diff(target))
    assert converged.https_listeners["127.0.0.1:8443"].active is True
    assert converged == target


def test_listener_diff_active_in_both_changed_for_every_type() -> None:
    """The 2.1.0 fix, for all four listener types: a changed active listener stays active."""
    listeners = [
        (HttpListenerConfig(address="127.0.0.1:81"), "HTTP", {"front_timeout": 5}),
        (HttpsListenerConfig(address="127.0.0.1:82"), "HTTPS", {"back_timeout": 5}),
        (TcpListenerConfig(address="127.0.0.1:83"), "TCP", {"connect_timeout": 5}),
        (UdpListenerConfig(address="127.0.0.1:84"), "UDP", {"max_flows": 5}),
    ]
    current, target = ConfigState(), ConfigState()
    for listener, proxy, change in listeners:
        for state, config in (
            (current, listener),
            (target, msgspec.structs.replace(listener, **change)),
        ):
            apply_all(
                state,
                [
                    rq.AddHttpListener(listener=config)  # type: ignore[arg-type]
                    if proxy == "HTTP"
                    else rq.AddHttpsListener(listener=config)  # type: ignore[arg-type]
                    if proxy == "HTTPS"
                    else rq.AddTcpListener(listener=config)  # type: ignore[arg-type]
                    if proxy == "TCP"
                    else rq.AddUdpListener(listener=config),  # type: ignore[arg-type]
                    rq.ActivateListener(address=listener.address, proxy=proxy),  # type: ignore[arg-type]
                ],
            )
    steps = current.diff(target)
    for listener, _, _ in listeners:
        assert kinds(for_address(steps, listener.address))[-1] == "ActivateListener"
    converged = apply_all(current.copy(), steps)
    assert converged == target
    for state_map in converged.listener_maps().values():
        assert all(listener.active for listener in state_map.values())


def test_diff_toggle_only_activation() -> None:
    current = apply_all(
        ConfigState(), [rq.AddUdpListener(listener=UdpListenerConfig(address="127.0.0.1:53"))]
    )
    target = current.copy()
    target.apply(rq.ActivateListener(address="127.0.0.1:53", proxy="UDP"))
    assert kinds(current.diff(target)) == ["ActivateListener"]
    assert kinds(target.diff(current)) == ["DeactivateListener"]


def test_diff_changed_backend_is_remove_then_add_and_cluster_is_one_add() -> None:
    backend = Backend(cluster_id="app", backend_id="b", address="127.0.0.1:9000")
    current = apply_all(
        ConfigState(),
        [rq.AddCluster(cluster=Cluster(cluster_id="app")), rq.AddBackend(backend=backend)],
    )
    target = apply_all(
        ConfigState(),
        [
            rq.AddCluster(cluster=Cluster(cluster_id="app", sticky_session=True)),
            rq.AddBackend(backend=msgspec.structs.replace(backend, sticky_id="s")),
        ],
    )
    assert kinds(current.diff(target)) == ["AddCluster", "RemoveBackend", "AddBackend"]


def test_diff_moves_a_backend_id_to_another_address_removal_first() -> None:
    """A backend id names one address per cluster: the diff frees it before adding it at its
    new address (sorted by address, the new one would come first)."""
    old = Backend(cluster_id="app", backend_id="b", address="127.0.0.1:9001")
    new = msgspec.structs.replace(old, address="127.0.0.1:9000")
    other = Backend(cluster_id="app", backend_id="a", address="127.0.0.1:8000")
    current = apply_all(ConfigState(), [rq.AddBackend(backend=old)])
    target = apply_all(ConfigState(), [rq.AddBackend(backend=new), rq.AddBackend(backend=other)])
    steps = current.diff(target)
    assert kinds(steps) == ["RemoveBackend", "AddBackend", "AddBackend"]
    assert apply_all(current.copy(), steps) == target


def test_diff_tcp_frontend_group_removal_re_adds_survivors() -> None:
    plain = RequestTcpFrontend(cluster_id="c", address="127.0.0.1:1234")
    tagged = RequestTcpFrontend(cluster_id="c", address="127.0.0.1:1234", tags={"k": "v"})
    current = apply_all(
        ConfigState(), [rq.AddTcpFrontend(frontend=plain), rq.AddTcpFrontend(frontend=tagged)]
    )
    target = apply_all(ConfigState(), [rq.AddTcpFrontend(frontend=tagged)])
    steps = current.diff(target)
    assert kinds(steps) == ["RemoveTcpFrontend", "AddTcpFrontend"]
    assert apply_all(current.copy(), steps) == target


def test_diff_listener_can_change_protocol_on_one_address() -> None:
    current = apply_all(
        ConfigState(), [rq.AddHttpListener(listener=HttpListenerConfig(address="127.0.0.1:80"))]
    )
    target = apply_all(
        ConfigState(), [rq.AddTcpListener(listener=TcpListenerConfig(address="127.0.0.1:80"))]
    )
    steps = current.diff(target)
    assert kinds(steps) == ["RemoveListener", "AddTcpListener"]
    assert apply_all(current.copy(), steps) == target


def test_diff_certificates_removal_then_addition() -> None:
    old, new = certificate("example.com"), certificate("api.example.net")
    current = apply_all(
        ConfigState(),
        [rq.AddCertificate(address="127.0.0.1:443", certificate=old.as_request_payload())],
    )
    target = apply_all(
        ConfigState(),
        [rq.AddCertificate(address="127.0.0.1:443", certificate=new.as_request_payload())],
    )
    steps = current.diff(target)
    assert kinds(steps) == ["RemoveCertificate", "AddCertificate"]
    assert steps[0].fingerprint == old.fingerprint  # type: ignore[attr-defined]
    assert apply_all(current.copy(), steps) == target
