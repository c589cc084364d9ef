"""Every request and response kind round-trips through msgpack and JSON."""

from __future__ import annotations

import msgspec
import pytest
from support.certs import certificate

from sozu.command import requests as rq
from sozu.command import responses as rs
from sozu.command.envelope import RequestEnvelope, Response
from sozu.command.requests import REQUEST_KINDS, request_kind
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
    UdpClusterConfig,
    UdpHealthConfig,
    UdpListenerConfig,
)

CERT = certificate("example.com").as_request_payload()
FRONT = RequestHttpFrontend(address="127.0.0.1:80", hostname="example.com", cluster_id="c")

EVERY_REQUEST: list[rq.Request] = [
    rq.AddCluster(
        cluster=Cluster(
            cluster_id="c",
            load_balancing="MAGLEV",
            udp=UdpClusterConfig(health=UdpHealthConfig(udp_probe_payload="PING")),
            health_check=HealthCheckConfig(uri="/h"),
        )
    ),
    rq.RemoveCluster(cluster_id="c"),
    rq.AddHttpFrontend(frontend=FRONT),
    rq.RemoveHttpFrontend(frontend=FRONT),
    rq.AddHttpsFrontend(frontend=FRONT),
    rq.RemoveHttpsFrontend(frontend=FRONT),
    rq.AddTcpFrontend(frontend=RequestTcpFrontend(cluster_id="c", address="127.0.0.1:1")),
    rq.RemoveTcpFrontend(frontend=RequestTcpFrontend(cluster_id="c", address="127.0.0.1:1")),
    rq.AddUdpFrontend(frontend=RequestUdpFrontend(cluster_id="c", address="[::1]:53")),
    rq.RemoveUdpFrontend(frontend=RequestUdpFrontend(cluster_id="c", address="[::1]:53")),
    rq.AddCertificate(address="127.0.0.1:443", certificate=CERT, expired_at=5),
    rq.ReplaceCertificate(address="127.0.0.1:443", new_certificate=CERT, old_fingerprint="ab" * 32),
    rq.RemoveCertificate(address="127.0.0.1:443", fingerprint="ab" * 32),
    rq.AddBackend(backend=Backend(cluster_id="c", backend_id="b", address="127.0.0.1:2")),
    rq.RemoveBackend(cluster_id="c", backend_id="b", address="127.0.0.1:2"),
    rq.AddHttpListener(listener=HttpListenerConfig(address="127.0.0.1:80")),
    rq.AddHttpsListener(listener=HttpsListenerConfig(address="127.0.0.1:443")),
    rq.AddTcpListener(listener=TcpListenerConfig(address="127.0.0.1:1")),
    rq.AddUdpListener(listener=UdpListenerConfig(address="127.0.0.1:53", max_flows=3)),
    rq.RemoveListener(address="127.0.0.1:1", proxy="TCP"),
    rq.ActivateListener(address="127.0.0.1:1", proxy="TCP", from_scm=True),
    rq.DeactivateListener(address="127.0.0.1:1", proxy="TCP", to_scm=True),
    rq.UpdateHttpListener(address="127.0.0.1:80", answers={"404": "x"}),
    rq.UpdateHttpsListener(address="127.0.0.1:443", alpn_protocols=()),
    rq.UpdateTcpListener(address="127.0.0.1:1", expect_proxy=True),
    rq.UpdateUdpListener(address="127.0.0.1:53", max_flows=9),
    rq.SetHealthCheck(cluster_id="c", health_check=HealthCheckConfig(uri="/")),
    rq.RemoveHealthCheck(cluster_id="c"),
    rq.QueryClusterById(cluster_id="c"),
    rq.QueryClustersByDomain(hostname="example.com", path="/a"),
    rq.QueryClustersHashes(),
    rq.QueryMetrics(list=True, cluster_ids=("c",)),
    rq.QueryCertificatesFromTheState(domain="example.com"),
    rq.QueryCertificatesFromWorkers(fingerprint="ab"),
    rq.QueryHealthChecks(cluster_id="c"),
    rq.CountRequests(),
    rq.ListWorkers(),
    rq.ListFrontends(http=True, domain="example.com"),
    rq.ListListeners(),
    rq.Status(),
    rq.ConfigureMetrics(config="CLEAR"),
    rq.Logging(filter="debug"),
    rq.SetMaxConnectionsPerIp(limit=10),
    rq.QueryMaxConnectionsPerIp(),
    rq.SoftStop(),
    rq.HardStop(),
    rq.UpgradeMain(),
    rq.UpgradeWorker(worker_id=3, wait=True),
    rq.LaunchWorker(),
    rq.LaunchWorker(slot=1),
    rq.SubscribeEvents(),
    rq.SaveState(path="/tmp/state"),
    rq.LoadState(path="/tmp/state"),
    rq.ReloadConfiguration(path="/etc/sozu.toml"),
    rq.ReturnListenSockets(),
    rq.AdoptListeners(slot=1, count=2),
    rq.ReleaseListeners(slot=1),
    rq.ServerConfig(protocol_version=1, worker_id=1, slot=0),
]

