"""The HTTP(S) CLI commands build the right requests: frontends, listeners, clusters,
certificates and health checks; bad flags and unreadable PEM files send nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from sozu.cli import daemon_client, routing_commands
from sozu.cli.certificate_commands import render_certificates
from sozu.cli.health_check_commands import render_health_checks
from sozu.cli.main import sozu
from sozu.cli.routing_commands import _render_frontends
from sozu.command import requests as rq
from sozu.command.certificates import fingerprint
from sozu.command.envelope import Response, ok
from sozu.command.requests import Request
from sozu.command.responses import (
    CertificatesList,
    CertificateSummary,
    FrontendList,
    HealthChecksList,
)
from sozu.command.types import (
    DEFAULT_TLS_VERSIONS,
    CertificateAndKey,
    Cluster,
    Header,
    HealthCheckConfig,
    HstsConfig,
    HttpListenerConfig,
    HttpsListenerConfig,
    PathRule,
    RequestHttpFrontend,
)

ADDRESS = "127.0.0.1:8080"
TLS_ADDRESS = "127.0.0.1:8443"


class Sent(list[Request]):
    """Requests the CLI would have sent, with the keyword arguments of each `send`."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[dict[str, Any]] = []


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    captured = Sent()

    def capture(ctx: click.Context, request: Request, render: Any = None, **options: Any) -> None:
        captured.append(daemon_client.checked(request))
        captured.options.append({"render": render, **options})

    monkeypatch.setattr(routing_commands, "send", capture)
    return captured


@pytest.fixture
def tls(tmp_path: Path, tls_files: dict[str, str]) -> Path:
    """The directory holding the PEM files of `tls_files`."""
    return tmp_path / "tls"


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(sozu, [str(arg) for arg in args])


def _ok(*args: str | Path) -> None:
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.exception is None


def _refused(*args: str | Path, needle: str = "") -> str:
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    return result.output


# ---------------------------------------------------------------------------------------------
# frontends


def test_frontend_http_add_with_every_option(sent: Sent) -> None:
    _ok(
        "frontend", "http", "add", "-a", ADDRESS, "--hostname", "Example.COM", "--id", "web",
        "--path-regex", "^/api/(.*)$", "--method", "POST", "--position", "pre",
        "--tags", "owner=team", "--tag", "env=prod",
        "--redirect", "permanent-redirect", "--redirect-scheme", "use-https",
        "--redirect-template", "moved", "--rewrite-host", "$HOST[1].internal",
        "--rewrite-path", "/v2/$PATH[1]", "--rewrite-port", "8081", "--required-auth",
        "--header", "request:X-From=sozu", "--header", "response:Server=",
        "--header", "both:X-Trace=1",
    )  # fmt: skip
    assert sent == [
        rq.AddHttpFrontend(
            frontend=RequestHttpFrontend(
                address=ADDRESS,
                hostname="example.com",
                cluster_id="web",
                path=PathRule(kind="REGEX", value="^/api/(.*)$"),
                method="POST",
                position="PRE",
                tags={"owner": "team", "env": "prod"},
                redirect="PERMANENT_REDIRECT",
                redirect_scheme="USE_HTTPS",
                redirect_template="moved",
                rewrite_host="$HOST[1].internal",
                rewrite_path="/v2/$PATH[1]",
                rewrite_port=8081,
                required_auth=True,
                headers=(
                    Header(position="REQUEST", key="X-From", val="sozu"),
                    Header(position="RESPONSE", key="Server", val=""),
                    Header(position="BOTH", key="X-Trace", val="1"),
                ),
            )
        )
    ]


def test_frontend_http_add_without_id_denies(sent: Sent) -> None:
    _ok("frontend", "http", "add", "-a", ADDRESS, "--hostname", "example.com")
    _ok("frontend", "http", "add", "-a", ADDRESS, "--host", "a.example", "--path", "/p")
    _ok("frontend", "http", "add", "-a", ADDRESS, "--hostname", "b.example", "--path-equals", "/")
    assert sent == [
        rq.AddHttpFrontend(frontend=RequestHttpFrontend(address=ADDRESS, hostname="example.com")),
        rq.AddHttpFrontend(
            frontend=RequestHttpFrontend(
                address=ADDRESS, hostname="a.example", path=PathRule(kind="PREFIX", value="/p")
            )
        ),
        rq.AddHttpFrontend(
            frontend=RequestHttpFrontend(
                address=ADDRESS, hostname="b.example", path=PathRule(kind="EQUALS", value="/")
            )
        ),
    ]
    assert sent[0].frontend.cluster_id is None  # type: ignore[attr-defined]


