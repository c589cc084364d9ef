"""Every dispatch rule and every error of the state (docs/command-protocol.md, What the state
refuses)."""

from __future__ import annotations

import msgspec
import pytest
from support.certs import certificate

from sozu.command import requests as rq
from sozu.command.state import ConfigState
from sozu.command.state_errors import (
    AlreadyExists,
    InvalidValue,
    NoChange,
    NotFound,
    StateError,
    Undispatchable,
)
from sozu.command.types import (
    DEFAULT_ALPN,
    Backend,
    Cluster,
    HealthCheckConfig,
    HttpListenerConfig,
    HttpsListenerConfig,
    LoadBalancingParams,
    PathRule,
    RequestHttpFrontend,
    RequestTcpFrontend,
    RequestUdpFrontend,
    TcpListenerConfig,
    UdpClusterConfig,
    UdpListenerConfig,
)

HTTP = "127.0.0.1:8080"
HTTPS = "127.0.0.1:8443"
TCP = "127.0.0.1:1234"
UDP = "127.0.0.1:5353"


def refused(state: ConfigState, request: rq.Request, error: type[StateError]) -> StateError:
    """Apply a request that must be refused; the state and its hash must not move."""
    before_hash, before = state.hash(), state.copy()
    with pytest.raises(error) as caught:
        state.apply(request)
    assert state.hash() == before_hash
    assert state == before
    return caught.value


def with_listeners() -> ConfigState:
    state = ConfigState()
    state.apply(rq.AddHttpListener(listener=HttpListenerConfig(address=HTTP)))
    state.apply(rq.AddHttpsListener(listener=HttpsListenerConfig(address=HTTPS)))
    state.apply(rq.AddTcpListener(listener=TcpListenerConfig(address=TCP)))
    state.apply(rq.AddUdpListener(listener=UdpListenerConfig(address=UDP)))
    return state


# -- clusters ------------------------------------------------------------------------------------


def test_add_cluster_upserts_last_wins() -> None:
    state = ConfigState()
    assert state.apply(rq.AddCluster(cluster=Cluster(cluster_id="c"))) == "changed"
    assert state.apply(rq.AddCluster(cluster=Cluster(cluster_id="c"))) == "unchanged"
    assert state.apply(rq.AddCluster(cluster=Cluster(cluster_id="c", sticky_session=True)))
    assert state.clusters["c"].sticky_session is True
    assert len(state.clusters) == 1


def test_add_cluster_with_bad_inline_health_check_is_refused() -> None:
    state = ConfigState()
    bad = Cluster(cluster_id="c", health_check=HealthCheckConfig(uri="health"))
    error = refused(state, rq.AddCluster(cluster=bad), InvalidValue)
    assert "'c'" in error.message
    assert "uri" in error.message


def test_remove_cluster_keeps_its_frontends_and_backends() -> None:
    state = ConfigState()
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="c")))
    state.apply(rq.AddBackend(backend=Backend(cluster_id="c", backend_id="b", address="[::1]:80")))
    state.apply(rq.AddTcpFrontend(frontend=RequestTcpFrontend(cluster_id="c", address=TCP)))
    assert state.apply(rq.RemoveCluster(cluster_id="c")) == "changed"
    assert "c" not in state.clusters
    assert len(state.backends["c"]) == 1
    assert len(state.tcp_fronts["c"]) == 1


def test_remove_unknown_cluster_is_not_found() -> None:
    error = refused(ConfigState(), rq.RemoveCluster(cluster_id="nope"), NotFound)
    assert "'nope'" in error.message


# -- listeners -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        rq.AddHttpListener(listener=HttpListenerConfig(address=HTTP)),
        rq.AddHttpsListener(listener=HttpsListenerConfig(address=HTTPS)),
        rq.AddTcpListener(listener=TcpListenerConfig(address=TCP)),
        rq.AddUdpListener(listener=UdpListenerConfig(address=UDP)),
    ],
)
def test_add_listener_twice_is_exists(request_: rq.Request) -> None:
    state = with_listeners()
    error = refused(state, request_, AlreadyExists)
    assert isinstance(error, AlreadyExists)
    assert error.identical
    assert "127.0.0.1" in error.message


