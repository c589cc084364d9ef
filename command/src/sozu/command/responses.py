"""Answers of the command protocol: statuses, typed response contents and events."""

from __future__ import annotations

import typing
from typing import Literal

import msgspec

from sozu.command.metrics import MetricsSnapshot
from sozu.command.types import (
    Backend,
    Cluster,
    HealthCheckConfig,
    HttpListenerConfig,
    HttpsListenerConfig,
    RequestHttpFrontend,
    RequestTcpFrontend,
    RequestUdpFrontend,
    TcpListenerConfig,
    UdpListenerConfig,
)

ResponseStatus = Literal["processing", "ok", "failure"]
WorkerRunState = Literal["starting", "running", "draining", "stopped", "not_answering"]

EventKind = Literal[
    # From workers
    "BACKEND_DOWN",
    "BACKEND_UP",
    "NO_AVAILABLE_BACKENDS",
    "REMOVED_BACKEND_HAS_NO_CONNECTIONS",
    "HEALTH_CHECK_HEALTHY",
    "HEALTH_CHECK_UNHEALTHY",
    "CLUSTER_RECOVERED",
    # From the supervisor
    "CLUSTER_ADDED",
    "CLUSTER_REMOVED",
    "BACKEND_ADDED",
    "BACKEND_REMOVED",
    "FRONTEND_ADDED",
    "FRONTEND_REMOVED",
    "CERTIFICATE_ADDED",
    "CERTIFICATE_REMOVED",
    "CERTIFICATE_REPLACED",
    "LISTENER_ADDED",
    "LISTENER_REMOVED",
    "LISTENER_ACTIVATED",
    "LISTENER_DEACTIVATED",
    "LISTENER_UPDATED",
    "HEALTH_CHECK_SET",
    "HEALTH_CHECK_REMOVED",
    "CONFIGURATION_RELOADED",
    "LOGGING_LEVEL_CHANGED",
    "METRICS_CONFIGURED",
    "STATE_LOADED",
    "STATE_SAVED",
    "SOZU_STOP_REQUESTED",
    "MAIN_UPGRADED",
    "WORKER_UPGRADED",
    "WORKER_KILLED",
    "WORKER_RELAUNCHED",
    "WORKER_SLOT_EMPTY",
    "WORKER_REPLAY_FAILED",
    "EVENTS_SUBSCRIBED",
]


