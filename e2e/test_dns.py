"""DNS through the real daemon: two real NSD servers behind a UDP listener.

Answers through sozu match the answers NSD gives directly; a client with a fixed source port
sticks to one server (`SOURCE_IP_PORT`), clients on different loopback addresses spread over
both servers and each sticks (`SOURCE_IP`); a stopped server is marked unhealthy by the UDP
probe (a raw SOA query) and the other one answers everything; with both stopped, fail-open
still forwards (datagrams keep arriving at the listener, nothing answers); one restarted
answers again. Skipped when `nsd` is missing, unless `CI=true`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest

from e2e.support.daemon import DaemonFactory, wait_for
from e2e.support.net import free_port, scrape

pytestmark = pytest.mark.e2e

# Debian installs nsd in /usr/sbin, often missing from a user PATH.
NSD = shutil.which("nsd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
ZONE = "bench.test"
NAMES = ["www.bench.test", "ns1.bench.test", "h1.bench.test", "h7.bench.test"]

if NSD is None:
    if os.environ.get("CI") == "true":
        pytest.fail("nsd is required under CI=true (apt-get install nsd)", pytrace=False)
    pytest.skip("nsd is not installed (Debian package `nsd`)", allow_module_level=True)


def _zone(who: str) -> str:
    hosts = "\n".join(f"h{i} IN A 127.0.1.{i}" for i in range(1, 11))
    return (
        f"$ORIGIN {ZONE}.\n$TTL 3600\n"
        f"@ IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 900 604800 300\n"
        "@ IN NS ns1\nns1 IN A 127.0.0.1\nwww IN A 127.0.0.10\n"
        f'who IN TXT "{who}"\n{hosts}\n'
    )


class Nsd:
    """One NSD server in the foreground on 127.0.0.1:port (UDP and TCP)."""

    def __init__(self, directory: Path, who: str) -> None:
        self.who = who
        self.port = free_port()
        self.dir = directory / who
        self.dir.mkdir()
        (self.dir / f"{ZONE}.zone").write_text(_zone(who))
        self.conf = self.dir / "nsd.conf"
        self.conf.write_text(
            "server:\n"
            f"    ip-address: 127.0.0.1@{self.port}\n"
            "    do-ip6: no\n    server-count: 1\n"
            '    username: ""\n    chroot: ""\n    database: ""\n'
            f'    zonesdir: "{self.dir}"\n'
            f'    pidfile: "{self.dir}/nsd.pid"\n'
            f'    xfrdfile: "{self.dir}/xfrd.state"\n'
            f'    zonelistfile: "{self.dir}/zone.list"\n'
            f'    logfile: "{self.dir}/nsd.log"\n'
            "    verbosity: 0\n    rrl-ratelimit: 0\n    rrl-whitelist-ratelimit: 0\n"
            "remote-control:\n    control-enable: no\n"
            f'zone:\n    name: {ZONE}\n    zonefile: "{ZONE}.zone"\n'
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert NSD is not None
        self.process = subprocess.Popen(
            [NSD, "-d", "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def ready() -> bool | None:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self.dir / "nsd.log"
                raise RuntimeError(f"nsd exited: {log.read_text() if log.exists() else ''}")
            try:
                return True if txt(self.port, timeout=0.3) == self.who else None
            except dns.exception.Timeout:
                return None

        wait_for(ready, timeout=10, what=f"nsd {self.who} answering")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None


def ask(
    port: int,
    name: str,
    rdtype: str,
    *,
    source: str = "127.0.0.1",
    source_port: int = 0,
    timeout: float = 1.0,
) -> dns.message.Message:
    request = dns.message.make_query(name, rdtype)
    return dns.query.udp(
        request, "127.0.0.1", port=port, timeout=timeout, source=source, source_port=source_port
    )


def txt(port: int, *, source: str = "127.0.0.1", source_port: int = 0, timeout: float = 1.0) -> str:
    answer = ask(
        port, f"who.{ZONE}", "TXT", source=source, source_port=source_port, timeout=timeout
    )
    return b"".join(answer.answer[0][0].strings).decode()


def _records(message: dns.message.Message) -> list[str]:
    return sorted(rrset.to_text() for rrset in message.answer)


def _probe_payload() -> str:
    """An SOA query as a TOML string: the worker encodes the string as UTF-8, so every byte of
    the query must be ASCII (id 0x0101, RD set, no EDNS)."""
    request = dns.message.make_query(ZONE, "SOA", use_edns=False)
    request.id = 0x0101
    wire = request.to_wire()
    assert all(byte < 0x80 for byte in wire)
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and chr(b) not in '"\\' else f"\\u{b:04x}" for b in wire
    )


def _series(port: int, name: str, labels: dict[str, str]) -> float | None:
    _, _, body = scrape(port).partition("\r\n\r\n")
    wanted = set(labels.items())
    for line in body.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        if set(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")) == wanted:
            return float(match.group(3))
    return None


def _cluster(name: str, listen: int, affinity: str, servers: list[Nsd]) -> str:
    entries = ", ".join(f'{{ address = "{s.address}", backend_id = "{s.who}" }}' for s in servers)
    return f"""
