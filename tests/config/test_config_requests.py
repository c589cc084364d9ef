"""A valid configuration of every listener protocol and cluster kind, and the exact requests
it produces."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sozu.command.config import ConfigSummary, load_config, parse_config
from sozu.command.requests import (
    ActivateListener,
    AddBackend,
    AddCertificate,
    AddCluster,
    AddHttpFrontend,
    AddHttpListener,
    AddHttpsFrontend,
    AddHttpsListener,
    AddTcpFrontend,
    AddTcpListener,
    AddUdpFrontend,
    AddUdpListener,
    ConfigureMetrics,
    Request,
    SetMaxConnectionsPerIp,
)
from sozu.command.types import (
    Backend,
    CertificateAndKey,
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

WriteConfig = Callable[[str], Path]

FULL = """
worker_count = 1
saved_state = "state/sozu.state"
automatic_state_save = true
disable_cluster_metrics = true
front_timeout = 50

[[listeners]]
protocol = "http"
address = "127.0.0.1:18080"
answers = { "503" = "file://answers/503.html", "404" = "gone" }
answer_400 = "answers/400.html"

[[listeners]]
protocol = "https"
address = "127.0.0.1:18443"
certificate = "tls/listener.pem"
key = "tls/listener.key"
certificate_chain = "tls/chain.pem"
tls_versions = ["TLS_V12", "TLS_V13"]
alpn_protocols = ["h2", "http/1.1"]
hsts = { enabled = true, max_age = 3600 }

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:15432"
expect_proxy = true

[[listeners]]
protocol = "udp"
address = "127.0.0.1:15353"
front_timeout = 10
max_flows = 100

[clusters.web]
protocol = "http"
load_balancing = "LEAST_LOADED"
sticky_session = true
health_check = { uri = "/health", interval = 5 }
[[clusters.web.frontends]]
address = "127.0.0.1:18080"
hostname = "Example.com"
path = "/api"
redirect = "permanent"
redirect_scheme = "use-https"
headers = [{ position = "request", key = "X-Env", value = "test" }]

[[clusters.web.frontends]]
address = "127.0.0.1:18443"
hostname = "example.com"
certificate = "tls/example.pem"
key = "tls/example.key"
certificate_chain = "tls/chain.pem"
tls_versions = ["TLS_V13"]

[[clusters.web.frontends]]
address = "127.0.0.1:18443"
hostname = "www.example.com"
path = "^/v[0-9]+/"
path_type = "REGEX"
certificate = "tls/example.pem"
key = "tls/example.key"

[[clusters.web.frontends]]
address = "127.0.0.1:18443"
hostname = "default.example"
method = "GET"
position = "PRE"

[[clusters.web.backends]]
address = "127.0.0.1:19000"
weight = 10

[[clusters.web.backends]]
address = "127.0.0.1:19001"
backend_id = "b1"
sticky_id = "s1"
backup = true

[clusters.db]
protocol = "tcp"
send_proxy = true
frontends = [{ address = "127.0.0.1:15432", tags = { team = "data" } }]
backends = [{ address = "127.0.0.1:5432" }]

[clusters.dns]
protocol = "tcp"
load_balancing = "MAGLEV"
frontends = [{ address = "127.0.0.1:15353" }]
backends = [{ address = "127.0.0.1:5353" }, { address = "[0:0::1]:5353" }]

[clusters.dns.udp]
affinity_key = "SOURCE_IP_PORT"
responses = 1