def test_frontend_https_add_with_hsts(sent: Sent) -> None:
    base = ("frontend", "https", "add", "-a", TLS_ADDRESS, "--hostname", "example.com", "-i", "w")
    _ok(*base, "--hsts", "--hsts-max-age", "600", "--hsts-include-subdomains", "--hsts-preload")
    _ok(*base, "--path-prefix", "/x", "--hsts-max-age", "60")
    _ok(*base, "--path-prefix", "/y", "--no-hsts")
    _ok(*base, "--path-prefix", "/z")
    hsts = [request.frontend.hsts for request in sent]  # type: ignore[attr-defined]
    assert hsts == [
        HstsConfig(enabled=True, max_age=600, include_subdomains=True, preload=True),
        HstsConfig(enabled=True, max_age=60),
        HstsConfig(enabled=False),
        None,
    ]
    assert all(isinstance(request, rq.AddHttpsFrontend) for request in sent)


def test_frontend_remove(sent: Sent) -> None:
    _ok(
        "frontend", "https", "remove", "-a", TLS_ADDRESS, "--hostname", "example.com",
        "--path-prefix", "/api", "-m", "GET",
    )  # fmt: skip
    _ok("frontend", "http", "remove", "-a", ADDRESS, "--hostname", "example.com", "--id", "web")
    assert sent == [
        rq.RemoveHttpsFrontend(
            frontend=RequestHttpFrontend(
                address=TLS_ADDRESS,
                hostname="example.com",
                path=PathRule(value="/api"),
                method="GET",
            )
        ),
        rq.RemoveHttpFrontend(
            frontend=RequestHttpFrontend(address=ADDRESS, hostname="example.com", cluster_id="web")
        ),
    ]


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--path-prefix", "/a", "--path-regex", "^/b"), "exclusive"),
        (("--path-equals", "/a", "--path", "/b"), "exclusive"),
        (("--path-regex", "(unclosed"), "--path-regex"),
        (("--header", "sideways:X=1"), "--header"),
        (("--header", "request:X-Bad"), "--header"),
        (("--header", "request:Bad Name=1"), "header name"),
        (("--tags", "novalue"), "KEY=VALUE"),
        (("--redirect", "elsewhere"), "--redirect"),
        (("--position", "middle"), "--position"),
        (("--rewrite-port", "0"), "--rewrite-port"),
        (("-m", "GE T"), "method"),
        (("--hsts",), "No such option"),
    ],
)
def test_frontend_http_add_refuses_bad_flags(
    sent: Sent, flags: tuple[str, ...], needle: str
) -> None:
    _refused("frontend", "http", "add", "-a", ADDRESS, "--hostname", "h", *flags, needle=needle)
    assert sent == []


def test_frontend_https_refuses_contradicting_hsts(sent: Sent) -> None:
    args = ("frontend", "https", "add", "-a", TLS_ADDRESS, "--hostname", "h")
    _refused(*args, "--no-hsts", "--hsts-preload", needle="--no-hsts")
    _refused("frontend", "https", "add", "-a", TLS_ADDRESS, needle="--hostname")
    _refused("frontend", "http", "add", "-a", "nowhere", "--hostname", "h", needle="address")
    assert sent == []


def test_frontend_list_filters(sent: Sent) -> None:
    _ok("frontend", "list", "--http", "--https", "-d", "example")
    _ok("frontend", "list")
    assert sent == [
        rq.ListFrontends(http=True, https=True, domain="example"),
        rq.ListFrontends(),
    ]


def test_frontend_list_shows_https_and_deny_frontends() -> None:
    content = FrontendList(
        https=(
            RequestHttpFrontend(
                address=TLS_ADDRESS, hostname="example.com", path=PathRule(value="/api")
            ),
        ),
    )
    lines = _render_frontends(ok("1", content=content)).splitlines()
    assert lines[1].split() == ["https", TLS_ADDRESS, "example.com", "*", "/api", "(deny)"]