def test_add_listener_forces_inactive() -> None:
    state = ConfigState()
    state.apply(rq.AddTcpListener(listener=TcpListenerConfig(address=TCP, active=True)))
    assert state.tcp_listeners[TCP].active is False


def test_stream_listeners_share_addresses_but_udp_does_not_clash() -> None:
    state = ConfigState()
    state.apply(rq.AddTcpListener(listener=TcpListenerConfig(address=TCP)))
    error = refused(
        state, rq.AddHttpListener(listener=HttpListenerConfig(address=TCP)), AlreadyExists
    )
    assert "TCP listener" in error.message
    assert state.apply(rq.AddUdpListener(listener=UdpListenerConfig(address=TCP))) == "changed"


def test_listener_with_port_zero_is_refused() -> None:
    listener = TcpListenerConfig(address="127.0.0.1:0")
    refused(ConfigState(), rq.AddTcpListener(listener=listener), InvalidValue)


def test_remove_listener_and_remove_unknown_is_no_change() -> None:
    state = with_listeners()
    assert state.apply(rq.RemoveListener(address=TCP, proxy="TCP")) == "changed"
    assert TCP not in state.tcp_listeners
    refused(state, rq.RemoveListener(address=TCP, proxy="TCP"), NoChange)
    # the address exists, but under another protocol
    refused(state, rq.RemoveListener(address=HTTP, proxy="HTTPS"), NoChange)


def test_activate_deactivate_idempotent_and_not_found() -> None:
    state = with_listeners()
    assert state.apply(rq.ActivateListener(address=UDP, proxy="UDP")) == "changed"
    assert state.apply(rq.ActivateListener(address=UDP, proxy="UDP")) == "unchanged"
    assert state.udp_listeners[UDP].active
    assert state.apply(rq.DeactivateListener(address=UDP, proxy="UDP")) == "changed"
    assert state.apply(rq.DeactivateListener(address=UDP, proxy="UDP")) == "unchanged"
    assert not state.udp_listeners[UDP].active
    refused(state, rq.ActivateListener(address="127.0.0.9:1", proxy="UDP"), NotFound)
    refused(state, rq.DeactivateListener(address="127.0.0.9:1", proxy="HTTP"), NotFound)


def test_update_listener_sets_present_fields_only() -> None:
    state = with_listeners()
    state.apply(rq.ActivateListener(address=HTTP, proxy="HTTP"))
    assert state.apply(rq.UpdateHttpListener(address=HTTP, front_timeout=5)) == "changed"
    listener = state.http_listeners[HTTP]
    assert listener.front_timeout == 5
    assert listener.back_timeout == 30
    assert listener.active  # an update never touches activation


def test_update_address_only_is_unchanged_ok() -> None:
    state = with_listeners()
    for request in (
        rq.UpdateHttpListener(address=HTTP),
        rq.UpdateHttpsListener(address=HTTPS),
        rq.UpdateTcpListener(address=TCP),
        rq.UpdateUdpListener(address=UDP),
    ):
        assert state.apply(request) == "unchanged"


def test_update_unknown_listener_is_not_found() -> None:
    state = with_listeners()
    refused(state, rq.UpdateTcpListener(address="127.0.0.1:9", front_timeout=1), NotFound)
    # an HTTPS listener is not patched by an HTTP update
    refused(state, rq.UpdateHttpListener(address=HTTPS, front_timeout=1), NotFound)


def test_update_answers_merge_per_code_and_empty_deletes() -> None:
    state = with_listeners()
    state.apply(rq.UpdateHttpListener(address=HTTP, answers={"404": "a", "503": "b"}))
    state.apply(rq.UpdateHttpListener(address=HTTP, answers={"404": "c", "503": ""}))
    assert state.http_listeners[HTTP].answers == {"404": "c"}


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"h2_max_rst_stream_per_window": 0}, "h2_max_rst_stream_per_window"),
        ({"h2_max_header_list_size": 0}, "h2_max_header_list_size"),
        ({"h2_stream_shrink_ratio": 1}, "h2_stream_shrink_ratio"),
        ({"alpn_protocols": ("h3",)}, "alpn_protocols"),
        ({"sozu_id_header": "bad: name"}, "sozu_id_header"),
        ({"disable_http11": True}, "disable_http11"),
    ],
)
def test_update_https_listener_invalid_values(patch: dict[str, object], needle: str) -> None:
    state = with_listeners()
    request = rq.UpdateHttpsListener(address=HTTPS, **patch)  # type: ignore[arg-type]
    error = refused(state, request, InvalidValue)
    assert needle in error.message
    assert HTTPS in error.message