[clusters.dns.udp.health]
mode = "UDP_PROBE"
udp_probe_payload = "ping"
rise = 1
"""


def test_every_protocol_and_cluster_kind(
    tmp_path: Path, tls_files: dict[str, str], write_config: WriteConfig
) -> None:
    (tmp_path / "answers").mkdir()
    (tmp_path / "answers" / "503.html").write_text("<h1>busy</h1>")
    (tmp_path / "answers" / "400.html").write_text("<h1>bad</h1>")
    loaded = load_config(write_config(FULL))

    assert loaded.warnings == ()
    http, https, tcp, udp = (
        "127.0.0.1:18080",
        "127.0.0.1:18443",
        "127.0.0.1:15432",
        "127.0.0.1:15353",
    )
    leaf = CertificateAndKey(
        certificate=tls_files["example.pem"],
        key=tls_files["example.key"],
        certificate_chain=(tls_files["chain.pem"],),
        versions=("TLS_V1_3",),
    )

    def web_frontend(address: str, hostname: str, **fields: Any) -> RequestHttpFrontend:
        return RequestHttpFrontend(address=address, hostname=hostname, cluster_id="web", **fields)

    expected: list[Request] = [
        AddHttpListener(
            listener=HttpListenerConfig(
                address=http,
                front_timeout=50,
                answers={"503": "<h1>busy</h1>", "404": "gone", "400": "<h1>bad</h1>"},
            )
        ),
        AddHttpsListener(
            listener=HttpsListenerConfig(
                address=https,
                front_timeout=50,
                certificate=tls_files["listener.pem"],
                key=tls_files["listener.key"],
                certificate_chain=(tls_files["chain.pem"],),
                versions=("TLS_V1_2", "TLS_V1_3"),
                alpn_protocols=("h2", "http/1.1"),
                hsts=HstsConfig(enabled=True, max_age=3600),
            )
        ),
        AddTcpListener(
            listener=TcpListenerConfig(address=tcp, expect_proxy=True, front_timeout=50)
        ),
        AddUdpListener(listener=UdpListenerConfig(address=udp, front_timeout=10, max_flows=100)),
        # Clusters in id order: db, dns, web.
        AddCluster(cluster=Cluster(cluster_id="db", proxy_protocol="RELAY_HEADER")),
        AddTcpFrontend(
            frontend=RequestTcpFrontend(cluster_id="db", address=tcp, tags={"team": "data"})
        ),
        AddBackend(
            backend=Backend(
                cluster_id="db", backend_id="db-0-127.0.0.1:5432", address="127.0.0.1:5432"
            )
        ),
        AddCluster(
            cluster=Cluster(
                cluster_id="dns",
                load_balancing="MAGLEV",
                udp=UdpClusterConfig(
                    affinity_key="SOURCE_IP_PORT",
                    responses=1,
                    health=UdpHealthConfig(mode="UDP_PROBE", udp_probe_payload="ping", rise=1),
                ),
            )
        ),
        AddUdpFrontend(frontend=RequestUdpFrontend(cluster_id="dns", address=udp)),
        AddBackend(
            backend=Backend(
                cluster_id="dns", backend_id="dns-0-127.0.0.1:5353", address="127.0.0.1:5353"
            )
        ),
        AddBackend(
            backend=Backend(cluster_id="dns", backend_id="dns-1-[::1]:5353", address="[::1]:5353")
        ),
        AddCluster(
            cluster=Cluster(
                cluster_id="web",
                load_balancing="LEAST_LOADED",
                sticky_session=True,
                health_check=HealthCheckConfig(uri="/health", interval=5),
            )
        ),
        AddHttpFrontend(
            frontend=web_frontend(
                http,
                "example.com",
                path=PathRule(kind="PREFIX", value="/api"),
                redirect="PERMANENT",
                redirect_scheme="USE_HTTPS",
                headers=(Header(position="REQUEST", key="X-Env", val="test"),),
            )
        ),
        AddCertificate(address=https, certificate=leaf),
        AddHttpsFrontend(frontend=web_frontend(https, "example.com")),
        # Same certificate on the same listener: added once.
        AddHttpsFrontend(
            frontend=web_frontend(
                https, "www.example.com", path=PathRule(kind="REGEX", value="^/v[0-9]+/")
            )
        ),
        # No certificate: served with the listener's.
        AddHttpsFrontend(
            frontend=web_frontend(https, "default.example", method="GET", position="PRE")
        ),
        AddBackend(
            backend=Backend(
                cluster_id="web",
                backend_id="web-0-127.0.0.1:19000",
                address="127.0.0.1:19000",
                load_balancing_parameters=LoadBalancingParams(weight=10),
            )
        ),
        AddBackend(
            backend=Backend(
                cluster_id="web",
                backend_id="b1",
                address="127.0.0.1:19001",
                sticky_id="s1",
                backup=True,
            )
        ),
        ActivateListener(address=http, proxy="HTTP"),
        ActivateListener(address=https, proxy="HTTPS"),
        ActivateListener(address=tcp, proxy="TCP"),
        ActivateListener(address=udp, proxy="UDP"),
        ConfigureMetrics(config="DISABLED"),
    ]
    assert list(loaded.requests) == expected
    for request in loaded.requests:
        if isinstance(request, (AddHttpListener, AddTcpListener, AddUdpListener)):
            assert request.listener.active is False

    config = loaded.config
    assert config.saved_state == str(tmp_path / "state" / "sozu.state")
    assert config.command_socket == str(tmp_path / "sozu.sock")
    assert config.worker_count == 1
    summary = ConfigSummary.of(loaded)
    assert summary.describe() == (
        "4 listeners, 3 clusters, 6 frontends, 5 backends, 2 certificates"
    )


def test_defaults_of_an_almost_empty_file(write_config: WriteConfig, tmp_path: Path) -> None:
    loaded = load_config(write_config(""))
    config = loaded.config
    assert loaded.requests == ()
    assert loaded.warnings == ()
    assert (config.worker_count, config.max_connections, config.buffer_size) == (2, 10_000, 16_393)
    assert (config.front_timeout, config.back_timeout, config.connect_timeout) == (60, 30, 3)
    assert (config.request_timeout, config.worker_timeout, config.ctl_command_timeout) == (
        10,
        10,
        1000,
    )
    assert config.max_command_buffer_size == 2_000_000
    assert config.activate_listeners
    assert config.worker_automatic_restart
    assert not config.automatic_state_save
    assert config.saved_state is None
    assert (config.log_level, config.log_target) == ("info", "stdout")
    assert (config.drain_timeout, config.worker_max_restarts_per_minute, config.debug) == (
        60,
        5,
        False,
    )
    assert config.metrics.prometheus_address is None
    assert config.command_socket == str(tmp_path / "sozu.sock")


def test_listeners_not_activated_when_disabled(write_config: WriteConfig) -> None:
    loaded = load_config(
        write_config(
            """
