"""The configuration file's schema: frozen sections with upstream key names and defaults.

Key names follow upstream Sōzu 2.1.0 (docs/configuration.md). A key whose default depends
on the listener protocol or the cluster kind is `None` when unset; `config_requests` applies
the default. Values marked with a `ValueKind` are post-processed by the decoder: addresses are
canonicalised, paths made absolute against the file's directory, answer files read.
After loading, `listeners` also holds the default listeners created for frontends whose
address had none, and legacy `answer_NNN` keys are merged into `answers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from sozu.command.types import (
    U32,
    U64,
    HealthCheckConfig,
    HstsConfig,
    LoadBalancingAlgorithm,
    LoadMetric,
    PathRuleKind,
    Port,
    RulePosition,
    Seconds,
    TlsVersion,
    UdpClusterConfig,
)


@dataclass(frozen=True)
class ValueKind:
    """Annotated marker telling the decoder how to post-process a string value."""

    name: Literal["address", "listen_address", "path", "answer", "answer_file", "log_target"]


SocketAddress = Annotated[str, ValueKind("address")]
"""`ip:port`, canonicalised."""
ListenAddress = Annotated[str, ValueKind("listen_address")]
"""`ip:port` with a non-zero port, canonicalised."""
FilePath = Annotated[str, ValueKind("path")]
"""A path, made absolute against the configuration file's directory."""
AnswerText = Annotated[str, ValueKind("answer")]
"""An answer body: inline text, or `file://path` whose content is read at load."""
AnswerFile = Annotated[str, ValueKind("answer_file")]
"""A legacy answer key: a path whose content is read at load."""
LogTarget = Annotated[str, ValueKind("log_target")]
"""`stdout`, `stderr`, `file://PATH` (made absolute), `udp://` or `tcp://IP:PORT`,
`unix://PATH` (made absolute)."""

Positive = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Byte = Annotated[int, msgspec.Meta(ge=0, le=255)]
DatagramSize = Annotated[int, msgspec.Meta(ge=1, le=65535)]

ListenerProtocol = Literal["http", "https", "tcp", "udp"]
ClusterProtocol = Literal["http", "tcp"]
FileTlsVersion = Literal[
    "SSL_V2",
    "SSL_V3",
    "TLSv1",
    "TLS_V11",
    "TLS_V12",
    "TLS_V13",
    "TLS_V1_0",
    "TLS_V1_1",
    "TLS_V1_2",
    "TLS_V1_3",
]
FileRedirect = Literal["forward", "permanent", "found", "permanent_redirect", "unauthorized"]
FileRedirectScheme = Literal["use-same", "use-http", "use-https"]
FileHeaderPosition = Literal["request", "response", "both"]

TLS_VERSIONS: dict[FileTlsVersion, TlsVersion] = {
    "SSL_V2": "SSL_V2",
    "SSL_V3": "SSL_V3",
    "TLSv1": "TLS_V1_0",
    "TLS_V11": "TLS_V1_1",
    "TLS_V12": "TLS_V1_2",
    "TLS_V13": "TLS_V1_3",
    "TLS_V1_0": "TLS_V1_0",
    "TLS_V1_1": "TLS_V1_1",
    "TLS_V1_2": "TLS_V1_2",
    "TLS_V1_3": "TLS_V1_3",
}

MIN_H2_BUFFER_SIZE = 16393
ALPN_VALUES = ("h2", "http/1.1")
LEGACY_ANSWER_CODES = (301, 400, 401, 404, 408, 413, 421, 429, 502, 503, 504, 507)


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every table of the file."""


class MetricsSection(Section, frozen=True, kw_only=True):
    """`[metrics]`: the Prometheus endpoint, and upstream's statsd export (`address`)."""

    prometheus_address: SocketAddress | None = None
    address: SocketAddress | None = None  # statsd over UDP
    tagged_metrics: bool = False
    prefix: str = "sozu"
    detail: Literal["process", "frontend", "cluster", "backend"] = "cluster"