[[listeners]]
protocol = "udp"
address = "127.0.0.1:{listen}"
front_timeout = 2
back_timeout = 2

[clusters.{name}]
protocol = "tcp"
frontends = [{{ address = "127.0.0.1:{listen}" }}]
backends = [{entries}]

[clusters.{name}.udp]
affinity_key = "{affinity}"
responses = 1

[clusters.{name}.udp.health]
mode = "UDP_PROBE"
udp_probe_payload = "{_probe_payload()}"
probe_interval_seconds = 1
probe_timeout_seconds = 1
rise = 1
fall = 2
"""


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Nsd]]:
    started: list[Nsd] = []
    try:
        for who in ("ns1", "ns2"):
            started.append(Nsd(tmp_path, who))
        yield started
    finally:
        for server in started:
            with contextlib.suppress(Exception):
                server.stop()


def test_dns_through_sozu_with_nsd(start_daemon: DaemonFactory, servers: list[Nsd]) -> None:
    ns1, ns2 = servers
    by_port, by_ip, metrics_port = free_port(), free_port(), free_port()
    start_daemon(
        extra=f'[metrics]\nprometheus_address = "127.0.0.1:{metrics_port}"\n'
        + _cluster("dns", by_port, "SOURCE_IP_PORT", servers)
        + _cluster("dnsip", by_ip, "SOURCE_IP", servers)
    )

    # The first answer through sozu (retried while the listener comes up).
    def first() -> str | None:
        try:
            return txt(by_port, timeout=0.5)
        except dns.exception.Timeout:
            return None

    assert wait_for(first, timeout=10, what="first answer through sozu") in ("ns1", "ns2")

    # A and TXT answers through sozu are what NSD answers directly.
    for name in NAMES:
        direct = ask(ns1.port, name, "A")
        proxied = ask(by_port, name, "A")
        assert _records(proxied) == _records(direct), name
        assert proxied.rcode() == direct.rcode()
    assert txt(by_port) in ("ns1", "ns2")

    # One client (fixed source port) sticks to one server over several queries.
    source_port = free_port()
    seen = {txt(by_port, source_port=source_port) for _ in range(6)}
    assert len(seen) == 1, seen

    # SOURCE_IP: clients on different loopback addresses spread over both; each sticks.
    chosen: dict[str, str] = {}
    for last in range(11, 41):
        source = f"127.0.0.{last}"
        answers = {txt(by_ip, source=source) for _ in range(3)}
        assert len(answers) == 1, (source, answers)
        chosen[source] = answers.pop()
    assert set(chosen.values()) == {"ns1", "ns2"}, chosen

    # ns2 stops: within 5 s every query is answered by ns1.
    ns2.stop()
    health = {"cluster": "dns", "backend": "ns2"}
    wait_for(
        lambda: True if _series(metrics_port, "sozu_udp_backend_healthy", health) == 0 else None,
        timeout=5,
        what="ns2 unhealthy",
    )
    for index in range(10):
        assert txt(by_port, timeout=1) == "ns1", index

    # Both stopped: fail-open still forwards (nothing answers, datagrams keep arriving).
    ns1.stop()
    listener = {"listener": f"127.0.0.1:{by_port}"}
    wait_for(
        lambda: (
            True
            if _series(
                metrics_port, "sozu_udp_backend_healthy", {"cluster": "dns", "backend": "ns1"}
            )
            == 0
            else None
        ),
        timeout=5,
        what="ns1 unhealthy",
    )
    before = _series(metrics_port, "sozu_udp_datagrams_in_total", listener) or 0.0
    for _ in range(3):
        with pytest.raises(dns.exception.Timeout):
            txt(by_port, timeout=0.3)
    wait_for(
        lambda: (
            True
            if (_series(metrics_port, "sozu_udp_datagrams_in_total", listener) or 0) >= before + 3
            else None
        ),
        timeout=5,
        what="datagrams still counted with both servers down",
    )

    # ns1 restarted: answered again.
    ns1.start()

    def answered() -> str | None:
        try:
            return txt(by_port, timeout=0.5)
        except dns.exception.Timeout:
            return None

    assert wait_for(answered, timeout=10, what="answer after ns1 restart") == "ns1"