activate_listeners = false
max_connections_per_ip = 5
[[listeners]]
protocol = "tcp"
address = "127.0.0.1:9000"
"""
        )
    )
    assert list(loaded.requests) == [
        AddTcpListener(listener=TcpListenerConfig(address="127.0.0.1:9000")),
        SetMaxConnectionsPerIp(limit=5),
    ]


def test_frontend_without_listener_gets_a_default_one(
    tls_files: dict[str, str], write_config: WriteConfig
) -> None:
    loaded = load_config(
        write_config(
            """
[clusters.secure]
protocol = "http"

[[clusters.secure.frontends]]
address = "127.0.0.1:8443"
hostname = "example.com"
certificate = "tls/example.pem"
key = "tls/example.key"

[[clusters.secure.frontends]]
address = "127.0.0.1:8080"
hostname = "example.com"

[clusters.raw]
protocol = "tcp"
frontends = [{ address = "127.0.0.1:9000" }]
"""
        )
    )
    listeners = [r for r in loaded.requests if isinstance(r, ActivateListener)]
    assert [(r.proxy, r.address) for r in listeners] == [
        ("HTTP", "127.0.0.1:8080"),
        ("HTTPS", "127.0.0.1:8443"),
        ("TCP", "127.0.0.1:9000"),
    ]
    assert loaded.warnings == (
        "warning: clusters.raw.frontends[0].address: no listener at 127.0.0.1:9000; "
        "a default tcp listener is created",
        "warning: clusters.secure.frontends[0].address: no listener at 127.0.0.1:8443; "
        "a default https listener is created",
        "warning: clusters.secure.frontends[1].address: no listener at 127.0.0.1:8080; "
        "a default http listener is created",
    )


def test_tcp_cluster_on_an_address_with_tcp_and_udp_listeners(write_config: WriteConfig) -> None:
    loaded = load_config(
        write_config(
            """
