"""HTTPS listeners through the real daemon (docs/http.md, TLS): SNI picks the
certificate and the host routes, the served SAN must cover the authority (421), curl end to
end with a 10 MB download, a certificate replaced live, and a client without SNI refused."""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.http_backends import Reader, Response, cluster, listener, read_response
from e2e.support.net import free_port
from e2e.support.nginx import BIG_FILE_SIZE, Nginx, nginx_backends
from e2e.support.programs import require_program

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 15.0


@dataclass(frozen=True)
class Pem:
    """A certificate and its key written as PEM files."""

    certificate: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        der = ssl.PEM_cert_to_DER_cert(self.certificate.read_text())
        return hashlib.sha256(der).hexdigest()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def issue(ca: trustme.CA, directory: Path, stem: str, *names: str) -> Pem:
    issued = ca.issue_cert(*names)
    pem = Pem(directory / f"{stem}.crt", directory / f"{stem}.key")
    issued.cert_chain_pems[0].write_to_path(str(pem.certificate))
    issued.private_key_pem.write_to_path(str(pem.key))
    return pem


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@dataclass(frozen=True)
class Handshake:
    """What one TLS connection saw: the served certificate and the response to a GET."""

    names: tuple[str, ...]
    fingerprint: str
    response: Response


def https_get(
    port: int, context: ssl.SSLContext, sni: str, host: str | None = None, path: str = "/"
) -> Handshake:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        certificate = tls.getpeercert()
        der = tls.getpeercert(binary_form=True)
        assert certificate is not None
        assert der is not None
        sans = certificate.get("subjectAltName", ())
        assert isinstance(sans, tuple)
        names = tuple(str(value) for kind, value in sans if kind == "DNS")
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or sni}\r\n\r\n".encode())
        response = read_response(Reader(tls))
    assert response is not None
    return Handshake(names, hashlib.sha256(der).hexdigest(), response)


@dataclass
class Site:
    daemon: Daemon
    port: int
    nginx: Nginx
    pems: dict[str, Pem]


@pytest.fixture
def site(start_daemon: DaemonFactory, tmp_path: Path, ca: trustme.CA) -> Iterator[Site]:
    """An HTTPS listener: `alpha.test` (its own certificate) -> nginx `alpha`,
    `beta.test` (another certificate) -> nginx `beta`."""
    listen = free_port()
    address = f"127.0.0.1:{listen}"
    pems = {
        "alpha": issue(ca, tmp_path, "alpha", "alpha.test"),
        "beta": issue(ca, tmp_path, "beta", "beta.test"),
    }
    with nginx_backends(tmp_path / "nginx", "alpha", "beta") as nginx:
        config = listener(listen, "https")
        for name, pem in pems.items():
            frontend: dict[str, object] = {
                "address": address,
                "hostname": f"{name}.test",
                "certificate": str(pem.certificate),
                "key": str(pem.key),
            }
            config += cluster(
                name, [frontend], [{"address": nginx.address(name), "backend_id": name}]
            )
        daemon = start_daemon(extra=config)
        yield Site(daemon, listen, nginx, pems)