WORKER = rs.WorkerInfo(id=1, slot=0, pid=42, state="running", restarts=2, state_hash="ab")
EVERY_CONTENT: list[rs.Content] = [
    rs.Event(kind="CLUSTER_ADDED", cluster_id="c"),
    rs.WorkerHello(protocol_version=1, build_id="abc", pid=7),
    rs.StatusReport(
        supervisor=rs.SupervisorInfo(pid=1, boot_generation=0, build_id="b", state_hash="h"),
        workers=(WORKER,),
    ),
    rs.WorkerInfos(workers=(WORKER,)),
    rs.WorkerResponses(
        map={"main": rs.WorkerAnswer(status="ok", content=rs.ClusterHashes(map={"c": "h"}))}
    ),
    rs.ClusterInformations(
        clusters=(
            rs.ClusterInformation(configuration=Cluster(cluster_id="c"), http_frontends=(FRONT,)),
        )
    ),
    rs.ClusterHashes(map={"c": "0123"}),
    rs.ListenersList(udp={"127.0.0.1:53": UdpListenerConfig(address="127.0.0.1:53")}),
    rs.FrontendList(http=(FRONT,)),
    rs.CertificatesList(
        certificates=(
            rs.CertificateSummary(address="127.0.0.1:443", fingerprint="ab", names=("a",)),
        )
    ),
    rs.RequestCounts(map={"AddCluster": 3}),
    rs.HealthChecksList(map={"c": HealthCheckConfig(uri="/")}),
    rs.LoadStateReport(ok=1, skipped=2, errors=3),
    rs.MaxConnectionsPerIp(limit=4),
    rs.MetricsReport(
        main={"clusters": rs.MetricValue(kind="gauge", value=3)},
        workers={
            "1": {"h": rs.MetricValue(kind="histogram", buckets=((0.1, 2),), count=2, sum=0.1)}
        },
    ),
    rs.AvailableMetrics(proxy_metrics=("a",), cluster_metrics=("b",)),
]


def test_the_lists_cover_every_kind() -> None:
    assert {request_kind(r) for r in EVERY_REQUEST} == set(REQUEST_KINDS)
    assert {type(c) for c in EVERY_CONTENT} == set(rs.CONTENT_TYPES)


@pytest.mark.parametrize("request_", EVERY_REQUEST, ids=request_kind)
@pytest.mark.parametrize("codec", [msgspec.msgpack, msgspec.json], ids=["msgpack", "json"])
def test_request_round_trip(request_: rq.Request, codec: object) -> None:
    envelope = RequestEnvelope(id="r1", request=request_)  # type: ignore[arg-type]
    data = codec.encode(envelope)  # type: ignore[attr-defined]
    assert codec.decode(data, type=RequestEnvelope) == envelope  # type: ignore[attr-defined]


@pytest.mark.parametrize("content", EVERY_CONTENT, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("codec", [msgspec.msgpack, msgspec.json], ids=["msgpack", "json"])
def test_response_round_trip(content: rs.Content, codec: object) -> None:
    for status in ("processing", "ok", "failure"):
        response = Response(id="r1", status=status, message="m", content=content)  # type: ignore[arg-type]
        data = codec.encode(response)  # type: ignore[attr-defined]
        assert codec.decode(data, type=Response) == response  # type: ignore[attr-defined]


def test_tags_are_explicit_upstream_names() -> None:
    assert msgspec.json.encode(rq.AddCluster(cluster=Cluster(cluster_id="c"))).startswith(
        b'{"type":"AddCluster"'
    )
    for kind, cls in REQUEST_KINDS.items():
        assert kind == cls.__name__, "the tag is the class name, written out explicitly"