def test_update_https_deadline_zero_and_alpn_reset_are_ok() -> None:
    state = with_listeners()
    state.apply(rq.UpdateHttpsListener(address=HTTPS, alpn_protocols=("http/1.1",)))
    assert state.https_listeners[HTTPS].alpn_protocols == ("http/1.1",)
    request = rq.UpdateHttpsListener(
        address=HTTPS, h2_graceful_shutdown_deadline_seconds=0, alpn_protocols=()
    )
    assert state.apply(request) == "changed"
    assert state.https_listeners[HTTPS].alpn_protocols == DEFAULT_ALPN
    assert state.https_listeners[HTTPS].h2_graceful_shutdown_deadline_seconds == 0
    # absent ALPN keeps the current value
    state.apply(rq.UpdateHttpsListener(address=HTTPS, alpn_protocols=("h2",)))
    state.apply(rq.UpdateHttpsListener(address=HTTPS, front_timeout=9))
    assert state.https_listeners[HTTPS].alpn_protocols == ("h2",)


def test_update_udp_listener() -> None:
    state = with_listeners()
    state.apply(rq.UpdateUdpListener(address=UDP, max_flows=10, max_rx_datagram_size=512))
    assert state.udp_listeners[UDP].max_flows == 10
    assert state.udp_listeners[UDP].max_rx_datagram_size == 512


# -- HTTP frontends ------------------------------------------------------------------------------


def front(hostname: str = "example.com", **fields: object) -> RequestHttpFrontend:
    return RequestHttpFrontend(address=HTTP, hostname=hostname, cluster_id="c", **fields)  # type: ignore[arg-type]


def test_http_frontend_add_exists_remove_not_found() -> None:
    state = ConfigState()
    assert state.apply(rq.AddHttpFrontend(frontend=front())) == "changed"
    error = refused(state, rq.AddHttpFrontend(frontend=front()), AlreadyExists)
    assert "example.com" in error.message
    assert state.apply(rq.AddHttpFrontend(frontend=front(method="POST"))) == "changed"
    assert len(state.http_fronts) == 2
    assert state.apply(rq.RemoveHttpFrontend(frontend=front())) == "changed"
    refused(state, rq.RemoveHttpFrontend(frontend=front()), NotFound)
    # HTTPS frontends live in their own map
    refused(state, rq.RemoveHttpsFrontend(frontend=front(method="POST")), NotFound)


def test_route_key_format() -> None:
    assert front().route_key() == f"{HTTP};example.com;P"
    regex = front(path=PathRule(kind="REGEX", value="^/a"), method="GET")
    assert regex.route_key() == f"{HTTP};example.com;R^/a;GET"
    assert front(path=PathRule(kind="EQUALS", value="/x")).route_key().endswith(";=/x")


def test_frontend_without_cluster_is_allowed_deny() -> None:
    state = ConfigState()
    deny = RequestHttpFrontend(address=HTTP, hostname="deny.example.com")
    assert state.apply(rq.AddHttpsFrontend(frontend=deny)) == "changed"
    assert next(iter(state.https_fronts.values())).cluster_id is None


# -- TCP and UDP frontends -----------------------------------------------------------------------