def test_sni_selects_the_certificate_and_the_host_routes(site: Site, ca: trustme.CA) -> None:
    context = client_context(ca)
    for name in ("alpha", "beta"):
        seen = https_get(site.port, context, f"{name}.test")
        assert seen.names == (f"{name}.test",)
        assert seen.fingerprint == site.pems[name].fingerprint
        assert seen.response.status == 200
        assert seen.response.body == f"{name}\n".encode()
        assert seen.response.header("x-backend") == [name]

    # An authority the served certificate does not cover: 421, not routed.
    misdirected = https_get(site.port, context, "alpha.test", host="beta.test")
    assert misdirected.response.status == 421

    # The same, seen by openssl s_client.
    openssl = require_program("openssl")
    served = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{site.port}", "-servername", "beta.test"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "-----BEGIN CERTIFICATE-----" in served.stdout, served.stdout + served.stderr
    san = subprocess.run(
        [openssl, "x509", "-noout", "-ext", "subjectAltName"],
        input=served.stdout,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "DNS:beta.test" in san.stdout
    assert "alpha.test" not in san.stdout


def test_curl_over_https_end_to_end(site: Site, ca: trustme.CA, tmp_path: Path) -> None:
    curl = require_program("curl")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    base = [curl, "-sS", "--cacert", str(ca_file), "--resolve", f"alpha.test:{site.port}:127.0.0.1"]
    result = subprocess.run(
        [*base, f"https://alpha.test:{site.port}/headers"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "request: GET /headers HTTP/1.1" in lines
    assert "x-forwarded-proto: https" in lines
    assert f"x-forwarded-port: {site.port}" in lines
    assert "x-forwarded-for: 127.0.0.1" in lines

    downloaded = tmp_path / "big.bin"
    result = subprocess.run(
        [*base, "-o", str(downloaded), f"https://alpha.test:{site.port}/files/big.bin"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert downloaded.stat().st_size == BIG_FILE_SIZE
    assert downloaded.read_bytes() == site.nginx.big_file.read_bytes()


def test_certificate_replaced_live_is_served_on_the_next_handshake(
    site: Site, ca: trustme.CA, tmp_path: Path
) -> None:
    context = client_context(ca)
    old = site.pems["alpha"]
    new = issue(ca, tmp_path, "alpha-new", "alpha.test", "www.alpha.test")
    assert new.fingerprint != old.fingerprint
    address = f"127.0.0.1:{site.port}"

    with (
        socket.create_connection(("127.0.0.1", site.port), timeout=IO_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="alpha.test") as opened,
    ):
        der = opened.getpeercert(binary_form=True)
        assert der is not None
        assert hashlib.sha256(der).hexdigest() == old.fingerprint

        result = site.daemon.sozu(
            "certificate",
            "replace",
            "-a",
            address,
            "--new-certificate",
            str(new.certificate),
            "--new-key",
            str(new.key),
            "--old-certificate",
            str(old.certificate),
        )
        assert result.returncode == 0, result.stderr + result.stdout

        # Every worker applied the command before it was acknowledged; the poll only guards
        # against a handshake landing on a worker a few milliseconds behind.
        seen = wait_for(
            lambda: (
                s
                if (s := https_get(site.port, context, "alpha.test")).fingerprint == new.fingerprint
                else None
            ),
            timeout=10,
            what="the new certificate served",
        )
        assert set(seen.names) == {"alpha.test", "www.alpha.test"}
        assert seen.response.body == b"alpha\n"
        for _ in range(4):
            assert https_get(site.port, context, "alpha.test").fingerprint == new.fingerprint

        # The connection opened before the replacement keeps working.
        opened.sendall(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        response = read_response(Reader(opened))
        assert response is not None
        assert response.status == 200

    listed = site.daemon.sozu("-j", "certificate", "list")
    assert listed.returncode == 0, listed.stderr
    assert new.fingerprint in listed.stdout
    assert old.fingerprint not in listed.stdout
    # The other hostname's certificate is untouched.
    assert https_get(site.port, context, "beta.test").fingerprint == site.pems["beta"].fingerprint


def test_client_without_sni_gets_a_handshake_failure(site: Site, ca: trustme.CA) -> None:
    context = client_context(ca)
    context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", site.port), timeout=IO_TIMEOUT) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname=None).close()

    openssl = require_program("openssl")
    result = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{site.port}", "-noservername"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "-----BEGIN CERTIFICATE-----" not in result.stdout

    # The listener still serves clients that send SNI.
    assert https_get(site.port, client_context(ca), "alpha.test").response.status == 200


def test_default_certificate_and_disable_http11(
    start_daemon: DaemonFactory, tmp_path: Path, ca: trustme.CA
) -> None:
    """A listener with a default certificate serves it to a client without SNI (and to an
    unknown SNI); with `disable_http11` (h2 is not offered) every connection is dropped right
    after its handshake."""
    served, refused = free_port(), free_port()
    default = issue(ca, tmp_path, "default", "default.test")
    with nginx_backends(tmp_path / "nginx", "web") as nginx:
        config = listener(
            served, "https", certificate=str(default.certificate), key=str(default.key)
        )
        config += listener(
            refused,
            "https",
            certificate=str(default.certificate),
            key=str(default.key),
            disable_http11=True,
        )
        config += 'alpn_protocols = ["h2"]\n'
        config += cluster(
            "web",
            [
                {"address": f"127.0.0.1:{port}", "hostname": "default.test"}
                for port in (served, refused)
            ],
            [{"address": nginx.address("web"), "backend_id": "web"}],
        )
        start_daemon(extra=config)
        context = client_context(ca)
        context.check_hostname = False
        with (
            socket.create_connection(("127.0.0.1", served), timeout=IO_TIMEOUT) as raw,
            context.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            assert hashlib.sha256(der).hexdigest() == default.fingerprint
            tls.sendall(b"GET / HTTP/1.1\r\nHost: default.test\r\n\r\n")
            response = read_response(Reader(tls))
        assert response is not None
        assert response.status == 200
        unknown = https_get(served, client_context(ca), "default.test", path="/")
        assert unknown.fingerprint == default.fingerprint

        with (
            socket.create_connection(("127.0.0.1", refused), timeout=IO_TIMEOUT) as raw,
            client_context(ca).wrap_socket(raw, server_hostname="default.test") as tls,
        ):
            try:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: default.test\r\n\r\n")
                data = tls.recv(1024)
            except (ssl.SSLError, OSError):
                data = b""
            assert data == b"", "an http/1.1 connection must be dropped after its handshake"


def test_sessions_resume_whichever_worker_accepts(site: Site, ca: trustme.CA) -> None:
    """Both workers open each other's session tickets (the supervisor gives them the same
    keys): a client that offers its last session is resumed on every new connection, whichever
    worker accepts it, and both workers do accept some."""
    context = client_context(ca)
    session: ssl.SSLSession | None = None
    resumed: list[bool] = []
    handshakes: dict[str, float] = {}
    resumptions: dict[str, float] = {}
    for attempt in range(1, 301):
        with (
            socket.create_connection(("127.0.0.1", site.port), timeout=IO_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname="alpha.test", session=session) as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n")
            response = read_response(Reader(tls))
            assert response is not None
            assert response.status == 200
            if session is not None:
                resumed.append(bool(tls.session_reused))
            session = tls.session
        if attempt % 10 == 0:
            handshakes, resumptions = _per_worker_handshakes(site)
            if len(handshakes) == 2 and min(handshakes.values()) >= 5:
                break
    assert len(handshakes) == 2, handshakes
    assert min(handshakes.values()) >= 5, handshakes
    assert resumed
    assert all(resumed), f"{resumed.count(False)} of {len(resumed)} not resumed"
    # One full handshake (the first connection); the counters say the same.
    assert sum(handshakes.values()) == len(resumed) + 1
    assert sum(resumptions.values()) == len(resumed)


def _per_worker_handshakes(site: Site) -> tuple[dict[str, float], dict[str, float]]:
    """(handshakes, resumed handshakes) of the listener, by worker id."""
    names = "sozu_https_handshakes_total,sozu_https_resumed_handshakes_total"
    answer = site.daemon.sozu_json("metrics", "get", "--workers", "-n", names)
    key = f'{{listener="127.0.0.1:{site.port}"}}'
    handshakes: dict[str, float] = {}
    resumptions: dict[str, float] = {}
    for worker, metrics in answer["content"]["workers"].items():
        handshakes[worker] = metrics[f"sozu_https_handshakes_total{key}"]["value"]
        resumptions[worker] = metrics[f"sozu_https_resumed_handshakes_total{key}"]["value"]
    return handshakes, resumptions
