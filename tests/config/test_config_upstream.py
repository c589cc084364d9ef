"""A configuration written for upstream Sōzu 2.1.0 loads, with one warning per key we do not
implement."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sozu.command.config import UNIMPLEMENTED_KEYS, ConfigSummary, load_config
from sozu.command.config_schema import (
    BackendSection,
    ClusterSection,
    Config,
    FrontendSection,
    ListenerSection,
    MetricsSection,
)
from sozu.command.requests import AddCluster, AddHttpListener
from sozu.command.types import (
    H2_KNOB_NAMES,
    HealthCheckConfig,
    HstsConfig,
    UdpClusterConfig,
    UdpHealthConfig,
)

UPSTREAM = """
# sozu proxy configuration, upstream 2.1.0 style

command_socket = "./command_folder/sock"
command_buffer_size = 16384
max_command_buffer_size = 163840
saved_state = "./state.json"
automatic_state_save = false
log_level = "info"
log_target = "stdout"
log_colored = true
access_logs_target = "file:///var/log/sozu-access.log"
access_logs_format = "ascii"
audit_logs_target = "stdout"
worker_count = 2
worker_automatic_restart = true
handle_process_affinity = false
max_connections = 500
max_buffers = 500
buffer_size = 16393
ctl_command_timeout = 1000
pid_file_path = "/run/sozu/sozu.pid"
front_timeout = 60
zombie_check_interval = 1800
accept_queue_timeout = 60
activate_listeners = true

[metrics]
address = "127.0.0.1:8125"
tagged_metrics = false
prefix = "sozu"

[[listeners]]
protocol = "http"
address = "0.0.0.0:8080"
answer_404 = "assets/404.html"
sticky_name = "SOZUBALANCEID"
expect_proxy = false

[[listeners]]
protocol = "https"
address = "0.0.0.0:8443"
tls_versions = ["TLS_V12", "TLS_V13"]
cipher_list = ["TLS13_AES_256_GCM_SHA384", "TLS13_AES_128_GCM_SHA256"]
alpn_protocols = ["h2", "http/1.1"]
certificate = "tls/listener.pem"
key = "tls/listener.key"

[[listeners]]
protocol = "tcp"
address = "0.0.0.0:8081"

[clusters]

[clusters.MyCluster]
protocol = "http"
load_balancing = "ROUND_ROBIN"
https_redirect = true
answer_503 = "assets/503.html"
backends = [
  { address = "127.0.0.1:1026", backend_id = "the-backend-to-my-app" },
]

[[clusters.MyCluster.frontends]]
address = "0.0.0.0:8080"
hostname = "lolcatho.st"

[[clusters.MyCluster.frontends]]
address = "0.0.0.0:8443"
hostname = "lolcatho.st"
certificate = "tls/example.pem"
key = "tls/example.key"
certificate_chain = "tls/chain.pem"

