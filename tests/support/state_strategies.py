"""Hypothesis strategies for routing states and requests.

States are drawn as lists of requests over small shared pools of ids and addresses, so two
independently drawn states overlap often enough for `diff` to see changed objects, not only
added and removed ones. Each listener protocol gets its own address range.
"""

from __future__ import annotations

import msgspec
from hypothesis import strategies as st
from support.certs import pool

from sozu.command import requests as rq
from sozu.command.state import ConfigState
from sozu.command.types import (
    LOAD_BALANCING_ALGORITHMS,
    Backend,
    Cluster,
    Header,
    HealthCheckConfig,
    HttpListenerConfig,
    HttpsListenerConfig,
    ListenerConfig,
    ListenerType,
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

CLUSTER_IDS = ("app", "api", "dns", "db", "static")
small_text = st.text(alphabet="abcdefghij", min_size=1, max_size=4)
timeouts = st.integers(min_value=1, max_value=120)


def _address(prefix: str) -> st.SearchStrategy[str]:
    return st.builds(
        lambda host, port: f"127.0.{prefix}.{host}:{port}",
        st.integers(1, 3),
        st.sampled_from([80, 443, 8080]),
    )


http_addresses = _address("1")
https_addresses = _address("2")
tcp_addresses = _address("3")
udp_addresses = _address("4")
backend_addresses = st.one_of(
    _address("9"), st.sampled_from(["[::1]:9000", "[::1]:9001", "[fe80::1]:53"])
)
answers = st.dictionaries(st.sampled_from(["404", "503", "301"]), small_text, max_size=2)


http_listeners = st.builds(
    HttpListenerConfig,
    address=http_addresses,
    front_timeout=timeouts,
    sticky_name=st.sampled_from(["SOZUBALANCEID", "sticky"]),
    answers=answers,
    expect_proxy=st.booleans(),
    active=st.booleans(),
)
https_listeners = st.builds(
    HttpsListenerConfig,
    address=https_addresses,
    back_timeout=timeouts,
    alpn_protocols=st.sampled_from([("h2", "http/1.1"), ("http/1.1",)]),
    strict_sni_binding=st.booleans(),
    h2_max_concurrent_streams=st.none() | st.integers(1, 500),
    active=st.booleans(),
)
tcp_listeners = st.builds(
    TcpListenerConfig,
    address=tcp_addresses,
    connect_timeout=timeouts,
    expect_proxy=st.booleans(),
    active=st.booleans(),
)
udp_listeners = st.builds(
    UdpListenerConfig,
    address=udp_addresses,
    front_timeout=timeouts,
    max_rx_datagram_size=st.integers(512, 9000),
    max_flows=st.integers(0, 1000),
    active=st.booleans(),
)

udp_health = st.builds(
    UdpHealthConfig,
    mode=st.sampled_from(["HEALTH_OFF", "TCP_PROBE", "UDP_PROBE"]),
    rise=st.integers(1, 5),
    fall=st.integers(1, 5),
    fail_open=st.booleans(),
    udp_probe_payload=st.none() | small_text,
)
udp_options = st.builds(
    UdpClusterConfig,
    affinity_key=st.sampled_from(["SOURCE_IP", "SOURCE_IP_PORT"]),
    responses=st.integers(0, 3),
    requests=st.integers(0, 3),
    send_proxy_protocol=st.booleans(),
    proxy_protocol_every_datagram=st.booleans(),
    health=st.none() | udp_health,
)
health_checks = st.builds(
    HealthCheckConfig,
    uri=st.sampled_from(["/", "/health", "/status"]),
    interval=st.integers(1, 30),
    healthy_threshold=st.integers(1, 5),
)
clusters = st.builds(
    Cluster,
    cluster_id=st.sampled_from(CLUSTER_IDS),
    sticky_session=st.booleans(),
    load_balancing=st.none() | st.sampled_from(LOAD_BALANCING_ALGORITHMS),
    answers=answers,
    health_check=st.none() | health_checks,
    udp=st.none() | udp_options,
)
backends = st.builds(
    Backend,
    cluster_id=st.sampled_from((*CLUSTER_IDS, "orphan")),
    backend_id=st.sampled_from(["b0", "b1", "b2"]),
    address=backend_addresses,
    sticky_id=st.none() | small_text,
    load_balancing_parameters=st.none()
    | st.builds(LoadBalancingParams, weight=st.integers(0, 255)),
    backup=st.none() | st.booleans(),
)


def _http_fronts(addresses: st.SearchStrategy[str]) -> st.SearchStrategy[RequestHttpFrontend]:
    return st.builds(
        RequestHttpFrontend,
        address=addresses,
        hostname=st.sampled_from(["example.com", "*.example.com", "api.example.net"]),
        cluster_id=st.none() | st.sampled_from(CLUSTER_IDS),
        path=st.builds(
            PathRule,
            kind=st.sampled_from(["PREFIX", "REGEX", "EQUALS"]),
            value=st.sampled_from(["", "/", "/api", "^/v[0-9]+"]),
        ),
        method=st.none() | st.sampled_from(["GET", "POST"]),
        position=st.sampled_from(["PRE", "POST", "TREE"]),
        tags=st.dictionaries(small_text, small_text, max_size=1),
        headers=st.lists(
            st.builds(
                Header,
                position=st.sampled_from(["REQUEST", "RESPONSE", "BOTH"]),
                key=small_text,
                val=small_text,
            ),
            max_size=1,
        ).map(tuple),
    )


tags = st.dictionaries(st.sampled_from(["env", "team"]), small_text, max_size=1)
tcp_fronts = st.builds(
    RequestTcpFrontend, cluster_id=st.sampled_from(CLUSTER_IDS), address=tcp_addresses, tags=tags
)
udp_fronts = st.builds(
    RequestUdpFrontend, cluster_id=st.sampled_from(CLUSTER_IDS), address=udp_addresses, tags=tags
)


@st.composite
def certificate_requests(draw: st.DrawFn) -> rq.AddCertificate:
    cert = draw(st.sampled_from(pool()))
    return rq.AddCertificate(
        address=draw(https_addresses),
        certificate=cert.as_request_payload(),
        expired_at=draw(st.none() | st.integers(0, 2**40)),
    )


def _listener_requests(listener: ListenerConfig) -> list[rq.Request]:
    add: rq.Request
    proxy: ListenerType
    if isinstance(listener, HttpsListenerConfig):
        add, proxy = rq.AddHttpsListener(listener=listener), "HTTPS"
    elif isinstance(listener, HttpListenerConfig):
        add, proxy = rq.AddHttpListener(listener=listener), "HTTP"
    elif isinstance(listener, TcpListenerConfig):
        add, proxy = rq.AddTcpListener(listener=listener), "TCP"
    else:
        assert isinstance(listener, UdpListenerConfig)
        add, proxy = rq.AddUdpListener(listener=listener), "UDP"
    out: list[rq.Request] = [add]
    if listener.active:
        out.append(rq.ActivateListener(address=listener.address, proxy=proxy))
    return out


@st.composite
def state_requests(draw: st.DrawFn) -> list[rq.Request]:
    """Requests building a state of at least 20 objects with every listener type."""
    out: list[rq.Request] = []
    listener_strategies: tuple[st.SearchStrategy[ListenerConfig], ...] = (
        http_listeners,
        https_listeners,
        tcp_listeners,
        udp_listeners,
    )
    for strategy in listener_strategies:
        for listener in draw(st.lists(strategy, min_size=1, max_size=3, unique_by=_address_of)):
            out.extend(_listener_requests(listener))
    out.extend(
        rq.AddCluster(cluster=c)
        for c in draw(st.lists(clusters, min_size=3, max_size=5, unique_by=_id_of))
    )
    out.extend(
        rq.AddBackend(backend=b)
        for b in draw(st.lists(backends, min_size=5, max_size=10, unique_by=_backend_identity))
    )
    out.extend(
        rq.AddHttpFrontend(frontend=f)
        for f in draw(
            st.lists(_http_fronts(http_addresses), min_size=3, max_size=6, unique_by=_route)
        )
    )
    out.extend(
        rq.AddHttpsFrontend(frontend=f)
        for f in draw(
            st.lists(_http_fronts(https_addresses), min_size=2, max_size=4, unique_by=_route)
        )
    )
    out.extend(
        rq.AddTcpFrontend(frontend=f)
        for f in draw(st.lists(tcp_fronts, min_size=1, max_size=3, unique_by=_encoded))
    )
    out.extend(
        rq.AddUdpFrontend(frontend=f)
        for f in draw(st.lists(udp_fronts, min_size=1, max_size=3, unique_by=_encoded))
    )
    out.extend(draw(st.lists(certificate_requests(), min_size=1, max_size=3)))
    return out


def _address_of(listener: object) -> str:
    return listener.address  # type: ignore[attr-defined,no-any-return]


def _id_of(cluster: Cluster) -> str:
    return cluster.cluster_id


def _backend_identity(backend: Backend) -> tuple[str, str]:
    """A backend id names one backend (one address) of its cluster."""
    return backend.cluster_id, backend.backend_id


def _route(frontend: RequestHttpFrontend) -> str:
    return frontend.route_key()


def _encoded(frontend: msgspec.Struct) -> bytes:
    return msgspec.msgpack.encode(frontend)


def build_state(requests: list[rq.Request]) -> ConfigState:
    state = ConfigState()
    for request in requests:
        state.apply(request)
    return state


states = state_requests().map(build_state)


def object_count(state: ConfigState) -> int:
    return sum(state.counts().values())
