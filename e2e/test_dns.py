"""DNS through the real daemon: two real NSD servers behind a UDP listener.

Answers through sozu match the answers NSD gives directly; a client with a fixed source port
sticks to one server (`SOURCE_IP_PORT`), clients on different loopback addresses spread over
both servers and each sticks (`SOURCE_IP`); a stopped server is marked unhealthy by the UDP
probe (a raw SOA query) and the other one answers everything; with both stopped, fail-open
still forwards (datagrams keep arriving at the listener, nothing answers); one restarted
answers again. `sozu events` reports each backend going down and up (HEALTH_CHECK_UNHEALTHY /
HEALTHY) and the cluster losing its last backend and getting one back (NO_AVAILABLE_BACKENDS /
CLUSTER_RECOVERED), from every worker. Skipped when `nsd` is missing, unless `CI=true`.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest

from e2e.support.daemon import DaemonFactory, EventFollower, wait_for
from e2e.support.net import free_port, scrape
from e2e.support.nsd import ZONE, Nsd, ask, txt

pytestmark = pytest.mark.e2e

NAMES = ["www.bench.test", "ns1.bench.test", "h1.bench.test", "h7.bench.test"]


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


Seen = tuple[str, str | None, str]  # kind, backend id, worker (event source)


def _health_events(
    events: EventFollower, wanted: set[Seen], seen: list[Seen], timeout: float = 10.0
) -> None:
    """Read events until every one of `wanted` has come (within `timeout`); keep all in `seen`."""
    deadline = time.monotonic() + timeout
    while not wanted <= set(seen):
        left = deadline - time.monotonic()
        event = events.next_event(left) if left > 0 else None
        if event is None:
            missing = sorted(wanted - set(seen), key=str)
            raise AssertionError(f"events {missing} not seen within {timeout} s; saw {seen}")
        if event.get("cluster_id") == "dns":
            seen.append((event["kind"], event.get("backend_id"), event["source"]))


def test_dns_health_events(start_daemon: DaemonFactory, servers: list[Nsd]) -> None:
    ns1, ns2 = servers
    listen = free_port()
    daemon = start_daemon(extra=_cluster("dns", listen, "SOURCE_IP_PORT", servers))
    workers = [str(worker["id"]) for worker in daemon.wait_running()["workers"]]
    assert len(workers) == 2
    events = daemon.follow_events()
    try:

        def each(kind: str, backend: str | None) -> set[Seen]:
            return {(kind, backend, worker) for worker in workers}

        # Healthy NSD servers give no health event.
        assert [e for e in events.drain(quiet=2.5) if e.get("cluster_id") == "dns"] == []

        seen: list[Seen] = []
        ns2.stop()
        _health_events(events, each("HEALTH_CHECK_UNHEALTHY", "ns2"), seen)
        ns1.stop()
        _health_events(
            events,
            each("HEALTH_CHECK_UNHEALTHY", "ns1") | each("NO_AVAILABLE_BACKENDS", None),
            seen,
        )
        ns1.start()
        _health_events(
            events,
            each("HEALTH_CHECK_HEALTHY", "ns1") | each("CLUSTER_RECOVERED", None),
            seen,
        )
        ns2.start()
        _health_events(events, each("HEALTH_CHECK_HEALTHY", "ns2"), seen)
        seen += [
            (e["kind"], e.get("backend_id"), e["source"])
            for e in events.drain(quiet=1.5)
            if e.get("cluster_id") == "dns"
        ]
    finally:
        events.close()

    # Exactly one of each transition per worker, in a consistent order on each worker.
    expected = [
        ("HEALTH_CHECK_UNHEALTHY", "ns2"),
        ("HEALTH_CHECK_UNHEALTHY", "ns1"),
        ("NO_AVAILABLE_BACKENDS", None),
        ("HEALTH_CHECK_HEALTHY", "ns1"),
        ("CLUSTER_RECOVERED", None),
        ("HEALTH_CHECK_HEALTHY", "ns2"),
    ]
    for worker in workers:
        assert [(kind, backend) for kind, backend, source in seen if source == worker] == (
            expected
        ), (worker, seen)
