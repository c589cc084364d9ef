"""Answers to read-only requests from a `ConfigState`, shared by the supervisor and workers."""

from __future__ import annotations

from sozu.command import requests as rq
from sozu.command.certificates import inspect_certificate
from sozu.command.envelope import Response, failure, ok
from sozu.command.requests import Request
from sozu.command.responses import (
    CertificatesList,
    CertificateSummary,
    ClusterHashes,
    ClusterInformation,
    ClusterInformations,
    FrontendList,
    HealthChecksList,
    ListenersList,
)
from sozu.command.state import ConfigState

QUERY_TYPES: tuple[type[Request], ...] = (
    rq.QueryClusterById,
    rq.QueryClustersByDomain,
    rq.QueryClustersHashes,
    rq.ListListeners,
    rq.ListFrontends,
    rq.QueryCertificatesFromTheState,
    rq.QueryHealthChecks,
)


def cluster_information(state: ConfigState, cluster_id: str) -> ClusterInformation:
    return ClusterInformation(
        configuration=state.clusters.get(cluster_id),
        http_frontends=tuple(f for f in state.http_fronts.values() if f.cluster_id == cluster_id),
        https_frontends=tuple(f for f in state.https_fronts.values() if f.cluster_id == cluster_id),
        tcp_frontends=tuple(state.tcp_fronts.get(cluster_id, ())),
        udp_frontends=tuple(state.udp_fronts.get(cluster_id, ())),
        backends=tuple(state.backends.get(cluster_id, ())),
    )


def _domain_matches(hostname: str, path: str | None, front_host: str, front_path: str) -> bool:
    if front_host != hostname:
        return False
    return path is None or path.startswith(front_path)


def answer_query(state: ConfigState, request_id: str, request: Request) -> Response:
    """The Ok answer to a query in `QUERY_TYPES`, or a Failure naming what is missing."""
    match request:
        case rq.QueryClusterById(cluster_id=cluster_id):
            if cluster_id not in state.clusters:
                return failure(request_id, f"NotFound: cluster {cluster_id} does not exist")
            info = cluster_information(state, cluster_id)
            return ok(request_id, content=ClusterInformations(clusters=(info,)))
        case rq.QueryClustersByDomain(hostname=hostname, path=path):
            fronts = [*state.http_fronts.values(), *state.https_fronts.values()]
            ids = sorted(
                {
                    f.cluster_id
                    for f in fronts
                    if f.cluster_id is not None
                    and _domain_matches(hostname, path, f.hostname, f.path.value)
                }
            )
            infos = tuple(cluster_information(state, cluster_id) for cluster_id in ids)
            return ok(request_id, content=ClusterInformations(clusters=infos))
        case rq.QueryClustersHashes():
            return ok(request_id, content=ClusterHashes(map=state.cluster_hashes()))
        case rq.ListListeners():
            content = ListenersList(
                http=dict(state.http_listeners),
                https=dict(state.https_listeners),
                tcp=dict(state.tcp_listeners),
                udp=dict(state.udp_listeners),
            )
            return ok(request_id, content=content)
        case rq.ListFrontends():
            everything = not (request.http or request.https or request.tcp or request.udp)

            def wanted(flag: bool) -> bool:
                return everything or flag

            def host_ok(hostname: str) -> bool:
                return request.domain is None or request.domain in hostname

            return ok(
                request_id,
                content=FrontendList(
                    http=tuple(f for f in state.http_fronts.values() if host_ok(f.hostname))
                    if wanted(request.http)
                    else (),
                    https=tuple(f for f in state.https_fronts.values() if host_ok(f.hostname))
                    if wanted(request.https)
                    else (),
                    tcp=tuple(f for fs in state.tcp_fronts.values() for f in fs)
                    if wanted(request.tcp)
                    else (),
                    udp=tuple(f for fs in state.udp_fronts.values() for f in fs)
                    if wanted(request.udp)
                    else (),
                ),
            )
        case rq.QueryCertificatesFromTheState(domain=domain, fingerprint=fingerprint):
            summaries = tuple(
                CertificateSummary(
                    address=address,
                    fingerprint=fp,
                    names=stored.certificate.names,
                    # The expiry given with the certificate, else the certificate's own.
                    expired_at=(
                        stored.expired_at
                        if stored.expired_at is not None
                        else inspect_certificate(stored.certificate.certificate).not_after
                    ),
                )
                for address, by_fingerprint in sorted(state.certificates.items())
                for fp, stored in sorted(by_fingerprint.items())
                if (fingerprint is None or fp == fingerprint)
                and (domain is None or _any_covers(stored.certificate.names, domain))
            )
            return ok(request_id, content=CertificatesList(certificates=summaries))
        case rq.QueryHealthChecks(cluster_id=cluster_id):
            if cluster_id is not None and cluster_id not in state.clusters:
                return failure(request_id, f"NotFound: cluster {cluster_id} does not exist")
            checks = {
                cid: cluster.health_check
                for cid, cluster in sorted(state.clusters.items())
                if cluster.health_check is not None and cluster_id in (None, cid)
            }
            return ok(request_id, content=HealthChecksList(map=checks))
        case _:
            return failure(request_id, f"not a query: {rq.request_kind(request)}")


def _any_covers(names: tuple[str, ...], domain: str) -> bool:
    return any(_name_covers(name, domain) for name in names)


def _name_covers(name: str, domain: str) -> bool:
    """A certificate name equal to the domain, or a wildcard covering it (one label)."""
    domain = domain.lower().rstrip(".")
    if name == domain:
        return True
    return name.startswith("*.") and domain.partition(".")[2] == name[2:] and "." in domain
