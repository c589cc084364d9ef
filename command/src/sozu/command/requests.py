"""Every request of the command protocol, as a tagged msgspec union.

The tag of a request is upstream's request name in PascalCase (`AddCluster`,
`ActivateListener`, ...), the same in msgpack, JSON and the state file. `ROUTING` says who
handles each kind:

- `state`: validated on the supervisor's state, then fanned out to every worker;
- `fanout`: sent to every worker, the supervisor's state untouched;
- `query`: answered by the supervisor and every worker (a map keyed by worker id and "main");
- `main`: handled by the supervisor alone;
- `worker`: only on the supervisor-to-worker channel; refused from a client.
"""

from __future__ import annotations

import typing
from typing import Annotated, ClassVar, Final, Literal

import msgspec

from sozu.command.types import (
    U32,
    U64,
    CertificateAndKey,
    Cluster,
    HealthCheckConfig,
    HstsConfig,
    HttpListenerConfig,
    HttpsListenerConfig,
    ListenerType,
    MetricsConfiguration,
    RequestHttpFrontend,
    RequestTcpFrontend,
    RequestUdpFrontend,
    Seconds,
    TcpListenerConfig,
    TlsVersion,
    UdpListenerConfig,
    canonicalize_addresses,
)
from sozu.command.types import Backend as BackendRecord

Routing = Literal["state", "fanout", "query", "main", "worker"]