class Content(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    """Base of every typed response content."""


class Event(Content, tag="Event", frozen=True, kw_only=True):
    """Something that happened; `source` is "main" or a worker id; `seq` numbers the
    supervisor's events (kept across its upgrades), so that a follower can resume."""

    kind: EventKind
    seq: int | None = None
    source: str = "main"
    cluster_id: str | None = None
    backend_id: str | None = None
    address: str | None = None
    message: str | None = None


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One worker process as the supervisor sees it."""

    id: int
    slot: int
    pid: int
    state: WorkerRunState
    restarts: int = 0
    build_id: str = ""
    state_hash: str = ""
    hash_ok: bool = True


class SupervisorInfo(msgspec.Struct, frozen=True, kw_only=True):
    pid: int
    boot_generation: int
    build_id: str
    state_hash: str


class EmptySlot(msgspec.Struct, frozen=True, kw_only=True):
    """A worker slot with no worker of its own, why, and who accepts on its sockets."""

    slot: int
    reason: str
    adopted_by: int | None = None


FleetPhase = Literal["connecting", "following", "waiting_generation", "unreachable"]


class FleetRefusal(msgspec.Struct, frozen=True, kw_only=True):
    """A desired state this instance refused: the key at fault, the revision, why."""

    key: str
    revision: int
    message: str


class FleetStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How an instance follows the desired state in etcd (see fleet_sync.py)."""

    instance_id: str
    prefix: str
    phase: FleetPhase
    # The supervisor's state hash (every worker's is compared with it in `sozu status`).
    state_hash: str = ""
    version: str = ""
    endpoint: str
    # The last revision read or watched, and the last one whose state is applied.
    seen_revision: int = 0
    applied_revision: int = 0
    generation: int | None = None
    refused: FleetRefusal | None = None
    refusals: int = 0
    # Why etcd could not be reached, while it cannot.
    unreachable: str | None = None
    # Worker id -> its state hash, as last asked.
    workers: dict[str, str] = {}


class StatusReport(Content, tag="Status", frozen=True, kw_only=True):
    """`sozu status`: the supervisor and its live workers (and empty slots, if any)."""

    supervisor: SupervisorInfo
    workers: tuple[WorkerInfo, ...] = ()
    empty_slots: tuple[EmptySlot, ...] = ()
    # Why a worker's state differs from the supervisor's, when known.
    problems: tuple[str, ...] = ()
    # Set when the instance follows a desired state in etcd.
    fleet: FleetStatus | None = None


class WorkerInfos(Content, tag="Workers", frozen=True, kw_only=True):
    workers: tuple[WorkerInfo, ...] = ()


class WorkerAnswer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One process's answer inside a query's WorkerResponses."""

    status: ResponseStatus
    message: str = ""
    content: AnyContent | None = None


class WorkerResponses(Content, tag="WorkerResponses", frozen=True, kw_only=True):
    """Answers keyed by worker id, plus "main" for the supervisor's own."""

    map: dict[str, WorkerAnswer] = {}


class ClusterInformation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    configuration: Cluster | None = None
    http_frontends: tuple[RequestHttpFrontend, ...] = ()
    https_frontends: tuple[RequestHttpFrontend, ...] = ()
    tcp_frontends: tuple[RequestTcpFrontend, ...] = ()
    udp_frontends: tuple[RequestUdpFrontend, ...] = ()
    backends: tuple[Backend, ...] = ()


class ClusterInformations(Content, tag="Clusters", frozen=True, kw_only=True):
    clusters: tuple[ClusterInformation, ...] = ()


class ClusterHashes(Content, tag="ClusterHashes", frozen=True, kw_only=True):
    map: dict[str, str] = {}


class ListenersList(Content, tag="Listeners", frozen=True, kw_only=True):
    http: dict[str, HttpListenerConfig] = {}
    https: dict[str, HttpsListenerConfig] = {}
    tcp: dict[str, TcpListenerConfig] = {}
    udp: dict[str, UdpListenerConfig] = {}


class FrontendList(Content, tag="Frontends", frozen=True, kw_only=True):
    http: tuple[RequestHttpFrontend, ...] = ()
    https: tuple[RequestHttpFrontend, ...] = ()
    tcp: tuple[RequestTcpFrontend, ...] = ()
    udp: tuple[RequestUdpFrontend, ...] = ()


class CertificateSummary(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    address: str
    fingerprint: str
    names: tuple[str, ...] = ()
    expired_at: int | None = None


class CertificatesList(Content, tag="Certificates", frozen=True, kw_only=True):
    certificates: tuple[CertificateSummary, ...] = ()


class RequestCounts(Content, tag="RequestCounts", frozen=True, kw_only=True):
    map: dict[str, int] = {}


class HealthChecksList(Content, tag="HealthChecks", frozen=True, kw_only=True):
    map: dict[str, HealthCheckConfig] = {}


class LoadStateReport(Content, tag="LoadState", frozen=True, kw_only=True):
    ok: int = 0
    skipped: int = 0
    errors: int = 0


class MaxConnectionsPerIp(Content, tag="MaxConnectionsPerIp", frozen=True, kw_only=True):
    limit: int = 0


class MetricValue(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A counter, a gauge, or a histogram (cumulative bucket counts with their bounds)."""

    kind: Literal["counter", "gauge", "histogram"]
    value: float = 0.0
    buckets: tuple[tuple[float, int], ...] = ()
    count: int = 0
    sum: float = 0.0


class MetricsReport(Content, tag="Metrics", frozen=True, kw_only=True):
    """Aggregated metrics: process-wide, per worker, per cluster and per backend.

    A worker answers the supervisor's QueryMetrics with its raw `snapshot` only; the
    supervisor aggregates the snapshots and answers clients with the other fields.
    """

    main: dict[str, MetricValue] = {}
    workers: dict[str, dict[str, MetricValue]] = {}
    clusters: dict[str, dict[str, MetricValue]] = {}
    backends: dict[str, dict[str, MetricValue]] = {}
    snapshot: MetricsSnapshot | None = None


class AvailableMetrics(Content, tag="AvailableMetrics", frozen=True, kw_only=True):
    proxy_metrics: tuple[str, ...] = ()
    cluster_metrics: tuple[str, ...] = ()


class WorkerHello(Content, tag="Hello", frozen=True, kw_only=True):
    """What a worker says first on its channel."""

    protocol_version: int
    build_id: str
    pid: int


AnyContent = (
    Event
    | WorkerHello
    | StatusReport
    | WorkerInfos
    | WorkerResponses
    | ClusterInformations
    | ClusterHashes
    | ListenersList
    | FrontendList
    | CertificatesList
    | RequestCounts
    | HealthChecksList
    | LoadStateReport
    | MaxConnectionsPerIp
    | MetricsReport
    | AvailableMetrics
)

CONTENT_TYPES: tuple[type[Content], ...] = typing.get_args(AnyContent)