def test_tcp_frontends() -> None:
    def make(address: str, **tags: str) -> RequestTcpFrontend:
        return RequestTcpFrontend(cluster_id="c", address=address, tags=tags)

    state = ConfigState()
    state.apply(rq.AddTcpFrontend(frontend=make(TCP)))
    refused(state, rq.AddTcpFrontend(frontend=make(TCP)), AlreadyExists)
    state.apply(rq.AddTcpFrontend(frontend=make(TCP, k="v")))
    state.apply(rq.AddTcpFrontend(frontend=make(UDP)))
    assert len(state.tcp_fronts["c"]) == 3
    other = RequestTcpFrontend(cluster_id="x", address=TCP)
    refused(state, rq.RemoveTcpFrontend(frontend=other), NotFound)
    refused(state, rq.RemoveTcpFrontend(frontend=make("127.0.0.7:7")), NoChange)
    # removal drops every frontend of the cluster at that address, whatever their tags
    assert state.apply(rq.RemoveTcpFrontend(frontend=make(TCP))) == "changed"
    assert [f.address for f in state.tcp_fronts["c"]] == [UDP]
    state.apply(rq.RemoveTcpFrontend(frontend=make(UDP)))
    assert "c" not in state.tcp_fronts


def test_udp_frontends() -> None:
    def make(address: str, **tags: str) -> RequestUdpFrontend:
        return RequestUdpFrontend(cluster_id="dns", address=address, tags=tags)

    state = ConfigState()
    state.apply(rq.AddUdpFrontend(frontend=make(UDP)))
    refused(state, rq.AddUdpFrontend(frontend=make(UDP)), AlreadyExists)
    state.apply(rq.AddUdpFrontend(frontend=make(UDP, k="v")))
    state.apply(rq.AddUdpFrontend(frontend=make(TCP)))
    assert len(state.udp_fronts["dns"]) == 3
    other = RequestUdpFrontend(cluster_id="x", address=UDP)
    refused(state, rq.RemoveUdpFrontend(frontend=other), NotFound)
    refused(state, rq.RemoveUdpFrontend(frontend=make("127.0.0.7:7")), NoChange)
    assert state.apply(rq.RemoveUdpFrontend(frontend=make(UDP))) == "changed"
    assert [f.address for f in state.udp_fronts["dns"]] == [TCP]
    state.apply(rq.RemoveUdpFrontend(frontend=make(TCP)))
    assert "dns" not in state.udp_fronts


def test_stream_frontends_order_does_not_matter() -> None:
    a, b = ConfigState(), ConfigState()
    one = RequestTcpFrontend(cluster_id="c", address=TCP)
    two = RequestTcpFrontend(cluster_id="c", address=UDP)
    a.apply(rq.AddTcpFrontend(frontend=one))
    a.apply(rq.AddTcpFrontend(frontend=two))
    b.apply(rq.AddTcpFrontend(frontend=two))
    b.apply(rq.AddTcpFrontend(frontend=one))
    assert a == b
    assert a.hash() == b.hash()


# -- backends ------------------------------------------------------------------------------------


def backend(backend_id: str = "b", address: str = "127.0.0.1:9000", **fields: object) -> Backend:
    return Backend(cluster_id="c", backend_id=backend_id, address=address, **fields)  # type: ignore[arg-type]


def test_add_backend_upserts_on_id_and_address_without_cluster() -> None:
    state = ConfigState()
    assert state.apply(rq.AddBackend(backend=backend())) == "changed"
    assert state.apply(rq.AddBackend(backend=backend())) == "unchanged"
    heavier = backend(load_balancing_parameters=LoadBalancingParams(weight=7))
    assert state.apply(rq.AddBackend(backend=heavier)) == "changed"
    assert state.backends["c"] == [heavier]
    state.apply(rq.AddBackend(backend=backend("d", address="127.0.0.1:9001")))
    state.apply(rq.AddBackend(backend=backend("a")))
    assert [(b.backend_id, b.address) for b in state.backends["c"]] == [
        ("a", "127.0.0.1:9000"),
        ("b", "127.0.0.1:9000"),
        ("d", "127.0.0.1:9001"),
    ]


def test_a_backend_id_names_one_address_of_its_cluster() -> None:
    """Workers key a backend's health, back-off, load and metrics by its id, and refuse a
    cluster where one id names two addresses: a state holding such a pair had every worker
    refuse it, and the supervisor replace its workers again and again."""
    state = ConfigState()
    state.apply(rq.AddBackend(backend=backend()))
    error = refused(state, rq.AddBackend(backend=backend(address="127.0.0.1:9001")), AlreadyExists)
    assert "already has backend 'b' at 127.0.0.1:9000" in str(error)
    # The same id in another cluster, or another id at the same address, is fine.
    other = Backend(cluster_id="d", backend_id="b", address="127.0.0.1:9001")
    assert state.apply(rq.AddBackend(backend=other)) == "changed"
    assert state.apply(rq.AddBackend(backend=backend("a"))) == "changed"
    # Moved: removed, then added at its new address.
    state.apply(rq.RemoveBackend(cluster_id="c", backend_id="b", address="127.0.0.1:9000"))
    assert state.apply(rq.AddBackend(backend=backend(address="127.0.0.1:9001"))) == "changed"
    state.check_invariants()


