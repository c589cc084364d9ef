"""The supervisor's listener sockets: one per slot in one SO_REUSEPORT group, closed in order."""

from __future__ import annotations

import socket

import pytest

from sozu.supervisor.listener_sockets import ListenerSockets


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_one_listening_socket_per_slot_on_the_same_port() -> None:
    sockets = ListenerSockets(3)
    address = f"127.0.0.1:{_free_port()}"
    try:
        sockets.bind("TCP", address)
        sockets.bind("TCP", address)  # already bound: nothing new
        per_slot = [sockets.for_slot(slot) for slot in range(3)]
        assert [len(listeners) for listeners in per_slot] == [1, 1, 1]
        assert len({listeners[0][1].fileno() for listeners in per_slot}) == 3
        for listeners in per_slot:
            passed, sock = listeners[0]
            assert (passed.proxy, passed.address) == ("TCP", address)
            assert sock.getsockname()[1] == int(address.rsplit(":", 1)[1])
            assert not sock.get_inheritable()
            assert not sock.getblocking()
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        # A client connects: the kernel queues it in one of the sockets' backlogs.
        with socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1]))):
            pass
    finally:
        sockets.close_all()


def test_udp_sockets_are_bound_datagram_sockets() -> None:
    sockets = ListenerSockets(2)
    address = f"127.0.0.1:{_free_port()}"
    try:
        sockets.bind("UDP", address)
        ((passed, sock),) = sockets.for_slot(1)
        assert passed.proxy == "UDP"
        assert sock.type == socket.SOCK_DGRAM
    finally:
        sockets.close_all()


def test_a_bind_failure_keeps_nothing_and_names_the_error() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        address = f"127.0.0.1:{squatter.getsockname()[1]}"
        sockets = ListenerSockets(2)
        with pytest.raises(OSError, match="in use"):
            sockets.bind("TCP", address)
        assert ("TCP", address) not in sockets
        assert sockets.for_slot(0) == []


def test_closing_refuses_new_connections_and_dead_slots_stay_closed() -> None:
    sockets = ListenerSockets(2)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    sockets.bind("TCP", address)
    sockets.close_slot(1)
    assert sockets.for_slot(1) == []
    ((_, kept),) = sockets.for_slot(0)
    other = f"127.0.0.1:{_free_port()}"
    sockets.bind("TCP", other)
    assert len(sockets.for_slot(1)) == 0  # no worker is coming for slot 1
    assert len(sockets.for_slot(0)) == 2
    sockets.close("TCP", address)
    assert kept.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    sockets.close_all()
    assert sockets.for_slot(0) == []
