"""Certificate and health-check queries answered from a state (`sozu certificate list`,
`sozu cluster health-check list`)."""

from __future__ import annotations

from support.certs import certificate

from sozu.command import requests as rq
from sozu.command.responses import CertificatesList, HealthChecksList
from sozu.command.state import ConfigState
from sozu.command.state_queries import answer_query
from sozu.command.types import Cluster, HealthCheckConfig, HttpsListenerConfig

HTTPS = "127.0.0.1:8443"


def _state() -> ConfigState:
    state = ConfigState()
    assert state.apply(rq.AddHttpsListener(listener=HttpsListenerConfig(address=HTTPS)))
    for names in (("example.com", "*.example.com"), ("other.test",)):
        cert = certificate(*names)
        state.apply(rq.AddCertificate(address=HTTPS, certificate=cert.as_request_payload()))
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="web")))
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="api")))
    state.apply(rq.SetHealthCheck(cluster_id="api", health_check=HealthCheckConfig(uri="/health")))
    return state


def _certificates(state: ConfigState, **filters: str) -> CertificatesList:
    response = answer_query(state, "q", rq.QueryCertificatesFromTheState(**filters))
    assert response.status == "ok", response.message
    assert isinstance(response.content, CertificatesList)
    return response.content


def test_certificates_listed_and_filtered() -> None:
    state = _state()
    everything = _certificates(state)
    assert len(everything.certificates) == 2
    assert {c.address for c in everything.certificates} == {HTTPS}
    wildcard = _certificates(state, domain="www.example.com")
    assert [c.names for c in wildcard.certificates] == [("example.com", "*.example.com")]
    assert _certificates(state, domain="a.b.example.com").certificates == ()
    wanted = certificate("other.test").fingerprint
    by_fingerprint = _certificates(state, fingerprint=wanted)
    assert [c.fingerprint for c in by_fingerprint.certificates] == [wanted]


def test_health_checks_listed() -> None:
    state = _state()
    response = answer_query(state, "q", rq.QueryHealthChecks())
    assert isinstance(response.content, HealthChecksList)
    assert response.content.map == {"api": HealthCheckConfig(uri="/health")}
    response = answer_query(state, "q", rq.QueryHealthChecks(cluster_id="web"))
    assert isinstance(response.content, HealthChecksList)
    assert response.content.map == {}
    missing = answer_query(state, "q", rq.QueryHealthChecks(cluster_id="nope"))
    assert missing.status == "failure"
    assert "nope" in (missing.message or "")