def test_remove_backend_errors() -> None:
    state = ConfigState()
    state.apply(rq.AddBackend(backend=backend()))
    refused(
        state,
        rq.RemoveBackend(cluster_id="nope", backend_id="b", address="127.0.0.1:9000"),
        NotFound,
    )
    refused(
        state, rq.RemoveBackend(cluster_id="c", backend_id="x", address="127.0.0.1:9000"), NoChange
    )
    refused(
        state, rq.RemoveBackend(cluster_id="c", backend_id="b", address="127.0.0.1:9999"), NoChange
    )
    request = rq.RemoveBackend(cluster_id="c", backend_id="b", address="127.0.0.1:9000")
    assert state.apply(request) == "changed"
    assert state.backends == {}


# -- certificates --------------------------------------------------------------------------------


def test_add_certificate_fills_names_and_skips_duplicates() -> None:
    cert = certificate("example.com", "*.example.com")
    state = ConfigState()
    request = rq.AddCertificate(address=HTTPS, certificate=cert.as_request_payload())
    assert state.apply(request) == "changed"
    stored = state.certificates[HTTPS][cert.fingerprint]
    assert stored.certificate.names == ("example.com", "*.example.com")
    assert state.apply(request) == "unchanged"
    assert len(state.certificates[HTTPS]) == 1


def test_add_certificate_keeps_given_names() -> None:
    cert = certificate("example.com")
    payload = msgspec.structs.replace(cert.as_request_payload(), names=("override.test",))
    state = ConfigState()
    state.apply(rq.AddCertificate(address=HTTPS, certificate=payload))
    assert state.certificates[HTTPS][cert.fingerprint].certificate.names == ("override.test",)


def test_add_bad_certificate_or_key_is_invalid() -> None:
    cert = certificate("example.com")
    bad_pem = msgspec.structs.replace(cert.as_request_payload(), certificate="not a pem")
    refused(ConfigState(), rq.AddCertificate(address=HTTPS, certificate=bad_pem), InvalidValue)
    bad_key = msgspec.structs.replace(cert.as_request_payload(), key=cert.cert_pem)
    refused(ConfigState(), rq.AddCertificate(address=HTTPS, certificate=bad_key), InvalidValue)


def test_remove_certificate_rules() -> None:
    cert = certificate("example.com")
    state = ConfigState()
    state.apply(rq.AddCertificate(address=HTTPS, certificate=cert.as_request_payload()))
    # unknown hex fingerprint: Ok, nothing to do
    assert state.apply(rq.RemoveCertificate(address=HTTPS, fingerprint="ab" * 32)) == "unchanged"
    refused(state, rq.RemoveCertificate(address=HTTPS, fingerprint="xyz"), InvalidValue)
    upper = cert.fingerprint.upper()
    assert state.apply(rq.RemoveCertificate(address=HTTPS, fingerprint=upper)) == "changed"
    assert state.certificates == {}


def test_replace_certificate_rules() -> None:
    old, new = certificate("example.com"), certificate("api.example.net")
    state = ConfigState()
    replace = rq.ReplaceCertificate(
        address=HTTPS, new_certificate=new.as_request_payload(), old_fingerprint=old.fingerprint
    )
    refused(state, replace, NotFound)
    state.apply(rq.AddCertificate(address=HTTPS, certificate=old.as_request_payload()))
    assert state.apply(replace) == "changed"
    assert list(state.certificates[HTTPS]) == [new.fingerprint]
    # the old one is gone already: the new one is simply (re)inserted
    assert state.apply(replace) == "unchanged"


