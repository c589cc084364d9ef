"""The objects of the routing state: clusters, backends, listeners, frontends, certificates.

Field names and defaults follow upstream Sōzu 2.1.0 (`command/src/command.proto`), UDP ones
included. Every object is a frozen msgspec Struct; addresses are canonicalised on construction
and on decode, so an address is one key whatever its spelling.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

import msgspec

from sozu.command.addresses import AddressError, canonical_address

_METHOD: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seconds = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]

LoadBalancingAlgorithm = Literal[
    "ROUND_ROBIN", "RANDOM", "LEAST_LOADED", "POWER_OF_TWO", "HRW", "MAGLEV"
]
LOAD_BALANCING_ALGORITHMS: tuple[LoadBalancingAlgorithm, ...] = (
    "ROUND_ROBIN",
    "RANDOM",
    "LEAST_LOADED",
    "POWER_OF_TWO",
    "HRW",
    "MAGLEV",
)
LoadMetric = Literal["CONNECTIONS", "REQUESTS", "CONNECTION_TIME"]
ProxyProtocolConfig = Literal["EXPECT_HEADER", "SEND_HEADER", "RELAY_HEADER"]
ListenerType = Literal["HTTP", "HTTPS", "TCP", "UDP"]
LISTENER_TYPES: tuple[ListenerType, ...] = ("HTTP", "HTTPS", "TCP", "UDP")
PathRuleKind = Literal["PREFIX", "REGEX", "EQUALS"]
RulePosition = Literal["PRE", "POST", "TREE"]
RedirectPolicy = Literal["FORWARD", "PERMANENT", "FOUND", "PERMANENT_REDIRECT", "UNAUTHORIZED"]
RedirectScheme = Literal["USE_SAME", "USE_HTTP", "USE_HTTPS"]
HeaderPosition = Literal["REQUEST", "RESPONSE", "BOTH"]
TlsVersion = Literal["SSL_V2", "SSL_V3", "TLS_V1_0", "TLS_V1_1", "TLS_V1_2", "TLS_V1_3"]
UdpAffinityKey = Literal["SOURCE_IP", "SOURCE_IP_PORT"]
UdpHealthMode = Literal["HEALTH_OFF", "TCP_PROBE", "UDP_PROBE"]
MetricsConfiguration = Literal["ENABLED", "DISABLED", "CLEAR"]


class Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every state object: immutable, keyword-only, defaults left off the wire.

    Leaving defaults off the wire keeps old encodings (and so state hashes) stable when a
    field with a default is added later.
    """


def _canonical(record: msgspec.Struct, field: str) -> None:
    value = getattr(record, field)
    if value is None:
        return
    try:
        canonical = canonical_address(value)
    except AddressError as error:
        raise ValueError(f"{field}: {error}") from None
    if canonical != value:
        msgspec.structs.force_setattr(record, field, canonical)


def canonicalize_addresses(record: msgspec.Struct, *fields: str) -> None:
    """Validate address fields and rewrite them in canonical form (decode and construction)."""
    for field in fields:
        _canonical(record, field)


# ---------------------------------------------------------------------------------------------
# Clusters and backends


class HealthCheckConfig(Record, frozen=True, kw_only=True):
    """Active HTTP health check of a cluster's backends."""

    uri: str
    interval: U32 = 10
    timeout: U32 = 5
    healthy_threshold: U32 = 3
    unhealthy_threshold: U32 = 3
    expected_status: U32 = 0

    def problems(self) -> list[str]:
        """What makes this health check invalid (empty when it is valid)."""
        found = []
        if not self.uri.startswith("/"):
            found.append(f"uri {self.uri!r} must start with '/'")
        if any(ord(c) < 0x20 or c == "\x7f" for c in self.uri):
            found.append(f"uri {self.uri!r} contains control characters")
        for name in ("interval", "timeout", "healthy_threshold", "unhealthy_threshold"):
            if getattr(self, name) == 0:
                found.append(f"{name} must be greater than 0")
        if self.expected_status != 0 and not 100 <= self.expected_status <= 599:
            found.append(f"expected_status {self.expected_status} is not an HTTP status")
        return found


class UdpHealthConfig(Record, frozen=True, kw_only=True):
    """Health probing of a UDP cluster's backends (TCP companion probe, optional UDP probe)."""

    mode: UdpHealthMode = "TCP_PROBE"
    tcp_port: Port | None = None
    rise: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 2
    fall: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    fail_open: bool = True
    udp_probe_payload: str | None = None
    probe_interval_seconds: Annotated[int, msgspec.Meta(ge=1, le=86400)] = 5
    probe_timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=86400)] = 2


class UdpClusterConfig(Record, frozen=True, kw_only=True):
    """Per-cluster UDP knobs (docs/udp.md, Configuration)."""

    affinity_key: UdpAffinityKey = "SOURCE_IP"
    responses: U64 = 0
    requests: U64 = 0
    send_proxy_protocol: bool = False
    proxy_protocol_every_datagram: bool = False
    health: UdpHealthConfig | None = None