# ---------------------------------------------------------------------------------------------
# the JSON document of a query, through the real `run`


@pytest.fixture
def answer(monkeypatch: pytest.MonkeyPatch) -> list[Response]:
    """Answers the daemon would give, one per call; the requests asked, in order."""
    answers: list[Response] = []
    asked: list[Request] = []

    def fake_call(ctx: click.Context, request: Request, **options: Any) -> Response:
        asked.append(request)
        return answers.pop(0)

    monkeypatch.setattr(daemon_client, "call", fake_call)
    return answers


def test_frontend_list_json(answer: list[Response]) -> None:
    front = RequestHttpFrontend(address=TLS_ADDRESS, hostname="example.com", cluster_id="w")
    answer.append(ok("1", content=FrontendList(https=(front,))))
    result = _invoke("frontend", "list", "--https", "-j")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["content"]["https"] == [
        {"address": TLS_ADDRESS, "hostname": "example.com", "cluster_id": "w"}
    ]


def test_certificate_list_address_filter_applies_to_json_and_text(answer: list[Response]) -> None:
    listing = CertificatesList(
        certificates=(
            CertificateSummary(address=TLS_ADDRESS, fingerprint="a" * 64, names=("example.com",)),
            CertificateSummary(address="127.0.0.1:9443", fingerprint="b" * 64),
        )
    )
    answer += [ok("1", content=listing), ok("2", content=listing)]
    result = _invoke("certificate", "list", "-a", "127.0.0.1:8443", "-j")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)["content"]["certificates"]
    assert [c["fingerprint"] for c in listed] == ["a" * 64]
    text = _invoke("certificate", "list", "--address", TLS_ADDRESS)
    assert text.exit_code == 0, text.output
    assert "a" * 64 in text.output
    assert "b" * 64 not in text.output


# ---------------------------------------------------------------------------------------------
# certificates


def test_certificate_add(sent: Sent, tls: Path, pems: dict[str, str]) -> None:
    _ok(
        "certificate", "add", "-a", TLS_ADDRESS,
        "--certificate", tls / "example.pem", "--key", tls / "example.key",
        "--certificate-chain", tls / "chain.pem",
        "--names", "Example.com", "--names", "www.example.com,api.example.com",
        "--tls-versions", "TLS_V12,TLSv1.3",
    )  # fmt: skip
    _ok("certificate", "add", "-a", TLS_ADDRESS, "--certificate", tls / "listener.pem",
        "--key", tls / "listener.key")  # fmt: skip
    assert sent == [
        rq.AddCertificate(
            address=TLS_ADDRESS,
            certificate=CertificateAndKey(
                certificate=pems["example.pem"],
                key=pems["example.key"],
                certificate_chain=(pems["chain.pem"].strip() + "\n",),
                versions=("TLS_V1_2", "TLS_V1_3"),
                names=("example.com", "www.example.com", "api.example.com"),
            ),
        ),
        rq.AddCertificate(
            address=TLS_ADDRESS,
            certificate=CertificateAndKey(
                certificate=pems["listener.pem"], key=pems["listener.key"]
            ),
        ),
    ]


def test_certificate_add_pem_errors_name_the_file(sent: Sent, tls: Path) -> None:
    missing = tls / "missing.pem"
    output = _refused(
        "certificate", "add", "-a", TLS_ADDRESS, "--certificate", missing,
        "--key", tls / "example.key",
    )  # fmt: skip
    assert str(missing) in output
    assert "--certificate" in output
    (tls / "garbage.pem").write_text("not a certificate\n")
    output = _refused(
        "certificate", "add", "-a", TLS_ADDRESS, "--certificate", tls / "garbage.pem",
        "--key", tls / "example.key",
    )  # fmt: skip
    assert "garbage.pem" in output
    output = _refused(
        "certificate", "add", "-a", TLS_ADDRESS, "--certificate", tls / "example.pem",
        "--key", tls / "listener.key",
    )  # fmt: skip
    assert "listener.key" in output
    assert "does not belong" in output
    output = _refused(
        "certificate", "add", "-a", TLS_ADDRESS, "--certificate", tls / "example.pem",
        "--key", tls / "example.pem",
    )  # fmt: skip
    assert "no PEM private key" in output
    output = _refused(
        "certificate", "add", "-a", TLS_ADDRESS, "--certificate", tls / "example.pem",
        "--key", tls / "example.key", "--certificate-chain", tls / "example.key",
    )  # fmt: skip
    assert "--certificate-chain" in output
    pair = ("--certificate", tls / "example.pem", "--key", tls / "example.key")
    _refused("certificate", "add", "-a", TLS_ADDRESS, *pair, "--tls-versions", "V9", needle="V9")
    _refused("certificate", "add", "-a", TLS_ADDRESS, "--key", tls / "example.key",
             needle="--certificate")  # fmt: skip
    assert sent == []


