"""One owner per listener address although listener sockets use SO_REUSEPORT."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sozu.command.types import ListenerType
from sozu.supervisor.address_owner import AddressClaims, AddressOwned, lock_path
from sozu.supervisor.listener_sockets import ListenerSockets, bind_listener_socket


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_second_instance_is_refused_and_told_who_owns_the_address(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    first = AddressClaims("/run/first.sock", tmp_path)
    second = AddressClaims("/run/second.sock", tmp_path)
    first_sockets = ListenerSockets(2, first)
    first_sockets.bind("HTTP", address)
    # A TCP listener shares HTTP's address space; the other instance cannot take either.
    proxies: tuple[ListenerType, ...] = ("HTTP", "TCP", "HTTPS")
    for proxy in proxies:
        with pytest.raises(AddressOwned, match=r"first\.sock"):
            ListenerSockets(2, second).bind(proxy, address)
    # UDP is another address space.
    second_sockets = ListenerSockets(2, second)
    second_sockets.bind("UDP", address)
    first_sockets.close("HTTP", address)
    # Released with the listener: now the other instance may take it.
    taken = ListenerSockets(2, second)
    taken.bind("TCP", address)
    taken.close_all()
    second_sockets.close_all()


def test_another_program_on_the_address_is_refused_even_with_so_reuseport(
    tmp_path: Path,
) -> None:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # A socket that allows sharing (as another sozu version or a careless program would do):
    # SO_REUSEPORT alone would let us bind beside it and steal half of its connections.
    other = bind_listener_socket("TCP", address)
    try:
        sockets = ListenerSockets(2, AddressClaims("/run/me.sock", tmp_path))
        with pytest.raises(AddressOwned, match="already in use by another program"):
            sockets.bind("TCP", address)
        assert ("TCP", address) not in sockets
    finally:
        other.close()
    udp = bind_listener_socket("UDP", address)
    try:
        with pytest.raises(AddressOwned, match="another program"):
            ListenerSockets(2, AddressClaims("/run/me.sock", tmp_path)).bind("UDP", address)
    finally:
        udp.close()


def test_time_wait_is_no_owner(tmp_path: Path) -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end goes to TIME_WAIT
    client.close()
    server.close()
    claims = AddressClaims("/run/me.sock", tmp_path)
    sockets = ListenerSockets(1, claims)
    sockets.bind("TCP", f"127.0.0.1:{port}")
    assert lock_path("TCP", f"127.0.0.1:{port}", tmp_path).exists()
    sockets.close_all()