# A signed 64-bit integer (timestamps in seconds).
I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Request(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    """Base of every request."""

    ROUTING: ClassVar[Routing]


# ---------------------------------------------------------------------------------------------
# State-changing requests


class AddCluster(Request, tag="AddCluster", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    cluster: Cluster


class RemoveCluster(Request, tag="RemoveCluster", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    cluster_id: str


class AddHttpFrontend(Request, tag="AddHttpFrontend", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    frontend: RequestHttpFrontend


class RemoveHttpFrontend(Request, tag="RemoveHttpFrontend", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    frontend: RequestHttpFrontend


class AddHttpsFrontend(Request, tag="AddHttpsFrontend", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    frontend: RequestHttpFrontend


class RemoveHttpsFrontend(Request, tag="RemoveHttpsFrontend", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    frontend: RequestHttpFrontend


class AddTcpFrontend(Request, tag="AddTcpFrontend", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    frontend: RequestTcpFrontend


class RemoveTcpFrontend(Request, tag="RemoveTcpFrontend", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    frontend: RequestTcpFrontend


class AddUdpFrontend(Request, tag="AddUdpFrontend", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    frontend: RequestUdpFrontend


class RemoveUdpFrontend(Request, tag="RemoveUdpFrontend", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    frontend: RequestUdpFrontend


class AddCertificate(Request, tag="AddCertificate", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    address: str
    certificate: CertificateAndKey
    expired_at: I64 | None = None

    def __post_init__(self) -> None:
        canonicalize_addresses(self, "address")


class ReplaceCertificate(Request, tag="ReplaceCertificate", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    address: str
    new_certificate: CertificateAndKey
    old_fingerprint: str
    new_expired_at: I64 | None = None

    def __post_init__(self) -> None:
        canonicalize_addresses(self, "address")


class RemoveCertificate(Request, tag="RemoveCertificate", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    address: str
    fingerprint: str

    def __post_init__(self) -> None:
        canonicalize_addresses(self, "address")


class AddBackend(Request, tag="AddBackend", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    backend: BackendRecord


class RemoveBackend(Request, tag="RemoveBackend", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    cluster_id: str
    backend_id: str
    address: str

    def __post_init__(self) -> None:
        canonicalize_addresses(self, "address")


class AddHttpListener(Request, tag="AddHttpListener", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    listener: HttpListenerConfig


class AddHttpsListener(Request, tag="AddHttpsListener", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    listener: HttpsListenerConfig


class AddTcpListener(Request, tag="AddTcpListener", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    listener: TcpListenerConfig


class AddUdpListener(Request, tag="AddUdpListener", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    listener: UdpListenerConfig


class _ListenerAddress(Request, frozen=True, kw_only=True):
    address: str
    proxy: ListenerType

    def __post_init__(self) -> None:
        canonicalize_addresses(self, "address")


class RemoveListener(_ListenerAddress, tag="RemoveListener", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"


class ActivateListener(_ListenerAddress, tag="ActivateListener", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    from_scm: bool = False


class DeactivateListener(_ListenerAddress, tag="DeactivateListener", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    to_scm: bool = False


class _ListenerPatch(Request, frozen=True, kw_only=True):
    """Fields common to every listener update; None keeps the current value."""

    address: str
    public_address: str | None = None
    front_timeout: Seconds | None = None
    back_timeout: Seconds | None = None

    def __post_init__(self) -> None:
        canonicalize_addresses(self, "address", "public_address")


class UpdateHttpListener(_ListenerPatch, tag="UpdateHttpListener", frozen=True, kw_only=True):
    """Patch of an HTTP listener: `answers` entries are merged code by code."""

    ROUTING: ClassVar[Routing] = "state"
    expect_proxy: bool | None = None
    sticky_name: str | None = None
    connect_timeout: Seconds | None = None
    request_timeout: Seconds | None = None
    answers: dict[str, str] | None = None
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


class UpdateHttpsListener(UpdateHttpListener, tag="UpdateHttpsListener", frozen=True, kw_only=True):
    """Patch of an HTTPS listener: `alpn_protocols` None keeps, empty resets to the default."""

    ROUTING: ClassVar[Routing] = "state"
    versions: tuple[TlsVersion, ...] | None = None
    cipher_list: tuple[str, ...] | None = None
    cipher_suites: tuple[str, ...] | None = None
    signature_algorithms: tuple[str, ...] | None = None
    groups_list: tuple[str, ...] | None = None
    send_tls13_tickets: U64 | None = None
    alpn_protocols: tuple[str, ...] | None = None
    strict_sni_binding: bool | None = None
    disable_http11: bool | None = None
    hsts: HstsConfig | None = None


class UpdateTcpListener(_ListenerPatch, tag="UpdateTcpListener", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    expect_proxy: bool | None = None
    connect_timeout: Seconds | None = None


class UpdateUdpListener(_ListenerPatch, tag="UpdateUdpListener", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    max_rx_datagram_size: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    max_flows: U64 | None = None


class SetHealthCheck(Request, tag="SetHealthCheck", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    cluster_id: str
    health_check: HealthCheckConfig


class RemoveHealthCheck(Request, tag="RemoveHealthCheck", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "state"
    cluster_id: str


# ---------------------------------------------------------------------------------------------
# Queries


class QueryClusterById(Request, tag="QueryClusterById", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "query"
    cluster_id: str


class QueryClustersByDomain(Request, tag="QueryClustersByDomain", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "query"
    hostname: str
    path: str | None = None


class QueryClustersHashes(Request, tag="QueryClustersHashes", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "query"


class QueryMetrics(Request, tag="QueryMetrics", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "fanout"
    list: bool = False
    cluster_ids: tuple[str, ...] = ()
    backend_ids: tuple[str, ...] = ()
    metric_names: tuple[str, ...] = ()
    no_clusters: bool = False
    workers: bool = False


class QueryCertificatesFromTheState(
    Request, tag="QueryCertificatesFromTheState", frozen=True, kw_only=True
):
    ROUTING: ClassVar[Routing] = "main"
    domain: str | None = None
    fingerprint: str | None = None


class QueryCertificatesFromWorkers(
    Request, tag="QueryCertificatesFromWorkers", frozen=True, kw_only=True
):
    ROUTING: ClassVar[Routing] = "fanout"
    domain: str | None = None
    fingerprint: str | None = None


class QueryHealthChecks(Request, tag="QueryHealthChecks", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"
    cluster_id: str | None = None


class CountRequests(Request, tag="CountRequests", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"


class ListWorkers(Request, tag="ListWorkers", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"


class ListFrontends(Request, tag="ListFrontends", frozen=True, kw_only=True):
    """List frontends; no protocol flag set means all of them."""

    ROUTING: ClassVar[Routing] = "main"
    http: bool = False
    https: bool = False
    tcp: bool = False
    udp: bool = False
    domain: str | None = None


class ListListeners(Request, tag="ListListeners", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"


class Status(Request, tag="Status", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"


# ---------------------------------------------------------------------------------------------
# Runtime settings, stops, upgrades, events, persistence


class ConfigureMetrics(Request, tag="ConfigureMetrics", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "fanout"
    config: MetricsConfiguration


class Logging(Request, tag="Logging", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "fanout"
    filter: str


class SetMaxConnectionsPerIp(Request, tag="SetMaxConnectionsPerIp", frozen=True, kw_only=True):
    """Runtime limit of connections per client IP (0 = unlimited); not persisted."""

    ROUTING: ClassVar[Routing] = "fanout"
    limit: U64


class QueryMaxConnectionsPerIp(Request, tag="QueryMaxConnectionsPerIp", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"


class SoftStop(Request, tag="SoftStop", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"


class HardStop(Request, tag="HardStop", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"


class UpgradeMain(Request, tag="UpgradeMain", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"


class UpgradeWorker(Request, tag="UpgradeWorker", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"
    worker_id: U32
    wait: bool = False


class LaunchWorker(Request, tag="LaunchWorker", frozen=True, kw_only=True):
    """Refill an empty worker slot (None: every empty slot) with a new worker."""

    ROUTING: ClassVar[Routing] = "main"
    slot: U32 | None = None


class SubscribeEvents(Request, tag="SubscribeEvents", frozen=True, kw_only=True):
    """Follow events; with `since`, the kept events numbered after it come first (a client
    that lost its connection, e.g. across a supervisor upgrade, resumes without a gap)."""

    ROUTING: ClassVar[Routing] = "main"
    since: U64 | None = None


# A file path: not empty, no NUL (the kernel cannot take one), bounded.
FilePath = Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern="^[^\x00]*$")]
TLS_TICKET_KEY_SIZE: Final = 80  # OpenSSL's: a 16-byte key name, 32-byte HMAC and AES keys
TicketKeys = Annotated[
    bytes, msgspec.Meta(min_length=TLS_TICKET_KEY_SIZE, max_length=TLS_TICKET_KEY_SIZE)
]


class SaveState(Request, tag="SaveState", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"
    path: FilePath
    # "upstream": upstream Sōzu's `\n\0`-separated JSON (see statefile_upstream.py).
    format: Literal["sozu", "upstream"] = "sozu"


class LoadState(Request, tag="LoadState", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "main"
    path: FilePath


class ReloadConfiguration(Request, tag="ReloadConfiguration", frozen=True, kw_only=True):
    """Re-read a configuration file (None: the boot file) and converge onto it."""

    ROUTING: ClassVar[Routing] = "main"
    path: FilePath | None = None


# ---------------------------------------------------------------------------------------------
# Supervisor-to-worker channel only


class ReturnListenSockets(Request, tag="ReturnListenSockets", frozen=True, kw_only=True):
    ROUTING: ClassVar[Routing] = "worker"


class AdoptListeners(Request, tag="AdoptListeners", frozen=True, kw_only=True):
    """Accept on the `count` listener sockets of empty slot `slot` just sent over the SCM
    channel too, until ReleaseListeners."""

    ROUTING: ClassVar[Routing] = "worker"
    slot: U32
    count: U32


class ReleaseListeners(Request, tag="ReleaseListeners", frozen=True, kw_only=True):
    """Stop accepting on slot `slot`'s sockets (its new worker serves them) and close them."""

    ROUTING: ClassVar[Routing] = "worker"
    slot: U32


class ServerConfig(Request, tag="ServerConfig", frozen=True, kw_only=True):
    """First message to a worker: its identity and process-wide limits."""

    ROUTING: ClassVar[Routing] = "worker"
    protocol_version: int
    worker_id: U32
    slot: U32
    max_connections: U64 = 10000
    buffer_size: U64 = 16393
    min_buffers: U64 = 1
    max_buffers: U64 = 1000
    drain_timeout: Seconds = 60
    log_level: str = "info"
    access_logs: bool = True
    debug: bool = False
    # A `log_targets` target (stdout, stderr, file, udp, tcp, unix); None: no access log
    access_logs_target: str | None = None
    # Process-wide `max_connections_per_ip` (0 = unlimited) and `retry_after` (seconds in the
    # 429 answer), for clusters that set none of their own.
    max_connections_per_ip: U64 = 0
    retry_after: U32 = 60
    # No per-cluster or per-backend metrics series.
    disable_cluster_metrics: bool = False
    # Where the worker's own logs go (`log_target`); None: where they already go (stderr).
    log_target: str | None = None
    # Where the worker waits to be taken over if its supervisor dies (see takeover.py);
    # None: it drains and exits then.
    takeover_path: str | None = None
    # A secret (TLS_TICKET_KEY_SIZE random bytes drawn once by the supervisor) from which each
    # HTTPS listener of every worker derives its session-ticket keys, so that a client resumes
    # whichever worker accepts it; None: each worker keeps OpenSSL's own per-context keys.
    # Never logged nor shown.
    tls_ticket_keys: TicketKeys | None = None


AnyRequest = (
    AddCluster
    | RemoveCluster
    | AddHttpFrontend
    | RemoveHttpFrontend
    | AddHttpsFrontend
    | RemoveHttpsFrontend
    | AddTcpFrontend
    | RemoveTcpFrontend
    | AddUdpFrontend
    | RemoveUdpFrontend
    | AddCertificate
    | ReplaceCertificate
    | RemoveCertificate
    | AddBackend
    | RemoveBackend
    | AddHttpListener
    | AddHttpsListener
    | AddTcpListener
    | AddUdpListener
    | RemoveListener
    | ActivateListener
    | DeactivateListener
    | UpdateHttpListener
    | UpdateHttpsListener
    | UpdateTcpListener
    | UpdateUdpListener
    | SetHealthCheck
    | RemoveHealthCheck
    | QueryClusterById
    | QueryClustersByDomain
    | QueryClustersHashes
    | QueryMetrics
    | QueryCertificatesFromTheState
    | QueryCertificatesFromWorkers
    | QueryHealthChecks
    | CountRequests
    | ListWorkers
    | ListFrontends
    | ListListeners
    | Status
    | ConfigureMetrics
    | Logging
    | SetMaxConnectionsPerIp
    | QueryMaxConnectionsPerIp
    | SoftStop
    | HardStop
    | UpgradeMain
    | UpgradeWorker
    | LaunchWorker
    | SubscribeEvents
    | SaveState
    | LoadState
    | ReloadConfiguration
    | ReturnListenSockets
    | AdoptListeners
    | ReleaseListeners
    | ServerConfig
)

REQUEST_TYPES: tuple[type[Request], ...] = typing.get_args(AnyRequest)


def request_kind(request: Request | type[Request]) -> str:
    """The tag of a request or request class (`AddCluster`, ...)."""
    tag = request.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


REQUEST_KINDS: dict[str, type[Request]] = {request_kind(cls): cls for cls in REQUEST_TYPES}