class Cluster(Record, frozen=True, kw_only=True):
    """A cluster: a set of backends and how traffic reaches them."""

    cluster_id: str
    sticky_session: bool = False
    https_redirect: bool = False
    proxy_protocol: ProxyProtocolConfig | None = None
    # Unset: HRW for a UDP cluster, ROUND_ROBIN otherwise (resolved by the worker).
    load_balancing: LoadBalancingAlgorithm | None = None
    answer_503: str | None = None
    load_metric: LoadMetric | None = None
    http2: bool = False
    https_redirect_port: Port | None = None
    authorized_hashes: tuple[str, ...] = ()
    www_authenticate: str | None = None
    answers: dict[str, str] = {}
    max_connections_per_ip: U64 | None = None
    retry_after: U32 | None = None
    health_check: HealthCheckConfig | None = None
    udp: UdpClusterConfig | None = None

    def __post_init__(self) -> None:
        if not self.cluster_id:
            raise ValueError("cluster_id must not be empty")


class LoadBalancingParams(Record, frozen=True, kw_only=True):
    """Per-backend load-balancing parameters."""

    weight: Annotated[int, msgspec.Meta(ge=0, le=255)] = 100


class Backend(Record, frozen=True, kw_only=True):
    """One backend server of a cluster (the payload of AddBackend)."""

    cluster_id: str
    backend_id: str
    address: str
    sticky_id: str | None = None
    load_balancing_parameters: LoadBalancingParams | None = None
    backup: bool | None = None

    def __post_init__(self) -> None:
        canonicalize_addresses(self, "address")
        if self.backup is False:  # one spelling of "not a backup", so equal backends compare equal
            msgspec.structs.force_setattr(self, "backup", None)

    @property
    def weight(self) -> int:
        params = self.load_balancing_parameters
        return 100 if params is None else params.weight


# ---------------------------------------------------------------------------------------------
# Listeners


class HstsConfig(Record, frozen=True, kw_only=True):
    """Strict-Transport-Security policy of an HTTPS listener or frontend."""

    enabled: bool
    max_age: U32 | None = None
    include_subdomains: bool | None = None
    preload: bool | None = None
    force_replace_backend: bool | None = None


class ListenerBase(Record, frozen=True, kw_only=True):
    """Fields every listener has; `active` is set only by the activation lifecycle."""

    address: str
    public_address: str | None = None
    active: bool = False

    def __post_init__(self) -> None:
        canonicalize_addresses(self, "address", "public_address")


class HttpListenerConfig(ListenerBase, frozen=True, kw_only=True):
    """A plain HTTP listener."""

    expect_proxy: bool = False
    sticky_name: str = "SOZUBALANCEID"
    front_timeout: Seconds = 60
    back_timeout: Seconds = 30
    connect_timeout: Seconds = 3
    request_timeout: Seconds = 10
    answers: dict[str, str] = {}
    sozu_id_header: str = "Sozu-Id"
    elide_x_real_ip: bool = False
    send_x_real_ip: bool = False
    # HTTP/2 knobs (unset = upstream default).
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


H2_KNOB_NAMES: tuple[str, ...] = tuple(
    name for name in HttpListenerConfig.__struct_fields__ if name.startswith("h2_")
)
H2_NONZERO_KNOBS: tuple[str, ...] = tuple(n for n in H2_KNOB_NAMES if n.startswith("h2_max_"))

DEFAULT_ALPN: tuple[str, ...] = ("h2", "http/1.1")
DEFAULT_TLS_VERSIONS: tuple[TlsVersion, ...] = ("TLS_V1_2", "TLS_V1_3")


class HttpsListenerConfig(HttpListenerConfig, frozen=True, kw_only=True):
    """An HTTPS listener: HTTP fields plus TLS settings."""

    certificate: str | None = None
    certificate_chain: tuple[str, ...] = ()
    key: str | None = None
    versions: tuple[TlsVersion, ...] = DEFAULT_TLS_VERSIONS
    cipher_list: tuple[str, ...] = ()
    cipher_suites: tuple[str, ...] = ()
    signature_algorithms: tuple[str, ...] = ()
    groups_list: tuple[str, ...] = ()
    send_tls13_tickets: U64 = 4
    alpn_protocols: tuple[str, ...] = DEFAULT_ALPN
    strict_sni_binding: bool = True
    disable_http11: bool = False
    hsts: HstsConfig | None = None


class TcpListenerConfig(ListenerBase, frozen=True, kw_only=True):
    """A TCP listener (one cluster per listener)."""

    expect_proxy: bool = False
    front_timeout: Seconds = 60
    back_timeout: Seconds = 30
    connect_timeout: Seconds = 3


