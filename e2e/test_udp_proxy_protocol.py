"""PROXY protocol v2 over UDP through the real daemon.

Backends parse the header strictly and record it. With `send_proxy_protocol = true` only the
first datagram of a flow carries a header, and it names the real client address and port as
source and the backend as destination; with `proxy_protocol_every_datagram = true` every
datagram does. Payloads reach the backend intact and replies reach the client without header.
Over IPv6 (::1) the header is the 52-byte INET6 one; an IPv6 client sent to an IPv4 backend
gets the 16-byte UNSPEC header (no addresses), as upstream.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.support.daemon import DaemonFactory, wait_for
from e2e.support.net import free_port
from e2e.support.udp_backends import NamedUdpEcho, Received, client, query

pytestmark = pytest.mark.e2e

QUERIES = 4


def _cluster(
    name: str, listen: int, echo: NamedUdpEcho, every: bool, host: str = "127.0.0.1"
) -> str:
    listener = f"[{host}]:{listen}" if ":" in host else f"{host}:{listen}"
    return f"""
[[listeners]]
protocol = "udp"
address = "{listener}"
front_timeout = 3
back_timeout = 3

[clusters.{name}]
protocol = "tcp"
frontends = [{{ address = "{listener}" }}]
backends = [{{ address = "{echo.address}", backend_id = "{echo.name}" }}]

[clusters.{name}.udp]
affinity_key = "SOURCE_IP_PORT"
send_proxy_protocol = true
proxy_protocol_every_datagram = {"true" if every else "false"}
"""


@pytest.fixture
def echoes() -> Iterator[tuple[NamedUdpEcho, NamedUdpEcho]]:
    first, every = NamedUdpEcho("first", proxy_v2=True), NamedUdpEcho("every", proxy_v2=True)
    try:
        yield first, every
    finally:
        first.close()
        every.close()


def _exchange(listen: int, host: str, tag: str) -> tuple[str, int]:
    """QUERIES queries from one client socket on `host`; its (address, port)."""
    with client(host) as sock:
        name = sock.getsockname()
        address: tuple[str, int] = (name[0], name[1])
        for index in range(QUERIES):
            # query() checks that the reply carries exactly this payload, without header.
            query(sock, listen, f"{tag}-{index}".encode())
    return address


def _of(echo: NamedUdpEcho, tag: str) -> list[Received]:
    return [r for r in echo.snapshot() if r.payload.decode().startswith(f"{tag}-")]


def test_proxy_v2_first_datagram_or_every_datagram(
    start_daemon: DaemonFactory, echoes: tuple[NamedUdpEcho, NamedUdpEcho]
) -> None:
    first_echo, every_echo = echoes
    first_port, every_port = free_port(), free_port()
    start_daemon(
        extra=_cluster("ppfirst", first_port, first_echo, every=False)
        + _cluster("ppevery", every_port, every_echo, every=True)
    )

    def warm() -> bool | None:
        with client() as sock:
            sock.settimeout(0.5)
            try:
                query(sock, first_port, b"warm-0")
                query(sock, every_port, b"warm-0")
            except TimeoutError:
                return None
        return True

    wait_for(warm, timeout=10, what="both listeners answering")

    # Two clients per listener, on different loopback addresses: each flow's header is its own.
    for host, tag in (("127.0.0.21", "a"), ("127.0.0.22", "b")):
        source = _exchange(first_port, host, tag)
        seen = _of(first_echo, tag)
        assert [r.payload for r in seen] == [f"{tag}-{i}".encode() for i in range(QUERIES)]
        header = seen[0].header
        assert header is not None
        assert header.command == "PROXY"
        assert header.source == source
        assert header.destination == ("127.0.0.1", first_echo.port)
        assert [r.header for r in seen[1:]] == [None] * (QUERIES - 1)
        # The backend sees one upstream socket per flow, not the client.
        assert {r.peer for r in seen} == {seen[0].peer}
        assert seen[0].peer != source

        source = _exchange(every_port, host, tag)
        seen = _of(every_echo, tag)
        assert [r.payload for r in seen] == [f"{tag}-{i}".encode() for i in range(QUERIES)]
        for received in seen:
            assert received.header is not None
            assert received.header.source == source
            assert received.header.destination == ("127.0.0.1", every_echo.port)

    assert first_echo.errors == []
    assert every_echo.errors == []


def test_proxy_v2_over_ipv6_and_across_families(start_daemon: DaemonFactory) -> None:
    v6 = NamedUdpEcho("six", proxy_v2=True, host="::1")
    v4 = NamedUdpEcho("four", proxy_v2=True)
    try:
        same_port, mixed_port = free_port(), free_port()
        start_daemon(
            extra=_cluster("ppsix", same_port, v6, every=False, host="::1")
            + _cluster("ppmixed", mixed_port, v4, every=True, host="::1")
        )

        def warm() -> bool | None:
            with client("::1") as sock:
                sock.settimeout(0.5)
                try:
                    query(sock, same_port, b"warm-0")
                    query(sock, mixed_port, b"warm-0")
                except TimeoutError:
                    return None
            return True

        wait_for(warm, timeout=10, what="both IPv6 listeners answering")

        source = _exchange(same_port, "::1", "s")
        seen = _of(v6, "s")
        assert [r.payload for r in seen] == [f"s-{i}".encode() for i in range(QUERIES)]
        header = seen[0].header
        assert header is not None
        assert header.length == 52
        assert header.source == source
        assert header.destination == ("::1", v6.port)
        assert [r.header for r in seen[1:]] == [None] * (QUERIES - 1)

        _exchange(mixed_port, "::1", "m")
        seen = _of(v4, "m")
        assert [r.payload for r in seen] == [f"m-{i}".encode() for i in range(QUERIES)]
        for received in seen:
            assert received.header is not None
            assert received.header.length == 16
            assert received.header.source is None
        assert v6.errors == []
        assert v4.errors == []
    finally:
        v6.close()
        v4.close()