class EtcdSection(Section, frozen=True, kw_only=True):
    """`[etcd]` (ours): follow a fleet's desired state in etcd (see fleet_layout.py)."""

    # `http://host:port` or `https://host:port`, one per member of the cluster.
    endpoints: tuple[str, ...]
    prefix: str = "/sozu"
    # Unset: the host name.
    instance_id: str | None = None
    # PEM files: the CA that signed the members' certificates, and our client certificate.
    ca: FilePath | None = None
    certificate: FilePath | None = None
    key: FilePath | None = None
    user: str | None = None
    password: str | None = None
    # Seconds between connection attempts while etcd is unreachable (doubling up to the max).
    retry_min: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.2
    retry_max: Annotated[float, msgspec.Meta(gt=0, le=600)] = 5.0
    # Listener addresses of the desired state -> the ones this instance binds instead.
    address_map: dict[str, ListenAddress] = {}


class HeaderSection(Section, frozen=True, kw_only=True):
    """A header edit of an HTTP frontend; an empty value deletes the header."""

    position: FileHeaderPosition
    key: str
    value: str = ""


class FrontendSection(Section, frozen=True, kw_only=True):
    """A frontend of a cluster. Only `address` and `tags` apply to a tcp cluster's frontend."""

    address: ListenAddress
    tags: dict[str, str] = {}
    hostname: str | None = None
    path: str | None = None
    path_type: PathRuleKind | None = None
    method: str | None = None
    position: RulePosition | None = None
    certificate: FilePath | None = None
    key: FilePath | None = None
    certificate_chain: FilePath | None = None
    tls_versions: tuple[FileTlsVersion, ...] | None = None
    redirect: FileRedirect | None = None
    redirect_scheme: FileRedirectScheme | None = None
    redirect_template: str | None = None
    rewrite_host: str | None = None
    rewrite_path: str | None = None
    rewrite_port: Port | None = None
    required_auth: bool | None = None
    headers: tuple[HeaderSection, ...] = ()
    hsts: HstsConfig | None = None


class BackendSection(Section, frozen=True, kw_only=True):
    """A backend of a cluster; `backend_id` defaults to `<cluster>-<index>-<address>`."""

    address: ListenAddress
    weight: Byte | None = None
    sticky_id: str | None = None
    backup: bool | None = None
    backend_id: str | None = None


class ClusterSection(Section, frozen=True, kw_only=True):
    """`[clusters.<id>]`. A UDP cluster is a tcp cluster whose frontends are UDP listeners."""

    protocol: ClusterProtocol
    frontends: tuple[FrontendSection, ...] = ()
    backends: tuple[BackendSection, ...] = ()
    sticky_session: bool = False
    https_redirect: bool = False
    https_redirect_port: Port | None = None
    send_proxy: bool = False
    # Unset: HRW for a UDP cluster, ROUND_ROBIN otherwise (resolved by the worker).
    load_balancing: LoadBalancingAlgorithm | None = None
    load_metric: LoadMetric | None = None
    answer_503: AnswerFile | None = None
    answers: dict[str, AnswerText] = {}
    http2: bool = False
    authorized_hashes: tuple[str, ...] = ()
    www_authenticate: str | None = None
    max_connections_per_ip: U64 | None = None
    retry_after: U32 | None = None
    health_check: HealthCheckConfig | None = None
    udp: UdpClusterConfig | None = None