[clusters.TcpTest]
protocol = "tcp"
send_proxy = false
load_balancing = "RANDOM"
frontends = [{ address = "0.0.0.0:8081" }]
backends = [
  { address = "127.0.0.1:4000", weight = 100 },
  { address = "127.0.0.1:4001", weight = 50 },
]
"""


def test_upstream_file_loads_with_one_warning_per_unimplemented_key(
    tmp_path: Path, tls_files: dict[str, str], write_config: Callable[[str], Path]
) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "404.html").write_text("not here")
    (tmp_path / "assets" / "503.html").write_text("busy")
    loaded = load_config(write_config(UPSTREAM))

    assert loaded.warnings == tuple(
        f"warning: {key} is not implemented and is ignored"
        for key in (
            "command_buffer_size",
            "log_colored",
            "access_logs_format",
            "audit_logs_target",
            "handle_process_affinity",
            "zombie_check_interval",
            "accept_queue_timeout",
        )
    )
    assert ConfigSummary.of(loaded).describe() == (
        "3 listeners, 2 clusters, 3 frontends, 3 backends, 2 certificates"
    )
    config = loaded.config
    assert config.metrics.address == "127.0.0.1:8125"  # statsd export
    assert (config.metrics.tagged_metrics, config.metrics.prefix) == (False, "sozu")
    assert config.command_socket == str(tmp_path / "command_folder" / "sock")
    assert config.max_command_buffer_size == 163840
    (http,) = [r.listener for r in loaded.requests if isinstance(r, AddHttpListener)]
    assert http.answers == {"404": "not here"}
    clusters = {
        r.cluster.cluster_id: r.cluster for r in loaded.requests if isinstance(r, AddCluster)
    }
    assert clusters["MyCluster"].answers == {"503": "busy"}
    assert clusters["MyCluster"].https_redirect
    assert clusters["TcpTest"].load_balancing == "RANDOM"


def test_every_upstream_key_is_either_implemented_or_listed() -> None:
    """The schema plus UNIMPLEMENTED_KEYS cover every key of upstream 2.1.0's configuration
    (listed below, and in docs/configuration.md), and nothing else."""
    top_level = {
        "command_socket", "command_buffer_size", "max_command_buffer_size", "max_connections",
        "min_buffers", "max_buffers", "buffer_size", "slab_entries_per_connection",
        "basic_auth_max_credential_bytes", "max_connections_per_ip", "retry_after",
        "splice_pipe_capacity_bytes", "command_allowed_uids", "saved_state",
        "automatic_state_save", "log_level", "log_target", "log_colored", "audit_logs_target",
        "audit_logs_json_target", "access_logs_target", "access_logs_format",
        "access_logs_colored", "worker_count", "worker_automatic_restart", "metrics",
        "disable_cluster_metrics", "listeners", "clusters", "handle_process_affinity",
        "ctl_command_timeout", "pid_file_path", "activate_listeners", "front_timeout",
        "back_timeout", "connect_timeout", "zombie_check_interval", "accept_queue_timeout",
        "evict_on_queue_full", "request_timeout", "worker_timeout",
    }  # fmt: skip
    ours = {"drain_timeout", "worker_max_restarts_per_minute", "debug", "etcd"}
    listed = {key for key in UNIMPLEMENTED_KEYS if "." not in key}
    assert set(Config.__struct_fields__) | listed == top_level | ours
    assert not set(Config.__struct_fields__) & listed
    metrics = {f"metrics.{key}" for key in MetricsSection.__struct_fields__}
    assert metrics | {k for k in UNIMPLEMENTED_KEYS if k.startswith("metrics.")} == {
        "metrics.address",
        "metrics.tagged_metrics",
        "metrics.prefix",
        "metrics.detail",
        "metrics.prometheus_address",
    }
    listener = {
        "address", "protocol", "public_address", "answers", "tls_versions", "cipher_list",
        "cipher_suites", "groups_list", "expect_proxy", "sticky_name", "certificate",
        "certificate_chain", "key", "front_timeout", "back_timeout", "connect_timeout",
        "request_timeout", "send_tls13_tickets", "alpn_protocols", "sozu_id_header",
        "strict_sni_binding", "disable_http11", "elide_x_real_ip", "send_x_real_ip", "hsts",
        "max_rx_datagram_size", "max_flows",
        *(f"answer_{code}" for code in (301, 400, 401, 404, 408, 413, 421, 429, 502, 503, 504)),
        "answer_507", *H2_KNOB_NAMES,
    }  # fmt: skip
    assert set(ListenerSection.__struct_fields__) == listener
    assert len(H2_KNOB_NAMES) == 18
    cluster = {
        "protocol", "frontends", "backends", "sticky_session", "https_redirect",
        "https_redirect_port", "send_proxy", "load_balancing", "load_metric", "answer_503",
        "answers", "http2", "authorized_hashes", "www_authenticate", "max_connections_per_ip",
        "retry_after", "health_check", "udp",
    }  # fmt: skip
    assert set(ClusterSection.__struct_fields__) == cluster
    frontend = {
        "address", "hostname", "path", "path_type", "method", "certificate", "key",
        "certificate_chain", "tls_versions", "position", "tags", "redirect", "redirect_scheme",
        "redirect_template", "rewrite_host", "rewrite_path", "rewrite_port", "required_auth",
        "headers", "hsts",
    }  # fmt: skip
    assert set(FrontendSection.__struct_fields__) == frontend
    assert set(BackendSection.__struct_fields__) == {
        "address",
        "weight",
        "sticky_id",
        "backup",
        "backend_id",
    }
    assert set(HealthCheckConfig.__struct_fields__) == {
        "uri",
        "interval",
        "timeout",
        "healthy_threshold",
        "unhealthy_threshold",
        "expected_status",
    }
    assert set(UdpClusterConfig.__struct_fields__) == {
        "affinity_key",
        "responses",
        "requests",
        "send_proxy_protocol",
        "proxy_protocol_every_datagram",
        "health",
    }
    assert set(UdpHealthConfig.__struct_fields__) == {
        "mode",
        "tcp_port",
        "rise",
        "fall",
        "fail_open",
        "udp_probe_payload",
        "probe_interval_seconds",
        "probe_timeout_seconds",
    }
    assert set(HstsConfig.__struct_fields__) == {
        "enabled",
        "max_age",
        "include_subdomains",
        "preload",
        "force_replace_backend",
    }