def test_certificate_replace(sent: Sent, tls: Path, pems: dict[str, str]) -> None:
    new = ("--new-certificate", tls / "listener.pem", "--new-key", tls / "listener.key")
    _ok("certificate", "replace", "-a", TLS_ADDRESS, *new,
        "--old-certificate", tls / "example.pem")  # fmt: skip
    _ok("certificate", "replace", "-a", TLS_ADDRESS, *new, "--old-fingerprint", "AB" * 32,
        "--new-certificate-chain", tls / "chain.pem", "--tls-versions", "TLS_V13")  # fmt: skip
    pair = CertificateAndKey(certificate=pems["listener.pem"], key=pems["listener.key"])
    assert sent == [
        rq.ReplaceCertificate(
            address=TLS_ADDRESS,
            new_certificate=pair,
            old_fingerprint=fingerprint(pems["example.pem"]),
        ),
        rq.ReplaceCertificate(
            address=TLS_ADDRESS,
            new_certificate=CertificateAndKey(
                certificate=pems["listener.pem"],
                key=pems["listener.key"],
                certificate_chain=(pems["chain.pem"].strip() + "\n",),
                versions=("TLS_V1_3",),
            ),
            old_fingerprint="ab" * 32,
        ),
    ]


def test_certificate_replace_needs_exactly_one_old_certificate(sent: Sent, tls: Path) -> None:
    new = ("--new-certificate", tls / "listener.pem", "--new-key", tls / "listener.key")
    args = ("certificate", "replace", "-a", TLS_ADDRESS, *new)
    _refused(*args, needle="--old-certificate")
    _refused(*args, "--old-certificate", tls / "example.pem", "-f", "a" * 64, needle="one of")
    _refused(*args, "--old-fingerprint", "xyz", needle="64 hex digits")
    output = _refused(*args, "--old-certificate", tls / "gone.pem")
    assert "gone.pem" in output
    _refused("certificate", "replace", "-a", TLS_ADDRESS, "--new-certificate",
             tls / "missing.pem", "--new-key", tls / "listener.key", "-f", "a" * 64,
             needle="missing.pem")  # fmt: skip
    assert sent == []


def test_certificate_remove(sent: Sent, tls: Path, pems: dict[str, str]) -> None:
    _ok("certificate", "remove", "-a", TLS_ADDRESS, "--certificate", tls / "example.pem")
    _ok("certificate", "remove", "-a", TLS_ADDRESS, "--fingerprint", "C" * 64)
    assert sent == [
        rq.RemoveCertificate(address=TLS_ADDRESS, fingerprint=fingerprint(pems["example.pem"])),
        rq.RemoveCertificate(address=TLS_ADDRESS, fingerprint="c" * 64),
    ]
    args = ("certificate", "remove", "-a", TLS_ADDRESS)
    _refused(*args, needle="one of")
    _refused(*args, "-f", "c" * 63, needle="64 hex digits")
    _refused(*args, "--certificate", tls / "example.key", needle="example.key")
    _refused(*args, "--certificate", tls / "absent.pem", needle="absent.pem")
    assert len(sent) == 2


def test_certificate_list(sent: Sent) -> None:
    _ok("certificate", "list")
    _ok("certificate", "list", "-d", "example.com", "-f", "D" * 64)
    _ok("certificate", "list", "-w")
    assert sent == [
        rq.QueryCertificatesFromTheState(),
        rq.QueryCertificatesFromTheState(domain="example.com", fingerprint="d" * 64),
        rq.QueryCertificatesFromWorkers(),
    ]
    assert [options["transform"] for options in sent.options] == [None, None, None]
    _refused("certificate", "list", "-a", "not-an-address", needle="--address")
    _refused("certificate", "list", "-f", "zz", needle="64 hex digits")


