"""A fleet: real etcd, real daemons following the desired state kept there.

Three instances converge on what `sozu fleet push` writes and route real HTTP, TCP and UDP
traffic by it (the second and third bind the fleet's listeners on 127.0.0.2 and 127.0.0.3
through `[etcd] address_map`, as instances cannot share one address on one machine); they
refuse local state changes; an invalid object put with `etcdctl` is refused whole by all,
naming the key and revision, until it is removed; with etcd stopped they keep serving, and
catch up once it is back.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.support.backends import NamedEcho
from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.etcd import EtcdMember, start_cluster
from e2e.support.net import free_port, prometheus_series
from e2e.support.udp_backends import NamedUdpEcho
from e2e.test_etcd_client import make_tls
from sozu.supervisor.fleet_sync import REPORT_LEASE_TTL

pytestmark = pytest.mark.e2e

CONVERGE = 10.0
PREFIX = "/fleet-test"
HOST = "fleet.test"


class NamedHttp:
    """An HTTP server on 127.0.0.1 answering every GET with its name."""

    def __init__(self, name: str) -> None:
        body = name.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends() -> Iterator[dict[str, NamedHttp]]:
    servers = {name: NamedHttp(name) for name in ("alpha", "beta")}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.close()


def desired(
    port: int,
    backend: NamedHttp,
    name: str,
    tcp: tuple[int, str] | None = None,
    udp: tuple[int, str] | None = None,
) -> str:
    """An HTTP route to `backend`; with `tcp` (or `udp`) = (port, backend address), a TCP (or
    UDP) route too."""
    text = (
        f'[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:{port}"\n\n'
        f'[clusters.web]\nprotocol = "http"\n'
        f'frontends = [{{ address = "127.0.0.1:{port}", hostname = "{HOST}" }}]\n'
        f'backends = [{{ address = "{backend.address}", backend_id = "{name}" }}]\n'
    )
    if tcp is not None:
        tcp_port, echo = tcp
        text += (
            f'\n[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:{tcp_port}"\n\n'
            f'[clusters.db]\nprotocol = "tcp"\n'
            f'frontends = [{{ address = "127.0.0.1:{tcp_port}" }}]\n'
            f'backends = [{{ address = "{echo}", backend_id = "echo" }}]\n'
        )
    if udp is not None:
        udp_port, dns = udp
        text += (
            f'\n[[listeners]]\nprotocol = "udp"\naddress = "127.0.0.1:{udp_port}"\n'
            "front_timeout = 1\nback_timeout = 1\n\n"
            f'[clusters.dns]\nprotocol = "tcp"\n'
            f'frontends = [{{ address = "127.0.0.1:{udp_port}" }}]\n'
            f'backends = [{{ address = "{dns}", backend_id = "dns" }}]\n\n'
            f'[clusters.dns.udp]\naffinity_key = "SOURCE_IP_PORT"\n'
        )
    return text


def udp_answer(host: str, port: int, payload: bytes) -> bytes | None:
    """The answer to one datagram sent through the proxy at host:port (None: no answer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        sock.sendto(payload, (host, port))
        try:
            return sock.recv(65535)
        except OSError:
            return None


def tcp_greeting(address: str) -> str | None:
    """The name a NamedEcho backend says first, through the proxy at `address`."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    return data.decode().strip()


def etcd_section(etcd: EtcdMember, instance: str, mapped: str = "") -> str:
    return (
        f'[etcd]\nendpoints = ["{etcd.endpoint}"]\nprefix = "{PREFIX}"\n'
        f'instance_id = "{instance}"\nretry_min = 0.1\nretry_max = 0.5\n{mapped}'
    )


def served_by(address: str) -> str | None:
    try:
        response = httpx.get(f"http://{address}/", headers={"Host": HOST}, timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def fleet_of(daemon: Daemon) -> dict[str, Any]:
    status = daemon.status()
    assert status is not None
    fleet: dict[str, Any] = status["fleet"]
    return fleet


@pytest.fixture
def echo() -> Iterator[NamedEcho]:
    server = NamedEcho("echo-1")
    try:
        yield server
    finally:
        server.close()


def test_three_instances_follow_etcd(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    etcd: EtcdMember,
    start_daemon: DaemonFactory,
    backends: dict[str, NamedHttp],
    echo: NamedEcho,
) -> None:
    port, tcp_port, udp_port = free_port(), free_port(), free_port()
    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    fronts = {host: f"{host}:{port}" for host in hosts}

    def moved(host: str) -> str:
        return "[etcd.address_map]\n" + "".join(
            f'"127.0.0.1:{p}" = "{host}:{p}"\n' for p in (port, tcp_port, udp_port)
        )

    a = start_daemon(name="a", extra=etcd_section(etcd, "inst-a"))
    b = start_daemon(name="b", extra=etcd_section(etcd, "inst-b", moved(hosts[1])))
    c = start_daemon(name="c", extra=etcd_section(etcd, "inst-c", moved(hosts[2])))
    fleet = (a, b, c)
    dns = NamedUdpEcho("dns-1")
    request.addfinalizer(dns.close)

    def converge_on(name: str) -> None:
        for front in fronts.values():
            wait_for(
                lambda front=front: served_by(front) == name or None,  # type: ignore[misc]
                timeout=CONVERGE,
                what=f"{front} served by {name}",
            )
        for daemon in fleet:
            wait_for(daemon.running_status, timeout=CONVERGE, what="every worker's hash equal")

    def push(name: str) -> dict[str, Any]:
        path = tmp_path / f"desired-{name}.toml"
        routes = desired(
            port, backends[name], name, (tcp_port, echo.address), (udp_port, dns.address)
        )
        path.write_text(routes)
        result = a.sozu("-j", "fleet", "push", "-f", str(path))
        assert result.returncode == 0, result.stderr + result.stdout
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    # Converge on a pushed state, through both instances.
    pushed = push("alpha")
    assert pushed["puts"] == 12  # (listener, cluster, frontend, backend) x (http, tcp, udp)
    assert pushed["transactions"] == 1
    converge_on("alpha")
    for host in hosts:
        assert tcp_greeting(f"{host}:{tcp_port}") == "echo-1"
        assert udp_answer(host, udp_port, b"q") == b"dns-1:q"
    assert fleet_of(a)["phase"] == "following"
    assert fleet_of(b)["applied_revision"] >= pushed["revision"]

    # A change reaches both.
    push("beta")
    converge_on("beta")

    # Local state changes are refused while following etcd.
    refused = b.sozu("cluster", "add", "-i", "local")
    assert refused.returncode == 1
    assert "follows the desired state in etcd" in refused.stderr + refused.stdout

    # An invalid object: refused whole by both, naming key and revision; fixed, converged.
    bad_key = f"{PREFIX}/state/backends/web/broken"
    put = etcd.etcdctl(
        "put",
        "-w",
        "json",
        bad_key,
        '{"type":"AddBackend","backend":{"cluster_id":"web","backend_id":"broken",'
        '"address":"not-an-address"}}',
    )
    assert put.returncode == 0, put.stderr
    bad_revision = int(json.loads(put.stdout)["header"]["revision"])
    for daemon in fleet:
        refusal = wait_for(
            lambda d=daemon: fleet_of(d).get("refused"),  # type: ignore[misc]
            timeout=CONVERGE,
            what="refusal reported",
        )
        assert refusal["key"] == bad_key
        assert refusal["revision"] == bad_revision
        assert "invalid value" in refusal["message"]
    assert all(served_by(front) == "beta" for front in fronts.values())
    status = a.sozu("fleet", "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.count(f"refused {bad_key} at revision {bad_revision}") == 3, status.stdout
    assert etcd.etcdctl("del", bad_key).returncode == 0
    for daemon in fleet:
        wait_for(
            lambda d=daemon: "refused" not in fleet_of(d) or None,  # type: ignore[misc]
            timeout=CONVERGE,
            what="refusal cleared",
        )

    # etcd gone: every instance keeps serving; back: they catch up.
    etcd.stop()
    for daemon in fleet:
        wait_for(
            lambda d=daemon: fleet_of(d)["phase"] == "unreachable" or None,  # type: ignore[misc]
            timeout=CONVERGE,
            what="etcd seen unreachable",
        )
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert [served_by(front) for front in fronts.values()] == ["beta"] * 3
    etcd.start_again()
    push("alpha")
    converge_on("alpha")
    status_document = json.loads(a.sozu("-j", "fleet", "status").stdout)
    instances = {i["instance_id"]: i for i in status_document["instances"]}
    assert set(instances) == {"inst-a", "inst-b", "inst-c"}
    assert all(i["converged"] for i in instances.values()), instances
    assert all(len(i["workers"]) == 2 for i in instances.values()), instances


def test_a_half_written_generation_is_not_applied(
    tmp_path: Path, etcd: EtcdMember, start_daemon: DaemonFactory, backends: dict[str, NamedHttp]
) -> None:
    """A multi-batch push: nothing is applied until its generation key says complete."""
    port = free_port()
    daemon = start_daemon(name="a", extra=etcd_section(etcd, "inst-a"))
    first = tmp_path / "first.toml"
    first.write_text(desired(port, backends["alpha"], "alpha"))
    assert daemon.sozu("fleet", "push", "-f", str(first)).returncode == 0
    wait_for(lambda: served_by(f"127.0.0.1:{port}") == "alpha" or None, timeout=CONVERGE)

    generation = f"{PREFIX}/state/generation"
    assert etcd.etcdctl("put", generation, '{"generation": 7, "complete": false}').returncode == 0
    wait_for(
        lambda: fleet_of(daemon)["phase"] == "waiting_generation" or None,
        timeout=CONVERGE,
        what="waiting for the generation",
    )
    change = (
        '{"type":"AddBackend","backend":{"cluster_id":"web","backend_id":"beta",'
        f'"address":"{backends["beta"].address}"}}}}'
    )
    assert etcd.etcdctl("del", f"{PREFIX}/state/backends/web/alpha").returncode == 0
    assert etcd.etcdctl("put", f"{PREFIX}/state/backends/web/beta", change).returncode == 0
    time.sleep(1)
    assert served_by(f"127.0.0.1:{port}") == "alpha"
    assert etcd.etcdctl("put", generation, '{"generation": 7, "complete": true}').returncode == 0
    wait_for(lambda: served_by(f"127.0.0.1:{port}") == "beta" or None, timeout=CONVERGE)
    assert fleet_of(daemon)["generation"] == 7

    # A push larger than one transaction: batches, then the flip.
    many = tmp_path / "many.toml"
    clusters = "".join(
        f'[clusters.c{i}]\nprotocol = "tcp"\n'
        f'backends = [{{ address = "127.0.0.1:{1000 + i}", backend_id = "b{i}" }}]\n'
        for i in range(150)
    )
    many.write_text(desired(port, backends["alpha"], "alpha") + clusters)
    result = daemon.sozu("-j", "fleet", "push", "-f", str(many))
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)
    assert pushed["transactions"] == 5, pushed  # open, 3 batches (302 changes), flip
    assert pushed["generation"] == 8
    wait_for(lambda: served_by(f"127.0.0.1:{port}") == "alpha" or None, timeout=CONVERGE)
    status = wait_for(daemon.running_status, timeout=CONVERGE)
    assert status["fleet"]["applied_revision"] == pushed["revision"]
    diff = daemon.sozu("fleet", "diff", "-f", str(first))
    assert diff.returncode == 0
    assert diff.stdout.count("\n- ") + diff.stdout.startswith("- ") == 300


def test_etcd_with_tls_and_authentication(
    tmp_path: Path, start_daemon: DaemonFactory, backends: dict[str, NamedHttp]
) -> None:
    """Private keys of certificates live in etcd: the instance speaks TLS with a client
    certificate and authenticates; without the password it reads nothing."""
    tls = make_tls(tmp_path / "tls")
    member = EtcdMember.start(tmp_path / "etcd-tls", tls=tls)
    try:
        member.enable_auth("rootpw")
        credentials = (
            f'ca = "{tls.ca}"\ncertificate = "{tls.client_cert}"\nkey = "{tls.client_key}"\n'
            'user = "root"\n'
        )
        port = free_port()
        good = start_daemon(
            name="a", extra=etcd_section(member, "inst-a") + credentials + 'password = "rootpw"\n'
        )
        bad = start_daemon(
            name="b", extra=etcd_section(member, "inst-b") + credentials + 'password = "wrong"\n'
        )
        path = tmp_path / "desired.toml"
        path.write_text(desired(port, backends["alpha"], "alpha"))
        result = good.sozu("fleet", "push", "-f", str(path))
        assert result.returncode == 0, result.stderr
        wait_for(lambda: served_by(f"127.0.0.1:{port}") == "alpha" or None, timeout=CONVERGE)
        assert fleet_of(good)["phase"] == "following"
        refused = wait_for(lambda: fleet_of(bad).get("unreachable"), timeout=CONVERGE)
        assert "authentication failed" in refused
        assert "applied_revision" not in fleet_of(bad)
        denied = bad.sozu("fleet", "status")
        assert denied.returncode == 1
        assert "authentication failed" in denied.stderr
    finally:
        member.remove()


def test_three_members_leader_killed_and_an_instance_killed(
    tmp_path: Path, start_daemon: DaemonFactory, backends: dict[str, NamedHttp]
) -> None:
    """A 3-member etcd: the leader killed, the next change still converges everywhere; an
    instance killed: its report goes with its lease; restarted, it converges from scratch."""
    members = start_cluster(tmp_path / "cluster", 3)
    try:
        endpoints = [m.endpoint for m in members]
        port = free_port()
        moved = f'[etcd.address_map]\n"127.0.0.1:{port}" = "127.0.0.2:{port}"\n'

        def section(instance: str, order: list[str], extra: str = "") -> str:
            listed = ", ".join(f'"{e}"' for e in order)
            return (
                f'[etcd]\nendpoints = [{listed}]\nprefix = "{PREFIX}"\n'
                f'instance_id = "{instance}"\nretry_min = 0.1\nretry_max = 0.5\n{extra}'
            )

        a = start_daemon(name="a", extra=section("inst-a", endpoints))
        b = start_daemon(name="b", extra=section("inst-b", endpoints[::-1], moved))
        fronts = [f"127.0.0.1:{port}", f"127.0.0.2:{port}"]

        def push(name: str) -> None:
            path = tmp_path / f"{name}.toml"
            path.write_text(desired(port, backends[name], name))
            result = a.sozu("fleet", "push", "-f", str(path))
            assert result.returncode == 0, result.stderr

        def converge_on(name: str) -> None:
            for front in fronts:
                wait_for(
                    lambda front=front: served_by(front) == name or None,  # type: ignore[misc]
                    timeout=CONVERGE,
                    what=f"{front} served by {name}",
                )

        push("alpha")
        converge_on("alpha")

        (leader,) = [m for m in members if m.is_leader()]
        leader.stop()
        # The push and both instances find the other members.
        wait_for(
            lambda: (
                a.sozu("fleet", "push", "-f", str(tmp_path / "alpha.toml")).returncode == 0 or None
            ),
            timeout=CONVERGE,
            what="a new leader",
        )
        push("beta")
        converge_on("beta")

        # An instance killed: its report expires with its lease; restarted, it converges.
        def reported() -> set[str]:
            document = json.loads(b.sozu("-j", "fleet", "status").stdout)
            return {i["instance_id"] for i in document["instances"]}

        assert reported() == {"inst-a", "inst-b"}
        os.killpg(a.process.pid, signal.SIGKILL)
        a.process.wait(timeout=10)
        wait_for(
            lambda: reported() == {"inst-b"} or None,
            timeout=REPORT_LEASE_TTL + CONVERGE,
            what="inst-a's report gone",
        )
        restarted = Daemon.launch(a.config_path, a.socket_path, 2)
        try:
            restarted.wait_running(timeout=CONVERGE)
            wait_for(lambda: served_by(fronts[0]) == "beta" or None, timeout=CONVERGE)
            wait_for(lambda: reported() == {"inst-a", "inst-b"} or None, timeout=CONVERGE)
        finally:
            restarted.stop()
    finally:
        for member in members:
            member.remove()


def test_a_listener_that_cannot_be_bound_refuses_the_state(
    tmp_path: Path, etcd: EtcdMember, start_daemon: DaemonFactory, backends: dict[str, NamedHttp]
) -> None:
    port, taken_port, metrics_port = free_port(), free_port(), free_port()
    daemon = start_daemon(
        name="a",
        extra=f'[metrics]\nprometheus_address = "127.0.0.1:{metrics_port}"\n\n'
        + etcd_section(etcd, "inst-a"),
    )
    first = tmp_path / "first.toml"
    first.write_text(desired(port, backends["alpha"], "alpha"))
    assert daemon.sozu("fleet", "push", "-f", str(first)).returncode == 0
    wait_for(lambda: served_by(f"127.0.0.1:{port}") == "alpha" or None, timeout=CONVERGE)
    before = wait_for(daemon.running_status, timeout=CONVERGE)["supervisor"]["state_hash"]

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken_port))
        squatter.listen()
        second = tmp_path / "second.toml"
        second.write_text(
            desired(port, backends["beta"], "beta")
            + f'\n[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:{taken_port}"\n'
        )
        result = daemon.sozu("-j", "fleet", "push", "-f", str(second))
        assert result.returncode == 0, result.stderr
        revision = json.loads(result.stdout)["revision"]
        refusal = wait_for(lambda: fleet_of(daemon).get("refused"), timeout=CONVERGE)
        assert refusal["key"] == f"{PREFIX}/state/listeners/tcp/127.0.0.1:{taken_port}"
        assert refusal["revision"] == revision
        assert "cannot bind" in refusal["message"]
        # Nothing of that revision was applied: not even the backend change.
        assert served_by(f"127.0.0.1:{port}") == "alpha"
        assert daemon.status()["supervisor"]["state_hash"] == before  # type: ignore[index]
        series = prometheus_series(metrics_port)
        assert series[("sozu_fleet_refusing", frozenset())] == 1
        assert series[("sozu_fleet_refused_total", frozenset())] == 1
        assert series[("sozu_fleet_following", frozenset())] == 1
        assert series[("sozu_fleet_applied_revision", frozenset())] < revision