class ListenerSection(Section, frozen=True, kw_only=True):
    """`[[listeners]]`: every key of every protocol; the checks reject or warn about keys
    that do not apply to the listener's protocol."""

    address: ListenAddress
    protocol: ListenerProtocol
    public_address: SocketAddress | None = None
    # Unset timeouts: the top-level values (UDP: 30 s front and back).
    front_timeout: Seconds | None = None
    back_timeout: Seconds | None = None
    connect_timeout: Seconds | None = None
    request_timeout: Seconds | None = None
    expect_proxy: bool | None = None
    sticky_name: str | None = None
    answers: dict[str, AnswerText] = {}
    answer_301: AnswerFile | None = None
    answer_400: AnswerFile | None = None
    answer_401: AnswerFile | None = None
    answer_404: AnswerFile | None = None
    answer_408: AnswerFile | None = None
    answer_413: AnswerFile | None = None
    answer_421: AnswerFile | None = None
    answer_429: AnswerFile | None = None
    answer_502: AnswerFile | None = None
    answer_503: AnswerFile | None = None
    answer_504: AnswerFile | None = None
    answer_507: AnswerFile | None = None
    sozu_id_header: str | None = None
    elide_x_real_ip: bool | None = None
    send_x_real_ip: bool | None = None
    h2_max_rst_stream_per_window: U32 | None = None
    h2_max_ping_per_window: U32 | None = None
    h2_max_settings_per_window: U32 | None = None
    h2_max_empty_data_per_window: U32 | None = None
    h2_max_window_update_stream0_per_window: U32 | None = None
    h2_max_continuation_frames: U32 | None = None
    h2_max_glitch_count: U32 | None = None
    h2_initial_connection_window: U32 | None = None
    h2_max_concurrent_streams: U32 | None = None
    h2_stream_shrink_ratio: U32 | None = None
    h2_max_rst_stream_lifetime: U64 | None = None
    h2_max_rst_stream_abusive_lifetime: U64 | None = None
    h2_max_rst_stream_emitted_lifetime: U64 | None = None
    h2_max_header_list_size: U32 | None = None
    h2_max_header_table_size: U32 | None = None
    h2_max_header_fields: U32 | None = None
    h2_stream_idle_timeout_seconds: U32 | None = None
    h2_graceful_shutdown_deadline_seconds: U32 | None = None
    certificate: FilePath | None = None
    certificate_chain: FilePath | None = None
    key: FilePath | None = None
    tls_versions: tuple[FileTlsVersion, ...] | None = None
    cipher_list: tuple[str, ...] | None = None
    cipher_suites: tuple[str, ...] | None = None
    groups_list: tuple[str, ...] | None = None
    send_tls13_tickets: U64 | None = None
    alpn_protocols: tuple[str, ...] | None = None
    strict_sni_binding: bool | None = None
    disable_http11: bool | None = None
    hsts: HstsConfig | None = None
    max_rx_datagram_size: DatagramSize | None = None
    max_flows: U64 | None = None

    def effective_alpn(self) -> tuple[str, ...]:
        return self.alpn_protocols if self.alpn_protocols is not None else ALPN_VALUES


class Config(Section, frozen=True, kw_only=True):
    """The whole configuration file, with upstream defaults plus our additions."""

    # Always absolute once loaded (default: `sozu.sock` next to the file).
    command_socket: FilePath = "sozu.sock"
    max_command_buffer_size: Positive = 2_000_000
    max_connections: Positive = 10_000
    min_buffers: U64 = 1
    max_buffers: Positive = 1000
    buffer_size: Positive = 16_393
    # 0 = unlimited; a cluster's own value (even 0) wins over this one.
    max_connections_per_ip: U64 = 0
    # Seconds in the Retry-After of a 429 answer, for clusters that set none (0: no header).
    retry_after: U32 = 60
    command_allowed_uids: tuple[U32, ...] | None = None
    saved_state: FilePath | None = None
    automatic_state_save: bool = False
    log_level: str = "info"
    log_target: LogTarget = "stdout"
    access_logs_target: str | None = None
    worker_count: Positive = 2
    worker_automatic_restart: bool = True
    worker_timeout: Annotated[int, msgspec.Meta(ge=1, le=2**32 - 1)] = 10
    metrics: MetricsSection = MetricsSection()
    disable_cluster_metrics: bool = False
    ctl_command_timeout: Positive = 1000
    pid_file_path: FilePath | None = None
    activate_listeners: bool = True
    front_timeout: Seconds = 60
    back_timeout: Seconds = 30
    connect_timeout: Seconds = 3
    request_timeout: Seconds = 10
    # Our additions.
    drain_timeout: Seconds = 60
    worker_max_restarts_per_minute: U32 = 5
    debug: bool = False
    etcd: EtcdSection | None = None
    listeners: tuple[ListenerSection, ...] = ()
    clusters: dict[str, ClusterSection] = {}


def listeners_by_address(config: Config) -> dict[str, list[tuple[int, ListenerSection]]]:
    """The listeners (with their index) at each address; a UDP and a TCP-based listener may
    share one."""
    found: dict[str, list[tuple[int, ListenerSection]]] = {}
    for index, listener in enumerate(config.listeners):
        found.setdefault(listener.address, []).append((index, listener))
    return found