def test_render_certificates() -> None:
    listing = CertificatesList(
        certificates=(
            CertificateSummary(
                address=TLS_ADDRESS,
                fingerprint="e" * 64,
                names=("example.com", "www.example.com"),
                expired_at=0,
            ),
        )
    )
    lines = render_certificates(ok("1", content=listing)).splitlines()
    assert lines[0].split() == ["ADDRESS", "FINGERPRINT", "EXPIRES", "NAMES"]
    assert lines[1].split() == [
        TLS_ADDRESS, "e" * 64, "1970-01-01", "00:00:00", "example.com,", "www.example.com",
    ]  # fmt: skip
    assert render_certificates(ok("2", content=CertificatesList())) == "no certificates"


# ---------------------------------------------------------------------------------------------
# clusters and health checks


def test_cluster_add_http_options(sent: Sent, tmp_path: Path) -> None:
    (tmp_path / "503.html").write_text("HTTP/1.1 503 Busy\n\n")
    (tmp_path / "404.html").write_text("HTTP/1.1 404 Nope\n\n")
    digest = "0123456789abcdef" * 4
    _ok(
        "cluster", "add", "-i", "web", "--sticky-session", "--https-redirect",
        "--https-redirect-port", "8443", "--load-balancing-policy", "least_loaded",
        "--load-metric", "requests", "--answer-503", tmp_path / "503.html",
        "--answer", f"404={tmp_path / '404.html'}", "--authorized-hash", f"admin:{digest}",
        "--authorized-hash", f"ops:{digest.upper()}", "--www-authenticate", "staff",
        "--max-connections-per-ip", "20", "--retry-after", "30", "--http2",
    )  # fmt: skip
    assert sent == [
        rq.AddCluster(
            cluster=Cluster(
                cluster_id="web",
                sticky_session=True,
                https_redirect=True,
                https_redirect_port=8443,
                load_balancing="LEAST_LOADED",
                load_metric="REQUESTS",
                http2=True,
                answers={"404": "HTTP/1.1 404 Nope\n\n", "503": "HTTP/1.1 503 Busy\n\n"},
                authorized_hashes=(f"admin:{digest}", f"ops:{digest.upper()}"),
                www_authenticate="staff",
                max_connections_per_ip=20,
                retry_after=30,
            )
        )
    ]


@pytest.mark.parametrize(
    "policy", ["round_robin", "random", "least_loaded", "power_of_two", "hrw", "maglev"]
)
def test_cluster_add_load_balancing_policies(sent: Sent, policy: str) -> None:
    _ok("cluster", "add", "-i", "c", "--load-balancing-policy", policy)
    assert sent[0].cluster.load_balancing == policy.upper()  # type: ignore[attr-defined]


