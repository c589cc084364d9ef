"""Replies that arrive in bursts after request-reply traffic: a flow whose wake-ups found
one reply each reads one per wake-up, and must still deliver every reply of a burst, in
order, whatever the mix."""

from __future__ import annotations

import socket

import pytest

from e2e.support.daemon import DaemonFactory
from e2e.support.net import free_port
from e2e.support.udp_backends import NamedUdpEcho, client, query

pytestmark = pytest.mark.e2e


def _config(listen: int, echo: NamedUdpEcho) -> str:
    return f"""
[[listeners]]
protocol = "udp"
address = "127.0.0.1:{listen}"
front_timeout = 1
back_timeout = 1

[clusters.echo]
protocol = "tcp"
frontends = [{{ address = "127.0.0.1:{listen}" }}]
backends = [{{ address = "{echo.address}", backend_id = "{echo.name}" }}]

[clusters.echo.udp]
affinity_key = "SOURCE_IP_PORT"
"""


def _burst(sock: socket.socket, port: int, count: int, tag: str) -> list[bytes]:
    payload = f"burst:{count}:{tag}".encode()
    sock.sendto(payload, ("127.0.0.1", port))
    return [sock.recvfrom(65535)[0] for _ in range(count)]


def test_every_reply_of_a_burst_arrives_after_request_reply_traffic(
    start_daemon: DaemonFactory,
) -> None:
    echo = NamedUdpEcho("alpha")
    try:
        listen = free_port()
        start_daemon(worker_count=1, extra=_config(listen, echo))
        with client() as sock:
            for round_ in range(3):
                # Request-reply: one answer per wake-up of the flow's upstream socket.
                names = [query(sock, listen, f"r{round_}-{i}".encode()) for i in range(30)]
                assert set(names) == {"alpha"}
                for count in (2, 7, 40):
                    tag = f"{round_}-{count}"
                    replies = _burst(sock, listen, count, tag)
                    expected = [b"alpha:burst:%d:%s#%d" % (count, tag.encode(), i)
                                for i in range(count)]  # fmt: skip
                    assert replies == expected
    finally:
        echo.close()