# -- health checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "needle"),
    [
        (HealthCheckConfig(uri="health"), "uri"),
        (HealthCheckConfig(uri="/h\r\nx"), "control"),
        (HealthCheckConfig(uri="/h\x00"), "control"),
        (HealthCheckConfig(uri="/h", interval=0), "interval"),
        (HealthCheckConfig(uri="/h", timeout=0), "timeout"),
        (HealthCheckConfig(uri="/h", healthy_threshold=0), "healthy_threshold"),
        (HealthCheckConfig(uri="/h", unhealthy_threshold=0), "unhealthy_threshold"),
    ],
)
def test_set_invalid_health_check(check: HealthCheckConfig, needle: str) -> None:
    state = ConfigState()
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="c")))
    error = refused(state, rq.SetHealthCheck(cluster_id="c", health_check=check), InvalidValue)
    assert needle in error.message


def test_health_check_set_remove_and_unknown_cluster() -> None:
    state = ConfigState()
    check = HealthCheckConfig(uri="/health")
    refused(state, rq.SetHealthCheck(cluster_id="c", health_check=check), NotFound)
    refused(state, rq.RemoveHealthCheck(cluster_id="c"), NotFound)
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="c")))
    assert state.apply(rq.SetHealthCheck(cluster_id="c", health_check=check)) == "changed"
    assert state.clusters["c"].health_check == check
    assert state.apply(rq.RemoveHealthCheck(cluster_id="c")) == "changed"
    assert state.clusters["c"].health_check is None
    assert state.apply(rq.RemoveHealthCheck(cluster_id="c")) == "unchanged"


# -- runtime, query and main-only verbs ----------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        rq.Logging(filter="debug"),
        rq.ConfigureMetrics(config="ENABLED"),
        rq.QueryClusterById(cluster_id="c"),
        rq.QueryClustersHashes(),
        rq.QueryMetrics(),
        rq.QueryCertificatesFromWorkers(),
        rq.SetMaxConnectionsPerIp(limit=3),
        rq.ReturnListenSockets(),
    ],
)
def test_runtime_verbs_are_noop_ok(request_: rq.Request) -> None:
    state = with_listeners()
    before = state.hash()
    assert state.apply(request_) == "unchanged"
    assert state.hash() == before


@pytest.mark.parametrize(
    "request_",
    [
        rq.SaveState(path="/tmp/x"),
        rq.LoadState(path="/tmp/x"),
        rq.ListWorkers(),
        rq.ListFrontends(),
        rq.ListListeners(),
        rq.UpgradeMain(),
        rq.UpgradeWorker(worker_id=1),
        rq.SubscribeEvents(),
        rq.ReloadConfiguration(),
        rq.QueryCertificatesFromTheState(),
        rq.QueryHealthChecks(),
        rq.CountRequests(),
        rq.Status(),
        rq.SoftStop(),
        rq.HardStop(),
    ],
)
def test_main_only_verbs_are_undispatchable(request_: rq.Request) -> None:
    refused(with_listeners(), request_, Undispatchable)


# -- request counts ------------------------------------------------------------------------------


def test_request_counts_start_at_one_and_count_failures() -> None:
    state = ConfigState()
    for index in range(3):
        state.apply(rq.AddCluster(cluster=Cluster(cluster_id=f"c{index}")))
    assert state.request_counts["AddCluster"] == 3
    with pytest.raises(NotFound):
        state.apply(rq.RemoveCluster(cluster_id="nope"))
    assert state.request_counts["RemoveCluster"] == 1


def test_udp_cluster_options_are_kept() -> None:
    state = ConfigState()
    udp = UdpClusterConfig(affinity_key="SOURCE_IP_PORT", responses=1, send_proxy_protocol=True)
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="dns", load_balancing="MAGLEV", udp=udp)))
    assert state.clusters["dns"].udp == udp


def test_address_spellings_are_one_key() -> None:
    state = ConfigState()
    state.apply(rq.AddTcpListener(listener=TcpListenerConfig(address="127.0.0.1:01234")))
    assert TCP in state.tcp_listeners
    refused(state, rq.AddTcpListener(listener=TcpListenerConfig(address=TCP)), AlreadyExists)
    state.apply(rq.AddUdpListener(listener=UdpListenerConfig(address="[0:0::1]:53")))
    assert "[::1]:53" in state.udp_listeners