[[listeners]]
protocol = "tcp"
address = "127.0.0.1:5300"
[[listeners]]
protocol = "udp"
address = "127.0.0.1:5300"
[clusters.dns]
protocol = "tcp"
frontends = [{ address = "127.0.0.1:5300" }]
"""
        )
    )
    assert [type(r).__name__ for r in loaded.requests] == [
        "AddTcpListener",
        "AddUdpListener",
        "AddCluster",
        "AddTcpFrontend",
        "AddUdpFrontend",
        "ActivateListener",
        "ActivateListener",
    ]


@pytest.mark.parametrize(
    ("send_proxy", "expect_proxy", "proxy_protocol"),
    [
        (False, False, None),
        (True, False, "SEND_HEADER"),
        (False, True, "EXPECT_HEADER"),
        (True, True, "RELAY_HEADER"),
    ],
)
def test_proxy_protocol_of_a_tcp_cluster(
    send_proxy: bool, expect_proxy: bool, proxy_protocol: str | None
) -> None:
    text = f"""
[[listeners]]
protocol = "tcp"
address = "127.0.0.1:9000"
expect_proxy = {str(expect_proxy).lower()}
[clusters.c]
protocol = "tcp"
send_proxy = {str(send_proxy).lower()}
frontends = [{{ address = "127.0.0.1:9000" }}]
"""
    loaded = parse_config(text, base_dir=Path("/nonexistent"))
    (cluster,) = [r.cluster for r in loaded.requests if isinstance(r, AddCluster)]
    assert cluster.proxy_protocol == proxy_protocol


def test_udp_datagram_size_is_clamped_to_buffer_size(write_config: WriteConfig) -> None:
    loaded = load_config(
        write_config(
            """
buffer_size = 1024
[[listeners]]
protocol = "udp"
address = "127.0.0.1:5300"
"""
        )
    )
    (add,) = [r for r in loaded.requests if isinstance(r, AddUdpListener)]
    assert add.listener.max_rx_datagram_size == 1024
    assert loaded.warnings == (
        "warning: listeners[0].max_rx_datagram_size: 1500 is clamped to buffer_size (1024)",
    )


def test_keys_of_another_protocol_are_ignored_with_a_warning(write_config: WriteConfig) -> None:
    loaded = load_config(
        write_config(
            """
[[listeners]]
protocol = "tcp"
address = "127.0.0.1:9000"
sticky_name = "X"
[[listeners]]
protocol = "udp"
address = "127.0.0.1:9000"
expect_proxy = false
[clusters.c]
protocol = "tcp"
frontends = [{ address = "127.0.0.1:9000", hostname = "example.com" }]
"""
        )
    )
    assert loaded.warnings == (
        "warning: listeners[0].sticky_name: does not apply to a tcp listener and is ignored",
        "warning: listeners[1].expect_proxy: does not apply to a udp listener and is ignored",
        "warning: clusters.c.frontends[0].hostname: does not apply to a tcp cluster's "
        "frontend and is ignored",
    )


def test_h2_keys_not_applied_yet_are_warned_about_by_name(write_config: WriteConfig) -> None:
    loaded = load_config(
        write_config(
            """
[[listeners]]
protocol = "https"
address = "127.0.0.1:9443"
h2_max_ping_per_window = 10
h2_max_glitch_count = 5
h2_stream_idle_timeout_seconds = 30
"""
        )
    )
    # The flood limits are applied; the others are accepted and said not to be.
    assert loaded.warnings == (
        "warning: listeners[0].h2_max_glitch_count: accepted and not applied yet",
        "warning: listeners[0].h2_stream_idle_timeout_seconds: accepted and not applied yet",
    )


def test_relative_paths_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "etc"
    directory.mkdir()
    (directory / "sozu.toml").write_text(
        'command_socket = "run/sozu.sock"\npid_file_path = "../sozu.pid"\n'
        'saved_state = "/var/lib/sozu/state"\n'
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/sozu.toml")).config
    assert config.command_socket == str(directory / "run" / "sozu.sock")
    assert config.pid_file_path == str(tmp_path / "sozu.pid")
    assert config.saved_state == "/var/lib/sozu/state"