def test_cluster_add_refuses_bad_http_options(sent: Sent, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text("busy")
    args = ("cluster", "add", "-i", "web")
    _refused(*args, "--answer-503", page, "--answer", f"503={page}", needle="exclusive")
    _refused(*args, "--answer-503", tmp_path / "gone.html", needle="gone.html")
    _refused(*args, "--answer", f"600={page}", needle="status code")
    _refused(*args, "--answer", "404", needle="CODE=FILE")
    _refused(*args, "--answer", f"404={tmp_path / 'none.html'}", needle="none.html")
    _refused(*args, "--authorized-hash", "admin:secret", needle="--authorized-hash")
    _refused(*args, "--https-redirect-port", "0", needle="--https-redirect-port")
    _refused(*args, "--load-balancing-policy", "fastest", needle="--load-balancing-policy")
    assert sent == []


def test_health_check_commands(sent: Sent) -> None:
    _ok(
        "cluster", "health-check", "set", "--id", "web", "--uri", "/health",
        "--interval", "2", "--timeout", "1", "--healthy-threshold", "4",
        "--unhealthy-threshold", "5", "--expected-status", "204",
    )  # fmt: skip
    _ok("cluster", "health-check", "set", "-i", "api", "-u", "/ping")
    _ok("cluster", "health-check", "remove", "--id", "web")
    _ok("cluster", "health-check", "list")
    _ok("cluster", "health-check", "list", "--id", "api")
    assert sent == [
        rq.SetHealthCheck(
            cluster_id="web",
            health_check=HealthCheckConfig(
                uri="/health",
                interval=2,
                timeout=1,
                healthy_threshold=4,
                unhealthy_threshold=5,
                expected_status=204,
            ),
        ),
        rq.SetHealthCheck(cluster_id="api", health_check=HealthCheckConfig(uri="/ping")),
        rq.RemoveHealthCheck(cluster_id="web"),
        rq.QueryHealthChecks(),
        rq.QueryHealthChecks(cluster_id="api"),
    ]


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("-u", "health"), "must start with '/'"),
        (("-u", "/a\r\nb"), "control characters"),
        (("-u", "/h", "--interval", "0"), "interval must be greater than 0"),
        (("-u", "/h", "--unhealthy-threshold", "0"), "unhealthy_threshold"),
        (("-u", "/h", "--expected-status", "700"), "not an HTTP status"),
        (("-u", "/h", "--timeout", "-1"), "--timeout"),
        (
            (
                "--interval",
                "3",
            ),
            "--uri",
        ),
    ],
)
def test_health_check_set_refuses_bad_values(
    sent: Sent, flags: tuple[str, ...], needle: str
) -> None:
    _refused("cluster", "health-check", "set", "-i", "web", *flags, needle=needle)
    assert sent == []


def test_render_health_checks() -> None:
    checks = HealthChecksList(map={"web": HealthCheckConfig(uri="/health", expected_status=204)})
    lines = render_health_checks(ok("1", content=checks)).splitlines()
    assert lines[0].split()[:2] == ["CLUSTER", "URI"]
    assert lines[1].split() == ["web", "/health", "10", "5", "3", "3", "204"]
    assert render_health_checks(ok("2", content=HealthChecksList())) == "no health checks"


# ---------------------------------------------------------------------------------------------
# listeners


def test_listener_http_add_and_update(sent: Sent, tmp_path: Path) -> None:
    (tmp_path / "404.html").write_text("not here")
    (tmp_path / "empty.html").write_text("")
    _ok(
        "listener", "http", "add", "-a", ADDRESS, "--public-address", "10.0.0.1:80",
        "--answer", f"404={tmp_path / '404.html'}", "--sticky-name", "STICKY",
        "--front-timeout", "61", "--back-timeout", "31", "--connect-timeout", "4",
        "--request-timeout", "11", "--sozu-id-header", "X-Request-Id", "--send-x-real-ip",
    )  # fmt: skip
    _ok("listener", "http", "add", "-a", "127.0.0.1:8081", "--expect-proxy")
    _ok(
        "listener", "http", "update", "-a", ADDRESS, "--answer", f"404={tmp_path / 'empty.html'}",
        "--no-expect-proxy", "--request-timeout", "5", "--sozu-id-header", "X-Id",
        "--h2-max-concurrent-streams", "50",
    )  # fmt: skip
    assert sent == [
        rq.AddHttpListener(
            listener=HttpListenerConfig(
                address=ADDRESS,
                public_address="10.0.0.1:80",
                answers={"404": "not here"},
                sticky_name="STICKY",
                front_timeout=61,
                back_timeout=31,
                connect_timeout=4,
                request_timeout=11,
                sozu_id_header="X-Request-Id",
                send_x_real_ip=True,
            )
        ),
        rq.AddHttpListener(
            listener=HttpListenerConfig(address="127.0.0.1:8081", expect_proxy=True)
        ),
        rq.UpdateHttpListener(
            address=ADDRESS,
            answers={"404": ""},
            expect_proxy=False,
            request_timeout=5,
            sozu_id_header="X-Id",
            h2_max_concurrent_streams=50,
        ),
    ]