class UdpListenerConfig(ListenerBase, frozen=True, kw_only=True):
    """A UDP listener: idle timeouts of its flows, datagram size, flow cap (0 = auto)."""

    front_timeout: Seconds = 30
    back_timeout: Seconds = 30
    max_rx_datagram_size: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1500
    max_flows: U64 = 0


ListenerConfig = HttpListenerConfig | HttpsListenerConfig | TcpListenerConfig | UdpListenerConfig


def listener_type(listener: ListenerConfig) -> ListenerType:
    """The protocol of a listener config object."""
    if isinstance(listener, HttpsListenerConfig):
        return "HTTPS"
    if isinstance(listener, HttpListenerConfig):
        return "HTTP"
    if isinstance(listener, TcpListenerConfig):
        return "TCP"
    assert isinstance(listener, UdpListenerConfig)
    return "UDP"


# ---------------------------------------------------------------------------------------------
# Frontends


class PathRule(Record, frozen=True, kw_only=True):
    """How a frontend matches the request path."""

    kind: PathRuleKind = "PREFIX"
    value: str = ""


class Header(Record, frozen=True, kw_only=True):
    """A header edit of a frontend; an empty value deletes the header."""

    position: HeaderPosition
    key: str
    val: str = ""


def _lower_literal_labels(hostname: str) -> str:
    """The hostname with its literal labels lowercased; `/regex/` labels as written (`\\D`
    and `\\d` differ)."""
    if "/" not in hostname:
        return hostname.lower()
    parts = []
    index, size = 0, len(hostname)
    while index < size:
        if hostname[index] == "/":
            end = hostname.find("/", index + 1)
            end = size if end < 0 else end + 1
            parts.append(hostname[index:end])
        else:
            end = hostname.find(".", index)
            end = size if end < 0 else end
            parts.append(hostname[index:end].lower())
        if end < size:
            parts.append(hostname[end])  # the separating dot (or what stands in its place)
            end += 1
        index = end
    return "".join(parts)


class RequestHttpFrontend(Record, frozen=True, kw_only=True):
    """An HTTP or HTTPS routing rule. `cluster_id = None` denies (401)."""

    address: str
    hostname: str
    cluster_id: str | None = None
    path: PathRule = PathRule()
    method: str | None = None
    position: RulePosition = "TREE"
    tags: dict[str, str] = {}
    redirect: RedirectPolicy | None = None
    redirect_scheme: RedirectScheme | None = None
    redirect_template: str | None = None
    rewrite_host: str | None = None
    rewrite_path: str | None = None
    rewrite_port: Port | None = None
    required_auth: bool | None = None
    headers: tuple[Header, ...] = ()
    hsts: HstsConfig | None = None

    def __post_init__(self) -> None:
        canonicalize_addresses(self, "address")
        if not self.hostname:
            raise ValueError("hostname must not be empty")
        if ";" in self.hostname or any(c.isspace() for c in self.hostname):
            raise ValueError(f"hostname {self.hostname!r} contains ';' or white space")
        if self.method is not None and not _METHOD.match(self.method):
            raise ValueError(f"method {self.method!r} is not an HTTP method token")
        lowered = _lower_literal_labels(self.hostname)
        if lowered != self.hostname:
            msgspec.structs.force_setattr(self, "hostname", lowered)

    def route_key(self) -> str:
        """The state key: `<address>;<hostname>;<P|R|=><path>[;<method>]`."""
        marker = {"PREFIX": "P", "REGEX": "R", "EQUALS": "="}[self.path.kind]
        # Escaped so that a ';' inside a path can never read as the method separator.
        path = self.path.value.replace("\\", "\\\\").replace(";", "\\;")
        key = f"{self.address};{self.hostname};{marker}{path}"
        if self.method is not None:
            key += f";{self.method}"
        return key


class RequestTcpFrontend(Record, frozen=True, kw_only=True):
    """Binds a TCP listener address to a cluster."""

    cluster_id: str
    address: str
    tags: dict[str, str] = {}

    def __post_init__(self) -> None:
        canonicalize_addresses(self, "address")


class RequestUdpFrontend(Record, frozen=True, kw_only=True):
    """Binds a UDP listener address to a cluster."""

    cluster_id: str
    address: str
    tags: dict[str, str] = {}

    def __post_init__(self) -> None:
        canonicalize_addresses(self, "address")


# ---------------------------------------------------------------------------------------------
# Certificates


class CertificateAndKey(Record, frozen=True, kw_only=True):
    """A PEM certificate, its chain and key; `names` empty = taken from the certificate."""

    certificate: str
    key: str
    certificate_chain: tuple[str, ...] = ()
    versions: tuple[TlsVersion, ...] = ()
    names: tuple[str, ...] = ()


def struct_to_builtins(record: Any) -> Any:
    """Plain Python data of a record (for JSON output)."""
    return msgspec.to_builtins(record)