def test_listener_https_add(sent: Sent, tls: Path, pems: dict[str, str]) -> None:
    _ok(
        "listener", "https", "add", "-a", TLS_ADDRESS,
        "--certificate", tls / "example.pem", "--key", tls / "example.key",
        "--certificate-chain", tls / "chain.pem", "--tls-versions", "TLS_V13",
        "--cipher-list", "ECDHE-RSA-AES128-GCM-SHA256,ECDHE-RSA-AES256-GCM-SHA384",
        "--alpn-protocols", "h2", "--no-strict-sni-binding", "--disable-http11",
        "--hsts", "--hsts-max-age", "100", "--sticky-name", "S",
    )  # fmt: skip
    _ok("listener", "https", "add", "-a", "127.0.0.1:9443")
    assert sent == [
        rq.AddHttpsListener(
            listener=HttpsListenerConfig(
                address=TLS_ADDRESS,
                certificate=pems["example.pem"],
                key=pems["example.key"],
                certificate_chain=(pems["chain.pem"].strip() + "\n",),
                versions=("TLS_V1_3",),
                cipher_list=("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"),
                alpn_protocols=("h2",),
                strict_sni_binding=False,
                disable_http11=True,
                hsts=HstsConfig(enabled=True, max_age=100),
                sticky_name="S",
            )
        ),
        rq.AddHttpsListener(listener=HttpsListenerConfig(address="127.0.0.1:9443")),
    ]
    assert sent[1].listener.versions == DEFAULT_TLS_VERSIONS  # type: ignore[attr-defined]


def test_listener_https_update(sent: Sent) -> None:
    _ok(
        "listener", "https", "update", "-a", TLS_ADDRESS, "--tls-versions", "TLS_V12",
        "--tls-versions", "TLS_V13", "--alpn-protocols", "h2", "--alpn-protocols", "http/1.1",
        "--strict-sni-binding", "--enable-http11", "--no-hsts", "--front-timeout", "9",
    )  # fmt: skip
    assert sent == [
        rq.UpdateHttpsListener(
            address=TLS_ADDRESS,
            versions=("TLS_V1_2", "TLS_V1_3"),
            alpn_protocols=("h2", "http/1.1"),
            strict_sni_binding=True,
            disable_http11=False,
            hsts=HstsConfig(enabled=False),
            front_timeout=9,
        )
    ]


def test_listener_https_refuses_bad_flags(sent: Sent, tls: Path) -> None:
    add = ("listener", "https", "add", "-a", TLS_ADDRESS)
    _refused(*add, "--certificate", tls / "example.pem", needle="--key")
    _refused(*add, "--certificate-chain", tls / "chain.pem", needle="--certificate")
    _refused(*add, "--certificate", tls / "nope.pem", "--key", tls / "example.key",
             needle="nope.pem")  # fmt: skip
    _refused(*add, "--certificate", tls / "example.pem", "--key", tls / "listener.key",
             needle="listener.key")  # fmt: skip
    _refused(*add, "--alpn-protocols", "h3", needle="--alpn-protocols")
    _refused(*add, "--disable-http11", "--alpn-protocols", "h2,http/1.1", needle="http/1.1")
    _refused(*add, "--tls-versions", "TLS_V2", needle="TLS_V2")
    _refused(*add, "--public-address", "10.0.0.1:443", "--expect-proxy", needle="exclusive")
    _refused("listener", "https", "update", "-a", TLS_ADDRESS, "--certificate",
             tls / "example.pem", needle="No such option")  # fmt: skip
    _refused("listener", "http", "add", "-a", ADDRESS, "--hsts", needle="No such option")
    _refused("listener", "http", "add", "-a", ADDRESS, "--answer", "404=/nonexistent/file",
             needle="/nonexistent/file")  # fmt: skip
    assert sent == []


def test_listener_tcp_update(sent: Sent) -> None:
    _ok(
        "listener", "tcp", "update", "-a", "127.0.0.1:9000", "--expect-proxy", "--back-timeout", "7"
    )
    _ok("listener", "tcp", "add", "-a", "127.0.0.1:9001", "--connect-timeout", "2")
    assert sent[0] == rq.UpdateTcpListener(
        address="127.0.0.1:9000", expect_proxy=True, back_timeout=7
    )
    assert isinstance(sent[1], rq.AddTcpListener)
    assert sent[1].listener.connect_timeout == 2
    _refused("listener", "tcp", "add", "-a", "127.0.0.1:9001", "--sticky-name", "x",
             needle="No such option")  # fmt: skip
